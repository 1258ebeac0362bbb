"""DataChannel envelopes of the room protocol (docs/PROTOCOL.md, "DataChannels").

Every DataChannel message, both ways, is an envelope:

* text: a JSON object. Sent ``{"data": "hi", "to": [...], "topic": "t"}`` (``to`` and
  ``topic`` optional); delivered ``{"from": "PA_...", "data": "hi", "topic": "t"}``.
* binary: a 16-bit big-endian header length *n*, *n* bytes of UTF-8 JSON header, then
  the payload. Sent header ``{"to": [...], "topic": "t"}`` or *n* = 0 for none;
  delivered header ``{"from": "PA_...", "topic": "t"}``.

Sizes are bytes of the encoded envelope (UTF-8 for text).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "BINARY_HEADER_LENGTH",
    "MAX_ENVELOPE_BYTES",
    "MAX_TOPIC_CHARS",
    "ChannelSpec",
    "DataMessage",
    "EnvelopeError",
    "decode_envelope",
    "encode_envelope",
]

MAX_ENVELOPE_BYTES = 65_280  # the server refuses larger envelopes (data_too_large)
MAX_TOPIC_CHARS = 64
BINARY_HEADER_LENGTH = struct.Struct("!H")  # the binary envelope's header-length prefix

_COMPACT = (",", ":")


@dataclass(frozen=True, slots=True)
class ChannelSpec:
    """A DataChannel a client opens: its label and reliability (RFC 8831 §6.1).

    Attributes:
        label: the channel's label (must not start with ``_sfu``).
        ordered: deliver in order.
        max_retransmits: retransmissions before a message is abandoned (lossy);
            None for unlimited.
        max_packet_lifetime: milliseconds before a message is abandoned (lossy);
            None for unlimited. At most one of the two may be set.
    """

    label: str
    ordered: bool = True
    max_retransmits: int | None = None
    max_packet_lifetime: int | None = None

    @property
    def reliable(self) -> bool:
        """True for a reliable ordered channel (the server never drops on it)."""
        return self.ordered and self.max_retransmits is None and self.max_packet_lifetime is None


@dataclass(frozen=True, slots=True)
class DataMessage:
    """One message delivered by the server on a DataChannel.

    Attributes:
        label: the channel it arrived on.
        from_id: the sender's participant id, as set by the server.
        topic: the sender's topic, or None.
        data: the payload: ``str`` for a text message, ``bytes`` for a binary one.
        received_at: ``time.monotonic()`` seconds when it arrived (the clock is
            system-wide on Linux, so it compares with send times of other processes).
    """

    label: str
    from_id: str
    topic: str | None
    data: str | bytes
    received_at: float


class EnvelopeError(ValueError):
    """A DataChannel message is not a valid envelope."""


def encode_envelope(data: str | bytes, to: Sequence[str] | None = None, topic: str | None = None) -> str | bytes:
    """The envelope a client sends: text for ``str`` data, binary for ``bytes``.

    Args:
        data: the payload.
        to: deliver only to these participant ids (None: everyone else).
        topic: a tag of at most 64 characters for receivers to filter on.

    Neither the size limit nor the topic length is checked here, so that tests can
    send what the server must refuse.
    """
    header: dict[str, Any] = {}
    if to is not None:
        header["to"] = list(to)
    if topic is not None:
        header["topic"] = topic
    if isinstance(data, str):
        return json.dumps({"data": data, **header}, separators=_COMPACT)
    encoded = json.dumps(header, separators=_COMPACT).encode() if header else b""
    return BINARY_HEADER_LENGTH.pack(len(encoded)) + encoded + bytes(data)


def decode_envelope(message: str | bytes) -> tuple[str, str | None, str | bytes]:
    """Decode an envelope the server delivered.

    Returns:
        (from_id, topic, data).

    Raises:
        EnvelopeError: not a valid delivered envelope (no ``from``, bad JSON, a
            binary header length past the end, ...).
    """
    if isinstance(message, str):
        try:
            body = json.loads(message)
        except ValueError as exc:
            raise EnvelopeError(f"text envelope is not JSON: {exc}") from None
        if not isinstance(body, dict) or not isinstance(body.get("data"), str):
            raise EnvelopeError("text envelope is not an object with a string 'data'")
        return _sender(body), _topic(body), body["data"]
    if len(message) < BINARY_HEADER_LENGTH.size:
        raise EnvelopeError("binary envelope shorter than its header length")
    (n,) = BINARY_HEADER_LENGTH.unpack_from(message)
    end = BINARY_HEADER_LENGTH.size + n
    if end > len(message):
        raise EnvelopeError(f"binary header length {n} runs past the end ({len(message)} bytes)")
    try:
        header = json.loads(message[BINARY_HEADER_LENGTH.size : end]) if n else {}
    except ValueError as exc:
        raise EnvelopeError(f"binary header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise EnvelopeError("binary header is not a JSON object")
    return _sender(header), _topic(header), bytes(message[end:])


def _sender(fields: dict[str, Any]) -> str:
    sender = fields.get("from")
    if not isinstance(sender, str) or not sender:
        raise EnvelopeError("delivered envelope has no 'from'")
    return sender


def _topic(fields: dict[str, Any]) -> str | None:
    topic = fields.get("topic")
    if topic is not None and not isinstance(topic, str):
        raise EnvelopeError("'topic' is not a string")
    return topic
