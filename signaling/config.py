"""The server's configuration file (TOML, ``sfu serve --config FILE``) and the limits
every connection is held to (docs/CONFIG.md).

    [keys]                      # API key = secret (also: SFU_KEYS="key: secret, ...")
    APIdemo = "a secret of at least 32 bytes ......"

    [server]
    allowed_origins = ["https://app.example.com"]
    metrics_token = "..."       # /metrics needs 'Authorization: Bearer <this>'
    metrics_port = 9100         # or: /metrics on its own port (then not on the main one)
    udp_port = 50000            # every participant's media on this one UDP port, or:
    # udp_port_range = "50000-60000"   # one port per participant inside this range

    [webhook]
    urls = ["https://app.example.com/sfu-events"]
    api_key = "APIdemo"         # signs the webhooks (default: the first key)

    [limits]                    # each: see Limits
    max_message_bytes = 262144

    [ice]                       # given to every client (the join reply's iceServers)
    stun_urls = ["stun:stun.example.com:3478"]
    turn_urls = ["turn:turn.example.com:3478", "turn:turn.example.com:3478?transport=tcp",
                 "turns:turn.example.com:5349"]
    turn_secret = "..."         # coturn's static-auth-secret: credentials per participant
    credential_ttl_s = 86400

Command-line flags win over the file.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from sfu.auth import KeyStore
from sfu.turn import IceServers

__all__ = ["ConfigError", "Limits", "ServerConfig", "load_config", "parse_port_range"]


class ConfigError(ValueError):
    """The configuration file cannot be read or holds a bad value."""


@dataclass(slots=True)
class Limits:
    """What one client may send and hold on the WebSocket room service (each refusal
    is an error with a code, or a close, and counts in
    ``sfu_limit_refusals_total{limit}``; WHIP/WHEP and the server API answer with HTTP
    statuses instead).

    Attributes:
        max_message_bytes: one WebSocket message (bytes): a bigger one closes the
            socket with 1009 (message too big), as aiohttp does.
        messages_per_second: WebSocket messages per connection per second (token
            bucket, bursts of twice as many); beyond: ``rate_limited``.
        offers_per_minute: offers per connection per minute; beyond: ``rate_limited``.
        max_tracks: tracks one participant publishes at once; beyond: ``too_many_tracks``.
        max_media_sections: audio/video m-lines of one participant's offer (published,
            subscribed and unused); beyond: ``too_many_media_sections``.
        max_candidates: ICE candidates one connection may trickle; beyond:
            ``too_many_candidates`` (each makes the server check an address the client
            chose).
        max_rooms: rooms on the server; beyond: ``too_many_rooms``.
        max_participants: participants per room; beyond: ``room_full``.
    """

    max_message_bytes: int = 256 * 1024
    messages_per_second: float = 50.0
    offers_per_minute: float = 60.0
    max_tracks: int = 16
    max_media_sections: int = 256
    max_candidates: int = 64
    max_rooms: int = 1000
    max_participants: int = 50


@dataclass(slots=True)
class ServerConfig:
    """Everything the file can set (see the module docstring)."""

    keys: KeyStore = field(default_factory=KeyStore)
    allowed_origins: list[str] = field(default_factory=list)
    metrics_token: str | None = None
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"  # where metrics_port listens (the server's --host)
    udp_port: int | None = None  # one shared UDP port for all media (sfu/rtc/udp_mux.py)
    udp_port_range: tuple[int, int] | None = None  # one UDP port per participant in (low, high)
    webhook_urls: list[str] = field(default_factory=list)
    webhook_api_key: str | None = None
    limits: Limits = field(default_factory=Limits)
    ice: IceServers = field(default_factory=IceServers)


def _typed(table: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    value = table[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise ConfigError(f"{where}.{key} has the wrong type")
    return value


def parse_port_range(text: str) -> tuple[int, int]:
    """``"LOW-HIGH"`` (or one port ``"P"``) -> (low, high), 1 <= low <= high <= 65535.

    Raises:
        ValueError: not of that form.
    """
    low, _, high = text.strip().partition("-")
    try:
        bounds = (int(low), int(high or low))
    except ValueError:
        raise ValueError(f"a UDP port range is LOW-HIGH, not {text!r}") from None
    if not 1 <= bounds[0] <= bounds[1] <= 65535:
        raise ValueError(f"a UDP port range is 1 <= LOW <= HIGH <= 65535, not {text!r}")
    return bounds


def load_config(path: str | Path | None) -> ServerConfig:
    """Read a configuration file (None: the defaults).

    Raises:
        ConfigError: unreadable file, bad TOML, unknown key or a value of the wrong
            type or range.
    """
    config = ServerConfig()
    if path is None:
        return config
    try:
        data = tomllib.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    unknown = set(data) - {"keys", "server", "webhook", "limits", "ice"}
    if unknown:
        raise ConfigError(f"unknown table(s) {sorted(unknown)} in {path}")
    try:
        for key, secret in data.get("keys", {}).items():
            if not isinstance(secret, str):
                raise ConfigError(f"keys.{key} must be a string")
            config.keys.add(key, secret)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    server = data.get("server", {})
    for key in server:
        if key == "allowed_origins":
            origins = _typed(server, key, list, "server")
            if not all(isinstance(o, str) for o in origins):
                raise ConfigError("server.allowed_origins must list strings")
            config.allowed_origins = origins
        elif key == "metrics_token":
            config.metrics_token = _typed(server, key, str, "server")
        elif key == "metrics_port":
            config.metrics_port = _typed(server, key, int, "server")
        elif key == "udp_port":
            config.udp_port = _typed(server, key, int, "server")
            if not 1 <= config.udp_port <= 65535:
                raise ConfigError("server.udp_port must be 1-65535")
        elif key == "udp_port_range":
            try:
                config.udp_port_range = parse_port_range(_typed(server, key, str, "server"))
            except ValueError as exc:
                raise ConfigError(f"server.udp_port_range: {exc}") from exc
        else:
            raise ConfigError(f"unknown key server.{key}")
    if config.udp_port is not None and config.udp_port_range is not None:
        raise ConfigError("server.udp_port and server.udp_port_range exclude each other: one shared port, "
                          "or one port per participant in a range")
    webhook = data.get("webhook", {})
    for key in webhook:
        if key == "urls":
            urls = _typed(webhook, key, list, "webhook")
            if not all(isinstance(u, str) and u.startswith(("http://", "https://")) for u in urls):
                raise ConfigError("webhook.urls must list http(s) URLs")
            config.webhook_urls = urls
        elif key == "api_key":
            config.webhook_api_key = _typed(webhook, key, str, "webhook")
        else:
            raise ConfigError(f"unknown key webhook.{key}")
    ice = data.get("ice", {})
    for key in ice:
        if key in ("stun_urls", "turn_urls"):
            urls = _typed(ice, key, list, "ice")
            if not all(isinstance(u, str) for u in urls):
                raise ConfigError(f"ice.{key} must list URLs")
        elif key == "turn_secret":
            _typed(ice, key, str, "ice")
        elif key == "credential_ttl_s":
            if _typed(ice, key, int, "ice") <= 0:
                raise ConfigError("ice.credential_ttl_s must be positive")
        else:
            raise ConfigError(f"unknown key ice.{key}")
    try:
        config.ice = IceServers(
            list(ice.get("stun_urls", [])), list(ice.get("turn_urls", [])), ice.get("turn_secret"),
            ice.get("credential_ttl_s", config.ice.ttl_s),
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    limits = data.get("limits", {})
    names = {f.name: f.type for f in fields(Limits)}
    for key in limits:
        if key not in names:
            raise ConfigError(f"unknown key limits.{key}")
        value = _typed(limits, key, (int, float) if names[key] == "float" else int, "limits")
        if value <= 0:
            raise ConfigError(f"limits.{key} must be positive")
        setattr(config.limits, key, value)
    return config
