"""Property-based fuzz (hypothesis) of the signaling endpoint ``/ws`` over a real
WebSocket to a real server subprocess.

Hypothesis generates *examples*; one example is 2-3 *scripts* run on concurrent
WebSocket connections, and a script is a list of frames:

* (a) random JSON values (recursive: lists and objects of ``null``, booleans, huge
  integers, NaN/Infinity, unicode text with lone surrogates escaped as ``\\udXXX``),
  nesting up to 130,000 deep, strings up to twice the message limit;
* (b) structurally valid messages of every client type (``CLIENT_TYPES``: join, offer,
  candidate, mute, unpublish, track_settings, leave, ping) with mutated fields: wrong
  types, out-of-range numbers, missing and extra keys, a mangled ``type``, offers whose
  SDP is an aiortc offer with lines deleted/duplicated/swapped/inserted and numbers
  changed, and valid, forged (claims changed under the old signature, ``alg: none``, a
  wrong secret), truncated and garbage access tokens;
* (c) raw frames: random bytes as binary frames and as text frames (mostly invalid
  UTF-8), byte-mutated JSON messages, random non-JSON text.

A script usually starts with a valid ``join`` of a fuzz room (mostly ``fz0`` or ``fz1``,
else a random one, never ``calm``), sometimes followed by a valid offer, so that the mutated
messages after it reach the handlers of a joined participant. Track ids are written as
placeholders (``@@OWN_TRACK@@`` ...) that the runner fills in from the answers and
events of the connection (and the calm publisher's ids, to check rooms are isolated).

**The property, per message.** After every frame the runner sends a ``ping``; the
replies between two ``pong`` s belong to the frame (the server handles a connection's
messages in order). Each frame must get

* an ``error`` with a string ``code`` and ``message`` (never ``internal``: that is an
  unhandled exception) — the code a local :func:`~signaling.protocol.parse_message`
  predicts when the frame does not parse (or ``rate_limited``);
* or its normal reply (``joined``, ``answer``, ``left``, ``pong``); ``candidate``,
  ``mute``, ``unpublish`` and ``track_settings`` may also get nothing (the protocol
  answers them only on error);
* or a close of the WebSocket with a code: 1009 for a frame of at least
  ``max_message_bytes``, 1007 for a text frame that is not UTF-8, 1000 after ``left``
  (or after an event that gives the reason: ``removed``, ``server_shutdown``,
  ``connection_failed``);

within ``REPLY_TIMEOUT_S`` seconds. A connection the server closed is replaced by a new
one for the rest of the script. Each connection carries at most
``FRAMES_PER_CONNECTION`` frames (plus as many pings), below the burst of the
messages-per-second limit.

**Around it.** A well-behaved pair in room ``calm`` (a publisher of pre-encoded VP8 +
Opus and a subscriber that counts RTP) runs in a child process
(``python -m tests.fuzz.signaling --calm WS_URL``) for the whole fuzz; it must stay
connected and keep receiving. The server's RSS (psutil) and ``sfu_asyncio_tasks``
(``/metrics``) are sampled every second; the server log must hold no ``Traceback``.

Traffic stays on 127.0.0.1: ICE candidates the fuzz sends (trickled or in offers) name
127.0.0.1 and a UDP sink port of this process, or an address that does not parse
(frames that would make the server send elsewhere, or resolve an mDNS name, are
skipped and counted).

Run it long (figures in docs/BENCHMARKS.md)::

    .venv/bin/python -m tests.fuzz.signaling --messages 1000000 [--workers 2] [--time-limit 1500]

Generating is what costs (hypothesis: ~1.7 ms of CPU per frame); ``--workers N`` fuzzes
from N processes with their own seeds. It prints progress every 30 s, then the figures;
exit status 1 when the property broke somewhere.

``tests/integration/test_signaling_fuzz.py`` runs ~10^4 messages of it in the suite.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import functools
import ipaddress
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import psutil
from aioice import mdns
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from sfu.auth import MAX_TOKEN_BYTES, TRACK_SOURCES
from signaling.config import Limits
from signaling.protocol import CLIENT_TYPES, ProtocolError, parse_message

__all__ = [
    "CALM_ROOM",
    "Frame",
    "FuzzContext",
    "Report",
    "SignalingFuzz",
    "examples",
    "main",
]

CALM_ROOM = "calm"
FUZZ_ROOMS = ("fz0", "fz1", "fz2", "fz3")
MAX_MESSAGE_BYTES = Limits().max_message_bytes  # the server's default: a frame this big or bigger is closed with 1009
FRAMES_PER_CONNECTION = 48  # + as many pings: under the burst (2 x 50) of the messages-per-second limit
REPLY_TIMEOUT_S = 10.0  # no message from the server for this long while a frame is unanswered: a hang
EXAMPLE_TIMEOUT_S = 120.0
SAFE_ADDRESS = "127.0.0.1"

# Placeholders for ids known only at run time (see SignalingFuzz._substitute).
OWN_TRACK = "@@OWN_TRACK@@"  # a track this connection publishes
SUB_TRACK = "@@SUB_TRACK@@"  # a track this connection subscribes to
ROOM_TRACK = "@@ROOM_TRACK@@"  # a track of another participant of this connection's room
CALM_TRACK = "@@CALM_TRACK@@"  # a track of the calm publisher (another room)
CALM_PARTICIPANT = "@@CALM_PARTICIPANT@@"
PLACEHOLDERS = (OWN_TRACK, SUB_TRACK, ROOM_TRACK, CALM_TRACK, CALM_PARTICIPANT)

REPLY_TYPES = {"join": "joined", "offer": "answer", "leave": "left", "ping": "pong"}
SILENT_TYPES = frozenset({"candidate", "mute", "unpublish", "track_settings"})  # answered only on error
EVENT_TYPES = frozenset(
    {
        "participant_joined", "participant_left", "participant_updated", "permissions_changed",
        "track_published", "track_unpublished", "track_muted", "track_unmuted", "layer_changed",
        "active_speaker", "data_overflow", "removed", "server_shutdown",
    }
)
ASYNC_ERRORS = frozenset({"connection_failed"})  # errors the server sends by itself, not as an answer
REASON_EVENTS = frozenset({"removed", "server_shutdown"})  # events after which the server closes


# --------------------------------------------------------------------------- frames


@dataclass(frozen=True, slots=True)
class Frame:
    """One WebSocket frame to send.

    ``kind``: ``text`` (a str), ``binary`` (bytes) or ``raw_text`` (bytes sent as a
    text frame that are not valid UTF-8). ``family``: the strategy that made it.
    """

    kind: str
    data: str | bytes
    family: str

    def size(self) -> int:
        """The frame's payload in bytes."""
        return len(self.data.encode("utf-8")) if isinstance(self.data, str) else len(self.data)

    def preview(self, limit: int = 240) -> str:
        """A short printable form of the frame."""
        text = repr(self.data)
        if len(text) > limit:
            text = f"{text[: limit // 2]} ...({self.size()} bytes)... {text[-limit // 4:]}"
        return f"{self.kind}/{self.family}: {text}"


def text_frame(text: str, family: str) -> Frame:
    """A text frame; text that cannot be UTF-8 (a lone surrogate) is sent as its
    ``surrogatepass`` bytes, which a server must refuse (1007)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return Frame("raw_text", text.encode("utf-8", "surrogatepass"), family)
    return Frame("text", text, family)


def bytes_text_frame(data: bytes, family: str) -> Frame:
    """A text frame of raw bytes: a ``text`` frame when they are UTF-8, else ``raw_text``."""
    try:
        return Frame("text", data.decode("utf-8"), family)
    except UnicodeDecodeError:
        return Frame("raw_text", data, family)


# ------------------------------------------------------------------ run-time context


@dataclass(slots=True, eq=False)
class Offer:
    """A valid offer SDP (from aiortc) and its m-lines: (mid, kind, direction)."""

    sdp: str
    media: list[tuple[str, str, str]]


@dataclass(slots=True, eq=False)  # hashable by identity: strategies are cached per context
class FuzzContext:
    """What the strategies need from the running server: valid access tokens for the
    fuzz rooms (``/dev/token``), valid offers, the UDP sink port for candidates."""

    tokens: list[str]
    offers: list[Offer]
    sink_port: int


# ------------------------------------------------------------------ ICE safety


def _candidate_safe(value: str, sink_port: int) -> bool:
    """Would the server, given this candidate (the part after ``candidate:``), send
    nothing but to 127.0.0.1:``sink_port`` (and resolve no mDNS name)?"""
    bits = value.split()
    if len(bits) < 8:
        return True  # aiortc refuses it
    host = bits[4]
    if mdns.is_mdns_hostname(host):
        return False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return True  # aioice refuses a host that is not an address
    try:
        port = int(bits[5])
    except ValueError:
        return True
    if str(address) != SAFE_ADDRESS:
        return False
    return not 0 < port < 65536 or port == sink_port


def _sdp_candidates(sdp: str) -> list[str]:
    """The values of the ``a=candidate`` lines, split the way aiortc splits lines."""
    out = []
    for line in sdp.splitlines():
        if line.startswith("a=") and ":" in line:
            attr, value = line[2:].split(":", 1)
            if attr == "candidate":
                out.append(value)
    return out


def ice_safe(msg: dict[str, Any], sink_port: int) -> bool:
    """False when a message that parsed would make the server send ICE checks to an
    address other than 127.0.0.1:``sink_port`` (or resolve an mDNS name)."""
    kind = msg.get("type")
    if kind == "offer":
        return all(_candidate_safe(c, sink_port) for c in _sdp_candidates(msg["sdp"]))
    if kind == "candidate":
        candidate = msg.get("candidate")
        line = candidate.get("candidate") if isinstance(candidate, dict) else None
        if isinstance(line, str):
            line = line.removeprefix("candidate:")
            return _candidate_safe(line, sink_port)
    return True


_CANDIDATE_RE = re.compile(r"candidate:([^\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]*)")


def sanitize_candidates(text: str, sink_port: int) -> str:
    """Point every candidate in ``text`` at 127.0.0.1:``sink_port`` (the fuzz mutates
    SDP and candidate strings; it must not aim the server's ICE checks elsewhere)."""

    def fix(match: re.Match[str]) -> str:
        value = match.group(1)
        if _candidate_safe(value, sink_port):
            return match.group(0)
        bits = value.split()
        bits[4] = SAFE_ADDRESS
        try:
            if 0 < int(bits[5]) < 65536:
                bits[5] = str(sink_port)
        except ValueError:
            pass
        return "candidate:" + " ".join(bits)

    return _CANDIDATE_RE.sub(fix, text)


# ------------------------------------------------------------------ strategies

ANY_CHAR = st.characters(exclude_categories=())  # lone surrogates included
KNOWN_KEYS = (
    "type", "room", "name", "token", "sdp", "tracks", "candidate", "sdpMid", "sdpMLineIndex",
    "trackId", "muted", "maxWidth", "maxHeight", "paused", "publish", "subscribe", "source",
    "participantId", "identity", "metadata", "__proto__", "constructor", "",
)
INTERESTING_STRINGS = (
    "", " ", "\x00", "\t\n", "calm ", "CALM", "fz0", "demo", "join", "offer", "ping", "pong", "null",
    "true", "0", "-1", "NaN", "TR_", "PA_", "TR_00000000", "PA_00000000", "\u202e", "\ufeff", "\u200b",
    "\U0001f4a5", "a" * 64, "a" * 65, "../../etc/passwd", "%s%s%n", "${jndi:ldap://127.0.0.1/x}",
    "<script>alert(1)</script>", "'; DROP TABLE rooms; --", "\r\n\r\n", "\ud800", "\udfff", "\ud83d\ude00",
    "\ud83d", "\U0010ffff", "\x7f", "\xff", OWN_TRACK, SUB_TRACK, ROOM_TRACK, CALM_TRACK, CALM_PARTICIPANT,
)
WRONG_VALUES = (
    None, True, False, 0, -1, 1, 1.5, -0.0, 2**31, 2**31 - 1, 2**53 + 1, 2**63, -(2**63), 2**64, 10**100,
    1e308, -1e308, 5e-324, float("inf"), float("-inf"), float("nan"), "", "0", "true", "null", [], {}, [None],
    {"": None}, "x" * 65, "x" * 1025, " calm ", "\ud800", [[[[[]]]]], {"type": "ping"},
)
EDGE_INTS = (0, 1, -1, 2, 16383, 16384, 16385, 65535, 65536, 2**31 - 1, 2**31, 2**32, 2**63 - 1, 2**63, 2**64, -(2**63), 10**30)

CONSTANTS = (None, True, False, *EDGE_INTS, -(10**60), 10**60, 1.5, -0.0, 1e308, 5e-324, float("inf"), float("nan"), *INTERESTING_STRINGS)
short_text = st.text(ANY_CHAR, max_size=24)
strings = st.one_of(short_text, st.sampled_from(INTERESTING_STRINGS))
scalars = st.one_of(
    st.sampled_from(CONSTANTS),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    short_text,
)
json_keys = st.one_of(st.sampled_from(KNOWN_KEYS), short_text)
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(json_keys, children, max_size=4),
    ),
    max_leaves=10,
)


BOOLS = st.booleans()
_PICKS: dict[str, st.SearchStrategy[Any]] = {}


def _pick(options: Any) -> st.SearchStrategy[Any]:
    """``st.sampled_from(options)``, made once per distinct list (a strategy built
    afresh at every draw costs more than the draw: hypothesis validates it)."""
    key = repr(options)
    strategy = _PICKS.get(key)
    if strategy is None:
        strategy = _PICKS[key] = st.sampled_from(options)
    return strategy


@functools.cache
def _int(low: int, high: int) -> st.SearchStrategy[int]:
    return st.integers(low, high)


MESSAGE_TYPES_ANY = st.one_of(st.sampled_from(CLIENT_TYPES), strings, json_values)
EXTRA_FIELDS = st.dictionaries(json_keys, json_values, max_size=3)
DEPTHS = st.one_of(st.integers(1, 60), st.integers(900, 1100), st.integers(3_000, 20_000), st.integers(20_000, 130_000))
HUGE_SIZES = st.one_of(
    st.integers(1_000, 120_000),
    st.integers(MAX_MESSAGE_BYTES - 40, MAX_MESSAGE_BYTES + 40),
    st.integers(MAX_MESSAGE_BYTES, 2 * MAX_MESSAGE_BYTES),
)
FORGED_CLAIM_VALUES = st.one_of(
    st.just({"room": CALM_ROOM, "roomJoin": True, "roomAdmin": True, "canPublish": True}),
    st.just(2**62), st.just(1), json_values,
)
SECRETS = st.binary(min_size=32, max_size=40)
SDP_NUMBERS = st.one_of(st.sampled_from(("0", "-1", "1", "255", "256", "65535", "65536", "4294967295", "4294967296",
                                         "18446744073709551616", "1" + "0" * 40, "+7", "0x10", "1e3")),
                        st.integers(-(2**70), 2**70).map(str))
UNICODE_BITS = st.text(ANY_CHAR, min_size=1, max_size=4)
SDP_MIDS = st.one_of(st.sampled_from(["0", "1", "99", ""]), st.none(), short_text)
MLINE_INDEXES = st.one_of(st.sampled_from([0, 1, 1023, 1024, -1]), st.none(), st.booleans())
WRONG_OR_RANDOM = st.one_of(st.sampled_from(WRONG_VALUES), json_values)
ODD_NUMBERS = st.one_of(st.sampled_from(EDGE_INTS), st.floats(), st.integers())
BINARY_300 = st.binary(max_size=300)
BINARY_1_300 = st.binary(min_size=1, max_size=300)
RAW_TEXTS = st.one_of(short_text, st.text(max_size=300), st.sampled_from(["null", "[]", "{}", '""', "1", "true", "{", "}", '{"type"}', '{"type":}']))
PRELUDE_NAMES = st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-", min_size=1, max_size=12)


@st.composite
def encoded(draw: st.DrawFn, value: Any, family: str) -> Frame:
    """``value`` serialized as JSON in one of several ways (ASCII-escaped or not,
    compact, indented), as a text frame."""
    ensure_ascii = draw(BOOLS)
    separators = draw(_pick([None, (",", ":"), (" , ", " : ")]))
    indent = draw(_pick([None, None, None, 0, 2, "\t"]))
    try:
        text = json.dumps(value, ensure_ascii=ensure_ascii, separators=separators, indent=indent)
    except (ValueError, RecursionError):
        text = json.dumps(repr(value))
    return text_frame(text, family)


@st.composite
def random_json_frames(draw: st.DrawFn) -> Frame:
    """(a) Any JSON value, or an object with a message type and random fields."""
    value = draw(json_values)
    if draw(BOOLS):
        extra = draw(EXTRA_FIELDS)
        value = {"type": draw(MESSAGE_TYPES_ANY), **extra}
    return draw(encoded(value, "json_random"))


@st.composite
def deep_frames(draw: st.DrawFn) -> Frame:
    """(a) JSON nested deeply: lists, objects, both, unbalanced, inside a message."""
    depth = draw(DEPTHS)
    shape = draw(_pick(["list", "object", "mixed", "unbalanced", "in_message", "string_in_list"]))
    if shape == "list":
        text = "[" * depth + "]" * depth
    elif shape == "object":
        depth = min(depth, 50_000)
        text = '{"a":' * depth + "0" + "}" * depth
    elif shape == "mixed":
        depth = min(depth, 60_000)
        text = '[{"t":' * (depth // 2) + "null" + "}]" * (depth // 2)
    elif shape == "unbalanced":
        text = draw(_pick(["[", "{\"a\":", "[{\"x\":"])) * depth
    elif shape == "in_message":
        depth = min(depth, 120_000)
        kind = draw(_pick(CLIENT_TYPES))
        key = draw(_pick(["tracks", "candidate", "room", "maxWidth", "x"]))
        text = f'{{"type":"{kind}","{key}":{"[" * depth + "]" * depth}}}'
    else:
        text = "[" * depth + '"' + "x" * 100 + '"' + "]" * depth
    return text_frame(text, "deep")


@st.composite
def huge_frames(draw: st.DrawFn) -> Frame:
    """(a) One huge string (or number) in a message, below, at and above the limit."""
    target = draw(HUGE_SIZES)
    unit = draw(_pick(["a", " ", "\u00e9", "\U0001f4a5", "\\u0000", "\\ud800", "\\\"", "9"]))
    place = draw(_pick(["name", "room", "token", "sdp", "trackId", "type", "key", "bare", "number", "candidate"]))
    prefix, suffix = {
        "name": ('{"type":"join","room":"fz0","name":"', '"}'),
        "room": ('{"type":"join","name":"n","room":"', '"}'),
        "token": ('{"type":"join","token":"', '"}'),
        "sdp": ('{"type":"offer","sdp":"', '"}'),
        "trackId": ('{"type":"track_settings","trackId":"', '"}'),
        "type": ('{"type":"', '"}'),
        "key": ('{"type":"ping","', '":1}'),
        "bare": ('"', '"'),
        "number": ('{"type":"track_settings","trackId":"t","maxWidth":', "}"),
        "candidate": ('{"type":"candidate","candidate":{"candidate":"', '"}}'),
    }[place]
    if place == "number":
        unit = "9"
    fill = max(0, target - len(prefix) - len(suffix))
    count = max(1, fill // len(unit.encode("utf-8")))
    return text_frame(prefix + unit * count + suffix, "huge")


# --- (b) structurally valid messages of every type, then mutated

room_chars = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-"
valid_rooms = st.one_of(st.sampled_from(FUZZ_ROOMS), st.text(room_chars, min_size=1, max_size=64)).filter(lambda r: r != CALM_ROOM)
PRELUDE_ROOMS = st.one_of(st.sampled_from(FUZZ_ROOMS[:2]), st.sampled_from(FUZZ_ROOMS[:2]), valid_rooms)
rooms = st.one_of(
    valid_rooms,
    valid_rooms,
    st.sampled_from(["", " ", "a" * 65, "a" * 257, "fz 0", "fz0\n", "fz0\x00", "fz/0", "c\u0430lm", "\ud800", "."]),
    st.text(ANY_CHAR, min_size=1, max_size=20),
)
names = st.one_of(
    st.text(min_size=1, max_size=20).filter(lambda n: n.strip() != ""),
    st.sampled_from(["", " ", "\t \n", "n" * 64, "n" * 65, " " + "n" * 64 + " ", "n" * 257, "\ud800", "\u202eevil", "\x00"]),
    st.text(ANY_CHAR, min_size=1, max_size=70),
)
track_refs = st.one_of(
    st.sampled_from([OWN_TRACK, OWN_TRACK, SUB_TRACK, ROOM_TRACK, CALM_TRACK, CALM_PARTICIPANT, "TR_00000000"]),
    strings,
)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@functools.cache
@st.composite
def tokens(draw: st.DrawFn, ctx: FuzzContext) -> Any:
    """Valid tokens of the fuzz rooms, forged ones and garbage."""
    base = draw(_pick(ctx.tokens))
    header, payload, signature = base.split(".")
    claims = json.loads(_unb64(payload))
    how = draw(
        st.sampled_from(
            ["valid", "valid", "claims", "alg_none", "wrong_secret", "other_alg", "truncate", "flip",
             "garbage", "long", "segments", "unicode", "not_string"]
        )
    )
    if how == "valid":
        return base
    if how == "claims":  # the payload changed under the old signature
        forged = dict(claims)
        for _ in range(draw(_int(1, 3))):
            key = draw(_pick(["video", "sub", "exp", "nbf", "iss", "name", "metadata", "kind", "x"]))
            forged[key] = draw(FORGED_CLAIM_VALUES)
        return f"{header}.{_b64(json.dumps(forged).encode())}.{signature}"
    if how == "alg_none":
        head = _b64(json.dumps({"alg": draw(_pick(["none", "None", "NONE", ""])), "typ": "JWT"}).encode())
        return f"{head}.{payload}." + draw(_pick(["", signature]))
    if how in ("wrong_secret", "other_alg"):
        forged = dict(claims)
        if draw(BOOLS):
            forged["video"] = {"room": CALM_ROOM, "roomJoin": True}
        secret = draw(SECRETS)
        algorithm = "HS256" if how == "wrong_secret" else draw(_pick(["HS384", "HS512"]))
        with warnings.catch_warnings():  # a 32-byte key is short for HS384/HS512: no matter here
            warnings.simplefilter("ignore")
            return jwt.encode(forged, secret, algorithm=algorithm)
    if how == "truncate":
        return base[: draw(_int(0, len(base) - 1))]
    if how == "flip":
        i = draw(_int(0, len(base) - 1))
        return base[:i] + draw(_pick("AQgw-_.=+/ \x00")) + base[i + 1:]
    if how == "garbage":
        return draw(strings)
    if how == "long":
        return draw(_pick(["a" * (MAX_TOKEN_BYTES + 1), base + "." + "A" * MAX_TOKEN_BYTES, "A" * MAX_TOKEN_BYTES]))
    if how == "segments":
        return draw(_pick([".", "..", "...", "a.b", "a.b.c.d", f"{header}.{payload}", f"{header}..{signature}"]))
    if how == "unicode":
        i = draw(_int(0, len(base)))
        return base[:i] + draw(_pick(["\ud800", "\u00e9", "\U0001f4a5", "\x00", "\udfff"])) + base[i:]
    return draw(json_values)


@functools.cache
@st.composite
def join_messages(draw: st.DrawFn, ctx: FuzzContext) -> dict[str, Any]:
    msg: dict[str, Any] = {"type": "join"}
    if draw(BOOLS):
        msg["token"] = draw(tokens(ctx))
        if draw(BOOLS):
            msg["room"] = draw(rooms)
        if draw(BOOLS):
            msg["name"] = draw(names)
    else:
        msg["room"] = draw(rooms)
        msg["name"] = draw(names)
    return msg


SDP_SNIPPETS = (
    "a=simulcast:send q;h;f", "a=simulcast:send q;h;f;x;y;z", "a=simulcast:send " + ";".join(str(i) for i in range(60)),
    "a=simulcast:recv q", "a=rid:q send", "a=rid:h send max-width=640;max-height=360", "a=rid:f send",
    "a=rid:" + "r" * 300 + " send", "a=ssrc-group:FID 1 2", "a=ssrc-group:SIM 1 2 3", "a=ssrc:4294967295 cname:x",
    "a=ssrc:0 msid:a b", "a=ssrc:-1 cname:", "a=extmap:1 urn:ietf:params:rtp-hdrext:sdes:mid",
    "a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id",
    "a=extmap:11 urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id",
    "a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01", "a=extmap:256 x",
    "a=extmap:0 urn:ietf:params:rtp-hdrext:ssrc-audio-level", "a=mid:", "a=mid:" + "m" * 100, "a=mid:0",
    "a=group:BUNDLE 0 1 2 99", "a=group:BUNDLE", "a=group:LS 0 1", "a=setup:holdconn", "a=setup:passive",
    "a=setup:active", "a=fingerprint:sha-256 00", "a=fingerprint:md5 AA:BB", "a=fingerprint:", "a=ice-ufrag:",
    "a=ice-pwd:x", "a=ice-ufrag:" + "u" * 300, "a=ice-lite", "a=rtpmap:96 AV1/90000", "a=rtpmap:97 rtx/90000",
    "a=fmtp:97 apt=255", "a=fmtp:97 apt=", "a=fmtp:96 profile-level-id=zzzzzz", "a=fmtp:102 packetization-mode=9",
    "a=rtcp-fb:96 nack pli", "a=rtcp-fb:* transport-cc", "a=rtcp-mux", "a=rtcp:9 IN IP4 127.0.0.1",
    "a=sctp-port:0", "a=sctp-port:99999", "a=sctp-port:x", "a=max-message-size:-1", "a=max-message-size:99999999999999999999",
    "m=video 9 UDP/TLS/RTP/SAVPF 96 97", "m=audio 0 UDP/TLS/RTP/SAVPF 111", "m=audio 9 UDP/TLS/RTP/SAVPF",
    "m=application 9 UDP/DTLS/SCTP webrtc-datachannel", "m=application 9 DTLS/SCTP 5000", "m=text 9 RTP/AVP 0",
    "m=video 9 RTP/AVP", "m=video", "m=", "c=IN IP4 0.0.0.0", "c=IN IP6 ::1", "c=IN", "a=end-of-candidates",
    "a=sendrecv", "a=inactive", "a=recvonly", "a=sendonly", "a=msid:- -", "a=msid:", "b=AS:-1", "b=TIAS:99999999999999",
    "t=0 0", "t=", "s=", "o=- 0 0 IN IP4 127.0.0.1", "o=", "v=1", "v=0", "a=", "=", "a=rtpmap:", "a=fmtp:",
    "a=rtpmap:96 VP8/0", "a=rtpmap:111 opus/48000/0", "a=rtpmap:300 VP8/90000", "a=rtpmap:96 H264/90000",
    "a=rtpmap:-5 VP8/90000", "a=rtpmap:96 VP8", "a=candidate:", "a=candidate:1 1 udp 2122260223 127.0.0.1 {sink} typ host",
    "a=candidate:1 1 udp 2122260223 127.0.0.1 0 typ host", "a=candidate:1 1 udp 2122260223 127.0.0.1 99999 typ host",
    "a=candidate:1 1 udp x 127.0.0.1 {sink} typ host", "a=candidate:1 1 tcp 1 127.0.0.1 {sink} typ host tcptype passive",
    "a=candidate:1 1 udp 1 127.0.0.1 {sink} typ relay raddr 127.0.0.1 rport x", "a=candidate:1 1 udp 1 ::: {sink} typ host",
    "a=candidate:1 1 udp 1 not-an-address {sink} typ host", "a=candidate:1 9 udp 1 127.0.0.1 {sink} typ host",
)
SDP_INSERTS = st.one_of(st.sampled_from(SDP_SNIPPETS), strings)


@functools.cache
@st.composite
def sdps(draw: st.DrawFn, ctx: FuzzContext) -> str:
    """A valid aiortc offer, one with mutated lines, or not SDP at all."""
    how = draw(_pick(["valid", "mutated", "mutated", "mutated", "garbage", "edge"]))
    if how == "garbage":
        return draw(strings)
    if how == "edge":
        return draw(
            st.sampled_from(
                ["", "v=0", "v=0\r\n", "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n",
                 "v=0\r\n" + "a=x\r\n" * 20_000, "\r\n" * 1000, "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n" * 200]
            )
        )
    offer = draw(_pick(ctx.offers))
    if how == "valid":
        return offer.sdp
    lines = offer.sdp.split("\r\n")
    for _ in range(draw(_int(1, 5))):
        if not lines:
            lines = [""]
        op = draw(_pick(["delete", "duplicate", "swap", "number", "insert", "insert", "truncate", "replace", "separator", "unicode", "case"]))
        i = draw(_int(0, len(lines) - 1))
        if op == "delete":
            del lines[i]
        elif op == "duplicate":
            lines[i:i] = [lines[i]] * draw(_int(1, 30))
        elif op == "swap":
            j = draw(_int(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        elif op == "number":
            runs = list(re.finditer(r"\d+", lines[i]))
            if runs:
                run = runs[draw(_int(0, len(runs) - 1))]
                value = draw(SDP_NUMBERS)
                lines[i] = lines[i][: run.start()] + value + lines[i][run.end():]
        elif op == "insert":
            lines.insert(i, draw(SDP_INSERTS).replace("{sink}", str(ctx.sink_port)))
        elif op == "truncate":
            text = "\r\n".join(lines)
            lines = text[: draw(_int(0, len(text)))].split("\r\n")
        elif op == "replace":
            lines[i] = draw(strings)
        elif op == "separator":
            sep = draw(_pick(["\n", "\r", "\r\r\n", "\x0b", "\u2028", "\x00", " "]))
            return sanitize_candidates(sep.join(lines), ctx.sink_port)
        elif op == "unicode":
            j = draw(_int(0, len(lines[i])))
            lines[i] = lines[i][:j] + draw(UNICODE_BITS) + lines[i][j:]
        else:
            lines[i] = lines[i].upper()
    return sanitize_candidates("\r\n".join(lines), ctx.sink_port)


_BINDING = st.one_of(
    st.fixed_dictionaries({"publish": st.fixed_dictionaries({}, optional={"source": st.one_of(st.sampled_from(TRACK_SOURCES), strings), "muted": st.one_of(st.booleans(), json_values)})}),
    st.fixed_dictionaries({"publish": st.one_of(st.none(), json_values)}),
    st.fixed_dictionaries({"subscribe": st.one_of(track_refs, json_values)}),
    st.just({"publish": {}, "subscribe": ROOM_TRACK}),
    st.just({}),
    json_values,
)
RANDOM_BINDINGS = st.one_of(
    st.dictionaries(st.one_of(st.sampled_from(["0", "1", "2", "3", "4"]), strings), _BINDING, max_size=5),
    st.just({str(i): {"publish": {}} for i in range(20)}),
    st.none(),
    json_values,
)


@functools.cache
@st.composite
def track_bindings(draw: st.DrawFn, ctx: FuzzContext, offer: Offer | None = None) -> Any:
    """``tracks`` of an offer: bindings that fit ``offer``'s m-lines, or random ones."""
    if offer is not None and draw(_int(0, 3)) > 0:
        out: dict[str, Any] = {}
        for mid, kind, direction in offer.media:
            if kind == "application" or draw(_int(0, 7)) == 0:
                continue
            if direction in ("sendonly", "sendrecv"):
                source = draw(_pick(["camera", "screen", "custom"] if kind == "video" else ["microphone", "screen_audio", "custom"]))
                spec: dict[str, Any] = {"source": source}
                if draw(BOOLS):
                    spec["muted"] = draw(BOOLS)
                out[mid] = {"publish": spec}
            else:
                out[mid] = {"subscribe": draw(_pick([ROOM_TRACK, ROOM_TRACK, SUB_TRACK, CALM_TRACK, "TR_00000000"]))}
        return out
    return draw(RANDOM_BINDINGS)


@functools.cache
@st.composite
def offer_messages(draw: st.DrawFn, ctx: FuzzContext) -> dict[str, Any]:
    offer = draw(_pick(ctx.offers))
    msg: dict[str, Any] = {"type": "offer", "sdp": offer.sdp if draw(_int(0, 3)) == 0 else draw(sdps(ctx))}
    if draw(_int(0, 4)) > 0:
        msg["tracks"] = draw(track_bindings(ctx, offer))
    return msg


@functools.cache
@st.composite
def candidate_strings(draw: st.DrawFn, ctx: FuzzContext) -> str:
    prefix = draw(_pick(["candidate:", "candidate:", "", "CANDIDATE:", "candidate: "]))
    foundation = draw(_pick(["1", "0", "abc", "x" * 40, ""]))
    component = draw(_pick(["1", "2", "0", "-1", "99999999999999999999", "x"]))
    transport = draw(_pick(["udp", "UDP", "tcp", "sctp", ""]))
    priority = draw(_pick(["2122260223", "0", "-1", "4294967296", "x", "1e9"]))
    address = draw(_pick([SAFE_ADDRESS, SAFE_ADDRESS, SAFE_ADDRESS, "999.1.1.1", "not-an-address", "127.0.0.1.1", "", "localhost", "::::", "0x7f000001"]))
    port = draw(_pick([str(ctx.sink_port), str(ctx.sink_port), "0", "-1", "65536", "99999999999999999999", "x", ""]))
    kind = draw(_pick(["host", "srflx", "relay", "prflx", "bogus", ""]))
    tail = draw(_pick(["", "", " generation 0", " raddr 127.0.0.1 rport 9", " raddr", " rport x", " tcptype active", " ufrag abcd network-id 1"]))
    line = f"{prefix}{foundation} {component} {transport} {priority} {address} {port} typ {kind}{tail}"
    if draw(_int(0, 5)) == 0:
        line = draw(strings) if draw(BOOLS) else line[: draw(_int(0, len(line)))]
    return sanitize_candidates(line, ctx.sink_port)


@functools.cache
@st.composite
def candidate_messages(draw: st.DrawFn, ctx: FuzzContext) -> dict[str, Any]:
    how = draw(_int(0, 9))
    if how == 0:
        return {"type": "candidate", "candidate": None}
    if how == 1:
        return {"type": "candidate", "candidate": {"candidate": ""}}
    if how == 2:
        return {"type": "candidate"}
    candidate: dict[str, Any] = {"candidate": draw(candidate_strings(ctx))}
    if draw(BOOLS):
        candidate["sdpMid"] = draw(SDP_MIDS)
    if draw(BOOLS):
        candidate["sdpMLineIndex"] = draw(MLINE_INDEXES)
    if draw(_int(0, 5)) == 0:
        candidate["usernameFragment"] = draw(strings)
    return {"type": "candidate", "candidate": candidate}


mute_messages = st.fixed_dictionaries({"type": st.just("mute"), "trackId": track_refs, "muted": st.booleans()})
unpublish_messages = st.fixed_dictionaries({"type": st.just("unpublish"), "trackId": track_refs})
sizes = st.one_of(st.none(), st.integers(1, 16384), st.sampled_from(EDGE_INTS))
track_settings_messages = st.fixed_dictionaries(
    {"type": st.just("track_settings"), "trackId": track_refs},
    optional={"maxWidth": sizes, "maxHeight": sizes, "paused": st.booleans()},
)
leave_messages = st.just({"type": "leave"})
ping_messages = st.just({"type": "ping"})


@functools.cache
def valid_messages(ctx: FuzzContext, kind: str) -> st.SearchStrategy[dict[str, Any]]:
    """A structurally valid message of type ``kind`` (its values may still be refused)."""
    if kind == "join":
        return join_messages(ctx)
    if kind == "offer":
        return offer_messages(ctx)
    if kind == "candidate":
        return candidate_messages(ctx)
    return {
        "mute": mute_messages,
        "unpublish": unpublish_messages,
        "track_settings": track_settings_messages,
        "leave": leave_messages,
        "ping": ping_messages,
    }[kind]


def _mangle_type(draw: st.DrawFn, kind: str) -> Any:
    how = draw(_int(0, 8))
    if how == 0:
        return kind.upper()
    if how == 1:
        return f" {kind}"
    if how == 2:
        return kind + "\x00"
    if how == 3:
        return kind.replace("o", "\u043e").replace("i", "\u0456").replace("e", "\u0435")
    if how == 4:
        return draw(_pick(CLIENT_TYPES + ("pong", "joined", "answer", "error", "subscribe", "data", "")))
    if how == 5:
        return kind * 40
    if how == 6:
        return [kind]
    return draw(json_values)


@functools.cache
@st.composite
def mutated_messages(draw: st.DrawFn, ctx: FuzzContext) -> Frame:
    """(b) A valid message of a random type, then 0-4 mutations of its fields."""
    kind = draw(_pick(CLIENT_TYPES))
    msg = dict(draw(valid_messages(ctx, kind)))
    for _ in range(draw(_int(0, 4))):
        op = draw(_pick(["drop", "wrong", "random", "extra", "extra", "type", "nested", "number"]))
        keys = list(msg)
        if op == "drop" and keys:
            del msg[keys[draw(_int(0, len(keys) - 1))]]
        elif op == "wrong" and keys:
            msg[keys[draw(_int(0, len(keys) - 1))]] = draw(_pick(WRONG_VALUES))
        elif op == "random" and keys:
            msg[keys[draw(_int(0, len(keys) - 1))]] = draw(json_values)
        elif op == "extra":
            msg[draw(json_keys)] = draw(json_values)
        elif op == "type":
            msg["type"] = _mangle_type(draw, kind)
        elif op == "nested":
            nested = [k for k, v in msg.items() if isinstance(v, dict) and v]
            if nested:
                key = nested[draw(_int(0, len(nested) - 1))]
                inner = dict(msg[key])
                inner_key = list(inner)[draw(_int(0, len(inner) - 1))]
                inner[inner_key] = draw(WRONG_OR_RANDOM)
                msg[key] = inner
        elif op == "number":
            msg[draw(_pick(["maxWidth", "maxHeight", "sdpMLineIndex", "muted", "paused"]))] = draw(ODD_NUMBERS)
    if draw(_int(0, 15)) == 0:  # a duplicate key, which only raw JSON can hold
        text = json.dumps(msg)
        text = text[:-1] + (", " if len(msg) else "") + f'"type": {json.dumps(draw(json_values))}}}'
        return text_frame(text, f"mutated_{kind}")
    return draw(encoded(msg, f"mutated_{kind}"))


# --- (c) raw frames


@functools.cache
@st.composite
def raw_frames(draw: st.DrawFn, ctx: FuzzContext) -> Frame:
    """(c) Not a JSON message: random bytes (binary or text frames), byte-mutated JSON
    messages, random text."""
    how = draw(_pick(["binary", "binary_json", "bytes_text", "mutated", "mutated", "mutated", "text", "big_binary"]))
    if how == "binary":
        return Frame("binary", draw(BINARY_300), "raw_binary")
    if how == "binary_json":
        return Frame("binary", json.dumps(draw(valid_messages(ctx, draw(_pick(CLIENT_TYPES))))).encode(), "raw_binary")
    if how == "big_binary":
        return Frame("binary", b"\x00" * draw(_pick([70_000, MAX_MESSAGE_BYTES - 1, MAX_MESSAGE_BYTES, MAX_MESSAGE_BYTES + 1])), "raw_binary")
    if how == "bytes_text":
        return bytes_text_frame(draw(BINARY_1_300), "raw_bytes")
    if how == "text":
        return text_frame(draw(RAW_TEXTS), "raw_text")
    base = json.dumps(draw(valid_messages(ctx, draw(_pick(CLIENT_TYPES))))).encode()
    data = bytearray(base)
    for _ in range(draw(_int(1, 4))):
        op = draw(_pick(["flip", "delete", "insert", "truncate", "duplicate", "byte"]))
        i = draw(_int(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[i] ^= 1 << draw(_int(0, 7))
        elif op == "delete":
            del data[i: i + draw(_int(1, 8))]
        elif op == "insert":
            data[i:i] = draw(_pick([b"{", b"}", b"[", b"]", b'"', b"\\", b",", b":", b"\\u", b"\\ud800", b"\x00", b"\xff", b"\xed\xa0\x80", b"\xc3", b"NaN", b"-", b"e999"]))
        elif op == "truncate":
            del data[draw(_int(0, len(data))):]
        elif op == "duplicate":
            data[i:i] = data[i: i + draw(_int(1, 40))]
        else:
            if data:
                data[i] = draw(_int(0, 255))
    return bytes_text_frame(bytes(data), "raw_mutated")


FAMILY_WEIGHTS = {  # per 100 frames
    "json_random": 17,
    "deep": 3,
    "huge": 2,
    "mutated": 58,
    "raw": 20,
}


@functools.cache
def frames(ctx: FuzzContext) -> st.SearchStrategy[Frame]:
    """One fuzz frame of any family, in the proportions of ``FAMILY_WEIGHTS``."""
    families = {
        "json_random": random_json_frames(),
        "deep": deep_frames(),
        "huge": huge_frames(),
        "mutated": mutated_messages(ctx),
        "raw": raw_frames(ctx),
    }
    choices = [name for name, weight in FAMILY_WEIGHTS.items() for _ in range(weight)]
    return st.sampled_from(choices).flatmap(lambda name: families[name])


@functools.cache
def frame_lists(ctx: FuzzContext, max_frames: int) -> st.SearchStrategy[list[Frame]]:
    return st.lists(frames(ctx), min_size=8, max_size=max_frames)


@functools.cache
@st.composite
def scripts(draw: st.DrawFn, ctx: FuzzContext, max_frames: int = 40) -> list[Frame]:
    """One connection's frames: often a valid join (and offer) first, then fuzz."""
    out: list[Frame] = []
    prelude = draw(_pick(["none", "join", "join", "join_offer"]))
    if prelude != "none":
        room = draw(PRELUDE_ROOMS)
        if draw(_int(0, 3)) == 0:
            join: dict[str, Any] = {"type": "join", "token": draw(_pick(ctx.tokens))}
        else:
            join = {"type": "join", "room": room, "name": draw(PRELUDE_NAMES)}
        out.append(text_frame(json.dumps(join), "prelude_join"))
        if prelude == "join_offer":
            offer = draw(_pick(ctx.offers))
            tracks = draw(track_bindings(ctx, offer))
            out.append(text_frame(json.dumps({"type": "offer", "sdp": offer.sdp, "tracks": tracks}), "prelude_offer"))
    out.extend(draw(frame_lists(ctx, max_frames)))
    return out


@functools.cache
def examples(ctx: FuzzContext) -> st.SearchStrategy[list[list[Frame]]]:
    """One example: 2-3 scripts, run on concurrent connections."""
    return st.lists(scripts(ctx), min_size=2, max_size=3)


# ------------------------------------------------------------------ the oracle


@dataclass(frozen=True, slots=True)
class Expect:
    """What must answer a frame: ``error`` (with one of ``codes``), ``reply``
    (``reply`` or any error), ``close`` (one of ``closes``) or ``maybe`` (an error or
    nothing). An error with a code of ``also`` is accepted in every case."""

    kind: str
    codes: tuple[str, ...] = ()
    reply: str | None = None
    closes: tuple[int, ...] = ()
    also: tuple[str, ...] = ("rate_limited",)
    message_type: str | None = None  # the frame's type when it parsed
    barrier: bool = False  # wait for its answer before sending more (it changes state)


def expect_for(frame: Frame, text: str | None, max_bytes: int = MAX_MESSAGE_BYTES) -> tuple[Expect, dict[str, Any] | None]:
    """The answer a frame must get, and the message when it parses.

    A frame of the ``deep`` family may also get ``bad_json`` (nested too deeply):
    json's nesting limit is the Python stack depth at the call, not the same in the
    server as here (hypothesis raises the recursion limit, too).
    """
    if frame.size() >= max_bytes:
        # 1009, or 1006 when the server's close frame is lost to the TCP reset that its
        # close causes (it does not read the rest of the frame)
        return Expect("close", closes=(1009, 1006)), None
    if frame.kind == "binary":
        return Expect("error", codes=("bad_json",)), None
    if frame.kind == "raw_text":
        return Expect("close", closes=(1007,)), None
    assert text is not None
    also = ("rate_limited", "bad_json") if frame.family == "deep" else ("rate_limited",)
    try:
        msg = parse_message(text)
    except ProtocolError as exc:
        return Expect("error", codes=(exc.code,), also=also), None
    kind = msg["type"]
    if kind in SILENT_TYPES:
        return Expect("maybe", also=also, message_type=kind), msg
    return Expect("reply", reply=REPLY_TYPES[kind], also=also, message_type=kind, barrier=kind in ("join", "offer", "leave")), msg


# ------------------------------------------------------------------ statistics


@dataclass(slots=True)
class Violation:
    """A frame whose answer broke the property."""

    what: str
    frame: str
    answers: str
    context: list[str]

    def format(self) -> str:
        ctx = "".join(f"\n      after: {c}" for c in self.context)
        return f"  - {self.what}\n      frame: {self.frame}\n      got: {self.answers}{ctx}"


@dataclass(slots=True)
class Stats:
    """Counts over the fuzz: frames judged, by family and outcome; errors by code;
    server closes by code; replies and events by type."""

    messages: int = 0
    bytes_sent: int = 0
    connections: int = 0
    examples: int = 0
    answered: int = 0  # an error (not rate_limited), a reply or an expected close
    rate_limited: int = 0
    silent: int = 0  # a silent-success type that got nothing
    interrupted: int = 0  # the connection closed under it for a reason given (removed, ...)
    skipped_unsafe: int = 0  # frames not sent: ICE off loopback, or a join of the calm room
    run_s: float = 0.0  # time spent sending and reading (the rest: generating)
    families: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    closes: Counter[str] = field(default_factory=Counter)
    replies: Counter[str] = field(default_factory=Counter)
    events: Counter[str] = field(default_factory=Counter)
    unknown: Counter[str] = field(default_factory=Counter)
    violations: list[Violation] = field(default_factory=list)
    violation_kinds: Counter[str] = field(default_factory=Counter)


MAX_VIOLATIONS_KEPT = 50


@dataclass(slots=True)
class _Pending:
    index: int
    frame: Frame
    expect: Expect
    replies: list[dict[str, Any]] = field(default_factory=list)
    own_pong: bool = False
    sent_at: float = 0.0


@dataclass(slots=True)
class _Conn:
    joined: bool = False
    reason: str | None = None  # an event that explains a close
    own_tracks: list[str] = field(default_factory=list)
    sub_tracks: list[str] = field(default_factory=list)
    room_tracks: list[str] = field(default_factory=list)
    history: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=3))
    opened_at: float = field(default_factory=time.monotonic)


# ------------------------------------------------------------------ monitors


class ServerMonitor(threading.Thread):
    """Samples the server's RSS (psutil) and ``sfu_asyncio_tasks`` every ``period`` s."""

    def __init__(self, pid: int, metrics: Callable[[], dict[str, float]], period: float = 1.0) -> None:
        super().__init__(name="server-monitor", daemon=True)
        self.process = psutil.Process(pid)
        self.fetch_metrics = metrics
        self.period = period
        self.samples: list[tuple[float, int, float | None]] = []  # (time, rss, tasks)
        self._stop_event = threading.Event()

    def sample(self) -> tuple[int, float | None]:
        """RSS (bytes) and the asyncio task count (None when /metrics has no gauge) now."""
        rss = self.process.memory_info().rss
        try:
            tasks = self.fetch_metrics().get("sfu_asyncio_tasks")
        except OSError:
            tasks = None
        self.samples.append((time.monotonic(), rss, tasks))
        return rss, tasks

    def run(self) -> None:
        while not self._stop_event.wait(self.period):
            try:
                self.sample()
            except psutil.Error:
                return

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=5)

    def peak_rss(self) -> int:
        return max((s[1] for s in self.samples), default=0)

    def peak_tasks(self) -> float | None:
        values = [s[2] for s in self.samples if s[2] is not None]
        return max(values) if values else None


class CalmPair:
    """The well-behaved pair in room ``calm``, in a child process
    (``python -m tests.fuzz.signaling --calm URL``) that prints a JSON status line
    every 0.5 s; it leaves and exits when its stdin closes."""

    def __init__(self, ws_url: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.fuzz.signaling", "--calm", ws_url],
            cwd=Path(__file__).resolve().parents[2],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.ready: dict[str, Any] | None = None
        self.status: dict[str, Any] = {}
        self.problems: list[str] = []
        self.max_stall_s = 0.0  # longest time between two status lines with more packets (0.5 s apart normally)
        self._last_packets = 0
        self._last_increase: float | None = None
        self._ready_event = threading.Event()
        self._measuring = False
        self._reader = threading.Thread(target=self._read, name="calm-reader", daemon=True)
        self._reader.start()
        self._stderr: list[str] = []
        threading.Thread(target=self._read_stderr, name="calm-stderr", daemon=True).start()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            if len(self._stderr) < 200:
                self._stderr.append(line.rstrip())

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                status = json.loads(line)
            except ValueError:
                continue
            if "ready" in status:
                self.ready = status
                self._ready_event.set()
                continue
            if "failed" in status:
                self.problems.append(f"calm pair failed: {status['failed']}")
                self._ready_event.set()
                continue
            self.status = status
            now = time.monotonic()
            if status["packets"] > self._last_packets:
                if self._measuring and self._last_increase is not None:
                    self.max_stall_s = max(self.max_stall_s, now - self._last_increase)
                self._last_packets = status["packets"]
                self._last_increase = now
            if self._measuring and not self.healthy(status):
                problem = f"calm pair unhealthy: {status}"
                if len(self.problems) < 10:
                    self.problems.append(problem)
        self._ready_event.set()

    @staticmethod
    def healthy(status: dict[str, Any]) -> bool:
        return bool(
            status.get("pub_ws") and status.get("sub_ws") and status.get("peer_present")
            and status.get("pub_pc") == "connected" and status.get("sub_pc") == "connected"
        )

    def wait_ready(self, timeout: float = 60.0) -> dict[str, Any]:
        if not self._ready_event.wait(timeout) or self.ready is None:
            raise RuntimeError(f"the calm pair did not come up: {self.problems} {self._stderr[-20:]}")
        return self.ready

    def start_measuring(self) -> None:
        self._last_increase = time.monotonic()
        self._measuring = True

    @property
    def packets(self) -> int:
        return int(self.status.get("packets", 0))

    def stop(self) -> int:
        """Close its stdin (it leaves), wait, then end it by pid if it lingers."""
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.close()
                self.proc.wait(timeout=15)
            except (subprocess.TimeoutExpired, OSError):
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        return self.proc.returncode


async def _calm_main(url: str) -> None:
    """The calm pair's process: join ``calm``, publish VP8 + Opus, subscribe, report."""
    from loadtest.client import RoomClient
    from loadtest.media import PreEncodedAudioTrack, PreEncodedVideoTrack
    from sfu.rtc.adapter import set_ice_addresses

    set_ice_addresses([SAFE_ADDRESS])
    publisher = RoomClient(url, auto_subscribe=False)
    subscriber = RoomClient(url, count_rtp=True)
    counter = subscriber.counter
    assert counter is not None

    def packets() -> int:
        return sum(s.packets for s in counter.snapshot())

    # Encoding the clips takes seconds of CPU: before joining, or the server's
    # WebSocket heartbeat would find the connection unresponsive.
    tracks = [PreEncodedVideoTrack(), PreEncodedAudioTrack()]
    try:
        await subscriber.join(CALM_ROOM, "calm-subscriber")
        await publisher.join(CALM_ROOM, "calm-publisher")
        track_ids = await publisher.publish(tracks, ["camera", "microphone"])
        await subscriber.wait_until(lambda: set(track_ids) <= subscriber.subscriptions.keys(), timeout=30)
        await subscriber.wait_until(lambda: packets() >= 100, timeout=30)
    except Exception as exc:  # noqa: BLE001 (reported to the parent, which fails)
        print(json.dumps({"failed": f"{type(exc).__name__}: {exc}"}), flush=True)
        await asyncio.gather(publisher.close(), subscriber.close())
        return
    print(json.dumps({"ready": True, "tracks": track_ids, "publisher": publisher.participant_id,
                      "subscriber": subscriber.participant_id}), flush=True)
    eof = asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    try:
        while not eof.done():
            status = {
                "t": time.monotonic(),
                "packets": packets(),
                "pub_ws": publisher.connected,
                "sub_ws": subscriber.connected,
                "pub_pc": publisher.pc.connectionState if publisher.pc else None,
                "sub_pc": subscriber.pc.connectionState if subscriber.pc else None,
                "peer_present": publisher.participant_id in subscriber.participants,
                "subscriptions": len(subscriber.subscriptions),
                "events": subscriber.events.qsize(),
            }
            print(json.dumps(status), flush=True)
            await asyncio.wait([eof], timeout=0.5)
    finally:
        await asyncio.gather(publisher.leave(), subscriber.leave(), return_exceptions=True)


# ------------------------------------------------------------------ the harness


@dataclass(slots=True)
class Report:
    """What a fuzz run measured; :meth:`format` prints it."""

    stats: Stats
    seconds: float
    rss_start: int
    rss_baseline: int
    rss_peak: int
    rss_end: int
    tasks_start: float | None
    tasks_baseline: float | None
    tasks_peak: float | None
    tasks_end: float | None
    calm_packets: int
    calm_packets_after: int
    calm_max_stall_s: float
    calm_problems: list[str]
    tracebacks: list[str]
    seed: int
    cpu_s: dict[str, float]  # CPU seconds (user + system) during the fuzz: server, fuzzer, calm

    @property
    def messages_per_s(self) -> float:
        return self.stats.messages / self.seconds if self.seconds else 0.0

    def format(self) -> str:
        s = self.stats
        mb = 1024 * 1024
        lines = [
            (f"messages: {s.messages:,} in {self.seconds:.1f} s = {self.messages_per_s:,.0f}/s "
             f"({s.bytes_sent / mb:,.1f} MiB, {s.examples:,} examples, {s.connections:,} connections, seed {self.seed})"),
            (f"answered: {s.answered:,} ({100 * s.answered / max(1, s.messages):.1f} %), rate_limited: {s.rate_limited:,}, "
             f"silent (allowed types): {s.silent:,}, interrupted by a reasoned close: {s.interrupted:,}, "
             f"not sent (ICE off loopback, a join of the calm room): {s.skipped_unsafe:,}"),
            "frames by family: " + ", ".join(f"{k} {v:,}" for k, v in sorted(s.families.items())),
            "errors by code: " + ", ".join(f"{k} {v:,}" for k, v in s.errors.most_common()),
            "replies: " + ", ".join(f"{k} {v:,}" for k, v in s.replies.most_common()),
            "closes by code: " + (", ".join(f"{k} {v:,}" for k, v in s.closes.most_common()) or "none"),
            "events: " + (", ".join(f"{k} {v:,}" for k, v in s.events.most_common()) or "none"),
            (f"server RSS MiB: start {self.rss_start / mb:.1f}, after warm-up {self.rss_baseline / mb:.1f}, "
             f"peak {self.rss_peak / mb:.1f}, end {self.rss_end / mb:.1f}"),
            (f"server asyncio tasks: start {self.tasks_start}, after warm-up {self.tasks_baseline}, "
             f"peak {self.tasks_peak}, end {self.tasks_end}"),
            (f"calm pair: {self.calm_packets:,} packets received during the fuzz, +{self.calm_packets_after:,} in 2 s after; "
             f"longest time without new packets {self.calm_max_stall_s:.1f} s (status every 0.5 s); "
             f"problems: {self.calm_problems or 'none'}"),
            (f"CPU seconds during the fuzz: server {self.cpu_s.get('server', 0):.1f} "
             f"({100 * self.cpu_s.get('server', 0) / max(self.seconds, 1e-9):.0f} % of a core), "
             f"fuzzer {self.cpu_s.get('fuzzer', 0):.1f} (sending and reading {s.run_s:.1f} s of wall time), "
             f"calm pair {self.cpu_s.get('calm', 0):.1f}"),
            f"server log tracebacks: {len(self.tracebacks)}",
            f"property violations: {len(s.violations) if len(s.violations) < MAX_VIOLATIONS_KEPT else str(MAX_VIOLATIONS_KEPT) + '+'}"
            + (" (" + ", ".join(f"{k} {v}" for k, v in s.violation_kinds.most_common()) + ")" if s.violation_kinds else ""),
        ]
        if s.unknown:
            lines.append("undocumented server messages: " + ", ".join(f"{k} {v}" for k, v in s.unknown.items()))
        for violation in s.violations[:10]:
            lines.append(violation.format())
        for tb in self.tracebacks[:3]:
            lines.append("  traceback:\n" + "\n".join("    " + line for line in tb.splitlines()[-25:]))
        return "\n".join(lines)


class SignalingFuzz:
    """Runs hypothesis-generated frames against a running server and checks the
    property (module docstring).

    Args:
        server: the running server (``ws_url``, ``http_url``, ``pid``, ``metrics()``,
            ``log_path``), a :class:`loadtest.server.ServerProcess`.
        calm: run the calm pair (needs media; off only for debugging the harness).
    """

    def __init__(
        self, server: Any, *, calm: bool = True, reply_timeout: float = REPLY_TIMEOUT_S, worker: bool = False
    ) -> None:
        self.server = server
        self.worker = worker  # a helper process of --workers: no calm pair, no monitor
        self.url = server.ws_url
        self.reply_timeout = reply_timeout
        self.stats = Stats()
        self.loop = asyncio.new_event_loop()
        self.http: aiohttp.ClientSession | None = None
        self.sink: asyncio.DatagramTransport | None = None
        self.ctx: FuzzContext | None = None
        self.calm: CalmPair | None = CalmPair(server.ws_url) if calm and not worker else None
        self.calm_ids: dict[str, Any] = {}
        self.monitor = ServerMonitor(server.pid, server.metrics) if not worker else None
        self._workers_cpu = 0.0
        self.rss_start = self.rss_baseline = 0
        self.tasks_start: float | None = None
        self.tasks_baseline: float | None = None
        self.started_at = 0.0
        self.finished_at = 0.0
        self.seed = 0
        self._calm_packets_start = 0
        self._cpu_start: dict[str, float] = {}
        self._violation_keys: set[tuple[str, Any]] = set()
        self._calm_markers: frozenset[str] = frozenset()
        self._cpu_end: dict[str, float] = {}

    def _cpu(self) -> dict[str, float]:
        """CPU seconds so far of the server, this process and the calm pair."""
        out = {}
        pids = {"server": self.server.pid, "fuzzer": os.getpid()}
        if self.calm is not None:
            pids["calm"] = self.calm.proc.pid
        for name, pid in pids.items():
            try:
                times = psutil.Process(pid).cpu_times()
                out[name] = times.user + times.system
            except psutil.Error:
                pass
        return out

    # --- set-up

    def start(self) -> FuzzContext:
        """Fetch tokens, make offers, open the UDP sink, wait for the calm pair;
        then sample the server (the start figures) and start the monitor."""
        self.ctx = self.loop.run_until_complete(self._setup())
        if self.calm is not None:
            self.set_calm_ids(self.calm.wait_ready())
            self.calm.start_measuring()
            self._calm_packets_start = self.calm.packets
        self.started_at = time.monotonic()
        if self.monitor is None:
            return self.ctx
        self.rss_start, self.tasks_start = self.monitor.sample()
        self.rss_baseline, self.tasks_baseline = self.rss_start, self.tasks_start
        self._cpu_start = self._cpu()
        self.monitor.start()
        return self.ctx

    def set_calm_ids(self, ids: dict[str, Any]) -> None:
        """The calm pair's track and participant ids (placeholders, isolation check)."""
        self.calm_ids = ids
        self._calm_markers = frozenset((*ids["tracks"], ids["publisher"], ids["subscriber"]))

    async def _setup(self) -> FuzzContext:
        from sfu.rtc.adapter import set_ice_addresses

        set_ice_addresses([SAFE_ADDRESS])
        self.http = aiohttp.ClientSession()
        loop = asyncio.get_running_loop()
        self.sink, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=(SAFE_ADDRESS, 0))
        sink_port = self.sink.get_extra_info("sockname")[1]
        tokens_: list[str] = []
        for i, room in enumerate(FUZZ_ROOMS):
            for identity in ("", "fuzz-dup"):
                query = {"room": room, "name": f"fuzz-{i}"}
                if identity:
                    query["identity"] = identity
                async with self.http.get(f"{self.server.http_url}/dev/token", params=query) as response:
                    response.raise_for_status()
                    tokens_.append((await response.json())["token"])
        offers = await _make_offers(sink_port)
        return FuzzContext(tokens_, offers, sink_port)

    def mark_baseline(self) -> None:
        """The end of the warm-up: sample the server again (the baseline figures)."""
        if self.monitor is not None:
            self.rss_baseline, self.tasks_baseline = self.monitor.sample()

    # --- running

    def run(
        self,
        messages: int,
        *,
        seed: int = 0,
        batch: int = 100,
        warmup: int = 0,
        time_limit: float | None = None,
        progress: Callable[[SignalingFuzz], None] | None = None,
        progress_every: float = 30.0,
        workers: int = 1,
        counter: Any = None,
    ) -> None:
        """Run hypothesis batches of ``batch`` examples (seeds ``seed``, ``seed+1``, ...)
        until ``messages`` frames have been judged (or ``time_limit`` seconds passed).
        The baseline is taken once ``warmup`` frames are judged.

        ``workers`` > 1 starts that many - 1 helper processes that fuzz the same
        server with their own hypothesis seeds (``seed + 10**6 * n``) and share the
        messages; their counts are added to :attr:`stats` at the end.
        ``counter``: a shared value set to the messages judged so far (helpers)."""
        assert self.ctx is not None
        self.seed = seed
        helpers = self._start_helpers(workers, messages, seed, time_limit) if workers > 1 else []
        if helpers:
            messages = messages - (messages // workers) * (workers - 1)
        strategy = examples(self.ctx)
        deadline = time.monotonic() + time_limit if time_limit else None
        last_progress = time.monotonic()
        baseline_taken = warmup <= 0
        round_ = 0

        def done() -> bool:
            return self.stats.messages >= messages or (deadline is not None and time.monotonic() > deadline)

        while not done():
            @settings(
                max_examples=batch,
                deadline=None,
                database=None,
                derandomize=False,
                phases=[Phase.generate],
                suppress_health_check=list(HealthCheck),
                report_multiple_bugs=False,
            )
            @hypothesis_seed(seed + round_)
            @given(strategy)
            def fuzz(example: list[list[Frame]]) -> None:
                nonlocal baseline_taken, last_progress
                if done():
                    return
                self.run_example(example)
                if counter is not None:
                    counter.value = self.stats.messages
                if not baseline_taken and self.stats.messages >= warmup:
                    self.mark_baseline()
                    baseline_taken = True
                if progress is not None and time.monotonic() - last_progress >= progress_every:
                    last_progress = time.monotonic()
                    progress(self)

            fuzz()
            round_ += 1
        if not baseline_taken:
            self.mark_baseline()
        if helpers:
            self._join_helpers(helpers)
        self.finished_at = time.monotonic()
        if not self.worker:
            self._cpu_end = self._cpu()
            self._cpu_end["fuzzer"] = self._cpu_end.get("fuzzer", 0.0) + self._workers_cpu

    def helper_messages(self) -> int:
        """Messages judged so far by the helper processes."""
        return sum(h[2].value for h in getattr(self, "_helpers", []))

    def _start_helpers(self, workers: int, messages: int, seed: int, time_limit: float | None) -> list[Any]:
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        results = context.Queue()
        helpers = []
        for n in range(1, workers):
            counter = context.Value("q", 0, lock=False)
            process = context.Process(
                target=_helper_main,
                args=(self.server.ws_url, self.server.http_url, self.calm_ids, messages // workers,
                      seed + 10**6 * n, time_limit, counter, results),
                name=f"signaling-fuzz-{n}",
                daemon=True,
            )
            process.start()
            helpers.append((process, results, counter))
        self._helpers = helpers
        return helpers

    def _join_helpers(self, helpers: list[Any]) -> None:
        """Wait for the helpers' results and add them to :attr:`stats`."""
        results = helpers[0][1]
        for _ in helpers:
            stats, cpu = results.get(timeout=EXAMPLE_TIMEOUT_S + 600)
            _merge_stats(self.stats, stats)
            self._workers_cpu += cpu
        for process, _, _ in helpers:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()

    def run_example(self, example: list[list[Frame]]) -> None:
        """Run one example's scripts on concurrent connections."""
        self.stats.examples += 1
        started = time.perf_counter()

        async def run() -> None:
            try:
                await asyncio.wait_for(asyncio.gather(*(self._run_script(s) for s in example)), EXAMPLE_TIMEOUT_S)
            except TimeoutError:
                self.stats.violation_kinds[f"an example took longer than {EXAMPLE_TIMEOUT_S:.0f} s"] += 1
                self.stats.violations.append(
                    Violation(f"an example took longer than {EXAMPLE_TIMEOUT_S:.0f} s", "", "",
                              [f.preview(120) for script in example for f in script][:10])
                )

        self.loop.run_until_complete(run())
        self.stats.run_s += time.perf_counter() - started

    async def _run_script(self, script: list[Frame]) -> None:
        # Frames that end the connection (not UTF-8, too big) go last, so that the
        # others reach the state the script's first frames (join, offer) set up.
        script = sorted(script, key=_ends_connection)
        pos = 0
        while pos < len(script):
            pos = await self._run_connection(script, pos)

    async def _run_connection(self, script: list[Frame], pos: int) -> int:
        """Send ``script[pos:]`` on a new connection (at most FRAMES_PER_CONNECTION),
        each frame followed by a ping; judge the answers; return where to go on."""
        assert self.http is not None
        ws = await self.http.ws_connect(
            self.url, max_msg_size=0, autoping=True, heartbeat=None, compress=0,
            timeout=aiohttp.ClientWSTimeout(ws_close=5.0),
        )
        self.stats.connections += 1
        conn = _Conn()
        window: list[_Pending] = []
        sent = 0
        i = pos
        try:
            while i < len(script) and sent < FRAMES_PER_CONNECTION:
                frame = script[i]
                i += 1
                item = self._prepare(frame, conn, i - 1)
                if item is None:
                    continue
                if item.expect.kind == "close":
                    # aiohttp drops what it has read but not handed out when a frame
                    # breaks the connection, and the server resets the TCP connection
                    # when data it did not read follows: answer what went before, then
                    # send this one alone, without its ping.
                    if window:
                        end = await self._drain(ws, conn, window)
                        window = []
                        if end is not None:
                            return end
                    item.sent_at = time.monotonic()
                    await self._send(ws, item.frame, ping=False)
                    end = await self._drain(ws, conn, [item])
                    return end if end is not None else i
                window.append(item)
                sent += 1
                item.sent_at = time.monotonic()
                if not await self._send(ws, item.frame):
                    break
                if item.expect.barrier or sent >= FRAMES_PER_CONNECTION or i >= len(script):
                    end = await self._drain(ws, conn, window)
                    window = []
                    if end is not None:
                        return end
            end = await self._drain(ws, conn, window)
            return end if end is not None else i
        finally:
            if not ws.closed:
                await ws.close()

    def _prepare(self, frame: Frame, conn: _Conn, index: int) -> _Pending | None:
        """Fill in the placeholders, predict the answer; None for a frame skipped
        because it would aim ICE off loopback."""
        text: str | None = None
        if frame.kind == "text":
            text = self._substitute(frame.data, conn) if "@@" in frame.data else frame.data  # type: ignore[operator, arg-type]
            assert isinstance(text, str)
            if text is not frame.data:
                frame = text_frame(text, frame.family)
                if frame.kind != "text":
                    text = None
        expect, msg = expect_for(frame, text)
        if msg is not None:
            assert self.ctx is not None
            if not ice_safe(msg, self.ctx.sink_port):
                self.stats.skipped_unsafe += 1
                return None
            if msg["type"] == "join" and msg.get("room") == CALM_ROOM:  # the calm room is left alone (not counted)
                self.stats.skipped_unsafe += 1
                return None
        return _Pending(index, frame, expect)

    def _substitute(self, text: str, conn: _Conn) -> str:
        tracks = self.calm_ids.get("tracks") or ["TR_calm"]
        values = {
            OWN_TRACK: conn.own_tracks[-1] if conn.own_tracks else "TR_none0000",
            SUB_TRACK: conn.sub_tracks[-1] if conn.sub_tracks else "TR_none0001",
            ROOM_TRACK: conn.room_tracks[-1] if conn.room_tracks else "TR_none0002",
            CALM_TRACK: tracks[0],
            CALM_PARTICIPANT: self.calm_ids.get("publisher") or "PA_calm",
        }
        for placeholder in PLACEHOLDERS:
            if placeholder in text:
                text = text.replace(placeholder, values[placeholder])
        return text

    async def _send(self, ws: aiohttp.ClientWebSocketResponse, frame: Frame, ping: bool = True) -> bool:
        """Send the frame and a ping; False when the connection is gone."""
        try:
            if frame.kind == "text":
                await ws.send_str(frame.data)  # type: ignore[arg-type]
            elif frame.kind == "binary":
                await ws.send_bytes(frame.data)  # type: ignore[arg-type]
            else:
                await ws.send_frame(frame.data, aiohttp.WSMsgType.TEXT)  # type: ignore[arg-type]
            if ping:
                await ws.send_str('{"type":"ping"}')
        except (ConnectionError, RuntimeError, aiohttp.ClientError):
            return False
        self.stats.bytes_sent += frame.size()
        return True

    async def _drain(self, ws: aiohttp.ClientWebSocketResponse, conn: _Conn, window: list[_Pending]) -> int | None:
        """Read until every frame of ``window`` is judged. Returns None when the
        connection is still usable, else the script index to go on from."""
        k = 0
        while k < len(window):
            pending = window[k]
            try:
                msg = await ws.receive(timeout=self.reply_timeout)
            except TimeoutError:
                self._violation(f"no answer and no close within {self.reply_timeout:.0f} s (a hang)", pending, conn, None)
                self._count(pending, None, conn, judged=False)
                await ws.close()
                return pending.index + 1
            if msg.type == aiohttp.WSMsgType.TEXT:
                try:
                    data = json.loads(msg.data)
                except ValueError:
                    self._violation("the server sent a frame that is not JSON", pending, conn, None, extra=msg.data[:200])
                    continue
                if not isinstance(data, dict) or not isinstance(data.get("type"), str):
                    self._violation("the server sent a message without a string 'type'", pending, conn, None, extra=str(data)[:200])
                    continue
                if self._calm_markers and not self._calm_markers.isdisjoint(_server_ids(data)):
                    # a participant or track of the calm room, on a connection that never
                    # joined it (names and error texts may echo what the client sent: not
                    # looked at)
                    self._violation("news of the calm room on a fuzz connection", pending, conn, None, extra=msg.data[:300])
                if data["type"] == "pong" and not (
                    pending.expect.reply == "pong" and not pending.own_pong
                    and not any(r.get("type") == "error" for r in pending.replies)
                ):
                    self._judge(pending, conn, None)
                    k += 1
                    continue
                if data["type"] == "pong":
                    pending.own_pong = True
                    continue
                self._observe(conn, data)
                pending.replies.append(data)
            elif msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
                code = ws.close_code if ws.close_code is not None else (msg.data if isinstance(msg.data, int) else None)
                reason = msg.extra if isinstance(msg.extra, str) else ""
                self._judge(pending, conn, (code, reason))
                return pending.index + 1
            elif msg.type == aiohttp.WSMsgType.ERROR:
                self._violation("WebSocket error on the client side", pending, conn, None, extra=repr(msg.data)[:200])
                self._count(pending, None, conn, judged=False)
                return pending.index + 1
            else:  # BINARY
                self._violation("the server sent a binary frame", pending, conn, None)
        return None

    def _observe(self, conn: _Conn, data: dict[str, Any]) -> None:
        kind = data["type"]
        try:
            if kind == "joined":
                conn.joined = True
                for participant in data.get("participants", []):
                    conn.room_tracks.extend(t["id"] for t in participant.get("tracks", []))
            elif kind == "answer":
                for binding in data.get("tracks", {}).values():
                    if isinstance(binding, dict) and "trackId" in binding:
                        (conn.own_tracks if binding.get("direction") == "publish" else conn.sub_tracks).append(binding["trackId"])
            elif kind == "participant_joined":
                conn.room_tracks.extend(t["id"] for t in data["participant"].get("tracks", []))
            elif kind == "track_published":
                conn.room_tracks.append(data["track"]["id"])
            elif kind in REASON_EVENTS or (kind == "error" and data.get("code") in ASYNC_ERRORS):
                conn.reason = kind if kind != "error" else data.get("code")
        except (KeyError, TypeError, AttributeError) as exc:
            self.stats.unknown[f"malformed {kind}: {exc}"] += 1
        if kind in EVENT_TYPES:
            self.stats.events[kind] += 1
        elif kind not in ("error", "joined", "answer", "left", "pong"):
            self.stats.unknown[kind] += 1

    def _judge(self, pending: _Pending, conn: _Conn, close: tuple[int | None, str] | None) -> None:
        expect = pending.expect
        errors = [r for r in pending.replies if r.get("type") == "error"]
        own_errors = []
        for error in errors:
            code = error.get("code")
            self.stats.errors[str(code)] += 1
            if not isinstance(code, str) or not isinstance(error.get("message"), str):
                self._violation("an error without a string code and message", pending, conn, close)
            elif code == "internal":
                self._violation("an 'internal' error (an unhandled exception in the server)", pending, conn, close)
            if code not in ASYNC_ERRORS:
                own_errors.append(code)
        replies = [r["type"] for r in pending.replies if r.get("type") in ("joined", "answer", "left")]
        if pending.own_pong:
            replies.append("pong")
        for reply in replies:
            self.stats.replies[reply] += 1
        if close is not None:
            self.stats.closes[f"{close[0]}" + (f" ({close[1]})" if close[1] else "")] += 1

        if expect.kind == "close":
            ok = close is not None and close[0] in expect.closes
        elif expect.kind == "error":
            ok = any(code in expect.codes or code in expect.also for code in own_errors)
        elif expect.kind == "reply":
            ok = bool(own_errors) or expect.reply in replies
        else:
            ok = True
        if expect.kind == "close" and not ok:
            if any(code in expect.also for code in own_errors):
                ok = True
            elif conn.reason is not None and close is not None and close[0] in (1000, 1001, 1006):
                self.stats.interrupted += 1  # closed for another reason, given first
                ok = True
        if close is not None and expect.kind != "close":
            # 1006: the close frame was lost to the TCP reset the server's close causes
            # when frames it did not read (the ping after this one) were on their way
            reasoned = ("left" in replies or conn.reason is not None) and close[0] in (1000, 1001, 1006)
            if not reasoned:
                self._violation(f"closed with code {close[0]} without a reason", pending, conn, close)
                ok = True  # counted once
            elif not ok:
                self.stats.interrupted += 1
                ok = True
        if not ok:
            if expect.kind == "error" and own_errors:
                what = f"wrong error code: expected {expect.codes}, got {own_errors}"
            elif expect.kind == "close":
                what = f"expected a close with {expect.closes}, got " + (f"close {close}" if close else "no close")
            else:
                what = f"no answer (expected {expect.kind} {expect.codes or expect.reply or ''})"
            self._violation(what, pending, conn, close)
        self._count(pending, close, conn, judged=True, errors=own_errors, replies=replies)

    def _count(self, pending: _Pending, close: Any, conn: _Conn, *, judged: bool,
               errors: list[Any] | None = None, replies: list[str] | None = None) -> None:
        s = self.stats
        s.messages += 1
        s.families[pending.frame.family] += 1
        conn.history.append(pending.frame.preview(120))
        if not judged:
            return
        if errors and all(e == "rate_limited" for e in errors):
            s.rate_limited += 1
        elif errors or replies or close is not None:
            s.answered += 1
        else:
            s.silent += 1

    def _violation(self, what: str, pending: _Pending, conn: _Conn, close: Any, extra: str = "") -> None:
        s = self.stats
        s.violation_kinds[what.split(":")[0]] += 1
        key = (what, pending.frame.data)
        if key in self._violation_keys:
            return
        self._violation_keys.add(key)
        if len(s.violations) < MAX_VIOLATIONS_KEPT:
            answers = json.dumps(pending.replies, ensure_ascii=True)[:400]
            if close is not None:
                answers += f" close={close}"
            if extra:
                answers += f" {extra}"
            now = time.monotonic()
            answers += f" ({now - pending.sent_at:.2f} s after it was sent, on a connection {now - conn.opened_at:.2f} s old)"
            s.violations.append(Violation(what, pending.frame.preview(), answers, list(conn.history)))

    # --- the end

    def finish(self, settle_s: float = 20.0) -> Report:
        """Stop fuzzing: let the server settle (tasks back to the start), check the calm
        pair is still receiving, take the end figures, scan the server log."""
        assert self.monitor is not None, "finish() is for the main process"
        deadline = time.monotonic() + settle_s
        rss_end, tasks_end = self.monitor.sample()
        while time.monotonic() < deadline:
            if tasks_end is None or self.tasks_start is None or tasks_end <= self.tasks_start + 2:
                break
            time.sleep(1.0)
            rss_end, tasks_end = self.monitor.sample()
        calm_packets = calm_after = 0
        problems: list[str] = []
        stall = 0.0
        if self.calm is not None:
            calm_packets = self.calm.packets - self._calm_packets_start
            before = self.calm.packets
            time.sleep(2.0)
            calm_after = self.calm.packets - before
            problems = list(self.calm.problems)
            if not CalmPair.healthy(self.calm.status):
                problems.append(f"calm pair at the end: {self.calm.status}")
            if calm_after <= 0:
                problems.append("the calm subscriber received nothing in the 2 s after the fuzz")
            stall = self.calm.max_stall_s
        self.monitor.stop()
        return Report(
            stats=self.stats,
            seconds=(self.finished_at or time.monotonic()) - self.started_at,
            rss_start=self.rss_start,
            rss_baseline=self.rss_baseline,
            rss_peak=max(self.monitor.peak_rss(), rss_end),
            rss_end=rss_end,
            tasks_start=self.tasks_start,
            tasks_baseline=self.tasks_baseline,
            tasks_peak=self.monitor.peak_tasks(),
            tasks_end=tasks_end,
            calm_packets=calm_packets,
            calm_packets_after=calm_after,
            calm_max_stall_s=stall,
            calm_problems=problems,
            tracebacks=server_tracebacks(Path(self.server.log_path)),
            seed=self.seed,
            cpu_s={k: v - self._cpu_start.get(k, 0.0) for k, v in (self._cpu_end or self._cpu()).items()},
        )

    def close(self) -> None:
        """Stop the calm pair and the monitor, close the connections and the loop."""
        if self.calm is not None:
            self.calm.stop()
        if self.monitor is not None and self.monitor.is_alive():
            self.monitor.stop()

        async def shut() -> None:
            if self.http is not None:
                await self.http.close()
            if self.sink is not None:
                self.sink.close()

        self.loop.run_until_complete(shut())
        self.loop.close()


def _helper_main(ws_url: str, http_url: str, calm_ids: dict[str, Any], messages: int, seed: int,
                 time_limit: float | None, counter: Any, results: Any) -> None:
    """A helper process of ``--workers``: fuzz ``messages`` frames, send back the
    :class:`Stats` and the CPU seconds it used."""

    class Server:  # what a helper knows of the server
        pass

    server = Server()
    server.ws_url, server.http_url = ws_url, http_url  # type: ignore[attr-defined]
    fuzz = SignalingFuzz(server, worker=True)
    try:
        fuzz.start()
        if calm_ids:
            fuzz.set_calm_ids(calm_ids)
        fuzz.run(messages, seed=seed, time_limit=time_limit, counter=counter)
    finally:
        fuzz.close()
        times = os.times()
        results.put((fuzz.stats, times.user + times.system))


def _merge_stats(into: Stats, other: Stats) -> None:
    """Add ``other``'s counts to ``into``."""
    for name in ("messages", "bytes_sent", "connections", "examples", "answered", "rate_limited", "silent",
                 "interrupted", "skipped_unsafe", "run_s"):
        setattr(into, name, getattr(into, name) + getattr(other, name))
    for name in ("families", "errors", "closes", "replies", "events", "unknown", "violation_kinds"):
        getattr(into, name).update(getattr(other, name))
    into.violations.extend(other.violations[: max(0, MAX_VIOLATIONS_KEPT - len(into.violations))])


def _server_ids(data: dict[str, Any]) -> set[Any]:
    """The participant and track ids a server message names (not names or texts)."""
    ids: set[Any] = set()

    def participant(p: Any) -> None:
        if isinstance(p, dict):
            ids.add(p.get("id"))
            for track in p.get("tracks") or ():
                if isinstance(track, dict):
                    ids.add(track.get("id"))

    kind = data.get("type")
    if kind == "error":
        return ids
    ids.update(data.get(key) for key in ("participantId", "trackId"))
    if kind == "joined":
        for p in data.get("participants") or ():
            participant(p)
    elif kind in ("participant_joined", "participant_updated"):
        participant(data.get("participant"))
    elif kind == "track_published" and isinstance(data.get("track"), dict):
        ids.add(data["track"].get("id"))
    elif kind == "answer" and isinstance(data.get("tracks"), dict):
        for binding in data["tracks"].values():
            if isinstance(binding, dict):
                ids.update((binding.get("trackId"), binding.get("participantId")))
    ids.discard(None)
    return {i for i in ids if isinstance(i, str)}


def _ends_connection(frame: Frame) -> bool:
    return frame.kind == "raw_text" or frame.size() >= MAX_MESSAGE_BYTES


def server_tracebacks(log_path: Path) -> list[str]:
    """Each ``Traceback`` in the server log, with the lines before and after it."""
    lines = log_path.read_text(errors="replace").splitlines()
    out = []
    for i, line in enumerate(lines):
        if "Traceback" in line:
            out.append("\n".join(lines[max(0, i - 2): i + 30]))
    return out


async def _make_offers(sink_port: int) -> list[Offer]:
    """Valid offers from aiortc (publish, subscribe, DataChannel, all of them), their
    candidates pointed at the UDP sink."""
    from aiortc import RTCPeerConnection

    variants = (
        ("video:sendonly", "audio:sendonly"),
        ("video:recvonly", "audio:recvonly"),
        ("data",),
        ("video:sendonly", "audio:sendonly", "video:recvonly", "audio:recvonly", "data"),
        ("audio:sendrecv",),
    )
    offers = []
    for variant in variants:
        pc = RTCPeerConnection()
        try:
            for item in variant:
                if item == "data":
                    pc.createDataChannel("fuzz")
                else:
                    kind, direction = item.split(":")
                    pc.addTransceiver(kind, direction=direction)
            await pc.setLocalDescription(await pc.createOffer())
            sdp = sanitize_candidates(pc.localDescription.sdp, sink_port)
        finally:
            await pc.close()
        media: list[tuple[str, str, str]] = []
        kind = direction = ""
        mid: str | None = None
        for line in sdp.split("\r\n") + ["m=end"]:
            if line.startswith("m="):
                if mid is not None:
                    media.append((mid, kind, direction))
                kind, direction, mid = line[2:].split(" ")[0], "sendrecv", None
            elif line.startswith("a=mid:"):
                mid = line[len("a=mid:"):]
            elif line in ("a=sendonly", "a=recvonly", "a=sendrecv", "a=inactive"):
                direction = line[2:]
        offers.append(Offer(sdp, media))
    return offers


# ------------------------------------------------------------------ command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.fuzz.signaling",
        description="Property-based fuzz of the signaling WebSocket of a server it starts on 127.0.0.1.",
    )
    parser.add_argument("--messages", type=int, default=10_000, help="frames to send and judge (default 10,000)")
    parser.add_argument("--seed", type=int, default=0, help="hypothesis seed of the first batch (batch n: seed + n)")
    parser.add_argument("--batch", type=int, default=100, help="examples per hypothesis run")
    parser.add_argument("--time-limit", type=float, default=None, help="stop after this many seconds")
    parser.add_argument("--warmup", type=int, default=2_000, help="frames before the baseline sample")
    parser.add_argument("--workers", type=int, default=1, help="fuzzing processes (hypothesis is CPU-bound)")
    parser.add_argument("--log", type=Path, default=None, help="the server log (default: a temporary file)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--calm", metavar="WS_URL", help=argparse.SUPPRESS)  # the calm pair's child process
    args = parser.parse_args(argv)
    if args.calm:
        asyncio.run(_calm_main(args.calm))
        return 0

    from loadtest.server import ServerProcess

    log_dir = tempfile.mkdtemp(prefix="signaling-fuzz-")
    log_path = args.log or Path(log_dir) / "server.log"
    server = ServerProcess(log_path)
    fuzz: SignalingFuzz | None = None
    try:
        server.wait_healthy(30)
        fuzz = SignalingFuzz(server)
        fuzz.start()
        print(f"server pid {server.pid} on {server.ws_url}, log {log_path}", flush=True)

        def progress(f: SignalingFuzz) -> None:
            rss, tasks = f.monitor.samples[-1][1:] if f.monitor.samples else (0, None)
            elapsed = time.monotonic() - f.started_at
            total = f.stats.messages + f.helper_messages()
            print(
                f"[{elapsed:7.0f} s] {total:,} messages ({total / elapsed:,.0f}/s), "
                f"errors {sum(f.stats.errors.values()):,}, violations {len(f.stats.violations)}, "
                f"RSS {rss / 2**20:.1f} MiB, tasks {tasks}, calm packets {f.calm.packets if f.calm else 0:,}",
                flush=True,
            )

        fuzz.run(args.messages, seed=args.seed, batch=args.batch, warmup=args.warmup,
                 time_limit=args.time_limit, progress=progress, workers=args.workers)
        report = fuzz.finish()
        print(report.format(), flush=True)
        if args.json:
            s = report.stats
            args.json.write_text(json.dumps({
                "messages": s.messages, "seconds": report.seconds, "messages_per_s": report.messages_per_s,
                "answered": s.answered, "rate_limited": s.rate_limited, "silent": s.silent,
                "errors": dict(s.errors), "closes": dict(s.closes), "families": dict(s.families),
                "rss": [report.rss_start, report.rss_baseline, report.rss_peak, report.rss_end],
                "tasks": [report.tasks_start, report.tasks_baseline, report.tasks_peak, report.tasks_end],
                "violations": [v.format() for v in s.violations], "tracebacks": len(report.tracebacks),
                "calm_problems": report.calm_problems,
            }, indent=1))
        failed = bool(report.stats.violations or report.tracebacks or report.calm_problems)
        return 1 if failed else 0
    except Exception:  # noqa: BLE001 (a broken run: say why, exit 2)
        traceback.print_exc()
        return 2
    finally:
        if fuzz is not None:
            fuzz.close()
        code = server.stop()
        print(f"server exited with {code}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
