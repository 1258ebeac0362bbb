"""The DataChannel envelope (docs/PROTOCOL.md): decode what clients send, encode what
receivers get; errors carry protocol codes."""

import json
import struct

import pytest

from sfu.core.envelope import (
    MAX_ENVELOPE_BYTES,
    EnvelopeError,
    decode_client_message,
    encode_delivery,
)


def binary(header, payload):
    h = json.dumps(header).encode() if header is not None else b""
    return struct.pack("!H", len(h)) + h + payload


def test_text_round_trip_overwrites_from_and_keeps_topic():
    out = decode_client_message(json.dumps({"data": "hé", "from": "PA_forged", "topic": "t", "to": ["PA_b"]}))
    assert (out.data, out.to, out.topic) == ("hé", frozenset({"PA_b"}), "t")
    delivered = json.loads(encode_delivery("PA_real", out))
    assert delivered == {"from": "PA_real", "data": "hé", "topic": "t"}


def test_binary_round_trip():
    out = decode_client_message(binary({"from": "PA_forged", "topic": "x"}, b"\x00\xffpayload"))
    assert (out.data, out.to, out.topic) == (b"\x00\xffpayload", None, "x")
    delivered = encode_delivery("PA_real", out)
    (n,) = struct.unpack_from("!H", delivered)
    assert json.loads(delivered[2 : 2 + n]) == {"from": "PA_real", "topic": "x"}
    assert delivered[2 + n :] == b"\x00\xffpayload"


def test_binary_without_header():
    out = decode_client_message(b"\x00\x00raw")
    assert (out.data, out.to, out.topic) == (b"raw", None, None)


@pytest.mark.parametrize(
    "message",
    [
        "not json",
        json.dumps(["a list"]),
        json.dumps({"no": "data"}),
        json.dumps({"data": 5}),
        json.dumps({"data": "x", "to": "PA_a"}),
        json.dumps({"data": "x", "to": [1]}),
        json.dumps({"data": "x", "topic": "t" * 65}),
        b"\x01",
        b"\x00\x09{}",
        b"\x00\x02\xff\xfe",
        binary(["list"], b""),
        "[" * 5000,  # nested deeper than json's recursion limit
        '{"data": "x", "to": ' + "[" * 5000 + "]" * 5000 + "}",
        struct.pack("!H", 5000) + b"[" * 5000,
        '{"data": "x"}\udc80',  # a lone surrogate outside the JSON value
    ],
)
def test_malformed_envelopes_are_bad_data(message):
    with pytest.raises(EnvelopeError) as err:
        decode_client_message(message)
    assert err.value.code == "bad_data"


def test_size_limit_counts_encoded_bytes():
    just_fits = json.dumps({"data": "x" * (MAX_ENVELOPE_BYTES - 12)})
    assert len(just_fits) == MAX_ENVELOPE_BYTES
    assert decode_client_message(just_fits).data
    with pytest.raises(EnvelopeError) as err:
        decode_client_message(b"\x00\x00" + b"x" * (MAX_ENVELOPE_BYTES - 1))
    assert err.value.code == "data_too_large"
    # Multi-byte characters count as their UTF-8 bytes.
    with pytest.raises(EnvelopeError):
        decode_client_message(json.dumps({"data": "é" * MAX_ENVELOPE_BYTES}, ensure_ascii=False))


def test_non_ascii_is_delivered_as_utf8_not_escaped():
    text = "😀中é" * 1000
    sent = json.dumps({"data": text}, ensure_ascii=False)
    delivered = encode_delivery("PA_x", decode_client_message(sent))
    assert json.loads(delivered)["data"] == text
    assert len(delivered.encode()) < len(sent.encode()) + 40


@pytest.mark.parametrize("field", ["data", "topic"])
def test_lone_surrogates_are_bad_data(field):
    envelope = {"data": "ok", field: "\ud800"}
    with pytest.raises(EnvelopeError) as err:
        decode_client_message(json.dumps(envelope))  # the JSON escape decodes to a lone surrogate
    assert err.value.code == "bad_data"
