"""The room -> worker map of a cluster, shared by every node through Redis
(``sfu serve --redis redis://host:port/db``; docs/ARCHITECTURE.md "Workers and nodes").

Keys (``PREFIX`` = ``sfu:``):

``sfu:node:{node_id}``
    This node's workers as JSON (url, node, participants, rooms, packets/s, Unix time
    of the report; a worker that missed a load poll keeps its last load, one that died
    is dropped), rewritten by :meth:`RedisPlacement.report` every second with
    an expiry of ``NODE_TTL_S``: a node that stops heartbeating (killed, cut off)
    disappears from the cluster within that time.
``sfu:nodes``
    The set of node ids, so that :meth:`RedisPlacement.workers` reads every node with
    one ``SMEMBERS`` and one ``MGET`` (no ``SCAN``); an id whose node key has expired
    is removed by whoever notices.
``sfu:room:{room}``
    The URL of the worker that holds the room, with an expiry of ``ROOM_TTL_S``. A new
    room is claimed with ``SET NX PX`` (the loser of a race reads the winner's value);
    the owning node renews the keys of the rooms its workers report, every second,
    and re-creates them if they vanished (a Redis restart); a room whose worker is not
    live any more is re-placed by a compare-and-set script (only if the key still names
    the dead worker), so two fronts never both replace it. A room that ended on its
    worker is no longer renewed and expires.

Every Redis call has a short timeout and no retries. When Redis is unreachable the
front keeps serving from what it knows (the last cluster view, the rooms it placed or
looked up, its own workers' fresh reports), places unknown rooms on its own node's
workers, logs at most one warning per ``LOG_EVERY_S``, and skips Redis for
``BACKOFF_S`` after each failure; redis-py reconnects on the next call once Redis is
back, and the next report re-registers the node and re-claims its rooms.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import redis.asyncio as aioredis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from .placement import ROOM_CLAIM_S, WorkerLoad, least_loaded

__all__ = ["CACHE_S", "NODE_TTL_S", "PREFIX", "ROOM_TTL_S", "RedisPlacement", "node_key", "room_key", "worker_rooms_key"]

logger = logging.getLogger("sfu.placement")

PREFIX = "sfu:"
NODES_KEY = PREFIX + "nodes"
NODE_TTL_S = 5.0  # a node that has not reported for this long is gone
ROOM_TTL_S = ROOM_CLAIM_S  # a room no worker reports any more keeps its place this long
CACHE_S = 1.0  # workers() reads Redis at most this often
SUSPECT_S = NODE_TTL_S + 1.0  # a worker the front could not reach is not live for this long
TIMEOUT_S = 1.0  # every Redis call
BACKOFF_S = 1.0  # after a failed call, Redis is left alone this long
LOG_EVERY_S = 10.0

_ERRORS = (RedisError, OSError, asyncio.TimeoutError)

_NOW_MS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS[1]: the room key; KEYS[2]: the candidate's room index. ARGV[1]: the owner to
# replace ('' for none), ARGV[2]: the candidate URL, ARGV[3]: expiry (ms), ARGV[4]: the
# room. Claim the room for the candidate if the key is absent (SET NX) or still names
# the owner to replace (compare-and-set); answer the owner now.
_CLAIM = _NOW_MS + """
local owner = redis.call('GET', KEYS[1])
if owner and owner ~= ARGV[1] then
  return owner
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return ARGV[2]
"""

# KEYS[1]: the worker's room index; KEYS[2..]: the keys of the rooms it reports.
# ARGV[1]: its URL, ARGV[2]: expiry (ms), ARGV[3..]: the rooms. Renew the rooms it
# holds, re-create those that vanished (a Redis restart); answer the rooms that another
# worker holds.
_RENEW = _NOW_MS + """
local others = {}
for i = 2, #KEYS do
  local owner = redis.call('GET', KEYS[i])
  if (not owner) or owner == ARGV[1] then
    redis.call('SET', KEYS[i], ARGV[1], 'PX', ARGV[2])
    redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[i + 1])
  else
    table.insert(others, ARGV[i + 1])
  end
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if #KEYS > 1 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return others
"""

# KEYS[1]: a worker's room index; KEYS[2..]: more room keys it may hold. ARGV[1]: its
# URL, ARGV[2]: the room key prefix. Compare-and-delete every room it holds; drop the index.
_RELEASE = """
local n = 0
local function free(key)
  if redis.call('GET', key) == ARGV[1] then
    redis.call('DEL', key)
    n = n + 1
  end
end
for _, room in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  free(ARGV[2] .. room)
end
for i = 2, #KEYS do
  free(KEYS[i])
end
redis.call('DEL', KEYS[1])
return n
"""


def node_key(node_id: str) -> str:
    """The key of a node's heartbeat."""
    return f"{PREFIX}node:{node_id}"


def room_key(room: str) -> str:
    """The key of a room's worker URL."""
    return f"{PREFIX}room:{room}"


def worker_rooms_key(url: str) -> str:
    """The key of the index of the rooms placed on a worker (a sorted set: room ->
    expiry in Unix ms), so that a dead worker's rooms are freed at once."""
    return f"{PREFIX}worker:{url}:rooms"


def _encode(loads: list[WorkerLoad], now: float) -> str:
    return json.dumps([{"url": w.url, "node": w.node, "participants": w.participants, "rooms": w.rooms,
                        "packetsPerSecond": w.packets_per_s, "reportedAt": now} for w in loads])


def _decode(text: str) -> list[WorkerLoad]:
    out = []
    try:
        for item in json.loads(text):
            out.append(WorkerLoad(url=str(item["url"]), node=str(item.get("node", "")),
                                  participants=int(item.get("participants", 0)),
                                  rooms=[str(r) for r in item.get("rooms", [])],
                                  packets_per_s=float(item.get("packetsPerSecond", 0.0)),
                                  reported_at=float(item.get("reportedAt", 0.0))))
    except (ValueError, TypeError, KeyError):
        logger.warning("a node's record in Redis is not valid: %.200r", text)
    return out


class RedisPlacement:
    """:class:`~signaling.placement.Placement` shared by the nodes of a cluster
    through Redis (see the module docstring).

    Args:
        url: ``redis://host:port/db`` (``rediss://`` for TLS, ``redis://:password@...``).
        node_id: this node's id, unique in the cluster.
        client: a ``redis.asyncio.Redis`` to use instead of one made from ``url`` (tests).
    """

    def __init__(self, url: str, node_id: str, client: Any = None) -> None:
        self.node_id = node_id
        self._redis = client if client is not None else aioredis.Redis.from_url(
            url, decode_responses=True, socket_timeout=TIMEOUT_S, socket_connect_timeout=TIMEOUT_S,
            retry=Retry(NoBackoff(), 0),
        )
        self._claim = self._redis.register_script(_CLAIM)
        self._renew = self._redis.register_script(_RENEW)
        self._release = self._redis.register_script(_RELEASE)
        self._members: dict[str, WorkerLoad] = {}  # this node's workers that did not die, last load of each
        self._own: list[WorkerLoad] = []  # the same, as last written to Redis
        self._cluster: list[WorkerLoad] = []  # every node's workers, as last read (this node's excluded)
        self._cluster_at = -CACHE_S  # monotonic time of that read
        self._refresh: asyncio.Future[None] | None = None
        self._placing: dict[str, asyncio.Future[str]] = {}
        self._rooms: dict[str, str] = {}  # room -> worker URL, as last seen (served while Redis is down)
        self._pending: dict[str, tuple[str, float]] = {}  # room -> (URL, monotonic) placed here, not reported yet
        self._suspects: dict[str, float] = {}  # worker URL -> monotonic time it was found dead
        self._down_until = 0.0
        self._logged_at = -LOG_EVERY_S
        self._conflicts_logged: set[str] = set()

    # -- Redis, guarded ----------------------------------------------------------

    def _available(self) -> bool:
        return time.monotonic() >= self._down_until

    def _failed(self, what: str, exc: BaseException) -> None:
        now = time.monotonic()
        self._down_until = now + BACKOFF_S
        if now - self._logged_at >= LOG_EVERY_S:
            self._logged_at = now
            logger.warning("Redis unavailable (%s: %s): serving rooms from what this node knows", what, exc)

    def _recovered(self) -> None:
        if self._logged_at > 0 and self._down_until > 0:
            logger.info("Redis reachable again")
            self._logged_at = -LOG_EVERY_S
        self._down_until = 0.0

    # -- the live workers ---------------------------------------------------------

    def _live(self) -> list[WorkerLoad]:
        now = time.monotonic()
        for url, at in list(self._suspects.items()):
            if now - at > SUSPECT_S:
                del self._suspects[url]
        own = {w.url for w in self._own}
        workers = self._own + [w for w in self._cluster if w.url not in own]
        return [w for w in workers if w.url not in self._suspects]

    async def _read_cluster(self) -> None:
        ids = sorted(await self._redis.smembers(NODES_KEY))
        records = await self._redis.mget([node_key(i) for i in ids]) if ids else []
        cluster: list[WorkerLoad] = []
        gone = []
        for node, record in zip(ids, records):
            if record is None:
                gone.append(node)
            elif node != self.node_id:
                cluster += _decode(record)
        if gone:
            await self._redis.srem(NODES_KEY, *gone)
        self._cluster = cluster
        self._cluster_at = time.monotonic()

    async def _refresh_cluster(self, force: bool = False) -> None:
        """Read every node's workers (at most once per ``CACHE_S`` unless ``force``;
        concurrent callers share one read)."""
        if not force and time.monotonic() - self._cluster_at < CACHE_S:
            return
        if not self._available():
            return
        if self._refresh is None:
            self._refresh = asyncio.ensure_future(self._read_cluster())
        refresh = self._refresh
        try:
            await asyncio.shield(refresh)
            self._recovered()
        except _ERRORS as exc:
            self._failed("reading the nodes", exc)
        finally:
            if self._refresh is refresh and refresh.done():
                self._refresh = None

    async def workers(self) -> list[WorkerLoad]:
        await self._refresh_cluster()
        return self._live()

    # -- rooms ----------------------------------------------------------------------

    def _placed(self) -> dict[str, int]:
        """Worker URL -> rooms it holds or was given (by this front) and has not reported."""
        now = time.monotonic()
        rooms: dict[str, set[str]] = {}
        for w in self._own + self._cluster:
            rooms.setdefault(w.url, set()).update(w.rooms)
        for room, (url, at) in list(self._pending.items()):
            if now - at > ROOM_TTL_S:
                del self._pending[room]
            else:
                rooms.setdefault(url, set()).add(room)
        return {url: len(names) for url, names in rooms.items()}

    def _choose(self, workers: list[WorkerLoad]) -> str:
        return least_loaded(workers, self._placed()).url

    def _fallback(self, room: str) -> str:
        """Redis is down: the room where it was last seen if that worker is live, else
        the least-loaded of this node's workers (the only view that is fresh)."""
        live = self._live()
        known = self._rooms.get(room)
        if known is not None and any(w.url == known for w in live):
            return known
        own = [w for w in live if w.url in {o.url for o in self._own}] or live
        url = self._choose(own)
        self._rooms[room] = url
        self._pending[room] = (url, time.monotonic())
        return url

    async def place(self, room: str) -> str:
        # Concurrent placements of one room through this front share one.
        placing = self._placing.get(room)
        if placing is None:
            placing = self._placing[room] = asyncio.ensure_future(self._place(room))
            placing.add_done_callback(lambda _: self._placing.pop(room, None))
        return await asyncio.shield(placing)

    async def _place(self, room: str) -> str:
        if not self._available():
            return self._fallback(room)
        key = room_key(room)
        try:
            await self._refresh_cluster()
            owner = await self._redis.get(key)
            if owner is not None and not self._is_live(owner):
                # Not live as far as this node knows: make sure with a fresh read (a
                # node that just started is not in the cache yet).
                await self._refresh_cluster(force=True)
            if owner is None or not self._is_live(owner):
                candidate = self._choose(self._live())
                self._pending[room] = (candidate, time.monotonic())  # counted by concurrent placements
                # SET NX, or compare-and-set over the dead owner: one front wins, the
                # others get its choice.
                owner = str(await self._claim(keys=[key, worker_rooms_key(candidate)],
                                              args=[owner or "", candidate, int(ROOM_TTL_S * 1000), room]))
                self._pending[room] = (owner, time.monotonic())  # ours or the winner's: not reported yet
            self._recovered()
        except _ERRORS as exc:
            self._failed("placing a room", exc)
            return self._fallback(room)
        self._rooms[room] = owner
        return owner

    def _is_live(self, url: str) -> bool:
        return any(w.url == url for w in self._live())

    async def lookup(self, room: str) -> str | None:
        owner: str | None
        if self._available():
            try:
                await self._refresh_cluster()
                owner = await self._redis.get(room_key(room))
                self._recovered()
            except _ERRORS as exc:
                self._failed("looking a room up", exc)
                owner = self._rooms.get(room)
        else:
            owner = self._rooms.get(room)
        if owner is None or not self._is_live(owner):
            return None
        self._rooms[room] = owner
        return owner

    # -- this node ----------------------------------------------------------------

    async def report(self, loads: list[WorkerLoad]) -> None:
        now = time.time()
        for load in loads:
            load.reported_at = now
            load.node = self.node_id
            self._members[load.url] = load
            self._suspects.pop(load.url, None)  # its supervisor just heard from it
            for room in load.rooms:
                self._rooms[room] = load.url
                self._pending.pop(room, None)
        # A worker that missed this poll (busy) but did not die stays listed with its
        # last load: the supervisor calls forget_worker() when one dies.
        members = list(self._members.values())
        try:
            if self._available():
                await self._write(members, now)
        finally:
            self._own = members  # after the write: no room goes to a worker the others cannot see yet
            self._prune()

    async def _write(self, members: list[WorkerLoad], now: float) -> None:
        ttl_ms = int(ROOM_TTL_S * 1000)
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.set(node_key(self.node_id), _encode(members, now), px=int(NODE_TTL_S * 1000))
                pipe.sadd(NODES_KEY, self.node_id)
                await pipe.execute()
            for load in members:
                if not load.rooms:
                    continue
                others = await self._renew(keys=[worker_rooms_key(load.url), *(room_key(r) for r in load.rooms)],
                                           args=[load.url, ttl_ms, *load.rooms])
                for room in others:
                    if room not in self._conflicts_logged:
                        self._conflicts_logged.add(room)
                        logger.warning("room %s is on %s but placed on another worker (split: its participants"
                                       " here move when they next join)", room, load.url)
            self._recovered()
        except _ERRORS as exc:
            self._failed("reporting this node", exc)

    def _prune(self) -> None:
        """Forget rooms that ended here or whose worker is gone (bounded memory)."""
        live = {w.url for w in self._live()}
        own = {w.url for w in self._own}
        reported = {room for w in self._own for room in w.rooms}
        for room, owner in list(self._rooms.items()):
            if owner not in live or (owner in own and room not in reported and room not in self._pending):
                del self._rooms[room]
        if len(self._conflicts_logged) > 10_000:
            self._conflicts_logged.clear()

    async def forget_worker(self, url: str) -> None:
        self._suspects[url] = time.monotonic()
        rooms = {room for room, owner in self._rooms.items() if owner == url}
        for w in self._own + self._cluster:
            if w.url == url:
                rooms.update(w.rooms)
        self._members.pop(url, None)
        self._own = [w for w in self._own if w.url != url]
        for room in rooms:
            self._rooms.pop(room, None)
            self._pending.pop(room, None)
        if self._available():
            try:
                await self._release(keys=[worker_rooms_key(url), *(room_key(r) for r in sorted(rooms))],
                                    args=[url, room_key("")])
                self._recovered()
            except _ERRORS as exc:
                self._failed("freeing a dead worker's rooms", exc)

    async def close(self) -> None:
        urls = {w.url for w in self._own} | set(self._members)
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.delete(node_key(self.node_id))
                pipe.srem(NODES_KEY, self.node_id)
                await pipe.execute()
            for url in urls:
                rooms = [room_key(r) for r, owner in self._rooms.items() if owner == url]
                await self._release(keys=[worker_rooms_key(url), *rooms], args=[url, room_key("")])
        except _ERRORS as exc:
            logger.warning("could not release this node's keys in Redis (they expire): %s", exc)
        finally:
            self._own = []
            self._members.clear()
            await self._redis.aclose()

    def rooms(self) -> dict[str, str]:
        """room -> worker URL, as this node last saw it (tests)."""
        return dict(self._rooms)
