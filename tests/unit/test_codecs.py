"""Keyframe detection (RFC 7741 VP8, RFC 6184 H.264) and RTX OSN (RFC 4588)."""

import pytest

from sfu.core.codecs import (
    h264_is_keyframe,
    is_keyframe,
    parse_vp8_descriptor,
    rtx_original_sequence,
    vp8_is_keyframe,
)

from .synth import vp8_payload


@pytest.mark.parametrize(
    "payload, expected",
    [
        (vp8_payload(keyframe=True), True),
        (vp8_payload(keyframe=False), False),
        (vp8_payload(keyframe=True, picture_id=1234), True),
        (vp8_payload(keyframe=False, picture_id=1234), False),
        (vp8_payload(keyframe=True, start=False), False),  # continuation packet of a key frame
        (b"\x90", False),  # truncated descriptor
        (b"", False),
    ],
)
def test_vp8_keyframe(payload, expected):
    assert vp8_is_keyframe(payload) is expected
    assert is_keyframe("video/VP8", payload) is expected


def test_vp8_descriptor_fields():
    # X=1,S=1 | I,L,T,K | 15-bit picture id 0x1234 | TL0PICIDX 7 | TID 2, Y, KEYIDX 3
    d = parse_vp8_descriptor(bytes([0x90, 0xF0, 0x80 | 0x12, 0x34, 7, (2 << 6) | 0x20 | 3, 0x00]))
    assert (d.picture_id, d.picture_id_bits, d.tl0_pic_idx, d.tid, d.layer_sync, d.key_idx, d.size) == (
        0x1234, 15, 7, 2, True, 3, 6
    )


@pytest.mark.parametrize(
    "payload, expected",
    [
        (bytes([0x65, 0x88]), True),  # IDR slice
        (bytes([0x67, 0x42]), True),  # SPS
        (bytes([0x41, 0x9A]), False),  # non-IDR slice
        (bytes([0x78, 0x00, 0x02, 0x67, 0x42, 0x00, 0x02, 0x68, 0xCE]), True),  # STAP-A with SPS, PPS
        (bytes([0x78, 0x00, 0x02, 0x41, 0x9A]), False),  # STAP-A with a P slice
        (bytes([0x78, 0x00, 0x09, 0x67]), False),  # STAP-A size past the end
        (bytes([0x7C, 0x85, 0xAA]), True),  # FU-A start of IDR
        (bytes([0x7C, 0x05, 0xAA]), False),  # FU-A middle of IDR
        (bytes([0x7C, 0x81, 0xAA]), False),  # FU-A start of non-IDR
        (b"", False),
    ],
)
def test_h264_keyframe(payload, expected):
    assert h264_is_keyframe(payload) is expected


def test_audio_is_never_a_keyframe():
    assert not is_keyframe("audio/opus", vp8_payload(keyframe=True))


def test_rtx_osn():
    assert rtx_original_sequence(b"\x12\x34rest") == 0x1234
    with pytest.raises(ValueError):
        rtx_original_sequence(b"\x12")
