"""WHIP and WHEP with clients nobody here wrote: the npm package ``whip-whep``
(``WHIPClient``, ``WHEPClient``) in headless Chromium and Firefox pages, served from
another origin than the SFU (so CORS is exercised), publishing into a room that a
Chromium participant of the demo page decodes, and playing a Chromium publisher."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

import pytest
from aiohttp import web

from tests.browser.firefox import JS_DIR
from tests.browser.pages import (
    assert_receives_media,
    join,
    new_room,
    tile_name,
    wait_tile_gone,
)

if TYPE_CHECKING:
    from conftest import BrowserPage, OpenPage

pytestmark = pytest.mark.browser

PAGE = Path(__file__).resolve().parent / "whip_page.html"
WHIP_WHEP = JS_DIR / "node_modules" / "whip-whep"
MEDIA_TIMEOUT_S = 25.0


@pytest.fixture
async def client_origin() -> AsyncIterator[str]:
    """A second loopback origin serving the test page and the whip-whep modules."""
    if not (WHIP_WHEP / "whip.js").is_file():
        pytest.fail(f"whip-whep is not installed in {JS_DIR} (make test runs npm ci there)")
    async def index(request: web.Request) -> web.FileResponse:
        return web.FileResponse(PAGE)

    app = web.Application()
    app.router.add_get("/", index)
    app.router.add_static("/whip-whep/", WHIP_WHEP)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def open_client(open_page: OpenPage, origin: str, label: str, engine: str) -> BrowserPage:
    page = await open_page(f"{origin}/", label, engine)
    await page.page.wait_for_function("() => window.ready === true", timeout=15_000)
    return page


async def wait_stats(page: BrowserPage, predicate, what: str) -> dict:
    """Poll the page's `mediaStats()` until `predicate` holds; fail with the last."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + MEDIA_TIMEOUT_S
    while True:
        stats = await page.page.evaluate("() => window.mediaStats()")
        if predicate(stats):
            return stats
        if loop.time() > deadline:
            pytest.fail(f"{page.label}: not {what}: {stats}\n{page.log()}")
        await asyncio.sleep(0.25)


@pytest.mark.parametrize("engine", ["chromium", "firefox"])
async def test_whip_client_publishes_into_a_room(
    sfu_server: str, open_page: OpenPage, client_origin: str, engine: str
) -> None:
    """whip-whep's WHIPClient publishes camera and microphone (simulcast from
    Chromium) into a room: a Chromium participant sees a tile named after the ``name``
    query parameter, decodes the video and plays the audio; stopping the client
    (DELETE) removes the tile."""
    room = new_room("w")
    viewer, _ = await join(open_page, sfu_server, room, "Viewer", "chromium", publish="0")
    publisher = await open_client(open_page, client_origin, f"whip-{engine}", engine)
    url = f"{sfu_server}/whip/{room}?name={quote('OBS Studio')}"
    resource = await publisher.page.evaluate(
        "(args) => window.whipPublish(args)", {"url": url, "simulcast": engine == "chromium"}
    )
    assert resource.startswith(f"{sfu_server}/whip/{room}/"), resource
    await wait_stats(publisher, lambda s: s["connection"] == "connected" and s["videoSent"] > 0, "sending")

    whip_id = await viewer.page.wait_for_function(
        "() => [...window.sfuClient.participants.values()].find((p) => p.name === 'OBS Studio')?.id",
        timeout=MEDIA_TIMEOUT_S * 1000,
    )
    whip_id = await whip_id.json_value()
    assert await tile_name(viewer, whip_id) == "OBS Studio"
    await assert_receives_media(viewer, [whip_id])
    if engine == "chromium":
        layers = await viewer.page.evaluate(
            "(pid) => [...window.sfuClient.participants.get(pid).tracks.values()].find((t) => t.kind === 'video').layers",
            whip_id,
        )
        assert layers == ["q", "h", "f"], layers

    await publisher.page.evaluate("() => window.client.stop()")
    await wait_tile_gone(viewer, whip_id)


@pytest.mark.parametrize("engine", ["chromium", "firefox"])
async def test_whep_client_plays_a_room_publisher(
    sfu_server: str, open_page: OpenPage, client_origin: str, engine: str
) -> None:
    """whip-whep's WHEPClient plays a Chromium publisher of the demo page, named with
    ``?participant=``: video frames decoded and rising, audio packets received; the
    publisher's page never shows the player."""
    room = new_room("p")
    publisher, publisher_id = await join(open_page, sfu_server, room, "Speaker", "chromium")
    player = await open_client(open_page, client_origin, f"whep-{engine}", engine)
    url = f"{sfu_server}/whep/{room}?participant={publisher_id}"
    resource = await player.page.evaluate("(args) => window.whepView(args)", {"url": url})
    assert resource.startswith(f"{sfu_server}/whep/{room}/"), resource

    first = await wait_stats(player, lambda s: s["framesDecoded"] > 0 and s["audioPackets"] > 0, "playing")
    await asyncio.sleep(1.0)
    second = await player.page.evaluate("() => window.mediaStats()")
    assert second["framesDecoded"] - first["framesDecoded"] >= 5, (first, second)
    assert second["audioPackets"] - first["audioPackets"] >= 10, (first, second)
    assert second["frameHeight"] > 0
    assert await publisher.page.evaluate("() => window.sfuClient.participants.size") == 0
