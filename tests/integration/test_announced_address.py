"""An announced address (``--announced-address``) behind a 1:1 NAT, made on loopback
with iptables: the server binds 127.0.0.1 and announces 127.0.0.2; what goes to
127.0.0.2 is sent on to 127.0.0.1 (DNAT) and what the server sends to the client
(127.0.0.3) leaves from 127.0.0.2 (SNAT), as a cloud's 1:1 NAT does. The answer's host
candidates carry 127.0.0.2 only, the client's ICE pair is with 127.0.0.2, and media
flows; the same with all media on one shared port (``--udp-port``). The rules are
deleted whatever happens."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from loadtest.client import RoomClient
from loadtest.media import PreEncodedAudioTrack
from loadtest.server import ServerProcess
from sfu.rtc.adapter import set_ice_addresses

SERVER, ANNOUNCED, CLIENT = "127.0.0.1", "127.0.0.2", "127.0.0.3"
TIMEOUT = 60


@contextmanager
def one_to_one_nat() -> Iterator[None]:
    if os.geteuid() != 0 or shutil.which("iptables") is None:
        pytest.fail("the NAT needs root and iptables (.ci/run installs the Debian package iptables)")
    rules = [
        ["OUTPUT", "-t", "nat", "-d", ANNOUNCED, "-p", "udp", "-j", "DNAT", "--to-destination", SERVER],
        ["POSTROUTING", "-t", "nat", "-s", SERVER, "-d", CLIENT, "-p", "udp", "-j", "SNAT", "--to-source", ANNOUNCED],
    ]
    added = []
    try:
        for rule in rules:
            subprocess.run(["iptables", "-A", *rule], check=True, capture_output=True, text=True)
            added.append(rule)
        yield
    finally:
        for rule in added:
            subprocess.run(["iptables", "-D", *rule], capture_output=True)


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((SERVER, 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("shared_port", [False, True], ids=["own-ports", "udp-port"])
async def test_clients_reach_the_server_at_its_announced_address(
    start_server: Callable[..., ServerProcess], shared_port: bool
) -> None:
    """With ``--udp-port P`` too, the candidates carry the announced address and P."""
    port = free_udp_port() if shared_port else None
    server = start_server("--announced-address", ANNOUNCED, *(("--udp-port", str(port)) if port else ()))
    publisher = RoomClient(server.ws_url, auto_subscribe=False, loopback_only=False)
    viewer = RoomClient(server.ws_url, count_rtp=True, loopback_only=False)
    set_ice_addresses([CLIENT])  # this process's peers are the client behind the NAT
    try:
        with one_to_one_nat():
            async with asyncio.timeout(TIMEOUT):
                await publisher.join("announced", "Pub")
                await viewer.join("announced", "Viewer")
                await publisher.publish([PreEncodedAudioTrack()], ["microphone"])
                await viewer.wait_until(lambda: sum(s.packets for s in viewer.counter.snapshot()) > 50, timeout=20)
                sdp = viewer.pc.remoteDescription.sdp
                hosts = re.findall(r"a=candidate:\S+ \d \S+ \d+ (\S+) \d+ typ host", sdp)
                assert hosts and set(hosts) == {ANNOUNCED}, hosts
                if port is not None:
                    ports = re.findall(r"a=candidate:\S+ \d \S+ \d+ \S+ (\d+) typ host", sdp)
                    assert set(ports) == {str(port)}, ports
                assert f"c=IN IP4 {SERVER}" not in sdp
                for client in (publisher, viewer):
                    ice = client.pc.getTransceivers()[0].receiver.transport.transport
                    pair = ice._connection._nominated.get(1)  # aioice's selected pair of component 1
                    assert pair is not None and pair.remote_addr[0] == ANNOUNCED, pair
                    assert port is None or pair.remote_addr[1] == port, pair
    finally:
        set_ice_addresses([SERVER])
        await asyncio.gather(publisher.close(), viewer.close())
