"""A DownTrack of a simulcast UpTrack with synthetic packets: switches only at a
keyframe of the target layer, with continuous sequence numbers, timestamps and VP8
PictureIDs; NACKs after a switch map back to the right layer; pause and resume."""

from __future__ import annotations

from sfu.core.codecs import parse_vp8_descriptor
from sfu.core.rtcp import SenderReport, parse_rtcp
from sfu.core.rtp import URI_ABS_SEND_TIME, URI_MID, parse_rtp
from sfu.downtrack import DownTrack
from sfu.rtc.adapter import CodecInfo, MediaInfo
from sfu.uptrack import UpTrack

from .synth import rtp, vp8_payload

SSRCS = (0x1000, 0x2000, 0x3000)


def make():
    plis: list[int] = []
    codec = CodecInfo(96, "video/VP8", 90000, rtx_payload_type=97)
    up = UpTrack("TR_1", "PA_pub", "video", "camera", "0", codec, {}, plis.append, rids=["q", "h", "f"])
    for layer, ssrc in zip(up.layers, SSRCS):
        layer.bind_ssrc(ssrc)
    out_codec = CodecInfo(120, "video/VP8", 90000, rtx_payload_type=121)
    media = MediaInfo("3", "video", "sendonly", [out_codec], {URI_MID: 4, URI_ABS_SEND_TIME: 2}, ssrc=0xBBBB, rtx_ssrc=0xCCCC)
    sent: list[bytes] = []
    rtcp: list[bytes] = []
    changes: list[tuple] = []
    dt = DownTrack(
        up,
        "PA_sub",
        media,
        lambda d: sent.append(d) or True,
        lambda d: rtcp.append(d) or True,
        on_layer_change=lambda d, prev, layer, reason: changes.append((prev, layer, reason)),
    )
    up.downtracks.append(dt)
    return up, dt, sent, rtcp, plis, changes


class Publisher:
    """Three layers with their own sequence numbers, timestamps and PictureIDs, one
    frame (one packet) every 50 ms on each."""

    def __init__(self, up: UpTrack) -> None:
        self.up = up
        self.seq = [100, 20_000, 65_530]
        self.ts = [1_000, 2_000_000, 4_000_000_000]
        self.pid = [10, 3000, 32_760]
        self.now = 0.0

    def frame(self, layer: int, keyframe: bool = False) -> None:
        data = rtp(
            self.seq[layer],
            self.ts[layer],
            ssrc=SSRCS[layer],
            marker=True,
            payload=vp8_payload(keyframe, picture_id=self.pid[layer]),
        )
        self.up.on_rtp(parse_rtp(data), self.now, self.up.layers[layer])
        self.seq[layer] = (self.seq[layer] + 1) & 0xFFFF
        self.ts[layer] = (self.ts[layer] + 4500) & 0xFFFFFFFF
        self.pid[layer] = (self.pid[layer] + 1) & 0x7FFF

    def tick(self, keyframe_on: int | None = None) -> None:
        """One frame on every layer (a keyframe on ``keyframe_on``)."""
        for layer in range(3):
            self.frame(layer, keyframe=layer == keyframe_on)
        self.now += 50.0


def outputs(sent):
    out = []
    for data in sent:
        p = parse_rtp(data)
        if p.ssrc == 0xBBBB:
            out.append((p.sequence_number, p.timestamp, parse_vp8_descriptor(p.payload).picture_id))
    return out


def test_nothing_is_forwarded_before_a_target_and_the_start_waits_for_a_keyframe():
    up, dt, sent, _, plis, changes = make()
    pub = Publisher(up)
    pub.tick()
    assert sent == [] and plis == []
    dt.set_target(2, "bandwidth", pub.now)
    assert plis == [SSRCS[2]]  # a keyframe of the target layer is requested
    pub.tick()
    assert sent == []
    pub.tick(keyframe_on=2)
    assert len(sent) == 1 and changes == [(None, 2, "bandwidth")]
    assert dt.layer == 2 and dt.rid == "f"
    assert [len(layer.downtracks) for layer in up.layers] == [0, 0, 1]


def test_switch_happens_at_the_target_keyframe_with_continuous_numbering():
    up, dt, sent, _, plis, changes = make()
    pub = Publisher(up)
    dt.set_target(2, "bandwidth", pub.now)
    pub.tick(keyframe_on=2)
    for _ in range(3):
        pub.tick()
    dt.set_target(0, "preference", pub.now)
    assert plis[-1] == SSRCS[0]
    for _ in range(2):
        pub.tick()  # layer 0 has no keyframe yet: layer 2 goes on
    assert dt.layer == 2
    pub.tick(keyframe_on=0)
    assert dt.layer == 0 and changes[-1] == (2, 0, "preference")
    for _ in range(3):
        pub.tick()
    out = outputs(sent)
    assert len(out) == 10
    seqs = [s for s, _, _ in out]
    assert all((b - a) & 0xFFFF == 1 for a, b in zip(seqs, seqs[1:]))
    stamps = [t for _, t, _ in out]
    assert all(0 < (b - a) & 0xFFFFFFFF <= 9000 for a, b in zip(stamps, stamps[1:]))
    pids = [p for _, _, p in out]
    assert all((b - a) & 0x7FFF == 1 for a, b in zip(pids, pids[1:]))
    # Only the new layer is delivered to the DownTrack now.
    assert [len(layer.downtracks) for layer in up.layers] == [1, 0, 0]


def test_bandwidth_down_switch_stops_the_current_layer_at_once():
    up, dt, sent, _, _, changes = make()
    pub = Publisher(up)
    dt.set_target(2, "bandwidth", pub.now)
    pub.tick(keyframe_on=2)
    dt.set_target(0, "bandwidth", pub.now)
    pub.tick()  # neither layer 2 (left) nor layer 0 (no keyframe yet) is sent
    assert len(outputs(sent)) == 1
    pub.tick(keyframe_on=0)
    out = outputs(sent)
    assert len(out) == 2 and (out[1][0] - out[0][0]) & 0xFFFF == 1
    assert changes[-1] == (2, 0, "bandwidth")


def test_nack_after_a_switch_resends_only_the_new_layer_with_its_numbers():
    up, dt, sent, _, _, _ = make()
    pub = Publisher(up)
    dt.set_target(1, "bandwidth", pub.now)
    pub.tick(keyframe_on=1)
    pub.tick()
    dt.set_target(0, "preference", pub.now)
    pub.tick(keyframe_on=0)
    pub.tick()
    pub.tick()
    out = outputs(sent)
    old_seq = out[1][0]  # from layer 1, before the switch: the keyframe supersedes it
    new = out[3]  # second packet of layer 0 (VP8 numbers rewritten after the switch)
    sent.clear()
    assert dt.on_nack([old_seq, new[0]], pub.now) == 1
    (rtx,) = [parse_rtp(d) for d in sent]
    assert rtx.ssrc == 0xCCCC and rtx.payload_type == 121
    assert int.from_bytes(rtx.payload[:2], "big") == new[0] and rtx.timestamp == new[1]
    assert parse_vp8_descriptor(rtx.payload[2:]).picture_id == new[2]


def test_pause_is_immediate_and_resume_waits_for_a_keyframe():
    up, dt, sent, _, _, changes = make()
    pub = Publisher(up)
    dt.set_target(0, "bandwidth", pub.now)
    pub.tick(keyframe_on=0)
    dt.set_target(None, "paused", pub.now)
    assert changes[-1] == (0, None, "paused") and dt.layer_label == "paused"
    pub.tick(keyframe_on=0)
    assert len(outputs(sent)) == 1
    dt.set_target(0, "paused", pub.now)
    pub.tick()
    assert len(outputs(sent)) == 1  # not mid-GOP
    pub.tick(keyframe_on=0)
    out = outputs(sent)
    assert len(out) == 2 and (out[1][0] - out[0][0]) & 0xFFFF == 1
    assert changes[-1] == (None, 0, "paused") and dt.layer_label == "0"


def test_sender_reports_are_translated_only_from_the_layer_forwarded():
    up, dt, _, rtcp, _, _ = make()
    pub = Publisher(up)
    dt.set_target(1, "bandwidth", pub.now)
    pub.tick(keyframe_on=1)
    up.on_sender_report(SenderReport(SSRCS[0], 5 << 32, 1_000, 1, 1), pub.now, up.layers[0])
    assert rtcp == []
    up.on_sender_report(SenderReport(SSRCS[1], 5 << 32, 2_000_000, 1, 1), pub.now, up.layers[1])
    (sr,) = parse_rtcp(rtcp[0])
    assert sr.ssrc == 0xBBBB and sr.rtp_timestamp == (2_000_000 + dt.forwarder.timestamp_offset) & 0xFFFFFFFF


def test_switch_timestamp_follows_the_sender_reports_wall_clock():
    up, dt, sent, _, _, _ = make()
    pub = Publisher(up)
    # Both layers' SRs say: layer 0 ts 1_000 and layer 2 ts 4_000_000_000 are the same instant.
    up.on_sender_report(SenderReport(SSRCS[0], 10 << 32, 1_000, 1, 1), 0, up.layers[0])
    up.on_sender_report(SenderReport(SSRCS[2], 10 << 32, 4_000_000_000, 1, 1), 0, up.layers[2])
    dt.set_target(0, "bandwidth", pub.now)
    pub.tick(keyframe_on=0)
    pub.frame(2)  # layer 2 is a little ahead in the same 50 ms
    dt.set_target(2, "bandwidth", pub.now)
    pub.now += 20.0
    pub.frame(0)
    pub.frame(2, keyframe=True)
    out = outputs(sent)
    # Layer 2's keyframe is 2 frames (9000 ticks) after layer 0's first frame by the SRs.
    assert (out[-1][1] - out[0][1]) & 0xFFFFFFFF == 9000
