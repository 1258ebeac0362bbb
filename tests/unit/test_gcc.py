"""The transport-wide (send-side) GCC estimator on a virtual clock.

A small link simulator drives it: a paced sender of 1200-byte packets (at the
estimate or a fixed rate), a drop-tail FIFO bottleneck of capacity C bit/s, a fixed
propagation delay each way, optional random loss and receiver timestamp jitter, and
transport-wide feedback every 50 ms. Randomness comes from ``random.Random(seed)``.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import pytest

from sfu.core.gcc import (
    ACK_MAX_PACKETS,
    NORMAL,
    OVERUSING,
    PROBE_HISTORY,
    UNDERUSING,
    GccEstimator,
    InterArrival,
    TrendlineDetector,
    evaluate_probe,
)

PACKET = 1200
FEEDBACK_MS = 50.0


@dataclass(slots=True)
class Result:
    sequence: int
    send_ms: float
    size: int
    arrival_ms: float | None
    cluster: int | None = None


class Link:
    """A drop-tail FIFO of ``capacity_bps`` (None: no bottleneck) holding at most
    ``queue_bytes``, then ``prop_ms`` of propagation; ``loss``: random loss after the
    queue; ``jitter_ms``: the receiver's timestamps jitter uniformly by that much (not
    cumulative: delivery itself is not delayed). The receiver's clock is offset."""

    def __init__(
        self,
        capacity_bps: float | None,
        queue_bytes: int = 60_000,
        prop_ms: float = 40.0,
        loss: float = 0.0,
        jitter_ms: float = 0.0,
        seed: int = 1,
        offset_ms: float = 987_654.0,
    ) -> None:
        self.capacity_bps = capacity_bps
        self.queue_bytes = queue_bytes
        self.prop_ms = prop_ms
        self.loss = loss
        self.jitter_ms = jitter_ms
        self.rng = random.Random(seed)
        self.offset_ms = offset_ms
        self.free_at = 0.0
        self.pending: list[tuple[Result, float | None]] = []  # (reported, true arrival)

    def send(self, seq: int, t: float, size: int, cluster: int | None) -> None:
        cap = self.capacity_bps
        depart: float | None = t
        if cap is not None:
            backlog = max(0.0, self.free_at - t) * cap / 8000.0
            if backlog + size > self.queue_bytes:
                depart = None  # drop-tail
            else:
                depart = max(t, self.free_at) + size * 8000.0 / cap
                self.free_at = depart
        arrival = None
        if depart is not None and not (self.loss and self.rng.random() < self.loss):
            arrival = depart + self.prop_ms
        reported = None
        if arrival is not None:
            reported = arrival + self.offset_ms
            if self.jitter_ms:
                reported += self.rng.uniform(-self.jitter_ms, self.jitter_ms)
        self.pending.append((Result(seq, t, size, reported, cluster), arrival))

    def feedback(self, t: float) -> list[Result]:
        """What a feedback sent by the receiver ``prop_ms`` ago reports: every packet up
        to the last one that had arrived, the lost ones among them with no arrival."""
        cutoff = t - self.prop_ms
        known = 0
        for i, (_, arrival) in enumerate(self.pending):
            if arrival is None:
                continue
            if arrival > cutoff:
                break
            known = i + 1
        out = [r for r, _ in self.pending[:known]]
        del self.pending[:known]
        return out


class Sim:
    """Sends at ``rate`` (None: the estimate, at most ``max_rate``), probe clusters on
    demand, and delivers feedback (and the RTT) every 50 ms."""

    def __init__(self, est: GccEstimator, link: Link, rate: float | None = None, max_rate: float | None = None) -> None:
        self.est = est
        self.link = link
        self.rate = rate
        self.max_rate = max_rate
        self.t = 0.0
        self.seq = 0
        self.next_send = 0.0
        self.next_feedback = FEEDBACK_MS
        self.probe: tuple[int, float, float] | None = None  # cluster, bit/s, until
        self.probe_media_share = 0.0  # of the probe's packets, untagged media
        self._media_credit = 0.0
        self.history: list[tuple[float, int, float | None, str]] = []  # t, estimate, acked, state

    def start_probe(self, cluster: int, rate: float, duration_ms: float, media_bps: float = 0.0) -> None:
        """Send at ``rate`` for ``duration_ms``: all packets tagged, or (``media_bps``)
        untagged media at that rate interleaved with tagged padding topping it up."""
        self.est.start_probe(cluster, rate, self.t)
        self.probe = (cluster, rate, self.t + duration_ms)
        self.probe_media_share = min(1.0, media_bps / rate)
        self._media_credit = 0.0
        self.next_send = max(self.next_send, self.t)

    def _rate(self) -> tuple[float, int | None]:
        if self.probe is not None and self.next_send < self.probe[2]:
            self._media_credit += self.probe_media_share
            if self._media_credit >= 1.0:
                self._media_credit -= 1.0
                return self.probe[1], None
            return self.probe[1], self.probe[0]
        self.probe = None
        rate = self.rate if self.rate is not None else self.est.estimate
        if self.max_rate is not None:
            rate = min(rate, self.max_rate)
        return rate, None

    def run_until(self, end: float) -> None:
        while True:
            t = min(self.next_send, self.next_feedback)
            if t > end:
                self.t = end
                return
            self.t = t
            if self.next_send <= self.next_feedback:
                rate, cluster = self._rate()
                self.link.send(self.seq, t, PACKET, cluster)
                self.seq += 1
                self.next_send = t + PACKET * 8000.0 / max(rate, 1.0)
            else:
                self.est.on_rtt(2 * self.link.prop_ms, t)
                self.est.on_feedback(self.link.feedback(t), t)
                self.history.append((t, self.est.estimate, self.est.acked_bps, self.est.state))
                self.next_feedback = t + FEEDBACK_MS

    def since(self, t0: float) -> list[tuple[float, int, float | None, str]]:
        return [h for h in self.history if h[0] >= t0]


# --- the over-use detector alone ------------------------------------------------------


def _jitter(seed: int, n: int, ms: float) -> list[float]:
    rng = random.Random(seed)
    marks = [rng.uniform(-ms, ms) for _ in range(n + 1)]
    return [marks[i + 1] - marks[i] for i in range(n)]


DETECTOR_CASES = [
    # (name, delay variation per 5 ms group, noise_z, first over-use index range or None, last state)
    ("flat", [0.0] * 80, 3.0, None, NORMAL),
    ("queue grows 20 %", [1.0] * 80, 3.0, (19, 25), OVERUSING),
    ("queue grows 5 %", [0.25] * 80, 3.0, (25, 40), OVERUSING),
    ("queue grows 2 %: below the threshold", [0.1] * 80, 3.0, None, NORMAL),
    ("queue drains", [-1.0] * 80, 3.0, None, UNDERUSING),
    ("flat, then a queue", [0.0] * 40 + [1.0] * 40, 3.0, (45, 55), OVERUSING),
    ("alternating +-20 ms", [20.0, -20.0] * 40, 3.0, None, NORMAL),
    ("jitter +-20 ms, gated", _jitter(5, 400, 20.0), 3.0, None, None),
    ("jitter +-20 ms, classic (no gate)", _jitter(5, 400, 20.0), 0.0, (20, 100), None),
    ("jitter +-20 ms and a 10 % queue", [d + 0.5 for d in _jitter(5, 400, 20.0)], 3.0, (60, 200), None),
]


@pytest.mark.parametrize(
    ("name", "variations", "noise_z", "first_overuse", "last_state"), DETECTOR_CASES, ids=[c[0] for c in DETECTOR_CASES]
)
def test_trendline_detector_states(name, variations, noise_z, first_overuse, last_state):
    det = TrendlineDetector(noise_z=noise_z)
    states = []
    t = 0.0
    for d in variations:
        t += 5.0
        states.append(det.update(5.0, 5.0 + d, t))
        assert NORMAL == states[-1] or states[-1] in (OVERUSING, UNDERUSING)
    if first_overuse is None:
        assert OVERUSING not in states
    else:
        lo, hi = first_overuse
        assert OVERUSING in states
        assert lo <= states.index(OVERUSING) <= hi
    if last_state is not None:
        assert states[-1] == last_state
    assert 6.0 <= det.threshold <= 600.0


@pytest.mark.parametrize(("spacing", "deltas_over"), [(5.0, 3), (10.0, 2)])
def test_detector_needs_a_full_window_two_deltas_and_10_ms_over_the_threshold(spacing, deltas_over):
    # A steep queue from the start: nothing before the window (20 groups) is full; then
    # over-use needs more than 10 ms of send time over the threshold (the first delta
    # counts half its spacing) and at least 2 deltas: 3 deltas 5 ms apart, 2 at 10 ms.
    det = TrendlineDetector()
    over = []
    states = []
    for i in range(40):
        threshold = det.threshold
        states.append(det.update(spacing, 2 * spacing, spacing * (i + 1)))
        over.append(det.modified_trend > threshold)
    first_over = over.index(True)
    assert first_over >= 19
    assert states.index(OVERUSING) == first_over + deltas_over - 1
    # Over-use is declared on one delta, then the counters start again.
    det = TrendlineDetector()
    signals = 0
    for i in range(100):
        det.update(5.0, 6.0, 5.0 * (i + 1))
        signals += det.signalled
    assert 10 <= signals <= 50


def test_inter_arrival_groups_by_send_time_and_merges_a_receiver_burst():
    ia = InterArrival()
    # Groups of 5 ms of send time: packets at 0, 2, 4 ms are one group.
    out = [ia.add(s, 1000.0 + s + 30.0) for s in (0.0, 2.0, 4.0, 10.0, 12.0, 20.0)]
    assert out[:4] == [None, None, None, None]
    assert out[5] == pytest.approx((8.0, 8.0, 12.0))  # group (10, 12) against (0, 2, 4)
    # A receiver stall: packets sent 10 ms apart, timestamped 1 ms apart after a 40 ms
    # stall, join the group being completed (libwebrtc's burst rule).
    ia = InterArrival()
    assert ia.add(0.0, 100.0) is None
    assert ia.add(10.0, 150.0) is None  # a new group starts; nothing to compare yet
    assert ia.add(20.0, 151.0) is None  # burst: joins (10, 20)
    assert ia.add(30.0, 152.0) is None  # burst
    delta = ia.add(40.0, 140.0 + 20.0)  # arrival spacing back to normal: (10..30) completes
    assert delta == pytest.approx((30.0, 52.0, 30.0))
    # The receiver's clock jumping back by seconds starts afresh.
    resets = ia.resets
    assert ia.add(50.0, -5000.0) is None
    assert ia.resets == resets + 1


# --- the probe rule ----------------------------------------------------------------------


def _cluster(n: int, send_gap: float, arrival_gap: float, lost: tuple[int, ...] = (), cluster: int = 1) -> list[Result]:
    return [
        Result(i, 1000.0 + i * send_gap, PACKET, None if i in lost else 5000.0 + i * arrival_gap, cluster)
        for i in range(n)
    ]


PROBE_CASES = [
    # (name, packets, target bit/s, success, bps)
    ("clean 1 Mbit/s", _cluster(10, 9.6, 9.6), 1_000_000, True, 1_000_000),
    ("a queue: the link gave 500 kbit/s", _cluster(10, 9.6, 19.2), 1_000_000, False, 500_000),
    ("a little queue (receive 0.92x)", _cluster(10, 9.6, 9.6 / 0.92), 1_000_000, True, 920_000),
    ("too few packets", _cluster(4, 9.6, 9.6), 1_000_000, False, 0),
    ("30 % lost", _cluster(10, 9.6, 9.6, lost=(2, 4, 6)), 1_000_000, False, 0),
    # 9 of 10 arrived: enough; the lost packet's bytes count for neither rate.
    ("10 % lost still counts", _cluster(10, 9.6, 9.6, lost=(5,)), 1_000_000, True, 8 / 9 * 1_000_000),
    ("sent too slowly for the target", _cluster(10, 9.6, 9.6), 2_000_000, False, 0),
    ("receiver burst (receive > 2x send)", _cluster(10, 9.6, 2.0), 1_000_000, False, 0),
    ("unknown target", _cluster(10, 9.6, 9.6), 0, True, 1_000_000),
    ("no send span", [Result(i, 1000.0, PACKET, 5000.0 + i, 1) for i in range(8)], 1_000_000, False, 0),
]


@pytest.mark.parametrize(("name", "packets", "target", "success", "bps"), PROBE_CASES, ids=[c[0] for c in PROBE_CASES])
def test_probe_rule(name, packets, target, success, bps):
    result = evaluate_probe(1, target, packets, at_ms=123.0)
    assert result.success is success
    assert result.bps == pytest.approx(bps, rel=0.01, abs=1.0)
    assert result.cluster == 1 and result.target_bps == target and result.at_ms == 123.0
    if bps:
        assert result.bps == pytest.approx(min(result.send_bps, result.receive_bps))


# --- scenarios on the simulated link -------------------------------------------------------


@pytest.mark.parametrize("seed", [1, 2])
def test_steady_link_no_false_overuse(seed):
    est = GccEstimator(initial_bps=1_000_000)
    sim = Sim(est, Link(5_000_000, seed=seed), rate=1_000_000)
    sim.run_until(20_000)
    assert est.overuse_ms is None
    assert min(e for _, e, _, _ in sim.history) >= 0.9 * 1_000_000
    assert est.acked_bps == pytest.approx(1_000_000, rel=0.02)
    # It may grow, but not past 1.5x what is acknowledged + 10 kbit/s.
    assert est.estimate <= 1.5 * 1_000_000 + 10_000 + 1
    assert est.loss_fraction == 0.0 and est.state == NORMAL


def test_capacity_step_down_is_detected_and_tracked():
    est = GccEstimator(initial_bps=1_500_000)
    link = Link(2_500_000, queue_bytes=60_000)
    sim = Sim(est, link, max_rate=1_500_000)
    sim.run_until(5_000)
    assert est.overuse_ms is None and est.estimate >= 1_500_000
    step = sim.t
    link.capacity_bps = 500_000
    sim.run_until(step + 500)
    assert est.overuse_ms is not None and est.overuse_ms - step <= 500
    sim.run_until(step + 2_000)
    assert min(e for _, e, _, _ in sim.since(step)) < 500_000
    sim.run_until(step + 12_000)
    late = [e for _, e, _, _ in sim.since(step + 10_000)]
    assert 250_000 <= min(late) and max(late) <= 550_000
    assert est.acked_bps == pytest.approx(500_000, rel=0.15)


def test_capacity_step_down_under_receiver_jitter_is_still_detected():
    est = GccEstimator(initial_bps=1_500_000)
    link = Link(2_500_000, queue_bytes=60_000, jitter_ms=20.0, seed=3)
    sim = Sim(est, link, max_rate=1_500_000)
    sim.run_until(5_000)
    assert est.overuse_ms is None
    step = sim.t
    link.capacity_bps = 500_000
    while est.overuse_ms is None:
        sim.run_until(sim.t + FEEDBACK_MS)
    assert est.overuse_ms - step <= 600  # ~100 ms later than without jitter
    sim.run_until(step + 2_000)
    assert est.estimate < 500_000


def test_probe_after_a_capacity_step_up_raises_the_estimate_in_one_step():
    est = GccEstimator(initial_bps=500_000)
    link = Link(500_000)
    sim = Sim(est, link)
    sim.run_until(10_000)
    assert 400_000 <= est.estimate <= 650_000
    link.capacity_bps = 3_000_000
    sim.run_until(11_000)
    before = est.estimate
    target = 2 * before
    sim.start_probe(1, target, 200)
    start = sim.t
    while 1 not in est.probe_results and sim.t < start + 1_000:
        previous = est.estimate
        sim.run_until(sim.t + FEEDBACK_MS)
    result = est.probe_results[1]
    assert result.success and result.bps == pytest.approx(target, rel=0.05)
    assert result.send_bps >= 0.8 * target and result.receive_bps >= 0.9 * result.send_bps
    # One feedback took the estimate from about where it was to the probe's rate.
    assert previous < 1.1 * before
    assert est.estimate >= 0.95 * result.bps and est.delay_based_bps >= 0.95 * result.bps
    sim.run_until(sim.t + 2_000)
    assert est.estimate >= 0.95 * result.bps


def test_probe_above_the_capacity_fails_and_does_not_lower_the_estimate():
    est = GccEstimator(initial_bps=800_000)
    sim = Sim(est, Link(1_000_000, queue_bytes=60_000))
    sim.run_until(15_000)
    before = est.estimate
    assert 800_000 <= before <= 1_000_000  # close to the capacity: the hard case
    sim.start_probe(7, 2_000_000, 200)
    start = sim.t
    sim.run_until(start + 3_000)
    result = est.probe_results[7]
    assert result.success is False
    assert result.send_bps == pytest.approx(2_000_000, rel=0.05)
    assert result.receive_bps == pytest.approx(1_000_000, rel=0.05)
    assert result.bps == pytest.approx(result.receive_bps)
    # The probe's own queue made the detector signal over-use, but the estimate stays.
    assert est.overuse_ms is not None and est.overuse_ms > start
    assert min(e for _, e, _, _ in sim.since(start)) >= before


@pytest.mark.parametrize(("capacity", "success"), [(3_000_000, True), (1_000_000, False)])
def test_probe_of_padding_topping_up_untagged_media(capacity, success):
    # The caller tags only the padding; the media sent meanwhile counts in the cluster.
    est = GccEstimator(initial_bps=500_000)
    sim = Sim(est, Link(capacity))
    sim.run_until(5_000)
    before = est.estimate
    target = 2 * before
    sim.start_probe(3, target, 200, media_bps=before)
    start = sim.t
    sim.run_until(start + 1_000)
    result = est.probe_results[3]
    assert result.send_bps == pytest.approx(target, rel=0.05)
    assert result.success is success
    if success:
        assert result.bps == pytest.approx(target, rel=0.05)
        assert est.estimate >= 0.95 * result.bps
    else:
        assert result.receive_bps == pytest.approx(capacity, rel=0.1)
        assert min(e for _, e, _, _ in sim.since(start)) >= before


def test_a_late_arrival_after_a_loss_report_is_not_a_loss():
    def run(report_late: bool) -> float:
        est = GccEstimator()
        late: list[Result] = []
        for b in range(10):
            now = b * 50.0
            batch = [
                Result(25 * b + i, now + i * 2.0, PACKET, None if i % 4 == 0 else 1e5 + now + i * 2.0)
                for i in range(25)
            ]
            # The packets reported lost in the previous batch did arrive, late.
            est.on_feedback(late + batch if report_late else batch, now + 100.0)
            late = [Result(r.sequence, r.send_ms, PACKET, 1e5 + now + 60.0) for r in batch if r.arrival_ms is None]
        return est.loss_fraction

    assert run(False) > 0.15
    assert run(True) < 0.05


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_loss_with_flat_delay_holds_the_estimate(seed):
    est = GccEstimator(initial_bps=1_000_000)
    sim = Sim(est, Link(50_000_000, loss=0.05, seed=seed))
    losses = []
    while sim.t < 20_000:
        sim.run_until(sim.t + FEEDBACK_MS)
        losses.append(est.loss_fraction)
    assert 0.03 <= sum(losses[40:]) / len(losses[40:]) <= 0.07
    assert min(e for _, e, _, _ in sim.history) >= 1_000_000
    assert est.estimate >= 1_000_000
    assert est.overuse_ms is None


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_receiver_jitter_is_not_congestion(seed):
    est = GccEstimator(initial_bps=1_000_000)
    sim = Sim(est, Link(None, jitter_ms=20.0, seed=seed))
    sim.run_until(20_000)
    assert est.estimate >= 0.85 * 1_000_000
    previous = None
    for t, estimate, acked, _ in sim.history:
        if t > 2_000 and previous is not None and estimate < previous:
            assert acked is not None and estimate >= 0.85 * acked
        previous = estimate
    # In fact the detector never fires: the slope of jittered points is not significant.
    assert est.overuse_ms is None
    assert est.estimate > 2_000_000  # it kept growing as the link allows


def test_a_receiver_that_stalls_and_bursts_is_not_congestion():
    est = GccEstimator(initial_bps=1_000_000)
    link = Link(None)
    rng = random.Random(9)
    stalls = []
    t = 0.0
    while t < 20_000:
        t += rng.uniform(300, 700)
        stalls.append((t, t + rng.uniform(20, 60)))
    original_send = link.send

    def send(seq, t, size, cluster):
        original_send(seq, t, size, cluster)
        result, arrival = link.pending[-1]
        for a, b in stalls:
            if arrival is not None and a <= arrival < b:
                result.arrival_ms = b + link.offset_ms + (arrival - a) * 0.01  # timestamped at once
                break

    link.send = send
    sim = Sim(est, link)
    sim.run_until(20_000)
    assert est.overuse_ms is None and est.estimate > 2_000_000


def test_queue_overflow_with_heavy_loss_lowers_the_estimate():
    est = GccEstimator(initial_bps=1_500_000)
    sim = Sim(est, Link(1_000_000, queue_bytes=20_000), rate=1_430_000)  # ~30 % over
    sim.run_until(5_000)
    # The delay grew first (over-use), then the queue overflowed.
    assert est.overuse_ms is not None and est.overuse_ms < 1_000
    assert 0.2 <= est.loss_fraction <= 0.4
    assert est.estimate < 0.5 * 1_000_000
    assert est.loss_based_bps < est.delay_based_bps
    estimates = [e for _, e, _, _ in sim.history]
    assert estimates[-1] < min(estimates[:5])


def test_loss_of_a_policer_without_queue_is_acted_on_only_when_heavy():
    # 15 % loss, no delay at all: the hold band's loss rule does not cut the estimate.
    est = GccEstimator(initial_bps=1_000_000)
    Sim(est, Link(None, loss=0.15, seed=4), rate=1_000_000).run_until(10_000)
    assert est.loss_fraction > 0.1 and est.loss_based_bps >= 1_000_000
    # 40 % loss: congestion whatever the delay says.
    est = GccEstimator(initial_bps=1_000_000)
    Sim(est, Link(None, loss=0.4, seed=4), rate=1_000_000).run_until(10_000)
    assert est.loss_based_bps < 500_000 and est.estimate == est.loss_based_bps


def test_acked_bitrate_is_not_fooled_by_one_batch():
    est = GccEstimator()
    # One batch of 50 ms: too short a span for a rate.
    est.on_feedback([Result(i, i * 1.0, PACKET, 100.0 + i * 1.0) for i in range(50)], 100.0)
    assert est.acked_bps is None
    # 600 ms at 1 Mbit/s, then a batch whose 20 packets were timestamped in 2 ms.
    seq = 50
    for b in range(12):
        batch = []
        for _ in range(5):
            t = 50.0 + (seq - 50) * 9.6
            batch.append(Result(seq, t, PACKET, 200.0 + t))
            seq += 1
        est.on_feedback(batch, 300.0 + 50 * b)
    assert est.acked_bps == pytest.approx(1_000_000, rel=0.05)
    last = 200.0 + 50.0 + (seq - 51) * 9.6
    burst = [Result(seq + i, 50.0 + (seq + i - 50) * 9.6, PACKET, last + 0.1 * (i + 1)) for i in range(20)]
    est.on_feedback(burst, 1000.0)
    assert est.acked_bps < 1.6 * 1_000_000


# --- odd input --------------------------------------------------------------------------


def _bounded(est: GccEstimator) -> None:
    assert est.min_bps <= est.estimate <= est.max_bps
    assert est.min_bps <= est.delay_based_bps <= est.max_bps
    assert est.min_bps <= est.loss_based_bps <= est.max_bps
    assert 0.0 <= est.loss_fraction <= 1.0
    assert est.state in (NORMAL, OVERUSING, UNDERUSING)
    assert len(est.probe_results) <= PROBE_HISTORY
    assert len(est._clusters) <= PROBE_HISTORY and len(est._probe_targets) <= PROBE_HISTORY
    assert len(est._acked._packets) <= ACK_MAX_PACKETS
    assert est.acked_bps is None or (math.isfinite(est.acked_bps) and est.acked_bps >= 0)


def test_odd_input_does_not_raise():
    est = GccEstimator(initial_bps=1_000_000, min_bps=50_000, max_bps=5_000_000)
    est.on_feedback([], 0.0)
    est.on_feedback((), 10.0)
    _bounded(est)
    batch = [Result(i, i * 5.0, PACKET, 1e6 + i * 5.0) for i in range(50)]
    est.on_feedback(batch, 300.0)
    est.on_feedback(batch, 350.0)  # the same batch again
    est.on_feedback(list(reversed(batch)), 400.0)
    est.on_feedback([batch[3], batch[3], batch[1]], 450.0)
    _bounded(est)
    # All lost.
    for k in range(10):
        lost = [Result(50 + 20 * k + i, 250.0 + 100 * k + i, PACKET, None) for i in range(20)]
        est.on_feedback(lost, 500.0 + 100 * k)
    _bounded(est)
    assert est.loss_fraction > 0.5
    # Out of order and duplicated inside a batch, arrival going backwards by seconds.
    seq = 300
    mixed = [Result(seq + i, 1500.0 + i * 5.0, PACKET, 1e6 - 5_000.0 + i * 5.0) for i in range(30)]
    random.Random(3).shuffle(mixed)
    est.on_feedback(mixed + mixed[:5], 1700.0)
    est.on_feedback([Result(400 + i, 1700.0 + i * 5.0, PACKET, 1e6 - 6_000.0 - i * 100.0) for i in range(30)], 1900.0)
    _bounded(est)
    # Huge gaps in sequence, send time and arrival; non-finite times; odd sizes.
    est.on_feedback(
        [
            Result(10**12, 3.6e6, PACKET, 5e9),
            Result(10**12 + 1, 3.6e6 + 1, 0, 5e9 + 1),
            Result(10**12 + 2, 3.6e6 + 2, -5, float("nan")),
            Result(10**12 + 3, float("inf"), PACKET, 5e9 + 3),
            Result(10**12 + 4, 3.6e6 + 4, 10**9, -1e12),
            Result(5, 3.6e6 + 5, PACKET, 5e9 + 5),  # far behind the highest: a restart
        ],
        3.6e6 + 100,
    )
    _bounded(est)
    # Probe clusters nobody announced, clusters that were all lost, many clusters.
    t = 3.7e6
    s = 10**12 + 100
    for c in range(40):
        est.start_probe(c, 2_000_000, t)
        arrivals = [None if c % 3 == 0 else 6e9 + t + i * 2.0 for i in range(8)]
        est.on_feedback([Result(s + i, t + i * 2.0, PACKET, arrivals[i], c) for i in range(8)], t + 100)
        s += 8
        t += 100
    est.on_feedback([Result(s, t + 5000, PACKET, 6e9 + t + 5000)], t + 6000)
    _bounded(est)
    est.on_rtt(float("nan"), t)
    est.on_rtt(-5.0, t)
    est.on_rtt(1e12, t)
    est.on_feedback([Result(s + 1, t + 5010, PACKET, 6e9 + t + 5010)], t + 6100)
    _bounded(est)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_garbage_stays_bounded(seed):
    rng = random.Random(seed)
    est = GccEstimator(initial_bps=2_000_000, min_bps=30_000, max_bps=10_000_000)
    seq = 0
    now = 0.0
    for _ in range(400):
        batch = []
        for _ in range(rng.randrange(0, 120)):
            seq += rng.choice((1, 1, 1, 2, 0, -3, 1000))
            arrival = None if rng.random() < 0.2 else rng.choice((now + rng.uniform(-50, 50), rng.uniform(-1e7, 1e7)))
            cluster = rng.choice((None, None, None, rng.randrange(100)))
            batch.append(Result(seq, now + rng.uniform(-100, 100), rng.randrange(-10, 1500), arrival, cluster))
        if rng.random() < 0.1:
            est.start_probe(rng.randrange(100), rng.uniform(0, 1e8), now)
        now += rng.uniform(0, 200)
        est.on_feedback(batch, now)
        _bounded(est)
