"""Hostile datagrams at participants' media ports, through a real server: empty,
1-byte, short, garbage and replayed datagrams, from a stranger's socket and from the
participant's own validated socket, during the DTLS handshake and after it, at a
media participant and at a DataChannel-only one. Everyone keeps working; every
datagram dropped is counted by reason, and nothing is logged per datagram.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable

import pytest
from aiortc import RTCPeerConnection

from loadtest.client import RoomClient
from loadtest.media import PreEncodedAudioTrack, PreEncodedVideoTrack
from loadtest.server import ServerProcess
from tests.integration.shaping import candidate_port

TEST_TIMEOUT = 60.0
SERVER_ADDR = "127.0.0.1"


def junk() -> list[bytes]:
    """Datagrams a careless or hostile sender throws: empty, one byte, every RFC 7983
    range cut short, a DTLS-looking record, RTP- and RTCP-looking garbage, and bytes
    outside every range."""
    return [
        b"",
        b"\x00",
        b"\x16",  # DTLS content type, nothing else
        b"\x80",  # RTP version bits, nothing else
        b"\x80\xc8",  # RTCP SR, truncated
        b"\x16\xfe\xfd" + os.urandom(10),  # a DTLS record header and garbage
        b"\x17\xfe\xfd" + os.urandom(60),  # DTLS application data, garbage
        b"\x80\x60" + os.urandom(200),  # RTP-looking garbage: SRTP unprotect fails
        b"\x81\xc9" + os.urandom(40),  # RTCP-looking garbage
        b"\xff" * 30,  # outside every range
        bytes(range(256)) * 4,
    ]


def server_port(pc: RTCPeerConnection) -> int:
    assert pc.remoteDescription is not None
    return candidate_port(pc.remoteDescription.sdp)


def own_sendto(pc: RTCPeerConnection) -> Callable[[bytes, tuple[str, int]], None]:
    """The ``sendto`` of the client's own ICE socket (the one the server validated)."""
    transport = pc.getTransceivers()[0].sender.transport if pc.getTransceivers() else pc.sctp.transport
    connection = transport.transport._connection
    protocol = connection._protocols[0]
    return protocol.transport.sendto


async def blast(sendto: Callable[[bytes, tuple[str, int]], None], port: int, rounds: int, pause: float = 0.01) -> int:
    sent = 0
    for _ in range(rounds):
        for datagram in junk():
            sendto(datagram, (SERVER_ADDR, port))
            sent += 1
        await asyncio.sleep(pause)
    return sent


def drops(server: ServerProcess) -> dict[str, float]:
    out = {}
    for key, value in server.metrics().items():
        if key.startswith("sfu_rtp_packets_dropped_total{"):
            out[key.split('reason="')[1].rstrip('"}')] = value
    return out


def mux_drops(server: ServerProcess) -> dict[str, float]:
    return {
        key.split('reason="')[1].rstrip('"}'): value
        for key, value in server.metrics().items()
        if key.startswith("sfu_udp_mux_dropped_total{")
    }


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((SERVER_ADDR, 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("shared_port", [False, True], ids=["own-ports", "udp-port"])
async def test_junk_datagrams_hurt_no_one(start_server: Callable[..., ServerProcess], shared_port: bool) -> None:
    """With ``--udp-port`` the stranger's datagrams stop at the demultiplexer
    (``sfu_udp_mux_dropped_total``) and the participants' own junk still meets the ICE
    guard behind it."""
    server = start_server(*(("--udp-port", str(free_udp_port())) if shared_port else ()))
    stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    stranger.setblocking(False)
    publisher = RoomClient(server.ws_url, auto_subscribe=False)
    viewer = RoomClient(server.ws_url, count_rtp=True)
    chatter = RoomClient(server.ws_url, auto_subscribe=False, channels=[])
    blasting: list[asyncio.Task] = []
    try:
        async with asyncio.timeout(TEST_TIMEOUT):
            await publisher.join("hostile", "Pub")
            await viewer.join("hostile", "Viewer")
            # During the handshakes: a stranger blasts each participant's port as soon
            # as the answer names it, for 2 s, while ICE and DTLS run.

            async def during(client: RoomClient) -> int:
                while client.pc is None or client.pc.remoteDescription is None:
                    await asyncio.sleep(0.005)
                return await blast(stranger.sendto, server_port(client.pc), 200)

            blasting.append(asyncio.ensure_future(during(chatter)))
            await chatter.join("hostile", "Chatter")
            await chatter.open_channel("chat")
            await publisher.publish([PreEncodedVideoTrack(), PreEncodedAudioTrack()], ["camera", "microphone"])
            await viewer.wait_until(lambda: len(viewer.subscriptions) == 2)
            await asyncio.gather(*blasting)

            # After DTLS: from the stranger, and from each participant's own socket,
            # plus replays of real SRTP the publisher sent.
            captured: list[bytes] = []
            sendto = own_sendto(publisher.pc)

            def recording(data: bytes, addr: tuple[str, int]) -> None:
                if len(captured) < 50 and len(data) > 100:
                    captured.append(bytes(data))
                sendto(data, addr)

            connection = publisher.pc.getTransceivers()[0].sender.transport.transport._connection
            connection._protocols[0].transport.sendto = recording
            await asyncio.sleep(0.5)
            connection._protocols[0].transport.sendto = sendto
            assert captured, "no SRTP captured from the publisher"
            before, mux_before = drops(server), mux_drops(server)
            ports = {c: server_port(c.pc) for c in (publisher, viewer, chatter)}
            for client, port in ports.items():
                await blast(stranger.sendto, port, 50)
                await blast(own_sendto(client.pc), port, 50)
            for data in captured:
                sendto(data, (SERVER_ADDR, ports[publisher]))  # replays: libsrtp refuses them
            after, mux_after = drops(server), mux_drops(server)

            # Everyone still works: the viewer keeps receiving, the chat still flows.
            counted = sum(s.packets for s in viewer.counter.snapshot())
            await asyncio.sleep(1.0)
            assert sum(s.packets for s in viewer.counter.snapshot()) > counted + 20
            await viewer.open_channel("chat")
            chatter.send_data("chat", "after the junk")
            async with asyncio.timeout(5):
                while True:
                    message = await viewer.data.get()
                    if message.data == "after the junk":
                        break
            assert all(c.pc.connectionState == "connected" for c in (publisher, viewer, chatter))
    finally:
        for task in blasting:
            task.cancel()
        stranger.close()
        await asyncio.gather(publisher.close(), viewer.close(), chatter.close())

    increase = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    guarded = ("short_datagram", "unknown_datagram", "srtp_failed") + (() if shared_port else ("unvalidated_source",))
    for reason in guarded:
        assert increase.get(reason, 0) > 0, (reason, increase)
    if shared_port:
        assert mux_after.get("unknown_source", 0) - mux_before.get("unknown_source", 0) >= 50 * len(junk()), (
            mux_before, mux_after)
    log = server.log_path.read_text(errors="replace")
    assert "Traceback" not in log, server.log_tail(60)
    assert log.count("\n") < 200, f"the server logged per datagram:\n{server.log_tail(60)}"
