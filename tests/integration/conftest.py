"""Fixtures for integration tests: the real SFU server as a subprocess on loopback.

Each server runs ``python -m signaling.cli serve --host 127.0.0.1 --port <free port>``
(:class:`loadtest.server.ServerProcess`), logs to a file in the test's temp dir, and
is ended by its pid (SIGTERM, then SIGKILL) when the fixture finishes, pass or fail.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from loadtest.media import PreEncodedAudioTrack, PreEncodedVideoTrack
from loadtest.server import ServerProcess
from sfu.rtc.adapter import set_ice_addresses

SERVER_START_TIMEOUT = 30.0  # seconds until /healthz must answer 200

# Every aiortc peer in the test process gathers only 127.0.0.1 (TESTING.md: loopback only).
set_ice_addresses(["127.0.0.1"])


@pytest.fixture(scope="session", autouse=True)
def encoded_clips() -> None:
    """Encode the bots' media clips once, before any test connects: the first
    encoding takes seconds of CPU (15 s on a busy 2-core machine) and, inside a test,
    would block its event loop long enough for the server's WebSocket heartbeat to
    drop the connection."""
    PreEncodedVideoTrack()
    PreEncodedAudioTrack()


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """A factory: ``start_server(*extra_args)`` starts a server and waits for
    ``/healthz``; every server it started is stopped at teardown and the end of its
    log is printed (pytest shows it when the test fails)."""
    servers: list[ServerProcess] = []

    def start(*extra_args: str) -> ServerProcess:
        server = ServerProcess(tmp_path / f"server-{len(servers)}.log", extra_args)
        servers.append(server)
        server.wait_healthy(SERVER_START_TIMEOUT)
        return server

    try:
        yield start
    finally:
        for server in servers:
            code = server.stop()
            print(f"--- server pid {server.pid} exited {code}; log tail ---\n{server.log_tail()}")


@pytest.fixture
def server(start_server: Callable[..., ServerProcess]) -> ServerProcess:
    """A server with default options."""
    return start_server()
