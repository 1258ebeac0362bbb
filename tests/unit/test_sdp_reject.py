"""m-lines without a codec the SFU can forward are answered rejected (RFC 3264 §6),
the others as usual."""

from __future__ import annotations

import pytest

from sfu.core.sdp_reject import hide_unsupported, reject_in_answer, unsupported_mids

OFFER = "\r\n".join(
    [
        "v=0",
        "o=- 1 2 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE 0 1 2",
        "m=audio 9 UDP/TLS/RTP/SAVPF 111",
        "a=mid:0",
        "a=sendonly",
        "a=rtpmap:111 opus/48000/2",
        "m=video 9 UDP/TLS/RTP/SAVPF 45 46",
        "a=mid:1",
        "a=sendonly",
        "a=rtpmap:45 AV1/90000",
        "a=rtpmap:46 rtx/90000",
        "a=fmtp:46 apt=45",
        "a=rid:q send",
        "a=simulcast:send q",
        "m=video 9 UDP/TLS/RTP/SAVPF 96",
        "a=mid:2",
        "a=recvonly",
        "a=rtpmap:96 VP8/90000",
        "",
    ]
)
SUPPORTED = {"audio": {"audio/opus"}, "video": {"video/vp8", "video/h264"}}


def test_finds_m_lines_with_only_unknown_codecs():
    assert unsupported_mids(OFFER, SUPPORTED) == ["1"]
    assert unsupported_mids(OFFER.replace("AV1/90000", "H264/90000"), SUPPORTED) == []


def test_aiortc_sees_the_m_line_inactive_with_a_stand_in_codec():
    hidden = hide_unsupported(OFFER, ["1"], {"audio": "opus/48000/2", "video": "VP8/90000"})
    video = hidden.split("m=video")[1]
    assert video.startswith(" 9 UDP/TLS/RTP/SAVPF 96\r\n")
    assert "a=rtpmap:96 VP8/90000" in video and "a=inactive" in video
    assert "AV1" not in video and "a=sendonly" not in video and "a=rid" not in video
    assert hidden.split("m=video")[2] == OFFER.split("m=video")[2]


def test_answer_rejects_them_and_leaves_the_bundle():
    answer = OFFER.replace("sendonly", "recvonly")
    out = reject_in_answer(answer, OFFER, ["1"])
    assert "a=group:BUNDLE 0 2\r\n" in out
    rejected = out.split("m=video")[1]
    assert rejected.startswith(" 0 UDP/TLS/RTP/SAVPF 45\r\n")
    assert "a=mid:1" in rejected and "a=inactive" in rejected and "a=rtpmap:45 AV1/90000" in rejected
    assert out.split("m=video")[2] == answer.split("m=video")[2]
    assert reject_in_answer(answer, OFFER, []) == answer


def test_offer_structure_checks_what_aiortc_would_apply_halfway():
    from sfu.core.sdp_lines import check_offer_structure

    good = "\r\n".join([
        "v=0", "o=- 1 1 IN IP4 0.0.0.0", "s=-", "t=0 0", "a=group:BUNDLE 0 1", "a=fingerprint:sha-256 AA",
        "m=audio 9 UDP/TLS/RTP/SAVPF 111", "a=mid:0", "a=setup:actpass", "a=ice-ufrag:u", "a=ice-pwd:p",
        "m=video 9 UDP/TLS/RTP/SAVPF 96", "a=mid:1", "a=setup:actpass", "a=ice-ufrag:u", "a=ice-pwd:p",
        "m=video 0 UDP/TLS/RTP/SAVPF 96", "",  # a rejected m-line may have no mid
    ])
    check_offer_structure(good)
    for broken, why in [
        (good.replace("a=mid:0", "a=mid:0\r\na=mid:9"), "a=mid"),
        (good.replace("a=mid:1", "a=mid:0"), "same a=mid"),
        (good.replace("m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\n", "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"), "a=mid"),
        (good.replace("a=setup:actpass\r\na=ice-ufrag:u\r\na=ice-pwd:p\r\nm=video 9", "a=ice-ufrag:u\r\na=ice-pwd:p\r\nm=video 9"), "setup"),
        (good.replace("a=fingerprint:sha-256 AA\r\n", ""), "fingerprint"),
        (good.replace("BUNDLE 0 1", "BUNDLE 0 1 7"), "BUNDLE"),
    ]:
        with pytest.raises(ValueError, match=why):
            check_offer_structure(broken)
