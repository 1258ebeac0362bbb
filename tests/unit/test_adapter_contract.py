"""Contract test of sfu.rtc.adapter against the pinned aiortc.

The adapter relies on aiortc private members; this test fails first when an aiortc
upgrade moves them. It also runs two real PeerConnections over loopback in-process to
show: the server side starts no decoder thread, decrypted RTP reaches the tap, and
``send_rtp`` reaches the other side.
"""

import asyncio

import aiortc
from aiortc import RTCPeerConnection, RTCSessionDescription, VideoStreamTrack
from aiortc.rtcdtlstransport import RTCDtlsTransport
from aiortc.rtcrtpreceiver import RTCRtpReceiver
from aiortc.rtcrtpsender import RTCRtpSender
from aiortc.rtcrtptransceiver import RTCRtpTransceiver

from sfu.core.rtp import parse_rtp
from sfu.rtc.adapter import (
    AIORTC_VERSION,
    SfuPeerConnection,
    check_aiortc_version,
    install_tap,
    parse_offer,
    set_ice_addresses,
)

from .synth import rtp


def test_pinned_version_and_private_members_exist():
    assert aiortc.__version__ == AIORTC_VERSION
    check_aiortc_version()
    assert hasattr(RTCPeerConnection, "_RTCPeerConnection__createTransceiver")
    for name in ("_set_mid", "_set_mline_index"):
        assert callable(getattr(RTCRtpTransceiver, name))
    for name in ("_handle_rtp_data", "_handle_rtcp_data"):
        assert asyncio.iscoroutinefunction(getattr(RTCDtlsTransport, name))
    assert asyncio.iscoroutinefunction(RTCRtpReceiver.receive)
    assert asyncio.iscoroutinefunction(RTCRtpSender.send)
    import aioice.ice

    assert callable(aioice.ice.StunProtocol.datagram_received)
    assert aioice.ice.CandidatePair.State.SUCCEEDED
    assert isinstance(aioice.ice.CandidatePair.remote_addr, property)
    assert "_check_list" in aioice.ice.Connection(ice_controlling=False).__dict__


class Collector:
    def __init__(self):
        self.rtp = []
        self.rtcp = 0

    def on_rtp(self, data, arrival_ms):
        self.rtp.append(parse_rtp(data))

    def on_rtcp(self, data, arrival_ms):
        self.rtcp += 1


async def wait_for(predicate, timeout=10.0):
    for _ in range(int(timeout / 0.05)):
        if predicate():
            return True
        await asyncio.sleep(0.05)
    return predicate()


async def test_server_taps_rtp_starts_no_decoder_and_sends_raw_rtp():
    set_ice_addresses(["127.0.0.1"])
    try:
        server_in = Collector()
        server = SfuPeerConnection(server_in)
        client = RTCPeerConnection()
        client_in = Collector()
        client.addTransceiver(VideoStreamTrack(), direction="sendonly")
        client.addTransceiver("video", direction="recvonly")
        # The client's receiving side is tapped too, so it decodes nothing either.
        install_tap(client, client_in)
        await client.setLocalDescription(await client.createOffer())
        offer = parse_offer(client.localDescription.sdp)
        assert [(m.mid, m.direction) for m in offer] == [("0", "sendonly"), ("1", "recvonly")]
        assert server.prepare_send(offer[1], "video/VP8", "PA_x", "TR_y")
        answer = await server.answer(client.localDescription.sdp)
        assert "a=msid:PA_x TR_y" in answer
        await client.setRemoteDescription(RTCSessionDescription(answer, "answer"))

        assert server.media["0"].direction == "recvonly"
        sending = server.media["1"]
        assert sending.direction == "sendonly" and sending.codecs[0].mime_type == "video/VP8"

        assert await wait_for(lambda: len(server_in.rtp) >= 10), "no RTP reached the tap"
        assert server_in.rtp[0].ssrc in offer[0].ssrcs
        for t in server.pc.getTransceivers():
            assert t.receiver._RTCRtpReceiver__decoder_thread is None

        pt = sending.codecs[0].payload_type
        for seq in range(5):
            assert server.send_rtp(rtp(seq, seq * 3000, ssrc=sending.ssrc, pt=pt, payload=b"\x10\x00hello"))
        assert await wait_for(lambda: any(p.ssrc == sending.ssrc for p in client_in.rtp))
        got = [p for p in client_in.rtp if p.ssrc == sending.ssrc]
        assert got[0].payload == b"\x10\x00hello"
    finally:
        set_ice_addresses(None)
        await client.close()
        await server.close()


def test_parse_offer_rejects_junk():
    import pytest

    with pytest.raises(ValueError):
        parse_offer("m=video 9 UDP/TLS/RTP/SAVPF 96\r\n")  # no a=mid


def _without_candidates(sdp: str) -> tuple[str, list[str]]:
    """Split an SDP into the text without its candidate lines and those lines."""
    lines = sdp.split("\r\n")
    candidates = [line[2:] for line in lines if line.startswith("a=candidate:")]
    kept = [line for line in lines if not line.startswith("a=candidate:") and line != "a=end-of-candidates"]
    return "\r\n".join(kept), candidates


async def test_trickled_candidates_reach_ice_when_the_first_m_line_is_a_subscription():
    """Firefox joining a room with publishers offers its recvonly m-lines first and
    trickles every candidate with ``sdpMid`` "0". The server pre-binds that m-line to
    a sendonly transceiver; the candidates must still reach the one ICE transport
    (aiortc's own ``addIceCandidate`` skipped them, and Firefox's ICE failed)."""
    set_ice_addresses(["127.0.0.1"])
    server = SfuPeerConnection(Collector())
    client = RTCPeerConnection()
    try:
        client.addTransceiver("video", direction="recvonly")
        client.addTransceiver(VideoStreamTrack(), direction="sendonly")
        await client.setLocalDescription(await client.createOffer())
        offer_sdp, candidates = _without_candidates(client.localDescription.sdp)
        assert candidates, "aiortc gathered no candidate"
        offer = parse_offer(offer_sdp)
        assert [(m.mid, m.direction) for m in offer] == [("0", "recvonly"), ("1", "sendonly")]
        assert server.prepare_send(offer[0], "video/VP8", "PA_x", "TR_y")
        answer = await server.answer(offer_sdp)
        await client.setRemoteDescription(RTCSessionDescription(answer, "answer"))
        for line in candidates:
            await server.add_ice_candidate({"candidate": line, "sdpMid": "0", "sdpMLineIndex": 0})
        ice = server.pc.getTransceivers()[0].receiver.transport.transport
        remote = {(c.ip, c.port) for c in ice.getRemoteCandidates()}
        trickled = {(line.split()[4], int(line.split()[5])) for line in candidates}
        assert trickled <= remote, f"trickled {trickled}, ICE knows {remote}"
        assert await wait_for(lambda: server.connected, timeout=15.0), (
            f"server ICE {server.pc.iceConnectionState}, DTLS never connected"
        )
    finally:
        set_ice_addresses(None)
        await client.close()
        await server.close()
