"""Reading just enough of a STUN message to route it (RFC 8489, formerly RFC 5389): is
it STUN, which class, its transaction ID, the local ufrag its USERNAME names, and
whether its MESSAGE-INTEGRITY holds for a short-term password. Pure byte logic for
the single-port demultiplexer (:mod:`sfu.rtc.udp_mux`); no parsing of attributes it
does not need, every loop bounded by the datagram's length.

STUN message header (RFC 8489 §5)::

    0                   1                   2                   3
    |0 0|  STUN message type (14 bits)  |    message length (bytes)     |
    |                 magic cookie 0x2112A442                           |
    |                 transaction ID (96 bits)                          |

Attributes follow as type (16 bits), length (16 bits), value padded to 4 bytes
(RFC 8489 §14).
"""

from __future__ import annotations

import hashlib
import hmac

__all__ = [
    "CLASS_ERROR",
    "CLASS_INDICATION",
    "CLASS_REQUEST",
    "CLASS_SUCCESS",
    "HEADER_BYTES",
    "MAX_USERNAME_BYTES",
    "check_integrity",
    "local_ufrag",
    "stun_class",
    "transaction_id",
]

HEADER_BYTES = 20
MAGIC_COOKIE = b"\x21\x12\xa4\x42"
MAX_USERNAME_BYTES = 512  # RFC 8489 §14.3: USERNAME is less than 513 bytes
_ATTR_USERNAME = 0x0006  # RFC 8489 §14.3
_ATTR_MESSAGE_INTEGRITY = 0x0008  # RFC 8489 §14.5
_INTEGRITY_BYTES = 20  # HMAC-SHA1

# RFC 8489 §5: the class is bits C1 (0x0100) and C0 (0x0010) of the message type.
CLASS_REQUEST = 0
CLASS_INDICATION = 1
CLASS_SUCCESS = 2
CLASS_ERROR = 3


def stun_class(data: bytes) -> int | None:
    """The STUN class of ``data`` (``CLASS_REQUEST`` ... ``CLASS_ERROR``), or None when
    it is not a STUN message: fewer than 20 bytes, the two top bits not zero, no magic
    cookie at bytes 4-8, or a length field (RFC 8489 §5: a multiple of 4) that does not
    match the datagram."""
    if len(data) < HEADER_BYTES or data[0] > 3 or data[4:8] != MAGIC_COOKIE:
        return None
    length = (data[2] << 8) | data[3]
    if length & 3 or length != len(data) - HEADER_BYTES:
        return None
    return ((data[0] & 0x01) << 1) | ((data[1] & 0x10) >> 4)


def transaction_id(data: bytes) -> bytes:
    """The 96-bit transaction ID of a STUN message (RFC 8489 §5), bytes 8-20."""
    return bytes(data[8:HEADER_BYTES])


def _attributes(data: bytes):  # type: ignore[no-untyped-def]
    """(type, value offset, value length) of each attribute, in order, while they fit."""
    pos, end = HEADER_BYTES, len(data)
    while pos + 4 <= end:
        kind = (data[pos] << 8) | data[pos + 1]
        length = (data[pos + 2] << 8) | data[pos + 3]
        if pos + 4 + length > end:
            return
        yield kind, pos + 4, length
        pos += 4 + ((length + 3) & ~3)


def local_ufrag(data: bytes) -> str | None:
    """The ufrag of the receiving agent in a STUN message's USERNAME: the part before
    ':' of "RFRAG:LFRAG" as the sender writes it (RFC 8445 §7.2.2), i.e. the
    receiver's own ufrag; None without a USERNAME (or a longer one than RFC 8489
    allows, or one that is not UTF-8). Only attributes before MESSAGE-INTEGRITY count
    (RFC 8489 §14.5)."""
    for kind, offset, length in _attributes(data):
        if kind == _ATTR_MESSAGE_INTEGRITY:
            return None
        if kind == _ATTR_USERNAME:
            if length > MAX_USERNAME_BYTES:
                return None
            try:
                text = bytes(data[offset : offset + length]).decode("utf-8")
            except UnicodeDecodeError:
                return None
            return text.partition(":")[0]
    return None


def check_integrity(data: bytes, key: bytes) -> bool:
    """Whether the MESSAGE-INTEGRITY attribute of ``data`` is the HMAC-SHA1 of the
    message up to that attribute under ``key`` (RFC 8489 §14.5: the header's length
    field counts up to the end of MESSAGE-INTEGRITY while hashing; for ICE the key is
    the receiver's ice-pwd, the short-term credential of RFC 8489 §9.1.1). False
    without the attribute."""
    for kind, offset, length in _attributes(data):
        if kind != _ATTR_MESSAGE_INTEGRITY:
            continue
        if length != _INTEGRITY_BYTES:
            return False
        start = offset - 4
        hashed_length = start - HEADER_BYTES + 4 + _INTEGRITY_BYTES
        message = bytes(data[0:2]) + hashed_length.to_bytes(2, "big") + bytes(data[4:start])
        expected = hmac.new(key, message, hashlib.sha1).digest()
        return hmac.compare_digest(expected, bytes(data[offset : offset + length]))
    return False
