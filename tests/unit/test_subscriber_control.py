"""The subscriber control loop on a virtual clock: a simulated downlink (the drop-tail
bottleneck of test_gcc), media at the rate of the layer the controller picks, its probe
padding, transport-cc feedback every 50 ms, allocation every 250 ms."""

from __future__ import annotations

import pytest

from sfu.core.allocator import BANDWIDTH, PREFERENCE, TrackDemand
from sfu.core.subscriber_control import SentTotals, SubscriberController

from .test_gcc import Link

LAYERS = [150_000, 500_000, 1_500_000]  # bit/s of q, h, f
AUDIO = 40_000
PACKET = 1200
TICK = 20.0


class Downlink:
    """One subscriber of one simulcast track and one audio track behind ``link``."""

    def __init__(self, control: SubscriberController, link: Link, max_layer: int | None = None) -> None:
        self.control = control
        self.link = link
        self.max_layer = max_layer
        self.layer: int | None = None
        self.layers: list[int | None] = []  # per allocation
        self.t = 0.0
        self.seq = 0
        self.sent = self.padding = 0
        self.credit = 0.0
        self.probes = 0
        self.next_feedback = 50.0
        self.next_allocation = 0.0
        self.ticks = 0

    def _send(self, size: int, cluster: int | None) -> None:
        self.link.send(self.seq, self.t, size, cluster)
        self.seq += 1
        self.sent += size

    def run_until(self, end_ms: float) -> None:
        c = self.control
        while self.t < end_ms:
            self.t += TICK
            rate = AUDIO + (LAYERS[self.layer] if self.layer is not None else 0)
            self.credit += rate * TICK / 8000.0
            while self.credit >= PACKET:
                self.credit -= PACKET
                self._send(PACKET, None)
            if c.due(self.t):  # as sfu.downlink.Downlink.tick: every tick only while probing
                self.ticks += 1
                decision = c.tick(self.t, SentTotals(self.sent, self.padding, self.seq))
                if decision.cluster is not None and decision.padding_bytes > 0:
                    budget = decision.padding_bytes
                    while budget > 0:
                        self._send(PACKET, decision.cluster)
                        self.padding += PACKET
                        budget -= PACKET
            if self.t >= self.next_feedback:
                self.next_feedback += 50.0
                results = self.link.feedback(self.t)
                if results:
                    c.on_transport_feedback(results, self.t)
            if self.t >= self.next_allocation:
                self.next_allocation += 250.0
                demand = TrackDemand("v", LAYERS, max_layer=self.max_layer)
                for change in c.allocate(self.t, [demand], AUDIO, self.layer is not None, self.layer is None):
                    self.layer = change.layer
                    self.last_reason = change.reason
                    c.on_layer_changed(self.t)
                self.layers.append(self.layer)


def test_probes_take_a_subscriber_to_the_top_layer_in_a_few_steps():
    """On an ample link, starting from a low estimate, probe clusters prove the budget:
    the top layer within 6 s, reached with at most 4 probes, none of them failing."""
    c = SubscriberController(transport_cc=True, initial_bps=300_000)
    sim = Downlink(c, Link(10_000_000, queue_bytes=60_000, prop_ms=20.0))
    sim.run_until(6000)
    assert sim.layer == 2, (sim.layers, c.gcc.estimate)
    assert 1 <= c.prober.successes <= 4 and c.prober.failures == 0, (c.prober.successes, c.prober.failures)
    first_top = sim.layers.index(2) * 250
    assert first_top <= 6000


def test_a_capacity_drop_moves_down_a_layer_without_pausing():
    """At the top layer on 5 Mbit/s, the link drops to 700 kbit/s: within 2 s the track
    is on a layer that fits (h), never paused; the estimate tracks the link."""
    c = SubscriberController(transport_cc=True, initial_bps=2_500_000)
    link = Link(5_000_000, queue_bytes=30_000, prop_ms=20.0)
    sim = Downlink(c, link)
    sim.run_until(4000)
    assert sim.layer == 2
    link.capacity_bps = 700_000
    before = len(sim.layers)
    sim.run_until(6000)
    after = sim.layers[before:]
    assert None not in after, after
    assert after[-1] is not None and after[-1] <= 1, after
    assert c.gcc.estimate < 800_000


def test_the_floor_holds_until_loss_at_the_floor_goes_on():
    """A low raw estimate alone never pauses video: the allocation keeps the lowest
    layer (the floor) until loss above 10 % is seen while sending about that little
    for 1.5 s; then the track is paused for bandwidth."""
    c = SubscriberController(transport_cc=True, initial_bps=1_000_000)
    demand = TrackDemand("v", LAYERS)
    c.gcc.estimate = 60_000  # as after a drop: below the lowest layer
    c.gcc.loss_fraction = 0.0
    (change,) = c.allocate(0.0, [TrackDemand("v", LAYERS)], AUDIO, True, False)
    assert change.layer == 0 and change.reason == BANDWIDTH
    assert c.estimate >= AUDIO + LAYERS[0]
    # Loss at the floor: sending about the floor rate, 30 % lost, for 2 s.
    sent = 0
    paused_at = None
    for i in range(1, 101):
        now = i * 20.0
        sent += int((AUDIO + LAYERS[0]) * 20.0 / 8000.0)
        c.gcc.loss_fraction = 0.3
        c.tick(now, SentTotals(sent, 0, i))
        if i % 12 == 0:
            for change in c.allocate(now, [TrackDemand("v", LAYERS)], AUDIO, True, False):
                if change.layer is None:
                    paused_at = now
        demand.current = None
    assert paused_at is not None and paused_at >= 1500.0, paused_at


def test_a_preference_caps_the_layer():
    c = SubscriberController(transport_cc=True, initial_bps=5_000_000)
    sim = Downlink(c, Link(10_000_000, prop_ms=20.0), max_layer=1)
    sim.run_until(3000)
    assert sim.layer == 1 and sim.last_reason == PREFERENCE


@pytest.mark.parametrize("transport_cc", [False, True])
def test_remb_drives_only_the_fallback_mode(transport_cc):
    """REMB and receiver reports move the estimate only for a subscriber without
    transport-cc; with it, they are ignored (its own feedback rules)."""
    c = SubscriberController(transport_cc=transport_cc, initial_bps=300_000)
    for i in range(1, 5):
        c.tick(i * 20.0, SentTotals(i * 1000, 0, i))
    c.on_remb(2_000_000, 100.0)
    assert (c.estimate >= 2_000_000) is (not transport_cc)


def test_an_idle_controller_ticks_every_100_ms_and_every_tick_while_probing():
    c = SubscriberController(transport_cc=True)
    sent = SentTotals(0, 0, 0)
    due = []
    for n in range(1, 51):  # 1 s of a 20 ms timer, nothing to probe
        t = n * TICK
        if c.due(t):
            due.append(t)
            c.tick(t, sent)
    assert len(due) == 10 and all(b - a == 100.0 for a, b in zip(due, due[1:]))
    # A link that can carry more than what is sent: the controller probes, and while the
    # cluster runs (and its result is awaited) every tick is due.
    d = Downlink(SubscriberController(transport_cc=True), Link(capacity_bps=5_000_000))
    d.run_until(3000.0)
    assert d.padding > 0  # probes were sent, paced per tick
    idle_ticks = 3000.0 / 100.0
    assert idle_ticks < d.ticks < 3000.0 / TICK  # more than idle ticks (probing), fewer than every tick
