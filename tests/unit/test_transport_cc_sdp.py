"""Transport-wide congestion control in SDP: read from offers, written into answers."""

from sfu.core.rtp import URI_TRANSPORT_CC
from sfu.core.transport_cc_sdp import munge_answer_transport_cc, parse_transport_cc

# The parts of a Chrome offer that matter here (audio with transport-cc, video with
# transport-cc on VP8 and none on its RTX, an application section).
OFFER = "\r\n".join([
    "v=0", "o=- 1 2 IN IP4 127.0.0.1", "s=-", "t=0 0", "a=group:BUNDLE 0 1 2",
    "m=audio 9 UDP/TLS/RTP/SAVPF 111", "a=mid:0", "a=sendonly",
    f"a=extmap:3 {URI_TRANSPORT_CC}", "a=rtpmap:111 opus/48000/2", "a=rtcp-fb:111 transport-cc",
    "m=video 9 UDP/TLS/RTP/SAVPF 96 97", "a=mid:1", "a=recvonly",
    f"a=extmap:3/sendrecv {URI_TRANSPORT_CC}", "a=rtpmap:96 VP8/90000", "a=rtpmap:97 rtx/90000",
    "a=rtcp-fb:96 goog-remb", "a=rtcp-fb:96 transport-cc", "a=fmtp:97 apt=96",
    "m=application 9 UDP/DTLS/SCTP webrtc-datachannel", "a=mid:2",
    "",
])

# What aiortc answers: no transport-cc anywhere.
ANSWER = "\r\n".join([
    "v=0", "o=- 5 5 IN IP4 0.0.0.0", "s=-", "t=0 0", "a=group:BUNDLE 0 1 2",
    "m=audio 9 UDP/TLS/RTP/SAVPF 111", "a=mid:0", "a=recvonly", "a=rtpmap:111 opus/48000/2",
    "m=video 9 UDP/TLS/RTP/SAVPF 96 97", "a=mid:1", "a=sendonly",
    "a=rtpmap:96 VP8/90000", "a=rtpmap:97 rtx/90000", "a=rtcp-fb:96 goog-remb", "a=fmtp:97 apt=96",
    "m=application 9 UDP/DTLS/SCTP webrtc-datachannel", "a=mid:2",
    "",
])


def test_offer_parsing():
    offers = parse_transport_cc(OFFER)
    assert set(offers) == {"0", "1"}
    assert offers["0"].extension_id == 3 and offers["0"].payload_types == {111}
    assert offers["1"].extension_id == 3 and offers["1"].payload_types == {96}


def test_answer_gets_the_extension_and_feedback_for_media_payload_types_only():
    answer, accepted = munge_answer_transport_cc(ANSWER, parse_transport_cc(OFFER))
    assert accepted == {"0": 3, "1": 3}
    audio, video = answer.split("m=audio")[1].split("m=video")
    assert f"a=extmap:3 {URI_TRANSPORT_CC}" in audio and "a=rtcp-fb:111 transport-cc" in audio
    assert f"a=extmap:3 {URI_TRANSPORT_CC}" in video and "a=rtcp-fb:96 transport-cc" in video
    assert "a=rtcp-fb:97" not in video  # not on RTX
    assert answer.endswith("\r\n") and "\n\n" not in answer.replace("\r\n", "\n")
    # Applying it twice adds nothing more.
    again, _ = munge_answer_transport_cc(answer, parse_transport_cc(OFFER))
    assert again.count("transport-cc") == answer.count("transport-cc")


def test_wildcard_feedback_and_offers_without_it():
    wildcard = OFFER.replace("a=rtcp-fb:96 transport-cc", "a=rtcp-fb:* transport-cc")
    answer, _ = munge_answer_transport_cc(ANSWER, parse_transport_cc(wildcard))
    assert "a=rtcp-fb:96 transport-cc" in answer and "a=rtcp-fb:97 transport-cc" not in answer
    # An extension without feedback, or feedback without the extension: not accepted.
    no_feedback = OFFER.replace("a=rtcp-fb:111 transport-cc", "").replace("a=rtcp-fb:96 transport-cc", "")
    assert parse_transport_cc(no_feedback) == {}
    no_extension = OFFER.replace(f"a=extmap:3 {URI_TRANSPORT_CC}", "").replace(f"a=extmap:3/sendrecv {URI_TRANSPORT_CC}", "")
    assert parse_transport_cc(no_extension) == {}
    # A rejected m-line (port 0) is left alone.
    rejected = ANSWER.replace("m=video 9 ", "m=video 0 ")
    answer, accepted = munge_answer_transport_cc(rejected, parse_transport_cc(OFFER))
    assert accepted == {"0": 3} and answer.split("m=video")[1].count("transport-cc") == 0


def test_junk_is_ignored():
    assert parse_transport_cc("m=audio\r\na=extmap:x " + URI_TRANSPORT_CC + "\r\na=mid:0\r\na=rtcp-fb:1 transport-cc\r\n") == {}
    assert parse_transport_cc("") == {}
