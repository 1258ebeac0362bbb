"""A reconnected publisher's stream replaces the old one under the same DownTrack
(DownTrack.rebind), with synthetic packets: the subscriber's numbering goes on without
a jump, timestamps advance by the time away, the new source starts at a keyframe that
is asked for at once, and NACKs for the old source's packets are never answered from
the new one's cache."""

import pytest

from sfu.core.rtp import URI_AUDIO_LEVEL, parse_rtp
from sfu.rtc.adapter import CodecInfo
from sfu.uptrack import UpTrack

from .synth import rtp, vp8_payload
from .test_downtrack import make

VP8 = CodecInfo(98, "video/VP8", 90000, rtx_payload_type=99)


def new_uptrack(kind="video", codec=VP8, ssrc=0xDDDD, ext=None):
    plis = []
    up = UpTrack("TR_1", "PA_pub", kind, "camera", "3", codec, ext or {}, plis.append)
    up.bind_ssrc(ssrc)
    return up, plis


def test_rebound_video_continues_numbering_and_timestamps_from_a_keyframe():
    old, dt, sent, _, _ = make()
    for i, seq in enumerate(range(100, 110)):  # 10 packets, 3000 ticks apart, from t=0 ms
        old.on_rtp(parse_rtp(rtp(seq, 1000 + 3000 * i, ssrc=0xAAAA, payload=vp8_payload(seq == 100))), 33.0 * i)
    last = parse_rtp(sent[-1])
    new, plis = new_uptrack()
    dt.rebind(new, 2000.0)
    assert dt.uptrack is new and dt in new.downtracks and dt not in old.downtracks
    assert dt in new.layers[0].downtracks and not old.layers[0].downtracks
    assert plis == [0xDDDD]  # a keyframe is asked for at once
    # The old source's late packets go nowhere; the new one's delta frames wait.
    old.on_rtp(parse_rtp(rtp(110, 31000, ssrc=0xAAAA, payload=vp8_payload(False))), 2000.0)
    new.on_rtp(parse_rtp(rtp(5000, 777, ssrc=0xDDDD, payload=vp8_payload(False))), 2010.0)
    assert len(sent) == 10
    # 2 s after the old source's last packet (at 297 ms), the new one's keyframe.
    new.on_rtp(parse_rtp(rtp(5001, 900_000, ssrc=0xDDDD, payload=vp8_payload(True))), 2297.0)
    new.on_rtp(parse_rtp(rtp(5002, 903_000, ssrc=0xDDDD, payload=vp8_payload(False))), 2330.0)
    first, second = parse_rtp(sent[10]), parse_rtp(sent[11])
    assert first.ssrc == last.ssrc == 0xBBBB
    assert first.sequence_number == (last.sequence_number + 1) & 0xFFFF
    assert second.sequence_number == (last.sequence_number + 2) & 0xFFFF
    assert (first.timestamp - last.timestamp) & 0xFFFFFFFF == 2000 * 90  # the time away, 90 kHz
    assert (second.timestamp - first.timestamp) & 0xFFFFFFFF == 3000


def test_nack_of_an_old_source_packet_is_not_answered_from_the_new_cache():
    old, dt, sent, _, _ = make(kind="audio", rtx=False)
    for seq in range(10, 15):
        old.on_rtp(parse_rtp(rtp(seq, 960 * seq, ssrc=0xAAAA, pt=111, payload=b"old" + bytes([seq]))), 20.0 * seq)
    old_out = [parse_rtp(d).sequence_number for d in sent]
    opus = CodecInfo(109, "audio/opus", 48000, 2)
    new, _ = new_uptrack("audio", opus)
    dt.rebind(new, 400.0)
    # The new source reuses the same source sequence numbers: a NACK of an old output
    # number must not fetch the new packet that has that source number.
    for seq in range(10, 15):
        new.on_rtp(parse_rtp(rtp(seq, 960 * seq, ssrc=0xDDDD, pt=109, payload=b"new" + bytes([seq]))), 400.0 + seq)
    assert len(sent) == 10
    assert [parse_rtp(d).sequence_number for d in sent[5:]] == [(old_out[-1] + i) & 0xFFFF for i in range(1, 6)]
    assert parse_rtp(sent[5]).payload_type == 120  # the subscriber's payload type, not the new publisher's
    assert dt.on_nack(old_out[:2], 600.0) == 0
    new_out = parse_rtp(sent[6]).sequence_number
    assert dt.on_nack([new_out], 700.0) == 1 and parse_rtp(sent[-1]).payload == b"new" + bytes([11])


def test_audio_level_follows_the_new_publishers_extension_id():
    _old, dt, sent, _, _ = make(kind="audio", pub_ext={URI_AUDIO_LEVEL: 1})
    opus = CodecInfo(111, "audio/opus", 48000, 2)
    new, _ = new_uptrack("audio", opus, ext={URI_AUDIO_LEVEL: 3})
    dt.rebind(new, 0.0)
    new.on_rtp(parse_rtp(rtp(1, 0, ssrc=0xDDDD, pt=111, payload=b"x", ext=[(3, b"\x85")])), 1.0)
    assert parse_rtp(sent[-1]).extensions[5] == b"\x85"  # under the subscriber's id


def test_rebind_to_another_codec_is_refused():
    old, dt, _, _, _ = make()
    h264, _ = new_uptrack(codec=CodecInfo(102, "video/H264", 90000))
    with pytest.raises(ValueError):
        dt.rebind(h264, 0.0)
    assert dt.uptrack is old
