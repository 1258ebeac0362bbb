"""A Python client of the server API (docs/API.md) for application backends.

    async with ServerApi("http://127.0.0.1:8080", "APIkey", "secret...") as api:
        await api.create_room("demo", max_participants=10)
        for p in await api.list_participants("demo"):
            print(p["identity"], p["permissions"])
        await api.update_participant("demo", "alice", permissions={"canPublish": False})

Each call mints itself a short-lived token with the grant it needs (``roomList``,
``roomCreate``, or ``roomAdmin`` of the room), signed with the API key's secret, so the
backend holds only the key and the secret.
"""

from __future__ import annotations

import base64
from typing import Any
from urllib.parse import quote

import aiohttp

from .auth import VideoGrant, mint_token

__all__ = ["ServerApi", "ServerApiError"]

CALL_TOKEN_TTL_S = 600  # lifetime of the token minted for one call, s


class ServerApiError(Exception):
    """The server refused a call: HTTP ``status`` (401, 403, 404, 400, 503) and the
    API's error ``code`` (``unauthorized``, ``forbidden``, ``not_found``,
    ``bad_request``, ``too_many_rooms``)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


class ServerApi:
    """The server API at ``url`` (``http(s)://host:port``), called with tokens signed by
    ``api_key``/``api_secret``.

    Args:
        url: the server's base URL.
        api_key, api_secret: one of the server's API keys and its secret.
        session: an aiohttp session to use (default: one of its own, closed by
            :meth:`close`).
        timeout_s: per request, s.
    """

    def __init__(
        self, url: str, api_key: str, api_secret: str, session: aiohttp.ClientSession | None = None, timeout_s: float = 10.0
    ) -> None:
        self.url = url.rstrip("/")
        self.api_key = api_key
        self.api_secret = api_secret
        self._session = session
        self._own_session = session is None
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def __aenter__(self) -> ServerApi:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the session if it is the client's own."""
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    def token(self, grant: VideoGrant, identity: str = "server-api") -> str:
        """A token for one call with ``grant``."""
        return mint_token(self.api_key, self.api_secret, identity, grant, ttl_s=CALL_TOKEN_TTL_S)

    async def _call(self, method: str, path: str, grant: VideoGrant, body: dict[str, Any] | None = None) -> Any:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        headers = {"Authorization": f"Bearer {self.token(grant)}"}
        async with self._session.request(
            method, self.url + path, json=body, headers=headers, timeout=self._timeout
        ) as response:
            try:
                payload = await response.json(content_type=None)
            except ValueError:
                payload = None
            if response.status >= 400:
                if isinstance(payload, dict):
                    raise ServerApiError(response.status, str(payload.get("error")), str(payload.get("message")))
                raise ServerApiError(response.status, "http_error", response.reason or "")
            return payload

    @staticmethod
    def _admin(room: str) -> VideoGrant:
        return VideoGrant(room=room, room_admin=True)

    @staticmethod
    def _member(room: str, identity: str) -> str:
        return f"/api/rooms/{quote(room, safe='')}/participants/{quote(identity, safe='')}"

    # -- rooms ---------------------------------------------------------------------------

    async def list_rooms(self) -> list[dict[str, Any]]:
        """Every room: ``[{"name", "numParticipants", "maxParticipants", "createdAt"}]``."""
        return (await self._call("GET", "/api/rooms", VideoGrant(room_list=True)))["rooms"]

    async def create_room(self, name: str, max_participants: int | None = None) -> dict[str, Any]:
        """Create ``name`` (nothing changes if it exists); returns the room."""
        body: dict[str, Any] = {"name": name}
        if max_participants is not None:
            body["maxParticipants"] = max_participants
        return await self._call("POST", "/api/rooms", VideoGrant(room_create=True), body)

    async def delete_room(self, name: str) -> None:
        """Delete ``name``: everyone in it is removed (told ``room_deleted``)."""
        await self._call("DELETE", f"/api/rooms/{quote(name, safe='')}", VideoGrant(room_create=True))

    # -- participants ----------------------------------------------------------------------

    async def list_participants(self, room: str) -> list[dict[str, Any]]:
        """The participants of ``room`` (hidden ones too), with their ``permissions``."""
        return (await self._call("GET", f"/api/rooms/{quote(room, safe='')}/participants", self._admin(room)))["participants"]

    async def get_participant(self, room: str, identity: str) -> dict[str, Any]:
        """One participant of ``room`` by identity."""
        return await self._call("GET", self._member(room, identity), self._admin(room))

    async def remove_participant(self, room: str, identity: str) -> None:
        """Remove a participant (it is told ``removed`` and disconnected)."""
        await self._call("DELETE", self._member(room, identity), self._admin(room))

    async def update_participant(
        self,
        room: str,
        identity: str,
        *,
        name: str | None = None,
        metadata: str | None = None,
        permissions: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Change a participant's name, metadata and/or grants (camelCase, e.g.
        ``{"canPublish": False}``); they take effect at once. Returns the participant."""
        body: dict[str, Any] = {}
        if name is not None:
            body["name"] = name
        if metadata is not None:
            body["metadata"] = metadata
        if permissions is not None:
            body["permissions"] = permissions
        return await self._call("PATCH", self._member(room, identity), self._admin(room), body)

    async def mute_track(self, room: str, identity: str, track_id: str, muted: bool) -> dict[str, Any]:
        """Mute (nothing of it is forwarded) or unmute a published track; returns it."""
        path = f"{self._member(room, identity)}/tracks/{quote(track_id, safe='')}/mute"
        return await self._call("POST", path, self._admin(room), {"muted": muted})

    async def send_data(
        self,
        room: str,
        data: str | bytes,
        *,
        to: list[str] | None = None,
        topic: str | None = None,
        label: str = "chat",
    ) -> int:
        """A DataChannel message from the server (``from`` ``"server"``) to everyone in
        ``room``, or to the identities ``to``; returns how many it was queued for."""
        body: dict[str, Any] = {"label": label}
        if isinstance(data, bytes):
            body.update(data=base64.b64encode(data).decode(), encoding="base64")
        else:
            body["data"] = data
        if to is not None:
            body["to"] = to
        if topic is not None:
            body["topic"] = topic
        return (await self._call("POST", f"/api/rooms/{quote(room, safe='')}/data", self._admin(room), body))["queued"]
