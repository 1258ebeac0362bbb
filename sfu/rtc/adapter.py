"""The aiortc adapter: the ONLY module that touches aiortc private API.

aiortc 1.16.0 is an endpoint, not an SFU (see DESIGN.md). This adapter turns an
``RTCPeerConnection`` into a plain transport for the SFU:

* **No media engines.** Every transceiver the connection creates gets its
  ``RTCRtpReceiver.receive`` and ``RTCRtpSender.send`` replaced, so no decoder thread,
  no jitter buffer, no encoder and no aiortc RTCP loop ever start.
* **RTP/RTCP tap.** The DTLS transport's ``_handle_rtp_data``/``_handle_rtcp_data``
  are replaced per instance: decrypted packets go to a handler as bytes.
* **Raw send.** :meth:`SfuPeerConnection.send_rtp`/``send_rtcp`` SRTP-protect and
  ``sendto`` synchronously on the nominated ICE pair (no coroutine per packet).
* **Answerer with pre-bound send m-lines.** Before applying a client offer, a
  ``sendonly`` transceiver is created for each subscribed mid with the mid already
  set, so aiortc binds the offered ``recvonly`` m-line to it.

Private names used (checked by ``tests/unit/test_adapter_contract.py``):
``RTCPeerConnection._RTCPeerConnection__createTransceiver``, ``RTCRtpTransceiver._set_mid``,
``_set_mline_index``, ``_bundled``, ``_codecs``, ``_headerExtensions``, ``_preferred_codecs``;
``RTCRtpSender._ssrc``, ``_rtx_ssrc``, ``_stream_id``, ``_track_id``;
``RTCDtlsTransport._handle_rtp_data``, ``_handle_rtcp_data``, ``_tx_srtp``, ``transport``;
``RTCDtlsTransport._rx_srtp``; ``RTCIceTransport._connection``;
``aioice.Connection._nominated``, ``_check_list`` and ``data_received``;
``aioice.ice.StunProtocol.datagram_received`` (wrapped process-wide by
:func:`harden_ice`), its ``receiver`` and ``local_candidate``;
``aioice.ice.CandidatePair.state``/``remote_addr``; pylibsrtp's ``Session._srtp``,
``_cdata``, ``_buffer`` and its cffi ``lib.srtp_protect``; and the module
function ``aioice.ice.get_host_addresses`` (replaced by :func:`set_ice_addresses`).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import aioice.ice
import aioice.stun
import aiortc
import pylibsrtp
from aiortc import (
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc import sdp as aiortc_sdp
from aiortc.rtcconfiguration import RTCBundlePolicy
from aiortc.rtcdtlstransport import RTCDtlsTransport
from aiortc.rtcrtptransceiver import RTCRtpTransceiver
from pylibsrtp._binding import ffi as _srtp_ffi
from pylibsrtp._binding import lib as _srtp_lib

from ..core.announce_sdp import announce_addresses, announced_by_family
from ..core.rtp import URI_TRANSPORT_CC
from ..core.sdp_lines import check_offer_structure
from ..core.sdp_reject import hide_unsupported, reject_in_answer, unsupported_mids
from ..core.simulcast_sdp import SimulcastOffer, munge_answer, rid_extension_ids
from ..core.transport_cc_sdp import munge_answer_transport_cc, parse_transport_cc
from .ice_guard import _RTP_FIRST, _RTP_LAST, _drop, harden_ice, quiet_connect_after_close
from . import batch
from .ports import NoMediaPort, port_range
from .udp_mux import udp_port

_STAND_IN = {"audio": "opus/48000/2", "video": "VP8/90000"}

__all__ = [
    "AIORTC_VERSION",
    "MAX_REMOTE_CANDIDATES",
    "TooManyCandidates",
    "RtpSendPath",
    "client_send_path",
    "check_aiortc_version",
    "CodecInfo",
    "MediaInfo",
    "OfferMedia",
    "RtcHandler",
    "SfuPeerConnection",
    "parse_offer",
    "disable_media_engines",
    "harden_ice",
    "install_tap",
    "quiet_connect_after_close",
    "set_ice_addresses",
    "set_announced_addresses",
]

logger = logging.getLogger(__name__)

# pylibsrtp's buffer is 1500 bytes; leave room for the SRTP trailer (pylibsrtp.SRTP_MAX_TRAILER_LEN).
_MAX_PROTECT_INPUT = 1500 - pylibsrtp.SRTP_MAX_TRAILER_LEN

AIORTC_VERSION = "1.16.0"
MAX_REMOTE_CANDIDATES = 64  # trickled ICE candidates per connection


class TooManyCandidates(ValueError):
    """A client trickled more than :data:`MAX_REMOTE_CANDIDATES` ICE candidates."""


def check_aiortc_version() -> None:
    """Refuse to run on an aiortc this adapter was not written against.

    Raises:
        RuntimeError: the installed aiortc is not exactly :data:`AIORTC_VERSION`.
    """
    if aiortc.__version__ != AIORTC_VERSION:
        raise RuntimeError(
            f"sfu.rtc.adapter needs aiortc=={AIORTC_VERSION} (it uses private API), "
            f"found {aiortc.__version__}"
        )


_original_get_host_addresses = aioice.ice.get_host_addresses


def set_ice_addresses(addresses: list[str] | None) -> None:
    """Gather ICE host candidates only on ``addresses`` (process-wide), or on every
    non-loopback interface again with None (aioice's default).

    aioice never offers loopback addresses by itself; tests and single-machine setups
    pass ``["127.0.0.1"]`` so that media stays on loopback.
    """
    if addresses is None:
        aioice.ice.get_host_addresses = _original_get_host_addresses
        return
    chosen = list(addresses)

    def get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [a for a in chosen if (":" in a and use_ipv6) or (":" not in a and use_ipv4)]

    aioice.ice.get_host_addresses = get_host_addresses


_announced: dict[int, str] = {}  # IP version -> the address written into answers


def set_announced_addresses(addresses: list[str] | None) -> None:
    """Write ``addresses`` (one per IP family) into every answer's host candidates and
    ``c=`` lines instead of the local ones (process-wide; None or [] to stop): for a
    server behind 1:1 NAT. See :mod:`sfu.core.announce_sdp`.

    Raises:
        ValueError: not an IP address.
    """
    global _announced
    _announced = announced_by_family(addresses or [])


class RtcHandler(Protocol):
    """Receives decrypted packets; ``arrival_ms`` is ``time.monotonic()`` in ms."""

    def on_rtp(self, data: bytes, arrival_ms: float) -> None: ...

    def on_rtcp(self, data: bytes, arrival_ms: float) -> None: ...


@dataclass(slots=True)
class CodecInfo:
    """A negotiated codec: payload type, ``mime_type`` like ``video/VP8``, clock rate
    in Hz, the RTX payload type bound to it (RFC 4588 ``apt``) if any, and fmtp."""

    payload_type: int
    mime_type: str
    clock_rate: int
    channels: int | None = None
    rtx_payload_type: int | None = None
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class OfferMedia:
    """One m-line of a client offer as the SFU sees it.

    ``direction`` is the client's (``sendonly`` means the client publishes);
    ``ssrcs`` the media SSRCs it declared and ``rtx_ssrcs`` RTX SSRC -> media SSRC
    (``a=ssrc-group:FID``, RFC 5576 §4.2).
    """

    index: int
    mid: str
    kind: str
    direction: str
    codecs: list[CodecInfo]
    extensions: dict[str, int]
    ssrcs: list[int]
    rtx_ssrcs: dict[int, int]


@dataclass(slots=True)
class MediaInfo:
    """One negotiated audio/video m-line from the server's side after the answer.

    ``direction`` is the server's: ``recvonly`` (the client publishes on it),
    ``sendonly`` (the server forwards a track on it) or ``inactive``. ``codecs`` are
    the primary codecs in preference order with their RTX payload types;
    ``extensions`` maps extension URI to id; ``ssrc``/``rtx_ssrc`` are the server's
    sending SSRCs on this m-line.
    """

    mid: str
    kind: str
    direction: str
    codecs: list[CodecInfo]
    extensions: dict[str, int]
    ssrc: int
    rtx_ssrc: int | None


def _codec_infos(codecs: list[Any]) -> list[CodecInfo]:
    primary: list[CodecInfo] = []
    rtx_for: dict[int, int] = {}
    for c in codecs:
        if c.mimeType.lower().endswith("/rtx"):
            apt = c.parameters.get("apt")
            if apt is not None:
                rtx_for[int(apt)] = c.payloadType
        else:
            primary.append(
                CodecInfo(
                    payload_type=c.payloadType,
                    mime_type=c.mimeType,
                    clock_rate=c.clockRate,
                    channels=c.channels,
                    parameters=dict(c.parameters),
                )
            )
    for info in primary:
        info.rtx_payload_type = rtx_for.get(info.payload_type)
    return primary


def parse_offer(sdp_text: str) -> list[OfferMedia]:
    """Parse the audio/video m-lines of an SDP offer (RFC 8866, RFC 8843 BUNDLE).

    Raises:
        ValueError: the SDP cannot be parsed, breaks a rule of
            :func:`~sfu.core.sdp_lines.check_offer_structure`, or an audio/video
            m-line has no mid.
    """
    check_offer_structure(sdp_text)
    try:
        description = aiortc_sdp.SessionDescription.parse(sdp_text)
    except Exception as exc:  # aiortc raises assorted errors on junk input
        raise ValueError(f"unparsable SDP: {exc}") from exc
    if not description.media:
        raise ValueError("offer has no media sections")
    out = []
    for index, media in enumerate(description.media):
        if media.kind not in ("audio", "video"):
            continue
        mid = media.rtp.muxId
        if not mid:
            raise ValueError(f"m-line {index} has no a=mid")
        rtx_ssrcs: dict[int, int] = {}
        for group in media.ssrc_group:
            if group.semantic == "FID" and len(group.items) == 2:
                rtx_ssrcs[int(group.items[1])] = int(group.items[0])
        ssrcs = [s.ssrc for s in media.ssrc if s.ssrc not in rtx_ssrcs]
        out.append(
            OfferMedia(
                index=index,
                mid=mid,
                kind=media.kind,
                direction=media.direction or "sendrecv",
                codecs=_codec_infos(media.rtp.codecs),
                extensions={e.uri: e.id for e in media.rtp.headerExtensions},
                ssrcs=ssrcs,
                rtx_ssrcs=rtx_ssrcs,
            )
        )
    return out


async def _noop_receive(parameters: Any) -> None:
    """Stands in for ``RTCRtpReceiver.receive``: no decoder thread, no RTCP loop."""


async def _noop_send(parameters: Any) -> None:
    """Stands in for ``RTCRtpSender.send``: no encoder, no RTP/RTCP loop."""


def _disable_transceiver(transceiver: RTCRtpTransceiver) -> None:
    transceiver.receiver.receive = _noop_receive  # type: ignore[method-assign]
    transceiver.sender.send = _noop_send  # type: ignore[method-assign]


def _tap_transport(dtls: RTCDtlsTransport, handler: RtcHandler) -> None:
    """Route the decrypted RTP/RTCP of ``dtls`` to ``handler``.

    Fast path: SRTP/SRTCP datagrams are taken at the ICE connection's
    ``data_received`` (called synchronously by the UDP protocol), unprotected and
    handed over at once, skipping aiortc's per-packet queue and coroutine chain.
    DTLS, and anything arriving before the SRTP keys exist, still go through aiortc;
    its ``_handle_rtp_data``/``_handle_rtcp_data`` are replaced too, for that path.
    """
    if getattr(dtls, "_sfu_tapped", False):
        return
    on_rtp = handler.on_rtp
    on_rtcp = handler.on_rtcp
    monotonic = time.monotonic

    async def handle_rtp_data(data: bytes, arrival_time_ms: int) -> None:
        on_rtp(data, monotonic() * 1000.0)

    async def handle_rtcp_data(data: bytes) -> None:
        on_rtcp(data, monotonic() * 1000.0)

    dtls._handle_rtp_data = handle_rtp_data  # type: ignore[method-assign]
    dtls._handle_rtcp_data = handle_rtcp_data  # type: ignore[method-assign]
    dtls._sfu_tapped = True  # type: ignore[attr-defined]

    connection = dtls.transport._connection
    queued = connection.data_received

    def data_received(data: bytes, component: int) -> None:
        # Lengths and sources were checked by the guarded protocol (harden_ice).
        srtp = dtls._rx_srtp
        if not _RTP_FIRST <= data[0] <= _RTP_LAST:
            queued(data, component)  # DTLS: aiortc's handshake and SCTP
            return
        if srtp is None:
            _drop("before_srtp")  # RTP before the DTLS handshake gave keys
            return
        try:
            if 192 <= data[1] <= 223:  # RTCP packet types (RFC 5761 §4)
                on_rtcp(srtp.unprotect_rtcp(data), monotonic() * 1000.0)
            else:
                on_rtp(srtp.unprotect(data), monotonic() * 1000.0)
        except pylibsrtp.Error:
            _drop("srtp_failed")  # counted, never logged per packet

    connection.data_received = data_received


def _wrap_create_transceiver(
    pc: RTCPeerConnection, after: Callable[[RTCRtpTransceiver], None]
) -> None:
    original = pc._RTCPeerConnection__createTransceiver  # type: ignore[attr-defined]

    def create_transceiver(*args: Any, **kwargs: Any) -> RTCRtpTransceiver:
        transceiver = original(*args, **kwargs)
        after(transceiver)
        return transceiver

    pc._RTCPeerConnection__createTransceiver = create_transceiver  # type: ignore[attr-defined]


def disable_media_engines(pc: RTCPeerConnection) -> None:
    """Make every transceiver ``pc`` creates from now on start no decoder or encoder.

    Call right after constructing the connection. The connection still negotiates,
    runs ICE/DTLS/SCTP and keeps its transceivers; media goes through :func:`install_tap`
    and :meth:`SfuPeerConnection.send_rtp` instead.
    """
    for transceiver in pc.getTransceivers():
        _disable_transceiver(transceiver)
    _wrap_create_transceiver(pc, _disable_transceiver)


def install_tap(pc: RTCPeerConnection, handler: RtcHandler) -> None:
    """Deliver the decrypted RTP/RTCP of every DTLS transport of ``pc`` to ``handler``.

    Call right after constructing the connection (before any negotiation).
    """
    harden_ice()
    for transceiver in pc.getTransceivers():
        _tap_transport(transceiver.receiver.transport, handler)
    _wrap_create_transceiver(pc, lambda t: _tap_transport(t.receiver.transport, handler))


class _Protector:
    """SRTP protect for the hot path: pylibsrtp's ``Session.protect`` minus its
    per-call allocation (a reused length cell), ~0.4 µs less per packet.

    Uses pylibsrtp internals (``Session._srtp``, ``_cdata``, ``_buffer``).
    """

    __slots__ = ("session", "_ctx", "_cdata", "_buffer", "_length", "_protect")

    def __init__(self, session: Any) -> None:
        self.session = session
        self._ctx = session._srtp[0]
        self._cdata = session._cdata
        self._buffer = session._buffer
        self._length = _srtp_ffi.new("int *")
        self._protect = _srtp_lib.srtp_protect

    def protect(self, data: bytes) -> bytes:
        """SRTP-protect one RTP packet (RFC 3711 §3.3). Raises pylibsrtp.Error."""
        n = len(data)
        if n > _MAX_PROTECT_INPUT:
            raise pylibsrtp.Error("packet is too long")
        self._buffer[0:n] = data
        self._length[0] = n
        status = self._protect(self._ctx, self._cdata, self._length)
        if status:
            raise pylibsrtp.Error(f"srtp_protect failed ({status})")
        return self._buffer[0 : self._length[0]]


class RtpSendPath:
    """Raw RTP/RTCP out of a connected aiortc DTLS transport, with no await: SRTP
    protect (RFC 3711) and one ``sendto`` on the nominated ICE pair (RFC 8445 §8).

    ``dtls`` is the transport (None until known); the route is cached until the
    nominated pair or the SRTP session changes. Used by the server for forwarding and
    by load-test bots that send RTP aiortc cannot (simulcast layers).
    """

    __slots__ = ("dtls", "_send_route", "_route_pair", "_nominated", "_batch_route")

    def __init__(self, dtls: RTCDtlsTransport | None = None) -> None:
        self.dtls = dtls
        self._send_route: tuple[Any, Any, _Protector] | None = None
        self._route_pair: Any = None
        self._nominated: dict[int, Any] = {}
        self._batch_route: Any = None  # sfu.rtc.batch route of the cached pair

    def _route(self) -> tuple[Any, Any, _Protector] | None:
        """(sendto, remote address, protector) for the nominated pair, cached until the
        pair or the SRTP session changes; None while not connected."""
        dtls = self.dtls
        if dtls is None or dtls._tx_srtp is None:
            return None
        self._nominated = dtls.transport._connection._nominated
        pair = self._nominated.get(1)
        if pair is None:
            return None
        route = self._send_route
        if route is None or self._route_pair is not pair or route[2].session is not dtls._tx_srtp:
            # CandidatePair.remote_addr is a property that builds a tuple: read it once.
            route = self._send_route = (pair.protocol.transport.sendto, pair.remote_addr, _Protector(dtls._tx_srtp))
            self._route_pair = pair
            self._batch_route = None
        return route

    def batch_route(self) -> Any:
        """The :mod:`sfu.rtc.batch` route of the nominated pair (its socket, remote
        address and SRTP session), cached like the send route; None while not
        connected. Where the socket cannot be written directly, a route that calls
        :meth:`send_rtp` per packet."""
        route = self._batch_route
        if route is not None and self._nominated.get(1) is self._route_pair:
            return route
        send = self._route()
        if send is None:
            return None
        pair = self._route_pair
        route = batch.socket_route(pair.protocol.transport, send[1], send[2].session)
        if route is None:
            route = batch.callback_route(self.send_rtp)
        self._batch_route = route
        return route

    def send_rtp(self, data: bytes) -> bool:
        """SRTP-protect and send one RTP packet now. Returns False if not connected."""
        route = self._send_route
        if route is None or self._nominated.get(1) is not self._route_pair:
            route = self._route()
            if route is None:
                return False
        try:
            route[0](route[2].protect(data), route[1])
        except Exception:  # closing transport or SRTP error: the packet is lost
            return False
        return True

    def send_rtcp(self, data: bytes) -> bool:
        """SRTCP-protect and send one (compound) RTCP packet now. False if not connected."""
        route = self._route()
        if route is None:
            return False
        try:
            route[0](route[2].session.protect_rtcp(data), route[1])
        except Exception:
            return False
        return True


def client_send_path(pc: RTCPeerConnection) -> RtpSendPath:
    """A raw send path on a client-side aiortc PeerConnection (max-bundle: the first
    transceiver's transport carries everything). Call after the answer is applied.

    Raises:
        ValueError: the PeerConnection has no transceiver yet.
    """
    transceivers = pc.getTransceivers()
    if not transceivers:
        raise ValueError("no transceiver: negotiate media first")
    return RtpSendPath(transceivers[0].sender.transport)


class SfuPeerConnection:
    """The server's one ``RTCPeerConnection`` to a participant, as a raw RTP transport.

    Args:
        handler: gets every decrypted RTP and RTCP packet (see :class:`RtcHandler`).
        transport_cc: accept transport-wide congestion control where the client offers
            it (the sequence number extension and ``transport-cc`` feedback); the m-lines
            that accepted it carry the extension in their :attr:`media` ``extensions``.

    The connection is max-bundle: all m-lines share one DTLS transport.
    """

    def __init__(self, handler: RtcHandler, transport_cc: bool = True) -> None:
        # No STUN/TURN: the server's host candidates are what clients reach (and aiortc's
        # default would query a public STUN server).
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE))
        disable_media_engines(self.pc)
        install_tap(self.pc, handler)
        self._path = RtpSendPath()
        self.send_rtp = self._path.send_rtp  # type: ignore[method-assign]  # the hot path, unwrapped
        batch.log_mode()
        self.media: dict[str, MediaInfo] = {}
        self.rejected_mids: list[str] = []  # of the last offer: no codec the SFU can forward
        self.transport_cc = transport_cc
        self.remote_candidates = 0  # trickled candidates added (bounded)
        self.max_remote_candidates = MAX_REMOTE_CANDIDATES

    # -- negotiation -----------------------------------------------------------------

    def _transceiver(self, mid: str) -> RTCRtpTransceiver | None:
        for t in self.pc.getTransceivers():
            if t.mid == mid:
                return t
        return None

    def prepare_send(
        self,
        offer: OfferMedia,
        mime_type: str,
        stream_id: str,
        track_id: str,
        new_stream: bool = True,
    ) -> bool:
        """Bind the offered ``recvonly`` m-line ``offer`` to a ``sendonly`` transceiver.

        Creates the transceiver on first use of the mid (reuses it afterwards), limits
        its codecs to ``mime_type`` (plus RTX) and sets ``a=msid:stream_id track_id``.
        ``new_stream`` (a new DownTrack starts on the m-line) gives a reused
        transceiver fresh SSRCs. Call before :meth:`answer`.

        Returns:
            False when the offer has no codec ``mime_type`` (the m-line will be answered
            inactive).
        """
        if not any(c.mime_type.lower() == mime_type.lower() for c in offer.codecs):
            self.prepare_inactive(offer)
            return False
        transceiver = self._transceiver(offer.mid)
        if transceiver is None:
            transceiver = self._pre_bind(offer, "sendonly")
        elif new_stream:
            # A reused m-line carries a new stream: new SSRCs (declared in the answer).
            # The receiver keeps the old SSRC's sequence state (RFC 3550 §8) and libsrtp
            # refuses to protect sequence numbers behind the old ones (replay check).
            transceiver.sender._ssrc = secrets.randbits(32) or 1
            transceiver.sender._rtx_ssrc = secrets.randbits(32) or 1
        transceiver.direction = "sendonly"
        capabilities = RTCRtpSender.getCapabilities(offer.kind).codecs
        preferred = [
            c
            for c in capabilities
            if c.mimeType.lower() == mime_type.lower() or c.mimeType.lower().endswith("/rtx")
        ]
        transceiver.setCodecPreferences(preferred)
        transceiver.sender._stream_id = stream_id
        transceiver.sender._track_id = track_id
        return True

    def prepare_inactive(self, offer: OfferMedia) -> None:
        """Answer m-line ``offer`` as ``inactive`` (an unknown or rejected subscription)."""
        transceiver = self._transceiver(offer.mid)
        if transceiver is None:
            transceiver = self._pre_bind(offer, "inactive")
        transceiver.direction = "inactive"

    def _pre_bind(self, offer: OfferMedia, direction: str) -> RTCRtpTransceiver:
        """A transceiver already bound to ``offer``'s mid and m-line index.

        With max-bundle every transceiver shares the first one's DTLS transport; it is
        marked bundled so that aiortc's BUNDLE step does not stop that shared transport
        as the "old" transport of a non-primary mid.
        """
        transceiver = self.pc.addTransceiver(offer.kind, direction=direction)
        transceiver._set_mid(offer.mid)
        transceiver._set_mline_index(offer.index)
        transceiver._bundled = True
        return transceiver

    async def answer(self, offer_sdp: str, simulcast: dict[str, SimulcastOffer] | None = None) -> str:
        """Apply a client offer and return the server's answer SDP (candidates included).

        ``simulcast`` (by mid, from :func:`~sfu.core.simulcast_sdp.parse_simulcast_offers`)
        adds the receiving side of simulcast to those m-lines of the answer, and every
        video m-line accepts the RID extensions the offer carries; aiortc knows nothing
        of them, so they are written into the text of every answer.

        Audio/video m-lines with no codec aiortc knows are answered rejected (port 0)
        and listed in :attr:`rejected_mids`; the rest of the offer goes on.

        Raises:
            NoMediaPort: with a UDP port range (:mod:`sfu.rtc.ports`) that is full, or
                with a shared UDP port (:mod:`sfu.rtc.udp_mux`) that could not be used.
            ValueError: aiortc could not apply the offer (bad SDP, ...).
        """
        supported = {
            kind: {c.mimeType.lower() for c in RTCRtpSender.getCapabilities(kind).codecs} for kind in ("audio", "video")
        }
        self.rejected_mids = unsupported_mids(offer_sdp, supported)
        applied = hide_unsupported(offer_sdp, self.rejected_mids, _STAND_IN) if self.rejected_mids else offer_sdp
        try:
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=applied, type="offer"))
            answer = await self.pc.createAnswer()
            await self.pc.setLocalDescription(answer)
        except (ValueError, KeyError, IndexError, AttributeError, TypeError) as exc:
            raise ValueError(f"offer could not be applied: {exc}") from exc
        except Exception as exc:  # aiortc's InvalidStateError/OperationError
            if type(exc).__module__.startswith("aiortc"):
                raise ValueError(f"offer could not be applied: {exc}") from exc
            raise
        ice = self._ice_transport()
        if port_range() is not None and ice is not None and not ice.iceGatherer.getLocalCandidates():
            low, high = port_range()  # type: ignore[misc]
            raise NoMediaPort(f"the server has no free media port (UDP {low}-{high} are all in use)")
        if udp_port() is not None and ice is not None and not ice.iceGatherer.getLocalCandidates():
            raise NoMediaPort(f"the server could not use its media port (UDP {udp_port()})")
        self._refresh_media()
        sdp = munge_answer(self.pc.localDescription.sdp, simulcast or {}, rid_extension_ids(offer_sdp))
        sdp = reject_in_answer(sdp, offer_sdp, self.rejected_mids)
        sdp = announce_addresses(sdp, _announced)
        if self.transport_cc:
            sdp, accepted = munge_answer_transport_cc(sdp, parse_transport_cc(offer_sdp))
            for mid, ext_id in accepted.items():
                info = self.media.get(mid)
                if info is not None:
                    info.extensions[URI_TRANSPORT_CC] = ext_id
        return sdp

    def _refresh_media(self) -> None:
        for t in self.pc.getTransceivers():
            if t.mid is None:
                continue
            if self._path.dtls is None:
                self._path.dtls = t.receiver.transport
            codecs = _codec_infos(t._codecs)
            direction = t.currentDirection or "inactive"
            self.media[t.mid] = MediaInfo(
                mid=t.mid,
                kind=t.kind,
                direction=direction,
                codecs=codecs,
                extensions={e.uri: e.id for e in t._headerExtensions},
                ssrc=t.sender._ssrc,
                rtx_ssrc=t.sender._rtx_ssrc if any(c.rtx_payload_type for c in codecs) else None,
            )

    async def add_ice_candidate(self, candidate: dict[str, Any] | None) -> None:
        """Add a trickled candidate (browser ``RTCIceCandidate.toJSON()`` shape), or,
        for None or an empty ``candidate``, the end of candidates (RFC 8838 §9: once
        every pair has failed after it, ICE fails and the connection says so).

        At most ``max_remote_candidates`` (:data:`MAX_REMOTE_CANDIDATES` by default) per connection: each one makes the
        server send connectivity checks to an address the client chose.

        Raises:
            ValueError: the candidate is not of that shape (a string ``candidate`` of at
                most 1,024 characters, a string or null ``sdpMid``, an integer or null
                ``sdpMLineIndex``) or cannot be parsed.
            TooManyCandidates: over the limit.
        """
        if candidate is None:
            await self._end_of_candidates()
            return
        if not isinstance(candidate, dict):
            raise ValueError("a candidate must be an object or null")
        line = candidate.get("candidate")
        mid = candidate.get("sdpMid")
        index = candidate.get("sdpMLineIndex")
        if not isinstance(line, str) or len(line) > 1024:
            raise ValueError("'candidate' must be a string of at most 1024 characters")
        if mid is not None and (not isinstance(mid, str) or len(mid) > 64):
            raise ValueError("'sdpMid' must be a string of at most 64 characters or null")
        if index is not None and (isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < 1024):
            raise ValueError("'sdpMLineIndex' must be an integer 0-1023 or null")
        if not line:
            await self._end_of_candidates()
            return
        if self.remote_candidates >= self.max_remote_candidates:
            raise TooManyCandidates(f"more than {self.max_remote_candidates} ICE candidates")
        if line.startswith("candidate:"):
            line = line[len("candidate:") :]
        try:
            parsed = aiortc_sdp.candidate_from_sdp(line)
        except Exception as exc:
            raise ValueError(f"bad ICE candidate: {str(exc)[:100]}") from exc
        parsed.sdpMid = mid
        parsed.sdpMLineIndex = index
        ice = self._ice_transport()
        if ice is not None:
            self.remote_candidates += 1
            await ice.addRemoteCandidate(parsed)

    async def _end_of_candidates(self) -> None:
        ice = self._ice_transport()
        if ice is not None:
            await ice.addRemoteCandidate(None)

    def _ice_transport(self) -> Any:
        """The one ICE transport of this max-bundle connection (RFC 8843 §5), or None
        before an offer has been applied.

        A trickled candidate belongs to it whatever its ``sdpMid``: aiortc's
        ``addIceCandidate`` would skip every transceiver flagged as bundled, and a
        subscription m-line pre-bound at the head of the offer is flagged so (the
        first m-line of Firefox's offer when it joins a room with publishers), which
        left ICE with no remote candidate.
        """
        transceivers = self.pc.getTransceivers()
        if transceivers:
            dtls = transceivers[0].receiver.transport
            return dtls.transport if dtls is not None else None
        if self.pc.sctp is not None:
            return self.pc.sctp.transport.transport
        return None

    # -- sending ----------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """True once SRTP keys exist and ICE has nominated a pair (packets can go out)."""
        dtls = self._path.dtls
        return (
            dtls is not None
            and dtls._tx_srtp is not None
            and dtls.transport._connection._nominated.get(1) is not None
        )

    def send_rtp(self, data: bytes) -> bool:
        """SRTP-protect and send one RTP packet now. Returns False if not connected.

        (Replaced per instance by the send path's own method: no extra call.)"""
        return self._path.send_rtp(data)

    def send_rtcp(self, data: bytes) -> bool:
        """SRTCP-protect and send one (compound) RTCP packet now. False if not connected."""
        return self._path.send_rtcp(data)

    # -- DataChannels (public aiortc API, kept here so sfu/ sees one transport object) --

    def on_datachannel(self, callback: Callable[[Any], None]) -> None:
        """Call ``callback(channel)`` for every DataChannel the client opens (RFC 8832)."""
        self.pc.on("datachannel", callback)

    def open_data_channel(
        self, label: str, ordered: bool, max_retransmits: int | None, max_packet_lifetime: int | None
    ) -> Any:
        """Open a DataChannel towards the client (DCEP, RFC 8832 §5.1).

        Returns:
            the aiortc ``RTCDataChannel`` (``readyState`` "connecting" until the client
            acknowledges), or None when no ``m=application`` section was negotiated.
        """
        if self.pc.sctp is None or self.pc.connectionState in ("closed", "failed"):
            return None
        return self.pc.createDataChannel(
            label, ordered=ordered, maxRetransmits=max_retransmits, maxPacketLifeTime=max_packet_lifetime
        )

    @property
    def connection_state(self) -> str:
        """``RTCPeerConnection.connectionState``."""
        return self.pc.connectionState

    def on_state_change(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(state)`` whenever the connection state changes."""

        @self.pc.on("connectionstatechange")
        def _changed() -> None:
            callback(self.pc.connectionState)

    async def close(self) -> None:
        """Close the connection (idempotent)."""
        try:
            await asyncio.wait_for(self.pc.close(), timeout=5)
        except (asyncio.TimeoutError, Exception):  # closing must never raise
            logger.debug("peer connection close failed", exc_info=True)
