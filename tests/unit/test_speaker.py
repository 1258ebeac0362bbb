"""Active-speaker detection from audio levels on a virtual clock."""

from __future__ import annotations

from sfu.core.speaker import ActiveSpeakerDetector


def run(det, steps):
    """steps: [(t_ms, {pid: level})] -> [(t_ms, new speaker)]"""
    return [(t, s) for t, levels in steps if (s := det.update(t, levels)) is not None]


def test_the_loudest_above_the_threshold_speaks():
    det = ActiveSpeakerDetector(threshold_dbov=-50, smoothing=1.0)
    assert run(det, [(0, {"a": 127, "b": 127}), (300, {"a": 30, "b": 127})]) == [(300, "a")]
    assert det.speaker == "a"


def test_silence_never_speaks():
    det = ActiveSpeakerDetector(threshold_dbov=-50, smoothing=1.0)
    assert run(det, [(t, {"a": 80, "b": None}) for t in range(0, 3000, 300)]) == []


def test_challenger_needs_the_margin_and_the_hold_time():
    det = ActiveSpeakerDetector(threshold_dbov=-50, margin_db=6, hold_ms=1000, smoothing=1.0)
    steps = [(0, {"a": 30, "b": 127})]
    steps += [(300, {"a": 30, "b": 27})]  # 3 dB louder: not enough
    steps += [(600, {"a": 30, "b": 20})]  # 10 dB louder but within the hold
    steps += [(1000, {"a": 30, "b": 20})]
    assert run(det, steps) == [(0, "a"), (1000, "b")]


def test_speaker_that_falls_silent_is_replaced_and_leaving_is_forgotten():
    det = ActiveSpeakerDetector(threshold_dbov=-50, hold_ms=0, smoothing=1.0)
    assert run(det, [(0, {"a": 20, "b": 45}), (300, {"a": 127, "b": 45})]) == [(0, "a"), (300, "b")]
    assert run(det, [(600, {"a": 20})]) == [(600, "a")]  # b left
    assert det.update(900, {}) is None and det.speaker is None
