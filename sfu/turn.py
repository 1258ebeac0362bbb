"""ICE servers for clients, with TURN credentials minted per participant.

The TURN REST API scheme (draft-uberti-behave-turn-rest-00 §2.2), which coturn checks
with ``use-auth-secret`` and ``static-auth-secret``: the username is
``<expiry>:<identity>`` (expiry in Unix seconds) and the password is the base64 of the
HMAC-SHA1 of that username keyed with the shared secret. The TURN server needs no list
of users, and a credential stops working at its expiry.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from dataclasses import dataclass, field
from typing import Any

__all__ = ["DEFAULT_CREDENTIAL_TTL_S", "IceServers", "turn_rest_credentials"]

DEFAULT_CREDENTIAL_TTL_S = 24 * 3600
_SCHEMES = ("stun:", "turn:", "turns:")


def turn_rest_credentials(secret: str, identity: str, ttl_s: float, now: float | None = None) -> tuple[str, str]:
    """A TURN username and password valid for ``ttl_s`` seconds from ``now`` (Unix
    seconds; default: the clock).

    Returns:
        (``"<expiry>:<identity>"``, base64 of HMAC-SHA1(secret, username)).

    Raises:
        ValueError: an empty secret, or a non-positive ttl.
    """
    if not secret:
        raise ValueError("the TURN shared secret is empty")
    if ttl_s <= 0:
        raise ValueError("the credential lifetime must be positive")
    expiry = int((time.time() if now is None else now) + ttl_s)
    username = f"{expiry}:{identity}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode()


@dataclass(slots=True)
class IceServers:
    """The STUN and TURN servers the server gives each client (the join reply's
    ``iceServers``, WHIP/WHEP ``Link`` headers).

    Attributes:
        stun_urls: ``stun:`` URLs.
        turn_urls: ``turn:`` (UDP, TCP with ``?transport=tcp``) and ``turns:`` (TLS)
            URLs of one TURN service that shares ``turn_secret``.
        turn_secret: the TURN REST API shared secret (coturn ``static-auth-secret``);
            None: the TURN URLs are given without credentials.
        ttl_s: lifetime of each credential, s.
    """

    stun_urls: list[str] = field(default_factory=list)
    turn_urls: list[str] = field(default_factory=list)
    turn_secret: str | None = None
    ttl_s: float = DEFAULT_CREDENTIAL_TTL_S

    def __post_init__(self) -> None:
        for url in self.stun_urls:
            if not url.startswith("stun:"):
                raise ValueError(f"not a stun: URL: {url!r}")
        for url in self.turn_urls:
            if not url.startswith(("turn:", "turns:")):
                raise ValueError(f"not a turn: or turns: URL: {url!r}")

    def __bool__(self) -> bool:
        return bool(self.stun_urls or self.turn_urls)

    def for_client(self, identity: str, now: float | None = None) -> list[dict[str, Any]]:
        """The ``RTCIceServer`` list (W3C WebRTC §4.2.1 shape: ``urls``, ``username``,
        ``credential``) for the participant ``identity``, TURN credentials minted now."""
        out: list[dict[str, Any]] = []
        if self.stun_urls:
            out.append({"urls": list(self.stun_urls)})
        if self.turn_urls:
            server: dict[str, Any] = {"urls": list(self.turn_urls)}
            if self.turn_secret:
                server["username"], server["credential"] = turn_rest_credentials(self.turn_secret, identity, self.ttl_s, now)
            out.append(server)
        return out

    def link_headers(self, identity: str, now: float | None = None) -> list[str]:
        """The same servers as ``Link`` header values (RFC 9725 §4.6, RFC 8288): one
        per URL, ``rel="ice-server"``, with ``username``, ``credential`` and
        ``credential-type="password"`` for TURN."""
        out = []
        for server in self.for_client(identity, now):
            params = ""
            if "username" in server:
                params = f'; username="{server["username"]}"; credential="{server["credential"]}"; credential-type="password"'
            out += [f'<{url}>; rel="ice-server"{params}' for url in server["urls"]]
        return out
