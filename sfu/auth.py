"""Access tokens: who a participant is and what it may do, minted by an application's
backend and checked by the server.

A token is a JWT (RFC 7519) signed with HS256 (RFC 7518 §3.2) through PyJWT, with
LiveKit's claim names so that people who know LiveKit recognise them:

- ``iss``: the API key whose secret signed it; ``sub``: the participant identity;
- ``name``, ``metadata``: display name and application data (strings);
- ``nbf``, ``exp``: valid from / until (Unix seconds); ``jti``: a random id;
- ``video``: the grant object, :class:`VideoGrant` (``room``, ``roomJoin``,
  ``canPublish``, ``canSubscribe``, ``canPublishData``, ``canPublishSources``, ``hidden``,
  ``roomAdmin``, ``roomList``, ``roomCreate``).

An application backend mints tokens with :func:`mint_token` (or ``sfu token`` on the
command line); the server checks them with :func:`verify_token` against its
:class:`KeyStore`. docs/AUTH.md documents every claim.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

import jwt

__all__ = [
    "ALGORITHM",
    "DEFAULT_TTL_S",
    "GRANT_FLAGS",
    "TRACK_SOURCES",
    "AccessClaims",
    "InvalidToken",
    "KeyStore",
    "VideoGrant",
    "keys_from_environment",
    "mint_token",
    "verify_token",
]

ALGORITHM = "HS256"
DEFAULT_TTL_S = 6 * 3600
LEEWAY_S = 10  # clock skew allowed on nbf/exp, s
MAX_TOKEN_BYTES = 8192  # a longer token is refused before it is decoded
MAX_IDENTITY_CHARS = 128
MAX_NAME_CHARS = 64
MAX_METADATA_BYTES = 4096
MIN_SECRET_BYTES = 32  # HS256 keys shorter than the hash are weak (RFC 7518 §3.2)
TRACK_SOURCES = ("camera", "microphone", "screen", "screen_audio", "custom")
"""What a published track is, as the client says (``canPublishSources`` names these)."""


class InvalidToken(ValueError):
    """A token was refused: malformed, wrongly signed, signed with an unknown key,
    expired, not yet valid, or with claims of the wrong type. ``str()`` says which,
    without echoing the token."""


@dataclass(slots=True)
class VideoGrant:
    """What a token lets its holder do (the ``video`` claim; LiveKit's names).

    Attributes:
        room: the room the grant is for (join, admin); None for none in particular.
        room_join: may join ``room`` (``roomJoin``).
        can_publish: may publish tracks (``canPublish``; default true).
        can_subscribe: may receive the others' tracks (``canSubscribe``; default true).
        can_publish_data: may send DataChannel messages (``canPublishData``; default true).
        can_publish_sources: the sources it may publish (``canPublishSources``, names
            of :data:`TRACK_SOURCES`); None for any.
        hidden: joins without being listed to the others (a recorder, a monitor).
        room_admin: may manage ``room`` through the server API (``roomAdmin``).
        room_list: may list rooms (``roomList``).
        room_create: may create and delete rooms (``roomCreate``).
    """

    room: str | None = None
    room_join: bool = False
    can_publish: bool = True
    can_subscribe: bool = True
    can_publish_data: bool = True
    can_publish_sources: tuple[str, ...] | None = None
    hidden: bool = False
    room_admin: bool = False
    room_list: bool = False
    room_create: bool = False

    def allows_source(self, source: str) -> bool:
        """May publish a track of ``source`` (``""`` counts as ``custom``)."""
        if not self.can_publish:
            return False
        return self.can_publish_sources is None or (source or "custom") in self.can_publish_sources

    def to_claim(self) -> dict[str, Any]:
        """The ``video`` claim (camelCase keys; ``room`` and ``canPublishSources`` only
        when set)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("room", "can_publish_sources") and value is None:
                continue
            out[_CLAIM_NAMES[f.name]] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_claim(cls, claim: Any) -> VideoGrant:
        """Read a ``video`` claim; unknown keys are ignored, missing ones take the
        defaults.

        Raises:
            InvalidToken: not an object, or a value of the wrong type.
        """
        if claim is None:
            return cls()
        if not isinstance(claim, dict):
            raise InvalidToken("the 'video' claim must be an object")
        values: dict[str, Any] = {}
        for f in fields(cls):
            key = _CLAIM_NAMES[f.name]
            if key not in claim:
                continue
            value = claim[key]
            if f.name == "room":
                if value is not None and not (isinstance(value, str) and 0 < len(value) <= 64):
                    raise InvalidToken("'video.room' must be a room name")
            elif f.name == "can_publish_sources":
                if value is not None:
                    if not isinstance(value, list) or not all(isinstance(s, str) and s in TRACK_SOURCES for s in value):
                        raise InvalidToken(f"'video.canPublishSources' must list sources of {', '.join(TRACK_SOURCES)}")
                    value = tuple(value)
            elif not isinstance(value, bool):
                raise InvalidToken(f"'video.{key}' must be true or false")
            values[f.name] = value
        return cls(**values)

    def merged(self, changes: Mapping[str, Any]) -> VideoGrant:
        """This grant with the camelCase ``changes`` applied (the server API's grant
        update; same validation as :meth:`from_claim`)."""
        return replace(self, **{k: getattr(VideoGrant.from_claim(dict(changes)), k) for k in _fields_in(changes)})


_CLAIM_NAMES = {
    "room": "room",
    "room_join": "roomJoin",
    "can_publish": "canPublish",
    "can_subscribe": "canSubscribe",
    "can_publish_data": "canPublishData",
    "can_publish_sources": "canPublishSources",
    "hidden": "hidden",
    "room_admin": "roomAdmin",
    "room_list": "roomList",
    "room_create": "roomCreate",
}
_FIELD_NAMES = {v: k for k, v in _CLAIM_NAMES.items()}
GRANT_FLAGS = tuple(v for k, v in _CLAIM_NAMES.items() if k not in ("room", "can_publish_sources"))
"""The boolean grant claims (``sfu token --grant NAME`` takes these)."""


def _fields_in(changes: Mapping[str, Any]) -> list[str]:
    unknown = [k for k in changes if k not in _FIELD_NAMES]
    if unknown:
        raise InvalidToken(f"unknown grant {unknown[0]!r}")
    return [_FIELD_NAMES[k] for k in changes]


@dataclass(slots=True)
class AccessClaims:
    """What a verified token says.

    Attributes:
        api_key: ``iss``, the key that signed it.
        identity: ``sub``, 1-128 characters.
        name: display name (``name``, or the identity), 1-64 characters.
        metadata: application data (``metadata``), at most 4,096 bytes.
        grant: the ``video`` claim.
        expires_at: ``exp``, Unix seconds.
    """

    api_key: str
    identity: str
    name: str
    metadata: str
    grant: VideoGrant = field(default_factory=VideoGrant)
    expires_at: float = 0.0


class KeyStore:
    """API keys and their secrets (several at once: rotate by adding the new key,
    moving the backends to it, then removing the old one).

    Args:
        keys: API key -> secret.

    Raises:
        ValueError: an empty key, or a secret shorter than 32 bytes.
    """

    def __init__(self, keys: Mapping[str, str] | None = None) -> None:
        self.keys: dict[str, str] = {}
        for key, secret in (keys or {}).items():
            self.add(key, secret)

    def add(self, key: str, secret: str) -> None:
        """Add (or replace) one key."""
        if not key or not isinstance(key, str):
            raise ValueError("an API key must be a non-empty string")
        if not isinstance(secret, str) or len(secret.encode()) < MIN_SECRET_BYTES:
            raise ValueError(f"the secret of API key {key!r} must be at least {MIN_SECRET_BYTES} bytes")
        self.keys[key] = secret

    def __bool__(self) -> bool:
        return bool(self.keys)

    def secret(self, key: str) -> str | None:
        """The secret of ``key``, or None."""
        return self.keys.get(key)

    def any_key(self) -> tuple[str, str]:
        """One (key, secret) pair, for what the server signs itself (webhooks).

        Raises:
            LookupError: no key.
        """
        if not self.keys:
            raise LookupError("no API key")
        key = next(iter(self.keys))
        return key, self.keys[key]

    @classmethod
    def from_env_value(cls, value: str) -> KeyStore:
        """Parse ``SFU_KEYS``: ``key1: secret1, key2: secret2`` (LiveKit's
        ``LIVEKIT_KEYS`` format).

        Raises:
            ValueError: an entry without ``:``, or a bad key or secret.
        """
        store = cls()
        for entry in value.split(","):
            if not entry.strip():
                continue
            key, sep, secret = entry.partition(":")
            if not sep:
                raise ValueError("SFU_KEYS entries are 'key: secret', separated by commas")
            store.add(key.strip(), secret.strip())
        return store

    @classmethod
    def development(cls) -> KeyStore:
        """A key with a random secret that lives as long as this process (development
        mode: the server mints its own tokens), or as long as the front of a
        multi-worker server, whose workers get the front's from ``SFU_DEV_SECRET`` (so
        that a token the front mints is one every worker accepts)."""
        return cls({"devkey": os.environ.get("SFU_DEV_SECRET") or secrets.token_urlsafe(32)})


def mint_token(
    api_key: str,
    api_secret: str,
    identity: str,
    grant: VideoGrant,
    *,
    name: str | None = None,
    metadata: str = "",
    ttl_s: float = DEFAULT_TTL_S,
    now: float | None = None,
) -> str:
    """An access token for ``identity`` (the JWT, compact serialization).

    Args:
        api_key, api_secret: the key (``iss``) and its secret (HS256 key).
        identity: ``sub``.
        grant: the ``video`` claim.
        name: display name (default: none; the server shows the identity).
        metadata: application data.
        ttl_s: seconds until ``exp`` (default 6 h).
        now: Unix time to mint at (default: the clock).

    Raises:
        ValueError: an empty identity, or a name or metadata over their limits.
    """
    if not identity or len(identity) > MAX_IDENTITY_CHARS:
        raise ValueError(f"the identity must be 1-{MAX_IDENTITY_CHARS} characters")
    if name is not None and not 0 < len(name) <= MAX_NAME_CHARS:
        raise ValueError(f"the name must be 1-{MAX_NAME_CHARS} characters")
    if len(metadata.encode()) > MAX_METADATA_BYTES:
        raise ValueError(f"metadata must be at most {MAX_METADATA_BYTES} bytes")
    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {
        "iss": api_key,
        "sub": identity,
        "nbf": issued,
        "exp": issued + int(ttl_s),
        "jti": secrets.token_urlsafe(12),
        "video": grant.to_claim(),
    }
    if name is not None:
        claims["name"] = name
    if metadata:
        claims["metadata"] = metadata
    return jwt.encode(claims, api_secret, algorithm=ALGORITHM)


def verify_token(token: Any, keys: KeyStore, now: float | None = None) -> AccessClaims:
    """Check ``token``'s signature (with the secret of its ``iss``), its time claims
    (``exp`` required, ``nbf``; 10 s of clock skew allowed) and the types of its
    claims.

    Raises:
        InvalidToken: why it is refused.
    """
    if not isinstance(token, str) or not token:
        raise InvalidToken("no token")
    if len(token) > MAX_TOKEN_BYTES:
        raise InvalidToken(f"the token is longer than {MAX_TOKEN_BYTES} bytes")
    if not token.isascii():  # base64url and dots; PyJWT's decoding fails otherwise
        raise InvalidToken("malformed token")
    try:
        unverified = jwt.decode(token, options={"verify_signature": False})
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise InvalidToken("malformed token") from exc
    if header.get("alg") != ALGORITHM:
        raise InvalidToken(f"the token must be signed with {ALGORITHM}")
    key = unverified.get("iss")
    secret = keys.secret(key) if isinstance(key, str) else None
    if secret is None:
        raise InvalidToken("the token is signed with an unknown API key")
    options: dict[str, Any] = {"require": ["exp", "sub", "iss"]}
    if now is not None:  # PyJWT reads the clock itself: a given time is checked here instead
        options.update(verify_exp=False, verify_nbf=False)
    try:
        claims = jwt.decode(token, secret, algorithms=[ALGORITHM], leeway=LEEWAY_S, options=options)
    except jwt.ExpiredSignatureError as exc:
        raise InvalidToken("the token has expired") from exc
    except jwt.ImmatureSignatureError as exc:
        raise InvalidToken("the token is not valid yet") from exc
    except jwt.InvalidSignatureError as exc:
        raise InvalidToken("the token's signature does not match") from exc
    except jwt.PyJWTError as exc:
        raise InvalidToken(f"invalid token: {exc}") from exc
    if now is not None:
        _check_times(claims, now)
    identity, name, metadata = claims.get("sub"), claims.get("name"), claims.get("metadata", "")
    if not isinstance(identity, str) or not 0 < len(identity) <= MAX_IDENTITY_CHARS:
        raise InvalidToken(f"'sub' must be an identity of 1-{MAX_IDENTITY_CHARS} characters")
    if name is None or name == "":
        name = identity[:MAX_NAME_CHARS]
    if not isinstance(name, str) or len(name) > MAX_NAME_CHARS:
        raise InvalidToken(f"'name' must be a string of at most {MAX_NAME_CHARS} characters")
    if not isinstance(metadata, str) or len(metadata.encode("utf-8", "surrogatepass")) > MAX_METADATA_BYTES:
        raise InvalidToken(f"'metadata' must be a string of at most {MAX_METADATA_BYTES} bytes")
    return AccessClaims(key, identity, name, metadata, VideoGrant.from_claim(claims.get("video")), float(claims["exp"]))


def _check_times(claims: Mapping[str, Any], now: float) -> None:
    exp, nbf = claims.get("exp"), claims.get("nbf")
    if not isinstance(exp, (int, float)) or isinstance(exp, bool):
        raise InvalidToken("'exp' must be a number")
    if now > exp + LEEWAY_S:
        raise InvalidToken("the token has expired")
    if nbf is not None:
        if not isinstance(nbf, (int, float)) or isinstance(nbf, bool):
            raise InvalidToken("'nbf' must be a number")
        if now < nbf - LEEWAY_S:
            raise InvalidToken("the token is not valid yet")


def keys_from_environment() -> KeyStore:
    """``SFU_KEYS`` (``key: secret, ...``), or an empty store."""
    return KeyStore.from_env_value(os.environ.get("SFU_KEYS", ""))
