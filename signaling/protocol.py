"""Validation of client messages of the room protocol (docs/PROTOCOL.md).

:func:`parse_message` turns a WebSocket text frame into a validated dict or raises
:class:`ProtocolError` carrying the error code to send back.
"""

from __future__ import annotations

import json
from typing import Any

from sfu.auth import MAX_TOKEN_BYTES, TRACK_SOURCES

__all__ = ["ProtocolError", "parse_message", "error_message", "CLIENT_TYPES", "MAX_SDP_BYTES"]

MAX_SDP_BYTES = 256 * 1024
MAX_NAME_CHARS = 64
SOURCES = TRACK_SOURCES
CLIENT_TYPES = ("join", "offer", "candidate", "mute", "unpublish", "track_settings", "leave", "ping")
MAX_HEIGHT_PIXELS = 16384


class ProtocolError(Exception):
    """A client message is invalid; ``code`` is the protocol error code."""

    def __init__(self, code: str, message: str, request_type: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_type = request_type


def error_message(code: str, message: str, request_type: str | None = None) -> dict[str, Any]:
    """The ``error`` message: ``{"type": "error", "code", "message"[, "requestType"]}``."""
    out: dict[str, Any] = {"type": "error", "code": code, "message": message}
    if request_type:
        out["requestType"] = request_type
    return out


def _require_str(msg: dict[str, Any], key: str, kind: str, max_len: int | None = None) -> str:
    value = msg.get(key)
    if not isinstance(value, str):
        raise ProtocolError("bad_message", f"'{key}' must be a string", kind)
    if max_len is not None and len(value) > max_len:
        raise ProtocolError("bad_message", f"'{key}' is longer than {max_len} characters", kind)
    return value


def _validate_tracks(tracks: Any) -> dict[str, dict[str, Any]]:
    if tracks is None:
        return {}
    if not isinstance(tracks, dict):
        raise ProtocolError("bad_message", "'tracks' must be an object of mid -> binding", "offer")
    out: dict[str, dict[str, Any]] = {}
    for mid, spec in tracks.items():
        if not isinstance(spec, dict) or len(spec) != 1 or not ({"publish", "subscribe"} & spec.keys()):
            raise ProtocolError("bad_message", f"tracks['{mid}'] must be {{publish: {{...}}}} or {{subscribe: trackId}}", "offer")
        if "subscribe" in spec:
            if not isinstance(spec["subscribe"], str):
                raise ProtocolError("bad_message", f"tracks['{mid}'].subscribe must be a track id", "offer")
        else:
            pub = spec["publish"] if spec["publish"] is not None else {}
            if not isinstance(pub, dict):
                raise ProtocolError("bad_message", f"tracks['{mid}'].publish must be an object", "offer")
            source = pub.get("source", "")
            if source and source not in SOURCES:
                raise ProtocolError("bad_message", f"source must be one of {', '.join(SOURCES)}", "offer")
            if "muted" in pub and not isinstance(pub["muted"], bool):
                raise ProtocolError("bad_message", "muted must be a boolean", "offer")
            track_id = pub.get("trackId")
            if track_id is not None and (not isinstance(track_id, str) or len(track_id) > 64):
                raise ProtocolError("bad_message", "publish.trackId must be a track id", "offer")
            spec = {"publish": pub}
        out[str(mid)] = spec
    return out


def parse_message(text: str) -> dict[str, Any]:
    """Parse and validate one client frame.

    Returns:
        the message with its fields checked (``name`` trimmed, ``tracks`` normalized).

    Raises:
        ProtocolError: ``bad_json``, ``bad_message`` or ``unknown_type``.
    """
    try:
        msg = json.loads(text)
    except (ValueError, TypeError) as exc:
        raise ProtocolError("bad_json", f"not JSON: {exc}") from exc
    except RecursionError as exc:  # json's C scanner recurses once per nesting level
        raise ProtocolError("bad_json", "the message is nested too deeply") from exc
    if not isinstance(msg, dict):
        raise ProtocolError("bad_json", "a message must be a JSON object")
    kind = msg.get("type")
    if not isinstance(kind, str):
        raise ProtocolError("bad_message", "'type' must be a string")
    if kind not in CLIENT_TYPES:
        raise ProtocolError("unknown_type", f"unknown message type '{kind}'", kind)
    if kind == "join":
        # With a token (here or in the WebSocket URL) the room and name come from it;
        # without one (development mode) both are needed: the session checks that.
        token = msg.get("token")
        if token is not None:
            _require_str(msg, "token", kind, MAX_TOKEN_BYTES)
            if not token.isascii():  # a JWT is base64url and dots; PyJWT fails on a lone surrogate
                raise ProtocolError("invalid_token", "malformed token", kind)
        if msg.get("room") is not None:
            _require_str(msg, "room", kind, 256)
        resume = msg.get("resume")
        if resume is not None:
            if not isinstance(resume, dict):
                raise ProtocolError("bad_message", "'resume' must be {participantId, key}", kind)
            _require_str(resume, "participantId", kind, 64)
            _require_str(resume, "key", kind, 64)
        if msg.get("name") is not None:
            name = _require_str(msg, "name", kind, 256).strip()
            if not name or len(name) > MAX_NAME_CHARS:
                raise ProtocolError("bad_message", f"'name' must be 1-{MAX_NAME_CHARS} characters", kind)
            msg["name"] = name
    elif kind == "offer":
        sdp = _require_str(msg, "sdp", kind)
        if len(sdp) > MAX_SDP_BYTES:
            raise ProtocolError("bad_sdp", "the offer is too large", kind)
        msg["tracks"] = _validate_tracks(msg.get("tracks"))
    elif kind == "candidate":
        candidate = msg.get("candidate")
        if candidate is not None and not isinstance(candidate, dict):
            raise ProtocolError("bad_message", "'candidate' must be an object or null", kind)
        if candidate:  # the fields' types here; the adapter checks the candidate line itself
            line, mid, index = candidate.get("candidate"), candidate.get("sdpMid"), candidate.get("sdpMLineIndex")
            if line is not None and (not isinstance(line, str) or len(line) > 1024):
                raise ProtocolError("bad_message", "'candidate' must be a string of at most 1024 characters", kind)
            if mid is not None and (not isinstance(mid, str) or len(mid) > 64):
                raise ProtocolError("bad_message", "'sdpMid' must be a string of at most 64 characters or null", kind)
            if index is not None and (isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < 1024):
                raise ProtocolError("bad_message", "'sdpMLineIndex' must be an integer 0-1023 or null", kind)
    elif kind == "mute":
        _require_str(msg, "trackId", kind, 64)
        if not isinstance(msg.get("muted"), bool):
            raise ProtocolError("bad_message", "'muted' must be a boolean", kind)
    elif kind == "unpublish":
        _require_str(msg, "trackId", kind, 64)
    elif kind == "track_settings":
        _require_str(msg, "trackId", kind, 64)
        for key in ("maxHeight", "maxWidth"):
            if key in msg:
                size = msg[key]
                if size is not None and (
                    isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= MAX_HEIGHT_PIXELS
                ):
                    raise ProtocolError("bad_message", f"'{key}' must be null or an integer 1-{MAX_HEIGHT_PIXELS}", kind)
        if "paused" in msg and not isinstance(msg["paused"], bool):
            raise ProtocolError("bad_message", "'paused' must be a boolean", kind)
    return msg
