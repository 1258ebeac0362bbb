"""WHIP ingest (RFC 9725) and WHEP playback (draft-ietf-wish-whep): rooms over HTTP for
publishing tools and players that speak no room protocol.

A WHIP session is a participant of the room that publishes what its offer sends (with
simulcast when offered); everyone is told of its arrival and departure like any
participant. A WHEP session is a hidden participant (never listed or announced) that
receives one publisher's tracks; its layer follows its downlink like any subscriber's.
The player names what it plays with a query parameter (docs/WHIP.md).

Resources: ``POST /whip/{room}`` and ``POST /whep/{room}`` create a session (``201``,
the answer, ``Location: /whip/{room}/{session}``, an ``ETag``); ``PATCH`` on the
session trickles candidates (``application/trickle-ice-sdpfrag``, ``204``); ``DELETE``
ends it (``200``). ICE restarts are refused with ``422`` (aiortc cannot restart ICE).
Every response carries CORS headers, so players on other origins can use the server.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from sfu.auth import AccessClaims
from sfu.participant import OfferError, Participant
from sfu.room import InvalidRoomName, Room, RoomFull, RoomRegistry, TooManyRooms
from sfu.turn import IceServers

from .access import Access, Unauthorized
from .metrics import SignalingMetrics
from .protocol import MAX_NAME_CHARS, MAX_SDP_BYTES
from .sdpfrag import MAX_FRAGMENT_BYTES, ice_credentials, parse_ice_fragment

__all__ = ["HttpSessions", "HttpSession", "add_routes", "MAX_HTTP_SESSIONS"]

logger = logging.getLogger(__name__)

SDP = "application/sdp"
SDPFRAG = "application/trickle-ice-sdpfrag"
MAX_HTTP_SESSIONS = 500  # WHIP + WHEP sessions per process
MAX_SESSION_CANDIDATES = 128  # trickled candidates per session
ROOM_FULL_RETRY_S = 10
KINDS = ("whip", "whep")

CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "POST, PATCH, DELETE, OPTIONS",
    "Access-Control-Allow-Headers": "Authorization, Content-Type, If-Match",
    "Access-Control-Expose-Headers": "Location, ETag, Link, Accept-Patch, Accept-Post, Retry-After",
    "Access-Control-Max-Age": "86400",
}


class HttpError(Exception):
    """A request refused with ``status`` and a one-line ``reason`` (the body)."""

    def __init__(self, status: int, reason: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = headers or {}


@dataclass(slots=True)
class HttpSession:
    """One WHIP or WHEP resource: its participant, the ICE credentials of the offer
    (to tell trickled candidates from an ICE restart) and its ``ETag``."""

    id: str
    kind: str
    room: Room
    participant: Participant
    etag: str
    ice_ufrag: str | None
    ice_pwd: str | None
    source_id: str | None = None  # WHEP: the participant played
    candidates: int = 0
    timeout: asyncio.TimerHandle | None = field(default=None, repr=False)


class HttpSessions:
    """The WHIP and WHEP sessions of this process.

    Args:
        registry: the rooms.
        metrics: the room service's metrics (sessions and refusals are counted).
        max_sessions: sessions at once; more are refused with ``503``.
        connect_timeout: seconds for a new session's PeerConnection to connect (the
            registry's ``connect_timeout`` by default).
        access: the server's keys and mode (POSTs need a bearer token outside
            development mode).
        ice_servers: STUN/TURN servers for the clients, sent as ``Link`` headers of
            the 201 and of ``OPTIONS`` (RFC 9725 §4.6).
    """

    def __init__(
        self,
        registry: RoomRegistry,
        metrics: SignalingMetrics,
        max_sessions: int = MAX_HTTP_SESSIONS,
        connect_timeout: float | None = None,
        access: Access | None = None,
        ice_servers: IceServers | None = None,
    ) -> None:
        self.registry = registry
        self.ice_servers = ice_servers if ice_servers is not None else IceServers()
        self.access = access if access is not None else Access.from_keys(None)
        self.metrics = metrics
        self.max_sessions = max_sessions
        self.connect_timeout = registry.connect_timeout if connect_timeout is None else connect_timeout
        self.sessions: dict[str, HttpSession] = {}
        self._ending: set[asyncio.Task[None]] = set()

    # -- session life ------------------------------------------------------------------

    async def create(
        self, kind: str, room_name: str, sdp: str, query: dict[str, str], claims: AccessClaims | None = None
    ) -> tuple[HttpSession, str]:
        """Join ``room_name`` as a WHIP publisher or a hidden WHEP player and apply
        the offer ``sdp``.

        Args:
            query: the request's query parameters: ``name`` (display name, WHIP);
                ``participant`` or ``name`` (who to play, WHEP).
            claims: the bearer token's claims (identity, name, grants); None in
                development mode without a token.

        Returns:
            (the session, the answer SDP).

        Raises:
            HttpError: 404 (no such room name, nothing to play), 400 (bad name, bad
                offer, nothing to publish or receive), 503 (room full, too many sessions).
        """
        if len(self.sessions) >= self.max_sessions:
            raise HttpError(503, "the server has too many WHIP/WHEP sessions", {"Retry-After": str(ROOM_FULL_RETRY_S)})
        session_id = secrets.token_urlsafe(12)
        holder: list[HttpSession] = []

        def on_event(event: dict[str, Any]) -> None:
            if holder:
                self._on_room_event(holder[0], event)

        def on_failed() -> None:
            if holder:
                self.end_soon(holder[0], "PeerConnection failed or closed")

        def on_removed(reason: str) -> None:  # the server API, a deleted room, its identity again
            if holder:
                self.end_soon(holder[0], f"removed ({reason})")

        if kind == "whip":
            name = claims.name if claims is not None else _display_name(query.get("name", "WHIP"))
            source = None
        else:
            name = "WHEP player"
            source = None
            existing = self.registry.rooms.get(room_name)
            if existing is not None:
                source = _playback_source(existing, query.get("participant"), query.get("name"))
            if source is None:
                raise HttpError(404, "nothing to play: no such publisher in this room")
        try:
            # Hidden until the offer is applied: a refused WHIP publisher is never seen.
            room, participant = self.registry.join(
                room_name, name, on_event, on_failed, hidden=True,
                identity=claims.identity if claims is not None else None,
                grant=claims.grant if claims is not None else None,
                metadata=claims.metadata if claims is not None else "",
            )
        except InvalidRoomName as exc:
            raise HttpError(404, str(exc)) from exc
        except (RoomFull, TooManyRooms) as exc:
            raise HttpError(503, str(exc), {"Retry-After": str(ROOM_FULL_RETRY_S)}) from exc
        participant.on_removed = on_removed
        ufrag, pwd = ice_credentials(sdp)
        session = HttpSession(session_id, kind, room, participant, secrets.token_hex(8), ufrag, pwd)
        holder.append(session)
        self.sessions[session_id] = session
        self.metrics.http_sessions.labels(kind=kind).inc()
        try:
            if kind == "whip":
                answer, tracks, published = await participant.handle_offer(sdp, {})
                if not published:
                    raise HttpError(400, "the offer publishes no audio or video the server can forward")
                if claims is None or not claims.grant.hidden:
                    room.reveal(participant)  # announced with its tracks
            else:
                assert source is not None
                bindings = participant.playback_tracks(sdp, source)
                if not bindings:
                    raise HttpError(400, "the offer receives none of the kinds the publisher sends")
                session.source_id = source.id
                participant.can_publish = False
                answer, tracks, _ = await participant.handle_offer(sdp, bindings)
                if not any(t.get("direction") == "subscribe" for t in tracks.values()):
                    raise HttpError(400, "the offer offers no codec of the published tracks")
        except OfferError as exc:
            await self.end(session, f"bad offer: {exc.message}")
            raise HttpError(400, exc.message) from exc
        except HttpError:
            await self.end(session, "refused")
            raise
        session.timeout = asyncio.get_running_loop().call_later(self.connect_timeout, self._check_connected, session)
        logger.info("%s session %s: %s in room %s", kind, session_id, participant.id, room.name)
        return session, answer

    def _check_connected(self, session: HttpSession) -> None:
        if session.participant.connection.connection_state != "connected":
            self.end_soon(session, f"not connected within {self.connect_timeout:.0f} s")

    def _on_room_event(self, session: HttpSession, event: dict[str, Any]) -> None:
        """A WHEP player's session ends when the participant it plays leaves."""
        if session.kind == "whep" and event.get("type") == "participant_left" and event.get("participantId") == session.source_id:
            self.end_soon(session, "the publisher left")

    def end_soon(self, session: HttpSession, why: str) -> None:
        """End ``session`` from a callback (a task; idempotent)."""
        if session.id in self.sessions:
            task = asyncio.ensure_future(self.end(session, why))
            self._ending.add(task)
            task.add_done_callback(self._ending.discard)

    async def end(self, session: HttpSession, why: str) -> None:
        """Remove the session's participant from its room (idempotent)."""
        if self.sessions.pop(session.id, None) is None:
            return
        self.metrics.http_sessions.labels(kind=session.kind).dec()
        if session.timeout is not None:
            session.timeout.cancel()
        logger.info("%s session %s ended: %s", session.kind, session.id, why)
        await self.registry.leave(session.room, session.participant)

    def find(self, kind: str, room_name: str, session_id: str) -> HttpSession:
        """The session at ``/{kind}/{room_name}/{session_id}``.

        Raises:
            HttpError: 404 when there is none.
        """
        session = self.sessions.get(session_id)
        if session is None or session.kind != kind or session.room.name != room_name:
            raise HttpError(404, "no such session")
        return session

    async def trickle(self, session: HttpSession, body: str, if_match: str | None) -> None:
        """Apply a trickle ICE fragment (RFC 9725 §4.3.1, RFC 8840).

        Raises:
            HttpError: 412 (``If-Match`` names another ETag), 400 (bad fragment),
                422 (an ICE restart, which aiortc cannot do), 429 (too many candidates).
        """
        if if_match is not None and if_match.strip() != "*" and _etag_value(if_match) != session.etag:
            raise HttpError(412, "If-Match does not match the session's ETag")
        try:
            fragment = parse_ice_fragment(body)
        except ValueError as exc:
            raise HttpError(400, f"bad ICE fragment: {exc}") from exc
        restart = (fragment.ufrag is not None and fragment.ufrag != session.ice_ufrag) or (
            fragment.pwd is not None and fragment.pwd != session.ice_pwd
        )
        if restart:
            raise HttpError(422, "ICE restarts are not supported: start a new session")
        if session.candidates + len(fragment.candidates) > MAX_SESSION_CANDIDATES:
            raise HttpError(429, f"more than {MAX_SESSION_CANDIDATES} candidates for one session")
        session.candidates += len(fragment.candidates)
        for mid, candidate in fragment.candidates:
            try:
                await session.participant.connection.add_ice_candidate({"candidate": candidate, "sdpMid": mid})
            except ValueError as exc:
                raise HttpError(400, str(exc)) from exc

    async def close(self) -> None:
        """End every session (server shutdown)."""
        for session in list(self.sessions.values()):
            await self.end(session, "server shutdown")


def _display_name(raw: str) -> str:
    name = raw.strip()
    if not name or len(name) > MAX_NAME_CHARS or not name.isprintable():
        raise HttpError(400, f"name must be 1-{MAX_NAME_CHARS} printable characters")
    return name


def _playback_source(room: Room, participant_id: str | None, name: str | None) -> Participant | None:
    """Who a WHEP player plays (docs/WHIP.md): the participant with id
    ``participant_id``; else the first one named ``name``; else the room's active
    speaker; else whoever published video first. Only publishing, visible
    participants qualify."""
    publishing = [p for p in room.participants.values() if p.uptracks and not p.hidden and not p.closed]
    if participant_id is not None:
        return next((p for p in publishing if p.id == participant_id), None)
    if name is not None:
        return next((p for p in publishing if p.name == name), None)
    speaker = next((p for p in publishing if p.id == room.active_speaker), None)
    if speaker is not None:
        return speaker
    return next((p for p in publishing if any(up.is_video for up in p.uptracks.values())), publishing[0] if publishing else None)


def _etag_value(header: str) -> str:
    value = header.strip()
    if value.startswith("W/"):
        value = value[2:]
    return value.strip('"')


# -- HTTP ---------------------------------------------------------------------------------

SESSIONS_KEY = web.AppKey("http_sessions", HttpSessions)


def _response(status: int, text: str = "", content_type: str = "text/plain", headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, text=text, content_type=content_type, headers={**CORS_HEADERS, **(headers or {})})


async def _read_body(request: web.Request, content_type: str, limit: int) -> str:
    if request.content_type != content_type:
        raise HttpError(415, f"Content-Type must be {content_type}")
    if request.content_length is not None and request.content_length > limit:
        raise HttpError(413, f"the body is over {limit} bytes")
    body = await request.content.read(limit + 1)
    if len(body) > limit:
        raise HttpError(413, f"the body is over {limit} bytes")
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise HttpError(400, "the body is not UTF-8") from exc


def _authorize(request: web.Request, access: Access, kind: str, room_name: str) -> AccessClaims | None:
    """The bearer token's claims (RFC 9725 §4.5), checked for this endpoint: ``roomJoin``
    for ``room_name``, and ``canPublish`` (WHIP) or ``canSubscribe`` (WHEP). None in
    development mode without a token.

    Raises:
        HttpError: 401 (no or a refused token), 403 (the grants do not allow it).
    """
    if access.development and "Authorization" not in request.headers:
        return None
    try:
        claims = access.bearer(request)
    except Unauthorized as exc:
        raise HttpError(401, str(exc), {"WWW-Authenticate": 'Bearer realm="sfu"'}) from exc
    grant = claims.grant
    if not grant.room_join or grant.room != room_name:
        raise HttpError(403, "the token does not grant joining this room")
    if kind == "whip" and not grant.can_publish:
        raise HttpError(403, "the token does not allow publishing (canPublish)")
    if kind == "whep" and not grant.can_subscribe:
        raise HttpError(403, "the token does not allow subscribing (canSubscribe)")
    return claims


def _handler(kind: str, method: str):
    async def handle(request: web.Request) -> web.Response:
        sessions = request.app[SESSIONS_KEY]
        room_name = request.match_info["room"]
        try:
            if method == "POST":
                claims = _authorize(request, sessions.access, kind, room_name)
                sdp = await _read_body(request, SDP, MAX_SDP_BYTES)
                session, answer = await sessions.create(kind, room_name, sdp, dict(request.query), claims)
                location = f"/{kind}/{room_name}/{session.id}"
                response = _response(
                    201, answer, SDP,
                    {"Location": location, "ETag": f'"{session.etag}"', "Accept-Patch": SDPFRAG},
                )
                for link in sessions.ice_servers.link_headers(session.participant.identity):
                    response.headers.add("Link", link)
            elif method == "PATCH":
                session = sessions.find(kind, room_name, request.match_info["session"])
                body = await _read_body(request, SDPFRAG, MAX_FRAGMENT_BYTES)
                await sessions.trickle(session, body, request.headers.get("If-Match"))
                response = _response(204)
            else:  # DELETE
                session = sessions.find(kind, room_name, request.match_info["session"])
                await sessions.end(session, "DELETE by the client")
                response = _response(200)
        except HttpError as exc:
            response = _response(exc.status, exc.reason + "\n", headers=exc.headers)
        sessions.metrics.http_requests.labels(kind=kind, method=method, status=str(response.status)).inc()
        return response

    return handle


async def _options(request: web.Request) -> web.Response:
    """CORS preflight; also what an endpoint accepts (RFC 9725 §4.2: ``Accept-Post``)."""
    headers = {"Accept-Post": SDP} if "session" not in request.match_info else {"Accept-Patch": SDPFRAG}
    return _response(204, headers=headers)


def add_routes(app: web.Application, sessions: HttpSessions) -> None:
    """Serve ``/whip/{room}`` and ``/whep/{room}`` (and their sessions) on ``app``."""
    app[SESSIONS_KEY] = sessions
    for kind in KINDS:
        endpoint = f"/{kind}/{{room}}"
        resource = f"/{kind}/{{room}}/{{session}}"
        app.router.add_post(endpoint, _handler(kind, "POST"))
        app.router.add_route("OPTIONS", endpoint, _options)
        app.router.add_patch(resource, _handler(kind, "PATCH"))
        app.router.add_delete(resource, _handler(kind, "DELETE"))
        app.router.add_route("OPTIONS", resource, _options)

    async def _close(app: web.Application) -> None:
        await sessions.close()

    app.on_shutdown.insert(0, _close)
