"""RTP parsing and per-subscriber header rewriting (RFC 3550 §5.1, RFC 8285, RFC 4588)."""

import pytest

from sfu.core.rtp import (
    abs_send_time,
    build_extensions,
    is_rtcp,
    parse_rtp,
    write_packet,
    write_rtx_packet,
)

from .synth import rtp


def test_parse_fields_and_extensions():
    data = rtp(65535, 0xFFFFFFFF, ssrc=0xDEADBEEF, pt=111, marker=True, payload=b"abc", ext=[(1, b"0"), (3, b"\x01\x02\x03")])
    p = parse_rtp(data)
    assert (p.sequence_number, p.timestamp, p.ssrc, p.payload_type, p.marker) == (65535, 0xFFFFFFFF, 0xDEADBEEF, 111, True)
    assert p.extensions == {1: b"0", 3: b"\x01\x02\x03"}
    assert p.payload == b"abc"


def test_padding_only_packet_has_empty_payload():
    p = parse_rtp(rtp(1, 1, payload=b"", padding=224))
    assert p.padding and p.payload_size == 0


def test_two_byte_extensions_round_trip():
    long_value = b"x" * 20  # too long for the one-byte form
    p = parse_rtp(rtp(1, 1, ext=[(1, b"a"), (20, long_value)]))
    assert p.extensions == {1: b"a", 20: long_value}


def test_one_byte_id_0_is_one_padding_byte_whatever_its_length_field():
    """RFC 8285 §4.2: ID 0 is padding; a byte 0x0L is skipped alone (as libwebrtc does),
    never read as an element, so a rebuilt packet never carries an ID 0."""
    header = bytes([0x80 | 0x10, 96, 0, 1, 0, 0, 0, 1, 0, 0, 0, 2])
    block = bytes([0x10, 0x30, 0x03, 0x00, 0x21, 0x41, 0x42, 0x00])  # id 1 "0", 0x03, 0x00, id 2 "AB", pad
    p = parse_rtp(header + b"\xbe\xde\x00\x02" + block + b"pl")
    assert p.extensions == {1: b"0", 2: b"AB"}
    assert 0 not in p.extensions and p.payload == b"pl"


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x80\x60\x00",  # shorter than the fixed header
        b"\x40" + b"\x00" * 11,  # version 1
        b"\x8f" + b"\x00" * 11,  # 15 CSRCs announced, none present
        b"\x90" + b"\x00" * 11 + b"\xbe\xde\x00\x05",  # extension length past the end
        b"\xa0" + b"\x00" * 11 + b"\x00\x00\x00\x40",  # padding longer than the packet
    ],
)
def test_malformed_packets_raise_value_error(data):
    with pytest.raises(ValueError):
        parse_rtp(data)


def test_rewrite_changes_header_keeps_payload_csrc_and_padding():
    src = parse_rtp(rtp(10, 1000, ssrc=1, pt=96, payload=b"PAYLOAD", padding=4, csrc=(0xAA,), ext=[(5, b"zz")]))
    ext = build_extensions([(1, b"3")])
    out = parse_rtp(write_packet(src, ssrc=2, payload_type=100, sequence_number=70000, timestamp=2**32 + 5, marker=True, extensions=ext))
    assert (out.ssrc, out.payload_type, out.sequence_number, out.timestamp, out.marker) == (2, 100, 70000 & 0xFFFF, 5, True)
    assert out.extensions == {1: b"3"}  # the publisher's extensions are replaced
    assert out.payload == b"PAYLOAD"
    assert out.csrc == src.csrc and out.padding


def test_rewrite_without_extensions_clears_x_bit():
    src = parse_rtp(rtp(1, 1, ext=[(1, b"0")], payload=b"p"))
    out = write_packet(src, 1, 96, 1, 1, False, b"")
    assert out[0] & 0x10 == 0
    assert parse_rtp(out).payload == b"p"


def test_rtx_packet_carries_original_sequence_number():
    src = parse_rtp(rtp(500, 9000, payload=b"media", padding=3))
    out = parse_rtp(write_rtx_packet(src, ssrc=77, payload_type=97, sequence_number=5, timestamp=9000, original_sequence_number=1234, extensions=b""))
    assert (out.ssrc, out.payload_type, out.sequence_number) == (77, 97, 5)
    assert out.payload == (1234).to_bytes(2, "big") + b"media"
    assert not out.padding


def test_is_rtcp_demultiplexing():
    assert is_rtcp(b"\x80\xc8")  # SR
    assert is_rtcp(b"\x81\xcd")  # RTPFB
    assert not is_rtcp(b"\x80\x60")  # RTP PT 96
    assert not is_rtcp(b"\x80\xe0")  # RTP PT 96 with marker


def test_abs_send_time_is_6_18_fixed_point_wrapping_at_64s():
    assert abs_send_time(1.0) == (1 << 18).to_bytes(3, "big")
    assert abs_send_time(64.5) == abs_send_time(0.5)
