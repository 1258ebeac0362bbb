"""The subscriber bandwidth estimator and probe controller on a virtual clock."""

from __future__ import annotations

from sfu.core.bandwidth import BandwidthEstimator, ProbeController


def test_remb_raises_the_estimate_and_only_a_falling_remb_is_congestion():
    bwe = BandwidthEstimator(initial_bps=1_000_000, start_grace_ms=0)
    bwe.on_remb(2_000_000, sent_bps=800_000, now_ms=0)
    assert bwe.estimate == 2_000_000
    # Below the estimate but not falling (we send little): no congestion.
    bwe = BandwidthEstimator(initial_bps=1_000_000, start_grace_ms=0)
    bwe.on_remb(300_000, sent_bps=200_000, now_ms=0)
    bwe.on_remb(320_000, sent_bps=200_000, now_ms=300)
    assert bwe.estimate == 1_000_000 and bwe.congested_ms is None
    # Falling by more than 5 % but near what we send (e.g. a keyframe burst after an
    # up-switch): congestion (hold, probes fail) without lowering the estimate.
    bwe.on_remb(290_000, sent_bps=350_000, now_ms=600)
    assert bwe.estimate == 1_000_000 and bwe.congested_ms == 600
    # Falling far below what we send: the estimate follows it down.
    bwe.on_remb(250_000, sent_bps=900_000, now_ms=900)
    assert bwe.estimate == 250_000 and bwe.congested_ms == 900
    # A higher REMB right after cannot undo it; after the hold it can.
    bwe.on_remb(2_000_000, sent_bps=300_000, now_ms=1000)
    assert bwe.estimate == 250_000
    bwe.on_remb(2_000_000, sent_bps=300_000, now_ms=3000)
    assert bwe.estimate == 2_000_000


def test_remb_is_not_congestion_during_the_start_grace():
    bwe = BandwidthEstimator(initial_bps=1_500_000, start_grace_ms=3000)
    bwe.on_remb(900_000, sent_bps=900_000, now_ms=0)
    bwe.on_remb(400_000, sent_bps=900_000, now_ms=2000)
    assert bwe.estimate == 1_500_000 and bwe.congested_ms is None
    bwe.on_remb(300_000, sent_bps=900_000, now_ms=3500)
    assert bwe.estimate == 300_000


def test_loss_lowers_the_estimate_below_the_rate_that_lost_once_per_hold():
    bwe = BandwidthEstimator(initial_bps=2_000_000, hold_ms=1500)
    bwe.on_loss(0.05, sent_bps=1_000_000, now_ms=0)
    assert bwe.estimate == 2_000_000 and bwe.loss_ms == 0 and bwe.congested_ms is None
    # Moderate loss: GCC's rule on the rate that lost.
    bwe.on_loss(0.2, sent_bps=1_000_000, now_ms=100)
    assert bwe.estimate == 900_000 and bwe.congested_ms == 100
    # The next reports still describe the old rate: no second reaction within the hold.
    bwe.on_loss(0.9, sent_bps=1_000_000, now_ms=400)
    assert bwe.estimate == 900_000
    # Heavy loss: what arrived, but at most half the rate that lost.
    bwe.on_loss(0.3, sent_bps=800_000, now_ms=1700)
    assert bwe.estimate == 560_000
    bwe.on_loss(0.8, sent_bps=560_000, now_ms=3300)
    assert bwe.estimate == 280_000
    # Loss while sending little (a keyframe burst): a modest cut of the estimate.
    bwe.on_loss(0.2, sent_bps=100_000, now_ms=4900)
    assert bwe.estimate == 252_000
    for t in range(6500, 20_000, 1600):
        bwe.on_loss(0.9, sent_bps=10_000, now_ms=t)
    assert bwe.estimate == bwe.min_bps


def test_probe_succeeds_grows_and_backs_off_after_failure():
    bwe = BandwidthEstimator(initial_bps=300_000, start_grace_ms=0)
    probe = ProbeController(duration_ms=1000, quiet_ms=2000, min_step=1.15, min_backoff_ms=2000, max_backoff_ms=4000)
    probe.poll(0, bwe, desired_bps=1_000_000)
    assert round(probe.goal_bps) == 345_000
    assert round(probe.padding_bps(media_bps=150_000)) == 195_000
    probe.poll(999, bwe, 1_000_000)
    assert probe.probing
    bwe.on_rtt(5.0, now_ms=800)  # a receiver report from late in the probe, no queue
    probe.poll(1000, bwe, 1_000_000, sent_bps=340_000)
    assert not probe.probing and bwe.estimate == 345_000
    probe.poll(1200, bwe, 1_000_000)
    assert not probe.probing  # 500 ms between probes
    probe.poll(1500, bwe, 1_000_000)
    assert abs(probe.goal_bps - 345_000 * 1.15 * 1.25) < 1
    # Small loss during the probe: failure without lowering the estimate.
    bwe.on_loss(0.04, sent_bps=500_000, now_ms=1800)
    probe.poll(1900, bwe, 1_000_000)
    assert not probe.probing and bwe.estimate == 345_000 and probe.step == 1.15
    for t in range(2000, 3900, 100):
        probe.poll(t, bwe, 1_000_000)
        assert not probe.probing  # 2 s back-off
    probe.poll(3900, bwe, 1_000_000)
    assert probe.probing
    # A falling REMB during the probe: failure; the estimate stays (REMB near what we send).
    bwe.on_remb(340_000, sent_bps=400_000, now_ms=4000)
    bwe.on_remb(300_000, sent_bps=400_000, now_ms=4050)
    probe.poll(4100, bwe, 1_000_000)
    assert not probe.probing and bwe.estimate == 345_000
    probe.poll(4100 + 3999, bwe, 1_000_000)  # the back-off doubled to 4 s (and 2 s of quiet)
    assert not probe.probing
    probe.poll(4100 + 4000, bwe, 1_000_000)
    assert probe.probing
    # The back-off stops doubling at its maximum.
    bwe.on_loss(0.5, sent_bps=600_000, now_ms=8200)
    probe.poll(8300, bwe, 1_000_000)
    assert not probe.probing
    probe.poll(8300 + 4000, bwe, 1_000_000)
    assert probe.probing


def test_no_probe_when_the_estimate_already_covers_the_demand():
    bwe = BandwidthEstimator(initial_bps=2_000_000)
    probe = ProbeController()
    probe.poll(0, bwe, desired_bps=1_500_000)
    assert not probe.probing and probe.padding_bps(0) == 0.0
    probe.poll(10, bwe, desired_bps=2_100_000)
    assert round(probe.goal_bps) == round(2_000_000 * 1.15)


def test_a_probe_that_could_not_send_its_padding_proves_nothing():
    bwe = BandwidthEstimator(initial_bps=300_000, start_grace_ms=0)
    probe = ProbeController(duration_ms=1000)
    probe.poll(0, bwe, desired_bps=1_000_000)
    bwe.on_rtt(5.0, now_ms=800)
    probe.poll(1000, bwe, 1_000_000, sent_bps=100_000)
    assert not probe.probing and bwe.estimate == 300_000 and probe.successes == 0
    probe.defer(5000)
    probe.poll(4000, bwe, 1_000_000)
    assert not probe.probing
    probe.poll(5000, bwe, 1_000_000)
    assert probe.probing


def test_a_failed_probe_keeps_the_estimate_from_before_it_unless_loss_cut_it():
    bwe = BandwidthEstimator(initial_bps=300_000, start_grace_ms=0)
    probe = ProbeController(duration_ms=1000)
    probe.poll(0, bwe, desired_bps=1_000_000)
    bwe.on_remb(400_000, sent_bps=350_000, now_ms=100)
    bwe.on_remb(200_000, sent_bps=345_000, now_ms=400)  # falls far below what we send
    assert bwe.estimate == 200_000
    probe.poll(500, bwe, 1_000_000)
    assert not probe.probing and bwe.estimate == 300_000
    probe.poll(10_000, bwe, 1_000_000)
    assert probe.probing
    bwe.on_loss(0.3, sent_bps=345_000, now_ms=10_200)
    probe.poll(10_300, bwe, 1_000_000)
    assert not probe.probing and bwe.estimate == int(300_000 * 0.7)  # heavy loss: what arrived (300 k sent)


def test_paused_for_bandwidth_the_lowest_layer_is_tried_again_with_back_off():
    bwe = BandwidthEstimator(initial_bps=100_000, start_grace_ms=0)
    probe = ProbeController()
    tried = [t for t in range(0, 60_000, 250) if probe.poll_paused(t, bwe, needed_bps=200_000) and not bwe.__setattr__("estimate", 100_000)]
    assert tried[:3] == [3000, 9250, 21500]  # 3 s, then 6 s, then 12 s after each trial
    probe.on_forwarding()
    assert not probe.poll_paused(100_000, bwe, 200_000)
    assert probe.poll_paused(103_000, bwe, 200_000) and bwe.estimate == 200_000


def test_only_loss_at_the_lowest_layer_takes_the_estimate_below_it():
    bwe = BandwidthEstimator(initial_bps=1_000_000, start_grace_ms=0, hold_ms=0)
    bwe.floor_bps = 200_000
    bwe.on_remb(500_000, sent_bps=400_000, now_ms=0)
    bwe.on_remb(150_000, sent_bps=400_000, now_ms=100)  # far below, but REMB alone
    assert bwe.estimate == 200_000
    bwe.on_loss(0.8, sent_bps=400_000, now_ms=200)  # loss while sending twice the floor
    assert bwe.estimate == 200_000
    bwe.on_loss(0.8, sent_bps=210_000, now_ms=300)  # loss at the lowest layer: once is a burst
    assert bwe.estimate == 200_000
    bwe.on_loss(0.8, sent_bps=210_000, now_ms=400)  # it goes on: pause
    assert bwe.estimate == 100_000
    bwe.on_loss(0.8, sent_bps=400_000, now_ms=500)  # (loss at a higher rate never goes below)
    assert bwe.estimate == 100_000


def test_probes_approach_a_goal_that_failed_instead_of_jumping_past_it():
    bwe = BandwidthEstimator(initial_bps=300_000, start_grace_ms=0)
    probe = ProbeController(duration_ms=1000, min_step=1.15, min_backoff_ms=1000, quiet_ms=0)
    probe.poll(0, bwe, desired_bps=2_000_000)
    bwe.on_rtt(5.0, now_ms=800)
    probe.poll(1000, bwe, 2_000_000, sent_bps=345_000)  # success: 345 k
    probe.poll(1500, bwe, 2_000_000)
    assert abs(probe.goal_bps - 345_000 * 1.15 * 1.25) < 1
    bwe.on_loss(0.05, sent_bps=400_000, now_ms=1800)
    probe.poll(1900, bwe, 2_000_000)  # failed at ~496 k
    probe.poll(2900, bwe, 2_000_000)
    assert abs(probe.goal_bps - 345_000 * 1.15) < 1
    bwe.on_rtt(5.0, now_ms=3700)
    probe.poll(3900, bwe, 2_000_000, sent_bps=400_000)  # success: 397 k
    probe.poll(4400, bwe, 2_000_000)
    assert abs(probe.goal_bps - 345_000 * 1.15 * 1.25) < 1  # the failed goal, not 397 k x 1.44
    bwe.on_rtt(5.0, now_ms=5200)
    probe.poll(5400, bwe, 2_000_000, sent_bps=500_000)  # success at the failed goal: forgotten
    probe.poll(5900, bwe, 2_000_000)
    assert probe.goal_bps > 345_000 * 1.15 * 1.25 * 1.5


def test_a_probe_waits_for_a_report_and_fails_when_the_rtt_grows():
    bwe = BandwidthEstimator(initial_bps=300_000, start_grace_ms=0)
    probe = ProbeController(duration_ms=1000)
    for t in range(0, 3000, 500):
        bwe.on_rtt(5.0 + (t % 3), now_ms=t - 5000)  # baseline ~5 ms
    probe.poll(0, bwe, desired_bps=1_000_000)
    bwe.on_rtt(6.0, now_ms=600)  # too early in the probe to count
    probe.poll(1000, bwe, 1_000_000, sent_bps=345_000)
    assert probe.probing  # no report from within the probe yet: it goes on
    bwe.on_rtt(7.0, now_ms=1200)
    probe.poll(1250, bwe, 1_000_000, sent_bps=345_000)
    assert not probe.probing and bwe.estimate == 345_000
    probe.poll(2000, bwe, 1_000_000)
    assert probe.probing
    bwe.on_rtt(80.0, now_ms=2500)  # a queue builds up: 75 ms over the baseline
    probe.poll(2600, bwe, 1_000_000, sent_bps=430_000)
    assert not probe.probing and probe.failures == 1 and bwe.estimate == 345_000
    # Without any report the probe ends after 2.5x its duration, proving nothing.
    probe.poll(20_000, bwe, 1_000_000)
    assert probe.probing
    probe.poll(22_499, bwe, 1_000_000, sent_bps=400_000)
    assert probe.probing
    probe.poll(22_500, bwe, 1_000_000, sent_bps=400_000)
    assert not probe.probing and probe.successes == 1 and probe.failures == 1


def test_a_nack_during_a_probe_fails_it_at_once():
    bwe = BandwidthEstimator(initial_bps=300_000, start_grace_ms=0)
    probe = ProbeController(duration_ms=1000)
    probe.poll(0, bwe, desired_bps=1_000_000)
    bwe.on_nack(now_ms=150)
    probe.poll(200, bwe, 1_000_000)
    assert not probe.probing and probe.failures == 1 and bwe.estimate == 300_000
