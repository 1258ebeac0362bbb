"""Webhooks: the room service tells an application's backend what happens in its rooms.

Configured URLs receive a ``POST`` for each of :data:`EVENTS` (``room_started``,
``room_finished``, ``participant_joined``, ``participant_left``, ``track_published``,
``track_unpublished``). The body is LiveKit's ``WebhookEvent`` in JSON::

    {"id": "EV_...", "event": "participant_joined", "createdAt": 1700000000,
     "room": {...}, "participant": {...}}

and the ``Authorization`` header carries a JWT (HS256, PyJWT) signed with the API
secret, whose ``iss`` is the API key and whose ``sha256`` claim is the base64 of the
body's SHA-256 digest: LiveKit's scheme, so that its receivers (``WebhookReceiver`` of
its server SDKs) accept our webhooks. :func:`verify_webhook` is the receiving side.

Delivery (:class:`WebhookNotifier`): :meth:`~WebhookNotifier.notify` only builds the body
and appends it to a bounded queue; one asyncio task per (URL, room) with something to
send POSTs that room's events to that URL one after the other, retrying a failed attempt
(connection error, timeout, non-2xx status) with exponential backoff. A slow URL or room
holds up nothing but itself. Nothing here runs on the packet path. docs/WEBHOOKS.md is
the receiver's guide; docs/METRICS.md lists the ``sfu_webhooks_*`` metrics.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import hashlib
import hmac
import json
import logging
import random
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import jwt
from prometheus_client import CollectorRegistry

from .metrics import WebhookMetrics

__all__ = [
    "ALGORITHM",
    "CONTENT_TYPE",
    "EVENTS",
    "TOKEN_TTL_S",
    "WebhookNotifier",
    "WebhookVerificationError",
    "participant_info",
    "room_info",
    "room_listener",
    "sign_webhook",
    "track_info",
    "verify_webhook",
]

log = logging.getLogger(__name__)

EVENTS = (
    "room_started",
    "room_finished",
    "participant_joined",
    "participant_left",
    "track_published",
    "track_unpublished",
)
"""The events a webhook reports (LiveKit's names)."""

ALGORITHM = "HS256"
CONTENT_TYPE = "application/webhook+json"  # what LiveKit sends
TOKEN_TTL_S = 300  # a webhook's token is valid this long after it is signed, s
LEEWAY_S = 10  # clock skew allowed on nbf/exp when verifying, s
MAX_TOKEN_BYTES = 8192  # a longer Authorization header is refused before it is decoded


class WebhookVerificationError(ValueError):
    """A webhook was refused by :func:`verify_webhook`: no or malformed token, an unknown
    API key, a wrong signature, outside its validity, a body that does not match the
    token's hash, or a body that is not an event. ``str()`` says which, without echoing
    the token."""


def body_digest(body: bytes) -> str:
    """The ``sha256`` claim for ``body``: base64 (standard alphabet, padded) of its
    SHA-256 digest."""
    return base64.b64encode(hashlib.sha256(body).digest()).decode("ascii")


def sign_webhook(
    body: bytes, api_key: str, api_secret: str, *, now: float | None = None, ttl_s: float = TOKEN_TTL_S
) -> str:
    """The ``Authorization`` header value for ``body``: a JWT (HS256) with ``iss`` =
    ``api_key``, ``sha256`` = :func:`body_digest` of ``body``, ``nbf`` = now and
    ``exp`` = now + ``ttl_s`` (Unix seconds).

    Args:
        body: the exact bytes POSTed.
        api_key, api_secret: the API key and its secret (the HMAC key).
        now: Unix time to sign at, seconds (default: the clock).
        ttl_s: validity of the token, seconds (default 300).
    """
    issued = int(time.time() if now is None else now)
    claims = {"iss": api_key, "sha256": body_digest(body), "nbf": issued, "exp": issued + int(ttl_s)}
    return jwt.encode(claims, api_secret, algorithm=ALGORITHM)


def verify_webhook(body: bytes, authorization: str | None, keys: Mapping[str, str], now: float | None = None) -> dict:
    """Check a received webhook and return its event.

    Checks that ``authorization`` (the header's value; a ``Bearer`` prefix is allowed)
    is a JWT signed with HS256 by the secret of its ``iss`` in ``keys``, that it is
    within its ``nbf``/``exp`` (``exp`` required; 10 s of clock skew allowed), that its
    ``sha256`` claim is the base64 SHA-256 digest of ``body``, and that ``body`` is a
    JSON object with a string ``event``.

    Args:
        body: the request body exactly as received (bytes, before any JSON parsing).
        authorization: the ``Authorization`` header, or None when there was none.
        keys: API key -> secret of the senders this receiver trusts.
        now: Unix time to check the time claims at, seconds (default: the clock).

    Returns:
        The event (``id``, ``event``, ``createdAt``, ``room`` and, as the event has them,
        ``participant`` and ``track``).

    Raises:
        WebhookVerificationError: why the webhook is refused.
    """
    if not isinstance(authorization, str) or not authorization.strip():
        raise WebhookVerificationError("no Authorization header")
    token = authorization.strip()
    if token[:7].lower() == "bearer ":
        token = token[7:].strip()
    if len(token) > MAX_TOKEN_BYTES:
        raise WebhookVerificationError(f"the token is longer than {MAX_TOKEN_BYTES} bytes")
    try:
        header = jwt.get_unverified_header(token)
        unverified = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError as exc:
        raise WebhookVerificationError("malformed token") from exc
    if header.get("alg") != ALGORITHM:
        raise WebhookVerificationError(f"the token must be signed with {ALGORITHM}")
    api_key = unverified.get("iss")
    secret = keys.get(api_key) if isinstance(api_key, str) else None
    if not secret:
        raise WebhookVerificationError("the token is signed with an unknown API key")
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            # PyJWT reads the clock itself; the time claims are checked below, at ``now``
            options={
                "require": ["iss", "exp", "sha256"],
                "verify_exp": False,
                "verify_nbf": False,
                "verify_iat": False,
            },
        )
    except jwt.InvalidSignatureError as exc:
        raise WebhookVerificationError("the token's signature does not match") from exc
    except jwt.PyJWTError as exc:
        raise WebhookVerificationError(f"invalid token: {exc}") from exc
    _check_times(claims, time.time() if now is None else now)
    claimed = claims["sha256"]
    if not isinstance(claimed, str) or not hmac.compare_digest(claimed.encode(), body_digest(body).encode()):
        raise WebhookVerificationError("the body does not match the token's sha256")
    try:
        event = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise WebhookVerificationError("the body is not JSON") from exc
    if not isinstance(event, dict) or not isinstance(event.get("event"), str):
        raise WebhookVerificationError("the body is not a webhook event")
    return event


def _check_times(claims: Mapping[str, Any], now: float) -> None:
    exp, nbf = claims.get("exp"), claims.get("nbf")
    if not isinstance(exp, (int, float)) or isinstance(exp, bool):
        raise WebhookVerificationError("'exp' must be a number")
    if now > exp + LEEWAY_S:
        raise WebhookVerificationError("the token has expired")
    if nbf is not None:
        if not isinstance(nbf, (int, float)) or isinstance(nbf, bool):
            raise WebhookVerificationError("'nbf' must be a number")
        if now < nbf - LEEWAY_S:
            raise WebhookVerificationError("the token is not valid yet")


class _Delivery:
    """One event waiting to be POSTed to one URL (the body is shared by the URLs)."""

    __slots__ = ("body", "event")

    def __init__(self, event: str, body: bytes) -> None:
        self.event = event
        self.body = body


class WebhookNotifier:
    """POSTs signed webhook events to ``urls``, in order per room, with retries.

    A delivery is one event to one URL. The deliveries of one room to one URL go
    strictly in order: the next is attempted once the previous was delivered or given
    up. Other rooms and other URLs go on independently (one asyncio task per URL and
    room that has something to send; it ends when that queue is empty), so a slow or
    failing receiver, or a slow room, delays nothing else. An attempt fails on a
    connection error, after ``timeout_s``, or on a status outside 200-299 (redirects are
    not followed); it is retried after ``backoff_s * 2**(n-1)`` seconds (n: attempts so
    far), capped at ``backoff_max_s``, times a random factor in [0.5, 1] (jitter).
    Delivery is at least once: a receiver that answered after the timeout gets the
    event again, with the same ``id``.

    Args:
        urls: http(s) URLs that receive every event (none: :meth:`notify` does nothing).
        api_key, api_secret: the API key (the token's ``iss``) and its secret (HS256 key).
        queue_limit: the most deliveries waiting or in flight, all URLs and rooms
            together; a delivery beyond it is dropped (``queue_full``).
        timeout_s: limit of one attempt (connect, send, response headers), seconds.
        max_attempts: attempts of one delivery before it is dropped (``gave_up``).
        backoff_s: delay before the first retry, seconds.
        backoff_max_s: the longest delay between attempts, seconds.
        max_in_flight: the most concurrent requests to one URL.
        session: an aiohttp session to send with (the caller closes it); by default
            :meth:`start` opens one and :meth:`close` closes it.
        metrics: where to count (``sfu_webhooks_*``); by default a private registry.

    Raises:
        ValueError: a URL that is not absolute http(s), an empty API key or secret, a
            limit below 1, a negative backoff or a timeout not above 0.
        TypeError: ``urls`` is one string instead of a sequence of them.
    """

    def __init__(
        self,
        urls: Sequence[str],
        api_key: str,
        api_secret: str,
        *,
        queue_limit: int = 1000,
        timeout_s: float = 5.0,
        max_attempts: int = 6,
        backoff_s: float = 0.5,
        backoff_max_s: float = 30.0,
        max_in_flight: int = 16,
        session: aiohttp.ClientSession | None = None,
        metrics: WebhookMetrics | None = None,
    ) -> None:
        if isinstance(urls, str):
            raise TypeError("urls must be a sequence of URLs, not one string")
        for url in urls:
            parts = urlsplit(url) if isinstance(url, str) else None
            if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"a webhook URL must be an absolute http(s) URL: {url!r}")
        if not api_key or not isinstance(api_key, str):
            raise ValueError("the webhook API key must be a non-empty string")
        if not api_secret or not isinstance(api_secret, str):
            raise ValueError("the webhook API secret must be a non-empty string")
        if queue_limit < 1 or max_attempts < 1 or max_in_flight < 1:
            raise ValueError("queue_limit, max_attempts and max_in_flight must be at least 1")
        if timeout_s <= 0 or backoff_s < 0 or backoff_max_s < 0:
            raise ValueError("timeout_s must be above 0, backoff_s and backoff_max_s at least 0")
        self.urls: tuple[str, ...] = tuple(urls)
        self.api_key = api_key
        self._secret = api_secret
        self.queue_limit = queue_limit
        self.timeout_s = timeout_s
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.metrics = metrics if metrics is not None else WebhookMetrics(CollectorRegistry())
        self._session = session
        self._own_session = session is None
        self._limits = [asyncio.Semaphore(max_in_flight) for _ in self.urls]
        # (URL index, room key) -> deliveries in order; a key exists while it has any
        self._queues: dict[tuple[int, str], collections.deque[_Delivery]] = {}
        self._workers: dict[tuple[int, str], asyncio.Task[None]] = {}
        self._pending = 0  # deliveries in self._queues, in flight included
        self._idle = asyncio.Event()
        self._idle.set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False
        self._random: Callable[[], float] = random.random

    @property
    def pending(self) -> int:
        """Deliveries waiting or in flight."""
        return self._pending

    async def start(self) -> None:
        """Open the HTTP session (unless one was given) and start sending what
        :meth:`notify` queued so far. Calling it again does nothing.

        Raises:
            RuntimeError: the notifier was closed.
        """
        if self._closing:
            raise RuntimeError("the webhook notifier is closed")
        if self._loop is not None:
            return
        self._loop = asyncio.get_running_loop()
        if self._session is None:
            # No connector limit: the per-URL semaphores bound the requests in flight.
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        for key in list(self._queues):
            self._spawn(key)

    def notify(
        self,
        event: str,
        room: Mapping[str, Any],
        participant: Mapping[str, Any] | None = None,
        track: Mapping[str, Any] | None = None,
    ) -> None:
        """Queue ``event`` for every URL; returns at once (no I/O, never blocks).

        The body is ``{"id": "EV_<random>", "event": event, "createdAt": <Unix seconds>,
        "room": room, "participant": participant, "track": track}`` (``participant`` and
        ``track`` only when given), encoded at once: later changes to the objects do
        not show. Events are ordered per room by ``room["name"]`` (or
        ``room["sid"]`` without a name). A delivery that finds ``queue_limit`` deliveries
        waiting is dropped and counted (``queue_full``); after :meth:`close` every event
        is dropped and counted (``closed``). Call it from the event loop's thread.

        Raises:
            ValueError: a programming error: an event not in :data:`EVENTS`, a room
                without ``name`` or ``sid``, or objects that JSON cannot encode.
        """
        if event not in EVENTS:
            raise ValueError(f"unknown webhook event {event!r}")
        room_key = room.get("name") or room.get("sid")
        if not room_key or not isinstance(room_key, str):
            raise ValueError("a webhook's room needs a 'name' (or a 'sid')")
        if not self.urls:
            return
        if self._closing:
            self.metrics.dropped.labels("closed").inc(len(self.urls))
            return
        message: dict[str, Any] = {
            "id": "EV_" + secrets.token_urlsafe(9),
            "event": event,
            "createdAt": int(time.time()),
            "room": dict(room),
        }
        if participant is not None:
            message["participant"] = dict(participant)
        if track is not None:
            message["track"] = dict(track)
        try:
            body = json.dumps(message, separators=(",", ":"), allow_nan=False).encode()
        except (TypeError, ValueError, RecursionError) as exc:
            raise ValueError(f"the {event} webhook cannot be encoded as JSON: {exc}") from exc
        for index in range(len(self.urls)):
            if self._pending >= self.queue_limit:
                self.metrics.dropped.labels("queue_full").inc()
                continue
            key = (index, room_key)
            queue = self._queues.get(key)
            if queue is None:
                queue = self._queues[key] = collections.deque()
            queue.append(_Delivery(event, body))
            self._pending += 1
            self._idle.clear()
            self.metrics.queued.inc()
            if self._loop is not None and key not in self._workers:
                self._spawn(key)

    async def close(self, timeout_s: float = 5.0) -> None:
        """Stop taking events, give the queued ones up to ``timeout_s`` seconds to be
        delivered, then cancel what is left (counted as dropped, ``closed``) and close
        the session if the notifier opened it. No task survives it. Calling it again
        does nothing."""
        if self._closing:
            return
        self._closing = True
        if self._workers and self._pending:
            try:
                await asyncio.wait_for(self._idle.wait(), timeout_s)
            except TimeoutError:
                pass
        workers = list(self._workers.values())
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        left = sum(len(queue) for queue in self._queues.values())
        if left:
            log.warning("webhooks: %d deliveries not sent before the close", left)
            self.metrics.dropped.labels("closed").inc(left)
            self.metrics.queued.dec(left)
        self._queues.clear()
        self._pending = 0
        self._idle.set()
        if self._own_session and self._session is not None:
            await self._session.close()
        self._session = None

    # -- delivery ----------------------------------------------------------------------

    def _spawn(self, key: tuple[int, str]) -> None:
        assert self._loop is not None
        self._workers[key] = self._loop.create_task(self._drain(key), name=f"webhooks {key[1]!r} #{key[0]}")

    async def _drain(self, key: tuple[int, str]) -> None:
        """Deliver the queue of ``key`` (one URL, one room) in order until it is empty."""
        queue = self._queues[key]
        try:
            while queue:
                await self._deliver(key[0], queue[0])
                queue.popleft()
                self._pending -= 1
                self.metrics.queued.dec()
                if not self._pending:
                    self._idle.set()
        finally:
            # No await between the emptiness test and here: notify() either appended
            # before (and the loop went on) or finds no worker and starts one.
            self._workers.pop(key, None)
            if not queue and self._queues.get(key) is queue:
                del self._queues[key]

    async def _deliver(self, index: int, delivery: _Delivery) -> None:
        """Attempt ``delivery`` up to ``max_attempts`` times; count the outcome."""
        url = self.urls[index]
        for attempt in range(1, self.max_attempts + 1):
            async with self._limits[index]:
                failure = await self._attempt(url, delivery.body)
            if failure is None:
                self.metrics.delivered.labels(delivery.event).inc()
                return
            if attempt == self.max_attempts:
                break
            self.metrics.retries.labels(failure).inc()
            log.debug("webhooks: %s to %s failed (%s), attempt %d", delivery.event, _redact(url), failure, attempt)
            await asyncio.sleep(self._backoff(attempt))
        self.metrics.dropped.labels("gave_up").inc()
        log.warning(
            "webhooks: gave up %s to %s after %d attempts (%s)",
            delivery.event,
            _redact(url),
            self.max_attempts,
            failure,
        )

    def _backoff(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        delay = min(self.backoff_max_s, self.backoff_s * 2.0 ** (attempt - 1))
        return delay * (0.5 + 0.5 * self._random())

    async def _attempt(self, url: str, body: bytes) -> str | None:
        """POST once; None when delivered, else why not (``timeout``, ``connection``,
        ``http_status``: the ``reason`` label of the retries)."""
        assert self._session is not None
        headers = {
            "Authorization": sign_webhook(body, self.api_key, self._secret),
            "Content-Type": CONTENT_TYPE,
        }
        try:
            async with self._session.post(
                url,
                data=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self.timeout_s),
                allow_redirects=False,
            ) as response:
                while await response.content.read(65536):  # discard the answer, keep the connection
                    pass
                return None if 200 <= response.status < 300 else "http_status"
        except TimeoutError:  # asyncio.TimeoutError and aiohttp's timeouts derive from it
            return "timeout"
        except (aiohttp.ClientError, OSError):
            return "connection"
        except asyncio.CancelledError:
            raise
        except Exception:  # a fault of ours or aiohttp's: retry like a failed attempt
            log.exception("webhooks: unexpected error POSTing to %s", _redact(url))
            return "connection"


def _redact(url: str) -> str:
    """``url`` without credentials, query or fragment (they may hold secrets), for logs."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return f"{parts.scheme}://{host}{parts.path}"


# -- the objects of the events (LiveKit's field names) ------------------------------------

_SOURCES = {"camera": "CAMERA", "microphone": "MICROPHONE", "screen": "SCREEN_SHARE",
            "screen_audio": "SCREEN_SHARE_AUDIO", "custom": "UNKNOWN", "": "UNKNOWN"}


def room_info(room: Any) -> dict[str, Any]:
    """A :class:`~sfu.room.Room` as the events' ``room``: ``sid``, ``name``,
    ``numParticipants``, ``maxParticipants``, ``creationTime`` (Unix seconds)."""
    return {
        "sid": room.sid,
        "name": room.name,
        "numParticipants": sum(1 for p in room.participants.values() if not p.hidden),
        "maxParticipants": room.max_participants,
        "creationTime": int(room.created_at),
    }


def participant_info(participant: Any) -> dict[str, Any]:
    """A :class:`~sfu.participant.Participant` as the events' ``participant``: ``sid``,
    ``identity``, ``name``, ``metadata``, ``joinedAt`` (Unix seconds), ``hidden``."""
    return {
        "sid": participant.id,
        "identity": participant.identity,
        "name": participant.name,
        "metadata": participant.metadata,
        "joinedAt": int(participant.joined_at),
        "hidden": participant.hidden,
    }


def track_info(track: Any) -> dict[str, Any]:
    """An :class:`~sfu.uptrack.UpTrack` as the events' ``track``: ``sid``, ``type``
    (``AUDIO``/``VIDEO``), ``source`` (``CAMERA``, ``MICROPHONE``, ``SCREEN_SHARE``,
    ``SCREEN_SHARE_AUDIO``, ``UNKNOWN``), ``mimeType``, ``muted``, ``simulcast``."""
    return {
        "sid": track.id,
        "type": "VIDEO" if track.is_video else "AUDIO",
        "source": _SOURCES.get(track.source, "UNKNOWN"),
        "mimeType": track.codec.mime_type,
        "muted": track.muted,
        "simulcast": track.simulcast,
    }


def room_listener(notifier: WebhookNotifier) -> Callable[[str, Any, Any, Any], None]:
    """A :data:`sfu.room.RoomListener` that turns the rooms' events into webhooks."""

    def listener(event: str, room: Any, participant: Any = None, track: Any = None) -> None:
        notifier.notify(
            event,
            room_info(room),
            participant_info(participant) if participant is not None else None,
            track_info(track) if track is not None else None,
        )

    return listener
