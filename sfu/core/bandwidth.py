"""A subscriber's downlink estimate from what its browser reports, and probing.

Inputs (all from the subscriber's RTCP):

* REMB (draft-alvestrand-rmcat-remb): Chrome's receive-side, delay-based estimate.
  Outside over-use it only grows (by ~8 %/s, and never past ~1.5x the rate it
  receives) or holds; on over-use it drops to ~0.85x the incoming rate it measured.
  So a REMB that falls is a congestion signal (it holds the estimate and fails a
  probe), a REMB above the estimate raises it, and a REMB below the estimate that does
  not fall only says we send little. A falling REMB lowers the estimate only when it
  is far below what we send (``< 0.7x``): right after an up-switch Chrome's measured
  rate lags, and a keyframe burst alone can trip its over-use detector.
* Receiver-report loss (RFC 3550 §6.4.1 fraction lost): above 10 % the estimate
  falls to ``rate * (1 - loss / 2)`` (the loss-based rule of GCC,
  draft-ietf-rmcat-gcc-02 §6), applied to what we sent in the report's interval; see
  :meth:`BandwidthEstimator.on_loss`.
* Round-trip time from receiver reports (RFC 3550 §6.4.1): a queue building up on the
  path shows as RTT above its recent minimum. Chrome's REMB reacts to that late or
  not at all when the queue is short, so probes watch the RTT themselves.
* Probes: since REMB cannot rise much above what it receives, :class:`ProbeController`
  pads the stream up to a goal for a while; a probe that saw a report during it with
  no loss, no falling REMB and no RTT growth raises the estimate to the goal.

After any congestion the estimate holds for ``hold_ms`` (REMB may not raise it), so a
lagging REMB does not undo a loss-based drop. Pure: time is a parameter (ms).
"""

from __future__ import annotations

from collections import deque

__all__ = ["BandwidthEstimator", "ProbeController", "LOSS_HIGH", "LOSS_LOW"]

LOSS_HIGH = 0.10
LOSS_LOW = 0.02
LOSS_HEAVY = 0.25
FAILED_GOAL_MEMORY_MS = 30_000.0  # probes do not jump past a goal that failed this recently
RTT_WINDOW_MS = 10_000.0
EVIDENCE_AFTER_MS = 700.0  # a probe succeeds only on a report this far into it (queues build late)
MAX_PROBE_FACTOR = 2.5  # ... waited for up to 2.5x the probe's duration
DELAY_GROWTH_MS = 40.0
FLOOR_EVIDENCE = 1.3  # loss at up to 1.3x the floor rate may take the estimate below it
REMB_DROP = 0.95  # a REMB below 95 % of the previous one is a drop
REMB_FAR_BELOW = 0.7  # ... and lowers the estimate when below 70 % of what we send


class BandwidthEstimator:
    """One subscriber's downlink estimate in bit/s.

    Args:
        initial_bps: the estimate before any feedback.
        min_bps, max_bps: bounds of the estimate.
        hold_ms: after congestion, how long REMB cannot raise the estimate.
        start_grace_ms: REMB is not read as congestion this long after the first
            feedback (Chrome's REMB starts low and ramps while it measures).
    """

    def __init__(
        self,
        initial_bps: int = 1_500_000,
        min_bps: int = 30_000,
        max_bps: int = 50_000_000,
        hold_ms: float = 1500.0,
        start_grace_ms: float = 3000.0,
    ) -> None:
        self.estimate = initial_bps
        self.min_bps = min_bps
        self.max_bps = max_bps
        self.hold_ms = hold_ms
        self.start_grace_ms = start_grace_ms
        self.remb: int | None = None
        self.congested_ms: float | None = None
        self.loss_ms: float | None = None  # last NACK, or report of loss above LOSS_LOW
        # What always goes out plus the lowest video layer (set by the allocation):
        # only loss seen while sending about that little takes the estimate below it.
        self.floor_bps = 0.0
        self.delay_ms: float | None = None  # last RTT sample showing a queue (see on_rtt)
        self.last_rtt_ms: float | None = None  # when the last RTT sample came
        self._rtts: deque[tuple[float, float]] = deque()  # (ms, RTT ms), RTTs increasing
        self._loss_reaction_ms: float | None = None
        self._floor_reaction_ms: float | None = None  # a loss reaction stopped at the floor
        self._first_ms: float | None = None

    def _clamp(self, bps: float) -> int:
        return int(min(self.max_bps, max(self.min_bps, bps)))

    def _congestion(self, bps: float, now_ms: float) -> None:
        self.estimate = self._clamp(min(self.estimate, bps))
        self.congested_ms = now_ms

    def in_hold(self, now_ms: float) -> bool:
        """True while a recent congestion signal holds the estimate down."""
        return self.congested_ms is not None and now_ms - self.congested_ms < self.hold_ms

    def on_remb(self, bitrate: int, sent_bps: float, now_ms: float) -> None:
        """A REMB of ``bitrate`` bit/s from the subscriber, while we send it ``sent_bps``."""
        if self._first_ms is None:
            self._first_ms = now_ms
        previous, self.remb = self.remb, bitrate
        in_grace = now_ms - self._first_ms < self.start_grace_ms
        falling = previous is not None and bitrate < REMB_DROP * previous
        far_below = bitrate < REMB_FAR_BELOW * sent_bps
        if not in_grace and (falling or (previous is None and far_below)):
            # Chrome sends REMB when its estimate falls, so the first one may be a fall.
            self.congested_ms = now_ms
            if far_below:
                self._congestion(max(bitrate, min(self.estimate, self.floor_bps)), now_ms)
        elif bitrate > self.estimate and not self.in_hold(now_ms):
            self.estimate = self._clamp(bitrate)

    def on_loss(self, fraction_lost: float, sent_bps: float, now_ms: float) -> None:
        """A receiver report's loss fraction (0..1) for a stream of this subscriber;
        ``sent_bps``: the highest rate we sent it over the report's interval.

        Above 10 % loss the estimate becomes ``ref * (1 - loss / 2)`` (GCC's
        loss-based rule; from 25 % loss ``ref * (1 - loss)``, what arrived, since this
        reacts once per hold window rather than per report, but at most halving: one
        report's loss over a short interval overshoots), where ``ref`` is what we
        sent when that is at least half the
        estimate (so the estimate falls below the rate that lost), else the estimate
        (loss while sending little, e.g. a keyframe burst through a short queue, says
        little about the rate). At most one loss reaction per ``hold_ms``: the reports
        right after a reaction still describe the rate before it. The estimate goes
        below :attr:`floor_bps` (what the lowest layer needs) only on loss seen while
        sending at most 1.3x that, in two reactions in a row: a pause needs evidence
        that the lowest layer itself does not fit, not one burst; a falling REMB never
        goes below it.
        """
        if self._first_ms is None:
            self._first_ms = now_ms
        if fraction_lost > LOSS_LOW:
            self.loss_ms = now_ms
        if fraction_lost <= LOSS_HIGH or (self._loss_reaction_ms is not None and now_ms - self._loss_reaction_ms < self.hold_ms):
            return
        ref = min(self.estimate, sent_bps) if sent_bps >= 0.5 * self.estimate else self.estimate
        factor = max(0.5, 1.0 - fraction_lost) if fraction_lost >= LOSS_HEAVY else 1.0 - 0.5 * fraction_lost
        target = ref * factor
        floor = min(self.estimate, self.floor_bps)
        if target < floor:
            # Below the lowest layer only on loss at about that rate, and only when it
            # goes on: a second reaction after the first one reached the floor.
            at_floor = sent_bps <= FLOOR_EVIDENCE * self.floor_bps
            if not (at_floor and self._floor_reaction_ms is not None):
                target = floor
            self._floor_reaction_ms = now_ms if at_floor else None
        else:
            self._floor_reaction_ms = None
        self._loss_reaction_ms = now_ms
        self._congestion(target, now_ms)

    def on_rtt(self, rtt_ms: float, now_ms: float) -> None:
        """An RTT sample (ms) from a receiver report at ``now_ms``. RTT more than
        ``max(40 ms, baseline / 2)`` above the minimum of the last 10 s marks a queue
        (:attr:`delay_ms`). Only differences count, so a constant clock offset in the
        sample does not matter."""
        # The window minimum in O(1) memory per distinct value and amortized O(1) time:
        # a monotonic queue (a sample that a later, smaller one outlives can never be
        # the minimum again), so a flood of report blocks costs no scan.
        rtts = self._rtts
        while rtts and rtts[-1][1] >= rtt_ms:
            rtts.pop()
        rtts.append((now_ms, rtt_ms))
        while now_ms - rtts[0][0] > RTT_WINDOW_MS:
            rtts.popleft()
        baseline = rtts[0][1]
        self.last_rtt_ms = now_ms
        if rtt_ms > baseline + max(DELAY_GROWTH_MS, 0.5 * baseline):
            self.delay_ms = now_ms

    def on_nack(self, now_ms: float) -> None:
        """The subscriber reported a lost packet (RFC 4585 §6.2.1 NACK): the fastest
        sign of loss, a receiver report can be a second away."""
        self.loss_ms = now_ms

    def reacted_to_loss_since(self, t_ms: float) -> bool:
        """A loss report lowered the estimate at or after ``t_ms``."""
        return self._loss_reaction_ms is not None and self._loss_reaction_ms >= t_ms

    def on_probe_success(self, goal_bps: float, now_ms: float) -> None:
        """A probe up to ``goal_bps`` saw no congestion: the link carries it."""
        if not self.in_hold(now_ms):
            self.estimate = self._clamp(max(self.estimate, goal_bps))


class ProbeController:
    """Decides when to probe one subscriber's downlink, how hard, and the outcome.

    A probe starts when the allocation wants more than the estimate (``desired_bps``),
    no congestion was seen for ``quiet_ms``, and the back-off has passed. Its goal is
    ``estimate * step`` (at most ``desired * 1.1``); for ``duration_ms`` (longer until
    a receiver report from at least 700 ms into the probe came, at most 2.5x) the caller
    pads its stream up to the goal (:meth:`padding_bps`). A probe without congestion,
    RTT growth, NACK or reported loss above 2 % succeeds (the estimator takes the goal, ``step`` grows towards
    ``max_step``); otherwise it fails (``step`` resets, the back-off doubles up to
    ``max_backoff_ms``). The first step is small (15 %) so that a probe into a link
    that is still full mostly queues (the subscriber's REMB falls) rather than drops;
    for 30 s after a failure the goal stops at the failed goal (or 15 % above the
    estimate) instead of jumping past it.
    """

    def __init__(
        self,
        duration_ms: float = 1000.0,
        quiet_ms: float = 2000.0,
        min_step: float = 1.15,
        max_step: float = 2.0,
        min_backoff_ms: float = 2000.0,
        max_backoff_ms: float = 3000.0,
    ) -> None:
        self.duration_ms = duration_ms
        self.quiet_ms = quiet_ms
        self.min_step = min_step
        self.max_step = max_step
        self.min_backoff_ms = min_backoff_ms
        self.max_backoff_ms = max_backoff_ms
        self.step = min_step
        self.goal_bps: float | None = None
        self.successes = 0
        self.failures = 0
        self._started_ms = 0.0
        self._pre_estimate = 0
        self._failed_goal: tuple[float, float] | None = None  # (goal bit/s, when)
        self._next_ms = 0.0
        self._backoff_ms = min_backoff_ms
        self.trial_ms = 3000.0
        self._next_trial_ms: float | None = None
        self._trial_backoff_ms = self.trial_ms

    @property
    def probing(self) -> bool:
        """A probe is running."""
        return self.goal_bps is not None

    def poll(self, now_ms: float, estimator: BandwidthEstimator, desired_bps: float, sent_bps: float = float("inf")) -> None:
        """Start, finish or abort a probe at ``now_ms``; ``sent_bps`` is what we send
        now, padding included (a probe that did not reach 80 % of its goal proves
        nothing: it ends without success or back-off)."""
        congested = estimator.congested_ms
        if self.goal_bps is not None:
            started = self._started_ms
            lossy = estimator.loss_ms is not None and estimator.loss_ms >= started
            queued = estimator.delay_ms is not None and estimator.delay_ms >= started
            if lossy or queued or (congested is not None and congested >= started):
                self._fail(now_ms)
                if not estimator.reacted_to_loss_since(self._started_ms):
                    # The goal was too much, not the rate before it: Chrome's REMB after
                    # over-use (0.85x its measured rate) undershoots at low rates.
                    estimator.estimate = max(estimator.estimate, self._pre_estimate)
            elif now_ms - started >= self.duration_ms:
                heard = estimator.last_rtt_ms is not None and estimator.last_rtt_ms >= started + EVIDENCE_AFTER_MS
                if not heard and now_ms - started < MAX_PROBE_FACTOR * self.duration_ms:
                    return  # no report from within the probe yet: keep probing a little
                if heard and sent_bps >= 0.8 * self.goal_bps:
                    estimator.on_probe_success(self.goal_bps, now_ms)
                    if self._failed_goal is not None and self.goal_bps >= self._failed_goal[0]:
                        self._failed_goal = None
                    self.successes += 1
                    self.step = min(self.max_step, self.step * 1.25)
                    self._backoff_ms = self.min_backoff_ms
                self.goal_bps = None
                self._next_ms = now_ms + 500.0
            return
        if desired_bps <= estimator.estimate or now_ms < self._next_ms:
            return
        if congested is not None and now_ms - congested < self.quiet_ms:
            return
        goal = estimator.estimate * self.step
        failed = self._failed_goal
        if failed is not None and now_ms - failed[1] < FAILED_GOAL_MEMORY_MS and goal > failed[0]:
            # Approach the goal that failed last rather than jump past it (it cost loss).
            goal = max(estimator.estimate * self.min_step, failed[0])
        self.goal_bps = min(goal, desired_bps * 1.1)
        self._started_ms = now_ms
        self._pre_estimate = estimator.estimate

    def poll_paused(self, now_ms: float, estimator: BandwidthEstimator, needed_bps: float) -> bool:
        """Everything is paused for bandwidth, so nothing can carry a probe: every
        ``trial_ms`` (doubling up to 30 s while it keeps failing) without congestion,
        raise the estimate to ``needed_bps`` (the lowest layer and what is always
        forwarded) so the lowest layer is tried again. Returns True when it did."""
        if self._next_trial_ms is None:
            self._next_trial_ms = now_ms + self._trial_backoff_ms
            return False
        congested = estimator.congested_ms
        if now_ms < self._next_trial_ms or (congested is not None and now_ms - congested < self.trial_ms):
            return False
        estimator.estimate = max(estimator.estimate, int(needed_bps))
        self._trial_backoff_ms = min(30_000.0, self._trial_backoff_ms * 2)
        self._next_trial_ms = None
        return True

    def on_forwarding(self) -> None:
        """Video flows again: the next pause starts with the shortest trial interval."""
        self._next_trial_ms = None
        self._trial_backoff_ms = self.trial_ms

    def defer(self, until_ms: float) -> None:
        """No probe before ``until_ms`` (a layer change must settle first); a running
        probe ends without a result."""
        self.goal_bps = None
        self._next_ms = max(self._next_ms, until_ms)

    def _fail(self, now_ms: float) -> None:
        self.failures += 1
        if self.goal_bps is not None:
            self._failed_goal = (self.goal_bps, now_ms)
        self.goal_bps = None
        self.step = self.min_step
        self._next_ms = now_ms + self._backoff_ms
        self._backoff_ms = min(self.max_backoff_ms, self._backoff_ms * 2)

    def padding_bps(self, media_bps: float) -> float:
        """Padding to send now (bit/s) on top of ``media_bps``; 0 when not probing."""
        if self.goal_bps is None:
            return 0.0
        return max(0.0, self.goal_bps - media_bps)
