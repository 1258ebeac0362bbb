"""What people see when the network or the server goes away: a Chromium participant
whose ICE fails is removed and the others are told; a server that is stopped tells
every page, which shows it, and exits cleanly."""

from __future__ import annotations

import asyncio
import os
import signal
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from loadtest.server import ServerProcess
from tests.browser.pages import assert_receives_media, join, new_room, wait_joined, wait_tile_gone

if TYPE_CHECKING:
    from conftest import OpenPage

pytestmark = pytest.mark.browser

# The page's PeerConnection uses relay candidates only, and there is no TURN server:
# it gathers no candidate at all, so ICE can only fail (the end of candidates reaches
# the server at once).
NO_CANDIDATES_JS = """(() => {
  const Native = window.RTCPeerConnection;
  window.RTCPeerConnection = function (config, ...rest) {
    return new Native({...(config || {}), iceTransportPolicy: 'relay'}, ...rest);
  };
  window.RTCPeerConnection.prototype = Native.prototype;
})();"""


async def test_a_participant_whose_ice_fails_is_removed(sfu_server: str, open_page: OpenPage) -> None:
    """Its page is told (`connection_failed`), and the other participant's page drops
    its tile within 35 s (the server's connect timeout is 30 s; failure after the end
    of candidates comes sooner)."""
    room = new_room("i")
    alice, _ = await join(open_page, sfu_server, room, "Alice")
    doomed = await open_page(f"{sfu_server}/?room={room}&name=Doomed", "Doomed", init_script=NO_CANDIDATES_JS)
    doomed_id = await wait_joined(doomed)
    started = time.monotonic()
    await wait_tile_gone(alice, doomed_id, timeout=35.0)
    took = time.monotonic() - started
    status = await doomed.page.evaluate("() => document.querySelector('#status').textContent")
    assert "media connection" in status, status
    print(f"participant whose ICE failed: removed after {took:.1f} s; its page says {status!r}")


async def test_stopping_the_server_tells_every_page(open_page: OpenPage) -> None:
    """SIGTERM during a three-person call: every page shows the shutdown notice (and a
    Rejoin button), and the server process exits 0 within 5 s."""
    log = Path(tempfile.mkdtemp(prefix="sfu-shutdown-")) / "server.log"
    server = ServerProcess(log)
    try:
        server.wait_healthy(30)
        base = server.http_url
        room = new_room("s")
        pages = [await join(open_page, base, room, name) for name in ("Ann", "Ben", "Cid")]
        await assert_receives_media(pages[0][0], [pages[1][1], pages[2][1]])
        started = time.monotonic()
        os.kill(server.pid, signal.SIGTERM)
        code = await asyncio.to_thread(server.proc.wait, 5)
        took = time.monotonic() - started
        for page, _ in pages:
            await page.page.wait_for_function(
                "() => document.querySelector('#status').textContent.includes('shutting down')"
                " && !document.querySelector('#rejoin').hidden",
                timeout=5_000,
            )
        assert code == 0 and took < 5.0, (code, took, server.log_tail())
        assert "Traceback" not in log.read_text(errors="replace"), server.log_tail(60)
    finally:
        server.stop()
