"""``sfu serve --workers N`` (N > 1) and ``sfu serve --redis URL``: this process becomes
the front (:mod:`signaling.router`) of N worker processes (:mod:`signaling.workers`),
with rooms placed locally (:class:`~signaling.placement.LocalPlacement`) or through
Redis (:class:`~signaling.redis_placement.RedisPlacement`)."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import secrets
import socket
import ssl

import aioice.ice
import uvloop
from aiohttp import web

from .access import Access
from .config import ServerConfig
from .placement import LocalPlacement, Placement
from .router import create_router_app
from .workers import Supervisor, Worker, worker_args

__all__ = ["run_front"]

logger = logging.getLogger("sfu")


def _free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _all_interface_addresses() -> list[str]:
    """The non-loopback addresses aioice would gather host candidates from."""
    return [a for a in aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=True)
            if not ipaddress.ip_address(a.split("%")[0]).is_loopback]


def run_front(
    args: argparse.Namespace,
    serve_args: list[str],
    config: ServerConfig,
    access: Access,
    count: int,
    media_ports: int | tuple[int, int] | None,
    ssl_context: ssl.SSLContext | None,
    ice: list[str] | None,
) -> int:
    """Run the front and its ``count`` workers until SIGTERM/SIGINT.

    Args:
        args: the parsed ``serve`` options.
        serve_args: the ``serve`` command line as given (passed on to the workers).
        media_ports: the shared UDP port (each worker takes the next one) or port range
            (split equally between the workers).
        ice: the ICE host addresses (None: every non-loopback interface).

    Returns:
        the exit status.
    """
    node_address = args.node_address or "127.0.0.1"
    node_id = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"
    ice = ice or _all_interface_addresses()
    udp_port = media_ports if isinstance(media_ports, int) else None
    udp_range = media_ports if isinstance(media_ports, tuple) else None
    workers = []
    for index in range(count):
        port = _free_port(node_address)
        extra = worker_args(serve_args, index, count, node_address, port, udp_port, udp_range)
        for address in ice:
            extra += ["--ice-address", address]
        host = f"[{node_address}]" if ":" in node_address else node_address
        workers.append(Worker(index, port, f"http://{host}:{port}", extra))
    placement: Placement
    if args.redis:
        from .redis_placement import RedisPlacement

        placement = RedisPlacement(args.redis, node_id)
    else:
        placement = LocalPlacement()
    log_dir = os.environ.get("SFU_WORKER_LOG_DIR") or None  # else the workers write to the front's output
    env = {}
    if access.development:  # the workers accept the tokens the front's /dev/token mints
        env["SFU_DEV_SECRET"] = access.keys.secret("devkey") or ""
    supervisor = Supervisor(workers, node_id, placement.report, placement.forget_worker, log_dir, env)
    logger.info("front of %d workers (node %s%s)", count, node_id, f", Redis {args.redis}" if args.redis else "")
    uvloop.install()
    web.run_app(
        create_router_app(placement, supervisor, config, access),
        host=args.host,
        port=args.port,
        ssl_context=ssl_context,
        print=lambda msg: logger.info(msg.strip()),
        shutdown_timeout=2.0,
    )
    logger.info("stopped")
    return 0

