"""What the browser tests ask of a demo page, on either engine.

Everything here goes through ``page.evaluate`` and ``page.wait_for_function`` only,
which Playwright's Chromium page and :class:`firefox.FirefoxPage` both offer, and
reads what a user would see: tiles in the DOM, the chat log, and
``RTCPeerConnection.getStats()``.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import pytest

if TYPE_CHECKING:
    from conftest import BrowserPage, OpenPage

JOIN_TIMEOUT_MS = 20_000
MEDIA_TIMEOUT_S = 25.0
TILE_GONE_TIMEOUT_S = 5.0
CHAT_TIMEOUT_MS = 5_000

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

CHAT_OPEN_JS = "() => window.sfuClient?.channels.get('chat')?.readyState === 'open'"
CHAT_LOG_JS = """() => [...document.querySelectorAll('#chat-log .chat-message')].map((m) => [
  m.querySelector('.chat-from').textContent, m.querySelector('.chat-text').textContent, m.classList.contains('own')])"""
# Types into the chat input and presses Send, as a user would (no engine-specific input API).
SEND_CHAT_JS = """(text) => {
  const input = document.querySelector('#chat-input');
  input.value = text;
  input.dispatchEvent(new Event('input', {bubbles: true}));
  document.querySelector('#chat-send').click();
  return input.value;
}"""
TILE_COUNT_JS = "(pid) => document.querySelectorAll(`[data-participant-id=\"${pid}\"]`).length"


def new_room(prefix: str = "t") -> str:
    """A room name no other test uses."""
    return f"{prefix}{uuid.uuid4().hex[:10]}"


async def join(
    open_page: OpenPage, base_url: str, room: str, name: str, engine: str = "chromium", **query: str
) -> tuple[BrowserPage, str]:
    """Open the demo page for `room` as `name` in a new `engine` browser, with more
    query parameters (`publish`, `simulcast`, `maxHeight`); return the page and its
    participant id."""
    participant = await open_page(f"{base_url}/?{urlencode({'room': room, 'name': name, **query})}", name, engine)
    return participant, await wait_joined(participant)


async def wait_joined(participant: BrowserPage) -> str:
    """Wait until the page's client has joined; return its participant id."""
    try:
        handle = await participant.page.wait_for_function(
            "() => window.sfuClient && window.sfuClient.participantId", timeout=JOIN_TIMEOUT_MS
        )
    except Exception as exc:
        pytest.fail(f"{participant.label} did not join: {exc!r}\n{participant.log()}")
    return await handle.json_value()


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
    loop = asyncio.get_running_loop()
    deadline = loop.time() + MEDIA_TIMEOUT_S
    while True:
        first = await viewer.page.evaluate(MEDIA_STATS_JS)
        if all(_has_media(first.get(pid)) for pid in publisher_ids):
            break
        if loop.time() > deadline:
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


async def wait_tile_gone(viewer: BrowserPage, participant_id: str, timeout: float = TILE_GONE_TIMEOUT_S) -> None:
    """`viewer`'s page shows no tile of `participant_id` within `timeout` seconds."""
    try:
        await viewer.page.wait_for_function(
            f"() => ({TILE_COUNT_JS})({json.dumps(participant_id)}) === 0", timeout=timeout * 1000
        )
    except Exception:
        pytest.fail(f"{viewer.label} still shows {participant_id}'s tile after {timeout} s\n{viewer.log()}")


async def tile_name(viewer: BrowserPage, participant_id: str) -> str | None:
    """The name on `viewer`'s tile of `participant_id` (None: no tile)."""
    return await viewer.page.evaluate(
        "(pid) => document.querySelector(`[data-participant-id=\"${pid}\"] .name`)?.textContent ?? null",
        participant_id,
    )


async def wait_chat_open(participant: BrowserPage) -> None:
    """Wait until the page's `chat` DataChannel is open (its SCTP association is up)."""
    await participant.page.wait_for_function(CHAT_OPEN_JS, timeout=JOIN_TIMEOUT_MS)


async def send_chat(participant: BrowserPage, text: str) -> None:
    """Send `text` with the chat panel (the input, then the Send button)."""
    left = await participant.page.evaluate(SEND_CHAT_JS, text)
    assert left == "", f"{participant.label}: the chat input kept {left!r}"


async def wait_chat(participant: BrowserPage, sender: str, text: str) -> None:
    """`participant`'s chat log shows `text` from `sender`, exactly once."""
    predicate = (
        f"() => ({CHAT_LOG_JS})().filter(([from, text]) => from === {json.dumps(sender)}"
        f" && text === {json.dumps(text)}).length === 1"
    )
    try:
        await participant.page.wait_for_function(predicate, timeout=CHAT_TIMEOUT_MS)
    except Exception:
        log = await participant.page.evaluate(CHAT_LOG_JS)
        pytest.fail(f"{participant.label} does not show {text!r} from {sender} once: {log}\n{participant.log()}")


async def leave(participant: BrowserPage) -> None:
    """Press the page's Leave button and wait for "You left the room."."""
    await participant.page.evaluate("() => document.querySelector('#leave').click()")
    await participant.page.wait_for_function(
        "() => document.querySelector('#status')?.textContent === 'You left the room.'", timeout=CHAT_TIMEOUT_MS
    )


async def evaluate_all(pages: list[BrowserPage], source: str, arg: Any = None) -> list[Any]:
    """`source` evaluated on every page, concurrently."""
    return list(await asyncio.gather(*(p.page.evaluate(source, arg) for p in pages)))
