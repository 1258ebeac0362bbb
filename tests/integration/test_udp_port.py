"""``--udp-port P``: every participant's ICE, DTLS, SRTP and SCTP on one UDP port. Ten
participants in three rooms publish and receive each other's tracks; the server holds
no UDP socket but port P; datagrams from a stranger to P are dropped and counted while
everyone's media goes on."""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import Callable

from aioice import stun

from loadtest.client import RoomClient
from loadtest.data import ChannelSpec
from loadtest.server import ServerProcess
from tests.integration.rooms_on_ports import Rooms, all_answer_ports, process_udp_ports

TIMEOUT = 60


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mux_drops(server: ServerProcess) -> dict[str, float]:
    return {
        key.split('reason="')[1].rstrip('"}'): value
        for key, value in server.metrics().items()
        if key.startswith("sfu_udp_mux_dropped_total{")
    }


async def test_ten_participants_in_three_rooms_share_one_port(start_server: Callable[..., ServerProcess]) -> None:
    port = free_udp_port()
    server = start_server("--udp-port", str(port), "--max-participants", "10")
    rooms = Rooms(server)
    stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        async with asyncio.timeout(TIMEOUT):
            await rooms.start()
            assert all_answer_ports(rooms.clients) == {port}
            assert process_udp_ports(server.pid) == {port}
            ufrags = {re.search(r"a=ice-ufrag:(\S+)", c.pc.remoteDescription.sdp).group(1) for c in rooms.clients}
            assert len(ufrags) == 10 and all(len(u) == 16 for u in ufrags), ufrags

            # A stranger at P: SRTP- and DTLS-looking datagrams, a check naming a
            # participant's ufrag with the wrong password, a check naming nobody.
            before = await asyncio.to_thread(mux_drops, server)
            victim = next(iter(ufrags))
            junk = [b"\x80\x60" + bytes(100), b"\x16\xfe\xfd" + bytes(40), b"\x17\xfe\xfd" + bytes(60)] * 20
            for data in junk:
                stranger.sendto(data, ("127.0.0.1", port))
            for username in (f"{victim}:evil", "nobody:evil"):
                check = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
                check.attributes["USERNAME"] = username
                check.add_message_integrity(b"not-the-password-22chr")
                stranger.sendto(bytes(check), ("127.0.0.1", port))
            await rooms.assert_media_keeps_flowing()
            after = await asyncio.to_thread(mux_drops, server)
            grown = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
            assert grown == {"unknown_source": len(junk), "unauthenticated": 1, "unknown_ufrag": 1}, grown
            stranger.setblocking(False)
            try:
                answer = stranger.recv(2048)
            except BlockingIOError:
                answer = None
            assert answer is None, "the server answered a stranger"
            assert process_udp_ports(server.pid) == {port}
    finally:
        stranger.close()
        await rooms.close()


async def test_datachannels_and_leaving_on_the_shared_port(start_server: Callable[..., ServerProcess]) -> None:
    """SCTP over DTLS on the shared port; a participant who leaves frees its ufrag and
    addresses (its source is a stranger again) and a newcomer connects."""
    port = free_udp_port()
    server = start_server("--udp-port", str(port))
    a = RoomClient(server.ws_url, channels=[ChannelSpec("chat")])
    b = RoomClient(server.ws_url, channels=[ChannelSpec("chat")])
    c = RoomClient(server.ws_url, channels=[ChannelSpec("chat")])
    try:
        async with asyncio.timeout(TIMEOUT):
            await a.join("chat", "A")
            await b.join("chat", "B")
            a.send_data("chat", "hello over one port")
            assert (await asyncio.wait_for(b.data.get(), 10)).data == "hello over one port"
            # B's own socket, the one the server routes by: after B leaves, its datagrams are a stranger's.
            connection = b.pc.sctp.transport.transport._connection
            own = connection._protocols[0].transport
            b_addr = own.get_extra_info("sockname")
            await b.leave()
            await asyncio.sleep(0.5)
            before = await asyncio.to_thread(mux_drops, server)
            probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                probe.bind(b_addr)  # B's port is free again: send from B's address
                probe.sendto(b"\x17\xfe\xfd" + bytes(60), ("127.0.0.1", port))
            finally:
                probe.close()
            for _ in range(50):
                if (await asyncio.to_thread(mux_drops, server)).get("unknown_source", 0) > before.get("unknown_source", 0):
                    break
                await asyncio.sleep(0.1)
            assert (await asyncio.to_thread(mux_drops, server))["unknown_source"] == before.get("unknown_source", 0) + 1
            await c.join("chat", "C")
            c.send_data("chat", "newcomer")
            assert (await asyncio.wait_for(a.data.get(), 10)).data == "newcomer"
            assert process_udp_ports(server.pid) == {port}
    finally:
        await asyncio.gather(a.close(), b.close(), c.close())
