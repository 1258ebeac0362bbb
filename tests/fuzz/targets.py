"""Fuzz targets: one small function per parser of untrusted input.

Each target takes the fuzzer's bytes, hands them to a parser the way the server does,
and returns None. It swallows the parser's DOCUMENTED error only (``ValueError`` for the
packet and SDP parsers, :class:`~sfu.core.envelope.EnvelopeError`,
:class:`~signaling.protocol.ProtocolError`); anything else that escapes is a bug:
``IndexError``, ``KeyError``, ``TypeError``, ``RecursionError``, ``struct.error``,
``UnicodeError``, ``OverflowError``, and the ``AssertionError`` of the round-trip and
contract checks below (what a parser returns must serialize again, what a builder
writes must parse to the same values). Slowness is the runner's business
(:mod:`tests.fuzz.run` times every call; the regression replay in
``tests/unit/test_fuzz.py`` too).

Importable without atheris: :data:`TARGETS` (name -> target), :data:`SEEDS` (name ->
valid inputs to start from) and :data:`DICTIONARIES` (name -> tokens for libFuzzer's
``-dict``) are plain Python.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable

from sfu.core.codecs import (
    h264_is_keyframe,
    is_keyframe,
    parse_vp8_descriptor,
    rtx_original_sequence,
    vp8_is_keyframe,
    vp8_keyframe_size,
)
from sfu.core.envelope import (
    EnvelopeError,
    Outgoing,
    decode_client_message,
    encode_delivery,
)
from sfu.core.rtcp import (
    Bye,
    Fir,
    Nack,
    Pli,
    ReceiverReport,
    Remb,
    ReportBlock,
    SenderReport,
    TwccFeedback,
    build_fir,
    build_nack,
    build_pli,
    build_remb,
    build_rr,
    build_sr,
    parse_rtcp,
)
from sfu.core.rtp import (
    URI_MID,
    URI_RID,
    URI_RRID,
    URI_TRANSPORT_CC,
    build_extensions,
    is_rtcp,
    parse_rtp,
    write_packet,
    write_rtx_packet,
)
from sfu.core.sdp_lines import split_sections
from sfu.core.sdp_reject import hide_unsupported, reject_in_answer, unsupported_mids
from sfu.core.send_history import SendHistory
from sfu.core.simulcast_sdp import (
    MAX_LAYERS,
    munge_answer,
    parse_simulcast_offers,
    rid_extension_ids,
)
from sfu.core.transport_cc_sdp import munge_answer_transport_cc, parse_transport_cc
from sfu.core.twcc import (
    MAX_PARSED_STATUSES,
    TwccReceiver,
    build_twcc,
    parse_twcc,
)
from sfu.core.vp8_munger import Vp8Munger
from sfu.rtc.adapter import parse_offer
from signaling.protocol import CLIENT_TYPES, ProtocolError, parse_message
from signaling.sdpfrag import (
    MAX_FRAGMENT_CANDIDATES,
    ice_credentials,
    parse_ice_fragment,
)

__all__ = ["DICTIONARIES", "SEEDS", "TARGETS", "Target"]

Target = Callable[[bytes], None]

_REFERENCE_RANGE_US = (1 << 24) * 64_000  # where a transport-cc reference time wraps
_SUPPORTED = {"audio": {"audio/opus"}, "video": {"video/vp8", "video/h264"}}  # as RTCRtpSender offers
_STAND_IN = {"audio": "opus/48000/2", "video": "VP8/90000"}  # sfu.rtc.adapter._STAND_IN


def _text(data: bytes) -> str:
    """The fuzzer's bytes as a str: UTF-8, each undecodable byte as a lone surrogate
    (U+DC80-U+DCFF). Total, keeps ASCII structure byte for byte, and reaches every
    kind of str a JSON string or an HTTP body decoded leniently can carry."""
    return data.decode("utf-8", "surrogateescape")


def _parts(data: bytes, n: int) -> list[bytes]:
    """``data`` cut at its first ``n - 1`` NUL bytes into ``n`` parts (missing ones empty)."""
    parts = data.split(b"\x00", n - 1)
    return parts + [b""] * (n - len(parts))


# --- 1. RTP -----------------------------------------------------------------------------


def fuzz_rtp(data: bytes) -> None:
    """:func:`~sfu.core.rtp.parse_rtp`, then the packet written again with
    :func:`~sfu.core.rtp.write_packet` (its own extensions, and a rewritten payload head)
    and :func:`~sfu.core.rtp.write_rtx_packet` must parse to the same fields and payload."""
    is_rtcp(data)
    try:
        packet = parse_rtp(data)
    except ValueError:
        return
    assert 12 <= packet.payload_offset <= packet.payload_end <= len(data)
    payload = packet.payload
    ext = build_extensions(list(packet.extensions.items()))
    out = parse_rtp(
        write_packet(packet, packet.ssrc, packet.payload_type, packet.sequence_number, packet.timestamp, packet.marker, ext)
    )
    assert (out.ssrc, out.payload_type, out.sequence_number, out.timestamp, out.marker, out.csrc) == (
        packet.ssrc, packet.payload_type, packet.sequence_number, packet.timestamp, packet.marker, packet.csrc
    )
    assert out.extensions == packet.extensions and out.payload == payload and out.padding == packet.padding
    head = bytes(b ^ 0x5A for b in payload[:4])  # a rewritten payload descriptor
    out = parse_rtp(write_packet(packet, 0x1234, 96, packet.sequence_number + 1, packet.timestamp + 90, True, b"", head))
    assert out.payload == head + payload[len(head) :] and not out.extensions
    osn = packet.sequence_number ^ 0x8000
    rtx = parse_rtp(write_rtx_packet(packet, 0x5678, 97, 7, packet.timestamp, osn, ext, head))
    assert rtx.payload == osn.to_bytes(2, "big") + head + payload[len(head) :] and not rtx.padding
    assert rtx.extensions == packet.extensions and rtx_original_sequence(rtx.payload) == osn


# --- 2. RTCP and transport-cc feedback --------------------------------------------------


def _twcc_round_trip(fb: TwccFeedback) -> None:
    """A parsed feedback built again with :func:`~sfu.core.twcc.build_twcc` (from its
    first received status on, up to 4096 statuses: the receiver's window) parses to the
    same statuses, arrivals equal modulo the reference time's range."""
    first = next((k for k, (_, arrival) in enumerate(fb.packets) if arrival is not None), None)
    if first is None or len(fb.packets) - first > 4096:
        return
    base = fb.packets[first][0]
    statuses = [(base + k, arrival) for k, (_, arrival) in enumerate(fb.packets[first:])]
    built = build_twcc(fb.sender_ssrc, fb.media_ssrc, fb.feedback_count, statuses)
    assert all(len(p) <= 1200 for p in built)
    got = []
    for p in built:
        (again,) = parse_rtcp(p)
        assert isinstance(again, TwccFeedback)
        got += again.packets
    assert len(got) == len(statuses)
    for (seq, a), (seq16, b) in zip(statuses, got):
        assert seq16 == seq & 0xFFFF and (a is None) == (b is None)
        assert a is None or (a - b) % _REFERENCE_RANGE_US == 0  # type: ignore[operator]


def fuzz_rtcp(data: bytes) -> None:
    """:func:`~sfu.core.rtcp.parse_rtcp` (SR, RR, BYE, NACK, PLI, FIR, REMB,
    transport-cc, padding, unknown types); what it returns is built again with the
    ``build_*`` functions and must parse to the same values."""
    try:
        packets = parse_rtcp(data)
    except ValueError:
        return
    for p in packets:
        if isinstance(p, SenderReport):
            assert parse_rtcp(build_sr(p)) == [p]
        elif isinstance(p, ReceiverReport):
            assert parse_rtcp(build_rr(p)) == [p]
        elif isinstance(p, Nack):
            (again,) = parse_rtcp(build_nack(p))
            assert isinstance(again, Nack) and (again.sender_ssrc, again.media_ssrc) == (p.sender_ssrc, p.media_ssrc)
            assert set(again.lost) == set(p.lost)
        elif isinstance(p, Pli):
            assert parse_rtcp(build_pli(p)) == [p]
        elif isinstance(p, Fir):
            assert parse_rtcp(build_fir(p)) == [p]
        elif isinstance(p, Remb):
            assert parse_rtcp(build_remb(p)) == [p]
        elif isinstance(p, TwccFeedback):
            _twcc_round_trip(p)
        elif isinstance(p, Bye):
            assert all(0 <= s <= 0xFFFFFFFF for s in p.sources)


def fuzz_twcc(data: bytes) -> None:
    """:func:`~sfu.core.twcc.parse_twcc` on a bare FCI: one status per packet status
    count, then the :func:`_twcc_round_trip`."""
    try:
        fb = parse_twcc(0x11111111, 0x22222222, data)
    except ValueError:
        return
    assert len(fb.packets) == min(int.from_bytes(data[2:4], "big"), MAX_PARSED_STATUSES)
    _twcc_round_trip(fb)


# --- 3. VP8 and H.264 payloads ----------------------------------------------------------


def fuzz_codecs(data: bytes) -> None:
    """The payload helpers of :mod:`sfu.core.codecs` on one RTP payload: VP8 descriptor,
    keyframe detection (VP8, H.264 single NAL/STAP-A/FU-A), VP8 key frame size, RTX OSN."""
    try:
        d = parse_vp8_descriptor(data)
    except ValueError:
        d = None
    else:
        assert 1 <= d.size <= len(data)
        assert d.picture_id is None or 0 <= d.picture_id < 1 << d.picture_id_bits
    key = vp8_is_keyframe(data)
    assert is_keyframe("video/VP8", data) is key and (d is not None or not key)
    size = vp8_keyframe_size(data)
    assert size is None or (d is not None and all(0 <= v < 1 << 14 for v in size))
    assert is_keyframe("video/H264", data) is h264_is_keyframe(data)
    assert is_keyframe("audio/opus", data) is False
    try:
        osn = rtx_original_sequence(data)
    except ValueError:
        assert len(data) < 2
    else:
        assert 0 <= osn <= 0xFFFF


def _check_rewrite(payload: bytes, head: bytes | None, offsets: tuple[int, int]) -> None:
    """A rewritten descriptor keeps its size and fields; PictureID and TL0PICIDX move by
    ``offsets``."""
    if head is None:
        return
    assert 0 < len(head) <= len(payload)
    try:
        before = parse_vp8_descriptor(payload)
    except ValueError:
        return
    after = parse_vp8_descriptor(head + payload[len(head) :])
    assert (after.size, after.start_of_partition, after.partition_index, after.picture_id_bits) == (
        before.size, before.start_of_partition, before.partition_index, before.picture_id_bits
    )
    assert (after.tid, after.layer_sync, after.key_idx) == (before.tid, before.layer_sync, before.key_idx)
    if before.picture_id is not None:
        assert after.picture_id == (before.picture_id + offsets[0]) % (1 << before.picture_id_bits)
    if before.tl0_pic_idx is not None:
        assert after.tl0_pic_idx == (before.tl0_pic_idx + offsets[1]) & 0xFF


def fuzz_vp8_munger(data: bytes) -> None:
    """A :class:`~sfu.core.vp8_munger.Vp8Munger` driven by ops: byte ``op`` then ``op >> 2``
    payload bytes; ``op & 3``: 0 ``on_switch``, 1-2 ``rewrite``, 3 ``rewrite_with`` the
    offsets in force at the last switch (a retransmission from an earlier epoch). At
    most 256 ops per input (more only slow the harness down: the munger's state is a
    few counters)."""
    munger = Vp8Munger()
    epoch = munger.offsets
    i = ops = 0
    while i < len(data) and ops < 256:
        ops += 1
        op = data[i]
        payload = data[i + 1 : i + 1 + (op >> 2)]
        i += 1 + (op >> 2)
        kind = op & 3
        if kind == 0:
            epoch = munger.offsets
            munger.on_switch()
        elif kind == 3:
            _check_rewrite(payload, Vp8Munger.rewrite_with(payload, epoch), epoch)
        else:
            head = munger.rewrite(payload)
            _check_rewrite(payload, head, munger.offsets)


# --- 4. SDP -----------------------------------------------------------------------------


def fuzz_sdp_offer(data: bytes) -> None:
    """:func:`sfu.rtc.adapter.parse_offer` (aiortc's SDP parser underneath); documented
    error ValueError."""
    try:
        media = parse_offer(_text(data))
    except ValueError:
        return
    for m in media:
        assert m.kind in ("audio", "video") and isinstance(m.mid, str) and m.mid


def fuzz_simulcast_sdp(data: bytes) -> None:
    """``offer NUL answer``: :func:`~sfu.core.simulcast_sdp.parse_simulcast_offers`,
    :func:`~sfu.core.simulcast_sdp.rid_extension_ids` and
    :func:`~sfu.core.simulcast_sdp.munge_answer`, documented never to raise."""
    offer_b, answer_b = _parts(data, 2)
    offer, answer = _text(offer_b), _text(answer_b)
    offers = parse_simulcast_offers(offer)
    for mid, o in offers.items():
        assert o.mid == mid and 1 <= len(o.rids) <= MAX_LAYERS
    out = munge_answer(answer, offers, rid_extension_ids(offer))
    assert len(split_sections(out)[1]) == len(split_sections(answer)[1])


def fuzz_transport_cc_sdp(data: bytes) -> None:
    """``offer NUL answer``: :func:`~sfu.core.transport_cc_sdp.parse_transport_cc`
    (documented never to raise) and
    :func:`~sfu.core.transport_cc_sdp.munge_answer_transport_cc`."""
    offer_b, answer_b = _parts(data, 2)
    offers = parse_transport_cc(_text(offer_b))
    assert all(1 <= o.extension_id <= 255 for o in offers.values())
    answer = _text(answer_b)
    out, accepted = munge_answer_transport_cc(answer, offers)
    assert set(accepted) <= set(offers)
    assert len(split_sections(out)[1]) == len(split_sections(answer)[1])


def fuzz_sdp_reject(data: bytes) -> None:
    """``offer NUL answer``: :func:`~sfu.core.sdp_reject.unsupported_mids`, then
    :func:`~sfu.core.sdp_reject.hide_unsupported` and
    :func:`~sfu.core.sdp_reject.reject_in_answer` with those mids, as the adapter calls
    them (pure text processing: nothing is documented to raise)."""
    offer_b, answer_b = _parts(data, 2)
    offer, answer = _text(offer_b), _text(answer_b)
    mids = unsupported_mids(offer, _SUPPORTED)
    hidden = hide_unsupported(offer, mids, _STAND_IN)
    assert unsupported_mids(hidden, _SUPPORTED) == []
    reject_in_answer(answer, offer, mids)


def fuzz_sdpfrag(data: bytes) -> None:
    """:func:`signaling.sdpfrag.parse_ice_fragment` (documented error ValueError) and
    :func:`signaling.sdpfrag.ice_credentials`."""
    text = _text(data)
    try:
        fragment = parse_ice_fragment(text)
    except ValueError:
        pass
    else:
        assert len(fragment.candidates) <= MAX_FRAGMENT_CANDIDATES
    ice_credentials(text)


# --- 5. DataChannel envelopes ------------------------------------------------------------


def fuzz_envelope(data: bytes) -> None:
    """:func:`~sfu.core.envelope.decode_client_message` on a text (first byte odd) or
    binary message (documented error EnvelopeError); a decoded message delivered with
    :func:`~sfu.core.envelope.encode_delivery` decodes to the same data and topic."""
    if not data:
        return
    message: str | bytes = _text(data[1:]) if data[0] & 1 else data[1:]
    try:
        out = decode_client_message(message)
    except EnvelopeError:
        return
    assert isinstance(out.data, str if isinstance(message, str) else bytes)
    assert out.to is None or all(isinstance(t, str) for t in out.to)
    back = decode_client_message(encode_delivery("participant-0123456789abcdef", out))
    assert back == Outgoing(out.data, None, out.topic)


# --- 6. Signaling messages ---------------------------------------------------------------


def fuzz_protocol(data: bytes) -> None:
    """:func:`signaling.protocol.parse_message` on a WebSocket text frame (documented
    error ProtocolError); an accepted message has the field types the session handlers
    (signaling/session.py, the adapter's ``add_ice_candidate``) rely on."""
    try:
        msg = parse_message(_text(data))
    except ProtocolError:
        return
    kind = msg["type"]
    assert kind in CLIENT_TYPES
    if kind == "join":  # room and name may be absent (a token names them), never of another type
        assert msg.get("room") is None or isinstance(msg["room"], str)
        assert msg.get("name") is None or (isinstance(msg["name"], str) and msg["name"])
        assert msg.get("token") is None or (isinstance(msg["token"], str) and msg["token"].isascii())
    elif kind == "offer":
        assert isinstance(msg["sdp"], str) and isinstance(msg["tracks"], dict)
        for spec in msg["tracks"].values():
            assert isinstance(spec.get("subscribe", ""), str) and isinstance(spec.get("publish", {}), dict)
    elif kind == "candidate":
        candidate = msg.get("candidate")
        if candidate:
            assert isinstance(candidate, dict)
            line = candidate.get("candidate")
            assert not line or isinstance(line, str)
            assert candidate.get("sdpMid") is None or isinstance(candidate["sdpMid"], str)
            index = candidate.get("sdpMLineIndex")
            assert index is None or (isinstance(index, int) and not isinstance(index, bool))
    elif kind in ("mute", "unpublish", "track_settings"):
        assert isinstance(msg["trackId"], str)


# --- 7. Transport-cc receive side and send history -----------------------------------------


def fuzz_twcc_receiver(data: bytes) -> None:
    """A :class:`~sfu.core.twcc.TwccReceiver` fed fuzzed arrivals.

    Bytes 0-1: window (``1 << (b0 % 11)``, up to 1,024: the server's, within what
    parse_twcc reads of one feedback) and packet size limit (``24 + 4 * b1``);
    then 4-byte ops ``op seq_hi seq_lo step``: ``op & 3`` 3 builds the feedback, else
    ``on_packet(seq, arrival)`` with the arrival moved by ``step`` ×0.25 ms forward
    (0), ±128 × 37 ms (1, backwards too) or × 2**20 ms (2, across the reference wrap).
    Each feedback packet fits the limit, parses, and reports only sequence numbers that
    arrived, each with one of its arrival times (250 µs, modulo the reference range).
    """
    if len(data) < 2:
        return
    rx = TwccReceiver(0x5EED, 1 << (data[0] % 11), max_packet_bytes=24 + 4 * data[1])
    arrival = 1_000_000.0
    seen: dict[int, set[int]] = {}

    def check() -> None:
        statuses = []
        for packet in rx.feedback(0xFEED):
            assert len(packet) <= rx.max_packet_bytes
            (fb,) = parse_rtcp(packet)
            assert isinstance(fb, TwccFeedback)
            statuses += fb.packets
        for k, (seq16, arrival_us) in enumerate(statuses):
            assert seq16 == (statuses[0][0] + k) & 0xFFFF
            if arrival_us is not None:
                ticks = seen.get(seq16, ())
                assert any((t * 250 - arrival_us) % _REFERENCE_RANGE_US == 0 for t in ticks)

    for i in range(2, len(data) - 3, 4):
        op, hi, lo, step = data[i : i + 4]
        kind = op & 3
        if kind == 3:
            check()
            continue
        arrival += (step * 0.25, (step - 128) * 37.0, step * float(1 << 20))[kind]
        seq16 = (hi << 8) | lo
        rx.on_packet(seq16, arrival)
        seen.setdefault(seq16, set()).add(int((arrival * 1000.0 + 125) // 250))
    check()


def fuzz_send_history(data: bytes) -> None:
    """A :class:`~sfu.core.send_history.SendHistory` matching fuzzed transport feedback.

    Byte 0: capacity ``1 << (b0 % 16)``; bytes 1-3: packets already numbered (size 0,
    never reported: set directly, the state that many ``next`` calls leave); byte 4:
    packets sent now; then FCIs, each a 16-bit length and the bytes, parsed with
    :func:`~sfu.core.twcc.parse_twcc` and given to ``on_feedback``. Checks the
    documented contract: results in sequence order, among the last ``capacity`` sent,
    each received at most once and lost only before that, bytes in flight never < 0.
    """
    if len(data) < 5:
        return
    history = SendHistory(1 << (data[0] % 16))
    history._counts[0] = int.from_bytes(data[1:4], "big")
    for k in range(data[4]):
        history.set_size(history.next(float(k), k % 3 or None), 100 + k)
    newest = history.newest_sequence
    received: set[int] = set()
    reported: set[int] = set()
    i = 5
    while i + 2 <= len(data):
        n = int.from_bytes(data[i : i + 2], "big")
        fci = data[i + 2 : i + 2 + n]
        i += 2 + n
        try:
            fb = parse_twcc(1, 2, fci)
        except ValueError:
            continue
        results = history.on_feedback(fb)
        sequences = [r.sequence for r in results]
        assert sequences == sorted(set(sequences))
        for r in results:
            assert newest is not None and newest - history.capacity < r.sequence <= newest
            if r.arrival_ms is None:
                assert r.sequence not in reported
            else:
                assert r.sequence not in received
                received.add(r.sequence)
            reported.add(r.sequence)
        assert history.in_flight_bytes() >= 0


TARGETS: dict[str, Target] = {
    "rtp": fuzz_rtp,
    "rtcp": fuzz_rtcp,
    "twcc": fuzz_twcc,
    "codecs": fuzz_codecs,
    "vp8_munger": fuzz_vp8_munger,
    "sdp_offer": fuzz_sdp_offer,
    "simulcast_sdp": fuzz_simulcast_sdp,
    "transport_cc_sdp": fuzz_transport_cc_sdp,
    "sdp_reject": fuzz_sdp_reject,
    "sdpfrag": fuzz_sdpfrag,
    "envelope": fuzz_envelope,
    "protocol": fuzz_protocol,
    "twcc_receiver": fuzz_twcc_receiver,
    "send_history": fuzz_send_history,
}
"""Every target by name (the name is the directory under ``tests/fuzz/regressions/``)."""


# --- seeds and dictionaries --------------------------------------------------------------


def _rtp_packet(seq: int, payload: bytes, ext: list[tuple[int, bytes]] | None = None, csrc: tuple[int, ...] = (), padding: int = 0) -> bytes:
    block = build_extensions(ext or [])
    b0 = 0x80 | (0x20 if padding else 0) | (0x10 if block else 0) | len(csrc)
    header = struct.pack("!BBHII", b0, 0x80 | 96, seq, 90_000 + seq, 0xCAFE) + b"".join(struct.pack("!I", c) for c in csrc)
    pad = bytes(padding - 1) + bytes([padding]) if padding else b""
    return header + block + payload + pad


# VP8 descriptor with X, S, 15-bit PictureID, TL0PICIDX, TID/KEYIDX; then a key frame
# header (frame tag, start code 9d 01 2a, 640x480).
_VP8_KEY = bytes([0x90, 0xF0, 0x81, 0x23, 0x05, 0x61, 0x50, 0x02, 0x00, 0x9D, 0x01, 0x2A, 0x80, 0x02, 0xE0, 0x01]) + bytes(8)
_VP8_DELTA = bytes([0x90, 0xC0, 0x12, 0x07, 0x01, 0x00, 0x00]) + bytes(8)
_H264 = [
    b"\x67\x42\xc0\x1f\x8c\x8d\x40",  # SPS
    b"\x65\x88\x84\x00\x33",  # IDR slice
    b"\x78\x00\x04\x67\x42\xc0\x1f\x00\x02\x68\xce\x00\x03\x65\x88\x84",  # STAP-A: SPS, PPS, IDR
    b"\x7c\x85\x88\x84\x00",  # FU-A start of an IDR
    b"\x41\x9a\x02",  # non-IDR slice
]


def _rtp_seeds() -> list[bytes]:
    return [
        _rtp_packet(1, _VP8_KEY),
        _rtp_packet(2, _VP8_DELTA, [(1, b"0"), (3, b"\x00\x01"), (10, b"h")], padding=4),
        _rtp_packet(3, b"\x01\x02", [(1, b"x" * 20), (200, b"")], csrc=(7, 8)),
        _rtp_packet(4, b""),
    ]


def _rtcp_seeds() -> list[bytes]:
    block = ReportBlock(0xCAFE, 12, -3, 70_000, 40, 0x12345678, 6553)
    twcc = build_twcc(1, 0xCAFE, 3, [(100, 1_000_000), (101, None), (102, 1_020_000), (103, 1_019_000)])
    lost = build_twcc(1, 0xCAFE, 4, [(0, 64_000)] + [(s, None) for s in range(1, 9000)])
    return [
        build_sr(SenderReport(1, 0xE2000000_80000000, 90_000, 10, 12_000, [block])),
        build_rr(ReceiverReport(1, [block, block])) + b"\x81\xca\x00\x02\x00\x00\x00\x01\x01\x01a\x00",  # RR + SDES
        build_nack(Nack(1, 0xCAFE, [65534, 65535, 0, 5, 100])),
        build_pli(Pli(1, 0xCAFE)) + build_fir(Fir(1, [(0xCAFE, 7)])),
        build_remb(Remb(1, 1_500_000, [0xCAFE, 0xBEEF])),
        b"\x81\xcb\x00\x01\x00\x00\xca\xfe",  # BYE
        b"\xa0\xc9\x00\x02\x00\x00\x00\x01\x00\x00\x00\x04",  # RR with padding
        twcc[0],
        lost[0],
    ]


def _twcc_seeds() -> list[bytes]:
    packets = [(50_000 + k, 5_000_000 + 3000 * k if k % 5 else None) for k in range(40)]
    packets[0] = (50_000, 5_000_000)
    out = [p[12:] for p in build_twcc(1, 2, 0, packets)]
    out += [p[12:] for p in build_twcc(1, 2, 0, [(0, 1000), (1, 9_000_000), (2, None), (3, 8_000_000)])]
    return out


def _munger_seeds() -> list[bytes]:
    a = bytes([0x90, 0xC0, 0x81, 0x23, 0x05, 0x00, 0x00, 0x00])  # 15-bit PictureID, TL0PICIDX
    b = bytes([0x90, 0xC0, 0x12, 0x07, 0x00, 0x00, 0x00, 0x00])  # 7-bit PictureID
    op = (8 << 2) | 1
    return [bytes([op]) + a + bytes([0]) + bytes([op]) + b + bytes([(8 << 2) | 3]) + a, bytes([op]) + b * 1]


_OFFER = "\r\n".join(
    [
        "v=0",
        "o=- 4611731400430051336 2 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE 0 1 2 3",
        "a=extmap-allow-mixed",
        "a=msid-semantic: WMS stream",
        "m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126",
        "c=IN IP4 0.0.0.0",
        "a=rtcp:9 IN IP4 0.0.0.0",
        "a=candidate:1 1 udp 2122260223 192.0.2.1 54321 typ host generation 0",
        "a=ice-ufrag:abcd",
        "a=ice-pwd:0123456789abcdefghijklmn",
        "a=ice-options:trickle",
        "a=fingerprint:sha-256 AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89",
        "a=setup:actpass",
        "a=mid:0",
        f"a=extmap:1 {URI_MID}",
        f"a=extmap:3 {URI_TRANSPORT_CC}",
        "a=sendonly",
        "a=msid:stream audio0",
        "a=rtcp-mux",
        "a=rtpmap:111 opus/48000/2",
        "a=rtcp-fb:111 transport-cc",
        "a=fmtp:111 minptime=10;useinbandfec=1",
        "a=rtpmap:63 red/48000/2",
        "a=rtpmap:126 telephone-event/8000",
        "a=ssrc:1001 cname:abc",
        "m=video 9 UDP/TLS/RTP/SAVPF 96 97 102 103",
        "c=IN IP4 0.0.0.0",
        "a=ice-ufrag:abcd",
        "a=ice-pwd:0123456789abcdefghijklmn",
        "a=setup:actpass",
        "a=mid:1",
        f"a=extmap:1 {URI_MID}",
        f"a=extmap:3/sendrecv {URI_TRANSPORT_CC}",
        f"a=extmap:10 {URI_RID}",
        f"a=extmap:11 {URI_RRID}",
        "a=sendonly",
        "a=rtcp-mux",
        "a=rtcp-rsize",
        "a=rtpmap:96 VP8/90000",
        "a=rtcp-fb:96 goog-remb",
        "a=rtcp-fb:96 transport-cc",
        "a=rtcp-fb:96 ccm fir",
        "a=rtcp-fb:96 nack",
        "a=rtcp-fb:96 nack pli",
        "a=rtpmap:97 rtx/90000",
        "a=fmtp:97 apt=96",
        "a=rtpmap:102 H264/90000",
        "a=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f",
        "a=rtpmap:103 rtx/90000",
        "a=fmtp:103 apt=102",
        "a=rid:q send",
        "a=rid:h send pt=96;max-width=640",
        "a=rid:f send",
        "a=simulcast:send q;~h,x;f",
        "a=ssrc-group:FID 2001 2002",
        "a=ssrc:2001 cname:abc",
        "a=ssrc:2002 cname:abc",
        "m=video 9 UDP/TLS/RTP/SAVPF 45 46",
        "c=IN IP4 0.0.0.0",
        "a=mid:2",
        "a=recvonly",
        "a=rtcp-mux",
        "a=rtpmap:45 AV1/90000",
        "a=rtpmap:46 rtx/90000",
        "a=fmtp:46 apt=45",
        "a=rtcp-fb:* transport-cc",
        f"a=extmap:5 {URI_TRANSPORT_CC}",
        "m=application 9 UDP/DTLS/SCTP webrtc-datachannel",
        "c=IN IP4 0.0.0.0",
        "a=mid:3",
        "a=sctp-port:5000",
        "a=max-message-size:262144",
        "",
    ]
)
_ANSWER = "\r\n".join(
    [
        "v=0",
        "o=- 3 4 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE 0 1 2 3",
        "m=audio 9 UDP/TLS/RTP/SAVPF 111",
        "a=mid:0",
        "a=recvonly",
        "a=rtpmap:111 opus/48000/2",
        "m=video 9 UDP/TLS/RTP/SAVPF 96 97",
        "a=mid:1",
        "a=recvonly",
        f"a=extmap:1 {URI_MID}",
        "a=rtpmap:96 VP8/90000",
        "a=rtpmap:97 rtx/90000",
        "m=video 9 UDP/TLS/RTP/SAVPF 96",
        "a=mid:2",
        "a=inactive",
        "m=application 9 UDP/DTLS/SCTP webrtc-datachannel",
        "a=mid:3",
        "",
    ]
)


def _sdp_pair() -> list[bytes]:
    return [_OFFER.encode() + b"\x00" + _ANSWER.encode(), _OFFER.replace("\r\n", "\n").encode()]


def _sdpfrag_seeds() -> list[bytes]:
    return [
        b"a=ice-ufrag:EsAw\r\na=ice-pwd:P2uYro0UCOQ4zxjKXaWCBui1\r\nm=audio 9 RTP/AVP 0\r\na=mid:0\r\n"
        b"a=candidate:1387637174 1 udp 2122260223 192.0.2.1 61764 typ host generation 0 ufrag EsAw\r\n"
        b"a=end-of-candidates\r\n",
    ]


def _envelope_seeds() -> list[bytes]:
    header = b'{"to":["a","b"],"topic":"chat"}'
    return [
        b"\x01" + json.dumps({"data": "hello \u00e9", "to": ["p1"], "topic": "t"}).encode(),
        b"\x01" + b'{"data":"x"}',
        b"\x00" + struct.pack("!H", len(header)) + header + b"\x00\x01\x02",
        b"\x00\x00\x00payload",
    ]


def _protocol_seeds() -> list[bytes]:
    messages = [
        {"type": "join", "room": "r1", "name": " Alice "},
        {"type": "offer", "sdp": "v=0\r\n", "tracks": {"0": {"publish": {"source": "camera", "muted": False}}, "1": {"subscribe": "t1"}}},
        {"type": "candidate", "candidate": {"candidate": "candidate:1 1 udp 2122260223 127.0.0.1 54321 typ host", "sdpMid": "0", "sdpMLineIndex": 0}},
        {"type": "candidate", "candidate": None},
        {"type": "mute", "trackId": "t1", "muted": True},
        {"type": "unpublish", "trackId": "t1"},
        {"type": "track_settings", "trackId": "t1", "maxHeight": 360, "maxWidth": None, "paused": False},
        {"type": "leave"},
        {"type": "ping"},
    ]
    return [json.dumps(m).encode() for m in messages]


def _twcc_receiver_seeds() -> list[bytes]:
    ops = b"".join(bytes([0, 0, s, 4]) for s in range(30)) + bytes([3, 0, 0, 0])
    ops += b"".join(bytes([1, 0, s, 200]) for s in (40, 35, 36, 90)) + bytes([2, 0xFF, 0xF0, 3, 3, 0, 0, 0])
    return [bytes([12, 10]) + ops, bytes([3, 0]) + ops]


def _send_history_seeds() -> list[bytes]:
    fcis = [p[12:] for p in build_twcc(1, 2, 0, [(60, 1000), (61, None), (62, 9000), (63, 12_000)])]
    fcis += [p[12:] for p in build_twcc(1, 2, 0, [(61, 5000), (62, None)])]
    return [bytes([13, 0, 0, 0, 64]) + b"".join(len(f).to_bytes(2, "big") + f for f in fcis)]


SEEDS: dict[str, Callable[[], list[bytes]]] = {
    "rtp": _rtp_seeds,
    "rtcp": _rtcp_seeds,
    "twcc": _twcc_seeds,
    "codecs": lambda: [_VP8_KEY, _VP8_DELTA, *_H264, b"\x12\x34"],
    "vp8_munger": _munger_seeds,
    "sdp_offer": lambda: [_OFFER.encode()],
    "simulcast_sdp": _sdp_pair,
    "transport_cc_sdp": _sdp_pair,
    "sdp_reject": _sdp_pair,
    "sdpfrag": _sdpfrag_seeds,
    "envelope": _envelope_seeds,
    "protocol": _protocol_seeds,
    "twcc_receiver": _twcc_receiver_seeds,
    "send_history": _send_history_seeds,
}
"""Valid inputs for each target (the fuzzer's starting corpus)."""

_SDP_TOKENS = [
    b"\r\n", b"m=audio ", b"m=video ", b"m=application ", b" 9 UDP/TLS/RTP/SAVPF ", b" 0 ", b"a=mid:",
    b"a=rid:", b" send", b" recv", b"a=simulcast:", b"send ", b"recv ", b";", b",", b"~", b"a=extmap:",
    b"/sendrecv", URI_RID.encode(), URI_RRID.encode(), URI_TRANSPORT_CC.encode(), URI_MID.encode(),
    b"a=rtcp-fb:", b" transport-cc", b"*", b"a=rtpmap:", b" VP8/90000", b" opus/48000/2", b" rtx/90000",
    b" AV1/90000", b"a=fmtp:", b"apt=", b"a=group:BUNDLE", b"a=recvonly", b"a=sendonly", b"a=inactive",
    b"a=sendrecv", b"a=ssrc:", b"a=ssrc-group:FID ", b"c=IN IP4 0.0.0.0", b"a=ice-ufrag:", b"a=ice-pwd:",
    b"a=candidate:", b"a=end-of-candidates", b"a=fingerprint:sha-256 ", b"a=setup:", b"v=0", b"\x00",
]
_JSON_TOKENS = [
    b'"type"', b'"join"', b'"offer"', b'"candidate"', b'"mute"', b'"unpublish"', b'"track_settings"',
    b'"leave"', b'"ping"', b'"room"', b'"name"', b'"sdp"', b'"tracks"', b'"publish"', b'"subscribe"',
    b'"source"', b'"camera"', b'"muted"', b'"trackId"', b'"maxHeight"', b'"maxWidth"', b'"paused"',
    b'"sdpMid"', b'"sdpMLineIndex"', b'"data"', b'"to"', b'"topic"', b'"from"', b"true", b"null",
    b"1e999", b"-0", b'"\\ud800"', b'"\\u0000"', b"[[[[", b"{", b"}", b":",
]
DICTIONARIES: dict[str, list[bytes]] = {
    "sdp_offer": _SDP_TOKENS,
    "simulcast_sdp": _SDP_TOKENS,
    "transport_cc_sdp": _SDP_TOKENS,
    "sdp_reject": _SDP_TOKENS,
    "sdpfrag": _SDP_TOKENS,
    "envelope": _JSON_TOKENS,
    "protocol": _JSON_TOKENS,
}
"""libFuzzer dictionary tokens of the text targets."""
