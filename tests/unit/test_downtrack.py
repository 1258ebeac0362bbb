"""DownTrack rewriting with synthetic packets: subscriber's SSRC/PT/extensions, keyframe
gating, NACK answered by RTX from the UpTrack cache, SR translation."""

from sfu.core.rtcp import SenderReport, parse_rtcp
from sfu.core.rtp import URI_ABS_SEND_TIME, URI_AUDIO_LEVEL, URI_MID, parse_rtp
from sfu.downtrack import DownTrack
from sfu.rtc.adapter import CodecInfo, MediaInfo
from sfu.uptrack import UpTrack

from .synth import rtp, vp8_payload


def make(kind="video", rtx=True, pub_ext=None):
    plis = []
    codec = CodecInfo(96, "video/VP8", 90000, rtx_payload_type=97) if kind == "video" else CodecInfo(111, "audio/opus", 48000, 2)
    up = UpTrack("TR_1", "PA_pub", kind, "camera", "0", codec, pub_ext or {}, plis.append)
    up.bind_ssrc(0xAAAA)
    out_codec = CodecInfo(120, codec.mime_type, codec.clock_rate, rtx_payload_type=121 if rtx else None)
    ext = {URI_MID: 4, URI_ABS_SEND_TIME: 2} if kind == "video" else {URI_MID: 4, URI_AUDIO_LEVEL: 5}
    media = MediaInfo("7", kind, "sendonly", [out_codec], ext, ssrc=0xBBBB, rtx_ssrc=0xCCCC if rtx else None)
    sent, rtcp = [], []
    dt = DownTrack(up, "PA_sub", media, lambda d: sent.append(d) or True, lambda d: rtcp.append(d) or True)
    up.downtracks.append(dt)
    return up, dt, sent, rtcp, plis


def test_video_waits_for_keyframe_requests_one_and_rewrites_header():
    up, dt, sent, _, plis = make()
    up.on_rtp(parse_rtp(rtp(10, 0, ssrc=0xAAAA, payload=vp8_payload(False), ext=[(1, b"0")])), 0)
    up.on_rtp(parse_rtp(rtp(11, 0, ssrc=0xAAAA, payload=vp8_payload(False))), 10)
    assert sent == [] and plis == [0xAAAA]  # one PLI for two waiting packets
    up.on_rtp(parse_rtp(rtp(12, 3000, ssrc=0xAAAA, payload=vp8_payload(True), marker=True, ext=[(1, b"0")])), 20)
    assert len(sent) == 1
    out = parse_rtp(sent[0])
    assert (out.ssrc, out.payload_type, out.marker) == (0xBBBB, 120, True)
    assert out.extensions[4] == b"7"  # the subscriber's MID under its id
    assert len(out.extensions[2]) == 3  # abs-send-time
    assert 1 not in out.extensions or out.extensions.get(1) != b"0"
    assert out.payload == vp8_payload(True)


def test_nack_is_answered_with_rtx_from_the_cache():
    up, dt, sent, _, _ = make()
    for seq in range(100, 105):
        up.on_rtp(parse_rtp(rtp(seq, 0, ssrc=0xAAAA, payload=vp8_payload(seq == 100, body=bytes([seq])))), seq)
    first = parse_rtp(sent[2])
    assert dt.on_nack([first.sequence_number, (first.sequence_number + 1000) & 0xFFFF], 200) == 1
    rtx = parse_rtp(sent[-1])
    assert (rtx.ssrc, rtx.payload_type) == (0xCCCC, 121)
    assert rtx.payload[:2] == first.sequence_number.to_bytes(2, "big")
    assert rtx.payload[2:] == first.payload
    assert rtx.timestamp == first.timestamp


def test_nack_without_rtx_resends_the_same_packet():
    up, dt, sent, _, _ = make(rtx=False)
    up.on_rtp(parse_rtp(rtp(1, 0, ssrc=0xAAAA, payload=vp8_payload(True))), 0)
    assert dt.on_nack([parse_rtp(sent[0]).sequence_number], 10) == 1
    again, first = parse_rtp(sent[1]), parse_rtp(sent[0])
    assert (again.ssrc, again.sequence_number, again.timestamp, again.payload) == (
        first.ssrc, first.sequence_number, first.timestamp, first.payload
    )


def test_audio_forwards_at_once_with_audio_level_passthrough():
    up, dt, sent, _, _ = make(kind="audio", pub_ext={URI_AUDIO_LEVEL: 1})
    up.on_rtp(parse_rtp(rtp(5, 960, ssrc=0xAAAA, pt=111, payload=b"opus", ext=[(1, b"\x85")])), 0)
    out = parse_rtp(sent[0])
    assert out.extensions == {4: b"7", 5: b"\x85"}


def test_duplicate_and_padding_are_not_forwarded():
    up, dt, sent, _, _ = make()
    key = rtp(1, 0, ssrc=0xAAAA, payload=vp8_payload(True))
    up.on_rtp(parse_rtp(key), 0)
    up.on_rtp(parse_rtp(key), 1)  # duplicate (e.g. a retransmission we already had)
    up.on_rtp(parse_rtp(rtp(2, 0, ssrc=0xAAAA, payload=b"", padding=100)), 2)
    up.on_rtp(parse_rtp(rtp(3, 0, ssrc=0xAAAA, payload=vp8_payload(False))), 3)
    seqs = [parse_rtp(d).sequence_number for d in sent]
    assert len(seqs) == 2 and (seqs[1] - seqs[0]) & 0xFFFF == 1  # no gap for the padding


def test_sender_report_is_translated_with_the_timestamp_offset():
    up, dt, sent, rtcp, _ = make()
    up.on_rtp(parse_rtp(rtp(1, 90000, ssrc=0xAAAA, payload=vp8_payload(True))), 0)
    out_ts = parse_rtp(sent[0]).timestamp
    up.on_sender_report(SenderReport(0xAAAA, ntp_timestamp=123 << 32, rtp_timestamp=90000 + 450, packet_count=1, octet_count=1), 5)
    (sr,) = parse_rtcp(rtcp[0])
    assert sr.ssrc == 0xBBBB and sr.ntp_timestamp == 123 << 32
    assert sr.rtp_timestamp == (out_ts + 450) & 0xFFFFFFFF
    assert sr.packet_count == 1


def test_nothing_is_forwarded_before_the_subscriber_is_connected():
    up, _, _, _, _ = make()
    up.downtracks.clear()
    state = {"connected": False}
    sent = []
    media = MediaInfo("7", "video", "sendonly", [CodecInfo(120, "video/VP8", 90000)], {}, ssrc=1, rtx_ssrc=None)
    dt = DownTrack(up, "PA_sub", media, lambda d: sent.append(d) or True, lambda d: True, lambda: state["connected"])
    up.downtracks.append(dt)
    up.on_rtp(parse_rtp(rtp(1, 0, ssrc=0xAAAA, payload=vp8_payload(True))), 0)  # keyframe lost to nobody
    assert sent == [] and not dt.forwarder.started
    state["connected"] = True
    up.on_rtp(parse_rtp(rtp(2, 0, ssrc=0xAAAA, payload=vp8_payload(False))), 10)
    up.on_rtp(parse_rtp(rtp(3, 0, ssrc=0xAAAA, payload=vp8_payload(True))), 20)
    assert len(sent) == 1 and parse_rtp(sent[0]).payload == vp8_payload(True)


def test_transport_cc_stamps_every_packet_media_rtx_and_padding():
    """With transport-cc negotiated every packet sent carries the next transport-wide
    sequence number (draft-holmer §2) instead of abs-send-time, and the send history
    knows its size and, for padding, its probe cluster; two DownTracks of one
    subscriber share one sequence space."""
    from sfu.core.rtp import URI_TRANSPORT_CC
    from sfu.core.send_history import SendHistory
    from sfu.core.twcc import TwccFeedback

    history = SendHistory()
    codec = CodecInfo(96, "video/VP8", 90000, rtx_payload_type=97)
    ups, dts, sent = [], [], []
    for i, ssrc in enumerate((0xAAAA, 0xDDDD)):
        up = UpTrack(f"TR_{i}", "PA_pub", "video", "camera", str(i), codec, {}, lambda s: None)
        up.bind_ssrc(ssrc)
        out_codec = CodecInfo(120, "video/VP8", 90000, rtx_payload_type=121)
        media = MediaInfo(str(7 + i), "video", "sendonly", [out_codec], {URI_MID: 4, URI_ABS_SEND_TIME: 2, URI_TRANSPORT_CC: 3},
                          ssrc=0xBB00 + i, rtx_ssrc=0xCC00 + i)
        dt = DownTrack(up, "PA_sub", media, lambda d: sent.append(d) or True, lambda d: True, transport_cc=history)
        up.downtracks.append(dt)
        ups.append(up)
        dts.append(dt)
    assert all(dt.transport_cc for dt in dts)
    for seq in range(10, 14):
        for up, ssrc in zip(ups, (0xAAAA, 0xDDDD)):
            up.on_rtp(parse_rtp(rtp(seq, seq * 3000, ssrc=ssrc, payload=vp8_payload(seq == 10))), seq)
    first = parse_rtp(sent[0])
    assert dts[0].on_nack([first.sequence_number], 50) == 1
    before_padding = len(sent)
    assert dts[1].send_padding(500, 60, cluster=7) > 0
    packets = [parse_rtp(d) for d in sent]
    numbers = [int.from_bytes(p.extensions[3], "big") for p in packets]
    assert numbers == list(range(numbers[0], numbers[0] + len(packets)))  # one space, in send order
    assert all(2 not in p.extensions for p in packets)  # no abs-send-time with transport-cc
    assert all(p.extensions[4] in (b"7", b"8") for p in packets)
    feedback = TwccFeedback(1, 2, numbers[0] & 0xFFFF, 0, 0, [(n & 0xFFFF, 1000 * i) for i, n in enumerate(numbers)])
    results = history.on_feedback(feedback)
    assert [r.size for r in results] == [len(d) for d in sent]
    assert [r.cluster for r in results] == [None] * before_padding + [7] * (len(sent) - before_padding)
    assert results[before_padding - 1].send_ms == 50 and results[-1].send_ms == 60


def test_a_stray_packet_far_ahead_does_not_freeze_the_track_and_a_restart_continues():
    """One packet ~30,000 sequence numbers ahead is dropped (RFC 3550 §A.1 probation)
    and the normal packets after it are forwarded (they were all dropped as too old
    before); a real restart of the publisher's numbering (two in sequence) goes on
    at its next keyframe with the subscriber's numbering continuing by one."""
    from sfu.metrics import COUNTERS

    up, dt, sent, _, plis = make()
    for seq in range(100, 106):
        up.on_rtp(parse_rtp(rtp(seq, seq * 3000, ssrc=0xAAAA, payload=vp8_payload(seq == 100))), seq)
    assert len(sent) == 6
    before = COUNTERS.dropped["sequence_jump"]
    up.on_rtp(parse_rtp(rtp(30_100, 0, ssrc=0xAAAA, payload=vp8_payload(False))), 106)
    for seq in range(106, 110):
        up.on_rtp(parse_rtp(rtp(seq, seq * 3000, ssrc=0xAAAA, payload=vp8_payload(False))), seq)
    assert COUNTERS.dropped["sequence_jump"] == before + 1
    assert len(sent) == 10  # the track goes on
    last = parse_rtp(sent[-1]).sequence_number
    # The publisher restarts at 50,000: a delta frame, then a keyframe.
    up.on_rtp(parse_rtp(rtp(50_000, 7, ssrc=0xAAAA, payload=vp8_payload(False))), 200)
    up.on_rtp(parse_rtp(rtp(50_001, 8, ssrc=0xAAAA, payload=vp8_payload(False))), 201)
    assert up.layers[0].restarts == 1 and len(sent) == 10  # waits for the keyframe
    assert plis, "no keyframe request after the restart"
    up.on_rtp(parse_rtp(rtp(50_002, 3009, ssrc=0xAAAA, payload=vp8_payload(True))), 202)
    up.on_rtp(parse_rtp(rtp(50_003, 6009, ssrc=0xAAAA, payload=vp8_payload(False))), 203)
    assert [parse_rtp(d).sequence_number for d in sent[10:]] == [(last + 1) & 0xFFFF, (last + 2) & 0xFFFF]


def test_nack_work_is_bounded():
    """A NACK naming every sequence number resends at most 128 of them; the same
    packet NACKed again within a round trip is not resent again; over a second at most
    ~400 retransmissions go out however many NACKs come (RFC 4585 §6.2.1 feedback from a
    hostile or broken subscriber costs the server a bounded amount)."""
    from sfu.metrics import COUNTERS

    up, dt, sent, _, _ = make()
    for seq in range(1000, 1500):
        up.on_rtp(parse_rtp(rtp(seq, seq * 3000, ssrc=0xAAAA, payload=vp8_payload(seq == 1000))), 0)
    first = parse_rtp(sent[0]).sequence_number
    outs = [(first + i) & 0xFFFF for i in range(500)]
    refused = COUNTERS.nack_refused
    assert dt.on_nack(outs * 3, 10.0) == 128  # one NACK: at most 128 looked at
    assert COUNTERS.nack_refused > refused
    assert dt.on_nack(outs[:5], 20.0) == 0  # resent 10 ms ago: within a round trip
    assert dt.on_nack(outs[:5], 200.0) == 5  # a round trip later: again
    total = 0
    for i in range(100):  # 100 NACKs of 128 fresh numbers in one second
        total += dt.on_nack(outs[(i * 7) % 372 : (i * 7) % 372 + 128], 300.0 + i * 10)
    assert total <= 200 + 400 + 10, total
