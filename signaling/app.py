"""The aiohttp application: ``/ws`` (room protocol), ``/whip`` and ``/whep`` (WHIP
ingest and WHEP playback over HTTP), ``/api/...`` (the server API, docs/API.md),
``/healthz``, ``/metrics``, ``/admin/rooms`` (JSON statistics, for a token with
``roomList``), ``/dev/token`` (development mode only) and the browser client from
``web/`` at ``/``."""

from __future__ import annotations

import asyncio
import hmac
from pathlib import Path

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    disable_created_metrics,
    generate_latest,
)
from yarl import URL

from sfu.metrics import COUNTERS, MediaCollector, RuntimeCollector
from sfu.room import ROOM_NAME, RoomRegistry
from sfu.rtc.adapter import quiet_connect_after_close

from .access import Access, Unauthorized
from .api import add_api_routes
from .config import ServerConfig
from .metrics import SignalingMetrics, watch_event_loop_lag
from .protocol import MAX_NAME_CHARS
from .session import Session
from .webhooks import WebhookNotifier, room_listener
from .whip import HttpSessions, add_routes

__all__ = ["create_app", "origin_allowed", "WEB_DIR"]

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
REGISTRY_KEY = web.AppKey("registry", RoomRegistry)
METRICS_KEY = web.AppKey("metrics", CollectorRegistry)
SIGNALING_METRICS_KEY = web.AppKey("signaling_metrics", SignalingMetrics)
LAG_TASK_KEY = web.AppKey("lag_task", asyncio.Task)
SESSIONS_KEY = web.AppKey("sessions", set)
SHUTTING_DOWN_KEY = web.AppKey("shutting_down", list)
CONFIG_KEY = web.AppKey("config", ServerConfig)
ACCESS_KEY = web.AppKey("access", Access)
METRICS_RUNNER_KEY = web.AppKey("metrics_runner", web.AppRunner)
SHUTDOWN_GRACE_S = 1.0  # time for the server_shutdown events and close frames to leave
WEBHOOK_FLUSH_S = 1.5  # at shutdown, time for the last webhooks (the exit stays within 5 s)
MAX_HTTP_BODY_BYTES = 256 * 1024  # an HTTP request body (the API's JSON; WHIP reads its own bounded body)


def origin_allowed(request: web.Request, allowed: list[str]) -> bool:
    """A browser's ``Origin`` (RFC 6454) is one of ``allowed``, or the server's own
    (its host and port are the request's ``Host``); a client that sends none (not a
    browser) is let through."""
    origin = request.headers.get("Origin")
    if origin is None or origin in allowed:
        return True
    return URL(origin).raw_authority == request.host if origin not in ("", "null") else False


async def _ws(request: web.Request) -> web.StreamResponse:
    if request.app[SHUTTING_DOWN_KEY]:
        return web.Response(status=503, text="the server is shutting down\n", headers={"Retry-After": "5"})
    config = request.app[CONFIG_KEY]
    if not origin_allowed(request, config.allowed_origins):
        request.app[SIGNALING_METRICS_KEY].limit_refusals.labels(limit="origin").inc()
        return web.Response(status=403, text="this Origin may not use the room service\n")
    ws = web.WebSocketResponse(heartbeat=5.0, max_msg_size=config.limits.max_message_bytes)
    await ws.prepare(request)
    session = Session(
        ws, request.app[REGISTRY_KEY], request.app[SIGNALING_METRICS_KEY], request.app[ACCESS_KEY],
        request.query.get("access_token"), config.limits, config.ice,
    )
    sessions = request.app[SESSIONS_KEY]
    sessions.add(session)
    try:
        await session.run()
    finally:
        sessions.discard(session)
    return ws


async def _internal_load(request: web.Request) -> web.Response:
    """For the front of a multi-worker server (:mod:`signaling.workers`), on loopback
    only: the rooms this worker holds, its participants and RTP packets sent so far."""
    if request.remote not in ("127.0.0.1", "::1"):
        return web.Response(status=403, text="loopback only\n")
    registry = request.app[REGISTRY_KEY]
    _, participants, _, _ = registry.gauges()
    sent = sum(k.packets_sent for k in COUNTERS.kinds.values())
    return web.json_response({"rooms": list(registry.rooms), "participants": participants, "packetsSent": sent})


async def _healthz(request: web.Request) -> web.Response:
    rooms, participants, _, _ = request.app[REGISTRY_KEY].gauges()
    return web.json_response({"status": "ok", "rooms": rooms, "participants": participants})


async def _metrics(request: web.Request) -> web.Response:
    token = request.app[CONFIG_KEY].metrics_token
    if token is not None and not hmac.compare_digest(request.headers.get("Authorization", ""), f"Bearer {token}"):
        return web.Response(status=401, text="send 'Authorization: Bearer <metrics token>'\n",
                            headers={"WWW-Authenticate": 'Bearer realm="metrics"'})
    body = generate_latest(request.app[METRICS_KEY])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _admin_rooms(request: web.Request) -> web.Response:
    """Rooms, participants and per-track statistics for debugging (JSON); a bearer
    token with ``roomList`` outside development mode."""
    access = request.app[ACCESS_KEY]
    if not (access.development and "Authorization" not in request.headers):
        try:
            claims = access.bearer(request)
        except Unauthorized as exc:
            return web.json_response({"error": "unauthorized", "message": str(exc)}, status=401)
        if not claims.grant.room_list:
            return web.json_response({"error": "forbidden", "message": "needs the roomList grant"}, status=403)
    return web.json_response(request.app[REGISTRY_KEY].snapshot())


async def _dev_token(request: web.Request) -> web.Response:
    """Development mode: ``GET /dev/token?room=R&name=N[&identity=I][&admin=1]`` ->
    ``{"token"}`` with every participant grant in R (and with ``admin=1``, roomAdmin
    of R, roomList and roomCreate: for trying the server API)."""
    room, name = request.query.get("room", ""), request.query.get("name", "")
    if not ROOM_NAME.fullmatch(room) or not 0 < len(name) <= MAX_NAME_CHARS:
        return web.json_response({"error": "bad_request", "message": "give ?room= (a room name) and ?name="}, status=400)
    try:
        token = request.app[ACCESS_KEY].dev_token(
            room, name, request.query.get("identity") or None, admin=request.query.get("admin") == "1"
        )
    except ValueError as exc:
        return web.json_response({"error": "bad_request", "message": str(exc)}, status=400)
    return web.json_response({"token": token, "room": room})


async def _index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(WEB_DIR / "index.html")


async def _start_lag_watch(app: web.Application) -> None:
    quiet_connect_after_close(asyncio.get_running_loop())
    app[LAG_TASK_KEY] = asyncio.ensure_future(watch_event_loop_lag(app[SIGNALING_METRICS_KEY].event_loop_lag))


async def _shutdown(app: web.Application) -> None:
    """SIGTERM/SIGINT (aiohttp's graceful exit; the listening sockets are closed
    already): no new joins, every participant is told (``server_shutdown``) and its
    WebSocket closed with 1001 (going away), then every PeerConnection is closed."""
    app[SHUTTING_DOWN_KEY].append(True)
    sessions = list(app[SESSIONS_KEY])
    for session in sessions:
        session.shutdown()
    if sessions:
        await asyncio.wait([asyncio.ensure_future(s.closed.wait()) for s in sessions], timeout=SHUTDOWN_GRACE_S)
    app[LAG_TASK_KEY].cancel()
    await app[REGISTRY_KEY].close()


def _serve_metrics_on_own_port(app: web.Application, port: int) -> None:
    """``/metrics`` on ``port`` of the same host(s), in its own small application,
    started and stopped with ``app``."""

    async def start(app: web.Application) -> None:
        metrics_app = web.Application()
        metrics_app[METRICS_KEY] = app[METRICS_KEY]
        metrics_app[CONFIG_KEY] = app[CONFIG_KEY]
        metrics_app.router.add_get("/metrics", _metrics)
        runner = web.AppRunner(metrics_app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, app[CONFIG_KEY].metrics_host, port).start()
        app[METRICS_RUNNER_KEY] = runner

    async def stop(app: web.Application) -> None:
        if METRICS_RUNNER_KEY in app:
            await app[METRICS_RUNNER_KEY].cleanup()

    app.on_startup.append(start)
    app.on_cleanup.append(stop)


def create_app(
    registry: RoomRegistry | None = None,
    web_dir: Path = WEB_DIR,
    config: ServerConfig | None = None,
    access: Access | None = None,
) -> web.Application:
    """Build the application around ``registry`` (a new one by default).

    Args:
        config: keys, origins, metrics protection, webhooks and limits (defaults:
            none of them).
        access: the server's keys and mode (default: from ``config.keys``; development
            mode when there are none).
    """
    app = web.Application(client_max_size=MAX_HTTP_BODY_BYTES)
    config = config or ServerConfig()
    registry = registry or RoomRegistry(max_rooms=config.limits.max_rooms)
    access = access or Access.from_keys(config.keys)
    app[CONFIG_KEY] = config
    app[ACCESS_KEY] = access
    app[REGISTRY_KEY] = registry
    app[SESSIONS_KEY] = set()
    app[SHUTTING_DOWN_KEY] = []
    disable_created_metrics()  # no *_created series next to every counter and histogram
    metrics = CollectorRegistry()
    for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
        metrics.register(collector)
    metrics.register(MediaCollector(registry.gauges, registry.downtrack_layers))
    metrics.register(RuntimeCollector())
    app[METRICS_KEY] = metrics
    app[SIGNALING_METRICS_KEY] = SignalingMetrics(metrics)
    app.on_startup.append(_start_lag_watch)
    app.router.add_get("/ws", _ws)
    add_routes(app, HttpSessions(registry, app[SIGNALING_METRICS_KEY], access=access, ice_servers=config.ice))
    add_api_routes(app, registry, access)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/internal/load", _internal_load)
    if config.metrics_port is None:
        app.router.add_get("/metrics", _metrics)
    else:
        _serve_metrics_on_own_port(app, config.metrics_port)
    app.router.add_get("/admin/rooms", _admin_rooms)
    if access.development:
        app.router.add_get("/dev/token", _dev_token)
    app.router.add_get("/", _index)
    app.router.add_static("/", web_dir, show_index=False)
    app.on_shutdown.append(_shutdown)
    if config.webhook_urls:
        _send_webhooks(app, registry, config, access)
    return app


def _send_webhooks(app: web.Application, registry: RoomRegistry, config: ServerConfig, access: Access) -> None:
    """Tell ``config.webhook_urls`` of the rooms' events (docs/WEBHOOKS.md), signed
    with ``config.webhook_api_key``'s secret (the first key by default)."""
    key = config.webhook_api_key
    secret = access.keys.secret(key) if key is not None else None
    if secret is None:
        key, secret = access.keys.any_key()
    notifier = WebhookNotifier(config.webhook_urls, key, secret, metrics=app[SIGNALING_METRICS_KEY].webhooks)
    registry.listener = room_listener(notifier)

    async def start(app: web.Application) -> None:
        await notifier.start()

    async def flush(app: web.Application) -> None:  # after the participants were told and removed
        await notifier.close(WEBHOOK_FLUSH_S)

    app.on_startup.append(start)
    app.on_shutdown.append(flush)
