"""The front of a multi-worker server (``sfu serve --workers N``) or of a cluster node
(``--redis``): one URL for the clients, rooms on the workers.

The front serves the browser client and accepts every request, and relays each to the
worker that holds its room (:mod:`signaling.placement`): a ``/ws`` connection after its
first message (``join``: the room comes from the token, or from ``room`` in development
mode), ``/whip/{room}`` and ``/whep/{room}`` and their sessions, and the server API's
``/api/rooms/{room}/...``. Media never passes through it: the worker's answer carries the
worker's own ICE candidates. ``GET /api/rooms`` and ``/admin/rooms`` gather every
worker's rooms; ``/healthz`` says which workers are live; ``/metrics`` is the front's
own metrics and those of this node's workers, each sample labelled ``worker`` (``front``,
``0``, ``1``, ...).

Close codes on the relayed WebSocket (RFC 6455 §7.4): what the client sends goes to the
worker (1000/1001 is a leave; anything else, including a connection that dies without a
close frame, is sent as 4000 so that the worker keeps the participant's place); what the
worker sends goes to the client; a worker that dies closes the client's WebSocket with
1012 (service restart): the clients reconnect, and their room is placed on a live worker.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
from typing import Any

import aiohttp
from aiohttp import WSCloseCode, WSMsgType, web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from sfu.room import ROOM_NAME

from .access import Access, Unauthorized
from .app import ACCESS_KEY, CONFIG_KEY, WEB_DIR, _dev_token, _index, origin_allowed
from .config import ServerConfig
from .placement import NoWorker, Placement, least_loaded
from .workers import Supervisor

__all__ = ["create_router_app", "label_worker_metrics", "room_of_join"]

logger = logging.getLogger("sfu.router")

PLACEMENT_KEY = web.AppKey("placement", Placement)  # type: ignore[type-abstract]
SUPERVISOR_KEY = web.AppKey("supervisor", object)
HTTP_KEY = web.AppKey("http", aiohttp.ClientSession)
FRONT_METRICS_KEY = web.AppKey("front_metrics", CollectorRegistry)
RELAYS_KEY = web.AppKey("relays", set)
FIRST_MESSAGE_TIMEOUT_S = 30.0
AWAY_CLOSE_CODE = 4000  # to the worker: the client vanished (keep its place)
MAX_HTTP_BODY_BYTES = 256 * 1024
_HOP_HEADERS = frozenset({
    "connection", "keep-alive", "transfer-encoding", "content-length", "upgrade", "content-encoding",
    "proxy-connection", "te", "trailer",
})
_SAMPLE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(\{.*\})?(\s.*)$")


def room_of_join(text: str, query_token: str | None, access: Access) -> str | None:
    """The room a ``join`` message is for: its token's (or the URL's ``access_token``'s)
    room when the token is valid, else its ``room`` (development mode); None when the
    message is no valid join (the worker it goes to answers the error)."""
    try:
        msg = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if not isinstance(msg, dict) or msg.get("type") != "join":
        return None
    token = msg.get("token") or query_token
    room: Any = None
    if isinstance(token, str):
        try:
            room = access.verify(token).grant.room
        except Unauthorized:
            return None
    elif access.development:
        room = msg.get("room")
    return room if isinstance(room, str) and ROOM_NAME.fullmatch(room) else None


def label_worker_metrics(texts: list[tuple[str, str]]) -> str:
    """Merge Prometheus text expositions, one per process, into one: every sample gets
    the label ``worker`` (the text's name), and each metric family keeps one HELP/TYPE
    with the samples of every process under it (the text format's grouping rule).

    Args:
        texts: (worker label, exposition text) pairs.
    """
    order: list[str] = []
    families: dict[str, tuple[list[str], list[str]]] = {}  # name -> (HELP/TYPE lines, samples)
    for worker, text in texts:
        family = ""
        for line in text.splitlines():
            if line.startswith("# "):
                parts = line.split(" ", 3)
                if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                    family = parts[2]
                    if family not in families:
                        families[family] = ([], [])
                        order.append(family)
                    meta = families[family][0]
                    if not any(m.startswith(f"# {parts[1]} ") for m in meta):
                        meta.append(line)
                continue
            match = _SAMPLE.match(line)
            if match is None:
                continue
            name, labels, rest = match.groups()
            label = f'worker="{worker}"'
            labelled = f"{name}{{{label},{labels[1:]}" if labels and labels != "{}" else f"{name}{{{label}}}"
            if family not in families:
                families[family] = ([], [])
                order.append(family)
            families[family][1].append(labelled + rest)
    lines: list[str] = []
    for name in order:
        meta, samples = families[name]
        lines += meta + samples
    return "\n".join(lines) + "\n"


class _FrontCollector:
    """The front's own metrics, read when scraped: live workers, restarts, relays."""

    def __init__(self, supervisor: Supervisor, relays: set[Any]) -> None:
        self._supervisor = supervisor
        self._relays = relays

    def collect(self) -> Any:
        workers = self._supervisor.workers
        yield GaugeMetricFamily("sfu_workers_live", "worker processes of this node answering now",
                                value=sum(1 for w in workers if w.alive))
        yield CounterMetricFamily("sfu_worker_restarts", "worker processes restarted after they died",
                                  value=sum(w.restarts for w in workers))
        yield GaugeMetricFamily("sfu_front_relays", "WebSocket connections the front relays to workers now",
                                value=len(self._relays))


async def _any_worker(placement: Placement) -> str:
    return least_loaded(await placement.workers(), {}).url


def _relay_close_code(code: int | None) -> int:
    """What to tell the worker when the client's WebSocket ended with ``code``."""
    return code if code in (WSCloseCode.OK, WSCloseCode.GOING_AWAY) else AWAY_CLOSE_CODE


async def _ws(request: web.Request) -> web.StreamResponse:
    app = request.app
    config: ServerConfig = app[CONFIG_KEY]
    if not origin_allowed(request, config.allowed_origins):
        return web.Response(status=403, text="this Origin may not use the room service\n")
    client = web.WebSocketResponse(heartbeat=5.0, max_msg_size=config.limits.max_message_bytes)
    await client.prepare(request)
    try:
        first = await client.receive(timeout=FIRST_MESSAGE_TIMEOUT_S)
    except TimeoutError:
        await client.close()
        return client
    if first.type != WSMsgType.TEXT:
        await client.close()
        return client
    placement = app[PLACEMENT_KEY]
    room = room_of_join(first.data, request.query.get("access_token"), app[ACCESS_KEY])
    try:
        upstream = None
        for _ in range(2):  # a worker found dead is forgotten, and the room placed again
            url = await placement.place(room) if room is not None else await _any_worker(placement)
            try:
                upstream = await app[HTTP_KEY].ws_connect(
                    url + "/ws" + (f"?{request.query_string}" if request.query_string else ""),
                    max_msg_size=config.limits.max_message_bytes, autoping=True,
                )
                break
            except aiohttp.ClientConnectorError:
                await placement.forget_worker(url)
        if upstream is None:
            raise NoWorker("no worker answered")
    except (TimeoutError, NoWorker, aiohttp.ClientError, OSError) as exc:
        logger.warning("no worker for room %r: %s", room, exc)
        await client.send_str(json.dumps({"type": "error", "code": "unavailable", "requestType": "join",
                                          "message": "no media worker can take the room now; try again"}))
        await client.close(code=WSCloseCode.TRY_AGAIN_LATER)
        return client
    relay = asyncio.current_task()
    app[RELAYS_KEY].add(relay)
    try:
        await upstream.send_str(first.data)
        await _pipe(client, upstream)
    finally:
        app[RELAYS_KEY].discard(relay)
    return client


async def _pipe(client: web.WebSocketResponse, upstream: aiohttp.ClientWebSocketResponse) -> None:
    """Relay text frames both ways until one side ends, then end the other with the
    close code the module docstring gives."""

    async def to_worker() -> None:
        async for msg in client:
            if msg.type == WSMsgType.TEXT:
                await upstream.send_str(msg.data)
        await upstream.close(code=_relay_close_code(client.close_code))

    async def to_client() -> None:
        async for msg in upstream:
            if msg.type == WSMsgType.TEXT:
                await client.send_str(msg.data)
        code = upstream.close_code
        # A worker that died sent no close frame (1006): the service restarts.
        await client.close(code=code if code not in (None, WSCloseCode.ABNORMAL_CLOSURE) else WSCloseCode.SERVICE_RESTART)

    tasks = [asyncio.ensure_future(to_worker()), asyncio.ensure_future(to_client())]
    try:
        _, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        if pending:
            await asyncio.wait(pending, timeout=5.0)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if not upstream.closed:
            await upstream.close(code=AWAY_CLOSE_CODE)
        if not client.closed:
            await client.close(code=WSCloseCode.SERVICE_RESTART)


async def _relay(request: web.Request, url: str) -> web.Response:
    """Send ``request`` to the worker at ``url`` as it came (method, path, query,
    headers but hop-by-hop ones, body) and answer with the worker's response."""
    body = await request.read()
    headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
    try:
        async with request.app[HTTP_KEY].request(
            request.method, url + request.rel_url.path_qs, data=body or None, headers=headers, allow_redirects=False
        ) as response:
            data = await response.read()
            out = {k: v for k, v in response.headers.items() if k.lower() not in _HOP_HEADERS}
            return web.Response(status=response.status, body=data, headers=out)
    except (TimeoutError, aiohttp.ClientError) as exc:
        logger.warning("relaying %s %s to %s failed: %s", request.method, request.path, url, exc)
        return web.json_response({"error": "unavailable", "message": "the room's worker did not answer"}, status=503)


async def _room_request(request: web.Request) -> web.Response:
    """A request about one room (WHIP/WHEP, the server API): to the room's worker. A
    POST to an endpoint places a new room; other requests about a room no worker holds
    go to any worker (which answers what it answers for an unknown room)."""
    placement = request.app[PLACEMENT_KEY]
    room = request.match_info["room"]
    try:
        creating = request.method == "POST" and request.path.count("/") == 2  # /whip/{room}, /whep/{room}
        url = (await placement.place(room) if creating and ROOM_NAME.fullmatch(room) else await placement.lookup(room))
        url = url or await _any_worker(placement)
    except NoWorker:
        return web.json_response({"error": "unavailable", "message": "no live worker"}, status=503)
    return await _relay(request, url)


async def _create_room(request: web.Request) -> web.Response:
    """``POST /api/rooms``: placed by its ``name``, then created by that worker."""
    placement = request.app[PLACEMENT_KEY]
    try:
        body = json.loads(await request.read() or b"{}")
        name = body.get("name") if isinstance(body, dict) else None
    except ValueError:
        name = None
    try:
        url = await placement.place(name) if isinstance(name, str) and ROOM_NAME.fullmatch(name) else await _any_worker(placement)
    except NoWorker:
        return web.json_response({"error": "unavailable", "message": "no live worker"}, status=503)
    return await _relay(request, url)


async def _gather_rooms(request: web.Request) -> web.Response:
    """``GET /api/rooms`` and ``/admin/rooms``: every live worker's rooms in one list
    (a worker's refusal, e.g. 401, is the answer)."""
    placement = request.app[PLACEMENT_KEY]
    workers = await placement.workers()
    if not workers:
        return web.json_response({"error": "unavailable", "message": "no live worker"}, status=503)
    headers = {k: v for k, v in request.headers.items() if k.lower() in ("authorization",)}
    rooms: list[Any] = []
    for worker in workers:
        try:
            async with request.app[HTTP_KEY].get(worker.url + request.rel_url.path_qs, headers=headers) as response:
                if response.status != 200:
                    return web.Response(status=response.status, body=await response.read(),
                                        content_type=response.content_type)
                rooms += (await response.json()).get("rooms", [])
        except (TimeoutError, aiohttp.ClientError, ValueError):
            continue  # a worker that just died: its rooms are gone
    return web.json_response({"rooms": rooms})


async def _healthz(request: web.Request) -> web.Response:
    workers = await request.app[PLACEMENT_KEY].workers()
    body = {
        "status": "ok" if workers else "unavailable",
        "rooms": sum(len(w.rooms) for w in workers),
        "participants": sum(w.participants for w in workers),
        "workers": [{"url": w.url, "node": w.node, "participants": w.participants, "rooms": len(w.rooms),
                     "packetsPerSecond": round(w.packets_per_s, 1)} for w in workers],
    }
    return web.json_response(body, status=200 if workers else 503)


async def _metrics(request: web.Request) -> web.Response:
    """The front's metrics and its local workers', labelled ``worker``."""
    config: ServerConfig = request.app[CONFIG_KEY]
    token = config.metrics_token
    auth = request.headers.get("Authorization", "")
    if token is not None and not hmac.compare_digest(auth, f"Bearer {token}"):
        return web.Response(status=401, text="send 'Authorization: Bearer <metrics token>'\n",
                            headers={"WWW-Authenticate": 'Bearer realm="metrics"'})
    texts = [("front", generate_latest(request.app[FRONT_METRICS_KEY]).decode())]
    supervisor: Supervisor = request.app[SUPERVISOR_KEY]  # type: ignore[assignment]
    headers = {"Authorization": auth} if auth else {}

    async def fetch(index: int, url: str) -> tuple[str, str] | None:
        try:
            async with request.app[HTTP_KEY].get(url + "/metrics", headers=headers) as response:
                return (str(index), await response.text()) if response.status == 200 else None
        except (TimeoutError, aiohttp.ClientError):
            return None

    fetched = await asyncio.gather(*(fetch(w.index, w.url) for w in supervisor.workers if w.alive))
    texts += [t for t in fetched if t is not None]
    return web.Response(body=label_worker_metrics(texts).encode(), headers={"Content-Type": CONTENT_TYPE_LATEST})


def create_router_app(
    placement: Placement, supervisor: Supervisor, config: ServerConfig, access: Access, web_dir: Any = WEB_DIR
) -> web.Application:
    """The front's application (see the module docstring). The supervisor's workers
    are started with the application and stopped (each telling its participants) when
    it shuts down."""
    app = web.Application(client_max_size=MAX_HTTP_BODY_BYTES)
    app[PLACEMENT_KEY] = placement
    app[SUPERVISOR_KEY] = supervisor
    app[CONFIG_KEY] = config
    app[ACCESS_KEY] = access
    app[RELAYS_KEY] = set()
    metrics = CollectorRegistry()
    for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
        metrics.register(collector)
    metrics.register(_FrontCollector(supervisor, app[RELAYS_KEY]))
    app[FRONT_METRICS_KEY] = metrics

    async def start(app: web.Application) -> None:
        app[HTTP_KEY] = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=5.0))
        await supervisor.start()

    async def shutdown(app: web.Application) -> None:
        await supervisor.stop()  # the workers tell their participants; the relays carry it

    async def cleanup(app: web.Application) -> None:
        await placement.close()
        await app[HTTP_KEY].close()

    app.on_startup.append(start)
    app.on_shutdown.append(shutdown)
    app.on_cleanup.append(cleanup)
    app.router.add_get("/ws", _ws)
    for kind in ("whip", "whep"):
        for path in (f"/{kind}/{{room}}", f"/{kind}/{{room}}/{{session}}"):
            app.router.add_route("*", path, _room_request)
    app.router.add_get("/api/rooms", _gather_rooms)
    app.router.add_post("/api/rooms", _create_room)
    app.router.add_route("*", "/api/rooms/{room}", _room_request)
    app.router.add_route("*", "/api/rooms/{room}/{tail:.*}", _room_request)
    app.router.add_get("/admin/rooms", _gather_rooms)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/metrics", _metrics)
    if access.development:
        app.router.add_get("/dev/token", _dev_token)
    app.router.add_get("/", _index)
    app.router.add_static("/", web_dir, show_index=False)
    return app
