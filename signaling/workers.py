"""The worker processes of ``sfu serve --workers N`` and their supervision.

Each worker is an ordinary single-process server (``sfu serve --workers 1``) with its
own event loop, media sockets and rooms, listening on a port of its own for the front
(:mod:`signaling.router`). The supervisor starts them, asks each for its load every
second (``GET /internal/load``: rooms, participants, RTP packets sent), and restarts a
worker that dies, on the same port, telling the placement first so that its rooms are
placed again when their participants reconnect.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import aiohttp

from .placement import WorkerLoad

__all__ = ["LOAD_INTERVAL_S", "Supervisor", "Worker", "worker_args"]

logger = logging.getLogger("sfu.workers")

LOAD_INTERVAL_S = 1.0
START_TIMEOUT_S = 30.0
RESTART_DELAY_S = 0.5
STOP_GRACE_S = 6.0  # a worker's graceful exit takes up to 5 s
# Options of `sfu serve` that the front keeps for itself (with the number of values each takes).
FRONT_OPTIONS = {"--workers": 1, "--host": 1, "--port": 1, "--redis": 1, "--node-address": 1,
                 "--metrics-port": 1, "--tls-cert": 1, "--tls-key": 1, "--udp-port": 1, "--udp-port-range": 1,
                 "--ice-address": 1}


def worker_args(serve_args: Sequence[str], index: int, count: int, host: str, port: int,
                udp_port: int | None, udp_port_range: tuple[int, int] | None) -> list[str]:
    """The command-line of worker ``index`` of ``count``: the front's ``serve`` options
    without those the front keeps, plus its own address, ``--workers 1`` and its share
    of the media ports: ``--udp-port P+index``, or the ``index``-th of ``count`` equal
    slices of ``--udp-port-range``.

    Raises:
        ValueError: the port range has fewer ports than workers.
    """
    out: list[str] = []
    skip = 0
    for arg in serve_args:
        if skip:
            skip -= 1
            continue
        name = arg.split("=", 1)[0]
        if name in FRONT_OPTIONS:
            skip = FRONT_OPTIONS[name] if "=" not in arg else 0
            continue
        out.append(arg)
    out += ["--host", host, "--port", str(port), "--workers", "1"]
    if udp_port is not None:
        out += ["--udp-port", str(udp_port + index)]
    if udp_port_range is not None:
        low, high = udp_port_range
        size = (high - low + 1) // count
        if size < 1:
            raise ValueError(f"--udp-port-range {low}-{high} has fewer ports than the {count} workers")
        start = low + index * size
        out += ["--udp-port-range", f"{start}-{start + size - 1}"]
    return out


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the worker, before it runs: SIGTERM it when the front dies (Linux
    ``prctl(PR_SET_PDEATHSIG)``), so that a killed front leaves no worker behind."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass  # not Linux: stop() still ends the workers


@dataclass
class Worker:
    """One worker process: its index, port, URL, process and restarts."""

    index: int
    port: int
    url: str
    args: list[str]
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    alive: bool = False
    packets: float | None = None  # RTP packets sent at the last load report
    packets_at: float = 0.0
    load: WorkerLoad = field(default_factory=lambda: WorkerLoad(url=""))


class Supervisor:
    """Starts, watches and restarts the workers.

    Args:
        workers: the workers to run (not started yet).
        node: this node's id (in the loads reported).
        on_loads: called with the live workers' loads every ``LOAD_INTERVAL_S``.
        on_death: called with a worker's URL as soon as it is found dead.
        log_dir: where each worker's output goes (``worker-<i>.log``); None: inherited.
        env: environment variables the workers get on top of the front's.
    """

    def __init__(
        self,
        workers: list[Worker],
        node: str,
        on_loads: Callable[[list[WorkerLoad]], Awaitable[None]],
        on_death: Callable[[str], Awaitable[None]],
        log_dir: str | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.workers = workers
        self.env = env or {}
        self.node = node
        self._on_loads = on_loads
        self._on_death = on_death
        self._log_dir = log_dir
        self._task: asyncio.Task[None] | None = None
        self._http: aiohttp.ClientSession | None = None
        self._stopping = False

    def _spawn(self, worker: Worker) -> None:
        command = [sys.executable, "-m", "signaling.cli", "serve", *worker.args]
        output = None
        if self._log_dir is not None:
            output = open(os.path.join(self._log_dir, f"worker-{worker.index}.log"), "ab")  # noqa: SIM115
        worker.process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT if output else None,
                                          env={**os.environ, **self.env},
                                          preexec_fn=_die_with_parent)  # noqa: PLW1509 (one prctl call)
        if output is not None:
            output.close()
        worker.alive = False
        logger.info("worker %d: pid %d on %s", worker.index, worker.process.pid, worker.url)

    async def start(self) -> None:
        """Start every worker and wait until each answers (or time out).

        Raises:
            RuntimeError: a worker did not come up within ``START_TIMEOUT_S``.
        """
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2.0))
        for worker in self.workers:
            self._spawn(worker)
        await asyncio.gather(*(self._wait_up(worker) for worker in self.workers))
        self._task = asyncio.ensure_future(self._watch())

    async def _wait_up(self, worker: Worker) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if await self._poll(worker) is not None:
                return
            if worker.process is not None and worker.process.poll() is not None:
                raise RuntimeError(f"worker {worker.index} exited with {worker.process.returncode} at start")
            if time.monotonic() > deadline:
                raise RuntimeError(f"worker {worker.index} did not answer within {START_TIMEOUT_S:.0f} s")
            await asyncio.sleep(0.2)

    async def _poll(self, worker: Worker) -> WorkerLoad | None:
        """Ask ``worker`` for its load; None if it does not answer."""
        assert self._http is not None
        try:
            async with self._http.get(worker.url + "/internal/load") as response:
                if response.status != 200:
                    return None
                body = await response.json()
        except (TimeoutError, aiohttp.ClientError, ValueError):
            return None
        now = time.monotonic()
        packets = float(body.get("packetsSent", 0))
        rate = 0.0
        if worker.packets is not None and now > worker.packets_at:
            rate = max(0.0, (packets - worker.packets) / (now - worker.packets_at))
        worker.packets, worker.packets_at = packets, now
        worker.alive = True
        worker.load = WorkerLoad(
            url=worker.url, node=self.node, participants=int(body.get("participants", 0)),
            rooms=[str(r) for r in body.get("rooms", [])][:10_000], packets_per_s=rate,
        )
        return worker.load

    async def _watch(self) -> None:
        """Every ``LOAD_INTERVAL_S``: restart the dead, report the live."""
        while not self._stopping:
            for worker in self.workers:
                process = worker.process
                if process is not None and process.poll() is not None and not self._stopping:
                    logger.warning("worker %d (pid %d) died with %s; restarting it", worker.index, process.pid,
                                   process.returncode)
                    worker.alive = False
                    worker.packets = None
                    await self._on_death(worker.url)
                    await asyncio.sleep(RESTART_DELAY_S)
                    worker.restarts += 1
                    self._spawn(worker)
            loads = [load for load in await asyncio.gather(*(self._poll(w) for w in self.workers)) if load is not None]
            try:
                await self._on_loads(loads)
            except Exception:
                logger.exception("reporting the workers' load failed")
            await asyncio.sleep(LOAD_INTERVAL_S)

    async def stop(self) -> None:
        """SIGTERM every worker (each tells its participants and exits within 5 s),
        SIGKILL what is left after ``STOP_GRACE_S``."""
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for worker in self.workers:
            if worker.process is not None and worker.process.poll() is None:
                worker.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for worker in self.workers:
            process = worker.process
            if process is None:
                continue
            while process.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if process.poll() is None:
                process.kill()
                process.wait()
        if self._http is not None:
            await self._http.close()
