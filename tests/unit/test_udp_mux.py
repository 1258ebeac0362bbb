"""The single-port demultiplexer (sfu/rtc/udp_mux.py): synthetic datagrams routed by
the STUN USERNAME's ufrag, then by source address; unknown sources dropped and
counted; per-connection bounds; cleanup when a connection closes; and two real aioice
connections meeting through a shared port on loopback."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable

import aioice
import aioice.ice
import pytest
from aioice import stun

from sfu.metrics import COUNTERS
from sfu.rtc import udp_mux
from sfu.rtc.ice_guard import harden_ice
from sfu.rtc.udp_mux import (
    MAX_PENDING_TRANSACTIONS,
    MAX_REMOTE_ADDRESSES,
    UFRAG_CHARS,
    MuxedTransport,
    SharedSocket,
    UdpMux,
    set_udp_port,
    udp_port,
)

LOCAL = "127.0.0.1"
DTLS = b"\x16\xfe\xfd" + bytes(30)
SRTP = b"\x80\x60" + bytes(40)


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((LOCAL, 0))
        return s.getsockname()[1]


class Recorder(asyncio.DatagramProtocol):
    """Stands in for aioice's StunProtocol: a real Connection as ``receiver`` (its ufrag
    and password), and a record of what arrives."""

    def __init__(self) -> None:
        self.receiver = aioice.Connection(ice_controlling=False)
        self.got: list[tuple[bytes, tuple]] = []
        self.lost = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        self.got.append((data, addr))

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.set_result(True)

    @property
    def ufrag(self) -> str:
        return self.receiver.local_username

    @property
    def key(self) -> bytes:
        return self.receiver.local_password.encode()


def request(username: str, key: bytes | None) -> bytes:
    """A binding request as a client's ICE agent sends it (RFC 8445 §7.2.2)."""
    message = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
    message.attributes["USERNAME"] = username
    message.attributes["PRIORITY"] = 1853824767
    if key is not None:
        message.add_message_integrity(key)
    else:
        message.add_fingerprint()
    return bytes(message)


def drops() -> dict[str, int]:
    return dict(COUNTERS.udp_mux_dropped)


def delta(before: dict[str, int]) -> dict[str, int]:
    now = drops()
    return {k: now[k] - before.get(k, 0) for k in now if now[k] != before.get(k, 0)}


@pytest.fixture
async def mux() -> AsyncIterator[UdpMux]:
    m = UdpMux(free_udp_port())
    try:
        yield m
    finally:
        m.close()


@pytest.fixture
def connect(mux: UdpMux) -> Callable[[], asyncio.Future]:
    async def make() -> tuple[MuxedTransport, Recorder]:
        return await mux.endpoint(Recorder, LOCAL)

    return make


async def test_routes_by_ufrag_then_by_address(mux: UdpMux, connect) -> None:
    (ta, a), (tb, b) = await connect(), await connect()
    shared: SharedSocket = await mux.shared_socket(LOCAL)
    assert ta.get_extra_info("sockname") == (LOCAL, mux.port) == tb.get_extra_info("sockname")
    alice, bob = ("10.0.0.1", 5000), ("10.0.0.2", 6000)
    before = drops()
    # Media before any check is dropped: nobody knows the source yet.
    shared.datagram_received(DTLS, alice)
    assert a.got == [] and b.got == []
    # Each client's authenticated check names its connection's ufrag.
    check_a = request(f"{a.ufrag}:cliA", a.key)
    check_b = request(f"{b.ufrag}:cliB", b.key)
    shared.datagram_received(check_a, alice)
    shared.datagram_received(check_b, bob)
    assert a.got == [(check_a, alice)] and b.got == [(check_b, bob)]
    # From then on DTLS/SRTP go by source address.
    shared.datagram_received(DTLS, alice)
    shared.datagram_received(SRTP, bob)
    shared.datagram_received(SRTP, alice)
    assert [d for d, _ in a.got[1:]] == [DTLS, SRTP] and [d for d, _ in b.got[1:]] == [SRTP]
    # An IPv6 four-tuple source is the same as its two-tuple.
    shared.datagram_received(SRTP, (*alice, 0, 0))
    assert a.got[-1] == (SRTP, alice)
    assert ta.addresses == {alice} and tb.addresses == {bob}
    assert delta(before) == {"unknown_source": 1}


async def test_unknown_sources_and_bad_checks_are_dropped_and_counted(mux: UdpMux, connect) -> None:
    _, a = await connect()
    shared = await mux.shared_socket(LOCAL)
    stranger = ("10.9.9.9", 9999)
    before = drops()
    shared.datagram_received(SRTP, stranger)
    shared.datagram_received(DTLS, stranger)
    shared.datagram_received(b"", stranger)
    shared.datagram_received(b"\x00\x01", stranger)  # STUN range, not STUN
    shared.datagram_received(request("nosuchufrag:x", a.key), stranger)  # no such connection
    shared.datagram_received(request(f"{a.ufrag}:x", None), stranger)  # no MESSAGE-INTEGRITY
    shared.datagram_received(request(f"{a.ufrag}:x", b"a-wrong-password-22chr"), stranger)
    response = stun.Message(stun.Method.BINDING, stun.Class.RESPONSE)  # to no request of ours
    shared.datagram_received(bytes(response), stranger)
    assert a.got == []
    assert delta(before) == {"unknown_source": 5, "unknown_ufrag": 1, "unauthenticated": 2}
    assert shared.sizes() == (1, 0, 0)  # nothing remembered for the stranger


async def test_responses_come_back_by_transaction_id(mux: UdpMux, connect) -> None:
    ta, a = await connect()
    shared = await mux.shared_socket(LOCAL)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.bind((LOCAL, 0))
        client.settimeout(5)
        client_addr = client.getsockname()
        # The server's own check goes out of the shared port to the client...
        check = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
        check.attributes["USERNAME"] = "cli:" + a.ufrag
        check.add_message_integrity(b"client-password-22char")
        ta.sendto(bytes(check), client.getsockname())
        data, source = await asyncio.to_thread(client.recvfrom, 2048)
        assert data == bytes(check) and source == (LOCAL, mux.port)
        assert shared.sizes() == (1, 0, 1)
        # ... and the client's response reaches it although the client sent no check yet.
        response = stun.Message(stun.Method.BINDING, stun.Class.RESPONSE, transaction_id=check.transaction_id)
        client.sendto(bytes(response), source)
        for _ in range(100):
            if a.got:
                break
            await asyncio.sleep(0.01)
    assert a.got == [(bytes(response), client_addr)]
    assert shared.sizes() == (1, 0, 0)  # the transaction is done; the address is not remembered


async def test_an_authenticated_check_moves_an_address_to_its_connection(mux: UdpMux, connect) -> None:
    (ta, a), (tb, b) = await connect(), await connect()
    shared = await mux.shared_socket(LOCAL)
    addr = ("10.0.0.7", 7000)
    shared.datagram_received(request(f"{a.ufrag}:x", a.key), addr)
    shared.datagram_received(request(f"{b.ufrag}:y", b.key), addr)  # the same address, now b's
    shared.datagram_received(SRTP, addr)
    assert b.got[-1] == (SRTP, addr) and SRTP not in [d for d, _ in a.got]
    assert ta.addresses == set() and tb.addresses == {addr}
    # A consent check of a's from b's address, with a's credentials, names a: it goes to a.
    shared.datagram_received(request(f"{a.ufrag}:x", a.key), addr)
    assert len(a.got) == 2


async def test_bounds_per_connection(mux: UdpMux, connect) -> None:
    ta, a = await connect()
    shared = await mux.shared_socket(LOCAL)
    before = drops()
    check = request(f"{a.ufrag}:x", a.key)
    for i in range(MAX_REMOTE_ADDRESSES + 10):
        shared.datagram_received(check, ("10.1.0.1", 10000 + i))
    assert len(ta.addresses) == MAX_REMOTE_ADDRESSES
    assert delta(before) == {"address_limit": 10}
    assert len(a.got) == MAX_REMOTE_ADDRESSES
    # Outstanding transactions of the server's own checks: the oldest are forgotten.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sink:
        sink.bind((LOCAL, 0))
        for _ in range(MAX_PENDING_TRANSACTIONS * 3):
            ta.sendto(bytes(stun.Message(stun.Method.BINDING, stun.Class.REQUEST)), sink.getsockname())
    assert shared.sizes() == (1, MAX_REMOTE_ADDRESSES, MAX_PENDING_TRANSACTIONS)


async def test_closing_forgets_everything(mux: UdpMux, connect) -> None:
    (ta, a), (_, b) = await connect(), await connect()
    shared = await mux.shared_socket(LOCAL)
    addr = ("10.0.0.3", 3000)
    shared.datagram_received(request(f"{a.ufrag}:x", a.key), addr)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sink:
        sink.bind((LOCAL, 0))
        ta.sendto(bytes(stun.Message(stun.Method.BINDING, stun.Class.REQUEST)), sink.getsockname())
    assert shared.sizes() == (2, 1, 1)
    ta.close()
    assert ta.is_closing()
    await asyncio.wait_for(a.lost, 1)  # aioice's protocol.close() waits for this
    assert shared.sizes() == (1, 0, 0)
    before = drops()
    shared.datagram_received(SRTP, addr)
    shared.datagram_received(request(f"{a.ufrag}:x", a.key), addr)
    assert delta(before) == {"unknown_source": 1, "unknown_ufrag": 1}
    ta.sendto(SRTP, addr)  # a send after close goes nowhere and does not raise
    # The other connection is untouched.
    shared.datagram_received(request(f"{b.ufrag}:y", b.key), ("10.0.0.4", 4000))
    assert len(b.got) == 1


async def test_a_ufrag_in_use_is_refused(mux: UdpMux) -> None:
    first = Recorder()
    await mux.endpoint(lambda: first, LOCAL)
    twin = Recorder()
    twin.receiver._local_username = first.ufrag
    with pytest.raises(OSError):
        await mux.endpoint(lambda: twin, LOCAL)


async def test_a_port_in_use_fails_to_bind() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind((LOCAL, 0))
        with pytest.raises(OSError):
            UdpMux(taken.getsockname()[1]).prebind([LOCAL])
    with pytest.raises(ValueError):
        UdpMux(0)


async def gather_on_loopback(connection: aioice.Connection, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: [LOCAL])
    await connection.gather_candidates()


async def test_aioice_connections_meet_through_the_shared_port(monkeypatch: pytest.MonkeyPatch) -> None:
    """A client aioice connection (its own socket) and two server connections on the
    shared port: ICE completes, data flows both ways, a stranger is dropped and counted,
    and closing the connection gives the table back; the ICE guard behind the
    demultiplexer is on, as in the server."""
    harden_ice()
    port = free_udp_port()
    clients = [aioice.Connection(ice_controlling=True) for _ in range(2)]
    for client in clients:  # gathered before the mode is on: ordinary sockets
        await gather_on_loopback(client, monkeypatch)
    mux = set_udp_port(port, [LOCAL])
    assert mux is not None and udp_port() == port
    servers = [aioice.Connection(ice_controlling=False) for _ in range(2)]
    stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for server in servers:
            await gather_on_loopback(server, monkeypatch)
            assert len(server.local_username) == UFRAG_CHARS
            assert [(c.host, c.port) for c in server.local_candidates] == [(LOCAL, port)]
        for client, server in zip(clients, servers):
            for a, b in ((client, server), (server, client)):
                a.remote_username, a.remote_password = b.local_username, b.local_password
                for candidate in b.local_candidates:
                    await a.add_remote_candidate(candidate)
                await a.add_remote_candidate(None)
        async with asyncio.timeout(20):
            await asyncio.gather(*(c.connect() for c in clients + servers))
            # DTLS-looking payloads: the server's ICE guard (sfu/rtc/ice_guard.py), when
            # another test of the process installed it, passes only RFC 7983 ranges.
            for i, (client, server) in enumerate(zip(clients, servers)):
                await client.send(DTLS + b"to server %d" % i)
                assert await server.recv() == DTLS + b"to server %d" % i
                await server.send(DTLS + b"to client %d" % i)
                assert await client.recv() == DTLS + b"to client %d" % i
        before = drops()
        stranger.sendto(SRTP, (LOCAL, port))
        stranger.sendto(request(f"{servers[0].local_username}:x", b"not-the-password-22chr"), (LOCAL, port))
        for _ in range(100):
            if sum(delta(before).values()) == 2:
                break
            await asyncio.sleep(0.01)
        assert delta(before) == {"unknown_source": 1, "unauthenticated": 1}
        assert mux.sizes()[0] == 2
        await servers[0].close()
        assert mux.sizes()[0] == 1
        await clients[1].send(DTLS + b"still there")
        assert await asyncio.wait_for(servers[1].recv(), 5) == DTLS + b"still there"
    finally:
        stranger.close()
        for connection in clients + servers:
            await connection.close()
        set_udp_port(None)
    assert udp_port() is None and aioice.ice.asyncio is asyncio
    assert len(aioice.Connection(ice_controlling=False).local_username) == 4  # aioice's own again


def test_the_mode_excludes_a_port_range() -> None:
    from sfu.rtc.ports import set_udp_port_range

    set_udp_port_range(40000, 40001)
    try:
        with pytest.raises(ValueError):
            set_udp_port(free_udp_port())
    finally:
        set_udp_port_range(None)
    assert udp_mux.udp_mux() is None
