"""One UDP port for every participant's media (``sfu serve --udp-port P``): ICE (STUN),
DTLS, SRTP/SRTCP and SCTP-over-DTLS of all connections share one socket per local
address, as with mediasoup's WebRtcServer and LiveKit's single-port mode.

aioice binds each ICE host candidate's socket with
``asyncio.get_running_loop().create_datagram_endpoint(lambda: StunProtocol(self),
local_addr=(address, 0))``. With a shared port set, the ``asyncio`` that ``aioice.ice``
sees is a thin proxy whose loop answers that call with a :class:`MuxedTransport`: a
virtual datagram transport whose ``sendto`` writes through the shared socket of
``address`` (port P) and which receives the datagrams routed to it. Everything else
goes to the real asyncio and loop (as :mod:`sfu.rtc.ports` does for port ranges).

Routing of a datagram arriving on a shared socket (:class:`SharedSocket`):

1. A STUN request (RFC 8489 §5; RFC 7983 §7: first byte 0-3) goes to the connection
   whose local ufrag its USERNAME names (RFC 8445 §7.2.2: "RFRAG:LFRAG", RFRAG being
   the server's). Its source address is remembered for that connection once the
   request's MESSAGE-INTEGRITY holds for the connection's ice-pwd (RFC 8445 §7.2.2,
   short-term credentials of RFC 8489 §9.1); a request failing that is dropped.
2. A STUN response goes to the connection that sent the request with that
   transaction ID (RFC 8489 §6.3.1), else by source address.
3. Everything else (DTLS, SRTP, SRTCP, STUN indications) goes by source address only.

A datagram that none of these routes is dropped and counted in
``sfu_udp_mux_dropped_total{reason}`` (:data:`sfu.metrics.COUNTERS`
``udp_mux_dropped``). The ICE guard (:mod:`sfu.rtc.ice_guard`) still sits behind, in
each connection's ``StunProtocol.datagram_received``.

Bounds: at most :data:`MAX_REMOTE_ADDRESSES` remembered source addresses and
:data:`MAX_PENDING_TRANSACTIONS` outstanding STUN transactions per connection; a
connection's ufrag, addresses and transactions are forgotten when aioice closes its
socket. aioice's 4-character ufrags (24 bits, RFC 8445 §5.3's minimum) would collide
among a few thousand connections; while the mode is on, new aioice connections get
16-character ufrags, unique among those registered.

Private API of aioice 0.13: the module's ``asyncio`` global, ``Connection.__init__``'s
``local_username``, ``StunProtocol.receiver`` with ``local_username`` and
``local_password``.
"""

from __future__ import annotations

import asyncio
import errno
import socket
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

import aioice.ice
from aioice.utils import random_string

from ..core.stun_peek import (
    CLASS_ERROR,
    CLASS_REQUEST,
    CLASS_SUCCESS,
    check_integrity,
    local_ufrag,
    stun_class,
)
from ..metrics import COUNTERS
from .bind_hook import install_binder
from .ports import port_range

__all__ = [
    "MAX_PENDING_TRANSACTIONS",
    "MAX_REMOTE_ADDRESSES",
    "SOCKET_BUFFER_BYTES",
    "MuxedTransport",
    "SharedSocket",
    "UdpMux",
    "set_udp_port",
    "udp_mux",
    "udp_port",
]

MAX_REMOTE_ADDRESSES = 64  # remembered source addresses per connection (as many as candidates)
MAX_PENDING_TRANSACTIONS = 64  # outstanding STUN requests per connection whose responses are routed by ID
SOCKET_BUFFER_BYTES = 4 * 1024 * 1024  # SO_RCVBUF/SO_SNDBUF asked for each shared socket (the kernel caps it)
UFRAG_CHARS = 16  # ~95 bits: ufrags of the mode's connections (RFC 8445 §5.3 asks for at least 24 bits)

Address = tuple[Any, ...]


def _drop(reason: str) -> None:
    COUNTERS.udp_mux_dropped[reason] += 1


class MuxedTransport(asyncio.DatagramTransport):
    """The datagram transport of one aioice host candidate on a shared port: ``sendto``
    writes through the shared socket; :class:`SharedSocket` hands it the datagrams
    routed to it. Closing it forgets its ufrag, addresses and transactions and calls
    the protocol's ``connection_lost`` soon after (asyncio's transport contract).

    Attributes:
        ufrag: the connection's local ICE ufrag (RFC 8445 §5.3).
        key: its ice-pwd as bytes, the MESSAGE-INTEGRITY key of requests to it.
        addresses: the remote addresses it receives from (at most
            :data:`MAX_REMOTE_ADDRESSES`).
    """

    def __init__(self, shared: SharedSocket, protocol: asyncio.DatagramProtocol, ufrag: str, key: bytes) -> None:
        super().__init__()
        self.ufrag = ufrag
        self.key = key
        self.addresses: set[Address] = set()
        self._shared = shared
        self._protocol = protocol
        self._closed = False
        self._loop = asyncio.get_running_loop()
        self._transactions: OrderedDict[bytes, None] = OrderedDict()
        # Bound once: the receive path calls these per datagram.
        self.receive: Callable[[bytes, Address], None] = protocol.datagram_received  # type: ignore[assignment]
        self._send = shared.transport.sendto

    def sendto(self, data: Any, addr: Any = None) -> None:
        """Send one datagram to ``addr`` from the shared port (nothing once closed). The
        transaction ID of a STUN request sent here is remembered, so that its response
        comes back to this transport whatever address sends it."""
        if self._closed:
            return
        if data and data[0] <= 3 and stun_class(data) == CLASS_REQUEST:
            self._shared.expect_response(self, bytes(data[8:20]), self._transactions)
        self._send(data, addr)

    def close(self) -> None:
        """Forget this connection on the shared socket; ``connection_lost(None)`` soon."""
        if self._closed:
            return
        self._closed = True
        self._shared.unregister(self, self._transactions)
        if self._loop.is_closed():
            self._protocol.connection_lost(None)
        else:
            self._loop.call_soon(self._protocol.connection_lost, None)

    def abort(self) -> None:
        """Same as :meth:`close` (nothing is buffered)."""
        self.close()

    def is_closing(self) -> bool:
        """True once closed."""
        return self._closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """``sockname`` is the shared socket's (address, P); no ``socket`` is given out
        (aioice would resize the shared socket's buffer for each connection)."""
        if name == "sockname":
            return self._shared.sockname
        return default

    def get_protocol(self) -> asyncio.BaseProtocol:
        """The aioice ``StunProtocol``."""
        return self._protocol

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        """Replace the protocol that receives the datagrams."""
        self._protocol = protocol  # type: ignore[assignment]
        self.receive = protocol.datagram_received  # type: ignore[attr-defined]

    def get_write_buffer_size(self) -> int:
        """Always 0: every ``sendto`` goes to the kernel at once."""
        return 0

    def __repr__(self) -> str:
        return f"MuxedTransport({self.ufrag!r}, {self._shared.sockname!r}, {len(self.addresses)} addresses)"


class SharedSocket(asyncio.DatagramProtocol):
    """The one real UDP endpoint of a local address on the shared port, and its
    demultiplexer (see the module docstring for the routing rules). The tables are
    bounded by the connections registered and the per-connection caps.
    """

    def __init__(self) -> None:
        self.transport: Any = None
        self.sockname: Address = ()
        self._by_ufrag: dict[str, MuxedTransport] = {}
        self._by_address: dict[Address, MuxedTransport] = {}
        self._by_transaction: dict[bytes, MuxedTransport] = {}

    # -- asyncio protocol -----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.sockname = transport.get_extra_info("sockname")

    def connection_lost(self, exc: Exception | None) -> None:
        for muxed in list(self._by_ufrag.values()):
            muxed.close()

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP errors of an unconnected socket: nothing to route them to

    def datagram_received(self, data: bytes, addr: Address) -> None:
        """Route one datagram (module docstring); drop and count what cannot be routed."""
        if len(addr) != 2:
            addr = (addr[0], addr[1])  # IPv6 four-tuple
        if data and data[0] > 3:  # DTLS, RTP, RTCP, ... (RFC 7983 §7): by address only
            muxed = self._by_address.get(addr)
            if muxed is None:
                _drop("unknown_source")
                return
            muxed.receive(data, addr)
            return
        self._stun_received(data, addr)

    # -- routing --------------------------------------------------------------------

    def _stun_received(self, data: bytes, addr: Address) -> None:
        kind = stun_class(data)
        if kind == CLASS_REQUEST:
            ufrag = local_ufrag(data)
            muxed = self._by_ufrag.get(ufrag) if ufrag is not None else None
            if muxed is None:
                _drop("unknown_ufrag")
                return
            if self._by_address.get(addr) is not muxed:
                if not check_integrity(data, muxed.key):
                    _drop("unauthenticated")
                    return
                if not self._remember(muxed, addr):
                    _drop("address_limit")
                    return
            muxed.receive(data, addr)
            return
        if kind == CLASS_SUCCESS or kind == CLASS_ERROR:
            muxed = self._by_transaction.pop(bytes(data[8:20]), None)
            if muxed is not None:
                muxed._transactions.pop(bytes(data[8:20]), None)
                muxed.receive(data, addr)
                return
        # A STUN indication, a response to no transaction of ours, or a malformed or
        # empty datagram: only from a known source (the ICE guard counts the bad ones).
        muxed = self._by_address.get(addr)
        if muxed is None:
            _drop("unknown_source")
            return
        muxed.receive(data, addr)

    def _remember(self, muxed: MuxedTransport, addr: Address) -> bool:
        """Route ``addr`` to ``muxed`` (taking it from another connection if it had it);
        False when ``muxed`` has its :data:`MAX_REMOTE_ADDRESSES` already."""
        if len(muxed.addresses) >= MAX_REMOTE_ADDRESSES:
            return False
        previous = self._by_address.get(addr)
        if previous is not None:
            previous.addresses.discard(addr)
        self._by_address[addr] = muxed
        muxed.addresses.add(addr)
        return True

    def expect_response(self, muxed: MuxedTransport, txid: bytes, pending: OrderedDict[bytes, None]) -> None:
        """Route the response to STUN transaction ``txid`` to ``muxed``; its oldest
        outstanding transaction is forgotten beyond :data:`MAX_PENDING_TRANSACTIONS`."""
        if txid in pending:
            return  # a retransmission (RFC 8489 §6.2.1): same ID
        pending[txid] = None
        self._by_transaction[txid] = muxed
        if len(pending) > MAX_PENDING_TRANSACTIONS:
            old, _ = pending.popitem(last=False)
            if self._by_transaction.get(old) is muxed:
                del self._by_transaction[old]

    def register(self, muxed: MuxedTransport) -> None:
        """Route requests naming ``muxed.ufrag`` to it.

        Raises:
            OSError: (EADDRINUSE) another connection on this socket has that ufrag.
        """
        if muxed.ufrag in self._by_ufrag:
            raise OSError(errno.EADDRINUSE, f"ICE ufrag {muxed.ufrag!r} is in use on {self.sockname}")
        self._by_ufrag[muxed.ufrag] = muxed

    def unregister(self, muxed: MuxedTransport, pending: Iterable[bytes]) -> None:
        """Forget ``muxed``'s ufrag, addresses and outstanding transactions."""
        if self._by_ufrag.get(muxed.ufrag) is muxed:
            del self._by_ufrag[muxed.ufrag]
        for addr in muxed.addresses:
            if self._by_address.get(addr) is muxed:
                del self._by_address[addr]
        muxed.addresses.clear()
        for txid in list(pending):
            if self._by_transaction.get(txid) is muxed:
                del self._by_transaction[txid]

    def sizes(self) -> tuple[int, int, int]:
        """(connections, remote addresses, outstanding transactions) routed here."""
        return len(self._by_ufrag), len(self._by_address), len(self._by_transaction)

    def ufrags(self) -> Iterable[str]:
        """The ufrags registered here."""
        return self._by_ufrag.keys()


class UdpMux:
    """The shared sockets of one UDP port, one per local address, created on first use
    (or bound ahead by :meth:`prebind`) in the running loop.

    Args:
        port: the shared UDP port, 1-65535.
    """

    def __init__(self, port: int) -> None:
        if not 1 <= port <= 65535:
            raise ValueError(f"a UDP port is 1-65535, not {port}")
        self.port = port
        self._bound: dict[str, socket.socket] = {}  # bound ahead, not yet in a loop
        self._sockets: dict[str, asyncio.Future[SharedSocket]] = {}

    def prebind(self, addresses: Iterable[str]) -> None:
        """Bind the shared port on ``addresses`` now (so that a port in use stops the
        server at start rather than failing each offer).

        Raises:
            OSError: an address cannot be bound on the port.
        """
        for address in addresses:
            if address not in self._bound and address not in self._sockets:
                self._bound[address] = self._bind(address)

    def _bind(self, address: str) -> socket.socket:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER_BYTES)
            sock.bind((address, self.port))
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        return sock

    async def shared_socket(self, address: str) -> SharedSocket:
        """The shared socket of ``address``, bound and attached to the running loop.

        Raises:
            OSError: it cannot be bound.
        """
        future = self._sockets.get(address)
        if future is None:
            future = self._sockets[address] = asyncio.ensure_future(self._open(address))
        try:
            return await asyncio.shield(future)
        except OSError:
            if self._sockets.get(address) is future:
                del self._sockets[address]  # try again on the next connection
            raise

    async def _open(self, address: str) -> SharedSocket:
        sock = self._bound.pop(address, None) or self._bind(address)
        try:
            _, shared = await asyncio.get_running_loop().create_datagram_endpoint(SharedSocket, sock=sock)
        except BaseException:
            sock.close()
            raise
        return shared

    async def endpoint(self, factory: Callable[[], Any], address: str) -> tuple[MuxedTransport, Any]:
        """What ``loop.create_datagram_endpoint(factory, local_addr=(address, 0))`` gives
        aioice in this mode: a :class:`MuxedTransport` on ``address``'s shared socket and
        the protocol ``factory`` made, registered under its connection's ufrag.

        Raises:
            OSError: the shared socket cannot be bound, or the ufrag is in use there.
        """
        shared = await self.shared_socket(address)
        if shared.transport is None or shared.transport.is_closing():
            self._sockets.pop(address, None)
            shared = await self.shared_socket(address)
        protocol = factory()
        connection = getattr(protocol, "receiver", None)
        if not isinstance(connection, aioice.ice.Connection):
            raise OSError(errno.EINVAL, "only aioice's host candidate sockets can use the shared port")
        muxed = MuxedTransport(shared, protocol, connection.local_username, connection.local_password.encode("utf8"))
        shared.register(muxed)
        protocol.connection_made(muxed)
        return muxed, protocol

    def new_ufrag(self) -> str:
        """A fresh ufrag of :data:`UFRAG_CHARS` ice-chars (RFC 8445 §5.3), registered on
        none of the shared sockets."""
        while True:
            ufrag = random_string(UFRAG_CHARS)
            if not any(ufrag in s.ufrags() for s in self._ready()):
                return ufrag

    def _ready(self) -> list[SharedSocket]:
        return [f.result() for f in self._sockets.values() if f.done() and not f.cancelled() and f.exception() is None]

    def sizes(self) -> tuple[int, int, int]:
        """(connections, remote addresses, outstanding transactions) over every shared socket."""
        totals = [s.sizes() for s in self._ready()]
        return (sum(t[0] for t in totals), sum(t[1] for t in totals), sum(t[2] for t in totals))

    def close(self) -> None:
        """Close every shared socket (and so every connection's transport on them)."""
        for sock in self._bound.values():
            sock.close()
        self._bound.clear()
        for future in self._sockets.values():
            if future.done() and not future.cancelled() and future.exception() is None:
                transport = future.result().transport
                if transport is not None:
                    transport.close()
            else:
                future.cancel()
        self._sockets.clear()


# -- the process-wide mode ----------------------------------------------------------

_mux: UdpMux | None = None
_connection_init = aioice.ice.Connection.__init__


def _unique_ufrag_init(self: Any, *args: Any, local_username: str | None = None, **kwargs: Any) -> None:
    """aioice's ``Connection.__init__``, with a fresh :meth:`UdpMux.new_ufrag` when the
    caller gives no ufrag (aiortc gives one only to a PeerConnection's second transport,
    a copy of its first's)."""
    if local_username is None and _mux is not None:
        local_username = _mux.new_ufrag()
    _connection_init(self, *args, local_username=local_username, **kwargs)


async def _bind_shared(loop: asyncio.AbstractEventLoop, factory: Any, address: str, kwargs: dict[str, Any]) -> Any:
    """A :data:`~sfu.rtc.bind_hook.Binder`: a virtual transport on the shared port of
    ``address`` (a bind with other options than the address gets a socket of its own)."""
    mux = _mux
    if mux is None or kwargs:
        return await loop.create_datagram_endpoint(factory, local_addr=(address, 0), **kwargs)
    return await mux.endpoint(factory, address)


def udp_port() -> int | None:
    """The shared UDP port in force, or None."""
    return _mux.port if _mux is not None else None


def udp_mux() -> UdpMux | None:
    """The process-wide :class:`UdpMux`, or None when the mode is off."""
    return _mux


def set_udp_port(port: int | None, addresses: Iterable[str] | None = None) -> UdpMux | None:
    """Make every ICE host candidate of this process use UDP ``port`` (shared), binding
    it at once on ``addresses`` (default: the ICE host addresses aioice gathers on now,
    :func:`sfu.rtc.adapter.set_ice_addresses`; any other is bound when first used);
    None to give each its own socket again (closing the shared sockets).

    Raises:
        ValueError: not 1 <= port <= 65535, or a UDP port range is in force
            (:func:`sfu.rtc.ports.set_udp_port_range`): the two modes exclude each other.
        OSError: ``port`` cannot be bound on one of ``addresses``.
    """
    global _mux
    if _mux is not None:
        _mux.close()
        _mux = None
    if port is None:
        install_binder(None)
        aioice.ice.Connection.__init__ = _connection_init  # type: ignore[method-assign]
        return None
    if port_range() is not None:
        raise ValueError("a shared UDP port and a UDP port range exclude each other")
    mux = UdpMux(port)
    if addresses is None:
        addresses = aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=True)
    mux.prebind(addresses)
    _mux = mux
    install_binder(_bind_shared)
    aioice.ice.Connection.__init__ = _unique_ufrag_init  # type: ignore[method-assign]
    return mux
