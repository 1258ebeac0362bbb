"""The ``sfu`` command: ``sfu serve [--host H] [--port P] [--tls-cert C --tls-key K]``.

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

from sfu.metrics import COUNTERS
from sfu.room import RoomRegistry
from sfu.rtc.adapter import check_aiortc_version, set_ice_addresses

from .app import create_app

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``sfu`` command."""
    parser = argparse.ArgumentParser(prog="sfu", description="Python WebRTC SFU")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the SFU and its room service")
    serve.add_argument("--host", default=os.environ.get("SFU_HOST", "127.0.0.1"), help="bind address (env SFU_HOST)")
    serve.add_argument("--port", type=int, default=int(os.environ.get("SFU_PORT", "8080")), help="port (env SFU_PORT)")
    serve.add_argument("--tls-cert", help="PEM certificate: serve HTTPS and WSS")
    serve.add_argument("--tls-key", help="PEM private key for --tls-cert")
    serve.add_argument("--max-participants", type=int, default=50, help="per room (default 50)")
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
        "--no-transport-cc",
        action="store_true",
        help="do not negotiate transport-wide congestion control: estimate subscribers' downlinks from REMB and "
        "receiver reports only, send publishers REMB only (to compare)",
    )
    serve.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ...")
    return parser


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


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``sfu`` console script."""
    args = build_parser().parse_args(argv)
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
    set_ice_addresses(ice_addresses(args.host, args.ice_address))
    COUNTERS.per_packet = not args.no_media_metrics
    uvloop.install()
    registry = RoomRegistry(
        max_participants=args.max_participants,
        publisher_bitrate=args.publisher_bitrate,
        transport_cc=not args.no_transport_cc,
        connect_timeout=args.connect_timeout,
    )
    web.run_app(
        create_app(registry),
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
