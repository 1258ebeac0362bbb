"""Rooms placed across the nodes of a cluster through Redis (``sfu serve --redis``;
docs/ARCHITECTURE.md "Workers and nodes"), against a real ``redis-server`` on a
loopback port.

Without server processes: :class:`~signaling.redis_placement.RedisPlacement`'s keys and
their expiries, the least-loaded choice over every node's workers, a room whose node
stopped heartbeating placed again, a dead worker's rooms freed, fronts racing to place
the same new rooms agreeing on one worker each, and Redis going away and coming back
(served from what the front knows, the node and its rooms re-registered).

With two nodes (two ``sfu serve --workers 1 --redis URL`` processes): participants
joining one room through both nodes meet on one worker and media flows; the server API
of one node lists and removes a participant on the other; Redis restarted: every room
with participants is claimed again by its node and new joins land there; the node
holding a room SIGKILLed (front and worker): the participants connected through the
other node reconnect, the room moves there and media flows again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from signaling import redis_placement
from signaling.placement import NoWorker, WorkerLoad
from signaling.redis_placement import NODES_KEY, RedisPlacement, node_key, room_key

from .redis_server import RedisServer

KEY, SECRET = "APIcluster", "cluster-secret-" + "z" * 32


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
async def store(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    """A plain client to look at the keys."""
    client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()


def load(url: str, participants: int = 0, rooms: tuple[str, ...] = (), pps: float = 0.0) -> WorkerLoad:
    return WorkerLoad(url=url, participants=participants, rooms=list(rooms), packets_per_s=pps)


# -- RedisPlacement against a real Redis ------------------------------------------------


async def test_keys_expiries_and_the_least_loaded_worker_of_the_cluster(
    redis_server: RedisServer, store: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = RedisPlacement(redis_server.url, "node-a")
    b = RedisPlacement(redis_server.url, "node-b")
    try:
        with pytest.raises(NoWorker):
            await a.place("early")  # nobody has reported
        await a.report([load("http://a:1", participants=4, rooms=("busy",))])
        await b.report([load("http://b:1", participants=2, rooms=("quiet",)), load("http://b:2", participants=2)])
        # The node's heartbeat, with its expiry, and the node set.
        assert 0 < await store.pttl(node_key("node-a")) <= redis_placement.NODE_TTL_S * 1000
        assert await store.smembers(NODES_KEY) == {"node-a", "node-b"}
        # The rooms the workers report are (re)claimed for them, with the room expiry.
        assert await store.get(room_key("busy")) == "http://a:1"
        assert await store.get(room_key("quiet")) == "http://b:1"
        assert 0 < await store.pttl(room_key("quiet")) <= redis_placement.ROOM_TTL_S * 1000
        # Each node sees the other's workers.
        monkeypatch.setattr(redis_placement, "CACHE_S", 0.0)
        assert sorted(w.url for w in await a.workers()) == ["http://a:1", "http://b:1", "http://b:2"]
        assert {w.url: w.node for w in await b.workers()}["http://a:1"] == "node-a"
        # A new room goes to the least-loaded worker of the whole cluster, wherever asked:
        # fewest participants, then fewest rooms.
        assert await a.place("new1") == "http://b:2"
        assert await store.get(room_key("new1")) == "http://b:2"
        assert 0 < await store.pttl(room_key("new1")) <= redis_placement.ROOM_TTL_S * 1000
        assert await b.place("new1") == "http://b:2"  # the existing owner, from the other node
        assert await b.lookup("new1") == "http://b:2" and await b.lookup("nowhere") is None
        # b:2 holds a room it has not reported yet: counted, so the next goes to b:1 (tie broken by URL).
        assert await a.place("new2") == "http://b:1"
        # A worker that died: its rooms are freed, compare-and-delete (not another's).
        await b.forget_worker("http://b:1")
        assert await store.get(room_key("quiet")) is None and await store.get(room_key("new2")) is None
        assert not await store.exists(redis_placement.worker_rooms_key("http://b:1"))
        assert await store.get(room_key("new1")) == "http://b:2"
        assert "http://b:1" not in [w.url for w in await b.workers()]

        # Node b stops heartbeating: its node key expires and its rooms are placed again.
        monkeypatch.setattr(redis_placement, "NODE_TTL_S", 0.3)
        await b.report([load("http://b:2", participants=2, rooms=("new1",))])
        await a.report([load("http://a:1", participants=4, rooms=("busy",))])
        await asyncio.sleep(0.5)
        assert await store.get(node_key("node-b")) is None
        assert [w.url for w in await a.workers()] == ["http://a:1"]
        assert await a.lookup("new1") is None
        assert await store.get(room_key("new1")) == "http://b:2"  # until someone places it
        assert await a.place("new1") == "http://a:1"  # compare-and-set over the dead owner
        assert await store.get(room_key("new1")) == "http://a:1"
        assert "node-b" not in await store.smembers(NODES_KEY)  # cleaned up by the reader
    finally:
        await a.close()
        await b.close()
    # close() released node a's key and the rooms of its workers.
    assert await store.get(node_key("node-a")) is None
    assert await store.get(room_key("busy")) is None and await store.get(room_key("new1")) is None


async def test_fronts_racing_to_place_the_same_new_rooms_agree(redis_server: RedisServer, store: aioredis.Redis) -> None:
    nodes = [RedisPlacement(redis_server.url, f"race-{i}") for i in range(2)]
    try:
        for i, node in enumerate(nodes):
            await node.report([load(f"http://n{i}:{w}") for w in range(2)])
        rooms = [f"room{i}" for i in range(50)]
        # Each room placed at once through both nodes, every room at the same time, twice over.
        results = await asyncio.gather(*(node.place(room) for room in rooms for node in nodes for _ in range(2)))
        per_room: dict[str, set[str]] = {}
        for index, url in enumerate(results):
            per_room.setdefault(rooms[index // 4], set()).add(url)
        assert all(len(urls) == 1 for urls in per_room.values()), per_room
        stored = {room: await store.get(room_key(room)) for room in rooms}
        assert stored == {room: urls.pop() for room, urls in per_room.items()}
        spread: dict[str, int] = {}
        for url in stored.values():
            spread[str(url)] = spread.get(str(url), 0) + 1
        assert len(spread) == 4 and min(spread.values()) >= 5, spread  # and spread over the cluster
    finally:
        for node in nodes:
            await node.close()


async def test_redis_down_serves_from_what_the_front_knows_and_recovers(
    redis_server: RedisServer, store: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    a = RedisPlacement(redis_server.url, "node-a")
    b = RedisPlacement(redis_server.url, "node-b")
    try:
        await b.report([load("http://b:1")])
        await a.report([load("http://a:1", participants=3, rooms=("kept",))])
        assert await a.place("remote") == "http://b:1"
        redis_server.stop()
        started = time.monotonic()
        # Nothing raises; known rooms stay where they are; a new room goes to this node.
        await a.report([load("http://a:1", participants=3, rooms=("kept",))])
        assert await a.place("kept") == "http://a:1"
        assert await a.place("remote") == "http://b:1"
        assert await a.lookup("remote") == "http://b:1"
        assert await a.place("fresh") == "http://a:1"
        assert sorted(w.url for w in await a.workers()) == ["http://a:1", "http://b:1"]
        assert time.monotonic() - started < 3.0  # one timeout at most, then the cache
        warnings = [r for r in caplog.records if "Redis unavailable" in r.getMessage()]
        assert len(warnings) == 1  # rate-limited
        # Redis is back, empty: the next report re-registers the node and its rooms.
        redis_server.start()
        deadline = time.monotonic() + 5
        while await store.get(room_key("kept")) is None and time.monotonic() < deadline:
            await a.report([load("http://a:1", participants=3, rooms=("kept", "fresh"))])
            await asyncio.sleep(0.2)
        assert await store.get(room_key("kept")) == "http://a:1"
        assert await store.get(room_key("fresh")) == "http://a:1"
        assert await store.get(node_key("node-a")) is not None
        assert await store.smembers(NODES_KEY) == {"node-a"}
    finally:
        await a.close()
        await b.close()
