"""A publisher's simulcast offer applied by a real Participant (aiortc answers, no
network), then synthetic packets: routed by MID + RID, RTX by repaired RID, the
SSRC binding kept once the extensions stop; odd offers answered with what the server
supports."""

from __future__ import annotations

import re

from aiortc import RTCPeerConnection

from sfu.core.rtp import URI_MID, URI_RID, URI_RRID
from sfu.metrics import COUNTERS
from sfu.participant import Participant
from sfu.room import Room
from sfu.rtc.adapter import set_ice_addresses

from .synth import rtp, vp8_payload


async def simulcast_offer(rids: list[str], codec_filter: str | None = None, declared: list[tuple[int, int]] = ()) -> str:
    """An aiortc sendonly video offer with RID/RRID extensions, a=rid and a=simulcast;
    ``declared`` (media SSRC, RTX SSRC) pairs are written as a=ssrc lines and FID
    groups without RIDs, as Firefox does."""
    pc = RTCPeerConnection()
    pc.addTransceiver("video", direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    lines = sdp.split("\r\n")
    out = []
    for line in lines:
        if line.startswith("a=ssrc") or line.startswith("a=msid"):
            continue  # Chrome's simulcast offers declare no SSRCs
        out.append(line)
        if line.startswith("a=mid:"):
            out += [f"a=extmap:10 {URI_RID}", f"a=extmap:11 {URI_RRID}"]
            out += [f"a=rid:{r} send" for r in rids]
            out.append("a=simulcast:send " + ";".join(rids))
            for media, rtx in declared:
                out += [f"a=ssrc:{media} cname:fox", f"a=ssrc:{rtx} cname:fox", f"a=ssrc-group:FID {media} {rtx}"]
    sdp = "\r\n".join(out)
    if codec_filter:
        sdp = codec_filter
    return sdp


def mid_ext_id(sdp: str) -> int:
    return int(re.search(rf"a=extmap:(\d+) {re.escape(URI_MID)}", sdp).group(1))


async def publish(rids, declared=()):
    set_ice_addresses(["127.0.0.1"])
    room = Room("r", 10)
    events: list[dict] = []
    p = Participant(room, "pub", events.append)
    room.add(p)
    offer = await simulcast_offer(rids, declared=declared)
    answer, tracks, published = await p.handle_offer(offer, {"0": {"publish": {"source": "camera"}}})
    return p, offer, answer, published


async def test_answer_accepts_three_layers_and_packets_route_by_rid():
    p, offer, answer, published = await publish(["q", "h", "f"])
    try:
        assert "a=simulcast:recv q;h;f" in answer
        assert all(f"a=rid:{r} recv" in answer for r in "qhf")
        assert f"a=extmap:10 {URI_RID}" in answer and f"a=extmap:11 {URI_RRID}" in answer
        (up,) = published
        assert up.simulcast and [layer.rid for layer in up.layers] == ["q", "h", "f"]
        assert up.describe()["layers"] == ["q", "h", "f"]
        mid = (mid_ext_id(offer), b"0")
        now = 1000.0
        for i, (rid, ssrc) in enumerate(((b"q", 11), (b"h", 22), (b"f", 33))):
            p.on_rtp(rtp(1, 0, ssrc=ssrc, payload=vp8_payload(True), ext=[mid, (10, rid)]), now)
            assert up.layers[i].ssrc == ssrc
        # RTX by repaired RID (payload type of the RTX codec), restored onto layer h.
        rtx_pt = up.codec.rtx_payload_type
        p.on_rtp(rtp(7, 0, ssrc=222, pt=rtx_pt, payload=b"\x00\x02" + vp8_payload(False), ext=[mid, (11, b"h")]), now)
        assert up.layers[1].rtx_ssrc == 222 and up.layers[1].stats.received == 2
        # Once bound, packets without extensions still route by SSRC.
        p.on_rtp(rtp(3, 0, ssrc=33, payload=vp8_payload(False)), now)
        assert up.layers[2].stats.received == 2
        # A RID the answer did not accept, or no RID at all: dropped and counted.
        before = COUNTERS.dropped["unknown_ssrc"]
        p.on_rtp(rtp(1, 0, ssrc=44, payload=vp8_payload(True), ext=[mid, (10, b"x")]), now)
        p.on_rtp(rtp(1, 0, ssrc=55, payload=vp8_payload(True), ext=[mid]), now)
        assert COUNTERS.dropped["unknown_ssrc"] == before + 2
        # RR for every layer SSRC, REMB listing them all.
        assert sorted(up.media_ssrcs()) == [11, 22, 33]
        assert up.layer_bitrates(now)[0] is not None and up.layer_bitrates(now + 600)[0] is None
    finally:
        await p.close()


async def test_firefox_declared_ssrcs_route_rtx_without_a_repaired_rid():
    """Firefox's simulcast offer declares every layer's SSRC and its RTX SSRC (FID
    groups) but not which RID each is: media SSRCs are bound by the RID extension,
    and a layer's RTX SSRC then follows its media SSRC, repaired RID or not."""
    p, offer, _, published = await publish(["q", "h", "f"], declared=[(11, 111), (22, 222), (33, 333)])
    try:
        (up,) = published
        assert [layer.ssrc for layer in up.layers] == [None, None, None]  # not bound by the SDP
        mid = (mid_ext_id(offer), b"0")
        now = 1000.0
        for ssrc, rid in ((22, b"h"), (11, b"q"), (33, b"f")):  # in any order
            p.on_rtp(rtp(1, 0, ssrc=ssrc, payload=vp8_payload(True), ext=[mid, (10, rid)]), now)
        assert [(layer.ssrc, layer.rtx_ssrc) for layer in up.layers] == [(11, 111), (22, 222), (33, 333)]
        # A retransmission on h's RTX SSRC with no extension at all is restored onto h.
        rtx_pt = up.codec.rtx_payload_type
        p.on_rtp(rtp(5, 0, ssrc=222, pt=rtx_pt, payload=b"\x00\x02" + vp8_payload(False)), now)
        assert up.layers[1].stats.received == 2
    finally:
        await p.close()


async def test_more_layers_than_supported_and_bad_rids_are_not_received():
    p, _, answer, published = await publish(["a", "b", "c", "d", "e"])
    try:
        assert "a=simulcast:recv a;b;c" in answer
        assert "a=rid:d" not in answer and "a=rid:e" not in answer
        assert [layer.rid for layer in published[0].layers] == ["a", "b", "c"]
    finally:
        await p.close()


async def test_offer_with_a_codec_the_server_cannot_forward_is_rejected_cleanly():
    set_ice_addresses(["127.0.0.1"])
    room = Room("r", 10)
    p = Participant(room, "pub", lambda e: None)
    room.add(p)
    offer = await simulcast_offer(["q", "h"])
    # Only an unknown codec on the video m-line.
    offer = re.sub(r"m=video (\d+) (\S+) [\d ]+", r"m=video \1 \2 100", offer)
    offer = re.sub(r"a=rtpmap:\d+ \S+", "", offer)
    offer = offer.replace("a=mid:0", "a=mid:0\r\na=rtpmap:100 AV2/90000")
    offer = "\r\n".join(line for line in offer.split("\r\n") if line and not line.startswith(("a=rtcp-fb", "a=fmtp")))
    try:
        answer, tracks, published = await p.handle_offer(offer + "\r\n", {"0": {"publish": {}}})
        assert published == [] and tracks == {"0": {"rejected": "no codec the server can forward"}}
        assert "m=video 0 " in answer and "a=simulcast" not in answer
        assert not re.search(r"a=group:BUNDLE.* 0\b", answer)
        # The participant goes on: a later offer with a codec it knows publishes.
        answer, tracks, published = await p.handle_offer(await simulcast_offer(["q"]), {"0": {"publish": {}}})
        assert len(published) == 1 and tracks["0"]["direction"] == "publish"
    finally:
        await p.close()


async def test_bindings_exist_only_for_offered_m_lines():
    """An offer's `tracks` naming thousands of mids its SDP does not have leaves
    nothing behind: bindings are kept only for the offer's own m-lines (memory per
    connection stays bounded whatever the client sends)."""
    set_ice_addresses(["127.0.0.1"])
    room = Room("r", 10)
    p = Participant(room, "pub", lambda e: None)
    room.add(p)
    try:
        offer = await simulcast_offer(["q"])
        junk = {str(i): {"subscribe": f"TR_{i:08x}"} for i in range(1, 5000)}
        for _ in range(3):
            await p.handle_offer(offer, {"0": {"publish": {"source": "camera"}}, **junk})
        assert set(p._bindings) <= {"0"}
    finally:
        await p.close()
