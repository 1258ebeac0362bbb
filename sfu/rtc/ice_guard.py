"""The guard where datagrams enter aioice's sockets (RFC 7983 demultiplexing, ICE-
validated sources only), and quieting of an aiortc shutdown race. Process-wide patches
of aioice 0.13 private API (``StunProtocol.datagram_received``,
``Connection.request_received``, ``CandidatePair.state``/``remote_addr``)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import aioice.ice
import aioice.stun
from aiortc.exceptions import InvalidStateError

from ..metrics import COUNTERS

__all__ = ["MAX_AUTHENTICATED_SOURCES", "harden_ice", "quiet_connect_after_close"]

logger = logging.getLogger(__name__)


# RFC 7983 §7: what the first byte of a datagram on an ICE/DTLS/SRTP port says it is.
_STUN_LAST = 3
_DTLS_FIRST, _DTLS_LAST = 20, 63
_RTP_FIRST, _RTP_LAST = 128, 191
_MIN_DTLS = 13  # a DTLS record header (RFC 6347 §4.1)
_MIN_RTCP = 8  # an RTCP header and the sender SSRC (RFC 3550 §6.4)
_MIN_RTP = 12  # the fixed RTP header (RFC 3550 §5.1)
_VALIDATE_EVERY_S = 0.2  # an unknown source recomputes the valid addresses at most this often
_SUCCEEDED = aioice.ice.CandidatePair.State.SUCCEEDED
_stun_datagram_received = aioice.ice.StunProtocol.datagram_received


def _drop(reason: str) -> None:
    COUNTERS.dropped[reason] += 1


def _source_is_valid(connection: Any, addr: tuple[Any, ...]) -> bool:
    """Whether ``addr`` is the remote address of a candidate pair of ``connection``
    whose connectivity check succeeded (RFC 8445 §7.2.5.3.3: media only flows on valid
    pairs), or one that sent an authenticated binding request (§7.3.1.4: the peer's
    check of that pair succeeds on our response, and its DTLS can follow before our own
    check of the pair has finished, as Chromium's does on a second interface). The
    set of checked pairs is cached on the connection and recomputed on a miss, at most
    every ``_VALIDATE_EVERY_S``."""
    valid = connection.__dict__.get("_sfu_valid_sources")
    if valid is not None and addr in valid:
        return True
    if addr in connection.__dict__.get("_sfu_authenticated", ()):
        return True
    now = time.monotonic()
    if now - connection.__dict__.get("_sfu_valid_at", 0.0) < _VALIDATE_EVERY_S and valid is not None:
        return False
    valid = {pair.remote_addr for pair in connection._check_list if pair.state is _SUCCEEDED}
    connection._sfu_valid_sources = valid
    connection._sfu_valid_at = now
    return addr in valid


def _guarded_datagram_received(self: Any, data: bytes, addr: tuple[Any, ...]) -> None:
    """aioice's ``StunProtocol.datagram_received``, guarded where the bytes enter
    (RFC 7983 demultiplexing): STUN goes to aioice, which checks its integrity; DTLS,
    RTP and RTCP are taken only from the address of a pair whose check succeeded (an
    ICE-validated peer) and only when long enough to be parsed; the rest is dropped and
    counted (``sfu_rtp_packets_dropped_total``: ``short_datagram``, ``unknown_datagram``,
    ``unvalidated_source``). Non-STUN datagrams skip aioice's attempt to parse them as
    STUN (an exception per packet)."""
    if not data:
        _drop("short_datagram")
        return
    first = data[0]
    if first <= _STUN_LAST:
        _stun_datagram_received(self, data, addr)
        return
    n = len(data)
    if _DTLS_FIRST <= first <= _DTLS_LAST:
        if n < _MIN_DTLS:
            _drop("short_datagram")
            return
    elif _RTP_FIRST <= first <= _RTP_LAST:
        if n < _MIN_RTCP or (n < _MIN_RTP and not 192 <= data[1] <= 223):
            _drop("short_datagram")
            return
    else:
        _drop("unknown_datagram")
        return
    connection = self.receiver
    if not _source_is_valid(connection, (addr[0], addr[1])):
        _drop("unvalidated_source")
        return
    connection.data_received(data, self.local_candidate.component)


_request_received = aioice.ice.Connection.request_received
MAX_AUTHENTICATED_SOURCES = 64  # remote addresses remembered per connection (as many as candidates)


def _remembering_request_received(self: Any, message: Any, addr: tuple[Any, ...], protocol: Any) -> None:
    """aioice's ``Connection.request_received``, which also remembers the source of an
    authenticated binding request (RFC 8489 §9.1.3, checked as aioice checks it) as a
    source media may come from (:func:`_source_is_valid`); at most
    ``MAX_AUTHENTICATED_SOURCES`` per connection."""
    _request_received(self, message, addr, protocol)
    attributes = message.attributes
    if (
        not self._closing
        and message.message_method == aioice.stun.Method.BINDING
        and "MESSAGE-INTEGRITY" in attributes
        and "USERNAME" in attributes
        and self._valid_username(attributes["USERNAME"])
        and message.check_message_integrity(self.local_password.encode("utf8"))
    ):
        known = self.__dict__.setdefault("_sfu_authenticated", set())
        if len(known) < MAX_AUTHENTICATED_SOURCES:
            known.add((addr[0], addr[1]))


def harden_ice() -> None:
    """Guard every aioice socket of the process (idempotent; see
    :func:`_guarded_datagram_received` and :func:`_remembering_request_received`).
    Called by :class:`SfuPeerConnection` and :func:`install_tap`."""
    aioice.ice.StunProtocol.datagram_received = _guarded_datagram_received  # type: ignore[method-assign]
    aioice.ice.Connection.request_received = _remembering_request_received  # type: ignore[method-assign]



def quiet_connect_after_close(loop: asyncio.AbstractEventLoop) -> None:
    """Log at debug level, instead of with a traceback, the one error aiortc 1.16 leaves
    unretrieved when a PeerConnection is closed while it is still connecting: its
    ``RTCPeerConnection.__connect`` task (never awaited by anyone) fails with
    ``InvalidStateError: RTCIceTransport is closed``. Every other unhandled error
    goes to the loop's handler as before."""
    previous = loop.get_exception_handler()

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc, task = context.get("exception"), context.get("future")
        coro = getattr(task, "get_coro", lambda: None)()
        if (
            isinstance(exc, InvalidStateError)
            and "closed" in str(exc)
            and getattr(coro, "__qualname__", "").endswith("RTCPeerConnection.__connect")
        ):
            logger.debug("a PeerConnection was closed while connecting: %s", exc)
            return
        if previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handler)
