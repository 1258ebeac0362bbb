"""ICE servers for clients through a real coturn (``use-auth-secret``): the join reply
carries TURN credentials minted for the participant, a client allowed to use only relay
candidates reaches the server through coturn and receives media, and credentials made
with another secret are refused by coturn. WHIP answers carry the servers as ``Link``
headers (RFC 9725 §4.6)."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import pytest

from loadtest.client import RoomClient
from loadtest.media import PreEncodedAudioTrack, PreEncodedVideoTrack
from loadtest.server import ServerProcess, free_port

TURN_SECRET = "coturn-shared-secret-for-tests"
TIMEOUT = 60


@pytest.fixture
def coturn(tmp_path: Path) -> Iterator[int]:
    """coturn on 127.0.0.1 (a free port), relaying between loopback addresses, with
    TURN REST credentials; stopped by its pid."""
    binary = shutil.which("turnserver")
    if binary is None:
        pytest.fail("turnserver is not installed (.ci/run installs the Debian package coturn)")
    port = free_port()
    low = 49152 + port % 8000  # a relay port range inside the dynamic ports
    config = tmp_path / "turnserver.conf"
    config.write_text(
        f"listening-ip=127.0.0.1\nrelay-ip=127.0.0.1\nlistening-port={port}\nmin-port={low}\nmax-port={low + 50}\n"
        f"use-auth-secret\nstatic-auth-secret={TURN_SECRET}\nrealm=sfu.test\nallow-loopback-peers\n"
        "no-cli\nno-tls\nno-dtls\nfingerprint\nsimple-log\n"
        f"log-file={tmp_path / 'turn.log'}\npidfile={tmp_path / 'turn.pid'}\n"
    )
    proc = subprocess.Popen([binary, "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while True:  # up when its TCP listener accepts
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"coturn did not start: {(tmp_path / 'turn.log').read_text(errors='replace')[-2000:]}")
                time.sleep(0.1)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


async def test_a_relay_only_client_gets_media_through_turn(start_server: Callable[..., ServerProcess], coturn: int) -> None:
    turn_url = f"turn:127.0.0.1:{coturn}"
    server = start_server("--turn", turn_url, "--turn-secret", TURN_SECRET)
    publisher = RoomClient(server.ws_url, auto_subscribe=False)
    viewer = RoomClient(server.ws_url, count_rtp=True, ice_transport_policy="relay")
    try:
        async with asyncio.timeout(TIMEOUT):
            await publisher.join("turn", "Pub")
            reply = await viewer.join("turn", "Viewer")
            (turn,) = reply["iceServers"]
            assert turn["urls"] == [turn_url] and turn["username"].endswith(":" + reply["identity"])
            await publisher.publish([PreEncodedVideoTrack(), PreEncodedAudioTrack()], ["camera", "microphone"])
            await viewer.wait_until(lambda: sum(s.packets for s in viewer.counter.snapshot()) > 100, timeout=30)
            pair = viewer.pc.getTransceivers()[0].receiver.transport.transport.iceGatherer.getLocalCandidates()
            assert pair and all(c.type == "relay" for c in pair), [c.type for c in pair]
    finally:
        await asyncio.gather(publisher.close(), viewer.close())


async def test_credentials_of_another_secret_are_refused(start_server: Callable[..., ServerProcess], coturn: int) -> None:
    server = start_server("--turn", f"turn:127.0.0.1:{coturn}", "--turn-secret", "not-the-coturn-secret")
    publisher = RoomClient(server.ws_url, auto_subscribe=False)
    viewer = RoomClient(server.ws_url, count_rtp=True, ice_transport_policy="relay", request_timeout=20)
    try:
        async with asyncio.timeout(TIMEOUT):
            await publisher.join("turn-bad", "Pub")
            await viewer.join("turn-bad", "Viewer")
            await publisher.publish([PreEncodedAudioTrack()], ["microphone"])
            await asyncio.sleep(5.0)
            assert viewer.pc is not None and viewer.pc.connectionState != "connected"
            assert sum(s.packets for s in viewer.counter.snapshot()) == 0
    finally:
        await asyncio.gather(publisher.close(), viewer.close())


async def test_whip_answers_carry_the_ice_servers(start_server: Callable[..., ServerProcess]) -> None:
    from aiortc import RTCPeerConnection

    server = start_server("--turn", "turn:turn.example.com:3478?transport=tcp", "--turn-secret", TURN_SECRET)
    pc = RTCPeerConnection()
    try:
        pc.addTransceiver(PreEncodedAudioTrack(), direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        async with aiohttp.ClientSession() as http, http.post(
            f"{server.http_url}/whip/linked", data=pc.localDescription.sdp, headers={"Content-Type": "application/sdp"}
        ) as response:
            assert response.status == 201
            (link,) = response.headers.getall("Link")
            assert link.startswith('<turn:turn.example.com:3478?transport=tcp>; rel="ice-server"; username="')
            assert 'credential-type="password"' in link
    finally:
        await pc.close()
