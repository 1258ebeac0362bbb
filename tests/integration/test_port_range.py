"""``--udp-port-range``: every media socket binds inside the range; when the range is
full the next participant's offer is refused with ``no_media_port`` (counted), and a
port freed by a leaving participant is used again; ten participants in three rooms hold
UDP sockets on ports of the range only."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable

import pytest

from loadtest.client import RoomClient, RoomError
from loadtest.media import PreEncodedAudioTrack
from loadtest.server import ServerProcess, free_port
from tests.integration.rooms_on_ports import Rooms, all_answer_ports, process_udp_ports

TIMEOUT = 60


def candidate_ports(client: RoomClient) -> set[int]:
    sdp = client.pc.remoteDescription.sdp
    return {int(p) for p in re.findall(r"a=candidate:\S+ \d udp \d+ \S+ (\d+) typ host", sdp)}


async def test_sockets_stay_in_the_range_and_a_full_range_is_refused(start_server: Callable[..., ServerProcess]) -> None:
    low = 20000 + free_port() % 40000  # two ports, likely free
    server = start_server("--udp-port-range", f"{low}-{low + 1}")
    clients: list[RoomClient] = []
    try:
        async with asyncio.timeout(TIMEOUT):
            for name in ("A", "B"):
                client = RoomClient(server.ws_url, auto_subscribe=False)
                clients.append(client)
                await client.join("ports", name)
                await client.publish([PreEncodedAudioTrack()], ["microphone"])
            ports = candidate_ports(clients[0]) | candidate_ports(clients[1])
            assert ports == {low, low + 1}, ports
            late = RoomClient(server.ws_url, auto_subscribe=False)
            clients.append(late)
            await late.join("ports", "C")
            with pytest.raises(RoomError) as err:
                await late.publish([PreEncodedAudioTrack()], ["microphone"])
            assert err.value.code == "no_media_port" and f"{low}-{low + 1}" in err.value.message
            assert server.metrics()['sfu_limit_refusals_total{limit="udp_port_range"}'] == 1
            await clients[1].close()  # B leaves: its port is free again
            await asyncio.sleep(1.0)
            again = RoomClient(server.ws_url, auto_subscribe=False)
            clients.append(again)
            await again.join("ports", "D")
            await again.publish([PreEncodedAudioTrack()], ["microphone"])
            assert candidate_ports(again) <= {low, low + 1}
    finally:
        await asyncio.gather(*(c.close() for c in clients))


async def test_ten_participants_in_three_rooms_use_only_the_range(start_server: Callable[..., ServerProcess]) -> None:
    """Every media socket of the server is inside the range, one per participant, and
    everyone receives every track of its room."""
    low = 20000 + free_port() % 40000
    high = low + 15
    server = start_server("--udp-port-range", f"{low}-{high}", "--max-participants", "10")
    rooms = Rooms(server)
    try:
        async with asyncio.timeout(TIMEOUT):
            await rooms.start()
            answered = all_answer_ports(rooms.clients)
            held = process_udp_ports(server.pid)
            assert len(answered) == 10 and answered <= set(range(low, high + 1)), answered
            assert held == answered, (held, answered)
            await rooms.assert_media_keeps_flowing()
    finally:
        await rooms.close()
