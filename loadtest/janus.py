"""Janus WebRTC Server (VideoRoom plugin) for side-by-side measurements.

* :class:`JanusProcess` runs Debian's ``janus`` (1.1.x) on loopback only: it writes a
  config into a temp directory (only the VideoRoom plugin and the HTTP transport, HTTP
  bound to 127.0.0.1, IPv6 off, no STUN, ICE restricted to ``lo``), and starts Janus
  with a small ``LD_PRELOAD`` wrapper of ``getifaddrs`` that clears ``IFF_LOOPBACK``
  on ``lo`` (Janus skips loopback interfaces when it gathers ICE candidates). The
  wrapper is compiled with ``gcc`` at start. Janus is ended by its pid.
* :class:`JanusSession` speaks the Janus HTTP API (create session, attach, plugin
  messages; events by long-poll GET) on 127.0.0.1.
* :class:`JanusPublisher` and :class:`JanusSubscriber` are the same aiortc bots as
  for our server (pre-encoded media out, RTP counting in), through the VideoRoom's
  publisher / subscriber handles.

Every SDP Janus sends is checked to offer only 127.0.0.1 candidates
(:func:`check_loopback_candidates`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCSessionDescription,
)

from sfu.rtc.adapter import disable_media_engines, install_tap, set_ice_addresses

from .counter import RtpCounter
from .server import free_port

__all__ = [
    "JanusError",
    "JanusProcess",
    "JanusPublisher",
    "JanusSession",
    "JanusSubscriber",
    "check_loopback_candidates",
    "create_room",
    "janus_available",
]

JANUS_BIN = "/usr/bin/janus"
JANUS_LIB = Path("/usr/lib/x86_64-linux-gnu/janus")
REQUEST_TIMEOUT = 15.0  # seconds for one Janus request or event
LONG_POLL_MAX_EVENTS = 20

_SHIM_SOURCE = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <string.h>
/* Janus skips interfaces flagged IFF_LOOPBACK when it gathers ICE candidates: hide
   the flag on "lo" (for the Janus process only), so that a loopback-only test works. */
int getifaddrs(struct ifaddrs **ifap) {
    static int (*real)(struct ifaddrs **) = 0;
    if (!real) real = (int (*)(struct ifaddrs **))dlsym(RTLD_NEXT, "getifaddrs");
    int rc = real(ifap);
    if (rc == 0)
        for (struct ifaddrs *i = *ifap; i; i = i->ifa_next)
            if (i->ifa_name && strcmp(i->ifa_name, "lo") == 0) i->ifa_flags &= ~IFF_LOOPBACK;
    return rc;
}
"""


class JanusError(RuntimeError):
    """Janus answered with an error, or not as expected."""


def janus_available() -> str | None:
    """None when Janus and gcc are installed, else what is missing (apt package names)."""
    missing = [name for name, path in (("janus", JANUS_BIN), ("gcc", shutil.which("gcc") or "")) if not os.path.exists(path)]
    return " ".join(missing) or None


def check_loopback_candidates(sdp: str) -> None:
    """Raises JanusError when ``sdp`` has an ICE candidate not on 127.0.0.1 (or none)."""
    addresses = re.findall(r"^a=candidate:\S+ \d+ \S+ \d+ (\S+) \d+ typ", sdp, re.MULTILINE)
    if not addresses:
        raise JanusError("Janus's SDP has no ICE candidate")
    others = sorted(set(addresses) - {"127.0.0.1"})
    if others:
        raise JanusError(f"Janus offered candidates off loopback: {others}")


class JanusProcess:
    """Janus on 127.0.0.1 from a temp config (see the module docstring).

    Attributes:
        port: the HTTP API port on 127.0.0.1.
        workdir: the temp directory (config, shim, log); removed by :meth:`stop`
            unless ``keep`` was given.
        proc: the ``subprocess.Popen`` of Janus.
    """

    def __init__(self, cpus: set[int] | None = None, port: int | None = None, keep: bool = False,
                 rtp_ports: tuple[int, int] = (30000, 39999), event_loops: int = 0) -> None:
        """Write the config, compile the shim and start Janus (returns at once; see
        :meth:`wait_ready`).

        Args:
            cpus: pin Janus to these CPUs (``sched_setaffinity``).
            port: the HTTP port, default a free one.
            keep: keep the work directory after :meth:`stop`.
            rtp_ports: the UDP port range for media.
            event_loops: Janus's ``event_loops``: 0 (Janus's default) runs one thread
                per PeerConnection, N > 0 a fixed pool of N event-loop threads.

        Raises:
            JanusError: Janus or gcc is missing, or the shim does not compile.
        """
        missing = janus_available()
        if missing:
            raise JanusError(f"not installed: {missing} (apt-get install -y {missing})")
        self.port = port or free_port()
        self.keep = keep
        self.workdir = Path(tempfile.mkdtemp(prefix="janus-loadtest-"))
        self._write_config(rtp_ports, event_loops)
        shim = self.workdir / "loopback_shim.so"
        source = self.workdir / "loopback_shim.c"
        source.write_text(_SHIM_SOURCE)
        result = subprocess.run(["gcc", "-shared", "-fPIC", "-O2", "-o", str(shim), str(source), "-ldl"],
                                capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            raise JanusError(f"the getifaddrs shim did not compile:\n{result.stderr}")
        self.log_path = self.workdir / "janus.log"
        env = {**os.environ, "LD_PRELOAD": str(shim)}
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [JANUS_BIN, "-C", str(self.workdir / "janus.jcfg"), "-F", str(self.workdir), "-d", "3"],
                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True, cwd=self.workdir,
            )
        if cpus:
            os.sched_setaffinity(self.proc.pid, cpus)

    def _write_config(self, rtp_ports: tuple[int, int], event_loops: int) -> None:
        d = self.workdir
        for sub, wanted in (("plugins", "libjanus_videoroom.so"), ("transports", "libjanus_http.so")):
            (d / sub).mkdir()
            os.symlink(JANUS_LIB / sub / wanted, d / sub / wanted)
        (d / "events").mkdir()
        (d / "loggers").mkdir()
        (d / "janus.jcfg").write_text(f"""general: {{
    configs_folder = "{d}"
    plugins_folder = "{d}/plugins"
    transports_folder = "{d}/transports"
    events_folder = "{d}/events"
    loggers_folder = "{d}/loggers"
    debug_level = 3
    admin_secret = "{secrets.token_hex(8)}"
    session_timeout = 60
    server_name = "loadtest"
    event_loops = {event_loops}
}}
certificates: {{
}}
media: {{
    ipv6 = false
    rtp_port_range = "{rtp_ports[0]}-{rtp_ports[1]}"
}}
nat: {{
    nice_debug = false
    ice_enforce_list = "lo"
    ignore_mdns = true
}}
plugins: {{
}}
transports: {{
}}
loggers: {{
}}
events: {{
    broadcast = false
}}
""")
        (d / "janus.transport.http.jcfg").write_text(f"""general: {{
    json = "plain"
    base_path = "/janus"
    http = true
    port = {self.port}
    ip = "127.0.0.1"
    https = false
}}
admin: {{
    admin_http = false
    admin_https = false
}}
""")
        (d / "janus.plugin.videoroom.jcfg").write_text("general: {\n}\n")

    @property
    def pid(self) -> int:
        """Janus's process id."""
        return self.proc.pid

    @property
    def url(self) -> str:
        """The HTTP API base URL."""
        return f"http://127.0.0.1:{self.port}/janus"

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Poll ``GET /janus/info`` until it answers.

        Raises:
            JanusError: Janus exited or did not answer within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/info", timeout=1.0) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if self.proc.poll() is not None:
                raise JanusError(f"janus exited with {self.proc.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise JanusError(f"janus not ready after {timeout} s:\n{self.log_tail()}")
            time.sleep(0.1)

    def stop(self, grace: float = 5.0) -> int | None:
        """SIGTERM Janus by its pid, SIGKILL after ``grace`` s; remove the work
        directory unless ``keep``. Returns its exit code."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=grace)
        if not self.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)
        return self.proc.returncode

    def log_tail(self, lines: int = 30) -> str:
        """The last ``lines`` lines of Janus's log."""
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


class JanusSession:
    """One Janus API session over HTTP, with a long-poll task that receives events.

    Handles (plugin attachments) share the session; asynchronous plugin replies are
    matched to their request by transaction id.
    """

    def __init__(self, url: str) -> None:
        """``url``: the API base, e.g. ``http://127.0.0.1:8088/janus``."""
        self.url = url.rstrip("/")
        self.session_id: int | None = None
        self._http: aiohttp.ClientSession | None = None
        self._poller: asyncio.Task[None] | None = None
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.events: list[dict[str, Any]] = []  # events without a waiting request (bounded)

    async def create(self) -> None:
        """Create the session and start long-polling.

        Raises:
            JanusError: Janus refused; aiohttp.ClientError: not reachable.
        """
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT + 35))
        reply = await self._post(self.url, {"janus": "create"})
        self.session_id = reply["data"]["id"]
        self._poller = asyncio.create_task(self._poll())

    async def attach(self, plugin: str = "janus.plugin.videoroom") -> int:
        """Attach to ``plugin``; returns the handle id."""
        reply = await self._post(f"{self.url}/{self.session_id}", {"janus": "attach", "plugin": plugin})
        return int(reply["data"]["id"])

    async def message(self, handle: int, body: dict[str, Any], jsep: dict[str, Any] | None = None) -> dict[str, Any]:
        """Send a plugin message; return the plugin's reply (the synchronous
        ``success`` or, after an ``ack``, the event with the same transaction), with
        ``plugindata.data`` and ``jsep``.

        Raises:
            JanusError: an ``error``, or the plugin's data holds an ``error``.
            TimeoutError: no event within REQUEST_TIMEOUT seconds.
        """
        payload: dict[str, Any] = {"janus": "message", "body": body}
        if jsep is not None:
            payload["jsep"] = jsep
        transaction = secrets.token_hex(8)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[transaction] = future
        try:
            reply = await self._post(f"{self.url}/{self.session_id}/{handle}", payload, transaction)
            if reply.get("janus") == "ack":
                reply = await asyncio.wait_for(future, REQUEST_TIMEOUT)
        finally:
            self._waiting.pop(transaction, None)
        data = reply.get("plugindata", {}).get("data", {})
        if "error" in data:
            raise JanusError(f"{body.get('request')}: {data.get('error_code')} {data['error']}")
        return reply

    async def _post(self, url: str, payload: dict[str, Any], transaction: str | None = None) -> dict[str, Any]:
        assert self._http is not None
        payload = {**payload, "transaction": transaction or secrets.token_hex(8)}
        async with self._http.post(url, json=payload) as response:
            reply = await response.json(content_type=None)
        if reply.get("janus") == "error":
            raise JanusError(f"{payload['janus']}: {reply.get('error')}")
        return reply

    async def _poll(self) -> None:
        """Long-poll GET for events (also keeps the session alive) until cancelled."""
        assert self._http is not None
        url = f"{self.url}/{self.session_id}?maxev={LONG_POLL_MAX_EVENTS}"
        while True:
            try:
                async with self._http.get(url) as response:
                    body = await response.json(content_type=None)
            except (aiohttp.ClientError, TimeoutError, ValueError):
                await asyncio.sleep(0.5)
                continue
            for event in body if isinstance(body, list) else [body]:
                future = self._waiting.get(str(event.get("transaction")))
                if future is not None and not future.done() and event.get("janus") in ("event", "success"):
                    future.set_result(event)
                elif event.get("janus") not in ("keepalive",):
                    self.events.append(event)
                    del self.events[:-200]

    async def destroy(self) -> None:
        """Destroy the session (best effort) and stop polling."""
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.gather(self._poller, return_exceptions=True)
        if self._http is not None:
            if self.session_id is not None:
                with contextlib.suppress(Exception):
                    await self._post(f"{self.url}/{self.session_id}", {"janus": "destroy"})
            await self._http.close()


def _peer_connection() -> RTCPeerConnection:
    set_ice_addresses(["127.0.0.1"])
    return RTCPeerConnection(RTCConfiguration(iceServers=[]))


async def _wait_connected(pc: RTCPeerConnection, timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while pc.connectionState != "connected":
            if pc.connectionState in ("failed", "closed"):
                raise ConnectionError(f"peer connection {pc.connectionState}")
            await asyncio.sleep(0.05)


async def create_room(session: JanusSession, room: int, publishers: int = 10) -> None:
    """Create VideoRoom ``room`` (VP8 + Opus, no bit rate cap, no periodic FIR) unless
    it exists."""
    handle = await session.attach()
    exists = await session.message(handle, {"request": "exists", "room": room})
    if not exists["plugindata"]["data"].get("exists"):
        await session.message(handle, {
            "request": "create", "room": room, "publishers": publishers, "bitrate": 0, "fir_freq": 0,
            "audiocodec": "opus", "videocodec": "vp8", "permanent": False,
        })


class JanusPublisher:
    """A VideoRoom publisher: one aiortc peer connection sending ``tracks``.

    Attributes:
        feed_id: the publisher's id in the room (what subscribers ask for).
        pc: the peer connection.
    """

    def __init__(self, session: JanusSession, room: int, display: str = "publisher") -> None:
        self.session = session
        self.room = room
        self.display = display
        self.feed_id: int | None = None
        self.pc: RTCPeerConnection | None = None

    async def publish(self, tracks: Sequence[MediaStreamTrack], timeout: float = REQUEST_TIMEOUT) -> None:
        """Join as publisher, offer ``tracks`` (sendonly), apply Janus's answer and
        wait until connected.

        Raises:
            JanusError, TimeoutError, ConnectionError.
        """
        handle = await self.session.attach()
        joined = await self.session.message(handle, {"request": "join", "ptype": "publisher", "room": self.room,
                                                     "display": self.display})
        self.feed_id = int(joined["plugindata"]["data"]["id"])
        self.pc = pc = _peer_connection()
        for track in tracks:
            pc.addTransceiver(track, direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        reply = await self.session.message(
            handle, {"request": "publish", "audio": True, "video": True},
            {"type": "offer", "sdp": pc.localDescription.sdp},
        )
        jsep = reply.get("jsep")
        if not jsep or jsep.get("type") != "answer":
            raise JanusError(f"no answer to the publisher's offer: {reply}")
        check_loopback_candidates(jsep["sdp"])
        await pc.setRemoteDescription(RTCSessionDescription(sdp=jsep["sdp"], type="answer"))
        await _wait_connected(pc, timeout)

    async def close(self) -> None:
        """Close the peer connection (Janus sees the publisher hang up)."""
        if self.pc is not None:
            await self.pc.close()


class JanusSubscriber:
    """A VideoRoom subscriber that counts the RTP it receives (no decoding).

    Attributes:
        counter: the :class:`RtpCounter` fed with decrypted RTP.
        pc: the peer connection.
    """

    def __init__(self, session: JanusSession, room: int, counter: RtpCounter) -> None:
        self.session = session
        self.room = room
        self.counter = counter
        self.pc: RTCPeerConnection | None = None

    async def subscribe(self, feed_id: int, timeout: float = REQUEST_TIMEOUT) -> None:
        """Join as subscriber to ``feed_id``: take Janus's offer, answer, start.

        Raises:
            JanusError, TimeoutError, ConnectionError.
        """
        handle = await self.session.attach()
        reply = await self.session.message(handle, {"request": "join", "ptype": "subscriber", "room": self.room,
                                                    "streams": [{"feed": feed_id}]})
        jsep = reply.get("jsep")
        if not jsep or jsep.get("type") != "offer":
            raise JanusError(f"no offer for the subscriber: {reply}")
        check_loopback_candidates(jsep["sdp"])
        self.pc = pc = _peer_connection()
        disable_media_engines(pc)
        install_tap(pc, self.counter)
        self.counter.update_from_sdp(jsep["sdp"])
        await pc.setRemoteDescription(RTCSessionDescription(sdp=jsep["sdp"], type="offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        await self.session.message(handle, {"request": "start"}, {"type": "answer", "sdp": pc.localDescription.sdp})
        await _wait_connected(pc, timeout)

    async def close(self) -> None:
        """Close the peer connection."""
        if self.pc is not None:
            await self.pc.close()
