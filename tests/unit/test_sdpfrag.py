"""Trickle ICE SDP fragments (RFC 8840 §9) as WHIP/WHEP clients send them."""

import pytest

from signaling.sdpfrag import MAX_FRAGMENT_CANDIDATES, ice_credentials, parse_ice_fragment

# What whip-whep's WHIPClient.patch() sends (two candidates, then the end marker).
FRAGMENT = (
    "a=ice-ufrag:EsAw\r\n"
    "a=ice-pwd:P2uYro0UCOQ4zxjKXaWCBui1\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 0\r\n"
    "a=mid:0\r\n"
    "a=candidate:1387637174 1 udp 2122260223 192.0.2.1 61764 typ host generation 0 ufrag EsAw\r\n"
    "a=candidate:3471623853 1 udp 2122194687 198.51.100.2 61765 typ host generation 0 ufrag EsAw\r\n"
    "a=end-of-candidates\r\n"
)


def test_fragment_credentials_candidates_and_end_marker():
    fragment = parse_ice_fragment(FRAGMENT)
    assert (fragment.ufrag, fragment.pwd) == ("EsAw", "P2uYro0UCOQ4zxjKXaWCBui1")
    assert [mid for mid, _ in fragment.candidates] == ["0", "0"]
    assert fragment.candidates[1][1].startswith("3471623853 1 udp 2122194687 198.51.100.2 61765 typ host")
    assert fragment.end_of_candidates


def test_lf_line_ends_unknown_lines_and_no_mid():
    fragment = parse_ice_fragment("a=group:BUNDLE 0\na=candidate:1 1 udp 1 127.0.0.1 9 typ host\nx=whatever\n")
    assert fragment.candidates == [(None, "1 1 udp 1 127.0.0.1 9 typ host")]
    assert fragment.ufrag is None and not fragment.end_of_candidates


@pytest.mark.parametrize(
    "text",
    [
        "a=candidate:\r\n",
        "a=candidate:" + "x" * 2000 + "\r\n",
        "a=candidate:1 1 udp 1 127.0.0.1 9 typ host\r\n" * (MAX_FRAGMENT_CANDIDATES + 1),
        "a=x\r\n" * 5000,
    ],
    ids=["empty candidate", "long line", "too many candidates", "too large"],
)
def test_bounds(text):
    with pytest.raises(ValueError):
        parse_ice_fragment(text)


def test_ice_credentials_of_an_offer():
    sdp = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=ice-ufrag:abcd\r\na=ice-pwd:secretsecretsecretsecret\r\na=mid:0\r\n"
    assert ice_credentials(sdp) == ("abcd", "secretsecretsecretsecret")
    assert ice_credentials("v=0\r\n") == (None, None)
