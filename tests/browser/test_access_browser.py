"""Access tokens with real Chromium pages: the demo page joins with ``?token=`` on a
server that has API keys, and a publisher whose ``canPublish`` the application revokes
through the server API stops being seen: its video leaves the subscriber's page at once
and its own page says so."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from loadtest.server import ServerProcess
from sfu.auth import VideoGrant, mint_token
from sfu.server_api import ServerApi
from tests.browser.pages import MEDIA_STATS_JS, assert_receives_media, join, new_room

if TYPE_CHECKING:
    from conftest import OpenPage

pytestmark = pytest.mark.browser

KEY, SECRET = "APIbrowser", "browser-test-secret-" + "z" * 32
GONE_TIMEOUT_S = 5.0


@pytest.fixture
def keyed_server(tmp_path: Path):
    config = tmp_path / "sfu.toml"
    config.write_text(f'[keys]\n{KEY} = "{SECRET}"\n')
    server = ServerProcess(tmp_path / "server.log", ("--config", str(config)))
    try:
        server.wait_healthy(30)
        yield server
    finally:
        server.stop()
        print(server.log_tail())


async def test_a_revoked_publisher_disappears_from_the_subscriber(keyed_server: ServerProcess, open_page: OpenPage) -> None:
    room = new_room("auth")
    base = keyed_server.http_url

    def token(identity: str) -> str:
        return mint_token(KEY, SECRET, identity, VideoGrant(room=room, room_join=True), name=identity.title())

    publisher, publisher_id = await join(open_page, base, room, "ignored", token=token("ann"))
    viewer, _ = await join(open_page, base, room, "ignored", token=token("ben"), publish="0")
    assert await publisher.page.evaluate("() => window.sfuClient.identity") == "ann"
    await assert_receives_media(viewer, [publisher_id])

    async with ServerApi(base, KEY, SECRET) as api:
        await api.update_participant(room, "ann", permissions={"canPublish": False})
    await viewer.page.wait_for_function(
        "(pid) => window.sfuClient.participants.get(pid)?.tracks.size === 0", arg=publisher_id,
        timeout=GONE_TIMEOUT_S * 1000,
    )
    await publisher.page.wait_for_function(
        "() => document.querySelector('#status').textContent.includes('stopped your camera')", timeout=GONE_TIMEOUT_S * 1000
    )
    # Nothing of the publisher's media reaches the viewer any more.
    first = (await viewer.page.evaluate(MEDIA_STATS_JS)).get(publisher_id, {"framesDecoded": 0})
    await asyncio.sleep(2.0)
    later = (await viewer.page.evaluate(MEDIA_STATS_JS)).get(publisher_id, {"framesDecoded": 0})
    assert later["framesDecoded"] == first["framesDecoded"], (first, later)


async def test_the_page_without_a_token_is_refused(keyed_server: ServerProcess, open_page: OpenPage) -> None:
    page = await open_page(f"{keyed_server.http_url}/?room={new_room('auth')}&name=Nobody", "Nobody")
    await page.page.wait_for_function(
        "() => document.querySelector('#status').textContent.includes('Could not join')", timeout=20_000
    )
    assert "access token" in await page.page.evaluate("() => document.querySelector('#status').textContent")
