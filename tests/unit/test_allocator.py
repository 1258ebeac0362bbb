"""Table tests of the allocator and the layer selector (virtual clock)."""

from __future__ import annotations

import pytest

from sfu.core.allocator import (
    BANDWIDTH,
    LAYER_LOST,
    PAUSED,
    PREFERENCE,
    PRIORITY_OTHER,
    PRIORITY_SCREEN,
    PRIORITY_SPEAKER,
    LayerSelector,
    TrackDemand,
    allocate,
    covering_layer,
)

Q, H, F = 150_000, 400_000, 800_000
SIMULCAST = [Q, H, F]


def demand(key, bitrates=SIMULCAST, **kw):
    return TrackDemand(key=key, layer_bitrates=list(bitrates), **kw)


@pytest.mark.parametrize(
    "budget, expected",
    [
        (2_000_000, 2),
        (F * 1.15, 2),
        (F * 1.14, 1),
        (H * 1.15, 1),
        (Q * 1.15, 0),
        (Q, None),
        (0, None),
    ],
)
def test_one_track_gets_the_best_layer_that_fits(budget, expected):
    a = allocate(budget, [demand("v")])["v"]
    assert a.layer == expected
    assert a.reason == BANDWIDTH
    assert a.bitrate == (SIMULCAST[expected] if expected is not None else 0)


def test_every_track_gets_its_lowest_layer_before_any_gets_more():
    budget = 3 * Q * 1.15 + 10
    out = allocate(budget, [demand("a"), demand("b"), demand("c")])
    assert [out[k].layer for k in "abc"] == [0, 0, 0]


def test_screen_share_then_speaker_then_others():
    demands = [
        demand("cam", priority=PRIORITY_OTHER),
        demand("speaker", priority=PRIORITY_SPEAKER),
        demand("screen", priority=PRIORITY_SCREEN),
    ]
    out = allocate(Q * 1.15 * 2 + 10, demands)
    assert (out["screen"].layer, out["speaker"].layer, out["cam"].layer) == (0, 0, None)
    # One step per pass, in priority order: screen and speaker reach the middle layer.
    out = allocate(Q * 3 + (F - Q) * 1.15 + 10, demands)
    assert (out["screen"].layer, out["speaker"].layer, out["cam"].layer) == (1, 1, 0)
    # The next pass gives the others their step before the screen goes higher.
    out = allocate(Q * 2 + F + (H - Q) * 1.15 + 10, demands)
    assert (out["screen"].layer, out["speaker"].layer, out["cam"].layer) == (1, 1, 1)


def test_margin_applies_only_above_the_current_layer():
    assert allocate(F * 1.05, [demand("v", current=2)])["v"].layer == 2
    assert allocate(F * 1.05, [demand("v", current=1)])["v"].layer == 1


def test_preference_cap_paused_and_lost_layers():
    out = allocate(10_000_000, [demand("v", max_layer=1)])["v"]
    assert (out.layer, out.reason) == (1, PREFERENCE)
    paused = allocate(10_000_000, [demand("v", paused=True)])["v"]
    assert (paused.layer, paused.reason) == (None, PAUSED)
    lost = allocate(10_000_000, [demand("v", bitrates=[Q, H, None], current=2)])["v"]
    assert (lost.layer, lost.reason) == (1, LAYER_LOST)
    skip = allocate(10_000_000, [demand("v", bitrates=[Q, None, F], current=0)])["v"]
    assert skip.layer == 2
    # Only the lowest layer sent yet (the publisher's encoder has not started the others):
    # what the subscriber gets is the publisher's doing, not the link's.
    start = allocate(10_000_000, [demand("v", bitrates=[Q, None, None], max_layer=2)])["v"]
    assert (start.layer, start.reason) == (0, LAYER_LOST)
    uncapped = allocate(10_000_000, [demand("v", bitrates=[Q, None, None])])["v"]
    assert (uncapped.layer, uncapped.reason) == (0, BANDWIDTH)  # no tile size asked: nothing is missing
    capped = allocate(10_000_000, [demand("v", bitrates=[Q, None, F], max_layer=1)])["v"]
    assert (capped.layer, capped.reason) == (0, LAYER_LOST)
    short = allocate(Q * 1.2, [demand("v", bitrates=[Q, H, None])])["v"]
    assert (short.layer, short.reason) == (0, BANDWIDTH)  # h is sent but does not fit
    none = allocate(10_000_000, [demand("v", bitrates=[None, None, None])])["v"]
    assert (none.layer, none.reason) == (None, LAYER_LOST)
    # Capped at h before the publisher's encoder started f: h is what the cap names, so
    # the reason is the cap (it would not change when f starts: no new event then).
    at_cap = allocate(10_000_000, [demand("v", bitrates=[Q, H, None], max_layer=1)])["v"]
    assert (at_cap.layer, at_cap.reason) == (1, PREFERENCE)
    # ... but held below the cap by the link it is the bandwidth.
    below_cap = allocate(H * 1.1, [demand("v", bitrates=[Q, H, None], max_layer=2)])["v"]
    assert (below_cap.layer, below_cap.reason) == (0, BANDWIDTH)


def test_single_encoding_track_is_one_layer():
    assert allocate(1_000_000, [demand("v", bitrates=[700_000])])["v"].layer == 0
    assert allocate(500_000, [demand("v", bitrates=[700_000])])["v"].layer is None


def run(selector, steps, demands_fn=lambda: [demand("v")]):
    """steps: [(t_ms, budget)] -> [(t_ms, layer, reason)] for every change."""
    seen = []
    for t, budget in steps:
        for c in selector.select(t, budget, demands_fn()):
            seen.append((t, c.layer, c.reason))
    return seen


def test_selector_steps_down_at_once_and_up_after_holding():
    sel = LayerSelector(up_stable_ms=2000)
    steps = [(0, 2_000_000), (250, 2_000_000), (500, 300_000), (750, 300_000)]
    steps += [(1000 + 250 * i, 2_000_000) for i in range(12)]
    assert run(sel, steps) == [(0, 2, BANDWIDTH), (500, 0, BANDWIDTH), (3000, 2, BANDWIDTH)]


def test_selector_does_not_flap_on_an_oscillating_estimate():
    sel = LayerSelector(up_stable_ms=2000)
    steps = [(t, 2_000_000 if (t // 500) % 2 else 300_000) for t in range(0, 20_000, 250)]
    changes = run(sel, steps)
    assert changes == [(0, 0, BANDWIDTH)]


def test_selector_pauses_when_even_the_lowest_layer_does_not_fit_and_resumes():
    sel = LayerSelector(up_stable_ms=1000)
    steps = [(0, 700_000), (100, 50_000), (200, 700_000), (700, 700_000), (1200, 700_000)]
    assert run(sel, steps) == [(0, 1, BANDWIDTH), (100, None, BANDWIDTH), (1200, 1, BANDWIDTH)]


def test_selector_preference_and_layer_loss_act_at_once():
    sel = LayerSelector(up_stable_ms=2000)
    state = {"cap": 0, "bitrates": SIMULCAST, "paused": False}

    def demands():
        return [demand("v", bitrates=state["bitrates"], max_layer=state["cap"], paused=state["paused"])]

    assert run(sel, [(0, 5_000_000)], demands) == [(0, 0, PREFERENCE)]
    state["cap"] = None  # the subscriber raised its cap (a bigger tile): at once
    assert run(sel, [(100, 5_000_000)], demands) == [(100, 2, BANDWIDTH)]
    state["bitrates"] = [Q, H, None]
    assert run(sel, [(2200, 5_000_000)], demands) == [(2200, 1, LAYER_LOST)]
    state["paused"] = True
    assert run(sel, [(2300, 5_000_000)], demands) == [(2300, None, PAUSED)]
    state["paused"] = False
    assert run(sel, [(2400, 5_000_000)], demands) == [(2400, 1, BANDWIDTH)]
    state["cap"] = 0
    assert run(sel, [(2500, 5_000_000)], demands) == [(2500, 0, PREFERENCE)]


def test_selector_forgets_tracks_that_are_gone():
    sel = LayerSelector()
    run(sel, [(0, 5_000_000)])
    assert sel.layers == {"v": 2}
    assert sel.select(100, 5_000_000, []) == []
    assert sel.layers == {}


def test_selector_goes_up_at_once_when_a_probe_proved_the_budget():
    sel = LayerSelector(up_stable_ms=2000)
    assert [(c.layer, c.reason) for c in sel.select(0, 300_000, [demand("v")])] == [(0, BANDWIDTH)]
    assert sel.select(100, 2_000_000, [demand("v")]) == []  # an estimate alone waits
    changes = sel.select(200, 2_000_000, [demand("v")], verified=True)
    assert [(c.previous, c.layer) for c in changes] == [(0, 2)]


def test_an_allocation_at_the_cap_still_waits_to_go_up():
    """A track capped at the middle layer that fell to the lowest for bandwidth goes
    back up only after the stable time, although the result then sits at its cap."""
    sel = LayerSelector(up_stable_ms=2000)

    def demands():
        return [demand("v", max_layer=1)]

    assert run(sel, [(0, 5_000_000)], demands) == [(0, 1, PREFERENCE)]
    assert run(sel, [(100, 200_000)], demands) == [(100, 0, BANDWIDTH)]
    assert run(sel, [(200, 5_000_000), (1000, 5_000_000)], demands) == []
    assert run(sel, [(2200, 5_000_000)], demands) == [(2200, 1, PREFERENCE)]


@pytest.mark.parametrize(
    ("width", "height", "expected"),
    [
        (None, None, None),  # nothing asked: no cap
        (436, 326, 1),  # a tile between two layers gets the larger (640x360), not an upscaled 320x180
        (320, 180, 0),
        (321, 180, 1),  # one pixel wider than q: h covers it
        (None, 360, 1),
        (None, 200, 1),
        (1920, 1080, 2),  # larger than every layer: the largest
        (100, 50, 0),
    ],
)
def test_covering_layer_picks_the_smallest_layer_that_covers_the_tile(width, height, expected):
    sizes = [(320, 180), (640, 360), (1280, 720)]
    assert covering_layer(sizes, width, height) == expected


def test_covering_layer_with_unknown_sizes():
    assert covering_layer([(None, None), (None, None)], 100, 100) is None
    # Unknown layers are estimated at the usual 2x steps from the nearest known one.
    assert covering_layer([(320, 180), (None, None), (None, None)], None, 360) == 1
    assert covering_layer([(320, 180), (None, None), (1280, 720)], None, 360) == 1  # h's keyframe not seen yet
    assert covering_layer([(None, None), (None, None), (1280, 720)], None, 100) == 0
    assert covering_layer([(320, 180), (640, 360), (None, None)], None, 361) == 2


def test_a_stall_of_every_layer_keeps_the_current_layer():
    """When nothing at all arrives from the publisher for a while (every layer lost,
    e.g. a CPU-starved encoder), the track keeps its layer instead of pausing: there is
    nothing better to switch to, and a pause would cost a keyframe when media comes back."""
    sel = LayerSelector()
    (change,) = sel.select(0.0, 2_000_000, [TrackDemand("a", [Q, H, F])])
    assert change.layer == 2
    assert sel.select(100.0, 2_000_000, [TrackDemand("a", [None, None, None])]) == []
    assert sel.layers["a"] == 2
    # A single layer lost still moves the track to what is sent.
    (change,) = sel.select(200.0, 2_000_000, [TrackDemand("a", [Q, H, None])])
    assert (change.layer, change.reason) == (1, LAYER_LOST)


def test_selector_a_layer_the_publisher_starts_late_is_taken_after_holding():
    """Chrome starts its simulcast layers one by one as its own estimate grows: the first
    layer is taken at once, a later one (still below a layer not sent) only after the
    allocation held for up_stable_ms, like any step up."""
    sel = LayerSelector(up_stable_ms=2000)
    state = {"bitrates": [Q, None, None]}

    def demands():
        return [demand("v", bitrates=state["bitrates"], max_layer=2)]

    assert run(sel, [(0, 5_000_000)], demands) == [(0, 0, LAYER_LOST)]
    state["bitrates"] = [Q, H, None]
    assert run(sel, [(500 + 250 * i, 5_000_000) for i in range(7)], demands) == []
    assert run(sel, [(2500, 5_000_000)], demands) == [(2500, 1, LAYER_LOST)]
