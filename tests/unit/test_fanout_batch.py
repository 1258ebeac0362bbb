"""The batched apply step (sfu.rtc.batch, the compiled sfu.rtc._fanout) sends exactly
what the pure-Python path sends: the same SRTP datagrams, byte for byte, for the same
keys and packets, through real UDP sockets; and the same RTP for DownTracks whose send
callable is not a socket (simulcast switches with VP8 PictureID rewriting, audio levels,
CSRCs, padding, transport-wide sequence numbers)."""

from __future__ import annotations

import asyncio
import os
import random
import socket
from types import SimpleNamespace

import pytest
from pylibsrtp import Policy, Session

from sfu.core.rtp import (
    URI_ABS_SEND_TIME,
    URI_AUDIO_LEVEL,
    URI_MID,
    URI_TRANSPORT_CC,
    parse_rtp,
)
from sfu.core.send_history import SendHistory
from sfu.downtrack import DownTrack
from sfu.rtc import batch
from sfu.rtc.adapter import CodecInfo, MediaInfo, RtpSendPath
from sfu.uptrack import UpTrack

from .synth import rtp, vp8_payload

needs_build = pytest.mark.skipif(not batch.AVAILABLE, reason="sfu.rtc._fanout not built (make setup)")

KEY = bytes(range(28))  # AEAD_AES_128_GCM: 16-byte key + 12-byte salt


@pytest.fixture
def restore_mode():
    before = batch.BATCH is not None
    yield
    batch.set_enabled(before)


def _source_packets() -> list[tuple[bytes, float]]:
    """A VP8 stream: keyframe first, marker bits, a CSRC, padding, a padding-only packet,
    a duplicate, and an extension the subscribers do not get."""
    out = []
    for i in range(60):
        seq = 1000 + i
        kw = {}
        if i % 7 == 3:
            kw["csrc"] = (0x11223344,)
        if i % 11 == 5:
            kw["padding"] = 4
        payload = vp8_payload(i % 30 == 0, body=bytes([i]) * (200 + 17 * i))
        if i == 20:
            payload, kw = b"", {"padding": 200}
        out.append((rtp(seq, (i // 3) * 3000, ssrc=0xAAAA, marker=i % 3 == 2, payload=payload, ext=[(1, b"0")], **kw), i * 3.0))
    out.append(out[10])  # a duplicate: dropped before the fan-out
    return out


async def _run_through_sockets(batched: bool, subscribers: int, share_socket: bool) -> tuple[list[list[bytes]], int]:
    """Forward the stream to ``subscribers`` DownTracks whose send paths are real
    RtpSendPaths over event-loop UDP transports (stub DTLS/ICE objects around them);
    return what each subscriber's socket received, in order, and the datagrams sent."""
    assert batch.set_enabled(batched) == batched
    loop = asyncio.get_running_loop()
    random.seed(7)  # DownTracks start at random sequence numbers and timestamps
    codec = CodecInfo(96, "video/VP8", 90000, rtx_payload_type=97)
    up = UpTrack("TR_1", "PA_pub", "video", "camera", "0", codec, {URI_MID: 1}, lambda ssrc: None)
    up.bind_ssrc(0xAAAA)
    sinks, transports = [], []
    shared = None
    for i in range(subscribers):
        sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sink.bind(("127.0.0.1", 0))
        sink.setblocking(False)
        sinks.append(sink)
        if shared is None or not share_socket:
            transport, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0))
            transports.append(transport)
            shared = transport
        pair = SimpleNamespace(protocol=SimpleNamespace(transport=shared), remote_addr=sink.getsockname())
        session = Session(Policy(key=KEY, ssrc_type=Policy.SSRC_ANY_OUTBOUND, srtp_profile=Policy.SRTP_PROFILE_AEAD_AES_128_GCM))
        dtls = SimpleNamespace(_tx_srtp=session, transport=SimpleNamespace(_connection=SimpleNamespace(_nominated={1: pair})))
        path = RtpSendPath(dtls)  # type: ignore[arg-type]
        ext = {URI_MID: 3, URI_ABS_SEND_TIME: 2} if i % 2 == 0 else {URI_MID: 5}
        media = MediaInfo(str(i), "video", "sendonly", [CodecInfo(120, "video/VP8", 90000, rtx_payload_type=121)], ext,
                          ssrc=0xB000 + i, rtx_ssrc=0xC000 + i)
        up.downtracks.append(DownTrack(up, f"S{i}", media, path.send_rtp, lambda d: True))
    stats_before = batch.BATCH.stats() if batched else None
    for data, now in _source_packets():
        up.on_rtp(parse_rtp(data), now)
    await asyncio.sleep(0.05)
    received = []
    for sink in sinks:
        got = []
        while True:
            try:
                got.append(sink.recv(4096))
            except BlockingIOError:
                break
        received.append(got)
        sink.close()
    for transport in transports:
        transport.close()
    syscalls = 0
    if batched:
        syscalls = batch.BATCH.stats()["syscalls"] - stats_before["syscalls"]
    return received, syscalls


@needs_build
@pytest.mark.parametrize("share_socket", [False, True], ids=["socket-per-subscriber", "shared-socket"])
async def test_batched_srtp_datagrams_equal_the_python_paths_byte_for_byte(restore_mode, share_socket):
    python, _ = await _run_through_sockets(False, 4, share_socket)
    batched, syscalls = await _run_through_sockets(True, 4, share_socket)
    assert [len(r) for r in python] == [59, 59, 59, 59]  # 61 in, a duplicate and a padding-only packet out
    assert batched == python
    # All 61 packets arrived in one event-loop turn: what they queued left at its end,
    # in one sendmmsg per socket (all four subscribers' 236 datagrams in one, shared).
    assert syscalls == (1 if share_socket else 4)


def _callback_run(batched: bool, kind: str, transport_cc: bool, histories: list | None = None) -> list[bytes]:
    """A simulcast VP8 track (layer switches: PictureID/TL0PICIDX rewriting, decided in
    Python), a simulcast H.264 track (layer switches applied by the compiled Lanes, with
    a padding-only packet, a reordered and a lost one) or an audio track with audio
    levels, forwarded to DownTracks with plain send callables."""
    assert batch.set_enabled(batched) == batched
    random.seed(11)
    sent: list[bytes] = []
    if kind in ("video", "h264"):
        mime = "video/VP8" if kind == "video" else "video/H264"
        codec = CodecInfo(96, mime, 90000, rtx_payload_type=97)
        up = UpTrack("TR_1", "PA_pub", "video", "camera", "0", codec, {URI_MID: 1}, lambda ssrc: None, rids=["q", "h"])
        for index, layer in enumerate(up.layers):
            layer.bind_ssrc(0xA0 + index)
    else:
        codec = CodecInfo(111, "audio/opus", 48000, 2)
        up = UpTrack("TR_1", "PA_pub", "audio", "microphone", "0", codec, {URI_AUDIO_LEVEL: 1}, lambda ssrc: None)
        up.bind_ssrc(0xA0)
    downtracks = []
    for i in range(3):
        ext = {URI_MID: 3, URI_ABS_SEND_TIME: 2, URI_AUDIO_LEVEL: 4}
        history = None
        if transport_cc:
            ext[URI_TRANSPORT_CC] = 6
            history = SendHistory()
            if histories is not None:
                histories.append(history)
        media = MediaInfo(str(i), kind if kind == "audio" else "video", "sendonly", [CodecInfo(120, codec.mime_type, codec.clock_rate, rtx_payload_type=121)],
                          ext, ssrc=0xB000 + i, rtx_ssrc=0xC000 + i)
        dt = DownTrack(up, f"S{i}", media, lambda d: sent.append(d) or True, lambda d: True, transport_cc=history)
        up.downtracks.append(dt)
        downtracks.append(dt)
    if kind == "h264":
        for dt in downtracks:
            dt.set_target(0, "bandwidth", 0.0)
        order = [n for n in range(90) if n not in (26, 30)]
        order.insert(order.index(27), 26)  # 26 after 27: late
        order.insert(order.index(27) + 2, 26)  # and again: a duplicate
        for n in order:
            for index, layer in enumerate(up.layers):
                if n == 40:
                    downtracks[0].set_target(1, "bandwidth", n * 10.0)
                    downtracks[2].set_target(1, "bandwidth", n * 10.0)
                if n == 70:
                    downtracks[2].set_target(None, "bandwidth", n * 10.0)
                keyframe = n % 30 == 0 or (index == 1 and n == 45)
                payload = (b"\x65" if keyframe else b"\x41") + bytes([n, index]) * 40
                if n == 20 and index == 0:
                    data = rtp(500 + n, n * 3000, ssrc=0xA0, payload=b"", padding=100)
                else:
                    data = rtp(500 + n, n * 3000 + index, ssrc=0xA0 + index, payload=payload, marker=True)
                up.on_rtp(parse_rtp(data), n * 10.0 + index, layer)
    elif kind == "video":
        for dt in downtracks:
            dt.set_target(0, "bandwidth", 0.0)
        for n in range(90):
            for index, layer in enumerate(up.layers):
                if n == 40:
                    downtracks[0].set_target(1, "bandwidth", n * 10.0)
                    downtracks[2].set_target(1, "bandwidth", n * 10.0)
                keyframe = n % 30 == 0 or (index == 1 and n == 45)
                # The keyframe that starts layer 1 has no PictureID: the next packet's continues the numbering.
                picture_id = None if (index == 1 and n == 45) else (n * 3 + index * 1000) & 0x7FFF
                payload = vp8_payload(keyframe, picture_id=picture_id, body=bytes([n, index]) * 40)
                data = rtp(500 + n, n * 3000 + index, ssrc=0xA0 + index, payload=payload, marker=True)
                up.on_rtp(parse_rtp(data), n * 10.0 + index, layer)
    else:
        for n in range(50):
            data = rtp(7 + n, n * 960, ssrc=0xA0, pt=111, payload=bytes([n]) * 80, ext=[(1, bytes([0x80 | n]))] if n % 4 else None)
            up.on_rtp(parse_rtp(data), n * 20.0)
    return sent


@needs_build
@pytest.mark.parametrize("kind", ["video", "h264", "audio"])
@pytest.mark.parametrize("transport_cc", [False, True], ids=["abs-send-time", "transport-cc"])
def test_batched_rtp_equals_the_python_paths_for_callback_routes(restore_mode, kind, transport_cc):
    python_histories: list[SendHistory] = []
    batched_histories: list[SendHistory] = []
    python = _callback_run(False, kind, transport_cc, python_histories)
    batched = _callback_run(True, kind, transport_cc, batched_histories)
    assert len(python) > 100
    assert batched == python
    # The transport-wide send history the compiled fan-out stamped is the Python path's:
    # the same send times, sizes, clusters, states and counts.
    for a, b in zip(python_histories, batched_histories, strict=True):
        assert (a._send_ms, a._size, a._cluster, a._state, a._counts) == (b._send_ms, b._size, b._cluster, b._state, b._counts)
        assert a.in_flight_bytes() > 0
    if kind != "audio":  # the switch happened (and for VP8 rewrote PictureIDs: the head path)
        assert len({parse_rtp(p).ssrc for p in python}) == 3
    if kind == "h264":  # the compiled Lanes forwarded the common packets
        seqs = [parse_rtp(p).sequence_number for p in python if parse_rtp(p).ssrc == 0xB001]
        assert len(seqs) == len(set(seqs)) == 88  # 90 - the padding-only and the lost one (the duplicate dropped)


def test_sfu_batch_selects_the_path(monkeypatch, restore_mode):
    monkeypatch.setenv("SFU_BATCH", "0")
    assert batch._requested() is False
    monkeypatch.setenv("SFU_BATCH", "1")
    assert batch._requested() is batch.AVAILABLE
    monkeypatch.delenv("SFU_BATCH")
    assert batch._requested() is batch.AVAILABLE
    assert batch.set_enabled(False) is False and batch.mode() == "python"
    assert batch.set_enabled(True) is batch.AVAILABLE


@needs_build
def test_a_fan_out_outside_an_event_loop_is_sent_at_once(restore_mode):
    batch.set_enabled(True)
    sent = _callback_run(True, "audio", False)  # callback routes: sent during add()
    assert len(sent) == 150
    before = batch.BATCH.stats()["syscalls"]
    b = batch.BATCH
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink.settimeout(2)
    try:
        session = Session(Policy(key=KEY, ssrc_type=Policy.SSRC_ANY_OUTBOUND, srtp_profile=Policy.SRTP_PROFILE_AEAD_AES_128_GCM))
        route = batch.Route(fd=sock.fileno(), address=sink.getsockname(), ctx=int(batch._srtp_ffi.cast("uintptr_t", session._srtp[0])), keep=session)
        packet = parse_rtp(rtp(5, 0, payload=b"y" * 50))
        b.begin(packet.data, packet.payload_offset, packet.body_end, False, False)
        b.add(route, 96, 5, 0, 1, b"", None)
        batch.finish(b)  # no running loop: sent now
        assert batch.BATCH.stats()["syscalls"] == before + 1
        assert len(sink.recv(2048)) == 62 + 16  # RTP + the GCM tag
    finally:
        sock.close()
        sink.close()


@needs_build
def test_batch_refuses_what_srtp_cannot_take_and_reports_unsendable_datagrams():
    b = batch._fanout.Batch()
    session = Session(Policy(key=KEY, ssrc_type=Policy.SSRC_ANY_OUTBOUND, srtp_profile=Policy.SRTP_PROFILE_AEAD_AES_128_GCM))
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        route = batch.Route(fd=sock.fileno(), address=("127.0.0.1", 9), ctx=int(batch._srtp_ffi.cast("uintptr_t", session._srtp[0])), keep=session)
        big = parse_rtp(rtp(1, 0, payload=os.urandom(1400)))
        b.begin(big.data, big.payload_offset, big.body_end, False, False)
        assert b.add(route, 96, 1, 0, 1, b"", None) == -1  # 1412 bytes + trailer do not fit libsrtp's 1500
        b.flush()
        with pytest.raises(RuntimeError):
            b.add(route, 96, 1, 0, 1, b"", None)  # outside begin/flush
        small = parse_rtp(rtp(2, 0, payload=b"x" * 100))
        b.begin(small.data, small.payload_offset, small.body_end, False, False)
        assert b.add(route, 96, 2, 0, 1, b"", None) == 112
        sock.close()  # the socket went away: the kernel takes nothing, nothing raises
        assert b.flush() == 1
    finally:
        sock.close()


@needs_build
async def test_a_lane_follows_a_new_nominated_pair(restore_mode):
    """The compiled fan-out sends through the route a Lane was bound with only while
    the ICE connection's nominated pair is the one it was made for: after a change the
    next packet goes through Python, which binds the Lane to the new pair's route."""
    assert batch.set_enabled(True)
    loop = asyncio.get_running_loop()
    sinks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]
    transport, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0))
    try:
        for sink in sinks:
            sink.bind(("127.0.0.1", 0))
            sink.setblocking(False)
        pairs = [SimpleNamespace(protocol=SimpleNamespace(transport=transport), remote_addr=sink.getsockname()) for sink in sinks]
        nominated = {1: pairs[0]}
        session = Session(Policy(key=KEY, ssrc_type=Policy.SSRC_ANY_OUTBOUND, srtp_profile=Policy.SRTP_PROFILE_AEAD_AES_128_GCM))
        dtls = SimpleNamespace(_tx_srtp=session, transport=SimpleNamespace(_connection=SimpleNamespace(_nominated=nominated)))
        path = RtpSendPath(dtls)  # type: ignore[arg-type]
        codec = CodecInfo(111, "audio/opus", 48000, 2)
        up = UpTrack("TR_1", "PA_pub", "audio", "microphone", "0", codec, {}, lambda ssrc: None)
        up.bind_ssrc(0xA0)
        media = MediaInfo("0", "audio", "sendonly", [codec], {URI_MID: 3}, ssrc=0xB000, rtx_ssrc=None)
        dt = DownTrack(up, "S", media, path.send_rtp, lambda d: True)
        up.downtracks.append(dt)
        for n in range(10):
            up.on_rtp(parse_rtp(rtp(n, n * 960, ssrc=0xA0, pt=111, payload=b"a" * 40)), n * 20.0)
            if n == 4:
                assert dt._lane.active  # bound after the first packet decided in Python
                nominated[1] = pairs[1]
            batch.send_pending()
        await asyncio.sleep(0.05)
        got = []
        for sink in sinks:
            count = 0
            while True:
                try:
                    sink.recv(2048)
                    count += 1
                except BlockingIOError:
                    break
            got.append(count)
        assert got == [5, 5]
        assert dt._lane.active and dt.packets_sent == 10
    finally:
        transport.close()
        for sink in sinks:
            sink.close()


@needs_build
def test_a_lane_has_the_forward_state_attributes():
    from sfu.core.forwarder import ForwardState

    lane, state = batch._fanout.Lane(), ForwardState()
    for name in ForwardState.__slots__:
        assert int(getattr(lane, name)) == int(getattr(state, name)), name
        setattr(lane, name, 7)
        assert getattr(lane, name) == 7


@needs_build
def test_a_bound_lane_in_a_reference_cycle_is_collected(restore_mode):
    """A bound Lane refers to its route, whose callback may lead back to the DownTrack:
    the cycle collector sees through both, so a DownTrack dropped without close() is
    freed."""
    import gc
    import weakref

    assert batch.set_enabled(True)
    codec = CodecInfo(111, "audio/opus", 48000, 2)
    up = UpTrack("TR_1", "PA_pub", "audio", "microphone", "0", codec, {}, lambda ssrc: None)
    up.bind_ssrc(0xA0)
    holder: dict = {}
    media = MediaInfo("0", "audio", "sendonly", [codec], {URI_MID: 3}, ssrc=0xB000, rtx_ssrc=None)
    def sender(h: dict):
        return lambda d: h["dt"] is not None  # refers to holder, which refers to dt

    send = sender(holder)
    dt = DownTrack(up, "S", media, send, lambda d: True)
    holder["dt"] = dt
    up.downtracks.append(dt)
    for n in range(3):
        up.on_rtp(parse_rtp(rtp(n, n * 960, ssrc=0xA0, pt=111, payload=b"a" * 40)), n * 20.0)
    assert dt._lane.active and dt.packets_sent == 3
    ref = weakref.ref(dt)
    del dt, up, holder, send
    gc.collect()
    assert ref() is None


@needs_build
def test_fanout_leaves_what_has_no_lane_to_python():
    b = batch._fanout.Batch()
    packet = parse_rtp(rtp(5, 0, payload=b"y" * 50))
    other = SimpleNamespace()  # no _lane attribute
    unbound = SimpleNamespace(_lane=batch._fanout.Lane())  # never bound: inactive
    b.begin(packet.data, packet.payload_offset, packet.body_end, False, False)
    packets, size, failed, rest = b.fanout([other, unbound], 0, 5, 0, False, 50, b"\x00\x00\x00", None, 0.0)
    b.flush()
    assert (packets, size, failed) == (0, 0, 0) and rest == [other, unbound]
