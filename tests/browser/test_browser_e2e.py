"""End to end: real headless Chromium pages join rooms on a real SFU server.

What a user would see is read from the page itself: tiles in the DOM, and
`RTCPeerConnection.getStats()` for decoded video frames and received audio.
"""

from __future__ import annotations

import asyncio
import re
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

import pytest
from playwright.async_api import expect

from tests.browser.pages import (
    CHAT_LOG_JS,
    CHAT_TIMEOUT_MS,
    assert_receives_media,
    join,
    new_room,
    wait_chat_open,
    wait_joined,
)

if TYPE_CHECKING:
    from conftest import BrowserPage, OpenPage

pytestmark = pytest.mark.browser

TILE_GONE_TIMEOUT_MS = 5_000


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


def tile(participant: BrowserPage, participant_id: str):
    """Locator of the tile showing `participant_id` on `participant`'s page."""
    return participant.page.locator(f'[data-participant-id="{participant_id}"]')


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

    # The server's RTCP reaches Chrome as a publisher: its transport-cc feedback runs
    # Chrome's own congestion control, which finds the loopback link wide (without
    # feedback Chrome stays near 300 kbit/s), capped by the REMB (--publisher-bitrate,
    # 2.5 Mbit/s by default); and RRs echo its SRs (LSR/DLSR), so it measures a
    # round-trip time.
    for _ in range(75):  # the first RR that can echo an SR comes ~1 s after the first SR
        feedback = await alice.page.evaluate(PUBLISHER_FEEDBACK_JS)
        if feedback["available"] and feedback["available"] >= 600_000 and feedback["videoRtt"] is not None:
            break
        await asyncio.sleep(0.2)
    assert feedback["available"] and 600_000 <= feedback["available"] <= 2_500_000, feedback
    assert feedback["videoRtt"] is not None and feedback["videoRtt"] < 0.5, feedback

    # As a subscriber Chrome gets SRs derived from the publisher's (for lip sync): it
    # reports them as remote-outbound-rtp for both kinds.
    for _ in range(50):
        kinds = await bob.page.evaluate(SENDER_REPORTS_JS)
        if {"audio", "video"} <= set(kinds):
            break
        await asyncio.sleep(0.2)
    assert {"audio", "video"} <= set(kinds), kinds

    # Chrome's fake microphone beeps: someone becomes the room's active speaker (RFC
    # 6464 audio levels), and both pages highlight the same participant's tile.
    speaker_js = "() => window.sfuClient.activeSpeaker"
    for _ in range(75):
        speakers = (await alice.page.evaluate(speaker_js), await bob.page.evaluate(speaker_js))
        if speakers[0] and speakers[0] == speakers[1]:
            break
        await asyncio.sleep(0.2)
    assert speakers[0] in (alice_id, bob_id) and speakers[0] == speakers[1], speakers
    if speakers[0] == alice_id:
        await expect(tile(bob, alice_id)).to_have_class(re.compile(r"\bspeaking\b"))
    else:
        await expect(tile(alice, bob_id)).to_have_class(re.compile(r"\bspeaking\b"))

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


# --- DataChannels: chat through the demo page, and the client's data API -------------

def chat_message(participant: BrowserPage, text: str):
    """Locator of the chat message(s) on `participant`'s page whose text is `text`."""
    page = participant.page
    exact = re.compile(f"^{re.escape(text)}$")
    return page.locator("#chat-log .chat-message").filter(has=page.locator(".chat-text", has_text=exact))


async def send_chat(participant: BrowserPage, text: str, *, enter: bool = False) -> None:
    """Type `text` into the chat input and send it with the Send button (or Enter)."""
    page = participant.page
    await page.fill("#chat-input", text)
    if enter:
        await page.press("#chat-input", "Enter")
    else:
        await page.click("#chat-send")
    await expect(page.locator("#chat-input")).to_have_value("")


async def expect_chat(participant: BrowserPage, sender: str, text: str) -> None:
    """`participant`'s chat log shows `text` exactly once, from `sender`."""
    message = chat_message(participant, text)
    await expect(message, f"{participant.label} shows {text!r}\n{participant.log()}").to_have_count(
        1, timeout=CHAT_TIMEOUT_MS
    )
    await expect(message.locator(".chat-from")).to_have_text(sender)


async def test_chat_between_publishers_and_a_viewer(sfu_server: str, open_page: OpenPage) -> None:
    """Chat over the reliable `chat` DataChannel through the demo page's UI: each page
    shows the others' messages under their names, and its own; a viewer that joined an
    empty room (DataChannel, no media at all) chats too."""
    room = new_room()
    # Vera joins first, publishing nothing into an empty room: her first offer carries
    # the m=application section only, and her chat channel still opens.
    vera, vera_id = await join(open_page, sfu_server, room, "Vera", publish="0")
    await wait_chat_open(vera)
    sdp = await vera.page.evaluate("() => window.sfuPc.currentLocalDescription.sdp")
    assert re.findall(r"^m=(\w+)", sdp, re.M) == ["application"], sdp

    (alice, alice_id), (bob, bob_id) = await asyncio.gather(
        join(open_page, sfu_server, room, "Alice"), join(open_page, sfu_server, room, "Bob")
    )
    await asyncio.gather(wait_chat_open(alice), wait_chat_open(bob))
    pages = (alice, bob, vera)

    hello = "Hello from Alice"
    await send_chat(alice, hello)
    for page in pages:
        await expect_chat(page, "Alice", hello)

    # Markup is shown as text, never parsed.
    markup = "<b>hi</b> & <img src=x onerror=alert(1)> from Bob"
    await send_chat(bob, markup, enter=True)
    for page in pages:
        await expect_chat(page, "Bob", markup)
        assert await page.page.locator("#chat-log b, #chat-log img").count() == 0

    viewer_text = "Vera here, watching only"
    await send_chat(vera, viewer_text)
    for page in pages:
        await expect_chat(page, "Vera", viewer_text)

    # Every page has the same three messages, in order, each once; its own marked.
    for page, own in ((alice, "Alice"), (bob, "Bob"), (vera, "Vera")):
        log = await page.page.evaluate(CHAT_LOG_JS)
        expected = [[sender, text, sender == own] for sender, text in
                    (("Alice", hello), ("Bob", markup), ("Vera", viewer_text))]
        assert log == expected, f"{page.label}: {log}"

    # Vera chatted without sending any media; she still receives Alice and Bob.
    outbound = await vera.page.evaluate(
        "async () => [...(await window.sfuPc.getStats()).values()].filter((s) => s.type === 'outbound-rtp').length"
    )
    assert outbound == 0
    await expect(vera.page.locator("#local")).to_be_hidden()
    await expect(tile(vera, alice_id).locator(".name")).to_have_text("Alice")
    await expect(tile(vera, bob_id).locator(".name")).to_have_text("Bob")


# Collects every `data` and `error` event of the page's client into window.seen.
COLLECT_JS = """() => {
  window.seen = {data: [], errors: [], overflows: []};
  const c = window.sfuClient;
  c.addEventListener('data', (e) => window.seen.data.push({
    label: e.detail.label, from: e.detail.from, topic: e.detail.topic,
    binary: e.detail.data instanceof Uint8Array,
    data: e.detail.data instanceof Uint8Array ? Array.from(e.detail.data) : e.detail.data}));
  c.addEventListener('error', (e) => window.seen.errors.push(e.detail));
  c.addEventListener('dataoverflow', (e) => window.seen.overflows.push(e.detail));
}"""


async def seen(participant: BrowserPage) -> dict:
    return await participant.page.evaluate("() => window.seen")


async def wait_seen(participant: BrowserPage, predicate_js: str) -> None:
    """Wait until `predicate_js` (a function of window.seen) holds on the page."""
    await participant.page.wait_for_function(f"() => ({predicate_js})(window.seen)", timeout=CHAT_TIMEOUT_MS)


async def test_data_api_envelopes_addressing_and_errors(sfu_server: str, open_page: OpenPage) -> None:
    """SfuClient's data API against the server: binary and text envelopes with `from`
    and `topic`, `to` addressing, a lossy channel the server opens towards receivers,
    reserved labels, `data_too_large` and `bad_data` errors naming the channel, and the
    channel reopened after `data_overflow`."""
    room = new_room()
    (ann, ann_id), (ben, ben_id), (cat, cat_id) = await asyncio.gather(
        *(join(open_page, sfu_server, room, name, publish="0") for name in ("Ann", "Ben", "Cat"))
    )
    for p in (ann, ben, cat):
        await wait_chat_open(p)
        await p.page.evaluate(COLLECT_JS)

    # Text to Ben only, with a topic; then a broadcast on the same ordered channel:
    # once Cat has the broadcast she would have had the addressed one.
    await ann.page.evaluate(
        f"() => {{ window.sfuClient.sendData('chat', 'for Ben', {{to: ['{ben_id}'], topic: 'dm'}});"
        " window.sfuClient.sendData('chat', 'for all'); }"
    )
    await wait_seen(ben, "s => s.data.length >= 2")
    await wait_seen(cat, "s => s.data.length >= 1")
    assert (await seen(ben))["data"] == [
        {"label": "chat", "from": ann_id, "topic": "dm", "binary": False, "data": "for Ben"},
        {"label": "chat", "from": ann_id, "topic": None, "binary": False, "data": "for all"},
    ]
    assert (await seen(cat))["data"] == [
        {"label": "chat", "from": ann_id, "topic": None, "binary": False, "data": "for all"},
    ]

    # A lossy channel only Ben opens: binary messages reach Ann and Cat on channels the
    # server opens towards them with the same reliability.
    await ben.page.evaluate("() => window.sfuClient.openChannel('state', {ordered: false, maxRetransmits: 0})")
    payload = [0, 1, 2, 127, 128, 255]
    await ben.page.evaluate(
        f"() => window.sfuClient.sendData('state', new Uint8Array({payload}), {{topic: 'cursor'}})"
    )
    expected = {"label": "state", "from": ben_id, "topic": "cursor", "binary": True, "data": payload}
    for p in (ann, cat):
        await wait_seen(p, "s => s.data.some((d) => d.label === 'state')")
        assert [d for d in (await seen(p))["data"] if d["label"] == "state"] == [expected]
        reliability = await p.page.evaluate(
            "() => { const c = window.sfuClient.channels.get('state');"
            " return [c.readyState, c.ordered, c.maxRetransmits, c.maxPacketLifeTime]; }"
        )
        assert reliability == ["open", False, 0, None], f"{p.label}: {reliability}"
    assert not [d for d in (await seen(ben))["data"] if d["label"] == "state"], "the sender got its own message"

    # Labels starting with _sfu are refused by the client itself.
    refused = await ann.page.evaluate(
        """() => ['openChannel', 'sendData'].map((m) => {
             try { window.sfuClient[m]('_sfu_ctl', 'x'); return null; } catch (e) { return e.message; } })"""
    )
    assert all(r and "reserved" in r for r in refused), refused

    # Too large (65,311-byte envelope: under SCTP's 64 KiB, over the server's limit) and
    # not an envelope: errors naming the channel; nothing is delivered.
    await ann.page.evaluate(
        "() => { window.sfuClient.sendData('chat', 'x'.repeat(65300));"
        " window.sfuClient.channels.get('chat').send('not an envelope'); }"
    )
    await wait_seen(ann, "s => s.errors.length >= 2")
    errors = sorted(((e["code"], e["label"]) for e in (await seen(ann))["errors"]))
    assert errors == [("bad_data", "chat"), ("data_too_large", "chat")], (await seen(ann))["errors"]

    # data_overflow: the server has closed Cat's chat channel (simulated here: a
    # browser reads too fast to fall 4 MiB behind). Cat is told and reopens it.
    old_label = await cat.page.evaluate(
        """() => { window.oldChat = window.sfuClient.channels.get('chat'); window.oldChat.close();
                   window.sfuClient._onMessage(JSON.stringify({type: 'data_overflow', label: 'chat'}));
                   return window.oldChat.label; }"""
    )
    assert old_label == "chat"
    await cat.page.wait_for_function(
        "() => { const c = window.sfuClient.channels.get('chat');"
        " return c && c !== window.oldChat && c.readyState === 'open' && c.ordered && c.maxRetransmits === null; }",
        timeout=CHAT_TIMEOUT_MS,
    )
    assert (await seen(cat))["overflows"] == [{"label": "chat"}]
    await ann.page.evaluate("() => window.sfuClient.sendData('chat', 'after overflow')")
    await wait_seen(cat, "s => s.data.some((d) => d.data === 'after overflow')")
    await wait_seen(ben, "s => s.data.some((d) => d.data === 'after overflow')")
    await asyncio.sleep(0.3)  # a duplicate would arrive right behind
    for p in (ben, cat):
        texts = [d["data"] for d in (await seen(p))["data"] if d["label"] == "chat"]
        assert texts.count("after overflow") == 1, f"{p.label}: {texts}"
        assert not any(isinstance(t, str) and t.startswith("xxx") for t in texts), "the oversized message was delivered"
