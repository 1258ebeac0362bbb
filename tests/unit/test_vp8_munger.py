"""PictureID and TL0PICIDX stay continuous across layer switches (RFC 7741 §4.2)."""

from __future__ import annotations

from sfu.core.codecs import parse_vp8_descriptor
from sfu.core.vp8_munger import Vp8Munger


def vp8(pid: int, tl0: int, start: bool = True, bits: int = 15) -> bytes:
    b0 = 0x80 | (0x10 if start else 0)
    pid_bytes = bytes((0x80 | (pid >> 8), pid & 0xFF)) if bits == 15 else bytes((pid & 0x7F,))
    return bytes((b0, 0xE0)) + pid_bytes + bytes((tl0, 0x40)) + b"\x10\x02\x9d\x01\x2a"


def apply(m: Vp8Munger, payload: bytes) -> tuple[int, int]:
    head = m.rewrite(payload)
    out = head + payload[len(head) :] if head is not None else payload
    d = parse_vp8_descriptor(out)
    assert out[d.size :] == payload[d.size :]  # the VP8 payload itself is untouched
    return d.picture_id, d.tl0_pic_idx


def test_numbers_pass_unchanged_until_the_first_switch():
    m = Vp8Munger()
    assert m.rewrite(vp8(100, 7)) is None
    assert m.rewrite(vp8(101, 8)) is None


def test_switch_continues_from_the_last_numbers_with_wrap():
    m = Vp8Munger()
    for pid, tl0 in ((32766, 254), (32767, 255)):
        assert apply(m, vp8(pid, tl0)) == (pid, tl0)
    m.on_switch()
    assert apply(m, vp8(5000, 17)) == (0, 0)
    assert apply(m, vp8(5000, 17, start=False)) == (0, 0)  # same picture, next packet
    assert apply(m, vp8(5001, 18)) == (1, 1)
    m.on_switch()
    assert apply(m, vp8(9, 200)) == (2, 2)


def test_seven_bit_picture_ids_keep_their_width():
    m = Vp8Munger()
    apply(m, vp8(126, 3, bits=7))
    m.on_switch()
    p = vp8(40, 9, bits=7)
    head = m.rewrite(p)
    assert head is not None and len(head) == 4  # up to TL0PICIDX
    assert apply(m, vp8(41, 10, bits=7)) == (0, 5)


def test_packets_without_extension_fields_or_truncated_are_left_alone():
    m = Vp8Munger()
    m.on_switch()
    assert m.rewrite(b"\x10\x00\x9d") is None
    assert m.rewrite(b"\x90") is None
    assert m.rewrite(b"\x90\x80") is None


def test_retransmissions_use_the_offsets_of_their_epoch():
    m = Vp8Munger()
    apply(m, vp8(10, 1))
    m.on_switch()
    apply(m, vp8(500, 50))
    offsets = m.offsets
    m.on_switch()
    apply(m, vp8(900, 90))
    head = Vp8Munger.rewrite_with(vp8(501, 51), offsets)
    d = parse_vp8_descriptor(head + vp8(501, 51)[len(head) :])
    assert (d.picture_id, d.tl0_pic_idx) == (12, 3)
    assert Vp8Munger.rewrite_with(vp8(1, 1), (0, 0)) is None
