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
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis

from loadtest.client import RoomClient
from loadtest.media import PreEncodedAudioTrack, PreEncodedVideoTrack
from loadtest.server import ServerProcess
from sfu.auth import VideoGrant, mint_token
from sfu.server_api import ServerApi
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
    """A plain client to look at the keys ."""
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


# -- two nodes ------------------------------------------------------------------------


def member_token(room: str, identity: str) -> str:
    return mint_token(KEY, SECRET, identity, VideoGrant(room=room, room_join=True), name=identity.title())


async def member(server: ServerProcess, room: str, identity: str, viewer: bool = False) -> RoomClient:
    """A bot joined to ``room`` through ``server``'s front (a viewer counts RTP and
    subscribes to everything; a publisher subscribes to nothing)."""
    client = RoomClient(server.ws_url, count_rtp=viewer, auto_subscribe=viewer)
    await client.join(None, token=member_token(room, identity))
    return client


def received(client: RoomClient) -> int:
    assert client.counter is not None
    return sum(s.packets for s in client.counter.snapshot())


async def wait_for(predicate: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.1)


async def test_two_nodes_one_room_api_across_nodes_redis_restart_and_a_killed_node(
    redis_server: RedisServer, store: aioredis.Redis, start_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    config = tmp_path / "sfu.toml"
    config.write_text(f'[keys]\n{KEY} = "{SECRET}"\n')
    node_args = ("--workers", "1", "--redis", redis_server.url, "--config", str(config), "--reconnect-grace", "5")
    clients: list[RoomClient] = []
    apis: list[ServerApi] = []
    try:
        async with asyncio.timeout(90):
            # Node B alone: room "moving" lands on its worker (carol joins through B).
            b = start_server(*node_args)
            carol = await member(b, "moving", "carol")
            clients.append(carol)
            b_worker = str(await store.get(room_key("moving")))
            a = start_server(*node_args)
            api = ServerApi(a.http_url, KEY, SECRET)
            apis.append(api)

            async def two_workers() -> bool:
                return len(await api_health(a)) == 2

            await wait_for(two_workers, 10, "node A sees both nodes' workers")
            a_worker = next(url for url in await api_health(a) if url != b_worker)

            # Through A, to B's worker: a publisher and a viewer meet carol, media flows.
            pub = await member(a, "moving", "pub")
            view = await member(a, "moving", "view", viewer=True)
            clients += [pub, view]
            await pub.publish([PreEncodedVideoTrack(), PreEncodedAudioTrack()])
            # "meet" goes to A's worker (the least loaded): alice through A, bob through B.
            alice = await member(a, "meet", "alice")
            bob = await member(b, "meet", "bob", viewer=True)
            clients += [alice, bob]
            await alice.publish([PreEncodedAudioTrack()])
            await view.wait_until(lambda: len(view.subscriptions) == 2 and received(view) > 50, timeout=20)
            await bob.wait_until(lambda: len(bob.subscriptions) == 1 and received(bob) > 20, timeout=20)
            assert set(view.participants) == {pub.participant_id, carol.participant_id}
            assert set(bob.participants) == {alice.participant_id} and set(alice.participants) == {bob.participant_id}
            assert await store.get(room_key("moving")) == b_worker
            assert await store.get(room_key("meet")) == a_worker

            # The server API of node A: every room of the cluster; a participant on node B removed.
            rooms = {r["name"]: r["numParticipants"] for r in await api.list_rooms()}
            assert rooms == {"moving": 3, "meet": 2}, rooms
            assert {p["identity"] for p in await api.list_participants("moving")} == {"carol", "pub", "view"}
            await api.remove_participant("moving", "carol")
            assert (await carol.next_event("removed", timeout=5))["reason"] == "removed"
            await view.wait_until(lambda: set(view.participants) == {pub.participant_id}, timeout=5)

            # Redis restarted, empty: each node claims its rooms again, new joins land there.
            redis_server.stop()
            await asyncio.sleep(1.5)  # the nodes' reports fail meanwhile
            redis_server.start()
            restarted = time.monotonic()
            await store.connection_pool.disconnect()  # the test's own client: connect again

            async def rooms_back() -> bool:
                return (await store.get(room_key("moving")), await store.get(room_key("meet"))) == (b_worker, a_worker)

            await wait_for(rooms_back, 5, "the nodes re-claimed their rooms")
            reclaimed_s = time.monotonic() - restarted
            dave = await member(b, "meet", "dave")  # through B, to A's worker
            erin = await member(a, "moving", "erin")  # through A, to B's worker
            clients += [dave, erin]
            assert set(dave.participants) == {alice.participant_id, bob.participant_id}
            assert set(erin.participants) == {pub.participant_id, view.participant_id}
            await asyncio.gather(erin.leave(), dave.leave())

            # Node B SIGKILLed, front and worker: "moving" moves to A's worker; pub and view
            # (connected through A) reconnect and media flows again; "meet" goes on.
            os.killpg(b.pid, signal.SIGKILL)
            b.proc.wait(timeout=5)
            killed = time.monotonic()
            before = received(view)
            await view.wait_until(
                lambda: pub.reconnects >= 1 and view.reconnects >= 1 and len(view.subscriptions) == 2
                and received(view) > before + 50, timeout=20)
            moved_s = time.monotonic() - killed
            assert await store.get(room_key("moving")) == a_worker
            assert alice.reconnects == 0
            alice_rooms = {r["name"]: r["numParticipants"] for r in await api.list_rooms()}
            assert alice_rooms["moving"] == 2, alice_rooms

            async def b_gone() -> bool:
                return await api_health(a) == [a_worker]

            await wait_for(b_gone, 10, "node B's heartbeat expired")
    finally:
        await asyncio.gather(*(c.close() for c in clients), *(api.close() for api in apis), return_exceptions=True)
    print(f"rooms re-claimed {reclaimed_s:.1f} s after the Redis restart; media back {moved_s:.1f} s after node B's SIGKILL")


async def api_health(server: ServerProcess) -> list[str]:
    """The worker URLs a node's /healthz lists (every live node's)."""
    async with aiohttp.ClientSession() as http, http.get(server.http_url + "/healthz") as response:
        return sorted(w["url"] for w in (await response.json())["workers"])
