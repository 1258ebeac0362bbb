"""The server API for application backends: JSON over HTTP under ``/api``,
authenticated with ``Authorization: Bearer <access token>`` (docs/API.md).

=========  ===============================================================  ==============
method     path                                                             grant
=========  ===============================================================  ==============
GET        /api/rooms                                                       roomList
POST       /api/rooms  ``{"name", "maxParticipants"?}``                     roomCreate
DELETE     /api/rooms/{room}                                                roomCreate
GET        /api/rooms/{room}/participants                                   roomAdmin+room
GET        /api/rooms/{room}/participants/{identity}                        roomAdmin+room
DELETE     /api/rooms/{room}/participants/{identity}                        roomAdmin+room
PATCH      /api/rooms/{room}/participants/{identity}                        roomAdmin+room
           ``{"name"?, "metadata"?, "permissions"?}``
POST       /api/rooms/{room}/participants/{identity}/tracks/{track}/mute    roomAdmin+room
           ``{"muted"}``
POST       /api/rooms/{room}/data                                           roomAdmin+room
           ``{"data", "encoding"?, "to"?, "topic"?, "label"?}``
=========  ===============================================================  ==============

Errors are ``{"error": code, "message"}`` with 400 ``bad_request``, 401
``unauthorized``, 403 ``forbidden``, 404 ``not_found``, 503 ``too_many_rooms``.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from sfu.auth import MAX_METADATA_BYTES, MAX_NAME_CHARS, InvalidToken
from sfu.core.envelope import MAX_ENVELOPE_BYTES, MAX_TOPIC_CHARS, Outgoing
from sfu.participant import Participant
from sfu.room import InvalidRoomName, Room, RoomRegistry, TooManyRooms

from .access import Access, Unauthorized

__all__ = ["ApiError", "add_api_routes"]

MAX_API_BODY_BYTES = 96 * 1024  # a request's JSON body
REGISTRY = web.AppKey("api_registry", RoomRegistry)
ACCESS = web.AppKey("api_access", Access)


class ApiError(Exception):
    """An API request refused: HTTP ``status``, error ``code`` and a message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def room_object(room: Room) -> dict[str, Any]:
    """The API's room: ``{"name", "numParticipants", "maxParticipants", "createdAt"}``
    (hidden participants are not counted)."""
    return {
        "name": room.name,
        "numParticipants": sum(1 for p in room.participants.values() if not p.hidden),
        "maxParticipants": room.max_participants,
        "createdAt": int(room.created_at),
    }


def participant_object(participant: Participant) -> dict[str, Any]:
    """The API's participant: the protocol's participant object plus ``permissions``,
    ``hidden`` and ``state`` (the PeerConnection's)."""
    return {
        **participant.describe(),
        "permissions": participant.grant.to_claim(),
        "hidden": participant.hidden,
        "state": participant.connection.connection_state,
    }


def _claims(request: web.Request, room: str | None, *, room_admin: bool = False, flag: str | None = None) -> None:
    """Check the request's bearer token for ``roomAdmin`` of ``room`` or ``flag``.

    Raises:
        ApiError: 401 or 403.
    """
    try:
        claims = request.app[ACCESS].bearer(request)
    except Unauthorized as exc:
        raise ApiError(401, "unauthorized", str(exc)) from exc
    grant = claims.grant
    if room_admin and not (grant.room_admin and grant.room == room):
        raise ApiError(403, "forbidden", "the token needs roomAdmin for this room")
    if flag is not None and not getattr(grant, flag):
        raise ApiError(403, "forbidden", f"the token needs the {_CAMEL[flag]} grant")


_CAMEL = {"room_list": "roomList", "room_create": "roomCreate"}


async def _body(request: web.Request) -> dict[str, Any]:
    if request.content_length is not None and request.content_length > MAX_API_BODY_BYTES:
        raise ApiError(400, "bad_request", f"the body is over {MAX_API_BODY_BYTES} bytes")
    raw = await request.content.read(MAX_API_BODY_BYTES + 1)
    if len(raw) > MAX_API_BODY_BYTES:
        raise ApiError(400, "bad_request", f"the body is over {MAX_API_BODY_BYTES} bytes")
    try:
        body = json.loads(raw or b"{}")
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, "bad_request", "the body must be a JSON object") from exc
    if not isinstance(body, dict):
        raise ApiError(400, "bad_request", "the body must be a JSON object")
    return body


def _room(request: web.Request) -> Room:
    room = request.app[REGISTRY].rooms.get(request.match_info["room"])
    if room is None:
        raise ApiError(404, "not_found", "no such room")
    return room


def _participant(request: web.Request, room: Room) -> Participant:
    participant = room.find_identity(request.match_info["identity"])
    if participant is None:
        raise ApiError(404, "not_found", "no participant with this identity in the room")
    return participant


# -- handlers -----------------------------------------------------------------------------


async def list_rooms(request: web.Request) -> web.Response:
    _claims(request, None, flag="room_list")
    return web.json_response({"rooms": [room_object(r) for r in request.app[REGISTRY].rooms.values()]})


async def create_room(request: web.Request) -> web.Response:
    _claims(request, None, flag="room_create")
    body = await _body(request)
    name, limit = body.get("name"), body.get("maxParticipants")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 10_000):
        raise ApiError(400, "bad_request", "maxParticipants must be an integer 1-10000")
    registry = request.app[REGISTRY]
    existed = isinstance(name, str) and name in registry.rooms
    try:
        room = registry.create_room(name, limit)  # type: ignore[arg-type]
    except InvalidRoomName as exc:
        raise ApiError(400, "bad_request", str(exc)) from exc
    except TooManyRooms as exc:
        raise ApiError(503, "too_many_rooms", str(exc)) from exc
    return web.json_response(room_object(room), status=200 if existed else 201)


async def delete_room(request: web.Request) -> web.Response:
    _claims(request, None, flag="room_create")
    room = _room(request)
    await request.app[REGISTRY].delete_room(room)
    return web.json_response({"deleted": room.name})


async def list_participants(request: web.Request) -> web.Response:
    _claims(request, request.match_info["room"], room_admin=True)
    room = _room(request)
    return web.json_response({"participants": [participant_object(p) for p in room.participants.values()]})


async def get_participant(request: web.Request) -> web.Response:
    _claims(request, request.match_info["room"], room_admin=True)
    room = _room(request)
    return web.json_response(participant_object(_participant(request, room)))


async def remove_participant(request: web.Request) -> web.Response:
    _claims(request, request.match_info["room"], room_admin=True)
    room = _room(request)
    participant = _participant(request, room)
    request.app[REGISTRY].evict(room, participant, "removed")
    return web.json_response({"removed": participant.identity})


async def update_participant(request: web.Request) -> web.Response:
    _claims(request, request.match_info["room"], room_admin=True)
    room = _room(request)
    participant = _participant(request, room)
    body = await _body(request)
    unknown = set(body) - {"name", "metadata", "permissions"}
    if unknown:
        raise ApiError(400, "bad_request", f"unknown field {sorted(unknown)[0]!r}")
    changes: dict[str, Any] = {}
    if "name" in body:
        name = body["name"]
        if not isinstance(name, str) or not 0 < len(name.strip()) <= MAX_NAME_CHARS:
            raise ApiError(400, "bad_request", f"name must be 1-{MAX_NAME_CHARS} characters")
        changes["name"] = name.strip()
    if "metadata" in body:
        metadata = body["metadata"]
        if not isinstance(metadata, str) or len(metadata.encode("utf-8", "surrogatepass")) > MAX_METADATA_BYTES:
            raise ApiError(400, "bad_request", f"metadata must be a string of at most {MAX_METADATA_BYTES} bytes")
        changes["metadata"] = metadata
    if "permissions" in body:
        permissions = body["permissions"]
        if not isinstance(permissions, dict) or {"room", "hidden"} & permissions.keys():
            raise ApiError(400, "bad_request", "permissions is an object of grants (room and hidden cannot change)")
        try:
            changes["grant"] = participant.grant.merged(permissions)
        except InvalidToken as exc:
            raise ApiError(400, "bad_request", str(exc)) from exc
    room.update_participant(participant, changes)
    return web.json_response(participant_object(participant))


async def mute_track(request: web.Request) -> web.Response:
    _claims(request, request.match_info["room"], room_admin=True)
    room = _room(request)
    participant = _participant(request, room)
    body = await _body(request)
    muted = body.get("muted")
    if not isinstance(muted, bool):
        raise ApiError(400, "bad_request", "muted must be true or false")
    up = participant.uptracks.get(request.match_info["track"])
    if up is None:
        raise ApiError(404, "not_found", "the participant publishes no such track")
    up.set_server_muted(muted, time.monotonic() * 1000.0)
    room.on_track_muted(participant, up, by_server=True)
    return web.json_response(up.describe())


async def send_data(request: web.Request) -> web.Response:
    _claims(request, request.match_info["room"], room_admin=True)
    room = _room(request)
    body = await _body(request)
    data, encoding, topic, to = body.get("data"), body.get("encoding", "text"), body.get("topic"), body.get("to")
    if not isinstance(data, str):
        raise ApiError(400, "bad_request", "data must be a string (text, or base64 with encoding 'base64')")
    if encoding == "base64":
        try:
            payload: str | bytes = base64.b64decode(data, validate=True)
        except ValueError as exc:
            raise ApiError(400, "bad_request", "data is not valid base64") from exc
    elif encoding == "text":
        payload = data
    else:
        raise ApiError(400, "bad_request", "encoding must be 'text' or 'base64'")
    size = len(payload) if isinstance(payload, bytes) else len(payload.encode("utf-8", "surrogatepass"))
    if size > MAX_ENVELOPE_BYTES:
        raise ApiError(400, "bad_request", f"data is over {MAX_ENVELOPE_BYTES} bytes")
    if topic is not None and (not isinstance(topic, str) or len(topic) > MAX_TOPIC_CHARS):
        raise ApiError(400, "bad_request", f"topic must be a string of at most {MAX_TOPIC_CHARS} characters")
    targets = None
    if to is not None:
        if not isinstance(to, list) or not all(isinstance(i, str) for i in to) or len(to) > 1000:
            raise ApiError(400, "bad_request", "to must list participant identities")
        wanted = set(to)
        targets = frozenset(p.id for p in room.participants.values() if p.identity in wanted)
    label = body.get("label", "chat")
    if not isinstance(label, str) or not 0 < len(label) <= 64:
        raise ApiError(400, "bad_request", "label must be a DataChannel label of 1-64 characters")
    queued = room.send_data(Outgoing(payload, targets, topic), label)
    return web.json_response({"queued": queued})


def _guard(handler: Callable[[web.Request], Awaitable[web.Response]]) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def guarded(request: web.Request) -> web.Response:
        try:
            return await handler(request)
        except ApiError as exc:
            headers = {"WWW-Authenticate": 'Bearer realm="sfu"'} if exc.status == 401 else None
            return web.json_response({"error": exc.code, "message": exc.message}, status=exc.status, headers=headers)

    guarded.__doc__ = handler.__doc__
    return guarded


def add_api_routes(app: web.Application, registry: RoomRegistry, access: Access) -> None:
    """Serve the server API (the table above) on ``app``."""
    app[REGISTRY] = registry
    app[ACCESS] = access
    base = "/api/rooms"
    member = base + "/{room}/participants/{identity}"
    routes = [
        ("GET", base, list_rooms),
        ("POST", base, create_room),
        ("DELETE", base + "/{room}", delete_room),
        ("GET", base + "/{room}/participants", list_participants),
        ("GET", member, get_participant),
        ("DELETE", member, remove_participant),
        ("PATCH", member, update_participant),
        ("POST", member + "/tracks/{track}/mute", mute_track),
        ("POST", base + "/{room}/data", send_data),
    ]
    for method, path, handler in routes:
        app.router.add_route(method, path, _guard(handler))
