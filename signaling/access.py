"""Who may join and call the server: the server's API keys, the join's token, the
server API's bearer tokens, and development mode (docs/AUTH.md).

With API keys configured every join carries an access token (:mod:`sfu.auth`) and the
identity, name, metadata and grants come from it only. With none the server runs in
development mode: a key with a random secret is made at start, a join without a token
gets every participant grant in the room it names (the demo page joins from
``/?room=R&name=N``), and ``GET /dev/token`` mints tokens for trying the real thing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from sfu.auth import (
    AccessClaims,
    InvalidToken,
    KeyStore,
    VideoGrant,
    mint_token,
    verify_token,
)
from sfu.participant import new_id

__all__ = ["Access", "Forbidden", "Unauthorized"]

logger = logging.getLogger(__name__)


class Unauthorized(Exception):
    """No usable token: missing, malformed, wrongly signed, expired... (HTTP 401,
    protocol error ``invalid_token``)."""


class Forbidden(Exception):
    """A valid token whose grants do not allow the action (HTTP 403, protocol error
    ``forbidden``)."""


@dataclass(slots=True)
class Access:
    """The server's keys and mode.

    Args:
        keys: the API keys; empty means development mode (a random key is made).
    """

    keys: KeyStore
    development: bool

    @classmethod
    def from_keys(cls, keys: KeyStore | None) -> Access:
        """Access with ``keys``, or development mode when there are none."""
        if keys:
            return cls(keys, False)
        return cls(KeyStore.development(), True)

    def verify(self, token: Any) -> AccessClaims:
        """The claims of a valid token.

        Raises:
            Unauthorized: why the token is refused.
        """
        try:
            return verify_token(token, self.keys)
        except InvalidToken as exc:
            raise Unauthorized(str(exc)) from exc

    def join_claims(self, token: str | None, room: str | None, name: str | None) -> AccessClaims:
        """Who is joining, and where: from ``token``; in development mode a join
        without a token is a participant with every participant grant in ``room``,
        named ``name``, with a random identity.

        Raises:
            Unauthorized: no token (outside development mode) or a refused one.
            Forbidden: the token does not grant ``roomJoin`` for a room, or names
                another room than ``room``.
        """
        if token is None:
            if not self.development:
                raise Unauthorized("this server needs an access token to join (docs/AUTH.md)")
            if room is None or name is None:
                raise Unauthorized("a join without a token names its room and name")
            return AccessClaims("development", new_id("ID"), name, "", VideoGrant(room=room, room_join=True))
        claims = self.verify(token)
        grant = claims.grant
        if not grant.room_join or grant.room is None:
            raise Forbidden("the token does not grant joining a room (video.roomJoin and video.room)")
        if room is not None and room != grant.room:
            raise Forbidden(f"the token is for room {grant.room!r}, not this one")
        return claims

    def bearer(self, request: web.Request) -> AccessClaims:
        """The claims of the request's ``Authorization: Bearer`` token (RFC 6750 §2.1).

        Raises:
            Unauthorized: no bearer token, or a refused one.
        """
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("send 'Authorization: Bearer <access token>'")
        return self.verify(token.strip())

    def dev_token(self, room: str, name: str, identity: str | None = None, admin: bool = False) -> str:
        """Development mode only: a token for ``name`` in ``room`` with every
        participant grant (and ``admin``: roomAdmin of ``room``, roomList, roomCreate),
        valid for 6 hours.

        Raises:
            RuntimeError: not in development mode.
            ValueError: a bad name or identity.
        """
        if not self.development:
            raise RuntimeError("tokens are minted by the application's backend outside development mode")
        key, secret = self.keys.any_key()
        grant = VideoGrant(room=room, room_join=True, room_admin=admin, room_list=admin, room_create=admin)
        return mint_token(key, secret, identity or new_id("ID"), grant, name=name)

    def log_mode(self, host: str) -> None:
        """Say at start which mode the server runs in."""
        if self.development:
            logger.warning(
                "DEVELOPMENT MODE: no API keys configured; anyone who reaches %s may join any room without a token "
                "and GET /dev/token mints tokens. Configure keys (SFU_KEYS or [keys] in --config) for production.",
                host,
            )
        else:
            logger.info("access tokens required; %d API key(s) configured", len(self.keys.keys))
