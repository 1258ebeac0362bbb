"""The aiohttp application: ``/ws`` (room protocol), ``/whip`` and ``/whep`` (WHIP
ingest and WHEP playback over HTTP), ``/healthz``, ``/metrics``,
``/admin/rooms`` (JSON statistics; there is no authentication in the server yet, so it
is as open as the port) and the browser client from ``web/`` at ``/``."""

from __future__ import annotations

import asyncio
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

from sfu.metrics import MediaCollector
from sfu.room import RoomRegistry

from .metrics import SignalingMetrics, watch_event_loop_lag
from .session import Session
from .whip import HttpSessions, add_routes

__all__ = ["create_app", "WEB_DIR"]

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
REGISTRY_KEY = web.AppKey("registry", RoomRegistry)
METRICS_KEY = web.AppKey("metrics", CollectorRegistry)
SIGNALING_METRICS_KEY = web.AppKey("signaling_metrics", SignalingMetrics)
LAG_TASK_KEY = web.AppKey("lag_task", asyncio.Task)
SESSIONS_KEY = web.AppKey("sessions", set)
SHUTTING_DOWN_KEY = web.AppKey("shutting_down", list)
SHUTDOWN_GRACE_S = 1.0  # time for the server_shutdown events and close frames to leave


async def _ws(request: web.Request) -> web.StreamResponse:
    if request.app[SHUTTING_DOWN_KEY]:
        return web.Response(status=503, text="the server is shutting down\n", headers={"Retry-After": "5"})
    ws = web.WebSocketResponse(heartbeat=5.0, max_msg_size=1024 * 1024)
    await ws.prepare(request)
    session = Session(ws, request.app[REGISTRY_KEY], request.app[SIGNALING_METRICS_KEY])
    sessions = request.app[SESSIONS_KEY]
    sessions.add(session)
    try:
        await session.run()
    finally:
        sessions.discard(session)
    return ws


async def _healthz(request: web.Request) -> web.Response:
    rooms, participants, _, _ = request.app[REGISTRY_KEY].gauges()
    return web.json_response({"status": "ok", "rooms": rooms, "participants": participants})


async def _metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[METRICS_KEY])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _admin_rooms(request: web.Request) -> web.Response:
    """Rooms, participants and per-track statistics for debugging (JSON)."""
    return web.json_response(request.app[REGISTRY_KEY].snapshot())


async def _index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(WEB_DIR / "index.html")


async def _start_lag_watch(app: web.Application) -> None:
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


def create_app(registry: RoomRegistry | None = None, web_dir: Path = WEB_DIR) -> web.Application:
    """Build the application around ``registry`` (a new one by default)."""
    app = web.Application()
    registry = registry or RoomRegistry()
    app[REGISTRY_KEY] = registry
    app[SESSIONS_KEY] = set()
    app[SHUTTING_DOWN_KEY] = []
    disable_created_metrics()  # no *_created series next to every counter and histogram
    metrics = CollectorRegistry()
    for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
        metrics.register(collector)
    metrics.register(MediaCollector(registry.gauges, registry.downtrack_layers))
    app[METRICS_KEY] = metrics
    app[SIGNALING_METRICS_KEY] = SignalingMetrics(metrics)
    app.on_startup.append(_start_lag_watch)
    app.router.add_get("/ws", _ws)
    add_routes(app, HttpSessions(registry, app[SIGNALING_METRICS_KEY]))
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/admin/rooms", _admin_rooms)
    app.router.add_get("/", _index)
    app.router.add_static("/", web_dir, show_index=False)
    app.on_shutdown.append(_shutdown)
    return app
