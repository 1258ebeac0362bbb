"""Peeking into STUN messages (sfu/core/stun_peek.py), against messages aioice builds."""

from aioice import stun

from sfu.core.stun_peek import (
    CLASS_ERROR,
    CLASS_INDICATION,
    CLASS_REQUEST,
    CLASS_SUCCESS,
    check_integrity,
    local_ufrag,
    stun_class,
    transaction_id,
)


def binding(cls: stun.Class, username: str | None = None, key: bytes | None = None) -> tuple[bytes, stun.Message]:
    message = stun.Message(stun.Method.BINDING, cls)
    if username is not None:
        message.attributes["USERNAME"] = username
    message.attributes["PRIORITY"] = 1853824767
    if key is not None:
        message.add_message_integrity(key)
    else:
        message.add_fingerprint()
    return bytes(message), message


def test_classes_and_transaction_id():
    for cls, expected in (
        (stun.Class.REQUEST, CLASS_REQUEST),
        (stun.Class.INDICATION, CLASS_INDICATION),
        (stun.Class.RESPONSE, CLASS_SUCCESS),
        (stun.Class.ERROR, CLASS_ERROR),
    ):
        data, message = binding(cls)
        assert stun_class(data) == expected
        assert transaction_id(data) == message.transaction_id


def test_not_stun():
    data, _ = binding(stun.Class.REQUEST, "srv:cli", b"x" * 22)
    assert stun_class(b"") is None
    assert stun_class(data[:19]) is None  # shorter than a header
    assert stun_class(data[:-4]) is None  # length field does not match
    assert stun_class(b"\x16" + data[1:]) is None  # DTLS range
    assert stun_class(data[:4] + b"\x00\x00\x00\x00" + data[8:]) is None  # no magic cookie
    assert stun_class(b"\x80" * 40) is None


def test_local_ufrag_is_the_part_before_the_colon():
    data, _ = binding(stun.Class.REQUEST, "serverUfrag16chr:clientufrag", b"p" * 22)
    assert local_ufrag(data) == "serverUfrag16chr"
    no_user, _ = binding(stun.Class.REQUEST)
    assert local_ufrag(no_user) is None
    # A USERNAME whose length runs past the datagram is not read.
    assert local_ufrag(data[:24]) is None


def test_username_after_message_integrity_does_not_count():
    # MESSAGE-INTEGRITY (20 bytes of zeros) first, then a USERNAME: ignored (RFC 8489 §14.5).
    attrs = b"\x00\x08\x00\x14" + bytes(20) + b"\x00\x06\x00\x04abcd"
    header = b"\x00\x01" + len(attrs).to_bytes(2, "big") + b"\x21\x12\xa4\x42" + bytes(12)
    assert stun_class(header + attrs) == CLASS_REQUEST
    assert local_ufrag(header + attrs) is None


def test_integrity_checked_as_aioice_computes_it():
    key = b"abcdefghijklmnopqrstuv"
    data, _ = binding(stun.Class.REQUEST, "a:b", key)
    assert check_integrity(data, key)
    assert not check_integrity(data, b"another-password-22chr")
    tampered = bytearray(data)
    tampered[-20] ^= 1  # inside the MESSAGE-INTEGRITY value (before the 8-byte FINGERPRINT)
    assert not check_integrity(bytes(tampered), key)
    no_integrity, _ = binding(stun.Class.REQUEST, "a:b")
    assert not check_integrity(no_integrity, key)
