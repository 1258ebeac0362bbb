"""The DataChannel message envelope (docs/PROTOCOL.md, "DataChannels").

Text messages are JSON objects; binary messages are a 16-bit big-endian header length,
a UTF-8 JSON header, then the payload. Clients send ``to``/``topic``; the server
delivers ``from``/``topic``. Pure functions: no I/O.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

__all__ = [
    "MAX_ENVELOPE_BYTES",
    "MAX_TOPIC_CHARS",
    "EnvelopeError",
    "Outgoing",
    "decode_client_message",
    "encode_delivery",
]

# SCTP max-message-size 65,536 (aiortc's default, RFC 8841 §6) less room for the
# delivered envelope's "from" field.
MAX_ENVELOPE_BYTES = 65_280
MAX_TOPIC_CHARS = 64
MAX_TARGETS = 1000


class EnvelopeError(ValueError):
    """A client message is not a valid envelope; ``code`` is the protocol error code
    (``data_too_large`` or ``bad_data``)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A decoded client message: ``data`` (str for text, bytes for binary), the target
    participant ids (None: everyone else) and the topic (None: none)."""

    data: str | bytes
    to: frozenset[str] | None
    topic: str | None


def _header_fields(header: object) -> tuple[frozenset[str] | None, str | None]:
    if not isinstance(header, dict):
        raise EnvelopeError("bad_data", "the envelope must be a JSON object")
    to = header.get("to")
    if to is not None:
        if not isinstance(to, list) or not all(isinstance(t, str) for t in to) or len(to) > MAX_TARGETS:
            raise EnvelopeError("bad_data", f"'to' must be a list of at most {MAX_TARGETS} participant ids")
        to = frozenset(to)
    topic = header.get("topic")
    if topic is not None and (not isinstance(topic, str) or len(topic) > MAX_TOPIC_CHARS):
        raise EnvelopeError("bad_data", f"'topic' must be a string of at most {MAX_TOPIC_CHARS} characters")
    if topic is not None:
        _check_utf8(topic, "topic")
    return to, topic


def _check_utf8(text: str, field: str) -> None:
    """JSON allows lone surrogates (``"\ud800"``), which UTF-8 cannot carry onward."""
    try:
        text.encode()
    except UnicodeEncodeError as exc:
        raise EnvelopeError("bad_data", f"'{field}' is not valid Unicode text") from exc


def decode_client_message(message: str | bytes) -> Outgoing:
    """Decode what a client sent on a DataChannel.

    Args:
        message: the SCTP message as aiortc delivers it (str for a text message,
            bytes for a binary one, RFC 8831 §6.6).

    Returns:
        the payload, targets and topic; a ``from`` field is ignored.

    Raises:
        EnvelopeError: ``data_too_large`` beyond :data:`MAX_ENVELOPE_BYTES` bytes,
            ``bad_data`` for anything that is not an envelope.
    """
    size = len(message.encode("utf-8", "surrogatepass")) if isinstance(message, str) else len(message)
    if size > MAX_ENVELOPE_BYTES:
        raise EnvelopeError("data_too_large", f"message of {size} bytes exceeds {MAX_ENVELOPE_BYTES} bytes")
    if isinstance(message, str):
        try:
            envelope = json.loads(message)
        except ValueError as exc:
            raise EnvelopeError("bad_data", f"a text message must be a JSON envelope: {exc}") from exc
        except RecursionError as exc:  # json's C scanner recurses once per nesting level
            raise EnvelopeError("bad_data", "the envelope is nested too deeply") from exc
        to, topic = _header_fields(envelope)
        data = envelope.get("data")
        if not isinstance(data, str):
            raise EnvelopeError("bad_data", "a text envelope needs a string 'data'")
        _check_utf8(data, "data")
        return Outgoing(data, to, topic)
    if len(message) < 2:
        raise EnvelopeError("bad_data", "a binary message starts with a 16-bit header length")
    (header_len,) = struct.unpack_from("!H", message, 0)
    if 2 + header_len > len(message):
        raise EnvelopeError("bad_data", "the binary header length runs past the message")
    to: frozenset[str] | None = None
    topic: str | None = None
    if header_len:
        try:
            header = json.loads(message[2 : 2 + header_len].decode())
        except (ValueError, UnicodeDecodeError) as exc:
            raise EnvelopeError("bad_data", f"the binary header must be UTF-8 JSON: {exc}") from exc
        except RecursionError as exc:
            raise EnvelopeError("bad_data", "the binary header is nested too deeply") from exc
        to, topic = _header_fields(header)
    return Outgoing(bytes(message[2 + header_len :]), to, topic)


def encode_delivery(sender_id: str, outgoing: Outgoing) -> str | bytes:
    """The envelope delivered to receivers: the same kind (text or binary) as sent, with
    ``from`` set to ``sender_id`` and the topic passed through."""
    if isinstance(outgoing.data, str):
        envelope: dict[str, str] = {"from": sender_id, "data": outgoing.data}
        if outgoing.topic is not None:
            envelope["topic"] = outgoing.topic
        # Raw UTF-8 (not \u escapes): the delivered size stays that of what was sent.
        return json.dumps(envelope, separators=(",", ":"), ensure_ascii=False)
    header: dict[str, str] = {"from": sender_id}
    if outgoing.topic is not None:
        header["topic"] = outgoing.topic
    encoded = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    return struct.pack("!H", len(encoded)) + encoded + outgoing.data
