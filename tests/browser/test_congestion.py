"""Bandwidth estimation with real Chromium: what is not congestion must not cost video
(a busy 2-core machine with four participants, random loss), and what is congestion
is met where it is (a publisher's limited uplink, through the server's transport-cc
feedback). The subscriber whose downlink is limited is in test_simulcast.py.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from typing import TYPE_CHECKING

import aiohttp
import pytest

from loadtest.bench_simulcast import VIDEO_STATS_JS
from tests.browser.pages import MEDIA_STATS_JS, join, new_room
from tests.integration.shaping import random_loss, shaped_port

if TYPE_CHECKING:
    from conftest import BrowserPage, OpenPage

pytestmark = pytest.mark.browser

LAYERS = ((320, 180, "q"), (640, 360, "h"), (1280, 720, "f"))  # the demo page's camera layers
SETTLE_TIMEOUT_S = 40.0

# Per remote track: the size the tile asked for, and the layer forwarded now.
TILES_JS = """() => {
  const out = {};
  for (const s of window.sfuSettingsSent) out[s.trackId] = {...(out[s.trackId] || {}), ...s.settings};
  const layers = {};
  for (const [trackId, info] of window.sfuClient.layers) layers[trackId] = {rid: info.rid, paused: info.paused, reason: info.reason};
  return {asked: out, layers, paused: window.sfuLayerEvents.filter((e) => e.paused).map((e) => [e.trackId, e.reason, Math.round(e.receivedAt)])};
}"""

SELECTED_PAIR_JS = """async () => {
  const stats = [...(await window.sfuPc.getStats()).values()];
  const transport = stats.find((s) => s.type === 'transport' && s.selectedCandidatePairId);
  const pair = transport && stats.find((s) => s.id === transport.selectedCandidatePairId);
  const remote = pair && stats.find((s) => s.id === pair.remoteCandidateId);
  return remote ? remote.port : null;
}"""

OUTBOUND_JS = """async () => {
  const out = {};
  (await window.sfuPc.getStats()).forEach((s) => {
    if (s.type === 'outbound-rtp' && s.kind === 'video' && s.rid) {
      out[s.rid] = {bytes: s.bytesSent, height: s.frameHeight ?? 0, limitation: s.qualityLimitationReason};
    }
  });
  return out;
}"""


async def bandwidth_downs(base_url: str) -> float:
    """The server's count of layer changes down or to a pause for reason bandwidth."""
    async with aiohttp.ClientSession() as http, http.get(f"{base_url}/metrics") as response:
        text = await response.text()
    total = 0.0
    for line in text.splitlines():
        if line.startswith("sfu_layer_switches_total{") and 'reason="bandwidth"' in line:
            if 'direction="down"' in line or 'direction="pause"' in line:
                total += float(line.rsplit(" ", 1)[1])
    return total


async def server_view(base_url: str) -> list[str]:
    """The server's side of every video track, one line each (for failure messages):
    per publisher layer its bit rate, packets and keyframes received and keyframe
    requests sent; per subscriber the layer forwarded and the target."""
    async with aiohttp.ClientSession() as http, http.get(f"{base_url}/admin/rooms") as response:
        rooms = await response.json()
    lines = []
    for participant in (p for room in rooms.get("rooms", rooms) if isinstance(room, dict) for p in room.get("participants", [])):
        for up in participant.get("published", []):
            if up.get("kind") == "video":
                layers = [(l["rid"], l["bitrate"], l["packetsReceived"], l["keyframesReceived"], l["keyframeRequestsSent"]) for l in up["layers"]]
                lines.append(f"{participant['id']} publishes {up['id']}: {layers}")
        for down in participant.get("subscribed", []):
            if down.get("kind") == "video":
                lines.append(f"{participant['id']} gets {down['trackId']}: layer {down['layer']} target {down['targetLayer']} ({down['reason']})")
    return lines


def covering(size: dict) -> str:
    """The rid of the smallest layer that covers a tile of ``size`` (the server's rule)."""
    width, height = size.get("maxWidth"), size.get("maxHeight")
    for w, h, rid in LAYERS:
        if (height is None or h >= height) and (width is None or w >= width):
            return rid
    return LAYERS[-1][2]


@pytest.fixture
def iptables_available() -> None:
    if os.geteuid() != 0 or shutil.which("iptables") is None:
        pytest.fail("random loss needs root and iptables (.ci/run installs the Debian package iptables)")


async def test_four_participants_on_loopback_keep_their_layers(sfu_server: str, open_page: OpenPage) -> None:
    """Four participants of the demo page on unshaped loopback, this 2-core machine
    busy encoding and decoding them all: for 30 s no video is paused and no layer goes
    down for bandwidth, every tile gets the layer that covers it (or, where a publisher
    busy with its CPU stopped sending that layer, the best one it sends), and every
    video keeps decoding."""
    room = new_room("c")
    pages = [await join(open_page, sfu_server, room, name) for name in ("Ann", "Ben", "Cid", "Dee")]
    ids = [pid for _, pid in pages]

    def fits(layer: dict, asked: dict | None) -> bool:
        """The tile's covering layer; or, when the publisher (a busy Chrome adapting to
        the CPU) stopped sending it, a lower one."""
        if asked is None or layer["paused"]:
            return False
        want = covering(asked)
        if layer["reason"] == "publisher_layer_lost":
            return "qhf".index(layer["rid"]) <= "qhf".index(want)
        return layer["rid"] == want

    async def settled(page: BrowserPage) -> bool:
        state = await page.page.evaluate(TILES_JS)
        return len(state["layers"]) == 3 and all(fits(layer, state["asked"].get(t)) for t, layer in state["layers"].items())

    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while not all(await asyncio.gather(*(settled(p) for p, _ in pages))):
        if time.monotonic() > deadline:
            states = await asyncio.gather(*(p.page.evaluate(TILES_JS) for p, _ in pages))
            sent = await asyncio.gather(*(p.page.evaluate(OUTBOUND_JS) for p, _ in pages))
            server = "\n".join(await server_view(sfu_server))
            pytest.fail(f"the tiles did not all get their covering layers: {states}; the publishers sent {sent}; the server:\n{server}")
        await asyncio.sleep(0.5)

    before = [await p.page.evaluate(TILES_JS) for p, _ in pages]
    switches_before = await bandwidth_downs(sfu_server)
    first = await asyncio.gather(*(p.page.evaluate(MEDIA_STATS_JS) for p, _ in pages))
    for _ in range(6):  # 30 s, looked at every 5 s
        await asyncio.sleep(5.0)
        stats = await asyncio.gather(*(p.page.evaluate(MEDIA_STATS_JS) for p, _ in pages))
        for (page, own), now, then in zip(pages, stats, first):
            for pid in ids:
                if pid != own:
                    assert now[pid]["framesDecoded"] - then[pid]["framesDecoded"] >= 25, (
                        f"{page.label}: video from {pid} stalled: {then[pid]} -> {now[pid]}"
                    )
        first = stats
    after = [await p.page.evaluate(TILES_JS) for p, _ in pages]
    assert await bandwidth_downs(sfu_server) == switches_before, "a layer went down or paused for bandwidth"
    for (page, _), b, a in zip(pages, before, after):
        assert a["paused"] == b["paused"] == [], f"{page.label} saw a pause: {a}"
        for trackId, layer in a["layers"].items():
            assert fits(layer, a["asked"].get(trackId)), f"{page.label}: {trackId} {layer}, asked {a['asked'].get(trackId)}"


async def test_random_loss_keeps_the_layer(sfu_server: str, open_page: OpenPage, iptables_available: None) -> None:
    """A subscriber whose incoming UDP loses 5 % of packets at random (no queue, no
    bandwidth limit) keeps the top layer for 60 s, with no freeze over 0.5 s: NACK and
    RTX repair random loss, and random loss without a delay trend is not congestion."""
    room = new_room("r")
    _, publisher_id = await join(open_page, sfu_server, room, "Pub")
    viewer, _ = await join(open_page, sfu_server, room, "Lossy", publish="0", maxHeight="none")
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while True:
        stats = await viewer.page.evaluate(VIDEO_STATS_JS, publisher_id)
        if stats["frameHeight"] >= 540:
            break
        if time.monotonic() > deadline:
            pytest.fail(f"the viewer never reached the top layer: {stats}\n{viewer.log()}")
        await asyncio.sleep(0.5)
    # Everything the server sends the viewer leaves from the server's port of its connection.
    server_port = await viewer.page.evaluate(SELECTED_PAIR_JS)
    assert server_port, "the viewer has no selected candidate pair"
    events_before = len(await viewer.page.evaluate("() => window.sfuLayerEvents"))
    with random_loss(0.05, sport=server_port):
        first = last = await viewer.page.evaluate(VIDEO_STATS_JS, publisher_id)
        max_freeze = max_stall = 0.0
        stalled_since = first["at"]
        start = time.monotonic()
        while time.monotonic() - start < 60.0:
            await asyncio.sleep(0.25)
            now = await viewer.page.evaluate(VIDEO_STATS_JS, publisher_id)
            if now["framesDecoded"] > last["framesDecoded"]:
                stalled_since = now["at"]
            max_stall = max(max_stall, (now["at"] - stalled_since) / 1000)
            if now["freezeCount"] > last["freezeCount"]:
                max_freeze = max(max_freeze, now["totalFreezesDuration"] - last["totalFreezesDuration"])
            last = now
    lost = last["packetsLost"] - first["packetsLost"]
    received = last["packetsReceived"] - first["packetsReceived"]
    events = (await viewer.page.evaluate("() => window.sfuLayerEvents"))[events_before:]
    summary = (f"60 s at 5 % random loss: {lost} of {lost + received} lost before repair, NACKs "
               f"{last['nackCount'] - first['nackCount']}, longest freeze <= {max_freeze:.3f} s, longest stall "
               f"{max_stall:.3f} s, {last['framesDecoded'] - first['framesDecoded']} frames, layer events {events}")
    print(summary)
    assert last["nackCount"] > first["nackCount"], f"no loss reached the subscriber: {summary}"
    assert events == [], f"the layer changed under random loss: {summary}"
    assert last["frameHeight"] >= 540, summary
    assert max_freeze <= 0.5 and max_stall <= 0.5, summary


async def test_a_limited_publisher_uplink_drops_its_top_layer(
    sfu_server: str, open_page: OpenPage, tc_available: None
) -> None:
    """A publisher whose uplink to the server is limited to 600 kbit/s stops sending
    its top layer, steered by the server's transport-cc feedback (Chrome's own
    congestion control); an unlimited subscriber moves to the middle layer, told that
    the publisher lost the top one, and keeps decoding."""
    room = new_room("u")
    publisher, publisher_id = await join(open_page, sfu_server, room, "Pub")
    viewer, _ = await join(open_page, sfu_server, room, "Viewer", publish="0", maxHeight="none")
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while (await viewer.page.evaluate(VIDEO_STATS_JS, publisher_id))["frameHeight"] < 540:
        if time.monotonic() > deadline:
            pytest.fail(f"the viewer never reached the top layer\n{viewer.log()}")
        await asyncio.sleep(0.5)
    server_port = await publisher.page.evaluate(SELECTED_PAIR_JS)
    assert server_port, "the publisher has no selected candidate pair"
    with shaped_port(server_port, 600, 30):
        limited_at = time.monotonic()
        f_stopped = None
        while time.monotonic() - limited_at < 20.0:
            a = await publisher.page.evaluate(OUTBOUND_JS)
            await asyncio.sleep(1.0)
            b = await publisher.page.evaluate(OUTBOUND_JS)
            f_rate = (b["f"]["bytes"] - a["f"]["bytes"]) * 8 if "f" in b and "f" in a else 0
            if f_rate < 20_000:
                f_stopped = time.monotonic() - limited_at
                break
        outbound = await publisher.page.evaluate(OUTBOUND_JS)
        assert f_stopped is not None, f"the publisher kept sending its top layer under the limit: {outbound}"
        deadline = time.monotonic() + 10.0
        while True:
            stats = await viewer.page.evaluate(VIDEO_STATS_JS, publisher_id)
            if 0 < stats["frameHeight"] <= 360:
                break
            if time.monotonic() > deadline:
                events = await viewer.page.evaluate("() => window.sfuLayerEvents")
                pytest.fail(f"the viewer stayed on {stats['frameHeight']} px: {events}")
            await asyncio.sleep(0.25)
        events = await viewer.page.evaluate("() => window.sfuLayerEvents")
        assert any(e["reason"] == "publisher_layer_lost" and e["rid"] in ("q", "h") for e in events), events
        first = await viewer.page.evaluate(VIDEO_STATS_JS, publisher_id)
        await asyncio.sleep(2.0)
        last = await viewer.page.evaluate(VIDEO_STATS_JS, publisher_id)
        assert last["framesDecoded"] - first["framesDecoded"] >= 20, (first, last)
    print(f"publisher uplink 600 kbit/s: top layer stopped after {f_stopped:.1f} s; sends {outbound}")
