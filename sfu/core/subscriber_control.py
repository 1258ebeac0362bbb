"""One subscriber's downlink control loop, as a pure controller that returns decisions.

The subscriber's side of a participant (``sfu/subscriber.py``) feeds it what the
subscriber's RTCP says and what was sent, and applies what it returns: the layer each
video track gets (:class:`~sfu.core.allocator.LayerChange`) and how much padding to
send now, in which probe cluster. Time is a parameter (ms): the tests run it on a
virtual clock.

Two estimators, chosen by what the subscriber negotiated:

* **transport-cc** (Chrome, Firefox): the send-side estimate of
  :class:`~sfu.core.gcc.GccEstimator` from per-packet feedback
  (draft-holmer-rmcat-transport-wide-cc-extensions-01), raised by short probe clusters
  of padding (:class:`ClusterProber`) whose results come from the same feedback.
* **fallback** (peers without it, e.g. aiortc bots): REMB and receiver-report loss
  (:class:`~sfu.core.bandwidth.BandwidthEstimator`) raised by long padding probes
  (:class:`~sfu.core.bandwidth.ProbeController`).

Either way the estimate used for allocation never goes below the *floor* (what is
always forwarded plus every track's lowest layer) unless loss is seen while sending
about that little for a while: a busy receiver, jitter or random loss never pause
video; only a link that cannot carry the lowest layers does.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from .allocator import UP_MARGIN, LayerChange, LayerSelector, TrackDemand
from .bandwidth import LOSS_HIGH, BandwidthEstimator, ProbeController
from .gcc import GccEstimator

__all__ = ["SentTotals", "Decision", "ClusterProber", "SubscriberController"]

SEND_RATE_WINDOW_MS = 1000.0
PEAK_WINDOW_MS = 1500.0  # covers one receiver-report interval of Chrome
SETTLE_MS = 1000.0  # no padding probe this long after a layer change (fallback mode)
CLUSTER_SETTLE_MS = 300.0  # no probe cluster this long after a layer change (keyframe bursts)
NACK_WINDOW_MS = 300.0  # loss measured from NACKs over this window
NACK_MIN_PACKETS = 20  # ... when at least this many video packets went out in it
FLOOR_EVIDENCE = 1.3  # loss while sending at most 1.3x the floor is loss of the floor
FLOOR_LOSS_MS = 1500.0  # ... and it must go on this long before the estimate goes below it


@dataclass(slots=True)
class SentTotals:
    """Cumulative counts of what was sent to the subscriber, read at one instant:
    RTP bytes (padding included), padding bytes, and video packets."""

    bytes: int
    padding_bytes: int
    video_packets: int


@dataclass(slots=True)
class Decision:
    """What to apply after :meth:`SubscriberController.tick`: padding bytes to send
    now on the padding carrier, stamped with probe ``cluster`` (None: not a cluster)."""

    padding_bytes: float = 0.0
    cluster: int | None = None
    changes: list[LayerChange] = field(default_factory=list)


class ClusterProber:
    """When and how hard to probe a transport-cc subscriber's downlink.

    A probe is a cluster of padding for ``duration_ms`` that brings what is sent up to
    a target rate: ``estimate * step`` (2x: one or two probes reach any layer), at most
    ``desired * 1.2``. It is wanted while the tracks' wish (``desired``, margins
    included) is within ``headroom`` (10 %) of the estimate or above it: a layer whose
    measured rate hovers at the edge of the estimate is proven once rather than
    waited for. Its outcome is read from the transport-cc feedback by
    :class:`~sfu.core.gcc.GccEstimator` (``probe_results``), which raises the estimate
    to a rate the link carried. A probe starts only when the tracks want more than the
    estimate, ``quiet_ms`` after the last overuse, and after the back-off (1 s, doubled
    after each failure up to ``max_backoff_ms``, 1.5 s: a failed probe of 2x for 200 ms
    mostly queues in the bottleneck rather than drops, so trying again soon is cheap,
    and a link that recovers is found within about 1.5 s). A probe that gets no result within
    ``result_timeout_ms`` counts as failed.
    """

    def __init__(
        self,
        duration_ms: float = 200.0,
        step: float = 2.0,
        quiet_ms: float = 1000.0,
        min_backoff_ms: float = 1000.0,
        max_backoff_ms: float = 1500.0,
        result_timeout_ms: float = 1500.0,
        headroom: float = 1.1,
    ) -> None:
        self.duration_ms = duration_ms
        self.headroom = headroom
        self.step = step
        self.quiet_ms = quiet_ms
        self.min_backoff_ms = min_backoff_ms
        self.max_backoff_ms = max_backoff_ms
        self.result_timeout_ms = result_timeout_ms
        self.cluster: int | None = None  # the cluster being sent
        self.target_bps = 0.0
        self.successes = 0
        self.failures = 0
        self.verified_ms: float | None = None  # when a probe last succeeded
        self._next_id = 1
        self._started_ms = 0.0
        self._waiting: tuple[int, float] | None = None  # (cluster, sent until ms) awaiting a result
        self._next_ms = 0.0
        self._backoff_ms = min_backoff_ms

    @property
    def probing(self) -> bool:
        """A cluster is being sent or its result is awaited."""
        return self.cluster is not None or self._waiting is not None

    def expire(self, now_ms: float) -> None:
        """End the cluster being sent once its ``duration_ms`` is over (its result is
        then awaited)."""
        if self.cluster is not None and now_ms - self._started_ms >= self.duration_ms:
            self._waiting = (self.cluster, now_ms)
            self.cluster = None

    def poll(self, now_ms: float, gcc: GccEstimator, desired_bps: float, can_pad: bool) -> None:
        """End, evaluate or start a probe at ``now_ms``."""
        self.expire(now_ms)
        if self._waiting is not None:
            cluster, ended = self._waiting
            result = gcc.probe_results.get(cluster)
            if result is not None:
                self._waiting = None
                if result.success:
                    self.successes += 1
                    self.verified_ms = now_ms
                    self._backoff_ms = self.min_backoff_ms
                    self._next_ms = now_ms + 200.0  # the next step up may follow at once
                else:
                    self._fail(now_ms)
            elif now_ms - ended > self.result_timeout_ms:
                self._waiting = None
                self._fail(now_ms)
            return
        if self.cluster is not None or not can_pad or desired_bps * self.headroom <= gcc.estimate or now_ms < self._next_ms:
            return
        if gcc.overuse_ms is not None and now_ms - gcc.overuse_ms < self.quiet_ms:
            return
        self.cluster = self._next_id
        self._next_id += 1
        self._started_ms = now_ms
        self.target_bps = min(gcc.estimate * self.step, desired_bps * 1.2)
        gcc.start_probe(self.cluster, self.target_bps, now_ms, self.duration_ms)

    def _fail(self, now_ms: float) -> None:
        self.failures += 1
        self._next_ms = now_ms + self._backoff_ms
        self._backoff_ms = min(self.max_backoff_ms, self._backoff_ms * 2)

    def padding_bps(self, media_bps: float) -> float:
        """Padding to send now (bit/s) on top of ``media_bps``; 0 when no cluster runs."""
        if self.cluster is None:
            return 0.0
        return max(0.0, self.target_bps - media_bps)

    def defer(self, until_ms: float) -> None:
        """No new probe before ``until_ms`` (a running cluster goes on: its result is
        still read)."""
        self._next_ms = max(self._next_ms, until_ms)


class SubscriberController:
    """The downlink control loop of one subscriber.

    Args:
        transport_cc: the subscriber negotiated transport-wide congestion control:
            estimate from its feedback (else from REMB and receiver reports).
        initial_bps: the estimate before any feedback, bit/s.
        tick_ms: how often :meth:`tick` is called while probing (padding per call is
            sized by it); otherwise every ``idle_tick_ms`` (:meth:`due` tells).
        idle_tick_ms: how often :meth:`tick` is due while no probe runs, ms: measuring
            the send rate and NACK loss needs no finer grain than the 1 s windows they
            are read over, and most subscribers are not probing at any moment.

    Attributes:
        sent_bps: all RTP bit/s sent over the last second; ``media_bps`` without
            probing padding; ``peak_sent_bps`` the highest ``sent_bps`` of the last 1.5 s.
        floor_bps: what is always forwarded plus every video track's lowest layer (with
            the up-margin), from the last allocation.
    """

    def __init__(
        self, transport_cc: bool = False, initial_bps: int = 1_500_000, tick_ms: float = 20.0, idle_tick_ms: float = 100.0
    ) -> None:
        self.transport_cc = transport_cc
        self.tick_ms = tick_ms
        self.idle_tick_ms = idle_tick_ms
        self.bwe = BandwidthEstimator(initial_bps)
        self.probe = ProbeController()
        self.gcc = GccEstimator(initial_bps)
        self.prober = ClusterProber()
        self.selector = LayerSelector()
        self.sent_bps = 0.0
        self.media_bps = 0.0
        self.peak_sent_bps = 0.0
        self.floor_bps = 0.0
        self._sent_samples: list[tuple[float, int, int]] = []
        # (ms, send rate) with falling rates: the window's maximum is the first (a
        # monotonic queue: O(1) per tick instead of a max over ~75 samples).
        self._rate_history: deque[tuple[float, float]] = deque()
        self._nacked: list[tuple[float, int]] = []  # (ms, sequence numbers NACKed)
        self._video_sent: list[tuple[float, int]] = []  # (ms, video packets sent so far)
        self._floor_loss_since: float | None = None  # loss at the floor seen since then
        self._last_ms = 0.0  # the newest time given to tick or allocate
        self._last_tick_ms = float("-inf")  # the last tick

    # -- inputs -----------------------------------------------------------------------

    def on_remb(self, bitrate: int, now_ms: float) -> None:
        """A REMB (draft-alvestrand-rmcat-remb) of ``bitrate`` bit/s."""
        if not self.transport_cc:
            self.bwe.on_remb(bitrate, self.sent_bps, now_ms)

    def on_report(self, fraction_lost: float, rtt_ms: float | None, now_ms: float) -> None:
        """A receiver-report block of a video DownTrack (RFC 3550 §6.4.1): loss 0..1,
        RTT in ms when it echoed one of our SRs."""
        if rtt_ms is not None:
            self.gcc.on_rtt(rtt_ms, now_ms)
        if not self.transport_cc:
            self.bwe.on_loss(fraction_lost, self.peak_sent_bps, now_ms)
            if rtt_ms is not None:
                self.bwe.on_rtt(rtt_ms, now_ms)

    def on_nack(self, lost: int, now_ms: float) -> None:
        """A NACK naming ``lost`` sequence numbers of a video DownTrack (RFC 4585 §6.2.1)."""
        self._nacked.append((now_ms, lost))
        if len(self._nacked) > 256:
            del self._nacked[0]
        if not self.transport_cc:
            self.bwe.on_nack(now_ms)

    def on_transport_feedback(self, results: Sequence[object], now_ms: float) -> None:
        """Per-packet results of a transport-cc feedback (see :class:`~sfu.core.gcc.GccEstimator`)."""
        self.gcc.on_feedback(results, now_ms)  # type: ignore[arg-type]

    def on_layer_changed(self, now_ms: float) -> None:
        """A layer changed: no new probe until it has settled."""
        self.probe.defer(now_ms + SETTLE_MS)
        self.prober.defer(now_ms + CLUSTER_SETTLE_MS)

    # -- outputs ----------------------------------------------------------------------

    @property
    def estimate(self) -> int:
        """The downlink estimate the allocation uses, bit/s: the estimator's, raised to
        the floor unless loss at the floor has gone on for ``FLOOR_LOSS_MS``."""
        raw = self.gcc.estimate if self.transport_cc else self.bwe.estimate
        if self.transport_cc and raw < self.floor_bps:
            lost_long = self._floor_loss_since is not None and self._last_ms - self._floor_loss_since >= FLOOR_LOSS_MS
            if not lost_long:
                return int(self.floor_bps)
        return raw

    @property
    def probing(self) -> bool:
        """A probe (cluster or padding goal) runs."""
        return self.prober.probing if self.transport_cc else self.probe.probing

    def due(self, now_ms: float) -> bool:
        """Whether :meth:`tick` is due at ``now_ms`` (ms): every ``tick_ms`` while a probe
        runs (its padding is paced per tick), every ``idle_tick_ms`` otherwise (half a
        ``tick_ms`` early, so a caller on a ``tick_ms`` timer ticks every
        ``idle_tick_ms / tick_ms``-th time)."""
        return self.probing or now_ms - self._last_tick_ms >= self.idle_tick_ms - self.tick_ms / 2

    def tick(self, now_ms: float, sent: SentTotals) -> Decision:
        """When :meth:`due`: measure the send rate, read loss, and say how much
        padding to send now (a probe: ``tick_ms`` worth of it)."""
        self._last_ms = now_ms
        self._last_tick_ms = now_ms
        self._measure_sent(now_ms, sent)
        if self.transport_cc:
            self._watch_floor_loss(now_ms)
            self.prober.expire(now_ms)
            padding = self.prober.padding_bps(self.media_bps)
            cluster = self.prober.cluster
        else:
            self._nack_loss(now_ms, sent.video_packets)
            padding = self.probe.padding_bps(self.media_bps)
            cluster = None
        return Decision(padding * self.tick_ms / 8000.0 if padding > 0 else 0.0, cluster)

    def allocate(
        self,
        now_ms: float,
        demands: list[TrackDemand],
        fixed_bps: float,
        can_pad: bool,
        paused_for_bandwidth: bool,
    ) -> list[LayerChange]:
        """Share the estimate across the simulcast video ``demands`` (audio and
        single-encoding video take ``fixed_bps`` off first) and probe when they could
        use more.

        Args:
            can_pad: a video DownTrack that can carry padding is forwarding.
            paused_for_bandwidth: some track is paused for bandwidth (fallback mode
                then tries the lowest layer again now and then).

        Returns:
            the layer changes to apply.
        """
        self._last_ms = now_ms
        lowest = [min(b for b in d.layer_bitrates if b is not None) for d in demands if not d.paused and any(d.layer_bitrates)]
        self.floor_bps = fixed_bps + sum(lowest) * UP_MARGIN
        self.bwe.floor_bps = self.floor_bps
        desired = fixed_bps
        for d in demands:
            active = [b for i, b in enumerate(d.layer_bitrates) if b is not None and (d.max_layer is None or i <= d.max_layer)]
            if active and not d.paused:
                desired += active[-1] * UP_MARGIN
        if self.transport_cc:
            before = self.prober.successes
            self.prober.poll(now_ms, self.gcc, desired, can_pad)
            verified = self.prober.successes > before
        else:
            before = self.probe.successes
            self._probe_fallback(now_ms, desired, fixed_bps, min(lowest, default=None), can_pad, paused_for_bandwidth)
            verified = self.probe.successes > before
        budget = max(0.0, self.estimate - fixed_bps)
        return self.selector.select(now_ms, budget, demands, verified)

    # -- internals --------------------------------------------------------------------

    def _probe_fallback(
        self, now_ms: float, desired: float, fixed_bps: float, lowest_bps: int | None, can_pad: bool, paused: bool
    ) -> None:
        probe = self.probe
        if can_pad:
            probe.on_forwarding()
            probe.poll(now_ms, self.bwe, desired, self.sent_bps)
        else:
            probe.defer(now_ms)  # nothing to pad: no probe can prove anything
            if lowest_bps is not None and paused:
                probe.poll_paused(now_ms, self.bwe, fixed_bps + lowest_bps * UP_MARGIN)

    def _measure_sent(self, now_ms: float, sent: SentTotals) -> None:
        samples = self._sent_samples
        samples.append((now_ms, sent.bytes, sent.padding_bytes))
        while len(samples) > 2 and now_ms - samples[1][0] >= SEND_RATE_WINDOW_MS:
            del samples[0]
        t0, b0, p0 = samples[0]
        if now_ms > t0:
            self.sent_bps = max(0.0, (sent.bytes - b0) * 8000.0 / (now_ms - t0))
            self.media_bps = max(0.0, (sent.bytes - sent.padding_bytes - b0 + p0) * 8000.0 / (now_ms - t0))
        history = self._rate_history
        rate = self.sent_bps
        while history and history[-1][1] <= rate:
            history.pop()  # never the maximum again while this newer sample is in the window
        history.append((now_ms, rate))
        while now_ms - history[0][0] > PEAK_WINDOW_MS:
            history.popleft()
        self.peak_sent_bps = history[0][1]

    def _nack_loss(self, now_ms: float, video_packets: int) -> None:
        """Loss from NACKs over the last ``NACK_WINDOW_MS``: they come within a round
        trip of the loss, a receiver report up to a second later. Above 10 % of the
        video packets sent in the window it is a loss report to the fallback estimator
        (RFC 4585 §6.2.1)."""
        history = self._video_sent
        history.append((now_ms, video_packets))
        while now_ms - history[0][0] > NACK_WINDOW_MS:
            del history[0]
        nacked = self._nacked
        while nacked and now_ms - nacked[0][0] > NACK_WINDOW_MS:
            del nacked[0]
        packets = video_packets - history[0][1]
        lost = sum(n for _, n in nacked)
        if packets >= NACK_MIN_PACKETS and lost > 0:
            fraction = lost / (packets + lost)
            if fraction > LOSS_HIGH:
                self.bwe.on_loss(fraction, self.peak_sent_bps, now_ms)

    def _watch_floor_loss(self, now_ms: float) -> None:
        """transport-cc: is there loss above 10 % while sending about the floor? Then
        after ``FLOOR_LOSS_MS`` the estimate may go below the floor (a pause)."""
        at_floor = self.sent_bps <= FLOOR_EVIDENCE * self.floor_bps
        if at_floor and self.gcc.loss_fraction > LOSS_HIGH:
            if self._floor_loss_since is None:
                self._floor_loss_since = now_ms
        else:
            self._floor_loss_since = None
