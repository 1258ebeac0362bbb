"""Start and stop the SFU server as a subprocess on loopback (tests and benchmarks).

The server is ``python -m signaling.cli serve --host 127.0.0.1 --port PORT``; it is
ended by its own pid (SIGTERM, then SIGKILL), never by name. It can also run inside a
network namespace a test made (``ip netns exec NS``, bound to an address there): then
its health and metrics are read from a thread that entered that namespace.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

__all__ = ["REPO_ROOT", "ServerProcess", "call_in_netns", "enter_netns", "free_port", "server_help"]

REPO_ROOT = Path(__file__).resolve().parents[1]
_CLONE_NEWNET = 0x40000000
_T = TypeVar("_T")


def enter_netns(name: str) -> None:
    """Move the calling thread (only it: setns(2) acts per thread) into the network
    namespace ``ip netns`` knows as ``name``; sockets it creates from now on are there.
    Call it only in a thread of your own that ends afterwards.

    Raises:
        OSError: no such namespace, or not allowed (needs root).
    """
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"setns({name}): {os.strerror(errno)}")
    finally:
        os.close(fd)


def call_in_netns(name: str, fn: Callable[..., _T], *args: Any, timeout: float | None = 60.0) -> _T:
    """``fn(*args)`` in a new thread inside the network namespace ``name``; its result,
    or its exception raised here.

    Raises:
        TimeoutError: it did not return within ``timeout`` seconds.
    """
    outcome: list[Any] = []

    def target() -> None:
        try:
            enter_netns(name)
            outcome.append((True, fn(*args)))
        except BaseException as exc:  # handed to the caller
            outcome.append((False, exc))

    thread = threading.Thread(target=target, name=f"netns-{name}", daemon=True)
    thread.start()
    thread.join(timeout)
    if not outcome:
        raise TimeoutError(f"{fn!r} in {name} took over {timeout} s")
    ok, value = outcome[0]
    if not ok:
        raise value
    return value


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@functools.cache
def server_help() -> str:
    """The text of ``signaling.cli serve --help`` (to find optional flags)."""
    result = subprocess.run(
        [sys.executable, "-m", "signaling.cli", "serve", "--help"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    return result.stdout


class ServerProcess:
    """One SFU server subprocess.

    Attributes:
        port: its HTTP/WebSocket port on 127.0.0.1.
        log_path: the file that receives its stdout and stderr.
        proc: the ``subprocess.Popen`` object.
    """

    def __init__(
        self,
        log_path: Path,
        extra_args: Sequence[str] = (),
        *,
        port: int | None = None,
        cpus: set[int] | None = None,
        python_args: Sequence[str] = (),
        tls: tuple[Path, Path] | None = None,
        netns: str | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        """Start the server (this returns at once; see :meth:`wait_healthy`).

        Args:
            log_path: where to write the server's output.
            extra_args: more ``serve`` options, e.g. ``("--max-participants", "2")``;
                ``--workers 1`` unless they name ``--workers``.
            port: the port, default a free one.
            cpus: pin the server to these CPU numbers (``sched_setaffinity``).
            python_args: interpreter arguments before ``-m signaling.cli``, e.g.
                ``("-m", "cProfile", "-o", "out.prof")``.
            tls: (certificate, key) PEM files: serve HTTPS/WSS (``--tls-cert/--tls-key``).
            netns: run it inside this network namespace (``ip netns exec``; root).
            host: the address it binds (``--host``) and is reached at.
        """
        self.port = port or free_port()
        self.netns = netns
        self.host = host
        self.tls = tls
        if tls is not None:
            extra_args = (*extra_args, "--tls-cert", str(tls[0]), "--tls-key", str(tls[1]))
        if not any(a == "--workers" or a.startswith("--workers=") for a in extra_args):
            extra_args = ("--workers", "1", *extra_args)  # one process unless a test asks for workers
        self.log_path = log_path
        with open(log_path, "wb") as log:
            prefix = ["ip", "netns", "exec", netns] if netns else []  # ip execs: the pid stays the server's
            self.proc = subprocess.Popen(
                [*prefix, sys.executable, *python_args, "-m", "signaling.cli", "serve",
                 "--host", host, "--port", str(self.port), *extra_args],
                cwd=REPO_ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        if cpus:
            os.sched_setaffinity(self.proc.pid, cpus)

    @property
    def pid(self) -> int:
        """The server's process id."""
        return self.proc.pid

    @property
    def ws_url(self) -> str:
        """The room service WebSocket URL."""
        return f"{'wss' if self.tls else 'ws'}://{self._authority}/ws"

    @property
    def http_url(self) -> str:
        """The base HTTP URL (``/healthz``, ``/metrics``)."""
        return f"{'https' if self.tls else 'http'}://{self._authority}"

    @property
    def _authority(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def _urlopen(self, url: str, timeout: float) -> tuple[int, bytes]:
        """GET ``url`` (from inside the server's namespace when it has one)."""
        # A test certificate is self-signed: health polling does not verify it.
        context = ssl._create_unverified_context() if self.tls else None

        def get() -> tuple[int, bytes]:
            with urllib.request.urlopen(url, timeout=timeout, context=context) as response:
                return response.status, response.read()

        if self.netns is None:
            return get()
        return call_in_netns(self.netns, get, timeout=timeout + 5)

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Poll ``/healthz`` every 0.1 s until it answers 200.

        Raises:
            RuntimeError: the server exited, or was not healthy within ``timeout``
                seconds (the message holds the end of its log).
        """
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self._urlopen(f"{self.http_url}/healthz", 1.0)[0] == 200:
                    return
            except (urllib.error.URLError, OSError):
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not healthy after {timeout} s:\n{self.log_tail()}")
            time.sleep(0.1)

    def metrics(self) -> dict[str, float]:
        """Every sample on ``/metrics``, keyed by its name with labels as written
        (``sfu_datachannel_messages_dropped_total{reason="buffer_full"}``)."""
        text = self._urlopen(f"{self.http_url}/metrics", 5.0)[1].decode()
        samples: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                samples[name] = float(value)
        return samples

    def stop(self, sig: int = signal.SIGTERM, grace: float = 7.0) -> int:
        """Send ``sig`` to the server's pid, wait up to ``grace`` seconds, then
        SIGKILL it; then SIGKILL whatever is left of its process group (the workers of
        a front). Returns its exit code."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=grace)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # its own session: pgid == pid
        return self.proc.returncode

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the server log."""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
