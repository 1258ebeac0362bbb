"""Fixtures for integration tests: the real SFU server as a subprocess on loopback.

Each server runs ``python -m signaling.cli serve --host 127.0.0.1 --port <free port>``
in its own session, writes its log to a file in the test's temp dir, and is ended by
its pid (SIGTERM, then SIGKILL) when the fixture finishes, pass or fail.
"""

from __future__ import annotations

import functools
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from loadtest.client import restrict_ice_to_loopback

REPO_ROOT = Path(__file__).resolve().parents[2]
SERVER_START_TIMEOUT = 30.0  # seconds until /healthz must answer 200
SERVER_STOP_GRACE = 5.0  # seconds between SIGTERM and SIGKILL

# Every aiortc peer in the test process gathers only 127.0.0.1 (TESTING.md: loopback only).
restrict_ice_to_loopback()


@dataclass(frozen=True)
class ServerProcess:
    """A running SFU server.

    Attributes:
        pid: the server's process id.
        port: its HTTP/WebSocket port on 127.0.0.1.
        log_path: file holding its stdout and stderr.
    """

    pid: int
    port: int
    log_path: Path

    @property
    def ws_url(self) -> str:
        """The room service WebSocket URL."""
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def http_url(self) -> str:
        """The base HTTP URL (``/healthz``, ``/metrics``)."""
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the server log."""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """End the server by its pid: SIGTERM, then SIGKILL after the grace period."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=SERVER_STOP_GRACE)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=SERVER_STOP_GRACE)


@functools.cache
def server_help() -> str:
    """The server CLI's ``serve --help`` text (to find optional flags)."""
    result = subprocess.run(
        [sys.executable, "-m", "signaling.cli", "serve", "--help"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    return result.stdout


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """A factory: ``start_server(*extra_args)`` starts a server and waits for
    ``/healthz``; every server it started is stopped at teardown."""
    procs: list[tuple[subprocess.Popen[bytes], ServerProcess]] = []

    def start(*extra_args: str) -> ServerProcess:
        port = free_port()
        log_path = tmp_path / f"server-{port}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "signaling.cli", "serve", "--host", "127.0.0.1",
                 "--port", str(port), *extra_args],
                cwd=REPO_ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        server = ServerProcess(proc.pid, port, log_path)
        procs.append((proc, server))
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while not _healthy(f"{server.http_url}/healthz"):
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}:\n{server.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not healthy after {SERVER_START_TIMEOUT} s:\n{server.log_tail()}")
            time.sleep(0.1)
        return server

    try:
        yield start
    finally:
        for proc, server in procs:
            _stop(proc)
            print(f"--- server pid {server.pid} log tail ---\n{server.log_tail()}")


@pytest.fixture
def server(start_server: Callable[..., ServerProcess]) -> ServerProcess:
    """A server with default options."""
    return start_server()
