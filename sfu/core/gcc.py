"""Send-side bandwidth estimation from transport-wide congestion control feedback.

Google Congestion Control (draft-ietf-rmcat-gcc-02, libwebrtc's ``goog_cc``) run on
the sender from per-packet feedback (draft-holmer-rmcat-transport-wide-cc-extensions-01):
for every packet we sent, its send time (our clock), size, and its arrival time at the
receiver (the receiver's clock, unknown offset) or that it was lost. Today's REMB and
receiver-report estimator (:mod:`sfu.core.bandwidth`) stays the fallback for
subscribers that do not negotiate transport-cc.

Pipeline (one :meth:`GccEstimator.on_feedback` per feedback batch):

* :class:`InterArrival` (§5.2): packets sent within 5 ms form a group; a packet
  arriving at most 5 ms after the group completed, earlier than its send spacing
  says, belongs to it too (libwebrtc's burst rule: a receiver that stalled and then
  timestamps a backlog at once). Each completed group gives a send delta and an
  arrival delta against the previous group.
* :class:`TrendlineDetector` (libwebrtc's trendline estimator replacing §5.3's
  Kalman filter, plus §5.4's over-use detector with the adaptive threshold of §5.5):
  the accumulated delay variation, smoothed, is fitted by least squares against the
  groups' send times over the last 20 groups; the slope times ``min(deltas, 60) * 4``
  is compared with an adaptive threshold. Over-use also needs the slope to stand out
  of the points' scatter (a jitter gate): see the class for how it tells a busy
  receiver's timestamp jitter from a queue.
* :class:`AimdRateControl` (§5.5 rate control, libwebrtc's AIMD): on over-use the
  delay-based estimate drops to 0.85x the acknowledged bitrate (at most once per RTT);
  otherwise it grows multiplicatively (8 %/s) far from the last drop point and
  additively near it, never above ``1.5 x acked + 10 kbit/s`` (the estimate cannot
  run ahead of what was sent: probes do that); under-use holds.
* Loss-based control (§6): the smoothed loss fraction; below 2 % the loss-based
  estimate may grow (up to the delay-based one), 2-10 % holds, above 10 % it drops to
  ``rate * (1 - loss / 2)`` at most once per 300 ms + RTT, but only when the loss looks
  like congestion (see :class:`GccEstimator`).
* :class:`AckedBitrate`: what the receiver got, bytes over arrival-time span (500 ms).
* Probes: a cluster of packets sent at a target rate; :func:`evaluate_probe` turns
  its feedback into a :class:`ProbeResult`; a successful probe above the estimate
  raises it in one step.

The target rate (:attr:`GccEstimator.estimate`) is the smaller of the delay-based and
the loss-based estimates. Pure: no clock is read, every time is a parameter in ms;
every window and dict is bounded, and no input raises.

Cost: this runs for every subscriber, on the packet-forwarding CPU budget. Each stage
takes a whole feedback batch in one call (``add_many`` / ``update_many``) and loops
over it with its state in local variables; the per-packet and per-group work is plain
arithmetic on floats (no per-packet method calls or attribute lookups), and the
controllers run once per batch. The single-packet methods (:meth:`InterArrival.add`,
:meth:`TrendlineDetector.update`, :meth:`AckedBitrate.add`) are batches of one.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "NORMAL",
    "OVERUSING",
    "UNDERUSING",
    "AckedBitrate",
    "AimdRateControl",
    "GccEstimator",
    "InterArrival",
    "PacketResultLike",
    "ProbeResult",
    "TrendlineDetector",
    "evaluate_probe",
]

NORMAL = "normal"
OVERUSING = "overusing"
UNDERUSING = "underusing"

# Inter-arrival grouping (draft §5.2, libwebrtc inter_arrival_delta).
GROUP_MS = 5.0  # packets sent within 5 ms of a group's first one belong to it
BURST_DELTA_MS = 5.0  # ... and so does one arriving <= 5 ms after the group, early
MAX_BURST_MS = 100.0  # ... as long as the group's arrivals span < 100 ms
CLOCK_JUMP_MS = 3000.0  # arrival and send deltas this far apart: the receiver's clock jumped
STREAM_TIMEOUT_MS = 2000.0  # a send gap this long starts the delay pipeline afresh

# Trendline and over-use detector (libwebrtc trendline_estimator; draft §5.4-5.5).
TREND_WINDOW = 20  # groups in the least-squares fit
TREND_SMOOTHING = 0.9  # exponential smoothing of the accumulated delay
TREND_GAIN = 4.0  # threshold gain: modified trend = min(deltas, 60) * slope * 4
TREND_MIN_DELTAS = 60
THRESHOLD_INIT_MS = 12.5
THRESHOLD_MIN_MS = 6.0
THRESHOLD_MAX_MS = 600.0
K_UP = 0.0087  # threshold adaptation (1/ms) when the modified trend is above it
K_DOWN = 0.039  # ... and below it
MAX_ADAPT_OFFSET_MS = 15.0  # a trend this far above the threshold does not move it
OVERUSE_TIME_MS = 10.0  # over the threshold this long (send time) and ...
OVERUSE_COUNT = 2  # ... over this many deltas in a row, and not decreasing: over-use
NOISE_Z = 3.0  # jitter gate: the slope must exceed 3 standard errors (see the detector)
QUEUE_BUCKET_MS = 1000.0  # standing queue: delay above its minimum over the last ...
QUEUE_BUCKETS = 30  # ... 30 one-second buckets of send time ...
QUEUE_EVIDENCE_MS = 50.0  # ... by this much lifts the jitter gate and makes loss congestion

# AIMD rate control (draft §5.5, libwebrtc aimd_rate_control).
BETA = 0.85  # over-use: 0.85x the acknowledged bitrate
INCREASE_PER_S = 1.08  # multiplicative increase far from the last drop: 8 %/s
MIN_INCREASE_BPS = 1000.0
MIN_ADDITIVE_BPS_PER_S = 4000.0
ACKED_LIMIT_FACTOR = 1.5  # increases stop at 1.5x acked + 10 kbit/s
ACKED_LIMIT_EXTRA_BPS = 10_000.0
DEFAULT_RTT_MS = 200.0
FRAME_MS = 1000.0 / 30.0  # additive increase: about one packet of a 30 fps frame ...
PACKET_BYTES = 1200.0  # ... per response time (RTT + 100 ms)
LINK_ALPHA = 0.05  # link capacity estimate: smoothing of the acked rate at over-use

# Loss-based control (draft §6, libwebrtc send_side_bandwidth_estimation).
LOSS_LOW = 0.02
LOSS_HIGH = 0.10
LOSS_HEAVY = 0.20  # above this, loss is congestion even without a delay trend
LOSS_MIN_PACKETS = 20  # a loss sample covers at least 20 reported packets
LOSS_SMOOTHING = 0.3  # weight of a new loss sample
LOSS_INTERVAL_MS = 300.0  # loss-based drops at most once per 300 ms + RTT
LOSS_EVIDENCE_MS = 2000.0  # ... and (below LOSS_HEAVY) only this soon after over-use or in a standing queue
LOSS_INCREASE_PER_S = 1.08

# Acknowledged bitrate.
ACK_WINDOW_MS = 500.0
ACK_MIN_SPAN_MS = 200.0
ACK_MAX_PACKETS = 8192

# Probes (libwebrtc probe_bitrate_estimator).
PROBE_MIN_PACKETS = 5
PROBE_MIN_RECEIVED = 0.8  # of the cluster's reported packets
PROBE_MIN_SEND = 0.8  # send rate at least 0.8x the target, else the probe proves nothing
PROBE_SUCCESS = 0.9  # receive rate at least 0.9x the send rate: the link carried it
PROBE_MAX_RATIO = 2.0  # receive rate above 2x the send rate: a receiver burst, nothing proven
PROBE_MAX_INTERVAL_MS = 1000.0
PROBE_END_GAP_MS = 10.0  # a cluster ends with a packet of something else sent this long after it
PROBE_TIMEOUT_MS = 1000.0  # a cluster nothing followed is evaluated this long after its last packet
PROBE_GUARD_MS = 500.0  # decreases stop at the pre-probe estimate until this long after the result
PROBE_GUARD_MAX_MS = 3000.0  # ... or this long after the probe started, whichever is first
PROBE_HISTORY = 16

SEQ_RESET = 1 << 15  # a sequence number this far behind the highest seen: a restart
LOST_MEMORY = 1024  # lost sequence numbers remembered, for a late arrival reported after

# A point of the trendline window: send time, smoothed and accumulated delay (ms), then
# the least-squares terms x, y, r, x², xy, xr, r² relative to the window's origin.
_Point = tuple[float, float, float, float, float, float, float, float, float, float]


class PacketResultLike(Protocol):
    """One packet of a transport-wide feedback batch (e.g. ``sfu.core.twcc``'s)."""

    @property
    def sequence(self) -> int: ...  # unwrapped transport-wide sequence number

    @property
    def send_ms(self) -> float: ...  # our clock

    @property
    def size(self) -> int: ...  # bytes

    @property
    def arrival_ms(self) -> float | None: ...  # the receiver's clock; None: lost

    @property
    def cluster(self) -> int | None: ...  # probe cluster id; None: media


@dataclass(slots=True)
class ProbeResult:
    """What one probe cluster showed.

    Attributes:
        cluster: the cluster id.
        target_bps: the rate it was meant to be sent at (0: unknown cluster).
        send_bps: bytes (minus the last sent packet) over the send-time span.
        receive_bps: bytes (minus the first arrived packet) over the arrival span.
        bps: the proven rate ``min(send, receive)``; 0 when the probe proves nothing.
        success: the link carried it (``receive >= 0.9 x send``, see :func:`evaluate_probe`).
        at_ms: when it was evaluated (our clock).
    """

    cluster: int
    target_bps: float
    send_bps: float
    receive_bps: float
    bps: float
    success: bool
    at_ms: float


class _ClusterStats:
    """Running aggregates of the packets of one probe cluster (O(1) memory)."""

    __slots__ = (
        "bytes",
        "first_arrival",
        "first_arrival_size",
        "first_send",
        "last_arrival",
        "last_send",
        "last_send_size",
        "received",
        "reported",
    )

    def __init__(self) -> None:
        self.reported = 0
        self.received = 0
        self.bytes = 0
        self.first_send = math.inf
        self.last_send = -math.inf
        self.last_send_size = 0
        self.first_arrival = math.inf
        self.first_arrival_size = 0
        self.last_arrival = -math.inf

    def add(self, send_ms: float, arrival_ms: float | None, size: int) -> None:
        self.reported += 1
        if arrival_ms is None:
            return
        self.received += 1
        self.bytes += size
        self.first_send = min(self.first_send, send_ms)
        if send_ms >= self.last_send:
            self.last_send = send_ms
            self.last_send_size = size
        if arrival_ms < self.first_arrival:
            self.first_arrival = arrival_ms
            self.first_arrival_size = size
        self.last_arrival = max(self.last_arrival, arrival_ms)

    def merge(self, other: _ClusterStats) -> None:
        self.reported += other.reported
        if not other.received:
            return
        self.received += other.received
        self.bytes += other.bytes
        self.first_send = min(self.first_send, other.first_send)
        if other.last_send >= self.last_send:
            self.last_send = other.last_send
            self.last_send_size = other.last_send_size
        if other.first_arrival < self.first_arrival:
            self.first_arrival = other.first_arrival
            self.first_arrival_size = other.first_arrival_size
        self.last_arrival = max(self.last_arrival, other.last_arrival)

    def result(self, cluster: int, target_bps: float, at_ms: float) -> ProbeResult:
        send_bps = receive_bps = 0.0
        if self.received >= 2:
            send_span = self.last_send - self.first_send
            recv_span = self.last_arrival - self.first_arrival
            if 0.0 < send_span <= PROBE_MAX_INTERVAL_MS:
                send_bps = (self.bytes - self.last_send_size) * 8000.0 / send_span
            if 0.0 < recv_span <= PROBE_MAX_INTERVAL_MS:
                receive_bps = (self.bytes - self.first_arrival_size) * 8000.0 / recv_span
        valid = (
            self.received >= PROBE_MIN_PACKETS
            and self.received >= PROBE_MIN_RECEIVED * self.reported
            and send_bps > 0.0
            and receive_bps > 0.0
            and send_bps >= PROBE_MIN_SEND * target_bps
            and receive_bps <= PROBE_MAX_RATIO * send_bps
        )
        success = valid and receive_bps >= PROBE_SUCCESS * send_bps
        bps = min(send_bps, receive_bps) if valid else 0.0
        return ProbeResult(cluster, target_bps, send_bps, receive_bps, bps, success, at_ms)


class _Cluster:
    """A probe cluster being reported: its own (tagged) packets, and the other packets
    sent between its first and last ones (media the caller did not tag: the probe
    tests everything sent during it). Packets after its last tagged one wait in
    ``tail`` until another tagged packet shows they were inside it."""

    __slots__ = ("first_tagged", "last_tagged", "stats", "tagged", "tail")

    def __init__(self) -> None:
        self.stats = _ClusterStats()
        self.tail: _ClusterStats | None = None
        self.tagged = 0
        self.first_tagged = math.inf
        self.last_tagged = -math.inf

    def add_tagged(self, send_ms: float, arrival_ms: float | None, size: int) -> None:
        if self.tail is not None:
            self.stats.merge(self.tail)
            self.tail = None
        self.stats.add(send_ms, arrival_ms, size)
        self.tagged += 1
        self.first_tagged = min(self.first_tagged, send_ms)
        self.last_tagged = max(self.last_tagged, send_ms)

    def add_other(self, send_ms: float, arrival_ms: float | None, size: int) -> None:
        if self.tagged:
            if self.tail is None:
                self.tail = _ClusterStats()
            self.tail.add(send_ms, arrival_ms, size)

    def ended_by(self, send_ms: float) -> bool:
        """A packet of something else sent at ``send_ms`` shows the cluster is over:
        it was sent more than :data:`PROBE_END_GAP_MS` and two of the cluster's mean
        packet spacings after the cluster's last packet."""
        gap = send_ms - self.last_tagged
        if gap <= PROBE_END_GAP_MS:
            return False
        if self.tagged < 2:
            return True
        return gap > 2.0 * (self.last_tagged - self.first_tagged) / (self.tagged - 1)


def evaluate_probe(cluster: int, target_bps: float, packets: Iterable[PacketResultLike], at_ms: float) -> ProbeResult:
    """The outcome of probe cluster ``cluster`` sent at ``target_bps`` from the feedback
    of its packets (libwebrtc's probe bitrate estimator, with a success verdict).

    ``send_bps`` = bytes of the received packets minus the last sent one, over their
    send-time span; ``receive_bps`` = the same bytes minus the first arrived one, over
    their arrival-time span (each span in (0, 1 s]). The probe proves nothing
    (``success`` False, ``bps`` 0) when fewer than 5 packets or fewer than 80 % of the
    reported ones arrived, when it was sent at less than 0.8x ``target_bps`` (the
    sender could not keep up: it did not test the target), or when the receive rate is
    above 2x the send rate (the receiver timestamped a backlog at once). Otherwise
    ``bps = min(send, receive)`` and it succeeds when ``receive >= 0.9 x send`` (no
    queue built up: the link carried the rate); a failed probe's ``bps`` is what the
    link delivered, for information.
    """
    stats = _ClusterStats()
    for p in packets:
        stats.add(float(p.send_ms), None if p.arrival_ms is None else float(p.arrival_ms), max(0, int(p.size)))
    return stats.result(cluster, target_bps, at_ms)


class InterArrival:
    """Groups received packets by send time and yields inter-group deltas (§5.2).

    A group is the packets sent within :data:`GROUP_MS` of its first one, plus packets
    that arrive at most :data:`BURST_DELTA_MS` after the group's last arrival while
    their delay went down (arrival spacing shorter than send spacing), as long as the
    group's arrivals span less than :data:`MAX_BURST_MS`: a receiver that stalled
    and then timestamps its backlog at once. A group's send time is its latest send,
    its arrival time the arrival of the last packet added to it (in send order).

    :meth:`add` returns ``(send_delta_ms, arrival_delta_ms, send_ms)`` when a packet
    completes the previous group (``send_ms``: the completed group's send time), else
    None. A send gap above :data:`STREAM_TIMEOUT_MS` or arrival and send deltas more
    than :data:`CLOCK_JUMP_MS` apart (the receiver's clock jumped, e.g. backwards by
    seconds) start afresh and count in :attr:`resets`. A packet sent before the
    current group is ignored. :meth:`add_many` does the same for a feedback batch at
    once (the estimator's path: one call per batch, the state in local variables).
    """

    __slots__ = (
        "_arrival",
        "_first_arrival",
        "_first_send",
        "_prev_arrival",
        "_prev_send",
        "_send",
        "resets",
    )

    def __init__(self) -> None:
        self.resets = 0
        self._first_send: float | None = None  # the current group's first send time (ms)
        self._send = 0.0  # ... its last (largest) send time (ms)
        self._first_arrival = 0.0  # ... its first arrival (ms, receiver's clock)
        self._arrival = 0.0  # ... its last arrival (ms)
        self._prev_send: float | None = None  # the completed group before it: send time (ms)
        self._prev_arrival = 0.0  # ... and arrival (ms)

    def add(self, send_ms: float, arrival_ms: float) -> tuple[float, float, float] | None:
        """One received packet: the delta it completes, or None (see the class)."""
        segments = self.add_many(((send_ms, arrival_ms),))
        return segments[-1][0] if segments[-1] else None

    def add_many(self, packets: Iterable[tuple[float, float]]) -> list[list[tuple[float, float, float]]]:
        """Received packets ``(send_ms, arrival_ms)``, in sequence order: the group
        deltas ``(send_delta_ms, arrival_delta_ms, send_ms)`` they complete, split at
        each reset. The first list continues the current stream; each further list
        follows one reset (it may be empty): the caller starts its delay pipeline
        afresh once per further list."""
        first_send = self._first_send
        send = self._send
        first_arrival = self._first_arrival
        arrival = self._arrival
        prev_send = self._prev_send
        prev_arrival = self._prev_arrival
        out: list[tuple[float, float, float]] = []
        segments = [out]
        for send_ms, arrival_ms in packets:
            if first_send is not None:
                if send_ms < first_send:
                    continue  # sent before the current group
                send_delta = send_ms - send
                arrival_delta = arrival_ms - arrival
                variation = arrival_delta - send_delta
                if send_delta > STREAM_TIMEOUT_MS or variation > CLOCK_JUMP_MS or variation < -CLOCK_JUMP_MS:
                    # A stream timeout, or the receiver's clock jumped: start afresh.
                    self.resets += 1
                    prev_send = None
                    out = []
                    segments.append(out)
                elif (
                    send_ms - first_send <= GROUP_MS
                    or send_delta == 0.0
                    or (
                        variation < 0.0
                        and arrival_delta <= BURST_DELTA_MS
                        and arrival_ms - first_arrival < MAX_BURST_MS
                    )
                ):
                    # The same group: sent within 5 ms of its first packet, or a burst.
                    if send_ms > send:  # noqa: PLR1730 (hot loop: cheaper than max())
                        send = send_ms
                    arrival = arrival_ms
                    continue
                else:
                    # A new group: the current one is complete.
                    if prev_send is not None:
                        out.append((send - prev_send, arrival - prev_arrival, send))
                    prev_send = send
                    prev_arrival = arrival
            first_send = send = send_ms
            first_arrival = arrival = arrival_ms
        self._first_send = first_send
        self._send = send
        self._first_arrival = first_arrival
        self._arrival = arrival
        self._prev_send = prev_send
        self._prev_arrival = prev_arrival
        return segments


class TrendlineDetector:
    """The delay trend over the last groups and the over-use detector on it.

    Per group delta (:meth:`update`): the delay variation ``arrival_delta -
    send_delta`` is accumulated (the one-way delay up to a constant), smoothed
    exponentially (0.9) and fitted by least squares against the group's send time over
    the last :data:`TREND_WINDOW` groups. The slope estimates ``send rate / capacity -
    1`` (0: no queue, > 0: a queue grows). The modified trend ``min(deltas, 60) *
    slope * 4`` is compared with an adaptive threshold ``gamma`` (§5.5: starts at
    12.5 ms and moves towards ``|modified trend|``, per ms of send time, by
    ``K_DOWN`` = 0.039 of the gap when it is below ``gamma`` and ``K_UP`` = 0.0087 when
    above, not at all when more than 15 ms above; within [6, 600] ms): over-use when
    it stays above ``gamma`` for more than 10 ms of send time and over at least 2
    deltas in a row, with the slope not decreasing; under-use below ``-gamma``;
    normal otherwise.

    Two choices differ from libwebrtc, for receivers whose timestamps jitter (a busy
    receiver's scheduling, ±20 ms and more, not cumulative):

    * The fit's x axis is the group's send time (our clock, exact and monotonic)
      rather than its arrival time, so the jitter enters the fit once (in the delay),
      not twice, and a reordered arrival does not move a point backwards.
    * Jitter gate: the same least-squares fit on the unsmoothed accumulated delay gives
      the standard error of the slope (the scatter of the points about the line);
      over-use also needs the slope to exceed :data:`NOISE_Z` (3) standard errors. A
      queue that builds grows the delay steadily (points on a line: a tiny standard
      error, the gate is open at once); jitter scatters the points, so the slope of
      20 jittered points is seldom 3 standard errors from 0. With no jitter the gate
      changes nothing. (The adaptive threshold alone cannot do this: it settles near
      the noise level, so with ±20 ms jitter every few seconds a random slope crosses
      it and each crossing costs 15 %.) The gate is lifted once a standing queue
      shows (:attr:`queue_ms` above :data:`QUEUE_EVIDENCE_MS`): under heavy jitter
      a slight overload (a slope below 3 standard errors) is then still caught once
      it has queued 50 ms.

    The fit keeps running sums over the window, O(1) per group: each point keeps its
    least-squares terms, so the oldest point's are subtracted as they were added and
    the newest one's added. They are relative to the window's oldest point, and
    rebuilt from the points every 4 windows so that rounding does not accumulate. The
    standard error (the gate) and the window's mean delay (:attr:`queue_ms`) are only
    computed when needed. :meth:`update_many` runs a whole feedback batch's deltas in
    one call with the state in local variables (the estimator's path: it runs for
    every subscriber); :meth:`update` is one delta of it.

    :attr:`state` is the last state; :attr:`signalled` is True when the last update
    declared over-use.
    """

    __slots__ = (
        "_accumulated",
        "_deltas",
        "_last_threshold_ms",
        "_mean_delay",
        "_mins",
        "_over_count",
        "_points",
        "_pushes",
        "_smoothed",
        "_sums",
        "_time_over",
        "_x0",
        "_y0",
        "gain",
        "modified_trend",
        "noise_z",
        "signalled",
        "smoothing",
        "state",
        "threshold",
        "trend",
        "window",
    )

    def __init__(
        self,
        window: int = TREND_WINDOW,
        smoothing: float = TREND_SMOOTHING,
        gain: float = TREND_GAIN,
        threshold_ms: float = THRESHOLD_INIT_MS,
        noise_z: float = NOISE_Z,
    ) -> None:
        self.window = max(2, int(window))
        self.smoothing = smoothing
        self.gain = gain
        self.noise_z = noise_z
        self.threshold = threshold_ms
        self.state = NORMAL
        self.signalled = False
        self.trend = 0.0
        self.modified_trend = 0.0
        self._deltas = 0.0  # deltas so far, up to TREND_MIN_DELTAS (a float: it weighs the trend)
        self._accumulated = 0.0
        self._smoothed = 0.0
        # The least-squares window: per point (x, y, r) = (send time, smoothed delay,
        # accumulated delay), all ms, then its terms x, y, r, x², xy, xr, r² relative
        # to the origin (x0, y0) = (the oldest point's send time, its accumulated
        # delay) as of the last rebuild; ``_sums``: the sums of those terms;
        # ``_pushes``: points added since.
        self._points: deque[_Point] = deque(maxlen=self.window)
        self._x0 = self._y0 = 0.0
        self._sums = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
        self._pushes = 0
        self._mins: deque[list[float]] = deque(maxlen=QUEUE_BUCKETS + 1)  # [bucket, min delay]
        self._mean_delay: float | None = None
        self._time_over = -1.0
        self._over_count = 0
        self._last_threshold_ms: float | None = None

    def update(self, send_delta_ms: float, arrival_delta_ms: float, at_ms: float) -> str:
        """One group delta; ``at_ms``: the group's send time. Returns :attr:`state`."""
        self.update_many(((send_delta_ms, arrival_delta_ms, at_ms),))
        return self.state

    def update_many(self, deltas: Iterable[tuple[float, float, float]]) -> bool:
        """Group deltas ``(send_delta_ms, arrival_delta_ms, at_ms)`` in order, each as
        :meth:`update`. Returns True when any of them declared over-use."""
        smoothing = self.smoothing
        keep = 1.0 - smoothing
        window = self.window
        size = float(window)  # (a float divides faster than an int, to the same result)
        rebuild_at = 4 * window
        gain = self.gain
        noise_z = self.noise_z
        count = self._deltas
        accumulated = self._accumulated
        smoothed = self._smoothed
        points = self._points
        n = len(points)
        x0 = self._x0
        y0 = self._y0
        sx, sy, sr, sxx, sxy, sxr, srr = self._sums
        pushes = self._pushes
        mins = self._mins
        latest = mins[-1] if mins else None  # the newest bucket, [bucket, min delay] ...
        latest_bucket = latest[0] if latest else None  # ... and its bucket
        fit_sy: float | None = None  # sy and y0 of the last fit in this batch (the mean delay)
        fit_y0 = sxx_n = 0.0
        threshold = self.threshold
        modified = self.modified_trend
        previous = self.trend
        time_over = self._time_over
        over_count = self._over_count
        last_at = self._last_threshold_ms
        state = self.state
        signalled = self.signalled
        any_signalled = False
        for send_delta, arrival_delta, at in deltas:
            signalled = False
            if count < TREND_MIN_DELTAS:
                count += 1.0
            accumulated += arrival_delta - send_delta
            smoothed = smoothing * smoothed + keep * accumulated

            # The window fit: the oldest point leaves, the new one enters.
            x = at - x0
            y = smoothed - y0
            r = accumulated - y0
            xx = x * x
            xy = x * y
            xr = x * r
            rr = r * r
            point = (at, smoothed, accumulated, x, y, r, xx, xy, xr, rr)
            if n == window:
                _, _, _, ox, oy, o_r, oxx, oxy, oxr, orr = points[0]
                sx -= ox
                sy -= oy
                sr -= o_r
                sxx -= oxx
                sxy -= oxy
                sxr -= oxr
                srr -= orr
            else:
                n += 1
            points.append(point)  # (the oldest one drops out)
            pushes += 1
            # Rebuild every 4 windows, and at the first point (the origin). (Before the
            # window is full, pushes < n: only the first point rebuilds, as with 4 x n.)
            if pushes >= rebuild_at or n == 1:
                x0, y0, (sx, sy, sr, sxx, sxy, sxr, srr) = _rebuild_window(points)
                pushes = 0
            else:
                sx += x
                sy += y
                sr += r
                sxx += xx
                sxy += xy
                sxr += xr
                srr += rr

            # The lowest smoothed delay per one-second bucket of send time.
            bucket = at // QUEUE_BUCKET_MS
            if bucket != latest_bucket:
                latest_bucket = bucket
                latest = [bucket, smoothed]
                mins.append(latest)
                while mins[0][0] < bucket - QUEUE_BUCKETS:
                    mins.popleft()
            elif smoothed < latest[1]:
                latest[1] = smoothed

            # The slope of y (a full window only; else, or when x does not vary, the
            # trend stays). The jitter gate's standard error and the mean delay are
            # computed only when needed (the trend above the threshold).
            trend = previous
            fitted = False
            if n == window:
                sxx_n = sxx - sx * sx / size
                if not sxx_n <= 1e-9:  # (not "> 1e-9": a NaN goes on, as it always did)
                    trend = (sxy - sx * sy / size) / sxx_n
                    fitted = True
                    fit_sy = sy
                    fit_y0 = y0

            # The over-use detector (§5.4).
            if count < 2:
                state = NORMAL
                previous = trend
                continue
            modified = count * trend * gain  # count: min(deltas, TREND_MIN_DELTAS)
            if modified > threshold and (
                trend > noise_z * (_slope_stderr(n, sx, sr, sxr, srr, sxx_n) if fitted else 0.0)
                or _standing_queue(self._mean_delay if fit_sy is None else fit_sy / size + fit_y0, mins)
                > QUEUE_EVIDENCE_MS
            ):
                if time_over < 0.0:
                    time_over = send_delta / 2.0
                else:
                    time_over += send_delta
                over_count += 1
                if time_over > OVERUSE_TIME_MS and over_count >= OVERUSE_COUNT and trend >= previous:
                    time_over = 0.0
                    over_count = 0
                    state = OVERUSING
                    signalled = any_signalled = True
            elif modified < -threshold:
                time_over = -1.0
                over_count = 0
                state = UNDERUSING
            else:
                time_over = -1.0
                over_count = 0
                state = NORMAL
            previous = trend

            # The adaptive threshold (§5.5), per ms of send time since the last update.
            last = last_at
            last_at = at
            if last is None:
                continue
            magnitude = modified if modified >= 0.0 else -modified
            if magnitude > threshold + MAX_ADAPT_OFFSET_MS:
                continue  # a spike (e.g. a route change) does not teach the threshold
            dt = at - last
            if dt < 0.0:
                dt = 0.0
            elif dt > 100.0:
                dt = 100.0
            threshold += (K_DOWN if magnitude < threshold else K_UP) * (magnitude - threshold) * dt
            if not threshold > THRESHOLD_MIN_MS:
                threshold = THRESHOLD_MIN_MS
            elif threshold > THRESHOLD_MAX_MS:
                threshold = THRESHOLD_MAX_MS

        self._deltas = count
        self._accumulated = accumulated
        self._smoothed = smoothed
        self._x0 = x0
        self._y0 = y0
        self._sums = (sx, sy, sr, sxx, sxy, sxr, srr)
        self._pushes = pushes
        if fit_sy is not None:
            self._mean_delay = fit_sy / size + fit_y0
        self.threshold = threshold
        self.modified_trend = modified
        self.trend = previous
        self._time_over = time_over
        self._over_count = over_count
        self._last_threshold_ms = last_at
        self.state = state
        self.signalled = signalled
        return any_signalled

    @property
    def queue_ms(self) -> float:
        """The standing queue (ms): the smoothed delay's mean over the window above its
        lowest value of the last :data:`QUEUE_BUCKETS` seconds (send time); 0 before
        the window is full. Smoothed, so receiver jitter hardly shows in it."""
        return _standing_queue(self._mean_delay, self._mins)


def _standing_queue(mean_delay: float | None, mins: deque[list[float]]) -> float:
    """:attr:`TrendlineDetector.queue_ms` from the window's mean delay and the
    per-bucket minima (ms)."""
    if mean_delay is None or not mins:
        return 0.0
    return max(0.0, mean_delay - min(m for _, m in mins))


def _slope_stderr(n: int, sx: float, sr: float, sxr: float, srr: float, sxx_n: float) -> float:
    """The standard error of the least-squares slope of r over x (the jitter gate of
    :class:`TrendlineDetector`), from the window's sums and ``sxx_n`` = Σ(x - x̄)² > 0."""
    sxr_n = sxr - sx * sr / n
    slope_r = sxr_n / sxx_n
    residual = max(srr - sr * sr / n - slope_r * sxr_n, 0.0)
    return math.sqrt(residual / (n - 2) / sxx_n) if n > 2 else 0.0


def _rebuild_window(
    points: deque[_Point],
) -> tuple[float, float, tuple[float, float, float, float, float, float, float]]:
    """Rebuild :class:`TrendlineDetector`'s window in place relative to its oldest
    point's send time and accumulated delay. Returns ``(x0, y0, (sx, sy, sr, sxx,
    sxy, sxr, srr))``."""
    first = points[0]
    x0 = first[0]
    y0 = first[2]
    sx = sy = sr = sxx = sxy = sxr = srr = 0.0
    rebuilt = []
    for point in points:
        xa = point[0]
        ya = point[1]
        ra = point[2]
        x = xa - x0
        y = ya - y0
        r = ra - y0
        xx = x * x
        xy = x * y
        xr = x * r
        rr = r * r
        sx += x
        sy += y
        sr += r
        sxx += xx
        sxy += xy
        sxr += xr
        srr += rr
        rebuilt.append((xa, ya, ra, x, y, r, xx, xy, xr, rr))
    points.clear()
    points.extend(rebuilt)
    return x0, y0, (sx, sy, sr, sxx, sxy, sxr, srr)


class AimdRateControl:
    """The delay-based estimate (bit/s): libwebrtc's AIMD rate control (§5.5).

    State machine: over-use -> decrease, under-use -> hold, normal after hold ->
    increase. Decrease: to ``0.85 x acked`` (never up; at most once per RTT, clamped
    to [10, 200] ms, unless acked fell below half the estimate); the acked rate feeds
    a link capacity estimate (its mean and deviation). Increase: multiplicative
    (8 %/s) while the acked rate is outside ``link estimate +- 3 deviations`` (far from
    the last drop point), additive near it (about one packet per response time,
    RTT + 100 ms); never above ``1.5 x acked + 10 kbit/s``.
    """

    __slots__ = (
        "_last_change_ms",
        "_last_decrease_ms",
        "_link_kbps",
        "_link_var",
        "_state",
        "bitrate",
        "max_bps",
        "min_bps",
        "rtt_ms",
    )

    def __init__(self, initial_bps: float, min_bps: float, max_bps: float) -> None:
        self.min_bps = min_bps
        self.max_bps = max_bps
        self.bitrate = min(max_bps, max(min_bps, float(initial_bps)))
        self.rtt_ms = DEFAULT_RTT_MS
        self._state = "hold"
        self._last_change_ms: float | None = None
        self._last_decrease_ms: float | None = None
        self._link_kbps: float | None = None
        self._link_var = 0.4

    def set_estimate(self, bps: float, now_ms: float) -> None:
        """Set the estimate (a probe result); a rate above the link capacity estimate's
        upper bound forgets it (the link changed)."""
        self.bitrate = min(self.max_bps, max(self.min_bps, bps))
        self._last_change_ms = now_ms
        if self._link_kbps is not None and self.bitrate > self._upper_bps():
            self._link_kbps = None

    def time_to_reduce(self, now_ms: float, acked_bps: float) -> bool:
        last = self._last_decrease_ms
        if last is None or now_ms - last >= min(200.0, max(10.0, self.rtt_ms)):
            return True
        return acked_bps < 0.5 * self.bitrate

    def update(self, usage: str, acked_bps: float | None, now_ms: float, floor_bps: float = 0.0) -> float:
        """One feedback's detector state; ``floor_bps``: a decrease stops there (but
        never raises the estimate). Returns the estimate."""
        throughput = self.bitrate if acked_bps is None else acked_bps
        if usage == OVERUSING:
            if not self.time_to_reduce(now_ms, throughput):
                return self.bitrate
            self._state = "decrease"
        elif usage == UNDERUSING:
            self._state = "hold"
        elif self._state == "hold":
            self._state = "increase"
            self._last_change_ms = now_ms
        if self._state == "increase":
            self._increase(throughput, now_ms)
        elif self._state == "decrease":
            self._decrease(throughput, now_ms, floor_bps)
        return self.bitrate

    def _increase(self, throughput: float, now_ms: float) -> None:
        if self._link_kbps is not None and throughput > self._upper_bps():
            self._link_kbps = None
        limit = ACKED_LIMIT_FACTOR * throughput + ACKED_LIMIT_EXTRA_BPS
        last = self._last_change_ms
        dt = 0.0 if last is None else min(max(now_ms - last, 0.0), 1000.0)
        current = self.bitrate
        if current < limit:
            if self._link_kbps is not None:
                increase = self._additive_bps_per_s() * dt / 1000.0
            else:
                increase = max(current * (INCREASE_PER_S ** (dt / 1000.0) - 1.0), MIN_INCREASE_BPS)
            self.bitrate = min(self.max_bps, max(self.min_bps, min(current + increase, limit)))
        self._last_change_ms = now_ms

    def _decrease(self, throughput: float, now_ms: float, floor_bps: float) -> None:
        target = max(BETA * throughput, floor_bps)
        if target < self.bitrate:
            self.bitrate = max(self.min_bps, target)
        if self._link_kbps is not None and throughput < self._lower_bps():
            self._link_kbps = None
        self._on_overuse(throughput)
        self._state = "hold"
        self._last_change_ms = now_ms
        self._last_decrease_ms = now_ms

    def _on_overuse(self, throughput: float) -> None:
        sample = throughput / 1000.0
        if self._link_kbps is None:
            self._link_kbps = sample
        else:
            self._link_kbps = (1.0 - LINK_ALPHA) * self._link_kbps + LINK_ALPHA * sample
        norm = max(self._link_kbps, 1.0)
        error = self._link_kbps - sample
        var = (1.0 - LINK_ALPHA) * self._link_var + LINK_ALPHA * error * error / norm
        self._link_var = min(2.5, max(0.4, var))

    def _deviation_kbps(self) -> float:
        return math.sqrt(self._link_var * (self._link_kbps or 0.0))

    def _upper_bps(self) -> float:
        return ((self._link_kbps or 0.0) + 3.0 * self._deviation_kbps()) * 1000.0

    def _lower_bps(self) -> float:
        return max(0.0, (self._link_kbps or 0.0) - 3.0 * self._deviation_kbps()) * 1000.0

    def _additive_bps_per_s(self) -> float:
        frame_bits = self.bitrate * FRAME_MS / 1000.0
        packets = max(1.0, math.ceil(frame_bits / (8.0 * PACKET_BYTES)))
        response_s = (self.rtt_ms + 100.0) / 1000.0
        return max(MIN_ADDITIVE_BPS_PER_S, frame_bits / packets / response_s)


class AckedBitrate:
    """The rate the receiver got (bit/s): bytes of the received packets whose arrival
    is within :data:`ACK_WINDOW_MS` of the latest one, minus the earliest packet's, over
    their arrival span. A value needs a span of at least :data:`ACK_MIN_SPAN_MS` (one
    feedback batch is too short; a receiver that timestamps a backlog at once would
    look fast), until then the last value stands (None at first). An arrival more than
    a window behind the latest one is a straggler and ignored, but three in a row mean
    the receiver's clock went back: the window starts afresh.
    """

    __slots__ = ("_behind", "_bytes", "_head", "_packets", "bps")

    def __init__(self) -> None:
        self.bps: float | None = None
        self._packets: deque[tuple[float, int]] = deque()
        self._bytes = 0
        self._head = -math.inf
        self._behind = 0

    def add(self, arrival_ms: float, size: int) -> None:
        """One received packet: its arrival (ms, the receiver's clock) and bytes."""
        self.add_many(((arrival_ms, size),))

    def add_many(self, packets: Iterable[tuple[float, int]]) -> None:
        """Received packets ``(arrival_ms, size)`` in sequence order, each as :meth:`add`
        (the tuples are kept as they are)."""
        window = self._packets
        head = self._head
        behind = self._behind
        total = self._bytes
        for packet in packets:
            arrival_ms = packet[0]
            if arrival_ms > head:
                head = arrival_ms
                behind = 0
            elif arrival_ms < head - ACK_WINDOW_MS:
                behind += 1
                if behind < 3:
                    continue  # a straggler
                behind = 0  # the receiver's clock went back: start afresh
                window.clear()
                total = 0
                head = arrival_ms
            else:
                behind = 0
            window.append(packet)
            total += packet[1]
        while len(window) > ACK_MAX_PACKETS:
            total -= window.popleft()[1]
        self._head = head
        self._behind = behind
        self._bytes = total

    def update(self) -> float | None:
        """Prune the window and refresh :attr:`bps`."""
        packets = self._packets
        start = self._head - ACK_WINDOW_MS
        total = self._bytes
        while packets and packets[0][0] < start:
            total -= packets.popleft()[1]
        self._bytes = total
        if len(packets) >= 2:
            first_arrival, first_size = packets[0]
            span = self._head - first_arrival
            if span >= ACK_MIN_SPAN_MS:
                self.bps = (self._bytes - first_size) * 8000.0 / span
        return self.bps


class GccEstimator:
    """A send-side estimate (bit/s) from transport-wide feedback: GCC's delay-based
    and loss-based controllers, the acknowledged bitrate and probe results.

    Attributes (read them after :meth:`on_feedback`):
        estimate: the target send rate, ``min(delay_based_bps, loss_based_bps)``.
        acked_bps: what the receiver got over the last ~500 ms (None at first).
        delay_based_bps, loss_based_bps: the two controllers' estimates.
        loss_fraction: the smoothed loss (0..1).
        state: the over-use detector's last state (``normal`` / ``overusing`` /
            ``underusing``).
        overuse_ms: when (our clock) the detector last declared over-use.
        probe_results: the last :data:`PROBE_HISTORY` probe results by cluster id.

    Loss (§6): a sample covers at least :data:`LOSS_MIN_PACKETS` reported packets;
    :attr:`loss_fraction` smooths samples (weight 0.3). Below 2 % the loss-based
    estimate grows 8 %/s up to the delay-based one; 2-10 % holds; above 10 % it drops
    to ``min(loss-based, delay-based) x (1 - loss / 2)``, at most once per 300 ms +
    RTT, and only when the loss looks like congestion: the delay detector declared
    over-use within the last :data:`LOSS_EVIDENCE_MS`, or a standing queue shows
    (:attr:`TrendlineDetector.queue_ms` above :data:`QUEUE_EVIDENCE_MS`: a full
    drop-tail queue has a flat but high delay), or the loss is above 20 %. Random loss
    with a flat, low delay (a lossy radio link) is not a queue overflowing, and the
    hold band keeps the estimate at moderate loss; heavy loss is acted on regardless
    (a policer drops without queueing).

    Delay-based (:class:`AimdRateControl`): over-use before any acknowledged bitrate
    is known takes 0.85x the estimate.

    Probes: :meth:`start_probe` tells the target rate; the cluster's packets carry its
    id. Untagged packets sent between the cluster's first and last packets count in it
    (the caller may tag only the padding that tops media up to the target: the probe
    tests everything sent during it). A cluster is evaluated (:func:`evaluate_probe`)
    once the feedback reports a packet of something else sent clearly after its last
    one (more than 10 ms and two of its packet spacings), or
    :data:`PROBE_TIMEOUT_MS` after its last packet was sent. A success above the delay-based estimate sets it (and
    the loss-based one, unless loss is above 10 %) to ``bps`` at once, unless the
    detector is over-using. A failed probe lowers nothing; and since a probe above
    the capacity builds a queue of its own, from :meth:`start_probe` until
    :data:`PROBE_GUARD_MS` after the result, delay- and loss-based decreases stop at
    the estimate the probe started from.

    Feedback: results are taken in sequence order (a batch is sorted if it is not);
    a sequence number at or below the highest seen (duplicates, a stale batch) is
    skipped unless it is more than 32768 behind (the sender restarted), except a
    packet reported lost before and received now (a late arrival): it is taken off the
    loss count and its bytes count as acknowledged. Non-finite times are skipped.
    """

    __slots__ = (
        "_acked",
        "_aimd",
        "_clusters",
        "_detector",
        "_guard_floor",
        "_guard_until_ms",
        "_highest",
        "_inter",
        "_loss_decrease_ms",
        "_loss_expected",
        "_loss_lost",
        "_loss_ms",
        "_lost",
        "_new_probes",
        "_probe_ends",
        "_probe_targets",
        "delay_based_bps",
        "estimate",
        "loss_based_bps",
        "loss_fraction",
        "max_bps",
        "min_bps",
        "overuse_ms",
        "probe_results",
        "rtt_ms",
        "state",
    )

    def __init__(self, initial_bps: int = 1_000_000, min_bps: int = 30_000, max_bps: int = 50_000_000) -> None:
        self.min_bps = min_bps
        self.max_bps = max(max_bps, min_bps)
        initial = self._clamp(initial_bps)
        self.estimate = initial
        self.delay_based_bps = initial
        self.loss_based_bps = initial
        self.loss_fraction = 0.0
        self.state = NORMAL
        self.overuse_ms: float | None = None
        self.probe_results: dict[int, ProbeResult] = {}
        self.rtt_ms = DEFAULT_RTT_MS
        self._acked = AckedBitrate()
        self._inter = InterArrival()
        self._detector = TrendlineDetector()
        self._aimd = AimdRateControl(initial, self.min_bps, self.max_bps)
        self._highest: int | None = None
        self._loss_lost = 0
        self._loss_expected = 0
        self._loss_ms: float | None = None
        self._loss_decrease_ms: float | None = None
        self._probe_targets: dict[int, tuple[float, float]] = {}  # cluster -> (target bit/s, started ms)
        self._probe_ends: dict[int, float] = {}  # cluster -> when its sending ends (ms), if the caller said
        self._clusters: dict[int, _Cluster] = {}
        self._lost: dict[int, None] = {}  # recently reported lost sequence numbers (ordered set)
        self._guard_until_ms: float | None = None
        self._guard_floor = 0.0
        self._new_probes: list[ProbeResult] = []

    @property
    def acked_bps(self) -> float | None:
        """The acknowledged bitrate (bit/s) over the last ~500 ms of arrivals."""
        return self._acked.bps

    def _clamp(self, bps: float) -> int:
        return int(min(self.max_bps, max(self.min_bps, bps)))

    def on_rtt(self, rtt_ms: float, now_ms: float) -> None:
        """An RTT sample (ms, e.g. from RTCP): AIMD's reduction interval and additive
        step, and the loss-based reaction interval, follow it."""
        if math.isfinite(rtt_ms) and rtt_ms >= 0.0:
            self.rtt_ms = min(rtt_ms, 10_000.0)
            self._aimd.rtt_ms = self.rtt_ms

    def start_probe(self, cluster: int, target_bps: float, now_ms: float, duration_ms: float | None = None) -> None:
        """The caller is about to send probe cluster ``cluster`` at ``target_bps``,
        for ``duration_ms`` when it says: then the cluster counts as over only once a
        packet sent after its end is reported (a caller that pads in bursts every few
        ms leaves gaps that would otherwise look like its end); else the end is
        inferred from the cluster's own packet spacing."""
        targets = self._probe_targets
        targets.pop(cluster, None)
        targets[cluster] = (float(target_bps), float(now_ms))
        ends = self._probe_ends
        ends.pop(cluster, None)
        if duration_ms is not None:
            ends[cluster] = float(now_ms) + float(duration_ms)
            while len(ends) > PROBE_HISTORY:
                del ends[next(iter(ends))]
        while len(targets) > PROBE_HISTORY:
            del targets[next(iter(targets))]
        guarded = self._guard_until_ms is not None and now_ms <= self._guard_until_ms
        self._guard_floor = max(float(self.estimate), self._guard_floor) if guarded else float(self.estimate)
        self._guard_until_ms = now_ms + PROBE_GUARD_MAX_MS  # shortened when the result comes

    def on_feedback(self, results: Sequence[PacketResultLike], now_ms: float) -> None:
        """One batch of transport-wide feedback, received at ``now_ms`` (our clock).

        One pass over the results (in sequence order: duplicates, late arrivals,
        losses, probe clusters) collects the received packets; the acknowledged
        bitrate, the inter-arrival groups and the trendline detector then take them in
        one call each, and the controllers run once per batch."""
        items = results if isinstance(results, (list, tuple)) else list(results)
        sequences = [r.sequence for r in items]
        if sequences != sorted(sequences):
            items = sorted(items, key=_sequence)  # stable: duplicates keep their order
        clusters = self._clusters
        lost_seqs = self._lost
        received: list[tuple[float, float]] = []  # (send_ms, arrival_ms): the delay groups
        arrivals: list[tuple[float, int]] = []  # (arrival_ms, size): the acked bitrate
        lost = recovered = 0
        highest = self._highest
        for r in items:
            seq = r.sequence
            if highest is not None and seq <= highest and seq > highest - SEQ_RESET:
                arrival = r.arrival_ms
                if arrival is not None and seq in lost_seqs and arrival - arrival == 0.0:
                    # Reported lost before, arrived late after all: not a loss; the
                    # receiver got its bytes (too late for the delay groups).
                    del lost_seqs[seq]
                    recovered += 1
                    arrivals.append((arrival, max(0, r.size)))
                continue
            highest = seq
            send = r.send_ms
            arrival = r.arrival_ms
            # Finite times only (x - x is 0 for a finite x, NaN for inf and NaN).
            if send - send != 0.0 or (arrival is not None and arrival - arrival != 0.0):
                continue
            size = r.size
            if not size > 0:
                size = 0
            cluster = r.cluster
            if clusters and (cluster not in clusters or len(clusters) > 1):
                for c, open_cluster in list(clusters.items()):
                    if c == cluster:
                        continue
                    end = self._probe_ends.get(c)
                    if (send > end + PROBE_END_GAP_MS) if end is not None else open_cluster.ended_by(send):
                        self._finish_probe(c, clusters.pop(c), now_ms)
                    else:
                        open_cluster.add_other(send, arrival, size)
            # A tagged packet counts in its cluster, unless that was evaluated already
            # (a straggler: plain media now).
            if cluster is not None and (cluster in clusters or cluster not in self.probe_results):
                open_cluster = clusters.get(cluster)
                if open_cluster is None:
                    open_cluster = clusters[cluster] = _Cluster()
                    while len(clusters) > PROBE_HISTORY:
                        old = next(iter(clusters))
                        self._finish_probe(old, clusters.pop(old), now_ms)
                open_cluster.add_tagged(send, arrival, size)
            if arrival is None:
                lost += 1
                lost_seqs[seq] = None
                if len(lost_seqs) > LOST_MEMORY:
                    del lost_seqs[next(iter(lost_seqs))]
                continue
            arrivals.append((arrival, size))
            received.append((send, arrival))
        self._highest = highest
        expected = len(received) + lost  # the new results with finite times
        if arrivals:
            self._acked.add_many(arrivals)
        if received:
            signalled = False
            for i, deltas in enumerate(self._inter.add_many(received)):
                if i:  # the inter-arrival stream restarted: so does the delay pipeline
                    self._detector = TrendlineDetector()
                if deltas and self._detector.update_many(deltas):
                    signalled = True
            if signalled:
                self.overuse_ms = now_ms
        if clusters:
            timed_out = [
                c for c, open_cluster in clusters.items() if now_ms - open_cluster.last_tagged >= PROBE_TIMEOUT_MS
            ]
            for c in timed_out:
                self._finish_probe(c, clusters.pop(c), now_ms)
        self._loss_lost -= recovered  # may go below 0: the next samples make up for it
        if expected == 0:
            return  # nothing new: nothing to control
        self.state = self._detector.state
        acked_bps = self._acked.update()
        floor = self._floor(now_ms)
        aimd = self._aimd
        aimd.update(self.state, acked_bps, now_ms, floor)
        for result in self._new_probes:
            if result.success and self.state != OVERUSING and now_ms - result.at_ms <= PROBE_TIMEOUT_MS:
                if result.bps > aimd.bitrate:
                    aimd.set_estimate(result.bps, now_ms)
                if self.loss_fraction <= LOSS_HIGH and result.bps > self.loss_based_bps:
                    self.loss_based_bps = self._clamp(result.bps)
        self._new_probes.clear()
        self.delay_based_bps = self._clamp(aimd.bitrate)
        self._loss_update(expected, lost, now_ms, floor)
        self.estimate = self._clamp(min(self.delay_based_bps, self.loss_based_bps))

    def _floor(self, now_ms: float) -> float:
        until = self._guard_until_ms
        if until is None:
            return 0.0
        if now_ms > until:
            self._guard_until_ms = None
            return 0.0
        return self._guard_floor

    def _finish_probe(self, cluster: int, open_cluster: _Cluster, now_ms: float) -> None:
        target, _ = self._probe_targets.pop(cluster, (0.0, 0.0))
        self._probe_ends.pop(cluster, None)
        result = open_cluster.stats.result(cluster, target, now_ms)
        results = self.probe_results
        results.pop(cluster, None)
        results[cluster] = result
        while len(results) > PROBE_HISTORY:
            del results[next(iter(results))]
        self._new_probes.append(result)
        del self._new_probes[:-PROBE_HISTORY]
        pending = any(now_ms - started < PROBE_GUARD_MAX_MS for _, started in self._probe_targets.values())
        if self._guard_until_ms is not None and not pending:
            self._guard_until_ms = min(self._guard_until_ms, now_ms + PROBE_GUARD_MS)

    def _loss_update(self, expected: int, lost: int, now_ms: float, floor: float) -> None:
        self._loss_expected += expected
        self._loss_lost += lost
        if self._loss_expected >= LOSS_MIN_PACKETS:
            sample = min(1.0, max(0, self._loss_lost) / self._loss_expected)
            self.loss_fraction += LOSS_SMOOTHING * (sample - self.loss_fraction)
            self._loss_expected = 0
            self._loss_lost = min(0, self._loss_lost)
        last = self._loss_ms
        self._loss_ms = now_ms
        dt = 0.0 if last is None else min(max(now_ms - last, 0.0), 1000.0)
        loss = self.loss_fraction
        loss_based = float(self.loss_based_bps)
        if loss < LOSS_LOW:
            if loss_based < self.delay_based_bps:
                grown = loss_based * LOSS_INCREASE_PER_S ** (dt / 1000.0) + MIN_INCREASE_BPS * dt / 1000.0
                loss_based = min(grown, float(self.delay_based_bps))
        elif loss > LOSS_HIGH:
            since = self._loss_decrease_ms
            interval = LOSS_INTERVAL_MS + self.rtt_ms
            evidence = (
                loss > LOSS_HEAVY
                or (self.overuse_ms is not None and now_ms - self.overuse_ms <= LOSS_EVIDENCE_MS)
                or self._detector.queue_ms > QUEUE_EVIDENCE_MS
            )
            if evidence and (since is None or now_ms - since >= interval):
                base = min(loss_based, float(self.delay_based_bps))
                target = max(base * (1.0 - 0.5 * loss), floor)
                loss_based = min(loss_based, target)
                self._loss_decrease_ms = now_ms
        self.loss_based_bps = self._clamp(loss_based)


def _sequence(r: PacketResultLike) -> int:
    return r.sequence
