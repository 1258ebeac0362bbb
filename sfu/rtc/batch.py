"""The batched apply step of the packet path: which one runs, and its routes.

For each received packet, :meth:`sfu.uptrack.UpTrack.on_rtp` hands the fan-out to one
:class:`Batch` (the compiled :mod:`sfu.rtc._fanout`): ``Batch.fanout`` applies the
common decision itself for every DownTrack whose ``Lane`` is bound (the next packet of
the layer it forwards: the Lane's sequence and timestamp offsets, its extension block
templates; see :meth:`sfu.downtrack.DownTrack.forward`) and hands every other DownTrack
back to Python, which decides (translate or drop, switch layers, its VP8 descriptor)
and *adds* its decision to the batch. The batch writes the header in front of one copy of the
payload in a reused buffer, SRTP-protects it in place (RFC 3711 §3.3, libsrtp's
``srtp_protect`` on the pylibsrtp session) and, at the end of the event-loop turn
(:func:`finish`), sends what the turn's fan-outs queued with one ``sendmmsg(2)`` per
socket. With batching off (or where
the compiled module could not be built) every DownTrack writes, protects and sends its
packet itself (:func:`sfu.core.rtp.write_packet`, ``RtpSendPath.send_rtp``): the
pure-Python path. Both send the same bytes (``tests/unit/test_fanout_batch.py``).

Selection, once at import: ``SFU_BATCH=1`` batched (a warning and the Python path if
the module is missing), ``SFU_BATCH=0`` the Python path, unset or ``auto``: batched when
the module is there. :func:`set_enabled` switches at run time (tests, benchmarks).
Sending directly on the socket bypasses the event loop's transport: a datagram the
kernel does not take at once (a full socket buffer) is dropped and counted, as UDP
would drop it a hop later, instead of being buffered.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from typing import Any

import pylibsrtp
from pylibsrtp._binding import ffi as _srtp_ffi
from pylibsrtp._binding import lib as _srtp_lib

from ..metrics import COUNTERS

try:
    from . import _fanout
except ImportError as exc:  # not built (no compiler or headers): the Python path
    _fanout = None  # type: ignore[assignment]
    _IMPORT_ERROR: str | None = str(exc)
else:
    _IMPORT_ERROR = None
    # pylibsrtp's own buffer is 1500 bytes including the trailer: the same limit as its protect.
    _fanout.set_protect(
        int(_srtp_ffi.cast("uintptr_t", _srtp_ffi.addressof(_srtp_lib, "srtp_protect"))),
        1500 - pylibsrtp.SRTP_MAX_TRAILER_LEN,
    )

__all__ = [
    "AVAILABLE",
    "BATCH",
    "Route",
    "callback_route",
    "finish",
    "log_mode",
    "mode",
    "new_lane",
    "send_pending",
    "set_enabled",
    "socket_route",
]

logger = logging.getLogger(__name__)

AVAILABLE = _fanout is not None
"""True when the compiled module could be imported."""

Route: Any = _fanout.Route if _fanout is not None else None


def new_lane() -> Any:
    """A compiled ``Lane`` (a :class:`sfu.core.forwarder.ForwardState` that
    ``Batch.fanout`` can apply the common decision of) while batching is on, else None
    (the DownTrack keeps a plain ForwardState: with ``SFU_BATCH=0`` the packet path is
    the one a machine without the compiled module runs)."""
    return _fanout.Lane() if BATCH is not None else None

BATCH: Any = None
"""The process's one :class:`_fanout.Batch` while batching is on, else None (read per
received packet by the UpTrack)."""

# Transports whose socket may be written directly: plain UDP sockets of the event loop
# (uvloop, asyncio). Anything else (a TURN allocation, a test double) keeps its sendto.
_DIRECT_TRANSPORTS = ("UDPTransport", "_SelectorDatagramTransport")


def _requested() -> bool:
    value = os.environ.get("SFU_BATCH", "auto").strip().lower()
    if value in ("0", "off", "false", "no"):
        return False
    if value in ("1", "on", "true", "yes") and not AVAILABLE:
        logger.warning("SFU_BATCH=1 but the compiled fan-out is not built (%s): pure-Python packet path", _IMPORT_ERROR)
    return AVAILABLE


def set_enabled(enabled: bool) -> bool:
    """Batch the apply step from now on (True) or use the pure-Python path (False).

    Returns:
        whether batching is on (False when asked for but not built).
    """
    global BATCH
    if enabled and AVAILABLE:
        if BATCH is None:
            BATCH = _fanout.Batch()
    else:
        if BATCH is not None:
            BATCH.flush()
        BATCH = None
    return BATCH is not None


_send_scheduled = False


def send_pending() -> None:
    """Send what the event-loop turn's fan-outs queued (one sendmmsg per socket); called
    by the loop after :func:`finish`, or by a caller that wants it sent now."""
    global _send_scheduled
    _send_scheduled = False
    batch = BATCH
    if batch is not None:
        failed = batch.flush()
        if failed:
            COUNTERS.dropped["send_failed"] += failed


def finish(batch: Any) -> None:
    """End one received packet's fan-out (after every DownTrack's ``add``).

    In an event loop the queue is sent once at the end of the loop turn (``call_soon``):
    the packets that arrived together (a video frame's) leave in one ``sendmmsg`` per
    socket. Without a running loop (tests, tools) it is sent at once.
    """
    global _send_scheduled
    if batch.end() == 0:
        return
    if not _send_scheduled:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            failed = batch.flush()
            if failed:
                COUNTERS.dropped["send_failed"] += failed
            return
        loop.call_soon(send_pending)
        _send_scheduled = True


def mode() -> str:
    """``batched`` or ``python``: the packet path in force."""
    return "batched" if BATCH is not None else "python"


_logged = False


def log_mode() -> None:
    """Log once per process which packet path runs and why (called at the first
    PeerConnection, when logging is configured)."""
    global _logged
    if _logged:
        return
    _logged = True
    if BATCH is not None:
        logger.info("packet path: batched (compiled sfu.rtc._fanout: header rewrite, SRTP protect, sendmmsg)")
    elif AVAILABLE:
        logger.info("packet path: pure Python (SFU_BATCH=0)")
    else:
        logger.info("packet path: pure Python (compiled fan-out not built: %s; run make setup)", _IMPORT_ERROR)


def callback_route(send: Callable[[bytes], bool]) -> Any:
    """A route that hands each packet, unprotected, to ``send`` at once (test doubles,
    transports the batch cannot write to directly); None when not built."""
    return Route(callback=send) if Route is not None else None


def socket_route(transport: Any, address: tuple[Any, ...], session: pylibsrtp.Session) -> Any:
    """A route that protects with ``session`` and sends to ``address`` on the socket of
    ``transport`` (an event-loop UDP transport, or the shared one behind a
    :class:`~sfu.rtc.udp_mux.MuxedTransport`); None when that socket cannot be reached
    (the caller falls back to a :func:`callback_route`)."""
    if Route is None:
        return None
    shared = getattr(transport, "_shared", None)  # --udp-port: the one real socket
    if shared is not None:
        transport = shared.transport
    if type(transport).__name__ not in _DIRECT_TRANSPORTS or transport.is_closing():
        return None
    sock = transport.get_extra_info("socket")
    fd = sock.fileno() if sock is not None else -1
    if fd < 0:
        return None
    ctx = int(_srtp_ffi.cast("uintptr_t", session._srtp[0]))
    return Route(fd=fd, address=tuple(address), ctx=ctx, keep=(session, transport))


set_enabled(_requested())
