"""End to end: real headless Chromium pages join rooms on a real SFU server.

What a user would see is read from the page itself: tiles in the DOM, and
`RTCPeerConnection.getStats()` for decoded video frames and received audio.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from playwright.async_api import expect

if TYPE_CHECKING:
    from conftest import BrowserPage, OpenPage

pytestmark = pytest.mark.browser

JOIN_TIMEOUT_MS = 15_000
MEDIA_TIMEOUT_S = 20.0
TILE_GONE_TIMEOUT_MS = 5_000

# Per remote participant, what this page receives from it: inbound-rtp stats of the
# tracks the client put in that participant's MediaStream.
MEDIA_STATS_JS = """
async () => {
  const inbound = [...(await window.sfuPc.getStats()).values()].filter((s) => s.type === 'inbound-rtp');
  const sum = (list, key) => list.reduce((n, s) => n + (s[key] ?? 0), 0);
  const max = (list, key) => list.reduce((n, s) => Math.max(n, s[key] ?? 0), 0);
  const result = {};
  for (const [id, participant] of window.sfuClient.participants) {
    const trackIds = new Set(participant.stream.getTracks().map((t) => t.id));
    const video = inbound.filter((s) => s.kind === 'video' && trackIds.has(s.trackIdentifier));
    const audio = inbound.filter((s) => s.kind === 'audio' && trackIds.has(s.trackIdentifier));
    result[id] = {
      framesDecoded: sum(video, 'framesDecoded'),
      frameWidth: max(video, 'frameWidth'),
      frameHeight: max(video, 'frameHeight'),
      audioPackets: sum(audio, 'packetsReceived'),
      audioSamples: sum(audio, 'totalSamplesReceived'),
    };
  }
  return result;
}
"""


PUBLISHER_FEEDBACK_JS = """async () => {
  const out = {available: null, videoRtt: null};
  (await window.sfuPc.getStats()).forEach((s) => {
    if (s.type === 'candidate-pair' && s.nominated && s.availableOutgoingBitrate) out.available = s.availableOutgoingBitrate;
    if (s.type === 'remote-inbound-rtp' && s.kind === 'video') out.videoRtt = s.roundTripTime ?? null;
  });
  return out;
}"""


SENDER_REPORTS_JS = """async () => {
  const kinds = [];
  (await window.sfuPc.getStats()).forEach((s) => {
    if (s.type === 'remote-outbound-rtp' && s.remoteTimestamp && s.packetsSent > 0) kinds.push(s.kind);
  });
  return kinds;
}"""


def new_room() -> str:
    """A room name no other test uses."""
    return f"t{uuid.uuid4().hex[:10]}"


async def join(open_page: OpenPage, base_url: str, room: str, name: str, publish: bool = True) -> tuple[BrowserPage, str]:
    """Open the demo page for `room` as `name`; return the page and its participant id."""
    query = {"room": room, "name": name} | ({} if publish else {"publish": "0"})
    participant = await open_page(f"{base_url}/?{urlencode(query)}", name)
    participant_id = await wait_joined(participant)
    return participant, participant_id


async def wait_joined(participant: BrowserPage) -> str:
    """Wait until the page's client has joined; return its participant id."""
    handle = await participant.page.wait_for_function(
        "() => window.sfuClient && window.sfuClient.participantId", timeout=JOIN_TIMEOUT_MS
    )
    return await handle.json_value()


def tile(participant: BrowserPage, participant_id: str):
    """Locator of the tile showing `participant_id` on `participant`'s page."""
    return participant.page.locator(f'[data-participant-id="{participant_id}"]')


def _has_media(entry: dict | None) -> bool:
    return bool(
        entry
        and entry["framesDecoded"] > 0
        and entry["frameWidth"] > 0
        and entry["frameHeight"] > 0
        and entry["audioPackets"] > 0
        and entry["audioSamples"] > 0
    )


async def assert_receives_media(viewer: BrowserPage, publisher_ids: list[str]) -> None:
    """`viewer` decodes video and receives audio from every publisher, and it keeps flowing."""
    deadline = asyncio.get_running_loop().time() + MEDIA_TIMEOUT_S
    while True:
        first = await viewer.page.evaluate(MEDIA_STATS_JS)
        if all(_has_media(first.get(pid)) for pid in publisher_ids):
            break
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"{viewer.label} gets no media from {publisher_ids}: {first}\n{viewer.log()}")
        await asyncio.sleep(0.25)

    await asyncio.sleep(1.0)
    second = await viewer.page.evaluate(MEDIA_STATS_JS)
    for pid in publisher_ids:
        before, after = first[pid], second[pid]
        context = f"{viewer.label} from {pid}: {before} -> {after}"
        assert after["framesDecoded"] - before["framesDecoded"] >= 5, f"video stalled at {context}"
        assert after["audioPackets"] - before["audioPackets"] >= 10, f"audio packets stalled at {context}"
        assert after["audioSamples"] > before["audioSamples"], f"audio playout stalled at {context}"


async def test_form_joins_as_viewer(sfu_server: str, open_page: OpenPage) -> None:
    """Without query parameters the page shows the form; submitting it joins the room."""
    room = new_room()
    alice, alice_id = await join(open_page, sfu_server, room, "Alice")

    lobby = await open_page(f"{sfu_server}/", "lobby")
    page = lobby.page
    await expect(page.locator("#join-form")).to_be_visible()
    await expect(page.locator("#room")).to_be_hidden()
    assert await page.evaluate("() => window.sfuClient === undefined"), "the form page must not join"

    await page.fill("#join-form input[name=room]", room)
    await page.fill("#join-form input[name=name]", "Dora")
    await page.check("#join-form input[name=publish]")
    await page.click("#join-form button[type=submit]")
    await page.wait_for_url(re.compile(r"\?.*room="))
    assert parse_qs(urlsplit(page.url).query) == {"room": [room], "name": ["Dora"], "publish": ["0"]}

    dora_id = await wait_joined(lobby)
    await expect(page.locator("#lobby")).to_be_hidden()
    await expect(page.locator("#room-title")).to_contain_text(room)
    await expect(tile(lobby, alice_id).locator(".name")).to_have_text("Alice")
    await assert_receives_media(lobby, [alice_id])
    # A viewer publishes nothing: no local preview, no outgoing RTP.
    await expect(page.locator("#local")).to_be_hidden()
    outbound = await page.evaluate(
        "async () => [...(await window.sfuPc.getStats()).values()].filter((s) => s.type === 'outbound-rtp').length"
    )
    assert outbound == 0

    await expect(tile(alice, dora_id).locator(".name")).to_have_text("Dora")
    await expect(tile(alice, dora_id).locator(".cam-off")).to_be_visible()


async def test_two_participants_exchange_media_and_mute(sfu_server: str, open_page: OpenPage) -> None:
    """Two publishers decode each other; muting the mic shows on the other's tile."""
    room = new_room()
    (alice, alice_id), (bob, bob_id) = await asyncio.gather(
        join(open_page, sfu_server, room, "Alice"), join(open_page, sfu_server, room, "Bob")
    )
    await expect(tile(alice, bob_id).locator(".name")).to_have_text("Bob")
    await expect(tile(bob, alice_id).locator(".name")).to_have_text("Alice")
    await asyncio.gather(assert_receives_media(alice, [bob_id]), assert_receives_media(bob, [alice_id]))

    # The server's RTCP reaches Chrome as a publisher: REMB sets its available
    # bitrate (--publisher-bitrate, 2.5 Mbit/s by default; without REMB Chrome stays
    # near 300 kbit/s) and RRs echo its SRs (LSR/DLSR), so it measures a round-trip time.
    for _ in range(50):  # the first RR that can echo an SR comes ~1 s after the first SR
        feedback = await alice.page.evaluate(PUBLISHER_FEEDBACK_JS)
        if feedback["available"] == 2_500_000 and feedback["videoRtt"] is not None:
            break
        await asyncio.sleep(0.2)
    assert feedback["available"] == 2_500_000, feedback
    assert feedback["videoRtt"] is not None and feedback["videoRtt"] < 0.5, feedback

    # As a subscriber Chrome gets SRs derived from the publisher's (for lip sync): it
    # reports them as remote-outbound-rtp for both kinds.
    for _ in range(50):
        kinds = await bob.page.evaluate(SENDER_REPORTS_JS)
        if {"audio", "video"} <= set(kinds):
            break
        await asyncio.sleep(0.2)
    assert {"audio", "video"} <= set(kinds), kinds

    mic_off_at_bob = tile(bob, alice_id).locator(".mic-off")
    await expect(mic_off_at_bob).to_be_hidden()
    await alice.page.click("#toggle-mic")
    await expect(mic_off_at_bob).to_be_visible(timeout=5_000)
    audio_enabled = "() => [...window.sfuClient.localTracks.values()].find((t) => t.track.kind === 'audio').track.enabled"
    assert await alice.page.evaluate(audio_enabled) is False
    await alice.page.click("#toggle-mic")
    await expect(mic_off_at_bob).to_be_hidden(timeout=5_000)
    assert await alice.page.evaluate(audio_enabled) is True


async def test_late_joiner_and_leaving(sfu_server: str, open_page: OpenPage) -> None:
    """A late joiner decodes everyone and is decoded; tiles of leavers disappear; a
    later joiner reuses the m-lines a leaver left inactive."""
    room = new_room()
    (alice, alice_id), (bob, bob_id) = await asyncio.gather(
        join(open_page, sfu_server, room, "Alice"), join(open_page, sfu_server, room, "Bob")
    )
    await asyncio.gather(assert_receives_media(alice, [bob_id]), assert_receives_media(bob, [alice_id]))

    carol, carol_id = await join(open_page, sfu_server, room, "Carol")
    await asyncio.gather(
        assert_receives_media(carol, [alice_id, bob_id]),
        assert_receives_media(alice, [carol_id]),
        assert_receives_media(bob, [carol_id]),
    )

    # Bob leaves with the button: his tile goes from both other pages.
    await bob.page.click("#leave")
    await expect(bob.page.locator("#status")).to_have_text("You left the room.")
    await expect(bob.page.locator("#tiles [data-participant-id]")).to_have_count(0)
    for remaining in (alice, carol):
        await expect(tile(remaining, bob_id)).to_have_count(0, timeout=TILE_GONE_TIMEOUT_MS)
    # Unsubscribing from Bob renegotiated; Alice and Carol still see each other.
    await asyncio.gather(assert_receives_media(alice, [carol_id]), assert_receives_media(carol, [alice_id]))

    # Dave's tracks reuse the m-lines that Bob's left inactive: no new transceivers.
    transceiver_count = "() => window.sfuPc.getTransceivers().length"
    before = await asyncio.gather(alice.page.evaluate(transceiver_count), carol.page.evaluate(transceiver_count))
    dave, dave_id = await join(open_page, sfu_server, room, "Dave")
    await asyncio.gather(
        assert_receives_media(alice, [carol_id, dave_id]),
        assert_receives_media(carol, [alice_id, dave_id]),
        assert_receives_media(dave, [alice_id, carol_id]),
    )
    after = await asyncio.gather(alice.page.evaluate(transceiver_count), carol.page.evaluate(transceiver_count))
    assert after == before, f"transceivers (Alice, Carol) went from {before} to {after}"

    # Carol closes her tab without leaving: her tile goes too.
    await carol.page.close()
    await expect(tile(alice, carol_id)).to_have_count(0, timeout=TILE_GONE_TIMEOUT_MS)
