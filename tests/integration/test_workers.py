"""``sfu serve --workers 2``: one URL, rooms on two worker processes (docs/ARCHITECTURE.md
"Workers and nodes"). aiortc bots in 6 rooms see and hear each other within their room
and never another room's; the rooms are spread over both workers; /metrics labels every
worker's samples; a worker killed with SIGKILL is restarted, its participants reconnect
and their media flows again within 10 s while the other worker's rooms go on
undisturbed."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import urllib.request
from collections.abc import Callable

import psutil

from loadtest.client import RoomClient
from loadtest.media import PreEncodedAudioTrack, PreEncodedVideoTrack
from loadtest.server import ServerProcess

ROOMS = 6
TEST_TIMEOUT = 90.0


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def worker_pids(server: ServerProcess) -> dict[int, int]:
    """Port -> pid of the front's worker processes (from their command lines)."""
    out = {}
    for child in psutil.Process(server.pid).children():
        cmd = child.cmdline()
        if "--port" in cmd:
            out[int(cmd[cmd.index("--port") + 1])] = child.pid
    return out


class Room:
    def __init__(self, url: str, name: str) -> None:
        self.name = name
        self.publisher = RoomClient(url, auto_subscribe=False)
        self.viewer = RoomClient(url, count_rtp=True)

    async def start(self) -> None:
        await self.viewer.join(self.name, f"{self.name}-viewer")
        await self.publisher.join(self.name, f"{self.name}-publisher")
        await self.publisher.publish([PreEncodedVideoTrack(), PreEncodedAudioTrack()])

    def received(self) -> int:
        assert self.viewer.counter is not None
        return sum(s.packets for s in self.viewer.counter.snapshot())

    async def close(self) -> None:
        await asyncio.gather(self.publisher.close(), self.viewer.close(), return_exceptions=True)


async def test_rooms_on_two_workers_and_a_killed_worker(start_server: Callable[..., ServerProcess]) -> None:
    server = start_server("--workers", "2", "--reconnect-grace", "5")
    rooms = [Room(server.ws_url, f"w{i}") for i in range(ROOMS)]
    try:
        async with asyncio.timeout(TEST_TIMEOUT):
            for room in rooms:
                await room.start()
            for room in rooms:
                await room.viewer.wait_until(lambda r=room: len(r.viewer.subscriptions) == 2 and r.received() > 50,
                                             timeout=20)
            # Each viewer receives its own room's publisher only.
            for room in rooms:
                publishers = {s.participant_id for s in room.viewer.subscriptions.values()}
                assert publishers == {room.publisher.participant_id}, room.name
                assert set(room.viewer.participants) == {room.publisher.participant_id}
            health = get_json(server.http_url + "/healthz")
            by_worker = {w["url"]: w["rooms"] for w in health["workers"]}
            assert len(by_worker) == 2 and all(n >= 2 for n in by_worker.values()), health
            assert health["rooms"] == ROOMS and health["participants"] == 2 * ROOMS
            listed = get_json(server.http_url + "/admin/rooms")["rooms"]
            assert sorted(r["name"] for r in listed) == [r.name for r in rooms]
            metrics = await asyncio.to_thread(lambda: urllib.request.urlopen(server.http_url + "/metrics", timeout=5).read().decode())
            assert 'sfu_participants{worker="0"}' in metrics and 'sfu_participants{worker="1"}' in metrics
            assert 'sfu_workers_live{worker="front"} 2.0' in metrics

            # Kill the worker of the first room.
            victim_url = next(w["url"] for w in health["workers"] if w["rooms"])
            victim_rooms = {r["name"] for r in get_json(victim_url + "/admin/rooms")["rooms"]}
            port = int(victim_url.rsplit(":", 1)[1])
            os.kill(worker_pids(server)[port], signal.SIGKILL)
            killed_at = time.monotonic()
            hit = [r for r in rooms if r.name in victim_rooms]
            spared = [r for r in rooms if r.name not in victim_rooms]
            assert hit and spared
            before = {r.name: r.received() for r in rooms}
            for room in hit:  # both bots of a room on the dead worker come back, and so does its media
                await room.viewer.wait_until(
                    lambda r=room: r.publisher.reconnects >= 1 and r.viewer.reconnects >= 1
                    and len(r.viewer.subscriptions) == 2 and r.received() > before[r.name] + 50,
                    timeout=max(0.1, 10 - (time.monotonic() - killed_at)),
                )
            back_s = time.monotonic() - killed_at
            for room in spared:
                assert room.publisher.reconnects == 0 and room.viewer.reconnects == 0, room.name
                await room.viewer.wait_until(lambda r=room: r.received() > before[r.name] + 50, timeout=5)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:  # the dead worker was restarted
                if len(get_json(server.http_url + "/healthz")["workers"]) == 2:
                    break
                await asyncio.sleep(0.3)
            restarted = get_json(server.http_url + "/healthz")
    finally:
        await asyncio.gather(*(room.close() for room in rooms))
    assert back_s < 10, back_s
    assert len(restarted["workers"]) == 2, restarted
    print(f"rooms per worker {by_worker}; media back {back_s:.1f} s after the SIGKILL")


async def test_a_dev_token_of_the_front_is_good_on_every_worker(start_server: Callable[..., ServerProcess]) -> None:
    """Development mode behind a front: a token from the front's /dev/token joins rooms
    on either worker (the workers share the front's development key)."""
    server = start_server("--workers", "2")
    clients = [RoomClient(server.ws_url, auto_subscribe=False) for _ in range(4)]
    try:
        async with asyncio.timeout(TEST_TIMEOUT):
            for i, client in enumerate(clients):
                token = get_json(f"{server.http_url}/dev/token?room=tok{i}&name=T{i}")["token"]
                joined = await client.join(None, token=token)
                assert joined["room"] == f"tok{i}"
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:  # the workers report their rooms every second
                health = get_json(server.http_url + "/healthz")
                if health["rooms"] == 4:
                    break
                await asyncio.sleep(0.2)
    finally:
        await asyncio.gather(*(c.close() for c in clients))
    assert sorted(w["rooms"] for w in health["workers"]) == [2, 2]


async def test_each_worker_takes_the_next_shared_udp_port(start_server: Callable[..., ServerProcess]) -> None:
    """``--udp-port P`` with two workers: worker i carries all its media on P + i, and
    the server holds no other UDP port."""
    from loadtest.server import free_port

    port = free_port()
    while port > 65000:
        port = free_port()
    server = start_server("--workers", "2", "--udp-port", str(port))
    rooms = [Room(server.ws_url, f"u{i}") for i in range(2)]
    try:
        async with asyncio.timeout(TEST_TIMEOUT):
            for room in rooms:
                await room.start()
            for room in rooms:
                await room.viewer.wait_until(lambda r=room: r.received() > 50, timeout=20)
            udp = set()
            for proc in [psutil.Process(server.pid), *psutil.Process(server.pid).children()]:
                udp |= {c.laddr.port for c in proc.net_connections(kind="udp")}
            health = get_json(server.http_url + "/healthz")
    finally:
        await asyncio.gather(*(room.close() for room in rooms))
    assert udp == {port, port + 1}, udp
    assert sorted(w["rooms"] for w in health["workers"]) == [1, 1]
