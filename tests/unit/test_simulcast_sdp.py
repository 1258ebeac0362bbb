"""Reading a=rid/a=simulcast from offers and writing them into answers (RFC 8851/8853)."""

from __future__ import annotations

from sfu.core.rtp import URI_RID, URI_RRID
from sfu.core.simulcast_sdp import (
    munge_answer,
    parse_simulcast_offers,
    rid_extension_ids,
)

OFFER = "\r\n".join(
    [
        "v=0",
        "o=- 1 2 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        "m=audio 9 UDP/TLS/RTP/SAVPF 111",
        "a=mid:0",
        "a=sendonly",
        "m=video 9 UDP/TLS/RTP/SAVPF 96 97",
        "a=mid:1",
        "a=sendonly",
        "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid",
        f"a=extmap:10 {URI_RID}",
        f"a=extmap:11 {URI_RRID}",
        "a=rid:q send",
        "a=rid:h send pt=96;max-width=640",
        "a=rid:f send",
        "a=simulcast:send q;h;f",
        "",
    ]
)


def test_parse_reads_rids_in_order_and_extension_ids():
    offers = parse_simulcast_offers(OFFER)
    assert list(offers) == ["1"]
    o = offers["1"]
    assert (o.rids, o.rejected, o.rid_extension_id, o.rrid_extension_id) == (["q", "h", "f"], [], 10, 11)


def test_parse_limits_layers_and_rejects_unknown_or_invalid_rids():
    sdp = OFFER.replace("a=simulcast:send q;h;f", "a=simulcast:send ~q,x;h;bad!;zz;f;g").replace(
        "a=rid:f send", "a=rid:f send\r\na=rid:g send\r\na=rid:bad! send"
    )
    o = parse_simulcast_offers(sdp)["1"]
    assert o.rids == ["q", "h", "f"]
    assert o.rejected == ["bad!", "zz", "g"]


def test_parse_ignores_offers_without_simulcast_or_rid_extension():
    assert parse_simulcast_offers(OFFER.replace("a=simulcast:send q;h;f\r\n", "")) == {}
    assert parse_simulcast_offers(OFFER.replace(f"a=extmap:10 {URI_RID}\r\n", "")) == {}
    assert parse_simulcast_offers("garbage") == {}


ANSWER = "\r\n".join(
    [
        "v=0",
        "o=- 3 4 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        "m=audio 9 UDP/TLS/RTP/SAVPF 111",
        "a=mid:0",
        "a=recvonly",
        "m=video 9 UDP/TLS/RTP/SAVPF 96 97",
        "a=mid:1",
        "a=recvonly",
        "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid",
        "",
    ]
)


def test_munge_adds_extensions_rids_and_simulcast_recv_to_the_receiving_m_line():
    out = munge_answer(ANSWER, parse_simulcast_offers(OFFER))
    audio, video = out.split("m=video")
    assert "a=rid" not in audio and "simulcast" not in audio
    lines = video.split("\r\n")
    assert f"a=extmap:10 {URI_RID}" in lines and f"a=extmap:11 {URI_RRID}" in lines
    assert [x for x in lines if x.startswith("a=rid:")] == ["a=rid:q recv", "a=rid:h recv", "a=rid:f recv"]
    assert "a=simulcast:recv q;h;f" in lines
    assert out.endswith("\r\n") and "\r\n\r\n" not in out
    # Applying it again (every renegotiation) does not duplicate lines.
    again = munge_answer(out, parse_simulcast_offers(OFFER))
    assert again == out


def test_munge_gives_an_inactive_m_line_no_simulcast():
    inactive = ANSWER.replace("a=mid:1\r\na=recvonly", "a=mid:1\r\na=inactive")
    out = munge_answer(inactive, parse_simulcast_offers(OFFER))
    assert "a=rid" not in out and "a=simulcast" not in out


def test_every_video_m_line_accepts_the_offered_rid_extensions():
    offer = OFFER + "\r\n".join(
        ["m=video 9 UDP/TLS/RTP/SAVPF 96", "a=mid:2", "a=recvonly", f"a=extmap:10 {URI_RID}", f"a=extmap:11 {URI_RRID}", ""]
    )
    answer = ANSWER + "\r\n".join(["m=video 9 UDP/TLS/RTP/SAVPF 96", "a=mid:2", "a=sendonly", ""])
    out = munge_answer(answer, parse_simulcast_offers(offer), rid_extension_ids(offer))
    receiving = out.split("m=video")[2]
    assert f"a=extmap:10 {URI_RID}" in receiving and f"a=extmap:11 {URI_RRID}" in receiving
    assert "a=rid" not in receiving and "a=simulcast" not in receiving
    rejected = answer.replace("m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:2", "m=video 0 UDP/TLS/RTP/SAVPF 96\r\na=mid:2")
    assert "m=video 0" in rejected
    assert munge_answer(rejected, {}, rid_extension_ids(offer)).split("m=video")[2] == rejected.split("m=video")[2]
