"""Both browser engines in one room: Debian's Firefox ESR and Chromium, each as
publisher and subscriber, in every join order.

Each scenario asserts what a person would see and hear, from the pages' own
``getStats()`` and DOM: video frames decoded and rising, audio packets received and
played out, in both directions; chat delivered; the tile of a leaver removed; the
simulcast layer a capped or shaped subscriber decodes.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import pytest

from loadtest.bench_simulcast import VIDEO_STATS_JS
from tests.browser.pages import (
    assert_receives_media,
    join,
    leave,
    new_room,
    send_chat,
    tile_name,
    wait_chat,
    wait_chat_open,
    wait_tile_gone,
)
from tests.integration.shaping import shaped_port

if TYPE_CHECKING:
    from conftest import BrowserPage, OpenPage

pytestmark = pytest.mark.browser

LAYER_TIMEOUT_S = 30.0  # until a subscriber decodes the layer it is now allowed
DROP_TIMEOUT_S = 10.0  # from shaping until a lower layer is decoded
RECOVERY_TIMEOUT_S = 40.0  # from lifting the limit until the top layer is decoded again
SHAPED_RATE_KBIT = 350
SHAPED_QUEUE_PACKETS = 20

# The demo page publishes its camera at 1280x720 as rids q/h/f at 1/4, 1/2 and full size.
LAYER_HEIGHTS = {"q": 180, "h": 360, "f": 720}

VIDEO_TRACK_JS = """(pid) => [...window.sfuClient.participants.get(pid).tracks.values()]
  .find((t) => t.kind === 'video') ?? null"""


def pair_id(engines: tuple[str, str]) -> str:
    return "-then-".join(engines)


@pytest.mark.parametrize(
    "engines", [("firefox", "firefox"), ("firefox", "chromium"), ("chromium", "firefox")], ids=pair_id
)
async def test_two_engines_see_hear_chat_and_leave(
    sfu_server: str, open_page: OpenPage, engines: tuple[str, str]
) -> None:
    """The first joins an empty room, the second joins it: each decodes the other's
    video and plays the other's audio, their chat messages cross, and when the second
    leaves, its tile goes from the first's page while the first stays connected."""
    room = new_room("e")
    first, first_id = await join(open_page, sfu_server, room, "First", engines[0])
    second, second_id = await join(open_page, sfu_server, room, "Second", engines[1])

    await asyncio.gather(assert_receives_media(first, [second_id]), assert_receives_media(second, [first_id]))
    assert await tile_name(first, second_id) == "Second"
    assert await tile_name(second, first_id) == "First"

    await asyncio.gather(wait_chat_open(first), wait_chat_open(second))
    await send_chat(first, f"hello from {engines[0]}")
    await wait_chat(second, "First", f"hello from {engines[0]}")
    await send_chat(second, f"hello from {engines[1]}")
    await wait_chat(first, "Second", f"hello from {engines[1]}")

    await leave(second)
    await wait_tile_gone(first, second_id)
    assert await first.page.evaluate("() => window.sfuPc.connectionState") == "connected"


@pytest.mark.parametrize("engines", [("chromium", "firefox"), ("firefox", "chromium")],
                         ids=lambda e: f"{e[1]}-into-two-{e[0]}")
async def test_late_joiner_into_a_room_of_two_publishers(
    sfu_server: str, open_page: OpenPage, engines: tuple[str, str]
) -> None:
    """Two publishers of one engine are in a call; a late joiner of the other engine
    (whose first offer has the existing tracks' recvonly m-lines ahead of its own)
    decodes and hears both, and both decode and hear it."""
    early, late = engines
    room = new_room("l")
    (a, a_id), (b, b_id) = await asyncio.gather(
        join(open_page, sfu_server, room, "EarlyA", early), join(open_page, sfu_server, room, "EarlyB", early)
    )
    await asyncio.gather(assert_receives_media(a, [b_id]), assert_receives_media(b, [a_id]))

    c, c_id = await join(open_page, sfu_server, room, "Late", late)
    await asyncio.gather(
        assert_receives_media(c, [a_id, b_id]),
        assert_receives_media(a, [c_id]),
        assert_receives_media(b, [c_id]),
    )


async def video_from(page: BrowserPage, publisher_id: str) -> dict:
    return await page.page.evaluate(VIDEO_STATS_JS, publisher_id)


async def wait_video(page: BrowserPage, publisher_id: str, predicate, timeout: float, what: str) -> tuple[dict, float]:
    """Poll `page`'s inbound video from `publisher_id` until `predicate(stats)` holds
    while frames are being decoded; return the stats and the seconds it took."""
    start = time.monotonic()
    last = await video_from(page, publisher_id)
    while True:
        await asyncio.sleep(0.2)
        stats = await video_from(page, publisher_id)
        if stats["framesDecoded"] > last["framesDecoded"] and predicate(stats):
            return stats, time.monotonic() - start
        if time.monotonic() - start > timeout:
            events = await page.page.evaluate("() => window.sfuLayerEvents")
            pytest.fail(f"{page.label}: not {what} after {timeout} s: {stats}\nlayer events: {events}\n{page.log()}")
        last = stats


async def test_firefox_simulcast_received_by_chromium_capped_at_each_layer(
    sfu_server: str, open_page: OpenPage
) -> None:
    """Firefox publishes its camera as three layers (its own RID header-extension use
    and SSRC signalling); a Chromium subscriber capped with ``maxHeight`` at each
    layer's height decodes exactly that layer, and is told which in ``layer_changed``
    (with reason ``preference`` where the cap holds it below the top)."""
    room = new_room("s")
    fox, fox_id = await join(open_page, sfu_server, room, "Fox", "firefox")
    viewer, _ = await join(open_page, sfu_server, room, "Viewer", "chromium", publish="0", maxHeight="none")

    track = await viewer.page.evaluate(VIDEO_TRACK_JS, fox_id)
    assert track and track["layers"] == ["q", "h", "f"], track
    await assert_receives_media(viewer, [fox_id])

    for rid in ("q", "h", "f", "q"):
        height = LAYER_HEIGHTS[rid]
        await viewer.page.evaluate(
            "([trackId, maxHeight]) => window.sfuClient.setTrackSettings(trackId, {maxHeight})", [track["id"], height]
        )
        await wait_video(viewer, fox_id, lambda s, h=height: s["frameHeight"] == h, LAYER_TIMEOUT_S, f"decoding {height}p")
        events = await viewer.page.evaluate("() => window.sfuLayerEvents")
        last = [e for e in events if e["trackId"] == track["id"]][-1]
        assert last["rid"] == rid and last["height"] == height, last
        # Below the top layer the cap is what holds it there.
        assert rid == "f" or last["reason"] == "preference", last


async def test_firefox_subscriber_follows_a_shaped_link_down_and_back(
    sfu_server: str, open_page: OpenPage, tc_available: None
) -> None:
    """A Firefox subscriber of a Chromium simulcast publisher decodes the top layer;
    when its link is limited to 350 kbit/s it moves to a lower layer within seconds
    and keeps decoding, and it climbs back to the top layer once the limit is lifted."""
    room = new_room("b")
    publisher, publisher_id = await join(open_page, sfu_server, room, "Pub", "chromium")
    fox, _ = await join(open_page, sfu_server, room, "Fox", "firefox", publish="0", maxHeight="none")

    top, _ = await wait_video(fox, publisher_id, lambda s: s["frameHeight"] >= 540, LAYER_TIMEOUT_S, "at the top layer")
    assert top["localPort"], f"no selected candidate pair on {fox.label}: {top}"

    with shaped_port(top["localPort"], SHAPED_RATE_KBIT, SHAPED_QUEUE_PACKETS):
        low, took_down = await wait_video(
            fox, publisher_id, lambda s: 0 < s["frameHeight"] < 540, DROP_TIMEOUT_S, "below the top layer"
        )
        # It keeps decoding on the lower layer under the limit.
        await asyncio.sleep(3.0)
        later = await video_from(fox, publisher_id)
        assert later["framesDecoded"] - low["framesDecoded"] >= 15, f"stalled under the limit: {low} -> {later}"
        assert later["frameHeight"] < 540, later
        events = await fox.page.evaluate("() => window.sfuLayerEvents")
        assert any(e["reason"] == "bandwidth" and e["rid"] in ("q", "h") for e in events), events

    _, took_up = await wait_video(
        fox, publisher_id, lambda s: s["frameHeight"] >= 540, RECOVERY_TIMEOUT_S, "back at the top layer"
    )
    print(f"firefox subscriber: down in {took_down:.1f} s, back up in {took_up:.1f} s")
