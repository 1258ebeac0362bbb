"""DataChannel fan-out benchmark: delivered messages/s, latency and server CPU.

    python -m loadtest.bench_datachannel --participants 10 --rate 100 --duration 20 --channel reliable
    python -m loadtest.bench_datachannel --channel lossy --find-saturation

Starts the SFU server as a subprocess on 127.0.0.1 (pinned to the first allowed CPU)
and N data-only participants in one room (bots pinned to the other CPUs, spread over
``--bot-procs`` worker processes, each on uvloop). Every participant sends small text
messages (``--size`` bytes of data, the send time inside) at a fixed rate on one
channel, ``reliable`` (ordered) or ``lossy`` (unordered, ``maxRetransmits`` 0), to
everyone; so the server delivers N - 1 copies of each. After a warm-up it measures
over a window:

* delivered messages/s (what the receiving bots got) against the offered rate (what
  was sent times N - 1), and the server's own counters from ``/metrics``;
* latency from send to receipt, p50/p99/max (``time.monotonic()``: one system-wide
  clock for every process on the machine);
* server CPU (``psutil``) as a share of a core and per delivered message.

``--find-saturation`` repeats the window at rising rates (``--rate`` times
``--step-factor`` each step) until the server no longer delivers what is offered, or
p99 passes ``--p99-target``, twice in a row at one rate. Everything is bounded in time; every process started
here is ended by its pid.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import contextlib
import json
import math
import multiprocessing
import multiprocessing.connection
import os
import random
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import uvloop

from loadtest.bench_forward import _print_py_spy
from loadtest.benchutil import start_py_spy, stop_workers
from loadtest.client import RoomClient
from loadtest.data import ChannelSpec, DataMessage
from loadtest.server import ServerProcess, server_help

ROOM = "bench-data"
LABEL = "bench"
CHANNELS = {
    "reliable": ChannelSpec(LABEL),
    "lossy": ChannelSpec(LABEL, ordered=False, max_retransmits=0),
}
JOIN_CONCURRENCY = 4  # participants joining at once, per worker process
TICK = 0.005  # seconds between a sender's bursts
SEND_BUFFER_LIMIT = 256 * 1024  # bytes a bot lets queue on its own channel before it skips sends
MAX_CATCH_UP = 0.1  # seconds of messages a late sender sends at once; older ones are skipped
MIB = 1024 * 1024


# ------------------------------------------------------------------ worker side


@dataclass(slots=True)
class WindowStats:
    """One worker's counters over one measurement window.

    Attributes:
        start, end: ``time.monotonic()`` seconds at the worker's mark and snapshot.
        sent: messages its participants sent.
        skipped: messages not sent because a participant fell behind its schedule or
            its own channel buffer was full (the bots, not the server, were short).
        delivered: messages its participants received.
        latencies: send-to-receipt seconds of every delivered message
            (``array('d')`` bytes, so that the parent can merge the workers').
    """

    start: float
    end: float
    sent: int
    skipped: int
    delivered: int
    latencies: bytes


class Participant:
    """One bot: a data-only :class:`RoomClient` that sends on a schedule and records
    what it receives."""

    def __init__(self, url: str, spec: ChannelSpec, size: int) -> None:
        self.client = RoomClient(url, channels=[spec], on_data=self._received)
        self.size = size
        self.sent = 0
        self.skipped = 0
        self.delivered = 0
        self.latencies = array.array("d")
        self.probes: set[str] = set()
        self._sender: asyncio.Task[None] | None = None

    def _received(self, message: DataMessage) -> None:
        text = str(message.data)
        if text == "probe":
            self.probes.add(message.from_id)
            return
        _, sent_at, _ = text.split(" ", 2)
        self.delivered += 1
        self.latencies.append(message.received_at - float(sent_at))

    def reset(self) -> None:
        """Start a new window."""
        self.sent = self.skipped = self.delivered = 0
        self.latencies = array.array("d")

    def send_at(self, rate: float) -> None:
        """Send ``rate`` messages/s from now on (0 stops); this ends probing."""
        if self._sender is not None:
            self._sender.cancel()
        self._sender = asyncio.create_task(self._send_loop(rate)) if rate > 0 else None

    def probe(self) -> None:
        """Send a probe every 0.2 s until :meth:`send_at` (a probe may be lost on a
        lossy channel; the others need one from everyone)."""
        self._sender = asyncio.create_task(self._probe_loop())

    async def _probe_loop(self) -> None:
        while True:
            self.client.send_data(LABEL, "probe")
            await asyncio.sleep(0.2)

    async def _send_loop(self, rate: float) -> None:
        await asyncio.sleep(random.uniform(0, TICK))  # participants do not tick in step
        start, scheduled, seq = time.monotonic(), 0, 0
        while True:
            due = int((time.monotonic() - start) * rate) + 1
            if due - scheduled > rate * MAX_CATCH_UP:
                late = due - scheduled - int(rate * MAX_CATCH_UP)
                self.skipped += late
                scheduled += late
            while scheduled < due:
                scheduled += 1
                if self.client.buffered_amount(LABEL) > SEND_BUFFER_LIMIT:
                    self.skipped += 1
                    continue
                head = f"{seq} {time.monotonic():.6f} "
                self.client.send_data(LABEL, head + "x" * max(0, self.size - len(head)))
                seq += 1
                self.sent += 1
            await asyncio.sleep(TICK)

    def window(self, start: float) -> WindowStats:
        """The counters since :meth:`reset` (done at ``start``, monotonic seconds)."""
        return WindowStats(start, time.monotonic(), self.sent, self.skipped, self.delivered, self.latencies.tobytes())


async def _worker_main(
    url: str, names: list[str], total: int, spec: ChannelSpec, size: int, ready_timeout: float,
    conn: multiprocessing.connection.Connection,
) -> None:
    """Join ``names`` and wait for the whole room (reply ``joined``); on ``"probe"``,
    probe until a probe from everyone arrived at each bot (every channel on every path
    is open: reply ``ready``); then obey ``("rate", r)``, ``"mark"``, ``"snap"`` until
    ``"stop"``."""
    bots = [Participant(url, spec, size) for _ in names]
    gate = asyncio.Semaphore(JOIN_CONCURRENCY)

    async def start(bot: Participant, name: str) -> None:
        async with gate:
            await bot.client.join(ROOM, name)
        await bot.client.wait_until(lambda: len(bot.client.participants) >= total - 1, ready_timeout)

    try:
        try:
            async with asyncio.timeout(ready_timeout):
                await asyncio.gather(*(start(b, n) for b, n in zip(bots, names, strict=True)))
                conn.send(("joined", len(bots)))
                if await asyncio.to_thread(conn.recv) != "probe":
                    return
                for bot in bots:
                    bot.probe()
                for bot in bots:
                    await bot.client.wait_until(lambda b=bot: len(b.probes) >= total - 1, ready_timeout)
        except Exception as exc:  # noqa: BLE001 - any failure goes to the parent, then clean up
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
            return
        conn.send(("ready", len(bots)))
        mark = time.monotonic()
        while True:
            try:
                command = await asyncio.to_thread(conn.recv)
            except EOFError:
                return
            if isinstance(command, tuple) and command[0] == "rate":
                for bot in bots:
                    bot.send_at(command[1])
                conn.send(("ok", None))
            elif command == "mark":
                mark = time.monotonic()
                for bot in bots:
                    bot.reset()
                conn.send(("ok", None))
            elif command == "snap":
                conn.send(("snap", [asdict(b.window(mark)) for b in bots]))
            else:
                return
    finally:
        for bot in bots:
            bot.send_at(0)
        async with asyncio.timeout(15):
            await asyncio.gather(*(b.client.leave() for b in bots), return_exceptions=True)


def _worker(
    url: str, names: list[str], total: int, spec: ChannelSpec, size: int, ready_timeout: float,
    conn: multiprocessing.connection.Connection,
) -> None:
    """Process entry point of a bot worker (runs on uvloop)."""
    uvloop.run(_worker_main(url, names, total, spec, size, ready_timeout, conn))


# ------------------------------------------------------------------ parent side


def _datachannel_counters(http_url: str) -> dict[str, float]:
    """The ``sfu_datachannel_*`` samples on ``/metrics`` (empty when unreachable)."""
    try:
        with urllib.request.urlopen(f"{http_url}/metrics", timeout=5.0) as response:
            text = response.read().decode()
    except (urllib.error.URLError, OSError):
        return {}
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("sfu_datachannel_"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


@dataclass(slots=True)
class Step:
    """The figures of one measurement window at one send rate.

    Rates are messages/s; latencies seconds; CPU shares are of one core.
    """

    rate: float
    window_s: float
    sent_per_s: float
    offered_per_s: float
    delivered_per_s: float
    skipped_per_s: float
    p50: float
    p99: float
    max_latency: float
    server_cpu: float
    us_per_delivered: float
    server_received_per_s: float | None
    server_sent_per_s: float | None
    server_dropped: dict[str, float]
    bots_cpu: float
    rss: int

    @property
    def delivery_ratio(self) -> float:
        return self.delivered_per_s / self.offered_per_s if self.offered_per_s else math.nan


class Bench:
    """The parent process: server, bot workers, windows."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        allowed = sorted(os.sched_getaffinity(0))
        self.pinned = not args.no_pin and len(allowed) >= 2
        self.server_cpus = {allowed[0]} if self.pinned else set(allowed)
        self.bot_cpus = set(allowed[1:]) if self.pinned else set(allowed)
        server_args = list(args.server_arg)
        if "--max-participants" in server_help() and not any(a.startswith("--max-participants") for a in server_args):
            server_args += ["--max-participants", str(args.participants)]
        self.server = ServerProcess(workdir / "server.log", server_args, cpus=self.server_cpus if self.pinned else None)
        self.server_ps = psutil.Process(self.server.pid)
        self.workers: list[tuple[multiprocessing.process.BaseProcess, multiprocessing.connection.Connection]] = []

    async def _ask_all(self, command: Any, timeout: float = 10.0) -> list[tuple[str, Any]]:
        """Send ``command`` to every worker and collect one reply from each.

        Raises:
            RuntimeError: a worker reported an error.
            TimeoutError: a worker did not answer within ``timeout`` seconds.
        """
        if command is not None:
            for _, conn in self.workers:
                conn.send(command)

        async def reply(conn: multiprocessing.connection.Connection) -> tuple[str, Any]:
            if not await asyncio.to_thread(conn.poll, timeout):
                raise TimeoutError("a bot worker did not answer in time")
            return conn.recv()

        replies = await asyncio.gather(*(reply(conn) for _, conn in self.workers))
        failures = [detail for kind, detail in replies if kind == "error"]
        if failures:
            raise RuntimeError(f"bot workers failed: {failures}")
        return replies

    def start_workers(self) -> None:
        """Spawn the bot worker processes (they inherit the bot CPU set)."""
        n, procs = self.args.participants, max(1, min(self.args.bot_procs, self.args.participants))
        spec = CHANNELS[self.args.channel]
        context = multiprocessing.get_context("spawn")
        for w in range(procs):
            names = [f"bot-{i}" for i in range(w, n, procs)]
            parent, child = context.Pipe()
            proc = context.Process(
                target=_worker,
                args=(self.server.ws_url, names, n, spec, self.args.size, self.args.ready_timeout, child),
                name=f"bench-data-worker-{w}",
            )
            proc.start()
            child.close()
            self.workers.append((proc, parent))

    def _bots_cpu(self) -> float:
        """CPU seconds (user + system) of the workers."""
        total = 0.0
        for proc, _ in self.workers:
            with contextlib.suppress(psutil.NoSuchProcess):
                total += sum(psutil.Process(proc.pid).cpu_times()[:2])
        return total

    async def measure(self, rate: float, profile: bool = False) -> Step:
        """Send at ``rate`` messages/s per participant: warm up, then one window
        (recorded with py-spy when ``profile``)."""
        args = self.args
        await self._ask_all(("rate", rate))
        await asyncio.sleep(args.warmup)
        await self._ask_all("mark")
        cpu0, bots0 = self.server_ps.cpu_times(), self._bots_cpu()
        counters0 = await asyncio.to_thread(_datachannel_counters, self.server.http_url)
        wall0 = time.monotonic()
        spy = start_py_spy(self.server.pid, self.args.duration, self.workdir / "server.pyspy.txt") if profile else None
        await asyncio.sleep(args.duration)
        if spy is not None:
            await asyncio.to_thread(spy.wait, args.duration + 30)
        replies = await self._ask_all("snap")
        wall = time.monotonic() - wall0
        cpu1, bots1 = self.server_ps.cpu_times(), self._bots_cpu()
        counters1 = await asyncio.to_thread(_datachannel_counters, self.server.http_url)
        stats = [WindowStats(**s) for _, per_bot in replies for s in per_bot]
        return _step(rate, args.participants, stats, wall, cpu1.user + cpu1.system - cpu0.user - cpu0.system,
                     (bots1 - bots0) / wall / len(self.bot_cpus), counters0, counters1, self.server_ps.memory_info().rss)

    async def run(self) -> dict[str, Any]:
        """The whole benchmark; returns the results (see :func:`report`)."""
        args = self.args
        await asyncio.to_thread(self.server.wait_healthy, 30.0)
        os.sched_setaffinity(0, self.bot_cpus)
        rss_idle = self.server_ps.memory_info().rss
        self.start_workers()
        await self._ask_all(None, args.ready_timeout + 10)  # joined
        await self._ask_all("probe", args.ready_timeout + 10)  # ready
        steps: list[Step] = []
        rate, missed = args.rate, False
        while len(steps) < (args.max_steps if args.find_saturation else 1):
            step = await self.measure(rate, profile=args.profile and not steps)
            steps.append(step)
            print(_row(step), flush=True)
            if step.delivery_ratio >= args.min_delivery and step.p99 <= args.p99_target:
                rate, missed = rate * args.step_factor, False
            elif missed or not args.find_saturation:
                break
            else:
                missed = True  # measure this rate once more: one miss may be noise on a shared machine
        await self._ask_all(("rate", 0))
        return {
            "participants": args.participants,
            "channel": args.channel,
            "size": args.size,
            "pinned": self.pinned,
            "server_cpus": sorted(self.server_cpus),
            "bot_cpus": sorted(self.bot_cpus),
            "bot_procs": len(self.workers),
            "rss_idle": rss_idle,
            "steps": [{**asdict(s), "delivery_ratio": s.delivery_ratio} for s in steps],
        }

    async def close(self) -> None:
        """Stop the workers and the server (each by its own handle / pid)."""
        await stop_workers(self.workers)
        self.server.stop(grace=15)


def _step(
    rate: float, participants: int, stats: list[WindowStats], wall: float, server_cpu_s: float, bots_cpu: float,
    counters0: dict[str, float], counters1: dict[str, float], rss: int,
) -> Step:
    """Merge the bots' windows into one :class:`Step`. Each bot's rates use its own
    window, so that the workers' reply latency does not skew them."""
    sent = sum(s.sent / (s.end - s.start) for s in stats)
    delivered = sum(s.delivered / (s.end - s.start) for s in stats)
    skipped = sum(s.skipped / (s.end - s.start) for s in stats)
    latencies = np.concatenate([np.frombuffer(s.latencies, dtype=np.float64) for s in stats])
    p50, p99, worst = (np.percentile(latencies, [50, 99, 100]) if latencies.size else (math.nan,) * 3)

    def per_s(name: str) -> float | None:
        if name not in counters0 or name not in counters1:
            return None
        return (counters1[name] - counters0[name]) / wall

    prefix = "sfu_datachannel_messages_dropped_total{"
    dropped = {
        name[len(prefix):-1]: counters1[name] - counters0.get(name, 0.0)
        for name in counters1 if name.startswith(prefix) and counters1[name] > counters0.get(name, 0.0)
    }
    return Step(
        rate=rate,
        window_s=wall,
        sent_per_s=sent,
        offered_per_s=sent * (participants - 1),
        delivered_per_s=delivered,
        skipped_per_s=skipped,
        p50=float(p50),
        p99=float(p99),
        max_latency=float(worst),
        server_cpu=server_cpu_s / wall,
        us_per_delivered=1e6 * server_cpu_s / (delivered * wall) if delivered else math.nan,
        server_received_per_s=per_s("sfu_datachannel_messages_received_total"),
        server_sent_per_s=per_s("sfu_datachannel_messages_sent_total"),
        server_dropped=dropped,
        bots_cpu=bots_cpu,
        rss=rss,
    )


HEADER = (f"{'rate/bot':>8} {'sent/s':>8} {'offered/s':>9} {'delivered/s':>11} {'ratio':>6} "
          f"{'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} {'server CPU':>10} {'µs/msg':>7} {'bots CPU':>8}")


def _row(s: Step) -> str:
    return (f"{s.rate:8.0f} {s.sent_per_s:8.0f} {s.offered_per_s:9.0f} {s.delivered_per_s:11.0f} "
            f"{s.delivery_ratio:6.3f} {1e3 * s.p50:7.1f} {1e3 * s.p99:7.1f} {1e3 * s.max_latency:7.1f} "
            f"{100 * s.server_cpu:9.0f}% {s.us_per_delivered:7.1f} {100 * s.bots_cpu:7.0f}%")


def report(r: dict[str, Any], min_delivery: float, p99_target: float) -> str:
    """The results as a table for humans, with a verdict on the last good step."""
    steps = [Step(**{k: v for k, v in s.items() if k != "delivery_ratio"}) for s in r["steps"]]
    spec = CHANNELS[r["channel"]]
    kind = "reliable (ordered)" if spec.reliable else f"lossy (ordered={spec.ordered}, maxRetransmits={spec.max_retransmits})"
    pin = f"server on CPU {r['server_cpus']}, bots on {r['bot_cpus']} ({r['bot_procs']} processes)" if r["pinned"] \
        else f"not pinned (CPUs {r['server_cpus']})"
    lines = [
        (f"SFU DataChannel fan-out benchmark: {r['participants']} participants, each to all others, "
         f"{kind} channel, {r['size']}-byte messages"),
        pin,
        "-" * len(HEADER),
        HEADER,
        *(_row(s) for s in steps),
        "-" * len(HEADER),
    ]
    for s in steps:
        counters = "n/a (no sfu_datachannel_* metrics)" if s.server_sent_per_s is None else (
            f"received {s.server_received_per_s:,.0f}/s, sent {s.server_sent_per_s:,.0f}/s, "
            f"dropped {s.server_dropped or 0}")
        lines.append(f"rate {s.rate:,.0f}: server counters: {counters}; server RSS {s.rss / MIB:.1f} MiB"
                     + (f"; bots skipped {s.skipped_per_s:,.0f} sends/s" if s.skipped_per_s else ""))
    good = [s for s in steps if s.delivery_ratio >= min_delivery and s.p99 <= p99_target]
    if good:
        best = max(good, key=lambda s: s.delivered_per_s)
        lines.append(f"best step within target (delivery >= {min_delivery:.0%}, p99 <= {1e3 * p99_target:.0f} ms): "
                     f"{best.delivered_per_s:,.0f} delivered messages/s at {best.rate:,.0f} messages/s per participant, "
                     f"p50 {1e3 * best.p50:.1f} ms, p99 {1e3 * best.p99:.1f} ms, server CPU {100 * best.server_cpu:.0f} %")
    else:
        lines.append("no step met the target")
    if any(s.bots_cpu > 0.85 for s in steps):
        lines.append("WARNING: the bots were near saturation at some step; the limit there may be theirs, not the server's")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m loadtest.bench_datachannel", description=__doc__.split("\n\n")[0])
    parser.add_argument("--participants", type=int, default=10, help="participants in the room (default 10)")
    parser.add_argument("--rate", type=float, default=100.0,
                        help="messages/s each participant sends (default 100; first step with --find-saturation)")
    parser.add_argument("--channel", choices=sorted(CHANNELS), default="reliable", help="channel kind (default reliable)")
    parser.add_argument("--size", type=int, default=100, help="bytes of data per message (default 100)")
    parser.add_argument("--duration", type=float, default=20.0, help="measurement window per step, seconds (default 20)")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds at each rate before the window (default 3)")
    parser.add_argument("--find-saturation", action="store_true",
                        help="step the rate up by --step-factor until delivery or p99 misses the target")
    parser.add_argument("--step-factor", type=float, default=1.5, help="rate multiplier per step (default 1.5)")
    parser.add_argument("--max-steps", type=int, default=8,
                        help="windows at most with --find-saturation (default 8)")
    parser.add_argument("--p99-target", type=float, default=0.05, help="p99 latency target, seconds (default 0.05)")
    parser.add_argument("--min-delivery", type=float, default=0.98,
                        help="delivered/offered below this is saturation (default 0.98)")
    parser.add_argument("--bot-procs", type=int, default=1, help="bot worker processes (default 1)")
    parser.add_argument("--ready-timeout", type=float, default=0.0,
                        help="seconds for all participants to join and open channels (default 30 + 1 per participant)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin server and bots to separate CPUs")
    parser.add_argument("--server-arg", action="append", default=[],
                        help="extra argument for 'signaling.cli serve' (repeatable; --max-participants defaults "
                             "to --participants)")
    parser.add_argument("--profile", action="store_true",
                        help="record the server with py-spy during the first window and print its top functions")
    parser.add_argument("--json", action="store_true", help="also print the results as one JSON line")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (server log, profile)")
    args = parser.parse_args(argv)
    if args.participants < 2 or args.rate <= 0 or args.duration <= 0 or args.warmup < 0 or args.size < 1:
        parser.error("--participants must be >= 2, --rate and --duration > 0, --warmup >= 0, --size >= 1")
    if args.step_factor <= 1 or args.max_steps < 1:
        parser.error("--step-factor must be > 1 and --max-steps >= 1")
    args.ready_timeout = args.ready_timeout or 30.0 + args.participants
    return args


async def _amain(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    bench = Bench(args, workdir)
    try:
        steps = args.max_steps if args.find_saturation else 1
        limit = args.ready_timeout + steps * (args.warmup + args.duration + 30) + 60
        async with asyncio.timeout(limit):
            return await bench.run()
    except BaseException:
        print(f"server log tail:\n{bench.server.log_tail()}", file=sys.stderr)
        raise
    finally:
        await bench.close()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="bench_datachannel-"))
    print(HEADER, flush=True)
    try:
        results = uvloop.run(_amain(args, workdir))
    except BaseException:
        print(f"benchmark failed; server log kept in {workdir}", file=sys.stderr)
        raise
    print()
    print(report(results, args.min_delivery, args.p99_target))
    if args.json:
        print(json.dumps(results))
    if args.profile:
        _print_py_spy(workdir / "server.pyspy.txt")
    if args.keep or args.profile:
        print(f"work directory: {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
