"""Reconnection of a real Chromium (web/sfu-client.js) whose network fails, in network
namespaces made here (tests/netns.py): the server in one, the reconnecting page
("Mobile", publishing camera and microphone) in another with its own link to the
server, a viewing page in a third.

1. Mobile's link is down for 5 s: its media is back at the viewer within 5 s of the
   link returning, without a page reload, and the viewer never saw it leave.
2. Only Mobile's WebSocket is killed (TCP resets from a firewall rule in its namespace,
   its media path untouched): the same.
3. Mobile's link is down for longer than the server's grace period: the viewer is told
   it left; when the link returns it comes back by itself as a new participant and its
   media flows again.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from loadtest.server import ServerProcess
from tests.browser.pages import (
    MEDIA_STATS_JS,
    assert_receives_media,
    new_room,
    wait_joined,
)
from tests.netns import Network

if TYPE_CHECKING:
    from conftest import BrowserPage, OpenPage

pytestmark = pytest.mark.browser

GRACE_S = 8.0  # the server's --reconnect-grace here
BACK_WITHIN_S = 5.0  # media back at the viewer after the link returns (the figure)

# The viewer's record of participants leaving and joining, from the client's events.
WATCH_JS = """() => {
  window.roster = [];
  for (const type of ['participantleft', 'participantjoined']) {
    window.sfuClient.addEventListener(type, (e) => window.roster.push(
      [type, e.detail.participantId ?? e.detail.participant.id, performance.now()]));
  }
}"""
# Set once in the page: a reload would lose it.
MARK_JS = "() => { window.notReloaded = true; }"
STATE_JS = """() => ({notReloaded: window.notReloaded === true, participantId: window.sfuClient.participantId,
  reconnects: window.sfuReconnects ?? 0, connection: window.sfuPc.connectionState})"""


async def frames_from(viewer: BrowserPage, participant_id: str) -> int:
    stats = await viewer.page.evaluate(MEDIA_STATS_JS)
    entry = stats.get(participant_id)
    return entry["framesDecoded"] if entry else 0


async def wait_frames(viewer: BrowserPage, participant_id: str, more_than: int, timeout: float) -> float | None:
    """Seconds until ``viewer`` has decoded 10 frames more than ``more_than`` from
    ``participant_id``; None if not within ``timeout``."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if await frames_from(viewer, participant_id) >= more_than + 10:
            return time.monotonic() - start
        await asyncio.sleep(0.1)
    return None


async def roster(viewer: BrowserPage) -> list[list]:
    return await viewer.page.evaluate("() => window.roster")


async def test_a_page_whose_network_fails_comes_back_by_itself(
    network: Network, open_page: OpenPage, servers: list[ServerProcess], tmp_path: Path
) -> None:
    srv, mob, obs = (network.namespace(r) for r in ("srv", "mob", "obs"))
    mob_link = network.connect(srv, mob)
    obs_link = network.connect(srv, obs)
    mob.add_route("default", via=mob_link.a_addr)
    obs.add_route("default", via=obs_link.a_addr)
    address = mob_link.a_addr  # the server's address on Mobile's link (the viewer routes to it)
    server = ServerProcess(
        tmp_path / "server.log", ("--dev", "--reconnect-grace", str(GRACE_S)), netns=srv.name, host=address
    )
    servers.append(server)
    server.wait_healthy(30)
    base = f"http://{address}:{server.port}"
    insecure_ok = [f"--unsafely-treat-insecure-origin-as-secure={base}"]
    room = new_room("mob")

    viewer = await open_page(f"{base}/?room={room}&name=Viewer&publish=0", "Viewer", netns=obs, args=insecure_ok)
    await wait_joined(viewer)
    await viewer.page.evaluate(WATCH_JS)
    mobile = await open_page(f"{base}/?room={room}&name=Mobile&simulcast=0", "Mobile", netns=mob, args=insecure_ok)
    mobile_id = await wait_joined(mobile)
    await mobile.page.evaluate(MARK_JS)
    await assert_receives_media(viewer, [mobile_id])
    await viewer.page.evaluate("() => { window.roster.length = 0; }")  # Mobile's own join

    # 1. The link is down for 5 s.
    frames = await frames_from(viewer, mobile_id)
    network.link_down(mob)
    await asyncio.sleep(5.0)
    network.link_up(mob)
    back_after_link = await wait_frames(viewer, mobile_id, frames, timeout=BACK_WITHIN_S)
    assert back_after_link is not None, (
        f"Mobile's video not back at the viewer within {BACK_WITHIN_S} s of the link returning: "
        f"{await viewer.page.evaluate(MEDIA_STATS_JS)}\n{mobile.log()}"
    )
    state = await mobile.page.evaluate(STATE_JS)
    assert state["notReloaded"] and state["participantId"] == mobile_id, state
    assert await roster(viewer) == [], "the viewer saw Mobile leave or join"

    # 2. Only the WebSocket dies: TCP from Mobile to the server's port is reset until
    # the client has noticed (its pings every 5 s meet the reset), then allowed again.
    reconnects = state["reconnects"]
    rule = ["OUTPUT", "-p", "tcp", "--dport", str(server.port), "-j", "REJECT", "--reject-with", "tcp-reset"]
    mob.iptables("-I", *rule)
    try:
        await mobile.page.wait_for_function(
            "() => document.querySelector('#status').textContent.includes('Reconnecting')", timeout=15_000
        )
    finally:
        mob.iptables("-D", *rule)
    frames = await frames_from(viewer, mobile_id)
    await mobile.page.wait_for_function(f"() => (window.sfuReconnects ?? 0) > {reconnects}", timeout=15_000)
    assert await wait_frames(viewer, mobile_id, frames, timeout=BACK_WITHIN_S) is not None
    state = await mobile.page.evaluate(STATE_JS)
    assert state["notReloaded"] and state["participantId"] == mobile_id, state
    assert await roster(viewer) == [], "the viewer saw Mobile leave or join"

    # 3. Down for longer than the grace period: the viewer is told it left; it comes
    # back as a new participant once the link returns.
    down_at = time.monotonic()
    network.link_down(mob)
    await viewer.page.wait_for_function(
        f"() => window.roster.some(([type, id]) => type === 'participantleft' && id === '{mobile_id}')",
        timeout=(GRACE_S + 15) * 1000,
    )
    left_after = time.monotonic() - down_at
    await asyncio.sleep(max(0.0, GRACE_S + 3 - (time.monotonic() - down_at)))
    network.link_up(mob)
    up_at = time.monotonic()
    await mobile.page.wait_for_function(
        f"() => window.sfuClient.participantId && window.sfuClient.participantId !== '{mobile_id}'", timeout=20_000
    )
    new_id = (await mobile.page.evaluate(STATE_JS))["participantId"]
    await assert_receives_media(viewer, [new_id])
    rejoined_after = time.monotonic() - up_at
    state = await mobile.page.evaluate(STATE_JS)
    assert state["notReloaded"], state
    events = await roster(viewer)
    assert [e[:2] for e in events] == [["participantleft", mobile_id], ["participantjoined", new_id]], events
    assert GRACE_S - 1 < left_after < GRACE_S + 12, left_after  # after the grace, once the server noticed
    print(f"media back {back_after_link:.2f} s after the link; left after {left_after:.1f} s; "
          f"rejoined and decoded {rejoined_after:.1f} s after the link")
