"""Announced addresses in the server's answer (sfu/core/announce_sdp.py)."""

import pytest

from sfu.core.announce_sdp import announce_addresses, announced_by_family

ANSWER = "\r\n".join([
    "v=0",
    "o=- 1 1 IN IP4 0.0.0.0",
    "c=IN IP4 10.0.0.5",
    "m=audio 40000 UDP/TLS/RTP/SAVPF 111",
    "c=IN IP4 10.0.0.5",
    "a=candidate:1 1 udp 2130706431 10.0.0.5 40000 typ host",
    "a=candidate:2 1 udp 2130706431 fd00::5 40002 typ host",
    "a=candidate:3 1 udp 1694498815 198.51.100.9 40004 typ srflx raddr 10.0.0.5 rport 40000",
    "a=candidate:4 1 tcp 1518280447 10.0.0.5 9 typ host tcptype passive",
    "",
])


def test_host_candidates_and_connection_lines_get_the_announced_address_of_their_family():
    out = announce_addresses(ANSWER, announced_by_family(["203.0.113.7", "2001:db8::7"])).split("\r\n")
    assert out[2] == out[4] == "c=IN IP4 203.0.113.7"
    assert out[5] == "a=candidate:1 1 udp 2130706431 203.0.113.7 40000 typ host"  # same port
    assert out[6] == "a=candidate:2 1 udp 2130706431 2001:db8::7 40002 typ host"
    assert out[7].endswith("198.51.100.9 40004 typ srflx raddr 10.0.0.5 rport 40000")  # not a host candidate
    assert out[8] == "a=candidate:4 1 tcp 1518280447 203.0.113.7 9 typ host tcptype passive"
    assert out[1] == "o=- 1 1 IN IP4 0.0.0.0" and out[-1] == ""


def test_only_the_families_announced_change():
    out = announce_addresses(ANSWER, announced_by_family(["203.0.113.7"]))
    assert "fd00::5 40002 typ host" in out and "10.0.0.5 40000 typ host" not in out
    assert announce_addresses(ANSWER, {}) == ANSWER


def test_announced_by_family_takes_the_first_of_each_and_refuses_names():
    assert announced_by_family(["203.0.113.7", "198.51.100.1", "::1"]) == {4: "203.0.113.7", 6: "::1"}
    with pytest.raises(ValueError):
        announced_by_family(["sfu.example.com"])
