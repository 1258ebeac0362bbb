"""The ``sfu`` command: ``sfu serve [--host H] [--port P] [--tls-cert C --tls-key K]
[--config FILE] ...`` runs the server; ``sfu token --room R --identity I [--name N]
[--grant G ...] [--ttl 6h]`` prints an access token (docs/AUTH.md).

``SFU_HOST`` and ``SFU_PORT`` override the defaults (127.0.0.1 and 8080); flags win
over both. The event loop is uvloop.
"""

from __future__ import annotations

import argparse
import logging
import os
import ssl
import sys

import uvloop
from aiohttp import web

from sfu.auth import (
    GRANT_FLAGS,
    KeyStore,
    VideoGrant,
    keys_from_environment,
    mint_token,
)
from sfu.metrics import COUNTERS
from sfu.room import RoomRegistry
from sfu.rtc.adapter import (
    check_aiortc_version,
    set_announced_addresses,
    set_ice_addresses,
)
from sfu.rtc.ports import set_udp_port_range
from sfu.rtc.udp_mux import set_udp_port
from sfu.turn import IceServers

from .access import Access
from .app import create_app
from .front import run_front
from .config import ConfigError, ServerConfig, load_config, parse_port_range

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``sfu`` command."""
    parser = argparse.ArgumentParser(prog="sfu", description="Python WebRTC SFU")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the SFU and its room service")
    serve.add_argument("--host", default=os.environ.get("SFU_HOST", "127.0.0.1"), help="bind address (env SFU_HOST)")
    serve.add_argument("--port", type=int, default=int(os.environ.get("SFU_PORT", "8080")), help="port (env SFU_PORT)")
    serve.add_argument(
        "--workers", type=int, default=int(os.environ["SFU_WORKERS"]) if os.environ.get("SFU_WORKERS") else None,
        help="worker processes, each with its own event loop, media sockets and rooms (env SFU_WORKERS; default: "
        "the number of cores; 1: one process, no front)",
    )
    serve.add_argument(
        "--redis", default=os.environ.get("SFU_REDIS"), metavar="URL",
        help="redis://host:port/db: this node joins a cluster whose rooms are placed through Redis (env SFU_REDIS)",
    )
    serve.add_argument(
        "--node-address", default=os.environ.get("SFU_NODE_ADDRESS"), metavar="ADDRESS",
        help="the address the other nodes reach this node's workers at (env SFU_NODE_ADDRESS; default 127.0.0.1)",
    )
    serve.add_argument("--tls-cert", help="PEM certificate: serve HTTPS and WSS")
    serve.add_argument("--tls-key", help="PEM private key for --tls-cert")
    serve.add_argument("--max-participants", type=int, help="per room (default 50, or [limits] max_participants)")
    serve.add_argument(
        "--publisher-bitrate", type=int, default=2_500_000, help="REMB sent to publishers, bit/s (default 2500000)"
    )
    serve.add_argument(
        "--ice-address",
        action="append",
        default=None,
        help="address for ICE host candidates (repeatable; env SFU_ICE_ADDRESSES, comma-separated). "
        "Default: 127.0.0.1 when --host is a loopback address, else every non-loopback interface",
    )
    serve.add_argument(
        "--no-media-metrics",
        action="store_true",
        help="do not count RTP packets/bytes or sample forwarding latency (to measure what metrics cost)",
    )
    serve.add_argument(
        "--connect-timeout",
        type=float,
        default=30.0,
        help="seconds a participant's media connection may take to come up after its first answer (default 30)",
    )
    serve.add_argument(
        "--reconnect-grace",
        type=float,
        default=10.0,
        help="seconds a participant whose client vanished (WebSocket dropped, PeerConnection failed) keeps its "
        "place and tracks for the client to reconnect; the others are told it left only after that (default 10; "
        "0: at once)",
    )
    serve.add_argument(
        "--no-transport-cc",
        action="store_true",
        help="do not negotiate transport-wide congestion control: estimate subscribers' downlinks from REMB and "
        "receiver reports only, send publishers REMB only (to compare)",
    )
    serve.add_argument("--config", help="TOML configuration file: [keys], [server], [webhook], [limits] (docs/CONFIG.md)")
    serve.add_argument(
        "--dev",
        action="store_true",
        help="allow development mode (no API keys: joins without tokens) on a non-loopback address",
    )
    serve.add_argument("--allowed-origin", action="append", help="a browser Origin allowed on /ws (repeatable; "
                       "default: the server's own)")
    serve.add_argument("--metrics-token", help="/metrics needs 'Authorization: Bearer TOKEN'")
    serve.add_argument("--metrics-port", type=int, help="serve /metrics on this port instead of the main one")
    serve.add_argument("--webhook", action="append", help="a URL that receives the webhooks (repeatable)")
    serve.add_argument("--max-rooms", type=int, help="rooms on the server at once (default 1000)")
    serve.add_argument(
        "--announced-address",
        action="append",
        metavar="ADDRESS",
        help="the address clients reach the server's media at (repeatable: one IPv4, one IPv6; env "
        "SFU_ANNOUNCED_ADDRESSES, comma-separated): written into the candidates while sockets bind the local "
        "interfaces, for a server behind 1:1 NAT (a cloud, a Docker port map)",
    )
    serve.add_argument(
        "--udp-port-range",
        metavar="LOW-HIGH",
        help="bind every media (ICE) socket to a UDP port in LOW-HIGH, e.g. 50000-60000 (env SFU_UDP_PORT_RANGE); "
        "a full range refuses the offer with no_media_port",
    )
    serve.add_argument(
        "--udp-port",
        metavar="P",
        type=int,
        help="carry every participant's media (ICE, DTLS, SRTP, SCTP) on the one UDP port P, per ICE address "
        "(env SFU_UDP_PORT); excludes --udp-port-range",
    )
    serve.add_argument("--stun", action="append", metavar="URL", help="a stun: URL given to clients (repeatable)")
    serve.add_argument("--turn", action="append", metavar="URL",
                       help="a turn:/turns: URL given to clients (repeatable; e.g. turn:host:3478?transport=tcp)")
    serve.add_argument("--turn-secret", default=os.environ.get("SFU_TURN_SECRET"),
                       help="the TURN REST API shared secret (coturn static-auth-secret; env SFU_TURN_SECRET): "
                       "credentials minted per participant")
    serve.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ...")
    token = sub.add_parser("token", help="print an access token (keys from SFU_KEYS or --config)")
    token.add_argument("--room", help="the room the grant is for")
    token.add_argument("--identity", required=True, help="the participant identity (sub)")
    token.add_argument("--name", help="display name")
    token.add_argument("--metadata", default="", help="application data (a string)")
    token.add_argument(
        "--grant",
        action="append",
        default=[],
        metavar="NAME[=false]",
        help=f"a grant to set (repeatable): {', '.join(GRANT_FLAGS)}; roomJoin is set when --room is given",
    )
    token.add_argument("--sources", help="canPublishSources, comma-separated (e.g. camera,microphone)")
    token.add_argument("--ttl", default="6h", help="lifetime: seconds, or with a unit s/m/h/d (default 6h)")
    token.add_argument("--api-key", help="which key signs (default: the first)")
    token.add_argument("--config", help="TOML configuration file with [keys]")
    return parser


def parse_ttl(text: str) -> float:
    """``90``, ``90s``, ``15m``, ``6h``, ``2d`` -> seconds.

    Raises:
        ValueError: not a positive duration.
    """
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    number, unit = (text[:-1], text[-1]) if text and text[-1] in units else (text, "s")
    value = float(number) * units[unit]
    if not value > 0:
        raise ValueError("the ttl must be positive")
    return value


def server_keys(config_path: str | None) -> KeyStore:
    """The API keys: ``[keys]`` of the configuration file plus ``SFU_KEYS``.

    Raises:
        ConfigError, ValueError: a bad file or entry.
    """
    keys = load_config(config_path).keys
    for key, secret in keys_from_environment().keys.items():
        keys.add(key, secret)
    return keys


def _token(args: argparse.Namespace) -> int:
    try:
        keys = server_keys(args.config)
        if not keys:
            print("sfu token: no API keys (set SFU_KEYS='key: secret' or give --config with [keys])", file=sys.stderr)
            return 2
        api_key = args.api_key or next(iter(keys.keys))
        secret = keys.secret(api_key)
        if secret is None:
            print(f"sfu token: no API key {api_key!r}", file=sys.stderr)
            return 2
        flags: dict[str, object] = {"roomJoin": args.room is not None}
        for item in args.grant:
            name, _, value = item.partition("=")
            if name not in GRANT_FLAGS or value not in ("", "true", "false"):
                print(f"sfu token: unknown grant {item!r}; one of {', '.join(GRANT_FLAGS)} [=false]", file=sys.stderr)
                return 2
            flags[name] = value != "false"
        if args.sources is not None:
            flags["canPublishSources"] = [s.strip() for s in args.sources.split(",") if s.strip()]
        grant = VideoGrant(room=args.room).merged(flags)
        print(mint_token(api_key, secret, args.identity, grant, name=args.name, metadata=args.metadata,
                         ttl_s=parse_ttl(args.ttl)))
        return 0
    except (ValueError, ConfigError) as exc:
        print(f"sfu token: {exc}", file=sys.stderr)
        return 2


def _is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


def ice_addresses(host: str, given: list[str] | None) -> list[str] | None:
    """The ICE host addresses to use: ``given``, else ``SFU_ICE_ADDRESSES``, else loopback
    for a loopback ``host``, else None (all non-loopback interfaces)."""
    if given:
        return given
    env = os.environ.get("SFU_ICE_ADDRESSES", "").strip()
    if env:
        return [a.strip() for a in env.split(",") if a.strip()]
    if host in ("localhost", "::1") or host.startswith("127."):
        return ["127.0.0.1"]
    return None


def udp_media_ports(args: argparse.Namespace, config: ServerConfig) -> int | tuple[int, int] | None:
    """The media ports asked for: one shared port P (``--udp-port``), a range (low, high)
    (``--udp-port-range``), or None (any port). Flags win over the environment
    (``SFU_UDP_PORT``, ``SFU_UDP_PORT_RANGE``), which wins over the file
    (``server.udp_port``, ``server.udp_port_range``); the two ways exclude each other.

    Raises:
        ValueError: both given at the same level, or a bad port or range.
    """
    env_port, env_range = os.environ.get("SFU_UDP_PORT", "").strip(), os.environ.get("SFU_UDP_PORT_RANGE", "").strip()
    for port, port_range, where in (
        (args.udp_port, args.udp_port_range, ("--udp-port", "--udp-port-range")),
        (env_port or None, env_range or None, ("SFU_UDP_PORT", "SFU_UDP_PORT_RANGE")),
    ):
        if port is not None and port_range is not None:
            raise ValueError(f"{where[0]} and {where[1]} exclude each other: one shared port for every participant, "
                             "or one port per participant in a range")
        if port is not None:
            try:
                value = int(port)
            except ValueError:
                raise ValueError(f"{where[0]}: not a port: {port!r}") from None
            if not 1 <= value <= 65535:
                raise ValueError(f"{where[0]}: a UDP port is 1-65535, not {value}")
            return value
        if port_range is not None:
            try:
                return parse_port_range(port_range)
            except ValueError as exc:
                raise ValueError(f"{where[1]}: {exc}") from None
    return config.udp_port if config.udp_port is not None else config.udp_port_range


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``sfu`` console script."""
    args = build_parser().parse_args(argv)
    if args.command == "token":
        return _token(args)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("aioice", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
    check_aiortc_version()
    ssl_context = None
    if args.tls_cert or args.tls_key:
        if not (args.tls_cert and args.tls_key):
            print("sfu: --tls-cert and --tls-key go together", file=sys.stderr)
            return 2
        ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ssl_context.load_cert_chain(args.tls_cert, args.tls_key)
    try:
        config = load_config(args.config)
        config.keys = server_keys(args.config)
        media_ports = udp_media_ports(args, config)
    except (ConfigError, ValueError) as exc:
        print(f"sfu: {exc}", file=sys.stderr)
        return 2
    if not config.keys and not _is_loopback(args.host) and not args.dev:
        print(
            f"sfu: no API keys configured and --host {args.host} is not a loopback address: anyone could join. "
            "Configure keys (SFU_KEYS or [keys] in --config), or pass --dev to run in development mode anyway.",
            file=sys.stderr,
        )
        return 2
    if args.allowed_origin:
        config.allowed_origins = args.allowed_origin
    if args.metrics_token:
        config.metrics_token = args.metrics_token
    if args.metrics_port is not None:
        config.metrics_port = args.metrics_port
    config.metrics_host = args.host
    if args.webhook:
        config.webhook_urls = args.webhook
    if args.max_rooms is not None:
        config.limits.max_rooms = args.max_rooms
    if args.max_participants is not None:
        config.limits.max_participants = args.max_participants
    if args.stun or args.turn or args.turn_secret:
        try:
            config.ice = IceServers(
                args.stun or config.ice.stun_urls, args.turn or config.ice.turn_urls,
                args.turn_secret or config.ice.turn_secret, config.ice.ttl_s,
            )
        except ValueError as exc:
            print(f"sfu: {exc}", file=sys.stderr)
            return 2
    if config.webhook_urls and not config.keys:
        print("sfu: webhooks are signed with an API key's secret: configure keys to send them", file=sys.stderr)
        return 2
    if config.webhook_api_key is not None and config.keys.secret(config.webhook_api_key) is None:
        print(f"sfu: [webhook] api_key {config.webhook_api_key!r} is not one of the API keys", file=sys.stderr)
        return 2
    access = Access.from_keys(config.keys)
    access.log_mode(f"{args.host}:{args.port}")
    workers = args.workers if args.workers is not None else (os.cpu_count() or 1)
    if workers < 1:
        print("sfu: --workers must be at least 1", file=sys.stderr)
        return 2
    if workers > 1 or args.redis:
        argv = list(sys.argv[1:] if argv is None else argv)
        serve_args = argv[argv.index("serve") + 1:] if "serve" in argv else argv
        return run_front(args, serve_args, config, access, workers, media_ports, ssl_context,
                         ice_addresses(args.host, args.ice_address))
    set_ice_addresses(ice_addresses(args.host, args.ice_address))
    announced = args.announced_address or [
        a.strip() for a in os.environ.get("SFU_ANNOUNCED_ADDRESSES", "").split(",") if a.strip()
    ]
    try:
        set_announced_addresses(announced)
    except ValueError as exc:
        print(f"sfu: --announced-address: {exc}", file=sys.stderr)
        return 2
    if announced:
        logging.getLogger("sfu").info("announcing %s in the candidates", ", ".join(announced))
    if isinstance(media_ports, tuple):
        set_udp_port_range(*media_ports)
    elif media_ports is not None:
        try:
            set_udp_port(media_ports)
        except OSError as exc:
            print(f"sfu: --udp-port {media_ports}: cannot bind it: {exc}", file=sys.stderr)
            return 2
        logging.getLogger("sfu").info("all media on UDP port %d", media_ports)
    COUNTERS.per_packet = not args.no_media_metrics
    uvloop.install()
    registry = RoomRegistry(
        max_participants=config.limits.max_participants,
        publisher_bitrate=args.publisher_bitrate,
        transport_cc=not args.no_transport_cc,
        connect_timeout=args.connect_timeout,
        reconnect_grace=args.reconnect_grace,
        max_rooms=config.limits.max_rooms,
    )
    web.run_app(
        create_app(registry, config=config, access=access),
        host=args.host,
        port=args.port,
        ssl_context=ssl_context,
        print=lambda msg: logging.getLogger("sfu").info(msg.strip()),
        shutdown_timeout=2.0,  # what is still open after the shutdown handlers is cut (exit within 5 s)
    )
    logging.getLogger("sfu").info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
