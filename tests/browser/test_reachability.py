"""Reachability from real networks, made of network namespaces (tests/netns.py).

1. A server behind a cloud's 1:1 NAT (binds a private address, ``--announced-address``
   names the public one that a router namespace DNATs to it) and a Chromium behind a
   home NAT (MASQUERADE in another router namespace): the page joins from the public
   address, its ICE pair is with the announced address, and media flows both ways with
   aiortc bots on a third network.
2. A client network where only TCP to the server's HTTP port and coturn's ports gets
   out (iptables drops UDP and everything else in the client namespace): Chromium with
   ``iceTransportPolicy: relay`` and aiortc bots with ``ice_transport_policy="relay"``
   reach the server through coturn over TURN/TCP, then over TURN/TLS (a certificate
   made here with openssl), and media flows both ways; coturn refuses expired and
   forged TURN REST credentials (401).

Addresses are /30s of 10.250.0.0/16 inside namespaces made here; the test process acts
inside them from threads that entered them; everything is deleted at teardown.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import re
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aioice.ice
import pytest
from aioice import stun, turn

from loadtest.client import RoomClient
from loadtest.media import PreEncodedAudioTrack, PreEncodedVideoTrack
from loadtest.server import ServerProcess
from sfu.rtc.adapter import set_ice_addresses
from sfu.turn import turn_rest_credentials
from tests.browser.pages import assert_receives_media, new_room, wait_joined
from tests.netns import Namespace, Network

if TYPE_CHECKING:
    from conftest import BrowserPage, OpenPage

pytestmark = pytest.mark.browser

TEST_TIMEOUT = 60.0
TURN_SECRET = "coturn-secret-of-the-reachability-tests"
MIN_PACKETS = 60  # RTP packets of each kind a bot must get from the page (~1.5 s of audio)

# The selected ICE candidate pair as the page sees it (W3C webrtc-stats).
SELECTED_PAIR_JS = """async () => {
  const stats = [...(await window.sfuPc.getStats()).values()];
  const byId = new Map(stats.map((s) => [s.id, s]));
  const transport = stats.find((s) => s.type === 'transport' && s.selectedCandidatePairId);
  const pair = transport ? byId.get(transport.selectedCandidatePairId) : null;
  if (!pair || pair.state !== 'succeeded') return null;
  const local = byId.get(pair.localCandidateId), remote = byId.get(pair.remoteCandidateId);
  return {
    local: {type: local.candidateType, address: local.address, relayProtocol: local.relayProtocol ?? null},
    remote: {type: remote.candidateType, address: remote.address, port: remote.port},
    bytesSent: pair.bytesSent, bytesReceived: pair.bytesReceived,
  };
}"""


@pytest.fixture(scope="module", autouse=True)
def encoded_clips() -> None:
    """Encode the bots' clips before any test connects (seconds of CPU the first time)."""
    PreEncodedVideoTrack()
    PreEncodedAudioTrack()


@pytest.fixture
def restore_ice_addresses() -> Iterator[None]:
    """The bots set the process's ICE host addresses to their namespace's: put back
    whatever was there."""
    saved = aioice.ice.get_host_addresses
    try:
        yield
    finally:
        aioice.ice.get_host_addresses = saved


def start_server(servers: list[ServerProcess], tmp_path: Path, ns: Namespace, address: str, *args: str) -> ServerProcess:
    """The SFU inside ``ns``, bound to ``address`` (development mode: no tokens)."""
    server = ServerProcess(tmp_path / f"server-{len(servers)}.log", ("--dev", *args), netns=ns.name, host=address)
    servers.append(server)
    server.wait_healthy(30)
    return server


class Bots:
    """Two aiortc participants inside a namespace, on an event loop of their own
    (:meth:`Namespace.run_coroutine`): ``BotPub`` publishes VP8 + Opus, ``BotView``
    subscribes to everything and counts the RTP it gets. ``ready`` gives BotPub's
    participant id once it publishes; :meth:`stop` ends them; the result of the run
    is what BotView received from the page and the ICE candidates both used."""

    def __init__(self, ns: Namespace, ws_url: str, room: str, address: str, policy: str = "all") -> None:
        self.ns, self.ws_url, self.room, self.address, self.policy = ns, ws_url, room, address, policy
        self.ready: concurrent.futures.Future[str] = concurrent.futures.Future()
        self._stop = threading.Event()
        self.task: asyncio.Task[dict[str, Any]] | None = None
        self.latest: dict[str, dict[str, int]] = {}  # what BotView counted so far, by kind

    def start(self) -> None:
        self.task = asyncio.create_task(self.ns.run_coroutine(self._run, timeout=TEST_TIMEOUT))

    def stop(self) -> None:
        self._stop.set()

    async def result(self) -> dict[str, Any]:
        assert self.task is not None
        self.stop()
        return await self.task

    async def close(self) -> None:
        """Stop the bots and wait for them to leave (whatever happened before)."""
        self.stop()
        if self.task is not None:
            with contextlib.suppress(Exception):  # the test reports what went wrong
                await asyncio.wait_for(self.task, 15)

    async def wait_ready(self) -> str:
        """BotPub's participant id once it publishes (raises what the bots raised)."""
        assert self.task is not None
        ready = asyncio.wrap_future(self.ready)
        await asyncio.wait({ready, self.task}, timeout=40, return_when=asyncio.FIRST_COMPLETED)
        if self.task.done():
            ready.cancel()
            self.task.result()  # raises the bots' error
            raise AssertionError("the bots ended before publishing")
        if not ready.done():
            raise AssertionError("the bots did not publish within 40 s")
        return ready.result()

    async def wait_received(self, timeout: float = 20.0) -> None:
        """Until BotView has :data:`MIN_PACKETS` of video and of audio (or the time is
        up: the caller's assertions say what was missing)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not (self.task and self.task.done()):
            if all(self.latest.get(k, {}).get("packets", 0) >= MIN_PACKETS for k in ("video", "audio")):
                return
            await asyncio.sleep(0.2)

    async def _run(self) -> dict[str, Any]:
        set_ice_addresses([self.address])
        publisher = RoomClient(self.ws_url, auto_subscribe=False, loopback_only=False, ice_transport_policy=self.policy)
        viewer = RoomClient(self.ws_url, count_rtp=True, loopback_only=False, ice_transport_policy=self.policy)
        try:
            reply = await publisher.join(self.room, "BotPub")
            await viewer.join(self.room, "BotView")
            await publisher.publish([PreEncodedVideoTrack(), PreEncodedAudioTrack()], ["camera", "microphone"])
            self.ready.set_result(reply["participantId"])

            def kinds() -> dict[str, dict[str, int]]:
                out: dict[str, dict[str, int]] = {}
                for s in viewer.counter.snapshot():
                    entry = out.setdefault(s.kind, {"packets": 0, "bytes": 0, "frames": 0})
                    entry["packets"] += s.packets
                    entry["bytes"] += s.bytes
                    entry["frames"] += s.frames
                return out

            while not self._stop.is_set():  # until the test has checked the page
                self.latest = kinds()
                await asyncio.sleep(0.1)
            received = kinds()
            return {
                "iceServers": reply.get("iceServers", []),
                "received": received,
                "candidates": {
                    name: _ice_summary(client) for name, client in (("BotPub", publisher), ("BotView", viewer))
                },
            }
        finally:
            await asyncio.gather(publisher.close(), viewer.close(), return_exceptions=True)


def _ice_summary(client: RoomClient) -> dict[str, Any]:
    """The client's local candidates' types and its nominated pair (aioice)."""
    transceivers = client.pc.getTransceivers() if client.pc else []
    if not transceivers:
        return {}
    ice = transceivers[0].receiver.transport.transport
    pair = ice._connection._nominated.get(1)  # aioice's selected pair of component 1
    return {
        "local_types": sorted({c.type for c in ice.iceGatherer.getLocalCandidates()}),
        "pair_local": None if pair is None else (pair.local_candidate.type, pair.local_candidate.host),
        "pair_remote": None if pair is None else pair.remote_addr[0],
        "state": client.pc.connectionState,
    }


async def wait_selected_pair(page: BrowserPage, timeout: float = 20.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        pair = await page.page.evaluate(SELECTED_PAIR_JS)
        if pair is not None:
            return pair
        if time.monotonic() > deadline:
            pytest.fail(f"{page.label} has no selected candidate pair after {timeout} s\n{page.log()}")
        await asyncio.sleep(0.25)


def assert_bots_received_the_page(result: dict[str, Any]) -> None:
    received = result["received"]
    for kind in ("video", "audio"):
        got = received.get(kind, {"packets": 0, "bytes": 0})
        assert got["packets"] >= MIN_PACKETS and got["bytes"] > 0, f"BotView got too little {kind}: {received}"
    assert received["video"]["frames"] >= 10, received


def _connect_refused(address: str, port: int) -> str | None:
    """None when a TCP connection to (address, port) gets through, else the error."""
    try:
        socket.create_connection((address, port), timeout=2).close()
        return None
    except OSError as exc:
        return repr(exc)


MEDIA_PORTS = {  # serve flags -> the ports the answer's candidates may carry (None: any)
    "own-ports": ((), None),
    "udp-port": (("--udp-port", "50000"), range(50000, 50001)),
    "udp-port-range": (("--udp-port-range", "50100-50119"), range(50100, 50120)),
}


@pytest.mark.parametrize("ports", list(MEDIA_PORTS))
async def test_nat_client_reaches_a_server_behind_1_to_1_nat_at_its_announced_address(
    ports: str, network: Network, open_page: OpenPage, servers: list[ServerProcess], tmp_path: Path,
    restore_ice_addresses: None,
) -> None:
    """Chromium behind a MASQUERADE NAT joins a server that binds a private address and
    announces its router's public one; media flows both ways with bots on the public
    network; with a port per participant, one shared UDP port, or a port range."""
    flags, allowed_ports = MEDIA_PORTS[ports]
    cli, home, edge, srv, peer = (network.namespace(r) for r in ("cli", "home", "edge", "srv", "peer"))
    lan = network.connect(home, cli)  # home NAT 10.x.a.1 <-> Chromium's host 10.x.a.2
    wan = network.connect(edge, home)  # the edge router's public address <-> the home NAT's
    dc = network.connect(edge, srv)  # the edge router <-> the server's private address
    pub = network.connect(edge, peer)  # the edge router <-> the bots' network
    cli.add_route("default", via=lan.a_addr)
    home.masquerade(wan.b_dev)
    srv.add_route("default", via=dc.a_addr)
    peer.add_route("default", via=pub.a_addr)
    public, private = wan.a_addr, dc.b_addr
    edge.one_to_one_nat(public, private, private_dev=dc.a_dev)

    server = start_server(servers, tmp_path, srv, private, "--ice-address", private, "--announced-address", public,
                          *flags)
    base = f"http://{public}:{server.port}"

    # The private address is not reachable from the client's network; the public one is.
    assert cli.call(_connect_refused, private, server.port) is not None
    assert cli.call(_connect_refused, public, server.port) is None

    room = new_room("nat")
    bots = Bots(peer, f"ws://{public}:{server.port}/ws", room, pub.b_addr)
    bots.start()
    try:
        bot_id = await bots.wait_ready()
        page = await open_page(
            f"{base}/?room={room}&name=Natted&simulcast=0", "Natted", netns=cli,
            args=[f"--unsafely-treat-insecure-origin-as-secure={base}"],
        )
        await wait_joined(page)
        await assert_receives_media(page, [bot_id])  # decodes the bots' video, plays their audio

        answer = await page.page.evaluate("() => window.sfuPc.remoteDescription.sdp")
        candidates = re.findall(r"a=candidate:\S+ \d \S+ \d+ (\S+) (\d+) typ host", answer)
        hosts = {host for host, _ in candidates}
        assert hosts == {public}, f"the server's candidates name {hosts}, not only {public}"
        if allowed_ports is not None:
            assert all(int(port) in allowed_ports for _, port in candidates), candidates
        assert private not in answer
        pair = await wait_selected_pair(page)
        assert pair["remote"]["address"] == public, pair
        # The server sees the page at the home NAT's address, and says so in its binding
        # responses: the page's side of the pair is that peer-reflexive address.
        assert pair["local"]["address"] == wan.b_addr and pair["local"]["type"] == "prflx", pair

        await bots.wait_received()
        result = await bots.result()
    finally:
        await bots.close()
    assert_bots_received_the_page(result)
    for name, ice in result["candidates"].items():
        assert ice["pair_remote"] == public and ice["state"] == "connected", (name, ice)



# --- a client network that lets only TCP out: TURN/TCP and TURN/TLS through coturn ---


DEPLOYMENT_MD = Path(__file__).resolve().parents[2] / "docs" / "DEPLOYMENT.md"


def documented_coturn_config(**overrides: str) -> str:
    """The coturn configuration of docs/DEPLOYMENT.md with these keys' values replaced
    (``listening_ip="10.250.0.1"``: underscores for dashes); the test runs what the
    page tells operators to run."""
    match = re.search(r"```conf\n(# /etc/turnserver\.conf.*?)```", DEPLOYMENT_MD.read_text(), re.DOTALL)
    assert match, "docs/DEPLOYMENT.md has no coturn configuration block"
    wanted = {key.replace("_", "-"): value for key, value in overrides.items()}
    lines = []
    for line in match.group(1).splitlines():
        key = line.split("=", 1)[0].strip()
        if key in wanted:
            line = f"{key}={wanted.pop(key)}"
        lines.append(line)
    lines += [f"{key}={value}" for key, value in wanted.items()]  # keys the page does not set
    return "\n".join(lines) + "\n"


class Coturn:
    """coturn inside a namespace, configured as docs/DEPLOYMENT.md says (TURN REST
    credentials, TURN over UDP/TCP on ``port`` and TLS on ``tls_port``, private peer
    ranges denied but ``peer`` allowed), with a self-signed certificate for its
    address (``cert``, made here with openssl). It is ended by its pid with the
    namespace's other processes."""

    def __init__(self, ns: Namespace, address: str, directory: Path, peer: str, secret: str = TURN_SECRET) -> None:
        binary = shutil.which("turnserver")
        if binary is None:
            pytest.fail("turnserver is not installed (.ci/run installs the Debian package coturn)")
        if shutil.which("openssl") is None:
            pytest.fail("openssl is not installed (.ci/run installs the Debian package openssl)")
        self.address, self.port, self.tls_port = address, 3478, 5349
        self.cert, key = directory / "turn-cert.pem", directory / "turn-key.pem"
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", f"/CN={address}",
             "-addext", f"subjectAltName=IP:{address}", "-keyout", str(key), "-out", str(self.cert)],
            check=True, capture_output=True, timeout=30,
        )
        self.log = directory / "turn.log"
        config = directory / "turnserver.conf"
        config.write_text(documented_coturn_config(
            listening_ip=address, relay_ip=address, allowed_peer_ip=peer, static_auth_secret=secret,
            cert=str(self.cert), pkey=str(key), log_file=str(self.log), pidfile=str(directory / "turn.pid"),
            listening_port=str(self.port), tls_listening_port=str(self.tls_port), verbose="",
        ).replace("verbose=\n", "verbose\n"))
        self.realm = re.search(r"^realm=(.*)$", config.read_text(), re.MULTILINE).group(1)
        self.proc = ns.popen([binary, "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while any(ns.call(_connect_refused, address, p) for p in (self.port, self.tls_port)):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"coturn did not start: {self.log_text()[-2000:]}")
            time.sleep(0.1)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def only_tcp_out(ns: Namespace, address: str, ports: list[int]) -> None:
    """The client network's firewall: only TCP to ``address`` on ``ports`` leaves
    ``ns`` (and loopback); UDP and everything else is dropped."""
    ns.iptables("-A", "OUTPUT", "-o", "lo", "-j", "ACCEPT")
    for port in ports:
        ns.iptables("-A", "OUTPUT", "-p", "tcp", "-d", address, "--dport", str(port), "-j", "ACCEPT")
    ns.iptables("-A", "OUTPUT", "-j", "DROP")


def _udp_send_error(address: str, port: int) -> str | None:
    """None when a UDP datagram to (address, port) leaves, else the error (an
    iptables DROP in OUTPUT fails the send with EPERM)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.sendto(b"x", (address, port))
            return None
        except OSError as exc:
            return repr(exc)


@pytest.mark.parametrize("scheme", ["turn-tcp", "turns"])
async def test_tcp_only_client_reaches_the_server_through_turn(
    scheme: str, network: Network, open_page: OpenPage, servers: list[ServerProcess], tmp_path: Path,
    restore_ice_addresses: None, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Behind a firewall that drops UDP, Chromium (relay only) and aiortc bots (relay
    only) reach the server through coturn over TURN/TCP or TURN/TLS, and media flows
    both ways."""
    cli, srv = network.namespace("cli"), network.namespace("srv")
    link = network.connect(srv, cli)
    address, client = link.a_addr, link.b_addr
    coturn = Coturn(srv, address, tmp_path, peer=address)  # the SFU is its only allowed peer
    if scheme == "turns":
        url, relay_protocol = f"turns:{address}:{coturn.tls_port}?transport=tcp", "tls"
        # aioice verifies the TLS certificate with Python's default context: trust the
        # test's self-signed certificate through SSL_CERT_FILE.
        monkeypatch.setenv("SSL_CERT_FILE", str(coturn.cert))
        browser_args = ["--ignore-certificate-errors"]
    else:
        browser_args = []
        url, relay_protocol = f"turn:{address}:{coturn.port}?transport=tcp", "tcp"
    server = start_server(servers, tmp_path, srv, address, "--ice-address", address,
                          "--turn", url, "--turn-secret", TURN_SECRET)
    only_tcp_out(cli, address, [server.port, coturn.port, coturn.tls_port])
    assert cli.call(_udp_send_error, address, coturn.port) is not None, "UDP still leaves the client network"
    base = f"http://{address}:{server.port}"

    room = new_room("turn")
    bots = Bots(cli, f"ws://{address}:{server.port}/ws", room, client, policy="relay")
    bots.start()
    try:
        bot_id = await bots.wait_ready()
        page = await open_page(
            f"{base}/?room={room}&name=Walled&simulcast=0&relay=1", "Walled", netns=cli,
            args=[f"--unsafely-treat-insecure-origin-as-secure={base}", *browser_args],
        )
        await wait_joined(page)
        ice_servers = await page.page.evaluate("() => window.sfuPc.getConfiguration().iceServers")
        assert [s["urls"] for s in ice_servers] == [[url]], ice_servers
        await assert_receives_media(page, [bot_id])

        pair = await wait_selected_pair(page)
        assert pair["local"]["type"] == "relay" and pair["local"]["relayProtocol"] == relay_protocol, pair
        assert pair["local"]["address"] == address and pair["remote"]["address"] == address, pair
        await bots.wait_received()
        result = await bots.result()
    finally:
        await bots.close()
    assert_bots_received_the_page(result)
    for name, ice in result["candidates"].items():
        assert ice["local_types"] == ["relay"] and ice["pair_local"][0] == "relay", (name, ice)
        assert ice["state"] == "connected", (name, ice)
    # coturn allocated for each participant with its own credentials (username
    # "<expiry>:<identity>"), over TLS exactly when the URL is turns:.
    log = coturn.log_text()
    sessions = re.findall(rf"session \d+: new, realm=<{re.escape(coturn.realm)}>, username=<\d+:([^>]+)>, lifetime=\d+(.*)", log)
    assert len({identity for identity, _ in sessions}) >= 3, log[-3000:]
    assert all(("method=TLS" in rest) == (scheme == "turns") for _, rest in sessions), sessions


# ICE candidate types Chromium gathers with these ICE servers (relay only).
GATHER_JS = """async (iceServers) => {
  const pc = new RTCPeerConnection({iceServers, iceTransportPolicy: 'relay'});
  const types = [];
  pc.onicecandidate = (e) => { if (e.candidate && e.candidate.candidate) types.push(e.candidate.type); };
  const done = new Promise((resolve) => { pc.onicegatheringstatechange = () => {
    if (pc.iceGatheringState === 'complete') resolve(); }; });
  pc.createDataChannel('probe');
  await pc.setLocalDescription(await pc.createOffer());
  await Promise.race([done, new Promise((resolve) => setTimeout(resolve, 15000))]);
  pc.close();
  return types;
}"""


async def _allocate(address: str, port: int, username: str, password: str, context: ssl.SSLContext | None) -> Any:
    """A TURN allocation over TCP (TLS with ``context``): the relayed address, or the
    STUN error code coturn answered, or the TLS error."""
    try:
        transport, _ = await turn.create_turn_endpoint(
            asyncio.DatagramProtocol, (address, port), username, password, ssl=context, transport="tcp"
        )
    except stun.TransactionFailed as exc:
        return exc.response.attributes["ERROR-CODE"][0]
    except ssl.SSLError as exc:
        return type(exc).__name__
    relayed = transport.get_extra_info("sockname")
    transport.close()
    await asyncio.sleep(0.2)  # the allocation is deleted (REFRESH lifetime 0)
    return relayed


async def _permissions(address: str, port: int, username: str, password: str,
                       peers: dict[str, tuple[str, int]]) -> dict[str, Any]:
    """One allocation over TCP; per peer, ``"bound"`` when coturn accepts a channel to
    it (ChannelBind installs the permission, RFC 8656 §12), else its error code."""
    _, protocol = await asyncio.get_running_loop().create_connection(
        lambda: turn.TurnClientTcpProtocol((address, port), username=username, password=password,
                                           lifetime=600, channel_refresh_time=500),
        host=address, port=port,
    )
    out: dict[str, Any] = {}
    try:
        await protocol.connect()
        for number, (name, peer) in enumerate(peers.items(), start=0x4000):
            try:
                await protocol.channel_bind(number, peer)
                out[name] = "bound"
            except stun.TransactionFailed as exc:
                out[name] = exc.response.attributes["ERROR-CODE"][0]
    finally:
        await protocol.delete()
    return out


async def test_coturn_refuses_expired_and_forged_turn_credentials(
    network: Network, open_page: OpenPage, tmp_path: Path
) -> None:
    """Credentials minted like the server's (sfu.turn) are accepted over TURN/TCP and
    TURN/TLS; expired ones, ones signed with another secret, and a TLS peer that does
    not trust the certificate are refused; the documented configuration relays to the
    SFU's address only."""
    cli, srv = network.namespace("cli"), network.namespace("srv")
    link = network.connect(srv, cli)
    address = link.a_addr
    coturn = Coturn(srv, address, tmp_path, peer=address)
    trusted = ssl.create_default_context(cafile=str(coturn.cert))
    now = time.time()
    credentials = {
        "valid": turn_rest_credentials(TURN_SECRET, "alice", 600, now),
        "expired": turn_rest_credentials(TURN_SECRET, "alice", 60, now - 3600),  # expired an hour ago
        "forged": turn_rest_credentials("not-the-coturn-secret", "mallory", 600, now),
    }

    async def attempts() -> dict[str, Any]:
        out = {}
        for name, (username, password) in credentials.items():
            out[f"tcp/{name}"] = await _allocate(address, coturn.port, username, password, None)
            out[f"tls/{name}"] = await _allocate(address, coturn.tls_port, username, password, trusted)
        # Python's default trust store does not know the test's certificate: refused.
        out["tls/untrusted"] = await _allocate(address, coturn.tls_port, *credentials["valid"], ssl.create_default_context())
        out["peers"] = await _permissions(address, coturn.port, *credentials["valid"], {
            "allowed": (address, 9),  # the SFU's address: allowed-peer-ip
            "denied": (link.b_addr, 9),  # another address of 10.0.0.0/8: denied-peer-ip
        })
        return out

    results = await cli.run_coroutine(attempts, timeout=40)
    for transport in ("tcp", "tls"):
        relayed = results[f"{transport}/valid"]
        assert isinstance(relayed, tuple) and relayed[0] == address, results
        assert results[f"{transport}/expired"] == 401, results
        assert results[f"{transport}/forged"] == 401, results
    assert results["tls/untrusted"] == "SSLCertVerificationError", results
    # Relaying only to the SFU: allowed-peer-ip wins over the denied private ranges.
    assert results["peers"] == {"allowed": "bound", "denied": 403}, results

    # Chromium behind the same network gathers a relay candidate with the valid
    # credentials only (the TLS listener's self-signed certificate is let through).
    page = await open_page("about:blank", "Gatherer", netns=cli, args=["--ignore-certificate-errors"])
    urls = [f"turn:{address}:{coturn.port}?transport=tcp", f"turns:{address}:{coturn.tls_port}?transport=tcp"]
    gathered = {}
    for name, (username, password) in credentials.items():
        for url in urls:
            gathered[(name, url)] = await page.page.evaluate(
                GATHER_JS, [{"urls": [url], "username": username, "credential": password}]
            )
    for (name, url), types in gathered.items():
        assert ("relay" in types) == (name == "valid"), (name, url, gathered)

    # Without that flag Chromium checks the TURN server's certificate like any other:
    # a self-signed one gives no relay candidate over TLS (production needs a real
    # certificate, docs/DEPLOYMENT.md), while TURN/TCP still works.
    strict = await open_page("about:blank", "Strict", netns=cli)
    username, password = credentials["valid"]
    tcp, tls = [await strict.page.evaluate(GATHER_JS, [{"urls": [url], "username": username, "credential": password}])
                for url in urls]
    assert "relay" in tcp and "relay" not in tls, (tcp, tls)
