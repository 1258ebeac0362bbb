"""One WebSocket connection of the room service: one participant's signaling.

Messages are handled in arrival order, one at a time, so a participant's offers are
serialized. Every bad message gets an ``error`` reply and the connection goes on. A
connection that drops without ``leave`` (no close frame, no answer to the pings, the
PeerConnection failed; not a close with code 1000 or 1001) keeps the participant's
place for the registry's grace period, for the client to reconnect and resume it (``join`` with
``resume``); after that the participant is removed and the others are told.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from sfu.participant import OfferError, Participant
from sfu.ratelog import RateLimitedLog
from sfu.room import InvalidRoomName, Room, RoomFull, RoomRegistry, TooManyRooms
from sfu.rtc.adapter import TooManyCandidates
from sfu.turn import IceServers

from .access import Access, Forbidden, Unauthorized
from .config import Limits
from .metrics import SignalingMetrics
from .protocol import ProtocolError, error_message, parse_message

__all__ = ["Session"]

logger = logging.getLogger(__name__)
_faults = RateLimitedLog(logger)

# Close codes (RFC 6455 §7.4.1) of a client that closes its WebSocket on purpose: normal
# closure, and going away (a browser tab closed or navigated away). Any other end (no
# close frame, a heartbeat timeout, 4000 from a reconnecting client) keeps the place.
CLIENT_LEFT_CODES = (WSCloseCode.OK, WSCloseCode.GOING_AWAY)
SEND_QUEUE_LIMIT = 1000  # messages waiting for a slow client at most ...
SEND_QUEUE_BYTES = 4 * 1024 * 1024  # ... and bytes
MAX_ERROR_TEXT = 200  # characters of an error message (they may quote what the client sent)
_REMOVED_TEXT = {
    "duplicate_identity": "you joined again from another connection",
    "removed": "the application removed you from the room",
    "room_deleted": "the room was deleted",
    "resumed": "you reconnected on another connection",
}


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved; :meth:`take` spends one.

    Args:
        rate: tokens per second.
        burst: the bucket's size (it starts full).
    """

    __slots__ = ("_at", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._at: float | None = None

    def take(self, now_s: float) -> bool:
        """Spend a token at ``now_s`` (seconds, monotonic); False when there is none."""
        if self._at is not None:
            self._tokens = min(self.burst, self._tokens + (now_s - self._at) * self.rate)
        self._at = now_s
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True


class Session:
    """Runs the room protocol on one WebSocket.

    Args:
        ws: the prepared WebSocket.
        registry: the rooms of this process.
        metrics: the room service's metrics.
        access: the server's keys and mode (development mode by default).
        query_token: an access token given in the WebSocket URL (``access_token``);
            a token in the ``join`` message wins.
        limits: messages per second, offers per minute, tracks per participant
            (:class:`~signaling.config.Limits`; its defaults by default).
        ice_servers: the STUN/TURN servers each client is given at join.
    """

    def __init__(
        self,
        ws: web.WebSocketResponse,
        registry: RoomRegistry,
        metrics: SignalingMetrics,
        access: Access | None = None,
        query_token: str | None = None,
        limits: Limits | None = None,
        ice_servers: IceServers | None = None,
    ) -> None:
        self.ws = ws
        self.registry = registry
        self.metrics = metrics
        self.limits = limits if limits is not None else Limits()
        self.ice_servers = ice_servers if ice_servers is not None else IceServers()
        rate = self.limits.messages_per_second
        self._messages = TokenBucket(rate, 2 * rate)
        self._offers = TokenBucket(self.limits.offers_per_minute / 60.0, max(1.0, self.limits.offers_per_minute / 6.0))
        self.access = access if access is not None else Access.from_keys(None)
        self.query_token = query_token  # ?access_token= of the WebSocket URL
        self._join_started: float | None = None
        self.room: Room | None = None
        self.participant: Participant | None = None
        self._outgoing: asyncio.Queue[str | None] = asyncio.Queue()  # JSON frames
        self._queued_bytes = 0
        self._closing = False
        self._close_code = WSCloseCode.OK
        self._connect_timer: asyncio.TimerHandle | None = None
        self.closed = asyncio.Event()  # set once the WebSocket is closed

    def send(self, message: dict[str, Any]) -> None:
        """Queue a message for the client (events arrive in the order they were sent).

        A client so far behind that its queue passes ``SEND_QUEUE_LIMIT`` messages or
        ``SEND_QUEUE_BYTES`` is disconnected. Error texts are cut to ``MAX_ERROR_TEXT``.
        """
        if self._closing:
            return
        if message.get("type") == "error":
            self.metrics.signaling_errors.labels(code=message.get("code", "")).inc()
            text = message.get("message")
            if isinstance(text, str) and len(text) > MAX_ERROR_TEXT:
                message = {**message, "message": text[: MAX_ERROR_TEXT - 3] + "..."}
            request_type = message.get("requestType")
            if isinstance(request_type, str) and len(request_type) > 32:  # an unknown type, as the client sent it
                message = {**message, "requestType": request_type[:32]}
        frame = json.dumps(message)
        if self._outgoing.qsize() >= SEND_QUEUE_LIMIT or self._queued_bytes + len(frame) > SEND_QUEUE_BYTES:
            logger.warning("session %s: send queue full, closing", self._who())
            self._close_soon()
            return
        self._queued_bytes += len(frame)
        self._outgoing.put_nowait(frame)

    def _who(self) -> str:
        return self.participant.id if self.participant else "(not joined)"

    def _close_soon(self, code: int = WSCloseCode.OK) -> None:
        if not self._closing:
            self._closing = True
            self._close_code = code
            self._outgoing.put_nowait(None)

    def shutdown(self) -> None:
        """The server is shutting down: tell the client (``server_shutdown``) and close
        the WebSocket with 1001 (going away) once that has been sent."""
        self.send({"type": "server_shutdown", "message": "the server is shutting down; join again later"})
        self._close_soon(WSCloseCode.GOING_AWAY)

    async def _writer(self) -> None:
        while True:
            frame = await self._outgoing.get()
            if frame is None:
                break
            self._queued_bytes -= len(frame)
            try:
                await self.ws.send_str(frame)
            except (ConnectionError, RuntimeError):
                break
        try:
            await self.ws.close(code=self._close_code)
        finally:
            self.closed.set()

    async def run(self) -> None:
        """Serve the connection until it closes, then remove the participant."""
        writer = asyncio.ensure_future(self._writer())
        self.metrics.websocket_connections.inc()
        try:
            async for frame in self.ws:
                if frame.type == WSMsgType.TEXT:
                    await self.handle(frame.data)
                elif frame.type == WSMsgType.BINARY:
                    self.send(error_message("bad_json", "binary frames are not part of the protocol"))
                elif frame.type == WSMsgType.ERROR:
                    if getattr(frame.data, "code", None) == WSCloseCode.MESSAGE_TOO_BIG:
                        self.metrics.limit_refusals.labels(limit="max_message_bytes").inc()
                    break
                if self._closing:
                    break
        finally:
            self.metrics.websocket_connections.dec()
            if self._connect_timer is not None:
                self._connect_timer.cancel()
            if not self._closing and self.ws.close_code in CLIENT_LEFT_CODES:
                await self._leave()  # the client closed the WebSocket on purpose (a tab closed)
            else:
                await self._vanish()
            self._close_soon()
            try:
                await asyncio.wait_for(writer, timeout=5)
            except (TimeoutError, Exception):
                writer.cancel()

    async def _vanish(self) -> None:
        """The connection ended without ``leave``: keep the participant's place for a
        reconnection (:meth:`RoomRegistry.suspend`), or remove it now (server
        shutdown, media never connected, no grace period)."""
        room, participant = self.room, self.participant
        if room is None or participant is None:
            return
        if self._close_code != WSCloseCode.GOING_AWAY and self.registry.suspend(room, participant):
            self.metrics.reconnections.labels(outcome="away").inc()
            self.room = self.participant = None
            return
        await self._leave()

    async def _leave(self) -> None:
        room, participant = self.room, self.participant
        self.room = self.participant = None
        if room is not None and participant is not None:
            await self.registry.leave(room, participant)

    def _refuse(self, limit: str, code: str, message: str, request_type: str | None = None) -> ProtocolError:
        self.metrics.limit_refusals.labels(limit=limit).inc()
        return ProtocolError(code, message, request_type)

    async def handle(self, text: str) -> None:
        """Handle one text frame; any failure becomes an ``error`` reply."""
        request_type: str | None = None
        try:
            if not self._messages.take(time.monotonic()):
                raise self._refuse(
                    "messages_per_second", "rate_limited",
                    f"more than {self.limits.messages_per_second:g} messages a second; this one was dropped",
                )
            msg = parse_message(text)
            request_type = msg["type"]
            await getattr(self, f"_on_{request_type}")(msg)
        except ProtocolError as exc:
            self.send(error_message(exc.code, exc.message, exc.request_type))
        except OfferError as exc:
            self.send(error_message(exc.code, exc.message, "offer"))
        except Exception:  # a server fault must not end the session
            _faults.log(f"handle {request_type}", logging.ERROR, "session %s: %s failed", self._who(), request_type,
                        exc_info=True)
            self.send(error_message("internal", "the server failed to handle this message", request_type))

    def _joined(self, kind: str) -> Participant:
        if self.participant is None:
            raise ProtocolError("not_joined", "send 'join' first", kind)
        return self.participant

    async def _on_join(self, msg: dict[str, Any]) -> None:
        if self.participant is not None:
            raise ProtocolError("already_joined", "this connection already joined a room", "join")
        token = msg.get("token") or self.query_token
        if token is None and self.access.development and (msg.get("room") is None or msg.get("name") is None):
            raise ProtocolError("bad_message", "a join without a token needs 'room' and 'name'", "join")
        try:
            claims = self.access.join_claims(token, msg.get("room"), msg.get("name"))
        except Unauthorized as exc:
            raise ProtocolError("invalid_token", str(exc), "join") from exc
        except Forbidden as exc:
            raise ProtocolError("forbidden", str(exc), "join") from exc
        grant = claims.grant
        assert grant.room is not None  # join_claims checked it
        resumed = None
        resume = msg.get("resume")
        if resume is not None and not grant.hidden:
            resumed = self.registry.resume(
                grant.room, resume["participantId"], resume["key"], claims.identity if token is not None else None,
                self.send, on_failed=self._on_peer_failed, grant=grant,
            )
            self.metrics.reconnections.labels(outcome="resumed" if resumed else "not_resumed").inc()
        try:
            room, participant = resumed or self.registry.join(
                grant.room, claims.name, self.send, on_failed=self._on_peer_failed, hidden=grant.hidden,
                identity=claims.identity, grant=grant, metadata=claims.metadata,
            )
        except InvalidRoomName as exc:
            raise ProtocolError("invalid_room", str(exc), "join") from exc
        except RoomFull as exc:
            raise self._refuse("max_participants", "room_full", str(exc), "join") from exc
        except TooManyRooms as exc:
            raise self._refuse("max_rooms", "too_many_rooms", str(exc), "join") from exc
        participant.on_removed = self._on_removed
        participant.max_tracks = self.limits.max_tracks
        participant.max_media_sections = self.limits.max_media_sections
        participant.connection.max_remote_candidates = self.limits.max_candidates
        self.room, self.participant = room, participant
        self._join_started = time.monotonic()
        self.send(
            {
                "type": "joined",
                "room": room.name,
                "participantId": participant.id,
                "resumeKey": participant.resume_key,
                "resumed": resumed is not None,
                "identity": participant.identity,
                "name": participant.name,
                "permissions": grant.to_claim(),
                "iceServers": self.ice_servers.for_client(participant.identity),
                "participants": room.snapshot(exclude=participant),
            }
        )

    def _on_removed(self, reason: str) -> None:
        """The server removed this participant (its identity joined again, the server
        API removed it, or its room was deleted): tell the client and close."""
        self.room = self.participant = None
        self.send({"type": "removed", "reason": reason, "message": _REMOVED_TEXT.get(reason, reason)})
        self._close_soon()

    def _on_peer_failed(self) -> None:
        """The PeerConnection failed (ICE or DTLS) or closed by itself: tell the client
        why, then end the session (the participant leaves; the others are told)."""
        if self.participant is None:
            return  # a participant whose client is away, or already gone
        logger.info("session %s: PeerConnection closed or failed", self._who())
        self.send(error_message("connection_failed", "the media connection to the server failed (ICE or DTLS)"))
        self._close_soon()

    def _check_connected(self) -> None:
        """``registry.connect_timeout`` after the first answer: a participant whose
        media connection is still not up is told and removed."""
        participant = self.participant
        if participant is None or self._closing or participant.connection.connection_state == "connected":
            return
        timeout = self.registry.connect_timeout
        logger.info("session %s: not connected %.0f s after the answer", self._who(), timeout)
        self.send(error_message("connection_failed", f"no media connection within {timeout:.0f} s"))
        self._close_soon()

    async def _on_offer(self, msg: dict[str, Any]) -> None:
        participant = self._joined("offer")
        if not self._offers.take(time.monotonic()):
            raise self._refuse(
                "offers_per_minute", "rate_limited", f"more than {self.limits.offers_per_minute:g} offers a minute", "offer"
            )
        try:
            answer, tracks, published = await participant.handle_offer(msg["sdp"], msg["tracks"])
        except OfferError as exc:
            limit = {"too_many_tracks": "max_tracks", "too_many_media_sections": "max_media_sections",
                     "no_media_port": "udp_port_range"}.get(exc.code)
            if limit is not None:
                self.metrics.limit_refusals.labels(limit=limit).inc()
            raise
        self.send({"type": "answer", "sdp": answer, "tracks": tracks})
        if self._connect_timer is None:
            self._connect_timer = asyncio.get_running_loop().call_later(self.registry.connect_timeout, self._check_connected)
        if self._join_started is not None:
            self.metrics.join_duration.observe(time.monotonic() - self._join_started)
            self._join_started = None
        if self.room is not None and published:
            self.room.on_tracks_published(participant, published)

    async def _on_candidate(self, msg: dict[str, Any]) -> None:
        participant = self._joined("candidate")
        try:
            await participant.connection.add_ice_candidate(msg.get("candidate"))
        except TooManyCandidates as exc:
            raise self._refuse("max_candidates", "too_many_candidates", str(exc), "candidate") from exc
        except ValueError as exc:
            raise ProtocolError("bad_message", str(exc), "candidate") from exc

    async def _on_mute(self, msg: dict[str, Any]) -> None:
        participant = self._joined("mute")
        try:
            up = participant.set_muted(msg["trackId"], msg["muted"])
        except KeyError as exc:
            raise ProtocolError("unknown_track", f"you publish no track {msg['trackId']}", "mute") from exc
        except PermissionError as exc:
            raise ProtocolError("forbidden", str(exc), "mute") from exc
        if self.room is not None:
            self.room.on_track_muted(participant, up)

    async def _on_unpublish(self, msg: dict[str, Any]) -> None:
        participant = self._joined("unpublish")
        if participant.unpublish(msg["trackId"]) is None:
            raise ProtocolError("unknown_track", f"you publish no track {msg['trackId']}", "unpublish")

    async def _on_track_settings(self, msg: dict[str, Any]) -> None:
        participant = self._joined("track_settings")
        if not participant.grant.can_subscribe:
            raise ProtocolError("forbidden", "your token does not allow subscribing (canSubscribe)", "track_settings")
        changes: dict[str, Any] = {}
        if "maxHeight" in msg:
            changes["max_height"] = msg["maxHeight"]
        if "maxWidth" in msg:
            changes["max_width"] = msg["maxWidth"]
        if "paused" in msg:
            changes["paused"] = msg["paused"]
        try:
            participant.set_track_settings(msg["trackId"], changes)
        except KeyError as exc:
            raise ProtocolError(
                "unknown_track", f"you do not subscribe to track {msg['trackId']}", "track_settings"
            ) from exc

    async def _on_leave(self, msg: dict[str, Any]) -> None:
        self._joined("leave")
        await self._leave()
        self.send({"type": "left"})
        self._close_soon()

    async def _on_ping(self, msg: dict[str, Any]) -> None:
        self.send({"type": "pong"})
