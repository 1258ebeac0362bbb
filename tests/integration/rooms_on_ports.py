"""Ten participants in three rooms, each publishing and receiving everyone else's tracks
of its room, against a server whose media ports are restricted (``--udp-port``,
``--udp-port-range``); and the UDP ports a process really holds, read from /proc."""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Iterable

from aiortc import RTCPeerConnection

from loadtest.client import RoomClient
from loadtest.counter import RtpCounter
from loadtest.media import PreEncodedAudioTrack, PreEncodedVideoTrack
from loadtest.server import ServerProcess
from sfu.rtc.adapter import install_tap

ROOMS = {"alpha": 4, "beta": 3, "gamma": 3}  # 10 participants
READY_TIMEOUT = 30.0  # seconds for everyone to receive every track of its room


def process_udp_ports(pid: int) -> set[int]:
    """The local ports of every UDP socket process ``pid`` holds (IPv4 and IPv6): the
    socket inodes of its open files matched against its network namespace's
    ``/proc/<pid>/net/udp`` and ``udp6`` tables."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:  # closed meanwhile
            continue
        match = re.fullmatch(r"socket:\[(\d+)\]", target)
        if match:
            inodes.add(match.group(1))
    ports = set()
    for table in ("udp", "udp6"):
        with open(f"/proc/{pid}/net/{table}") as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[9] in inodes:
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def answer_ports(client: RoomClient) -> set[int]:
    """The ports of the server's host candidates in the answer ``client`` holds."""
    assert client.pc is not None and client.pc.remoteDescription is not None
    sdp = client.pc.remoteDescription.sdp
    return {int(p) for p in re.findall(r"a=candidate:\S+ \d udp \d+ \S+ (\d+) typ host", sdp)}


def received(client: RoomClient) -> dict[str, int]:
    """RTP packets received per subscribed track id."""
    assert client.counter is not None
    by_mid = {s.mid: s.packets for s in client.counter.snapshot()}
    return {track_id: by_mid.get(sub.mid, 0) for track_id, sub in client.subscriptions.items()}


class Participant(RoomClient):
    """A participant that publishes aiortc tracks and counts the RTP it receives
    without decoding it: its connection's decrypted RTP is tapped
    (``sfu.rtc.adapter.install_tap``) but, unlike ``RoomClient(count_rtp=True)``, its
    senders keep their media engines."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.rtp = RtpCounter()

    def _create_peer_connection(self) -> RTCPeerConnection:
        pc = super()._create_peer_connection()
        install_tap(pc, self.rtp)
        self.counter = self.rtp  # from now on the client keeps it told of the SDP
        return pc


class Rooms:
    """The participants, by room; every one publishes audio, the first of each room
    video too, and subscribes to everything in its room (counting RTP, no decoding)."""

    def __init__(self, server: ServerProcess) -> None:
        self.by_room = {room: [Participant(server.ws_url) for _ in range(n)] for room, n in ROOMS.items()}
        self.published: dict[str, set[str]] = {room: set() for room in ROOMS}

    @property
    def clients(self) -> list[RoomClient]:
        return [c for clients in self.by_room.values() for c in clients]

    async def start(self) -> None:
        """Join and publish everyone (rooms at once), then wait until each receives
        every other participant's tracks of its room, and no others."""

        async def join(room: str, clients: list[Participant]) -> None:
            for i, client in enumerate(clients):  # one after the other in a room, the rooms at once
                await client.join(room, f"{room}-{i}")
                tracks = [PreEncodedAudioTrack()] + ([PreEncodedVideoTrack()] if i == 0 else [])
                await client.publish(tracks)
                self.published[room] |= set(client.published)

        await asyncio.gather(*(join(room, clients) for room, clients in self.by_room.items()))
        for room, clients in self.by_room.items():
            for client in clients:
                others = self.published[room] - set(client.published)
                await client.wait_until(
                    lambda c=client, o=others: set(c.subscriptions) == o and all(n > 0 for n in received(c).values()),
                    timeout=READY_TIMEOUT,
                )

    def totals(self) -> dict[int, dict[str, int]]:
        """Packets received per client (by index) and track."""
        return {i: received(c) for i, c in enumerate(self.clients)}

    async def assert_media_keeps_flowing(self, seconds: float = 1.5) -> None:
        """Every subscribed track of every client gets more packets within ``seconds``."""
        before = self.totals()
        await asyncio.sleep(seconds)
        after = self.totals()
        stalled = [(i, t) for i, tracks in after.items() for t, n in tracks.items() if n <= before[i].get(t, 0)]
        assert not stalled, f"tracks that stopped: {stalled}"

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self.clients), return_exceptions=True)


def all_answer_ports(clients: Iterable[RoomClient]) -> set[int]:
    """The union of :func:`answer_ports` over ``clients``."""
    return set().union(*(answer_ports(c) for c in clients))
