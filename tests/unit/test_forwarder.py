"""The DownTrack forwarder: keyframe gating, padding removal without gaps, NACK mapping."""

from sfu.core.forwarder import DropReason, Forwarder, Translation


def run(fwd, packets):
    """Feed (seq, ts, keyframe, padding) tuples; return Translation seqs or DropReasons."""
    out = []
    for seq, ts, key, pad in packets:
        r = fwd.translate(seq, ts, key, pad)
        out.append(r.sequence_number if isinstance(r, Translation) else r)
    return out


def test_video_waits_for_keyframe_then_numbers_from_initial_values():
    fwd = Forwarder(needs_keyframe=True, initial_sequence=500, initial_timestamp=7000)
    r = run(fwd, [(100, 0, False, False), (101, 3000, True, False), (102, 3000, False, False)])
    assert r == [DropReason.WAITING_FOR_KEYFRAME, 500, 501]
    t = fwd.translate(103, 6000, False, False)
    assert t.timestamp == 7000 + 3000


def test_audio_starts_at_once():
    fwd = Forwarder(needs_keyframe=False, initial_sequence=1, initial_timestamp=0)
    assert run(fwd, [(9, 960, False, False)]) == [1]


def test_output_sequence_wraps_at_16_bits():
    fwd = Forwarder(needs_keyframe=False, initial_sequence=65535, initial_timestamp=2**32 - 10)
    r = [fwd.translate(s, 20 * (s - 10), False, False) for s in (10, 11)]
    assert [t.sequence_number for t in r] == [65535, 0]
    assert r[1].timestamp == (2**32 - 10 + 20) % 2**32


def test_padding_is_dropped_without_leaving_a_gap():
    fwd = Forwarder(needs_keyframe=False, initial_sequence=0, initial_timestamp=0)
    r = run(fwd, [(10, 0, False, False), (11, 0, False, True), (12, 0, False, True), (13, 0, False, False), (14, 0, False, False)])
    assert r == [0, DropReason.PADDING, DropReason.PADDING, 1, 2]


def test_upstream_loss_keeps_its_gap_and_late_packet_fills_it():
    fwd = Forwarder(needs_keyframe=False, initial_sequence=0, initial_timestamp=0)
    r = run(fwd, [(10, 0, False, False), (12, 0, False, False), (11, 0, False, False)])
    assert r == [0, 2, 1]


def test_late_packet_before_a_closed_padding_slot_maps_to_its_old_number():
    fwd = Forwarder(needs_keyframe=False, initial_sequence=0, initial_timestamp=0)
    r = run(fwd, [(10, 0, False, False), (12, 0, False, False), (13, 0, False, True), (14, 0, False, False), (11, 0, False, False)])
    assert r == [0, 2, DropReason.PADDING, 3, 1]


def test_nack_mapping_back_to_source():
    fwd = Forwarder(needs_keyframe=False, initial_sequence=65534, initial_timestamp=0)
    run(fwd, [(100, 0, False, False), (101, 0, False, True), (102, 0, False, False), (103, 0, False, False)])
    # outputs: 100->65534, 102->65535, 103->0
    assert fwd.source_sequence(65534) [:3] == (0, 100, 0)
    assert fwd.source_sequence(65535) [:3] == (0, 102, 0)
    assert fwd.source_sequence(0) [:3] == (0, 103, 0)
    assert fwd.source_sequence(1) is None  # not sent yet
    assert fwd.source_sequence(65000) is None  # before the start


def test_duplicates_and_too_old():
    fwd = Forwarder(needs_keyframe=False, initial_sequence=0, initial_timestamp=0, max_late=10)
    run(fwd, [(100, 0, False, False), (150, 0, False, False)])
    assert fwd.translate(150, 0, False, False) is DropReason.DUPLICATE
    assert fwd.translate(120, 0, False, False) is DropReason.TOO_OLD
    assert fwd.translate(99, 0, False, False) is DropReason.TOO_OLD


def test_layer_switch_continues_sequence_and_timestamp():
    fwd = Forwarder(needs_keyframe=True, initial_sequence=65534, initial_timestamp=1000)
    fwd.switch(0, 500, 90_000)
    assert [fwd.translate(s, 90_000 + 3000 * (s - 500), s == 500, False).sequence_number for s in (500, 501, 502)] == [
        65534,
        65535,
        0,
    ]
    assert fwd.last_out_timestamp == 1000 + 6000
    # Layer 2 has its own sequence and timestamp space; switch at its keyframe 7000.
    fwd.switch(2, 7000, 5_000_000, out_timestamp=fwd.last_out_timestamp + 3000)
    t = fwd.translate(7000, 5_000_000, True, False)
    assert (t.sequence_number, t.timestamp) == (1, 1000 + 9000)
    t = fwd.translate(7001, 5_003_000, False, False)
    assert (t.sequence_number, t.timestamp) == (2, 1000 + 12000)
    assert fwd.layer == 2 and fwd.timestamp_offset == 1000 + 9000 - 5_000_000


def test_nack_maps_to_the_epoch_and_layer_that_sent_it():
    fwd = Forwarder(needs_keyframe=False, initial_sequence=10, initial_timestamp=0)
    fwd.switch(0, 100, 0)
    for s in (100, 101, 102):
        fwd.translate(s, 0, False, False)  # out 10, 11, 12
    fwd.switch(1, 40, 50, out_timestamp=100)
    fwd.translate(40, 50, True, False)  # out 13
    fwd.translate(41, 51, False, True)  # padding: slot closed
    fwd.translate(42, 52, False, False)  # out 14
    assert fwd.source_sequence(11) == (0, 101, 0, 1)
    assert fwd.source_sequence(12) [:3] == (0, 102, 0)
    assert fwd.source_sequence(13) == (1, 40, 50, 2)
    assert fwd.source_sequence(14) == (1, 42, 50, 2)
    assert fwd.recent(5) == [(42, 14), (40, 13)]
    assert fwd.source_sequence(15) is None
    assert fwd.source_sequence(9) is None


def test_padding_on_the_new_layer_leaves_no_gap():
    fwd = Forwarder(needs_keyframe=True, initial_sequence=0, initial_timestamp=0)
    fwd.switch(0, 10, 0)
    fwd.translate(10, 0, True, False)
    fwd.switch(1, 300, 0, out_timestamp=10)
    outs = [fwd.translate(s, 0, s == 300, s == 301) for s in (300, 301, 302)]
    assert [o.sequence_number if not isinstance(o, DropReason) else o for o in outs] == [1, DropReason.PADDING, 2]
