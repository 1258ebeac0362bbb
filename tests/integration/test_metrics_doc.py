"""docs/METRICS.md lists exactly the sfu_ metrics that /metrics exposes, with their types;
and the room-service metrics move with real traffic."""

from __future__ import annotations

import asyncio
import json
import re
import urllib.request
from collections.abc import Callable

import aiohttp

from loadtest.client import RoomClient
from loadtest.data import ChannelSpec
from loadtest.server import REPO_ROOT, ServerProcess


def documented() -> dict[str, str]:
    """metric name -> type, from the table in docs/METRICS.md."""
    text = (REPO_ROOT / "docs" / "METRICS.md").read_text()
    return dict(re.findall(r"^\| `(sfu_[a-z_]+)` \| (counter|gauge|histogram) \|", text, re.MULTILINE))


def exposed(server: ServerProcess) -> dict[str, str]:
    with urllib.request.urlopen(f"{server.http_url}/metrics", timeout=5) as response:
        text = response.read().decode()
    return dict(re.findall(r"^# TYPE (sfu_\S+) (\S+)$", text, re.MULTILINE))


def test_metrics_doc_matches_exposition(start_server: Callable[..., ServerProcess]) -> None:
    """With two workers (the front's metrics and the workers', as `sfu serve` runs on
    this machine by default)."""
    doc = documented()
    assert len(doc) >= 20, "the METRICS.md table was not found"
    assert exposed(start_server("--workers", "2")) == doc


async def test_signaling_metrics_follow_connections_errors_and_joins(server: ServerProcess) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(server.ws_url) as ws:
            await ws.send_str("{not json")
            assert json.loads((await ws.receive(timeout=10)).data)["code"] == "bad_json"
            samples = await asyncio.to_thread(server.metrics)
            assert samples["sfu_websocket_connections"] == 1
            assert samples['sfu_signaling_errors_total{code="bad_json"}'] == 1
        for _ in range(40):  # the lag watch observes every 250 ms
            if (await asyncio.to_thread(server.metrics))["sfu_event_loop_lag_seconds_count"] >= 2:
                break
            await asyncio.sleep(0.1)
        assert (await asyncio.to_thread(server.metrics))["sfu_event_loop_lag_seconds_count"] >= 2
        for _ in range(40):  # the server notices the close
            samples = await asyncio.to_thread(server.metrics)
            if samples["sfu_websocket_connections"] == 0:
                break
            await asyncio.sleep(0.05)
        assert samples["sfu_websocket_connections"] == 0

    # A participant that joins and negotiates (DataChannels only) is one join observed.
    client = RoomClient(server.ws_url, channels=[ChannelSpec("chat")])
    try:
        await client.join("joins", "Joiner")
    finally:
        await client.close()
    samples = await asyncio.to_thread(server.metrics)
    assert samples["sfu_join_duration_seconds_count"] == 1
    assert 0 < samples["sfu_join_duration_seconds_sum"] < 10
