"""Reconnection (docs/PROTOCOL.md "Reconnection") with the real server and aiortc bots on
loopback: a client whose WebSocket drops resumes its participant (same participant and
track ids) and its subscribers keep receiving one continuous stream with a fresh
keyframe, nobody sees it leave; past the grace period the others are told it left and
it comes back as a new participant."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from loadtest.client import RoomClient
from loadtest.counter import RtpCounter
from loadtest.media import PreEncodedAudioTrack, PreEncodedVideoTrack
from loadtest.server import ServerProcess

TEST_TIMEOUT = 60.0


def _video_stream(counter: RtpCounter, mid: str):  # type: ignore[no-untyped-def]
    streams = [s for s in counter.snapshot() if s.mid == mid and s.kind == "video"]
    assert len(streams) == 1, f"one video SSRC expected on mid {mid}: {streams}"
    return streams[0]


async def test_dropped_websocket_resumes_the_same_participant_and_tracks(server: ServerProcess) -> None:
    publisher = RoomClient(server.ws_url, auto_subscribe=False)
    subscriber = RoomClient(server.ws_url, count_rtp=True)
    try:
        async with asyncio.timeout(TEST_TIMEOUT):
            await subscriber.join("resume", "Sub")
            await publisher.join("resume", "Pub")
            old_ids = await publisher.publish([PreEncodedVideoTrack(), PreEncodedAudioTrack()])
            old_pid = publisher.participant_id
            await subscriber.wait_until(lambda: len(subscriber.subscriptions) == 2)
            video = next(s for s in subscriber.subscriptions.values() if s.kind == "video")
            assert subscriber.counter is not None
            await subscriber.wait_until(lambda: subscriber.counter.packets_on(video.mid) > 100, poll=0.05)
            before = _video_stream(subscriber.counter, video.mid)
            while not subscriber.events.empty():
                subscriber.events.get_nowait()  # what happened before the drop

            dropped_at = time.monotonic()
            assert publisher._ws is not None
            publisher._ws._conn.transport.abort()  # the WebSocket's TCP connection dies (no close frame)
            event = await publisher.next_event("reconnected", timeout=15)
            reconnected_s = time.monotonic() - dropped_at
            assert event["resumed"] is True
            await subscriber.wait_until(
                lambda: _video_stream(subscriber.counter, video.mid).keyframes > before.keyframes
                and _video_stream(subscriber.counter, video.mid).packets > before.packets + 100,
                timeout=10,
                poll=0.05,
            )
            back_s = time.monotonic() - dropped_at
            after = _video_stream(subscriber.counter, video.mid)
            seen = [subscriber.events.get_nowait()["type"] for _ in range(subscriber.events.qsize())]
            metrics = server.metrics()
            published = sorted(publisher.published)
            subscribed = sorted(subscriber.subscriptions)
    finally:
        await publisher.close()
        await subscriber.close()
    assert publisher.participant_id == old_pid
    assert published == sorted(old_ids)
    assert publisher.reconnects == 1
    assert metrics['sfu_reconnections_total{outcome="away"}'] == 1
    assert metrics['sfu_reconnections_total{outcome="resumed"}'] == 1
    # The subscriber kept its subscriptions and saw nobody leave or join.
    assert "participant_left" not in seen and "participant_joined" not in seen and "track_unpublished" not in seen
    assert subscribed == sorted(old_ids)
    # One continuous stream on the same SSRC: no sequence jump (what was not sent while
    # away is not a gap), a new keyframe after the reconnection.
    assert after.lost < 0.05 * after.packets, (before, after)
    assert reconnected_s < 5 and back_s < 8, (reconnected_s, back_s)


async def test_past_the_grace_period_the_others_are_told_and_it_comes_back_new(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server("--reconnect-grace", "1.5")
    observer = RoomClient(server.ws_url)
    leaver = RoomClient(server.ws_url, auto_subscribe=False, reconnect=False)
    returning = RoomClient(server.ws_url, auto_subscribe=False)
    try:
        async with asyncio.timeout(TEST_TIMEOUT):
            await observer.join("grace", "Observer")
            await leaver.join("grace", "Leaver")
            await leaver.publish([PreEncodedVideoTrack(), PreEncodedAudioTrack()])
            await leaver.wait_connected()
            await observer.wait_until(lambda: len(observer.subscriptions) == 2)
            old_pid, key = leaver.participant_id, leaver.resume_key
            assert old_pid and key

            start = time.monotonic()
            assert leaver._ws is not None
            leaver._ws._conn.transport.abort()  # gone without leave or close frame, and does not come back
            await asyncio.sleep(1.0)
            assert old_pid in observer.participants  # its place is kept during the grace period
            event = await observer.next_event("participant_left", timeout=5)
            left_after = time.monotonic() - start
            assert event["participantId"] == old_pid

            await returning._connect()
            reply = await returning._request(
                {"type": "join", "room": "grace", "name": "Leaver", "resume": {"participantId": old_pid, "key": key}}
            )
            joined = await observer.next_event("participant_joined", timeout=5)
    finally:
        await observer.close()
        await leaver.close()
        await returning.close()
    assert 1.4 < left_after < 4.0
    assert reply["resumed"] is False and reply["participantId"] != old_pid
    assert server.metrics()['sfu_reconnections_total{outcome="not_resumed"}'] == 1
    assert joined["participant"]["id"] == reply["participantId"]
    assert not observer.subscriptions


async def test_a_wrong_resume_key_joins_as_a_new_participant(server: ServerProcess) -> None:
    first = RoomClient(server.ws_url, auto_subscribe=False, reconnect=False)
    second = RoomClient(server.ws_url, auto_subscribe=False)
    try:
        async with asyncio.timeout(TEST_TIMEOUT):
            await first.join("wrongkey", "First")
            await first.publish([PreEncodedAudioTrack()])
            await first.wait_connected()
            await second._connect()
            reply = await second._request(
                {"type": "join", "room": "wrongkey", "name": "Second",
                 "resume": {"participantId": first.participant_id, "key": "not-the-key"}}
            )
            still = [p["id"] for p in reply["participants"]]
    finally:
        await first.close()
        await second.close()
    assert reply["resumed"] is False
    assert reply["participantId"] != first.participant_id
    assert still == [first.participant_id]


@pytest.mark.parametrize("how", ["dropped_without_grace", "closed_on_purpose"])
async def test_a_drop_without_grace_or_a_close_on_purpose_is_a_leave(
    start_server: Callable[..., ServerProcess], how: str
) -> None:
    """With ``--reconnect-grace 0`` a dropped connection is a leave at once; so is, with
    the default grace, a WebSocket closed with 1000 (or 1001, a closed tab)."""
    server = start_server("--reconnect-grace", "0") if how == "dropped_without_grace" else start_server()
    observer = RoomClient(server.ws_url)
    leaver = RoomClient(server.ws_url, auto_subscribe=False, reconnect=False)
    try:
        async with asyncio.timeout(TEST_TIMEOUT):
            await observer.join("leave", "Observer")
            await leaver.join("leave", "Leaver")
            await leaver.publish([PreEncodedAudioTrack()])
            await leaver.wait_connected()
            start = time.monotonic()
            if how == "dropped_without_grace":
                assert leaver._ws is not None
                leaver._ws._conn.transport.abort()  # no close frame
            else:
                await leaver.close()  # code 1000, without a leave message
            event = await observer.next_event("participant_left", timeout=5)
            elapsed = time.monotonic() - start
    finally:
        await observer.close()
        await leaver.close()
    assert event["participantId"] == leaver.participant_id
    assert elapsed < 1.5
