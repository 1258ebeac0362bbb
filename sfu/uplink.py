"""Uplink: what one participant publishes, as the server receives it.

It routes the participant's incoming RTP to its UpTracks: by SSRC, or for SSRCs the
SDP did not declare by the MID header extension (RFC 8843 §9.2) and the RID /
repaired-RID extensions of simulcast layers (RFC 8852), remembering the binding since
Chrome stops sending them. And it sends the publisher its feedback: NACKs and PLIs as
they come due, a receiver report per layer SSRC and REMB every second (Chrome stays at
its lowest rate without them; with transport-cc the REMB only caps its estimate), and
transport-cc feedback every ``FEEDBACK_INTERVAL_MS`` where negotiated
(draft-holmer-rmcat-transport-wide-cc-extensions-01 §3.1), so that the browser runs its
own congestion control on the link to the server.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from .core.rtcp import Nack, Pli, ReceiverReport, Remb, SenderReport, build_nack, build_pli, build_remb, build_rr
from .core.rtp import URI_MID, URI_TRANSPORT_CC, parse_rtp
from .core.simulcast_sdp import SimulcastOffer
from .core.twcc import TwccReceiver
from .metrics import COUNTERS
from .rtc.adapter import MediaInfo, OfferMedia
from .uptrack import Layer, UpTrack

__all__ = ["Uplink", "FEEDBACK_INTERVAL_MS", "REPORT_INTERVAL_MS"]

logger = logging.getLogger(__name__)

REPORT_INTERVAL_MS = 1000.0
FEEDBACK_INTERVAL_MS = 60.0  # transport-cc feedback to a publisher (50-100 ms, draft-holmer §3.1)
MAX_DECLARED_RTX = 8  # FID groups taken from one simulcast m-line

Route = tuple[UpTrack, Layer, bool]  # (UpTrack, layer, is RTX)


class Uplink:
    """The publishing side of participant ``publisher_id``.

    Args:
        publisher_id: the participant's id.
        rtcp_ssrc: the SSRC the server's RTCP to this participant is sent from.
        send_rtcp: sends one compound RTCP packet to the participant.
        publisher_bitrate: the REMB sent to it, bit/s (a cap when it runs transport-cc).
    """

    def __init__(
        self, publisher_id: str, rtcp_ssrc: int, send_rtcp: Callable[[bytes], bool], publisher_bitrate: int
    ) -> None:
        self.publisher_id = publisher_id
        self.rtcp_ssrc = rtcp_ssrc
        self.publisher_bitrate = publisher_bitrate
        self.uptracks: dict[str, UpTrack] = {}  # by track id
        self.by_mid: dict[str, UpTrack] = {}
        self._send_rtcp = send_rtcp
        self._routes: dict[int, Route] = {}  # SSRC -> route
        self._mid_extension_id: int | None = None
        self._rid_extension_id: int | None = None
        self._rrid_extension_id: int | None = None
        # by mid of a simulcast UpTrack: media SSRC -> RTX SSRC (its offer's FID groups)
        self._declared_rtx: dict[str, dict[int, int]] = {}
        self._twcc_id: int | None = None
        self._twcc: TwccReceiver | None = None
        self._last_report_ms = 0.0
        self._last_feedback_ms = 0.0

    # -- tracks -----------------------------------------------------------------------

    def add(
        self,
        track_id: str,
        m: OfferMedia,
        info: MediaInfo,
        source: str,
        muted: bool,
        simulcast: SimulcastOffer | None,
    ) -> UpTrack:
        """Receive a new track on m-line ``m`` (negotiated as ``info``), with simulcast
        layers when ``simulcast`` says so."""
        if simulcast is not None:
            self._rid_extension_id = simulcast.rid_extension_id
            self._rrid_extension_id = simulcast.rrid_extension_id
            if simulcast.rejected:
                logger.info("participant %s: mid %r simulcast rids %r not received", self.publisher_id, m.mid, simulcast.rejected)
            # Firefox declares its layers' SSRCs with FID groups but no RIDs: a layer's
            # RTX SSRC follows its media SSRC once RID routing has bound that.
            declared = list(m.rtx_ssrcs.items())[:MAX_DECLARED_RTX]
            self._declared_rtx[m.mid] = {media_ssrc: rtx for rtx, media_ssrc in declared}
        up = UpTrack(
            track_id=track_id,
            publisher_id=self.publisher_id,
            kind=m.kind,
            source=source,
            mid=m.mid,
            codec=info.codecs[0],
            extensions=info.extensions,
            send_pli=self.send_pli,
            rids=simulcast.rids if simulcast is not None else None,
        )
        up.muted = muted
        if URI_MID in info.extensions:
            self._mid_extension_id = info.extensions[URI_MID]
        if URI_TRANSPORT_CC in info.extensions:
            self._twcc_id = info.extensions[URI_TRANSPORT_CC]
            if self._twcc is None:
                self._twcc = TwccReceiver(self.rtcp_ssrc)
        if m.ssrcs and simulcast is None:
            layer = up.layers[0]
            layer.bind_ssrc(m.ssrcs[0])
            self._routes[m.ssrcs[0]] = (up, layer, False)
            for rtx, media_ssrc in m.rtx_ssrcs.items():
                if media_ssrc == layer.ssrc:
                    layer.rtx_ssrc = rtx
                    self._routes[rtx] = (up, layer, True)
        self.uptracks[up.id] = up
        self.by_mid[m.mid] = up
        return up

    def remove(self, track_id: str) -> UpTrack | None:
        """Stop receiving ``track_id``; None if unknown."""
        up = self.uptracks.pop(track_id, None)
        if up is None:
            return None
        self.by_mid.pop(up.mid, None)
        self._declared_rtx.pop(up.mid, None)
        for ssrc, route in list(self._routes.items()):
            if route[0] is up:
                del self._routes[ssrc]
        up.close()
        return up

    def release(self) -> list[UpTrack]:
        """Stop receiving every track without closing them (their DownTracks stay
        attached): a reconnected participant takes them over.

        Returns:
            the UpTracks released.
        """
        released = list(self.uptracks.values())
        self.uptracks.clear()
        self.by_mid.clear()
        self._routes.clear()
        self._declared_rtx.clear()
        return released

    def close(self) -> None:
        """Close every UpTrack (the participant is leaving)."""
        for up in list(self.uptracks.values()):
            up.close()
        self.uptracks.clear()
        self.by_mid.clear()
        self._routes.clear()

    # -- media in ---------------------------------------------------------------------

    def on_rtp(self, data: bytes, arrival_ms: float) -> None:
        """A decrypted RTP packet from the participant (hot path). Malformed or
        unroutable: dropped, counted."""
        try:
            packet = parse_rtp(data)
        except ValueError:
            COUNTERS.dropped["malformed"] += 1
            return
        twcc_id = self._twcc_id
        if twcc_id is not None:
            value = packet.extensions.get(twcc_id)
            if value is not None and len(value) >= 2:
                self._twcc.on_packet((value[0] << 8) | value[1], arrival_ms)  # type: ignore[union-attr]
        route = self._routes.get(packet.ssrc)
        if route is None:
            route = self._route_new_ssrc(packet)
            if route is None:
                COUNTERS.dropped["unknown_ssrc"] += 1
                return
        up, layer, is_rtx = route
        if is_rtx:
            up.on_rtx(packet, arrival_ms, layer)
        else:
            up.on_rtp(packet, arrival_ms, layer)

    def on_sender_report(self, report: SenderReport, arrival_ms: float) -> None:
        """An SR from the participant about one of its streams (RFC 3550 §6.4.1)."""
        route = self._routes.get(report.ssrc)
        if route is not None and not route[2]:
            route[0].on_sender_report(report, arrival_ms, route[1])

    def _route_new_ssrc(self, packet: Any) -> Route | None:
        """Bind an SSRC the SDP did not declare: by MID extension (RFC 8843 §9.2) and,
        for simulcast, RID or repaired RID (RFC 8852); else by payload type."""
        up: UpTrack | None = None
        if self._mid_extension_id is not None:
            mid = packet.extensions.get(self._mid_extension_id)
            if mid is not None:
                up = self.by_mid.get(mid.decode(errors="replace"))
        if up is not None and up.simulcast:
            return self._route_layer(up, packet)
        if up is None:
            # A single published track of a payload type can be found without MID.
            candidates = [
                u for u in self.by_mid.values() if packet.payload_type in (u.codec.payload_type, u.codec.rtx_payload_type)
            ]
            if len(candidates) != 1:
                return None
            up = candidates[0]
            if up.simulcast:
                return self._route_layer(up, packet)
        layer = up.layers[0]
        is_rtx = packet.payload_type == up.codec.rtx_payload_type and packet.payload_type != up.codec.payload_type
        return self._bind(up, layer, is_rtx, packet.ssrc)

    def _route_layer(self, up: UpTrack, packet: Any) -> Route | None:
        """Find the simulcast layer of a new SSRC from its RID or repaired-RID extension."""
        for ext_id, is_rtx in ((self._rid_extension_id, False), (self._rrid_extension_id, True)):
            if ext_id is None:
                continue
            rid = packet.extensions.get(ext_id)
            if rid is None:
                continue
            layer = up.layers_by_rid.get(rid.decode(errors="replace"))
            if layer is None:
                return None  # a RID the answer did not accept
            if not is_rtx and packet.payload_type == up.codec.rtx_payload_type:
                is_rtx = True
            return self._bind(up, layer, is_rtx, packet.ssrc)
        return None

    def _bind(self, up: UpTrack, layer: Layer, is_rtx: bool, ssrc: int) -> Route:
        """Remember that ``ssrc`` carries ``layer`` of ``up`` (media or RTX)."""
        old = layer.rtx_ssrc if is_rtx else layer.ssrc
        if old is not None and old != ssrc:
            self._routes.pop(old, None)
        if is_rtx:
            layer.rtx_ssrc = ssrc
        else:
            layer.bind_ssrc(ssrc)
        route = (up, layer, is_rtx)
        self._routes[ssrc] = route
        rtx = None if is_rtx else self._declared_rtx.get(up.mid, {}).get(ssrc)
        if rtx is not None and rtx not in self._routes:
            self._bind(up, layer, True, rtx)
        return route

    # -- feedback to the publisher ----------------------------------------------------

    def send_pli(self, media_ssrc: int) -> None:
        """Ask the publisher for a keyframe of ``media_ssrc`` (RFC 4585 §6.3.1)."""
        COUNTERS.plis_sent += 1
        self._send_rtcp(build_rr(ReceiverReport(self.rtcp_ssrc)) + build_pli(Pli(self.rtcp_ssrc, media_ssrc)))

    def tick(self, now_ms: float, rtt_ms: float) -> None:
        """Periodic feedback at ``now_ms``: due NACKs and PLI retries (``rtt_ms``
        paces NACK retries), transport-cc feedback, and every ``REPORT_INTERVAL_MS``
        an RR + REMB."""
        if not self.uptracks:
            return
        for up in list(self.uptracks.values()):
            for media_ssrc, lost in up.poll(now_ms, rtt_ms):
                COUNTERS.nacks_sent += 1
                self._send_rtcp(build_rr(ReceiverReport(self.rtcp_ssrc)) + build_nack(Nack(self.rtcp_ssrc, media_ssrc, lost)))
        if self._twcc is not None and now_ms - self._last_feedback_ms >= FEEDBACK_INTERVAL_MS:
            self._last_feedback_ms = now_ms
            media_ssrc = next((s for up in self.uptracks.values() for s in up.media_ssrcs()), 0)
            for feedback in self._twcc.feedback(media_ssrc):
                COUNTERS.transport_feedback["sent"] += 1
                self._send_rtcp(build_rr(ReceiverReport(self.rtcp_ssrc)) + feedback)
        if now_ms - self._last_report_ms >= REPORT_INTERVAL_MS:
            self._last_report_ms = now_ms
            self.send_receiver_reports(now_ms)

    def send_receiver_reports(self, now_ms: float) -> None:
        """RR for every published SSRC plus REMB for the video ones (draft-alvestrand-rmcat-remb)."""
        blocks = [b for up in self.uptracks.values() for b in up.report_blocks(now_ms)]
        packet = b"".join(build_rr(ReceiverReport(self.rtcp_ssrc, blocks[i : i + 31])) for i in range(0, max(len(blocks), 1), 31))
        video = [ssrc for up in self.uptracks.values() if up.is_video for ssrc in up.media_ssrcs()]
        if video:
            packet += build_remb(Remb(self.rtcp_ssrc, self.publisher_bitrate, video))
        self._send_rtcp(packet)
