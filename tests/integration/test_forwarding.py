"""Media forwarding and the room protocol, through a real server with aiortc clients.

Every test talks to a server subprocess on 127.0.0.1 (see conftest.py) and is bounded
in time by ``asyncio.timeout``.
"""

from __future__ import annotations

import asyncio
import fractions
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import av
import numpy as np
import psutil
import pytest
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    VideoStreamTrack,
)
from aiortc.mediastreams import MediaStreamError

from loadtest.client import RoomClient, RoomError
from loadtest.counter import RtpCounter
from loadtest.media import (
    PreEncodedAudioTrack,
    PreEncodedVideoTrack,
    encode_opus_clip,
    encode_vp8_clip,
)
from loadtest.server import REPO_ROOT, ServerProcess
from sfu.core.codecs import parse_vp8_descriptor, vp8_is_keyframe
from sfu.core.rtp import parse_rtp

WIDTH, HEIGHT = 320, 240
TEST_TIMEOUT = 60.0  # seconds, an upper bound for any one test's asyncio part


# ----------------------------------------------------------------------- media


class PatternVideoTrack(VideoStreamTrack):
    """30 fps 320x240 frames whose colour and moving bar change every frame."""

    def __init__(self) -> None:
        super().__init__()
        self._index = 0

    async def recv(self) -> av.VideoFrame:
        pts, time_base = await self.next_timestamp()
        i = self._index
        self._index += 1
        img = np.empty((HEIGHT, WIDTH, 3), np.uint8)
        img[..., 0] = (i * 7) % 256
        img[..., 1] = (i * 3) % 256
        img[..., 2] = 255 - (i * 5) % 256
        x = (i * 4) % (WIDTH - 32)
        img[:, x : x + 32] = 255
        frame = av.VideoFrame.from_ndarray(img, format="rgb24")
        frame.pts = pts
        frame.time_base = time_base
        return frame


class ToneAudioTrack(MediaStreamTrack):
    """A 440 Hz mono tone at 48 kHz in 20 ms s16 frames, paced in real time."""

    kind = "audio"
    rate = 48_000
    samples = 960

    def __init__(self) -> None:
        super().__init__()
        self._index = 0
        self._start: float | None = None

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        now = time.monotonic()
        if self._start is None:
            self._start = now
        delay = self._start + self._index * self.samples / self.rate - now
        if delay > 0:
            await asyncio.sleep(delay)
        t = (np.arange(self.samples) + self._index * self.samples) / self.rate
        pcm = (0.3 * 32767 * np.sin(2 * np.pi * 440 * t)).astype(np.int16).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate = self.rate
        frame.pts = self._index * self.samples
        frame.time_base = fractions.Fraction(1, self.rate)
        self._index += 1
        return frame


async def recv_frames(
    track: MediaStreamTrack, count: int, accept: Callable[[Any], bool] = lambda f: True
) -> list[Any]:
    """Read decoded frames until ``count`` of them pass ``accept`` (the caller bounds
    the time)."""
    frames: list[Any] = []
    while len(frames) < count:
        frame = await track.recv()
        if accept(frame):
            frames.append(frame)
    return frames


class PayloadRecorder(RtpCounter):
    """An :class:`RtpCounter` that also keeps (ssrc, seq, timestamp, marker, payload)
    of the first ``limit`` packets."""

    def __init__(self, limit: int = 20_000) -> None:
        super().__init__()
        self.limit = limit
        self.packets: list[tuple[int, int, int, bool, bytes]] = []

    def on_rtp(self, data: bytes, arrival_ms: float) -> None:
        super().on_rtp(data, arrival_ms)
        if len(self.packets) < self.limit:
            p = parse_rtp(data)
            self.packets.append((p.ssrc, p.sequence_number, p.timestamp, p.marker, p.payload))


def reassemble_vp8(packets: list[tuple[int, int, int, bool, bytes]]) -> list[bytes]:
    """Complete VP8 frames (RFC 7741: payload descriptors stripped) from packets of
    one SSRC; frames with a missing packet are left out."""
    by_seq = {seq: (ts, marker, payload) for _, seq, ts, marker, payload in packets}
    frames: list[bytes] = []
    parts: list[bytes] = []
    expected_seq: int | None = None
    frame_ts: int | None = None
    for seq in sorted(by_seq):  # a short capture: no 16-bit wrap handling needed below
        ts, marker, payload = by_seq[seq]
        descriptor = parse_vp8_descriptor(payload)
        starts = descriptor.start_of_partition and descriptor.partition_index == 0
        if starts:
            parts, frame_ts = [], ts
        elif seq != expected_seq or ts != frame_ts:
            parts, frame_ts = [], None  # a gap: drop the frame in progress
        if frame_ts is not None:
            parts.append(payload[descriptor.size :])
            if marker:
                frames.append(b"".join(parts))
                parts, frame_ts = [], None
        expected_seq = seq + 1
    return frames


# ---------------------------------------------------------------- WebSocket raw


async def exchange(ws: aiohttp.ClientWebSocketResponse, message: str | dict[str, Any]) -> dict[str, Any]:
    """Send one text frame and return the next JSON message from the server."""
    await ws.send_str(message if isinstance(message, str) else json.dumps(message))
    frame = await ws.receive(timeout=5.0)
    assert frame.type == aiohttp.WSMsgType.TEXT, f"expected a text frame, got {frame.type}"
    return json.loads(frame.data)


def assert_error(reply: dict[str, Any], code: str, request_type: str | None) -> None:
    assert reply["type"] == "error", reply
    assert reply["code"] == code, reply
    assert isinstance(reply.get("message"), str)
    if request_type is not None:
        assert reply.get("requestType") == request_type, reply


# ----------------------------------------------------------------------- tests


async def test_video_and_audio_are_forwarded_and_decoded(server: ServerProcess) -> None:
    publisher = RoomClient(server.ws_url, auto_subscribe=False)
    subscriber = RoomClient(server.ws_url)
    try:
        async with asyncio.timeout(TEST_TIMEOUT):
            await subscriber.join("forward", "Sub")
            joined = await publisher.join("forward", "Pub")
            assert [p["id"] for p in joined["participants"]] == [subscriber.participant_id]
            event = await subscriber.next_event("participant_joined")
            assert event["participant"]["id"] == publisher.participant_id
            assert event["participant"]["name"] == "Pub"

            video_id, audio_id = await publisher.publish(
                [PatternVideoTrack(), ToneAudioTrack()], ["camera", "microphone"]
            )
            await subscriber.wait_until(lambda: {video_id, audio_id} <= subscriber.subscriptions.keys())
            roster = subscriber.participants[publisher.participant_id].tracks
            assert (roster[video_id].kind, roster[video_id].source) == ("video", "camera")
            assert (roster[audio_id].kind, roster[audio_id].source) == ("audio", "microphone")
            video = subscriber.subscriptions[video_id]
            audio = subscriber.subscriptions[audio_id]
            assert (video.kind, video.participant_id) == ("video", publisher.participant_id)
            assert (audio.kind, audio.participant_id) == ("audio", publisher.participant_id)

            async with asyncio.timeout(30):
                video_frames, audio_frames = await asyncio.gather(
                    recv_frames(video.track, 60), recv_frames(audio.track, 50)
                )
    finally:
        await asyncio.gather(publisher.close(), subscriber.close())

    assert {(f.width, f.height) for f in video_frames} == {(WIDTH, HEIGHT)}
    # The picture changes: many distinct mean colours among the decoded frames.
    means = {round(float(f.to_ndarray(format="rgb24")[..., 0].mean()) / 4) for f in video_frames}
    assert len(means) > 10, means
    assert {f.sample_rate for f in audio_frames} == {48_000}
    peak = max(int(np.abs(f.to_ndarray()).max()) for f in audio_frames[10:])
    assert peak > 3000, f"the tone did not come through (peak {peak})"


async def test_h264_only_publisher_is_forwarded_as_h264(server: ServerProcess) -> None:
    """A publisher that offers only H.264 is forwarded as H.264 (no transcoding): the
    subscriber's m-line negotiates H.264 and decodes the publisher's picture."""
    publisher = RoomClient(server.ws_url, auto_subscribe=False)
    subscriber = RoomClient(server.ws_url)
    try:
        async with asyncio.timeout(TEST_TIMEOUT):
            await publisher.join("h264", "Pub")
            (video_id,) = await publisher.publish([PatternVideoTrack()], ["camera"], video_codec="video/H264")
            await subscriber.join("h264", "Sub")
            await subscriber.wait_until(lambda: video_id in subscriber.subscriptions)
            video = subscriber.subscriptions[video_id]
            negotiated = [c.mimeType for c in video.transceiver._codecs if not c.mimeType.endswith("/rtx")]
            async with asyncio.timeout(30):
                frames = await recv_frames(video.track, 60)
    finally:
        await asyncio.gather(publisher.close(), subscriber.close())
    assert negotiated and all(m.lower() == "video/h264" for m in negotiated), negotiated
    assert {(f.width, f.height) for f in frames} == {(WIDTH, HEIGHT)}
    means = {round(float(f.to_ndarray(format="rgb24")[..., 0].mean()) / 4) for f in frames}
    assert len(means) > 10, means


async def test_late_joiner_receives_tracks_published_before_it_joined(server: ServerProcess) -> None:
    publisher = RoomClient(server.ws_url, auto_subscribe=False)
    late = RoomClient(server.ws_url, auto_subscribe=False)
    try:
        async with asyncio.timeout(TEST_TIMEOUT):
            await publisher.join("late", "Early")
            video_id, audio_id = await publisher.publish([PatternVideoTrack(), ToneAudioTrack()])
            await publisher.wait_connected()
            await asyncio.sleep(1.0)  # media is flowing into the server before the join

            joined = await late.join("late", "Late")
            (early,) = joined["participants"]
            assert early["id"] == publisher.participant_id
            kinds = {t["id"]: (t["kind"], t["source"]) for t in early["tracks"]}
            assert kinds == {video_id: ("video", "camera"), audio_id: ("audio", "microphone")}

            subscriptions = await late.subscribe([video_id, audio_id])
            assert {s.track_id for s in subscriptions} == {video_id, audio_id}
            video = late.subscriptions[video_id]
            audio = late.subscriptions[audio_id]
            async with asyncio.timeout(30):
                video_frames, audio_frames = await asyncio.gather(
                    recv_frames(video.track, 30), recv_frames(audio.track, 25)
                )
    finally:
        await asyncio.gather(publisher.close(), late.close())
    assert {(f.width, f.height) for f in video_frames} == {(WIDTH, HEIGHT)}
    assert audio_frames


DOOMED_CLIENT = """
import asyncio, sys
from loadtest.client import RoomClient
from loadtest.media import PreEncodedAudioTrack, PreEncodedVideoTrack

async def main() -> None:
    client = RoomClient(sys.argv[1], auto_subscribe=False)
    joined = await client.join(sys.argv[2], "Doomed")
    await client.publish([PreEncodedVideoTrack(), PreEncodedAudioTrack()])
    print(joined["participantId"], flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


@pytest.mark.parametrize("how", ["leave", "close_websocket", "kill_process"])
async def test_others_see_participant_left(start_server: Callable[..., ServerProcess], how: str) -> None:
    """A leave and a WebSocket closed on purpose are seen at once; a killed client after
    the place kept for its reconnection (here 1 s)."""
    server = start_server("--reconnect-grace", "1")
    room = f"left-{how.replace('_', '-')}"
    observer = RoomClient(server.ws_url)
    child: subprocess.Popen[str] | None = None
    leaver: RoomClient | None = None
    try:
        async with asyncio.timeout(TEST_TIMEOUT):
            await observer.join(room, "Observer")
            if how == "kill_process":
                child = subprocess.Popen(
                    [sys.executable, "-c", DOOMED_CLIENT, server.ws_url, room],
                    cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True,
                )
                assert child.stdout is not None
                leaver_id = (await asyncio.to_thread(child.stdout.readline)).strip()
            else:
                leaver = RoomClient(server.ws_url, auto_subscribe=False)
                await leaver.join(room, "Leaver")
                await leaver.publish([PreEncodedVideoTrack(), PreEncodedAudioTrack()])
                leaver_id = leaver.participant_id
            assert leaver_id
            await observer.wait_until(
                lambda: sum(s.participant_id == leaver_id for s in observer.subscriptions.values()) == 2
            )

            start = time.monotonic()
            if how == "leave":
                await leaver.leave()  # type: ignore[union-attr]
            elif how == "close_websocket":
                await leaver.close()  # type: ignore[union-attr]
            else:
                os.kill(child.pid, signal.SIGKILL)  # type: ignore[union-attr]
            event = await observer.next_event("participant_left", timeout=5.0)
            elapsed = time.monotonic() - start
    finally:
        if child is not None and child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)
        if child is not None:
            child.wait(timeout=10)
        await observer.close()
        if leaver is not None:
            await leaver.close()
    assert event["participantId"] == leaver_id
    assert elapsed < 5.0
    assert leaver_id not in observer.participants
    assert not observer.subscriptions  # its tracks went with it


@pytest.mark.parametrize(
    ("frame", "code", "request_type"),
    [
        ("{not json", "bad_json", None),
        ("[1, 2, 3]", "bad_json", None),
        ('"join"', "bad_json", None),
        ('{"type": "dance"}', "unknown_type", "dance"),
        ('{"type": "offer", "sdp": "v=0\\r\\n", "tracks": {}}', "not_joined", "offer"),
        ('{"type": "mute", "trackId": "TR_00000000", "muted": true}', "not_joined", "mute"),
        ('{"type": "join", "room": "has space", "name": "A"}', "invalid_room", "join"),
        ('{"type": "join", "room": "", "name": "A"}', "invalid_room", "join"),
        ('{"type": "join", "room": "' + "r" * 65 + '", "name": "A"}', "invalid_room", "join"),
        ('{"type": "join", "room": "caf\u00e9", "name": "A"}', "invalid_room", "join"),
        ('{"type": "join", "room": "demo\\n", "name": "A"}', "invalid_room", "join"),  # not the room "demo"
        ('{"type": "join", "room": "ok"}', "bad_message", "join"),
        ('{"type": "join", "room": "ok", "name": "   "}', "bad_message", "join"),
        ('{"type": "join", "room": "ok", "name": "' + "n" * 65 + '"}', "bad_message", "join"),
    ],
)
async def test_bad_message_before_join_is_answered_and_join_still_works(
    server: ServerProcess, frame: str, code: str, request_type: str | None
) -> None:
    async with aiohttp.ClientSession() as session, session.ws_connect(server.ws_url) as ws:
        assert_error(await exchange(ws, frame), code, request_type)
        reply = await exchange(ws, {"type": "join", "room": "after-error", "name": "Ok"})
        assert reply["type"] == "joined", reply
        assert reply["room"] == "after-error"


async def test_error_replies_do_not_echo_what_the_client_sent(server: ServerProcess) -> None:
    """A huge unknown type, or JSON nested a thousand levels deep, gets a short error
    reply (never the input back, never `internal`), and the connection goes on."""
    async with aiohttp.ClientSession() as session, session.ws_connect(server.ws_url) as ws:
        reply = await exchange(ws, json.dumps({"type": "x" * 200_000}))
        assert reply["code"] == "unknown_type" and len(json.dumps(reply)) < 400, len(json.dumps(reply))
        reply = await exchange(ws, "[" * 5000 + "]" * 5000)
        assert reply["code"] == "bad_json", reply
        reply = await exchange(ws, '{"type": "join", "room": "r", "name": ' + "[" * 5000 + "]" * 5000 + "}")
        assert reply["code"] in ("bad_json", "bad_message"), reply
        assert (await exchange(ws, {"type": "ping"}))["type"] == "pong"
    assert "Traceback" not in server.log_path.read_text(errors="replace"), server.log_tail()


async def test_bad_requests_after_join_are_answered_and_offers_still_work(server: ServerProcess) -> None:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        async with asyncio.timeout(TEST_TIMEOUT), aiohttp.ClientSession() as session, \
                session.ws_connect(server.ws_url) as ws:
            assert (await exchange(ws, {"type": "join", "room": "errors", "name": "E"}))["type"] == "joined"
            no_media = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
            cases: list[tuple[dict[str, Any], str, str]] = [
                ({"type": "join", "room": "errors", "name": "E"}, "already_joined", "join"),
                ({"type": "offer", "sdp": "this is not SDP", "tracks": {}}, "bad_sdp", "offer"),
                ({"type": "offer", "sdp": no_media, "tracks": {}}, "bad_sdp", "offer"),
                ({"type": "offer", "tracks": {}}, "bad_message", "offer"),
                ({"type": "mute", "trackId": "TR_00000000", "muted": True}, "unknown_track", "mute"),
                ({"type": "unpublish", "trackId": "TR_00000000"}, "unknown_track", "unpublish"),
                ({"type": "track_settings", "trackId": "TR_00000000", "maxHeight": 360}, "unknown_track", "track_settings"),
                ({"type": "track_settings", "trackId": "TR_00000000", "maxHeight": "tall"}, "bad_message", "track_settings"),
                ({"type": "track_settings", "trackId": "TR_00000000", "maxHeight": 0}, "bad_message", "track_settings"),
                ({"type": "track_settings", "trackId": "TR_00000000", "paused": "yes"}, "bad_message", "track_settings"),
                ({"type": "track_settings", "maxHeight": 360}, "bad_message", "track_settings"),
            ]
            for message, code, request_type in cases:
                assert_error(await exchange(ws, message), code, request_type)

            assert (await exchange(ws, {"type": "ping"}))["type"] == "pong"
            # A real offer still negotiates after the refused ones.
            pc.addTransceiver(PatternVideoTrack(), direction="sendonly")
            await pc.setLocalDescription(await pc.createOffer())
            mid = pc.getTransceivers()[0].mid
            answer = await exchange(ws, {"type": "offer", "sdp": pc.localDescription.sdp,
                                         "tracks": {mid: {"publish": {"source": "camera"}}}})
            assert answer["type"] == "answer", answer
            assert answer["tracks"][mid]["direction"] == "publish"
            assert answer["tracks"][mid]["trackId"]
    finally:
        await pc.close()


async def test_full_room_refuses_join_until_someone_leaves(start_server: Callable[..., ServerProcess]) -> None:
    server = start_server("--max-participants", "2")
    first, second, third = (RoomClient(server.ws_url, auto_subscribe=False) for _ in range(3))
    try:
        async with asyncio.timeout(TEST_TIMEOUT):
            await first.join("small", "One")
            await second.join("small", "Two")
            with pytest.raises(RoomError) as refused:
                await third.join("small", "Three")
            assert (refused.value.code, refused.value.request_type) == ("room_full", "join")
            assert third.connected
            await first.leave()
            joined = await third.join("small", "Three")  # the same connection may try again
            assert [p["id"] for p in joined["participants"]] == [second.participant_id]
    finally:
        await asyncio.gather(first.close(), second.close(), third.close())


async def test_new_subscriber_video_starts_with_a_keyframe(server: ServerProcess) -> None:
    """The subscriber joins while the publisher's first keyframe is on its way, before
    the subscriber's own ICE/DTLS is up: its first video packet must still start a
    keyframe, or its decoder has nothing to start from until the next one."""
    publisher = RoomClient(server.ws_url, auto_subscribe=False)
    recorder = PayloadRecorder(limit=200)
    subscriber = RoomClient(server.ws_url, auto_subscribe=False, count_rtp=recorder)
    try:
        async with asyncio.timeout(TEST_TIMEOUT):
            await publisher.join("first-keyframe", "Pub")
            await subscriber.join("first-keyframe", "Sub")
            (video_id,) = await publisher.publish([PreEncodedVideoTrack()])
            # The client subscribes only to tracks it has heard of.
            published = await subscriber.next_event("track_published")
            assert published["track"]["id"] == video_id
            await subscriber.subscribe([video_id])
            await subscriber.wait_until(lambda: len(recorder.packets) >= 30, timeout=15)
    finally:
        await asyncio.gather(publisher.close(), subscriber.close())
    first_payload = recorder.packets[0][4]
    assert vp8_is_keyframe(first_payload), "the first forwarded video packet is not a keyframe start"


async def test_resubscribe_reuses_the_inactive_mline(server: ServerProcess) -> None:
    publisher = RoomClient(server.ws_url, auto_subscribe=False)
    subscriber = RoomClient(server.ws_url, auto_subscribe=False, count_rtp=True)
    counter = subscriber.counter
    assert counter is not None
    packets_on = counter.packets_on

    try:
        async with asyncio.timeout(TEST_TIMEOUT):
            await publisher.join("resub", "Pub")
            (video_id,) = await publisher.publish([PreEncodedVideoTrack()])
            await subscriber.join("resub", "Sub")
            (first,) = await subscriber.subscribe([video_id])
            await subscriber.wait_until(lambda: packets_on(first.mid) >= 60, timeout=15)

            await subscriber.unsubscribe([video_id])
            await asyncio.sleep(1.0)  # packets already in flight drain
            stopped_at = packets_on(first.mid)
            await asyncio.sleep(1.0)
            assert packets_on(first.mid) == stopped_at, "the server kept forwarding after unsubscribe"

            (second,) = await subscriber.subscribe([video_id])
            assert second.mid == first.mid, "the inactive m-line was not reused"
            try:
                await subscriber.wait_until(lambda: packets_on(second.mid) >= stopped_at + 60, timeout=15)
            except TimeoutError:
                pytest.fail(f"no media on the reused m-line {second.mid}: {counter.snapshot()}")
    finally:
        await asyncio.gather(publisher.close(), subscriber.close())


async def test_unpublish_tells_subscribers_and_a_new_track_reuses_the_mline(server: ServerProcess) -> None:
    publisher = RoomClient(server.ws_url, auto_subscribe=False)
    subscriber = RoomClient(server.ws_url, count_rtp=True)
    counter = subscriber.counter
    assert counter is not None
    packets_on = counter.packets_on

    try:
        async with asyncio.timeout(TEST_TIMEOUT):
            await publisher.join("unpublish", "Pub")
            await subscriber.join("unpublish", "Sub")
            video_id, audio_id = await publisher.publish([PreEncodedVideoTrack(), PreEncodedAudioTrack()])
            await subscriber.wait_until(lambda: {video_id, audio_id} <= subscriber.subscriptions.keys())
            publisher_mid = publisher.published[video_id].mid

            await publisher.unpublish(video_id)
            event = await subscriber.next_event("track_unpublished", timeout=5.0)
            assert (event["participantId"], event["trackId"]) == (publisher.participant_id, video_id)
            assert subscriber.subscriptions.keys() == {audio_id}
            assert video_id not in subscriber.participants[publisher.participant_id].tracks

            (new_id,) = await publisher.publish([PreEncodedVideoTrack()])
            assert new_id != video_id
            assert publisher.published[new_id].mid == publisher_mid, "the inactive m-line was not reused"
            await subscriber.wait_until(lambda: new_id in subscriber.subscriptions)
            new_mid = subscriber.subscriptions[new_id].mid
            await subscriber.wait_until(lambda: packets_on(new_mid) >= 60, timeout=15)
    finally:
        await asyncio.gather(publisher.close(), subscriber.close())


async def test_server_forwards_without_decoding_or_reencoding(server: ServerProcess) -> None:
    """Two publishers of pre-encoded VP8 + Opus, one subscriber that records payloads.

    No decoding: aiortc starts one decoder thread per receiving track, so the server's
    OS thread count must not grow with the 4 published tracks (Python 3.11 does not
    give threads OS names, so /proc cannot show "video-decoder"). No re-encoding: the
    VP8 frames and Opus packets that arrive are byte-identical to the publishers'
    pre-encoded clip. And the server's CPU stays modest.
    """
    process = psutil.Process(server.pid)
    threads_idle = process.num_threads()
    publishers = [RoomClient(server.ws_url, auto_subscribe=False) for _ in range(2)]
    recorder = PayloadRecorder()
    subscriber = RoomClient(server.ws_url, count_rtp=recorder)
    try:
        async with asyncio.timeout(TEST_TIMEOUT):
            await subscriber.join("passthrough", "Recorder")
            for i, publisher in enumerate(publishers):
                await publisher.join("passthrough", f"Pub{i}")
                await publisher.publish([PreEncodedVideoTrack(), PreEncodedAudioTrack()])
            await subscriber.wait_until(lambda: len(subscriber.subscriptions) == 4, timeout=15)
            await asyncio.sleep(2.0)  # warm-up
            cpu_start, wall_start = sum(process.cpu_times()[:2]), time.monotonic()
            await asyncio.sleep(5.0)
            cpu_share = (sum(process.cpu_times()[:2]) - cpu_start) / (time.monotonic() - wall_start)
            threads_busy = process.num_threads()
    finally:
        await asyncio.gather(subscriber.close(), *(p.close() for p in publishers))

    assert threads_busy - threads_idle <= 1, f"server threads {threads_idle} -> {threads_busy}"
    assert cpu_share < 0.5, f"server used {cpu_share:.0%} of a core for 4 tracks to 1 subscriber"

    streams = {s.ssrc: s for s in recorder.snapshot()}
    video_ssrcs = [ssrc for ssrc, s in streams.items() if s.kind == "video"]
    audio_ssrcs = [ssrc for ssrc, s in streams.items() if s.kind == "audio"]
    assert len(video_ssrcs) == 2 and len(audio_ssrcs) == 2, streams
    clip_frames = set(encode_vp8_clip().packets)
    for ssrc in video_ssrcs:
        frames = reassemble_vp8([p for p in recorder.packets if p[0] == ssrc])
        assert len(frames) >= 60, f"only {len(frames)} complete VP8 frames on {ssrc}"
        assert all(frame in clip_frames for frame in frames), "a VP8 frame was altered"
        assert streams[ssrc].keyframes >= 2
        assert (streams[ssrc].width, streams[ssrc].height) == (640, 480)
    opus_packets = set(encode_opus_clip().packets)
    for ssrc in audio_ssrcs:
        payloads = [p[4] for p in recorder.packets if p[0] == ssrc]
        assert len(payloads) >= 150
        assert all(payload in opus_packets for payload in payloads), "an Opus packet was altered"
