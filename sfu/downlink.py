"""Downlink: what one participant receives, and the control of it.

It keeps the participant's DownTracks (one per subscribed m-line), hands them the
subscriber's RTCP (receiver reports, NACK, PLI/FIR), and runs the subscriber's control
loop: every ``TICK_MS`` while probing (every 100 ms otherwise) it feeds :class:`~sfu.core.subscriber_control.SubscriberController`
what was sent and applies what it decides (probe padding now, and every
``ALLOCATE_INTERVAL_MS`` the layer of each simulcast video track). Transport-cc
feedback (draft-holmer-rmcat-transport-wide-cc-extensions-01) is matched against the
connection's send history here and its per-packet results go to the controller.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

from .core.allocator import PRIORITY_OTHER, PRIORITY_SCREEN, PRIORITY_SPEAKER, TrackDemand, covering_layer
from .core.rtcp import Fir, Nack, Pli, Remb, ReportBlock
from .core.subscriber_control import SentTotals, SubscriberController
from .core.send_history import SendHistory
from .core.twcc import TwccFeedback
from .downtrack import DownTrack
from .metrics import COUNTERS
from .rtc.adapter import MediaInfo, SfuPeerConnection
from .uptrack import UpTrack

__all__ = ["Downlink", "TrackSettings", "TICK_MS", "ALLOCATE_INTERVAL_MS", "AUDIO_BITRATE"]

logger = logging.getLogger(__name__)

TICK_MS = 20.0
ALLOCATE_INTERVAL_MS = 250.0
AUDIO_BITRATE = 40_000  # bit/s set aside per audio DownTrack
DROP_REALLOCATE = 0.85  # an estimate that falls below 0.85x reallocates at once


@dataclass(slots=True)
class TrackSettings:
    """A subscriber's preferences for one subscribed track (``track_settings``): the
    size it shows the video at, ``max_width`` x ``max_height`` device pixels (None: not
    capped; the layer that covers it is forwarded at most), and ``paused``."""

    max_height: int | None = None
    max_width: int | None = None
    paused: bool = False


class Downlink:
    """The receiving side of participant ``subscriber_id`` on ``connection``.

    Args:
        subscriber_id: the participant's id.
        connection: its PeerConnection (send path, connection state).
        send_event: delivers a protocol event (``layer_changed``) to the participant.
        active_speaker: returns the room's active speaker (participant id) or None.
    """

    def __init__(
        self,
        subscriber_id: str,
        connection: SfuPeerConnection,
        send_event: Callable[[dict[str, Any]], None],
        active_speaker: Callable[[], str | None],
    ) -> None:
        self.subscriber_id = subscriber_id
        self.connection = connection
        self.send_event = send_event
        self.active_speaker = active_speaker
        self.downtracks: dict[str, DownTrack] = {}  # by mid
        self.track_settings: dict[str, TrackSettings] = {}  # by track id
        self.history = SendHistory()
        self.control = SubscriberController()
        self.remb: int | None = None  # the subscriber's last REMB, bit/s
        self._by_ssrc: dict[int, DownTrack] = {}
        self._last_allocate_ms = -ALLOCATE_INTERVAL_MS

    # -- DownTracks -------------------------------------------------------------------

    def add(self, up: UpTrack, info: MediaInfo) -> DownTrack | None:
        """Start forwarding ``up`` on the negotiated m-line ``info``; None when the
        m-line cannot carry it."""
        try:
            dt = DownTrack(
                up,
                self.subscriber_id,
                info,
                self.connection.send_rtp,
                self.connection.send_rtcp,
                lambda: self.connection.connected,
                self._on_layer_change,
                self.history,
            )
        except ValueError:
            logger.warning("participant %s: m-line %r cannot carry %s", self.subscriber_id, info.mid, up.codec.mime_type)
            return None
        if dt.transport_cc:
            self.control.transport_cc = True
        self.downtracks[info.mid] = dt
        self._by_ssrc[dt.ssrc] = dt
        if dt.rtx_ssrc is not None:
            self._by_ssrc[dt.rtx_ssrc] = dt
        up.downtracks.append(dt)
        now_ms = time.monotonic() * 1000.0
        if up.simulcast:
            self.allocate(now_ms)
        else:
            up.request_keyframe(now_ms)
        return dt

    def remove(self, mid: str) -> None:
        """Stop forwarding on ``mid`` (the m-line stays for reuse)."""
        dt = self.downtracks.pop(mid, None)
        if dt is None:
            return
        dt.close()
        self.control.selector.forget(mid)
        self._by_ssrc.pop(dt.ssrc, None)
        if dt.rtx_ssrc is not None:
            self._by_ssrc.pop(dt.rtx_ssrc, None)

    def drop_subscriptions_to(self, track_id: str) -> None:
        """Stop receiving ``track_id`` (it was unpublished)."""
        for mid, dt in list(self.downtracks.items()):
            if dt.uptrack.id == track_id:
                self.remove(mid)

    def close(self) -> None:
        """Stop every DownTrack (the participant is leaving)."""
        for mid in list(self.downtracks):
            self.remove(mid)

    def rtt_ms(self) -> float | None:
        """The lowest RTT to the participant that a DownTrack measured, ms."""
        rtts = [dt.rtt_ms for dt in self.downtracks.values() if dt.rtt_ms is not None]
        return min(rtts) if rtts else None

    # -- the subscriber's RTCP --------------------------------------------------------

    def on_report_block(self, block: ReportBlock, now_ms: float) -> None:
        """A reception report about one of our streams (RFC 3550 §6.4.1)."""
        dt = self._by_ssrc.get(block.ssrc)
        if dt is None or block.ssrc != dt.ssrc:
            return
        rtt = dt.on_report_block(block)
        if dt.kind == "video":
            self.control.on_report(dt.fraction_lost, rtt, now_ms)

    def on_feedback(self, packet: Nack | Pli | Fir | Remb | TwccFeedback, now_ms: float) -> None:
        """Transport-layer or payload-specific feedback (RFC 4585, RFC 5104,
        draft-alvestrand-rmcat-remb, draft-holmer transport-cc)."""
        if isinstance(packet, Nack):
            COUNTERS.nacks_received += 1
            dt = self._by_ssrc.get(packet.media_ssrc)
            if dt is not None:
                dt.on_nack(packet.lost, now_ms, packet.omitted)
                if dt.kind == "video":
                    self.control.on_nack(len(packet.lost), now_ms)
        elif isinstance(packet, TwccFeedback):
            COUNTERS.transport_feedback["received"] += 1
            results = self.history.on_feedback(packet)
            if results:
                control = self.control
                before = control.estimate
                control.on_transport_feedback(results, now_ms)
                after = control.estimate
                if after < DROP_REALLOCATE * before:
                    # Congestion: act now, not at the next allocation tick (up to 250 ms).
                    logger.debug("participant %s: estimate %d -> %d bit/s", self.subscriber_id, before, after)
                    self.allocate(now_ms)
        elif isinstance(packet, Pli):
            COUNTERS.plis_received += 1
            dt = self._by_ssrc.get(packet.media_ssrc)
            if dt is not None:
                dt.on_keyframe_request(now_ms)
        elif isinstance(packet, Fir):
            COUNTERS.firs_received += 1
            for ssrc, _ in packet.entries:
                dt = self._by_ssrc.get(ssrc)
                if dt is not None:
                    dt.on_keyframe_request(now_ms)
        elif isinstance(packet, Remb):
            self.remb = packet.bitrate
            self.control.on_remb(packet.bitrate, now_ms)
            COUNTERS.subscriber_bitrate.observe(packet.bitrate)

    # -- control ----------------------------------------------------------------------

    def tick(self, now_ms: float) -> None:
        """Every ``TICK_MS``: the controller's tick when it is due (every tick while it
        probes, with the padding to send now; every ``idle_tick_ms`` otherwise), and the
        allocation when it is due."""
        control = self.control
        if control.due(now_ms):
            total = padding = video = 0
            for dt in self.downtracks.values():
                total += dt.bytes_sent
                padding += dt.padding_bytes_sent
                if dt.kind == "video":
                    video += dt.packets_sent
            decision = control.tick(now_ms, SentTotals(total, padding, video))
            if decision.padding_bytes > 0:
                carrier = self._padding_carrier()
                if carrier is not None:
                    carrier.send_padding(decision.padding_bytes, now_ms, decision.cluster)
        if now_ms - self._last_allocate_ms >= ALLOCATE_INTERVAL_MS:
            self.allocate(now_ms)

    def _padding_carrier(self) -> DownTrack | None:
        """The video DownTrack that carries probing padding: forwarding, with RTX."""
        return max(
            (dt for dt in self.downtracks.values() if dt.kind == "video" and dt.rtx_ssrc is not None and dt.layer is not None),
            key=lambda dt: dt.bytes_sent,
            default=None,
        )

    def _demand(self, dt: DownTrack, now_ms: float) -> TrackDemand:
        up = dt.uptrack
        settings = self.track_settings.get(up.id)
        max_layer = None
        if settings is not None:
            max_layer = covering_layer([(layer.width, layer.height) for layer in up.layers], settings.max_width, settings.max_height)
        if up.source == "screen":
            priority = PRIORITY_SCREEN
        elif self.active_speaker() == up.publisher_id:
            priority = PRIORITY_SPEAKER
        else:
            priority = PRIORITY_OTHER
        return TrackDemand(
            key=dt.mid,
            layer_bitrates=up.layer_bitrates(now_ms),
            max_layer=max_layer,
            paused=settings.paused if settings is not None else False,
            priority=priority,
        )

    def allocate(self, now_ms: float) -> None:
        """Share the downlink estimate across the simulcast video DownTracks and apply
        the layer changes the controller decides. Audio and single-encoding video are
        always forwarded (as mediasoup does with simple consumers): their bit/s come
        off the budget first."""
        self._last_allocate_ms = now_ms
        simulcast = []
        fixed_bps = 0.0
        for dt in self.downtracks.values():
            if dt.uptrack.simulcast:
                simulcast.append(dt)
            elif dt.kind == "audio":
                fixed_bps += AUDIO_BITRATE
            else:
                fixed_bps += dt.uptrack.layer_bitrates(now_ms)[0] or 0
        if not simulcast:
            return
        control = self.control
        successes, failures = self._probe_counts()
        changes = control.allocate(
            now_ms,
            [self._demand(dt, now_ms) for dt in simulcast],
            fixed_bps,
            self._padding_carrier() is not None,
            any(dt.paused and dt.reason == "bandwidth" for dt in simulcast),
        )
        after = self._probe_counts()
        COUNTERS.probes["success"] += after[0] - successes
        COUNTERS.probes["failure"] += after[1] - failures
        if after != (successes, failures) and logger.isEnabledFor(logging.DEBUG):
            results = control.gcc.probe_results
            last = results[next(reversed(results))] if control.transport_cc and results else None
            logger.debug("participant %s: probe %s, estimate %d bit/s: %s", self.subscriber_id,
                         "succeeded" if after[0] > successes else "failed", control.estimate, last)
        COUNTERS.downlink_estimate.observe(control.estimate)
        for change in changes:
            dt = self.downtracks.get(change.key)  # type: ignore[arg-type]
            if dt is not None:
                dt.set_target(change.layer, change.reason, now_ms)

    def _probe_counts(self) -> tuple[int, int]:
        c = self.control
        prober = c.prober if c.transport_cc else c.probe
        return prober.successes, prober.failures

    def set_track_settings(self, track_id: str, changes: dict[str, Any]) -> None:
        """Apply a subscriber's ``track_settings`` for ``track_id`` (docs/PROTOCOL.md).

        Args:
            changes: the fields the message set: ``max_height``/``max_width`` (pixels,
                or None to remove) and/or ``paused``; the others stay as they were.

        Raises:
            KeyError: the participant does not subscribe to ``track_id``.
        """
        if not any(dt.uptrack.id == track_id for dt in self.downtracks.values()):
            raise KeyError(track_id)
        settings = self.track_settings.setdefault(track_id, TrackSettings())
        if "max_height" in changes:
            settings.max_height = changes["max_height"]
        if "max_width" in changes:
            settings.max_width = changes["max_width"]
        if "paused" in changes:
            settings.paused = bool(changes["paused"])
        self.allocate(time.monotonic() * 1000.0)

    def _on_layer_change(self, dt: DownTrack, previous: int | None, layer: int | None, reason: str) -> None:
        """Tell the subscriber (``layer_changed``) and count it by direction and reason."""
        self.control.on_layer_changed(time.monotonic() * 1000.0)
        if layer is None:
            direction = "pause"
        elif previous is None:
            direction = "start" if dt.layer_switches <= 1 else "resume"
        else:
            direction = "up" if layer > previous else "down"
        COUNTERS.layer_switches[(direction, reason)] += 1
        logger.info(
            "participant %s: mid %r layer %s -> %s (%s, %s; estimate %d bit/s)",
            self.subscriber_id, dt.mid, previous, layer, direction, reason, self.control.estimate,
        )
        info = dt.uptrack.layers[layer] if layer is not None else None
        self.send_event(
            {
                "type": "layer_changed",
                "trackId": dt.uptrack.id,
                "mid": dt.mid,
                "rid": info.rid if info is not None else None,
                "layer": layer,
                "width": info.width if info is not None else None,
                "height": info.height if info is not None else None,
                "paused": layer is None,
                "reason": reason,
            }
        )

    def stats(self) -> dict[str, Any]:
        """The downlink part of the admin endpoint's participant object."""
        c = self.control
        return {
            "bandwidthEstimate": self.remb,
            "downlinkEstimate": c.estimate,
            "transportCc": c.transport_cc,
            "sentBitrate": round(c.sent_bps),
            "probing": c.probing,
            "subscribed": [dt.stats_snapshot() for dt in self.downtracks.values()],
        }
