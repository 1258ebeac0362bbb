"""Builders of synthetic RTP packets and payloads for unit tests."""

import struct

from sfu.core.rtp import build_extensions


def rtp(seq, ts, ssrc=0x1234, pt=96, marker=False, payload=b"\x90\x80\x01\x10\x00", ext=None, padding=0, csrc=()):
    """Serialize an RTP packet (RFC 3550 §5.1) with optional extensions and padding."""
    ext_block = build_extensions(ext or [])
    b0 = 0x80 | (0x20 if padding else 0) | (0x10 if ext_block else 0) | len(csrc)
    header = struct.pack("!BBHII", b0, (0x80 if marker else 0) | pt, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc)
    header += b"".join(struct.pack("!I", c) for c in csrc)
    pad = (b"\x00" * (padding - 1) + bytes([padding])) if padding else b""
    return header + ext_block + payload + pad


def vp8_payload(keyframe, picture_id=None, start=True, body=b"\x00" * 20):
    """A VP8 payload (RFC 7741 §4.2 descriptor + §4.3 header first byte)."""
    b0 = 0x10 if start else 0x00
    desc = bytearray()
    if picture_id is not None:
        desc.append(b0 | 0x80)
        desc.append(0x80)  # I bit
        desc += struct.pack("!H", 0x8000 | picture_id)
    else:
        desc.append(b0)
    header_byte = 0x00 if keyframe else 0x01  # P bit: 0 = key frame
    return bytes(desc) + bytes([header_byte]) + body
