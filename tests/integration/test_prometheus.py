"""A real Prometheus server scrapes the SFU's ``/metrics`` while aiortc bots use a room.

Prometheus (Debian package ``prometheus``; ``.ci/run`` installs it) runs as a subprocess
with a config written to the test's temp dir: one job, one target (the SFU on
127.0.0.1), scraped every second; its HTTP API listens on 127.0.0.1 only. The test
asks that API, as a dashboard would, for the forwarded packet rate and the
participant and downtrack gauges, and checks that they follow the room: up while one
publisher and two subscribers are in it, back to 0 once they have gone. Prometheus is
ended by its pid (SIGTERM, then SIGKILL) whatever happens.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from loadtest.client import RoomClient
from loadtest.media import PreEncodedAudioTrack, PreEncodedVideoTrack
from loadtest.server import REPO_ROOT, ServerProcess, free_port

PROMETHEUS = shutil.which("prometheus")
WAIT = 30.0  # seconds, the bound of every wait on Prometheus or the bots
TEST_TIMEOUT = 40.0  # seconds, the bound of the test's asyncio part



def _start_prometheus(tmp_path: Path, target: str) -> tuple[subprocess.Popen[bytes], str, Path]:
    """Start Prometheus scraping ``target`` (host:port) every second. Returns the
    process, its base URL and its log file."""
    # A missing Prometheus is a failed set-up, not a skipped test (.ci/run installs it).
    assert PROMETHEUS is not None, "needs Debian's prometheus: apt-get install -y prometheus"
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n"
        "  scrape_interval: 1s\n"
        "  scrape_timeout: 1s\n"
        "  evaluation_interval: 1s\n"
        "scrape_configs:\n"
        "  - job_name: sfu\n"
        "    metrics_path: /metrics\n"
        "    static_configs:\n"
        f"      - targets: ['{target}']\n"
    )
    port = free_port()
    log_path = tmp_path / "prometheus.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                PROMETHEUS,  # type: ignore[list-item]
                f"--config.file={config}",
                f"--web.listen-address=127.0.0.1:{port}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                "--storage.tsdb.retention.time=1h",
            ],
            cwd=tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return proc, f"http://127.0.0.1:{port}", log_path


def _stop(proc: subprocess.Popen[bytes], grace: float = 5.0) -> int:
    """SIGTERM ``proc`` by its pid, SIGKILL it after ``grace`` seconds."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=grace)
    return proc.returncode


class PromAPI:
    """The few calls of Prometheus's HTTP API the test needs."""

    def __init__(self, session: aiohttp.ClientSession, base: str, proc: subprocess.Popen[bytes]) -> None:
        self.session = session
        self.base = base
        self.proc = proc

    async def wait_ready(self, timeout: float) -> None:
        """Poll ``/-/ready`` every 0.2 s until it answers 200."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self.proc.returncode}")
            try:
                async with self.session.get(f"{self.base}/-/ready") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"prometheus not ready after {timeout} s")
            await asyncio.sleep(0.2)

    async def query(self, expr: str) -> list[float]:
        """The values of an instant vector query, now (empty when nothing matches)."""
        async with self.session.get(f"{self.base}/api/v1/query", params={"query": expr}) as response:
            body = await response.json()
        assert body.get("status") == "success", f"query {expr!r} failed: {body}"
        assert body["data"]["resultType"] == "vector", body
        return [float(sample["value"][1]) for sample in body["data"]["result"]]

    async def wait_for(self, expr: str, accept: Callable[[list[float]], bool], timeout: float) -> list[float]:
        """Re-run ``expr`` every 0.5 s until ``accept(values)``; fail the test with
        the last values after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        values: list[float] = []
        while time.monotonic() < deadline:
            values = await self.query(expr)
            if accept(values):
                return values
            await asyncio.sleep(0.5)
        pytest.fail(f"Prometheus: {expr} = {values} after {timeout} s")


def _dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, expression) of every query in dashboards/sfu-grafana.json, with
    Grafana's variables replaced as Grafana would for "All" over a 1 s scrape."""
    dashboard = json.loads((REPO_ROOT / "dashboards" / "sfu-grafana.json").read_text())
    stack, queries = list(dashboard["panels"]), []
    while stack:
        panel = stack.pop()
        stack.extend(panel.get("panels", []))
        for target in panel.get("targets", []):
            expr = target["expr"].replace("$__rate_interval", "5s").replace("$job", ".*").replace("$instance", ".*")
            queries.append((panel["title"], expr))
    return queries


def _equals(expected: float) -> Callable[[list[float]], bool]:
    return lambda values: values == [expected]


async def test_prometheus_scrapes_the_room(server: ServerProcess, tmp_path: Path) -> None:
    proc, base, log_path = _start_prometheus(tmp_path, f"127.0.0.1:{server.port}")
    publisher = RoomClient(server.ws_url, auto_subscribe=False)
    subscribers = [RoomClient(server.ws_url, count_rtp=True) for _ in range(2)]
    bots = [publisher, *subscribers]
    try:
        async with asyncio.timeout(TEST_TIMEOUT), aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=5)
        ) as session:
            prom = PromAPI(session, base, proc)
            await prom.wait_ready(WAIT)
            # The target is scraped and healthy before any bot joins: the gauges start at 0.
            await prom.wait_for('up{job="sfu"}', _equals(1.0), WAIT)
            await prom.wait_for("sfu_participants", _equals(0.0), WAIT)

            await publisher.join("prom", "publisher")
            await publisher.publish([PreEncodedVideoTrack(), PreEncodedAudioTrack()])
            for i, subscriber in enumerate(subscribers):
                await subscriber.join("prom", f"subscriber-{i}")
            for subscriber in subscribers:
                await subscriber.wait_until(lambda s=subscriber: len(s.subscriptions) == 2, timeout=WAIT)

            await prom.wait_for("sfu_participants", _equals(3.0), WAIT)
            await prom.wait_for("sum(rate(sfu_rtp_packets_sent_total[5s]))", lambda v: len(v) == 1 and v[0] > 0, WAIT)
            # One downtrack per subscriber and track; both kinds forwarded.
            await prom.wait_for("sfu_downtracks", _equals(4.0), WAIT)
            kinds = await prom.wait_for(
                "sum by (kind) (rate(sfu_rtp_packets_sent_total[5s])) > 0", lambda v: len(v) == 2, WAIT
            )
            assert all(v > 0 for v in kinds)
            for subscriber in subscribers:
                assert subscriber.counter is not None
                assert sum(s.packets for s in subscriber.counter.snapshot()) > 0, "a subscriber received no RTP"
            # Every query of the Grafana dashboard is valid PromQL for this Prometheus
            # (query() asserts status success), and the media panels show the traffic.
            answers = {expr: await prom.query(expr) for _, expr in _dashboard_queries()}
            forwarded = [v for expr, v in answers.items() if expr.startswith("sum by (kind) (rate(sfu_rtp_packets_sent")]
            assert forwarded and len(forwarded[0]) == 2 and all(x > 0 for x in forwarded[0]), answers

            await asyncio.gather(*(bot.close() for bot in bots))
            await prom.wait_for("sfu_participants", _equals(0.0), WAIT)
            await prom.wait_for("sfu_downtracks", _equals(0.0), WAIT)
            await prom.wait_for("sfu_rooms", _equals(0.0), WAIT)
    finally:
        await asyncio.gather(*(bot.close() for bot in bots), return_exceptions=True)
        code = _stop(proc)
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-20:])
        print(f"--- prometheus pid {proc.pid} exited {code}; log tail ---\n{tail}")
