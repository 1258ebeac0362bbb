"""Graceful shutdown: on SIGTERM (or SIGINT) the server tells every participant
(`server_shutdown`), closes their WebSockets with 1001 and their PeerConnections, takes
no new joins, and exits 0 within 5 s without a traceback."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Callable

import aiohttp
import pytest

from loadtest.client import RoomClient
from loadtest.media import PreEncodedAudioTrack, PreEncodedVideoTrack
from loadtest.server import ServerProcess


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_a_signal_tells_everyone_and_exits_cleanly(start_server: Callable[..., ServerProcess], sig: int) -> None:
    server = start_server()
    publisher = RoomClient(server.ws_url, auto_subscribe=False)
    viewer = RoomClient(server.ws_url)
    try:
        async with asyncio.timeout(60), aiohttp.ClientSession() as http:
            await publisher.join("bye", "Pub")
            await viewer.join("bye", "Viewer")
            await publisher.publish([PreEncodedVideoTrack(), PreEncodedAudioTrack()], ["camera", "microphone"])
            await viewer.wait_until(lambda: len(viewer.subscriptions) == 2)
            sockets = []
            for name in ("Raw1", "Raw2"):
                ws = await http.ws_connect(server.ws_url)
                await ws.send_str(json.dumps({"type": "join", "room": "bye", "name": name}))
                assert json.loads((await ws.receive(timeout=5)).data)["type"] == "joined"
                sockets.append(ws)
            started = time.monotonic()
            os.kill(server.pid, sig)
            for ws in sockets:
                types = []
                while True:
                    frame = await ws.receive(timeout=5)
                    if frame.type != aiohttp.WSMsgType.TEXT:
                        break
                    types.append(json.loads(frame.data)["type"])
                assert "server_shutdown" in types, types
                assert ws.close_code == 1001, ws.close_code
                await ws.close()
            shutdown = await publisher.next_event("server_shutdown", timeout=5)
            assert "shutting down" in shutdown["message"]
            code = await asyncio.to_thread(server.proc.wait, 5)
            took = time.monotonic() - started
    finally:
        await asyncio.gather(publisher.close(), viewer.close())
    assert code == 0, server.log_tail()
    assert took < 5.0, took
    log = server.log_path.read_text(errors="replace")
    assert "Traceback" not in log and "Task was destroyed" not in log, server.log_tail(60)
