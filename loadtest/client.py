"""A headless room client (bot) for the SFU's JSON room protocol (docs/PROTOCOL.md).

* :class:`RoomClient` joins a room over the WebSocket at ``/ws``, publishes local
  tracks, subscribes to remote ones (automatically or explicitly) and keeps the room
  roster up to date from the server's events. The client always offers; one offer is
  in flight at a time.
* DataChannels: :meth:`RoomClient.open_channel` (or ``channels=`` at construction),
  :meth:`RoomClient.send_data`, and received messages (:class:`~loadtest.data.DataMessage`) in
  :attr:`RoomClient.data` (or an ``on_data`` callback). Envelopes are in
  :mod:`loadtest.data`.
Publishing media for bots is in :mod:`loadtest.media`; counting received RTP without
decoding (``RoomClient(count_rtp=True)``) in :mod:`loadtest.counter`.

Units: times are seconds (``float``) unless a name says otherwise; bit rates are
bits per second; RTP timestamps are in media clock ticks.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import aiohttp
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCDataChannel,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpSender,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from aiortc.rtcconfiguration import RTCIceTransportPolicy

from sfu.rtc.adapter import (
    client_send_path,
    disable_media_engines,
    install_tap,
    set_ice_addresses,
)

from .counter import RtpCounter
from .data import (
    ChannelSpec,
    DataMessage,
    EnvelopeError,
    decode_envelope,
    encode_envelope,
)
from .latency import FrameSendLog
from .reconnect import PING_INTERVAL_S, reconnect
from .roster import ParticipantInfo, PublishedTrack, RoomError, Subscription, TrackInfo
from .simulcast import SimulcastClips, SimulcastSender, add_simulcast_to_offer

__all__ = [
    "ParticipantInfo",
    "PublishedTrack",
    "RoomClient",
    "RoomError",
    "Subscription",
    "TrackInfo",
]

logger = logging.getLogger("loadtest.client")

# Replies that answer a request, by the request's type.
_REPLY_TO_REQUEST = {"joined": "join", "answer": "offer", "pong": "ping", "left": "leave"}


# ---------------------------------------------------------------------- the client


class RoomClient:
    """One participant: a WebSocket to the room service and one RTCPeerConnection.

    Typical use::

        client = RoomClient("ws://127.0.0.1:8080/ws")
        await client.join("demo", "bot-1")
        await client.publish([PreEncodedVideoTrack(), PreEncodedAudioTrack()])
        await client.wait_until(lambda: len(client.subscriptions) >= 2, timeout=10)
        ...
        await client.leave()

    Attributes:
        participant_id: this client's id once joined.
        participants: the others in the room, by participant id.
        published: this client's accepted tracks, by track id.
        subscriptions: remote tracks being received, by track id.
        events: every server event (``participant_joined``/``left``,
            ``track_published``/``unpublished``/``muted``/``unmuted``, and ``error``
            replies to requests that have no reply of their own), in arrival order.
        counter: the :class:`RtpCounter` when ``count_rtp`` is on, else None.
        channels: the open (or opening) DataChannels by label: those this client
            opened, and those the server opened towards it (a server-opened channel whose label is
            taken by another reliability is read from but not listed here).
        data: received DataChannel messages, in arrival order (unused when an
            ``on_data`` callback was given).
        bad_envelopes: messages from the server that were not valid envelopes
            (logged and dropped).
    """

    def __init__(
        self,
        url: str,
        *,
        auto_subscribe: bool = True,
        count_rtp: bool | RtpCounter = False,
        loopback_only: bool = True,
        request_timeout: float = 15.0,
        channels: Sequence[ChannelSpec] = (),
        on_data: Callable[[DataMessage], None] | None = None,
        ice_transport_policy: str = "all",
        reconnect: bool = True,
        reconnect_timeout: float = 60.0,
    ) -> None:
        """
        Args:
            url: the WebSocket URL, e.g. ``ws://127.0.0.1:8080/ws``.
            auto_subscribe: subscribe to every track in the room as it appears.
            count_rtp: count received RTP with an :class:`RtpCounter` (True for a new
                one, or an instance, e.g. a subclass that also keeps payloads) and start
                no decoder (through ``sfu.rtc.adapter``); received tracks yield no frames.
            loopback_only: gather only a 127.0.0.1 ICE host candidate, process-wide
                (``sfu.rtc.adapter.set_ice_addresses``). No STUN server is used either way.
            request_timeout: seconds to wait for the reply to any request.
            channels: DataChannels to open at :meth:`join`, before the first offer
                (so that it carries the ``m=application`` section).
            on_data: called with every received DataChannel message instead of
                queueing it in :attr:`data` (keeps memory flat under load).
            ice_transport_policy: ``"all"``, or ``"relay"`` to reach the server only
                through the TURN servers of the join reply's ``iceServers``.
            reconnect: when the WebSocket drops (or stops answering pings) or the
                PeerConnection fails, reconnect by itself (:mod:`loadtest.reconnect`:
                backoff, resume the participant, republish, resubscribe), putting
                ``reconnecting``, ``reconnected`` and ``disconnected`` events in
                :attr:`events`. Not after :meth:`leave`, :meth:`close`, ``removed``
                or ``server_shutdown``.
            reconnect_timeout: seconds of reconnection attempts before giving up.
        """
        self.url = url
        self.reconnect = reconnect
        self.reconnect_timeout = reconnect_timeout
        self.reconnects = 0  # reconnections that succeeded
        self.resume_key: str | None = None  # the joined reply's resumeKey
        self.ended: str | None = None  # why the client stopped for good: left, closed, removed, ...
        self._join_message: dict[str, Any] | None = None
        self._reconnector: asyncio.Task[None] | None = None
        self._was_connected = False  # the media connection has been up once (only then reconnect)
        self._opened_specs: list[ChannelSpec] = []  # channels opened with open_channel()
        self.ice_transport_policy = ice_transport_policy
        self.ice_servers: list[dict[str, Any]] = []  # the join reply's iceServers
        self.auto_subscribe = auto_subscribe
        self.loopback_only = loopback_only
        self.request_timeout = request_timeout
        self.participant_id: str | None = None
        self.permissions: dict[str, Any] = {}  # the grants of the join ("permissions" of "joined")
        self.room: str | None = None
        self.participants: dict[str, ParticipantInfo] = {}
        self.published: dict[str, PublishedTrack] = {}
        self.subscriptions: dict[str, Subscription] = {}
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.counter: RtpCounter | None = (
            count_rtp if isinstance(count_rtp, RtpCounter) else RtpCounter() if count_rtp else None
        )
        self.pc: RTCPeerConnection | None = None
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._negotiation = asyncio.Lock()
        self._wanted: set[str] = set()
        self._subscriber: asyncio.Task[None] | None = None
        self._stale: set[RTCRtpTransceiver] = set()
        self._changed = asyncio.Event()
        self._channel_specs = tuple(channels)
        self._on_data = on_data
        self._sctp_negotiated = False
        self._tap_rebundled = False
        self.channels: dict[str, RTCDataChannel] = {}
        self.data: asyncio.Queue[DataMessage] = asyncio.Queue()
        self.bad_envelopes = 0

    # ------------------------------------------------------------ public API

    @property
    def connected(self) -> bool:
        """True while the WebSocket is open."""
        return self._ws is not None and not self._ws.closed

    async def join(self, room: str | None, name: str | None = None, token: str | None = None) -> dict[str, Any]:
        """Open the WebSocket (if needed) and join ``room`` as ``name``; with an access
        ``token`` (docs/AUTH.md) the room, identity, name and grants come from it
        (``room`` and ``name`` may be None). With ``channels`` given at construction,
        also negotiate and wait until they are open. Without ``canSubscribe`` nothing
        is subscribed to automatically.

        Returns:
            the server's ``joined`` message.

        Raises:
            RoomError: the server refused (``invalid_room``, ``room_full``, ...); the
                WebSocket stays open and ``join`` may be called again.
            TimeoutError: no reply (or the channels did not open) within
                ``request_timeout`` seconds.
        """
        await self._connect()
        message: dict[str, Any] = {"type": "join"}
        if room is not None:
            message["room"] = room
        if token is not None:
            message["token"] = token
        else:
            message["name"] = name
        reply = await self._request(message)
        self._join_message = message
        return await self._on_joined(reply)

    async def _on_joined(self, reply: dict[str, Any]) -> dict[str, Any]:
        """Take the ``joined`` reply (its roster was taken as it arrived, see
        :meth:`_dispatch`): a new PeerConnection, the channels."""
        self.resume_key = reply.get("resumeKey")
        self.permissions = reply.get("permissions", {})
        self.ice_servers = reply.get("iceServers", [])
        if self.permissions.get("canSubscribe") is False:
            self.auto_subscribe = False
        self.participant_id = reply["participantId"]
        self.room = reply["room"]
        self.pc = self._create_peer_connection()
        # Channels exist before any offer, so that the first one carries m=application.
        opened = [self._create_channel(spec) for spec in (*self._channel_specs, *self._opened_specs)]
        if self.auto_subscribe:
            self._want(t for p in self.participants.values() for t in p.tracks)
        self._notify()
        if opened:
            await self._open_channels(opened)
        return reply

    async def publish(
        self,
        tracks: Sequence[MediaStreamTrack],
        sources: Sequence[str | None] | None = None,
        video_codec: str | None = None,
        previous_ids: Sequence[str | None] | None = None,
    ) -> list[str]:
        """Publish local tracks in one offer/answer exchange.

        Args:
            tracks: aiortc tracks (frames are encoded by aiortc; ``av.Packet`` tracks
                such as :class:`PreEncodedVideoTrack` are only packetized).
            sources: one source per track (``camera``, ``microphone``, ``screen``,
                ``screen_audio``, ``custom``) or None for the server's default.
            video_codec: offer only this video codec (e.g. ``"video/H264"``) plus RTX
                for video tracks; None offers all of aiortc's.
            previous_ids: after a reconnection, the track id each track had
                (``publish.trackId``, docs/PROTOCOL.md "Reconnection").

        Returns:
            the server's track ids, in the order of ``tracks``.

        Raises:
            RoomError: the server rejected the offer; nothing was published.
        """
        if sources is None:
            sources = [None] * len(tracks)
        if len(sources) != len(tracks):
            raise ValueError("publish() needs one source per track")
        async with self._negotiation:
            pc = self._require_pc()
            bindings: list[tuple[RTCRtpTransceiver, dict[str, Any]]] = []
            for i, (track, source) in enumerate(zip(tracks, sources, strict=True)):
                transceiver = self._take_inactive(track.kind, bindings)
                if transceiver is None:
                    transceiver = pc.addTransceiver(track, direction="sendonly")
                else:
                    transceiver.sender.replaceTrack(track)
                    transceiver.direction = "sendonly"
                if video_codec is not None and track.kind == "video":
                    transceiver.setCodecPreferences(
                        [
                            c
                            for c in RTCRtpSender.getCapabilities("video").codecs
                            if c.mimeType.lower() in (video_codec.lower(), "video/rtx")
                        ]
                    )
                spec: dict[str, Any] = {} if source is None else {"source": source}
                if previous_ids is not None and previous_ids[i] is not None:
                    spec["trackId"] = previous_ids[i]
                bindings.append((transceiver, {"publish": spec}))
            answer = await self._negotiate(bindings)
        ids: list[str] = []
        for transceiver, _ in bindings:
            entry = answer["tracks"].get(transceiver.mid)
            if entry is None or entry.get("direction") != "publish":
                raise RoomError("bad_answer", f"mid {transceiver.mid} missing from answer", "offer")
            ids.append(entry["trackId"])
        return ids

    async def publish_simulcast(self, clips: SimulcastClips, source: str = "camera", log: FrameSendLog | None = None) -> tuple[str, SimulcastSender]:
        """Publish one video track as the simulcast layers of ``clips`` (RIDs q/h/f),
        sent as raw RTP (see :mod:`loadtest.simulcast`). Start ``sender.run()`` once
        connected (:meth:`wait_connected`); cancel it to stop.

        Returns:
            (the server's track id, the sender).

        Raises:
            RoomError: the server rejected the offer.
        """
        async with self._negotiation:
            pc = self._require_pc()
            transceiver = pc.addTransceiver("video", direction="sendonly")
            transceiver.setCodecPreferences(
                [c for c in RTCRtpSender.getCapabilities("video").codecs if c.mimeType.lower() in ("video/vp8", "video/rtx")]
            )
            found: dict[str, tuple[int, int, int]] = {}

            def munge(sdp: str) -> str:
                sdp, mid_id, rid_id, pt = add_simulcast_to_offer(sdp, transceiver.mid or "")
                found["ids"] = (mid_id, rid_id, pt)
                return sdp

            answer = await self._negotiate([(transceiver, {"publish": {"source": source}})], munge)
        entry = answer["tracks"].get(transceiver.mid)
        if entry is None or entry.get("direction") != "publish":
            raise RoomError("bad_answer", f"mid {transceiver.mid} missing from answer", "offer")
        if "a=simulcast:recv" not in answer["sdp"]:
            raise RoomError("bad_answer", "the server did not accept simulcast", "offer")
        mid_id, rid_id, pt = found["ids"]
        sender = SimulcastSender(clips, client_send_path(pc), transceiver.mid or "", mid_id, rid_id, pt, log)
        return entry["trackId"], sender

    async def unpublish(self, track_id: str) -> None:
        """Stop publishing ``track_id`` by setting its m-line inactive and offering.

        The m-line is reused by a later publish or subscribe of the same kind.
        """
        async with self._negotiation:
            published = self.published.pop(track_id)
            published.transceiver.direction = "inactive"
            published.transceiver.sender.replaceTrack(None)
            await self._negotiate([])

    async def subscribe(self, track_ids: Iterable[str]) -> list[Subscription]:
        """Subscribe to remote tracks in one offer/answer exchange.

        Tracks already subscribed, unknown to the roster, or gone by the time the
        server answers are left out of the result.

        Returns:
            the new subscriptions.
        """
        async with self._negotiation:
            return await self._subscribe_locked(set(track_ids))

    async def unsubscribe(self, track_ids: Iterable[str]) -> None:
        """Stop receiving the given tracks (their m-lines go inactive) in one offer."""
        async with self._negotiation:
            for track_id in track_ids:
                subscription = self.subscriptions.pop(track_id, None)
                if subscription is not None:
                    subscription.transceiver.direction = "inactive"
            await self._negotiate([])

    async def mute(self, track_id: str, muted: bool) -> None:
        """Tell the room that a published track is (un)muted; no reply is expected
        (an ``unknown_track`` error would arrive in :attr:`events`)."""
        await self._send({"type": "mute", "trackId": track_id, "muted": muted})

    async def set_track_settings(self, track_id: str, max_height: int | None = None, paused: bool | None = None) -> None:
        """Send ``track_settings`` for a subscribed track (docs/PROTOCOL.md): cap its
        height (pixels; None sends no cap) and/or pause it. No reply is expected (an
        ``unknown_track`` error would arrive in :attr:`events`); the server answers
        with ``layer_changed`` when the layer changes."""
        message: dict[str, Any] = {"type": "track_settings", "trackId": track_id, "maxHeight": max_height}
        if paused is not None:
            message["paused"] = paused
        await self._send(message)

    async def open_channel(
        self,
        label: str,
        ordered: bool = True,
        max_retransmits: int | None = None,
        max_packet_lifetime: int | None = None,
    ) -> RTCDataChannel:
        """Open a DataChannel and wait until it is open.

        The first channel of a connection is negotiated with an offer (its
        ``m=application`` section); later ones open in-band (DCEP, RFC 8832).
        Opening a label again after the server closed it (``data_overflow``) resumes
        receiving. ``max_packet_lifetime`` is in milliseconds.

        Raises:
            TimeoutError: not open within ``request_timeout`` seconds.
            ConnectionError: the channel closed before it opened.
        """
        self._require_pc()
        spec = ChannelSpec(label, ordered, max_retransmits, max_packet_lifetime)
        channel = self._create_channel(spec)
        if spec not in self._opened_specs and spec not in self._channel_specs:
            self._opened_specs.append(spec)  # opened again after a reconnection
        await self._open_channels([channel])
        return channel

    def send_data(
        self, label: str, data: str | bytes, to: Sequence[str] | None = None, topic: str | None = None
    ) -> None:
        """Send ``data`` (text for ``str``, binary for ``bytes``) in an envelope on the
        channel ``label``, to ``to`` (participant ids) or everyone else.

        The size limit is the server's to enforce (it answers ``data_too_large``);
        aiortc itself raises ValueError past the peer's 65,536-byte maximum.

        Raises:
            KeyError: no open channel has this label.
            aiortc.exceptions.InvalidStateError: the channel is not open.
        """
        self.channels[label].send(encode_envelope(data, to, topic))

    def send_raw(self, label: str, message: str | bytes) -> None:
        """Send ``message`` on the channel ``label`` as it is, without an envelope
        (to test how the server treats what a client makes up)."""
        self.channels[label].send(message)

    def buffered_amount(self, label: str) -> int:
        """Bytes queued on the channel ``label`` that aiortc has not yet handed to
        SCTP (``RTCDataChannel.bufferedAmount``)."""
        return self.channels[label].bufferedAmount

    async def ping(self) -> float:
        """Round-trip time of a ``ping``/``pong`` exchange, seconds."""
        start = time.monotonic()
        await self._request({"type": "ping"})
        return time.monotonic() - start

    async def next_event(self, event_type: str | None = None, timeout: float = 10.0) -> dict[str, Any]:
        """The next event from :attr:`events`, skipping (and discarding) events of
        other types when ``event_type`` is given.

        Raises:
            TimeoutError: none arrived within ``timeout`` seconds.
        """
        async with asyncio.timeout(timeout):
            while True:
                event = await self.events.get()
                if event_type is None or event.get("type") == event_type:
                    return event

    async def wait_until(
        self, predicate: Callable[[], bool], timeout: float = 10.0, poll: float = 0.1
    ) -> None:
        """Wait until ``predicate()`` is true. It is re-checked after every server
        message, negotiation and connection state change, and every ``poll`` seconds
        (for conditions on received media, e.g. :attr:`counter`).

        Raises:
            TimeoutError: still false after ``timeout`` seconds.
        """
        async with asyncio.timeout(timeout):
            while not predicate():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), poll)

    async def wait_connected(self, timeout: float = 10.0) -> None:
        """Wait until the peer connection is ``connected`` (ICE + DTLS done).

        Raises:
            TimeoutError: not connected within ``timeout`` seconds.
            ConnectionError: the peer connection failed or closed.
        """
        pc = self._require_pc()

        def done() -> bool:
            if pc.connectionState in ("failed", "closed"):
                raise ConnectionError(f"peer connection {pc.connectionState}")
            return pc.connectionState == "connected"

        await self.wait_until(done, timeout)

    async def leave(self) -> None:
        """Send ``leave``, wait for ``left``, then :meth:`close`."""
        self.ended = self.ended or "left"
        try:
            if self.connected and self.participant_id is not None:
                await self._request({"type": "leave"})
        finally:
            await self.close()

    async def close(self) -> None:
        """Close the WebSocket and the peer connection without ``leave`` (the room
        sees the participant drop). Safe to call more than once."""
        self.ended = self.ended or "closed"
        reconnector = self._reconnector
        if reconnector is not None and reconnector is not asyncio.current_task() and not reconnector.done():
            reconnector.cancel()
            await asyncio.gather(reconnector, return_exceptions=True)
        await self._drop_connection()
        self._notify()

    async def _drop_connection(self, close_code: int = aiohttp.WSCloseCode.OK) -> None:
        """Stop the tasks, close the WebSocket (with ``close_code``: 1000 tells the server
        we left, :data:`~loadtest.reconnect.RECONNECT_CLOSE_CODE` that we come back), the
        HTTP session and the PeerConnection."""
        for task in (self._subscriber, self._reader):
            if task is not None and not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if self._ws is not None:
            await self._ws.close(code=close_code)
        if self._session is not None:
            await self._session.close()
        if self.pc is not None:
            await self.pc.close()

    # ----------------------------------------------------------- signalling

    async def _connect(self) -> None:
        """Open the WebSocket (pinged every 5 s: one that does not answer within 2.5 s
        is closed, which starts a reconnection) and start the reader task, once."""
        if self._ws is not None:
            return
        self._session = aiohttp.ClientSession()
        try:
            self._ws = await self._session.ws_connect(
                self.url, timeout=aiohttp.ClientWSTimeout(ws_close=5.0), heartbeat=PING_INTERVAL_S
            )
        except BaseException:
            await self._session.close()
            self._session = None
            raise
        self._reader = asyncio.create_task(self._read_loop(self._ws))

    async def _send(self, message: dict[str, Any]) -> None:
        if not self.connected:
            raise ConnectionError("the WebSocket is not open")
        assert self._ws is not None
        await self._ws.send_str(json.dumps(message))

    async def _request(self, message: dict[str, Any]) -> dict[str, Any]:
        """Send a request and return its reply.

        Raises:
            RoomError: the reply was an ``error`` naming this request's type.
            TimeoutError: no reply within ``request_timeout`` seconds.
            ConnectionError: the WebSocket closed first.
        """
        request_type = message["type"]
        if request_type in self._pending:
            raise RuntimeError(f"a {request_type!r} request is already in flight")
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[request_type] = future
        try:
            await self._send(message)
            reply = await asyncio.wait_for(future, self.request_timeout)
        finally:
            del self._pending[request_type]
        if reply["type"] == "error":
            raise RoomError(reply.get("code", ""), reply.get("message", ""), reply.get("requestType"))
        return reply

    async def _read_loop(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Dispatch server messages until the WebSocket closes; then fail every
        pending request with ConnectionError."""
        try:
            async for frame in ws:
                if frame.type != aiohttp.WSMsgType.TEXT:
                    continue
                try:
                    message = json.loads(frame.data)
                except ValueError:
                    logger.warning("non-JSON frame from server: %.200s", frame.data)
                    continue
                if isinstance(message, dict):
                    self._dispatch(message)
        finally:
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(ConnectionError("the WebSocket closed"))
            self._notify()
            if ws is self._ws:
                self._connection_lost("the WebSocket closed")

    def _connection_lost(self, reason: str) -> None:
        """The WebSocket dropped or the PeerConnection failed: reconnect, unless this
        client is ending (see ``reconnect`` in :meth:`__init__`)."""
        if (
            self.reconnect
            and self.ended is None
            and self.participant_id is not None
            and self._was_connected
            and (self._reconnector is None or self._reconnector.done())
        ):
            self._reconnector = asyncio.create_task(reconnect(self, reason))
        elif self.ended is None and (self._reconnector is None or self._reconnector.done()):
            self.ended = "disconnected"

    def _dispatch(self, message: dict[str, Any]) -> None:
        """Route a reply to its pending request, or apply and queue an event."""
        kind = message.get("type")
        request_type = _REPLY_TO_REQUEST.get(kind) if isinstance(kind, str) else None
        if kind == "error":
            request_type = message.get("requestType")
        future = self._pending.get(request_type) if isinstance(request_type, str) else None
        if kind == "joined" and future is not None and not future.done():
            # The roster now, before the events that follow the reply (a track published
            # right after our join) are applied to it: join() resumes only after them.
            self.participants.clear()
            for participant in message.get("participants", []):
                self._add_participant(participant)
        if future is not None and not future.done():
            future.set_result(message)
        elif kind in _REPLY_TO_REQUEST:
            logger.warning("unsolicited %s from server", kind)
        else:
            if kind == "removed":
                self.ended = f"removed: {message.get('reason')}"
            elif kind == "server_shutdown":
                self.ended = "server_shutdown"
            self._apply_event(message)
            self.events.put_nowait(message)
        self._notify()

    def _apply_event(self, event: dict[str, Any]) -> None:
        """Update the roster (and subscriptions) from one server event."""
        kind = event.get("type")
        if kind == "participant_joined":
            self._add_participant(event["participant"])
            if self.auto_subscribe:
                self._want(t["id"] for t in event["participant"].get("tracks", []))
        elif kind == "participant_left":
            participant = self.participants.pop(event["participantId"], None)
            if participant is not None:
                for track_id in participant.tracks:
                    self._track_gone(track_id)
        elif kind == "track_published":
            participant = self.participants.get(event["participantId"])
            if participant is not None:
                info = _track_info(event["track"])
                participant.tracks[info.id] = info
                if self.auto_subscribe:
                    self._want([info.id])
        elif kind == "track_unpublished":
            participant = self.participants.get(event["participantId"])
            if participant is not None:
                participant.tracks.pop(event["trackId"], None)
            self._track_gone(event["trackId"])
        elif kind in ("track_muted", "track_unmuted"):
            participant = self.participants.get(event["participantId"])
            info = participant.tracks.get(event["trackId"]) if participant else None
            if info is not None:
                info.muted = kind == "track_muted"
        elif kind == "permissions_changed":
            self.permissions = event.get("permissions", {})
            if self.permissions.get("canSubscribe") is False:
                # The server stopped sending; the next offer sets those m-lines inactive
                # (an offer still receiving on them would be refused: forbidden).
                self.auto_subscribe = False
                for track_id in list(self.subscriptions):
                    self._track_gone(track_id)
        elif kind == "error":
            logger.warning("server error: %s", event)

    def _add_participant(self, data: dict[str, Any]) -> None:
        tracks = {t["id"]: _track_info(t) for t in data.get("tracks", [])}
        self.participants[data["id"]] = ParticipantInfo(data["id"], data.get("name", ""), tracks)

    def _track_gone(self, track_id: str) -> None:
        """A remote track went away: its m-line goes inactive at the next offer."""
        self._wanted.discard(track_id)
        subscription = self.subscriptions.pop(track_id, None)
        if subscription is not None:
            self._stale.add(subscription.transceiver)

    def _notify(self) -> None:
        """Wake every :meth:`wait_until`."""
        self._changed.set()
        self._changed = asyncio.Event()

    # ----------------------------------------------------------- negotiation

    def _create_peer_connection(self) -> RTCPeerConnection:
        if self.loopback_only:
            set_ice_addresses(["127.0.0.1"])
        servers = [RTCIceServer(s["urls"], s.get("username"), s.get("credential")) for s in self.ice_servers]
        policy = RTCIceTransportPolicy.RELAY if self.ice_transport_policy == "relay" else RTCIceTransportPolicy.ALL
        pc = RTCPeerConnection(RTCConfiguration(iceServers=servers, iceTransportPolicy=policy))

        def on_state() -> None:
            self._notify()
            if pc.connectionState == "connected":
                self._was_connected = True
            if pc.connectionState == "failed" and pc is self.pc:
                self._connection_lost("the PeerConnection failed")

        pc.on("connectionstatechange", on_state)
        pc.on("datachannel", self._accept_channel)
        if self.counter is not None:
            disable_media_engines(pc)
            install_tap(pc, self.counter)
        return pc

    # ----------------------------------------------------------- DataChannels

    def _create_channel(self, spec: ChannelSpec) -> RTCDataChannel:
        """Create (not yet open) a client-opened channel and list it by label."""
        channel = self._require_pc().createDataChannel(
            spec.label,
            ordered=spec.ordered,
            maxRetransmits=spec.max_retransmits,
            maxPacketLifeTime=spec.max_packet_lifetime,
        )
        self.channels[spec.label] = channel
        self._watch_channel(channel)
        return channel

    def _accept_channel(self, channel: RTCDataChannel) -> None:
        """A channel the server opened towards this client (``datachannel`` event)."""
        self.channels.setdefault(channel.label, channel)
        self._watch_channel(channel)
        self._notify()

    def _watch_channel(self, channel: RTCDataChannel) -> None:
        label = channel.label

        @channel.on("message")
        def on_message(message: str | bytes) -> None:
            self._on_channel_message(label, message)

        @channel.on("close")
        def on_close() -> None:
            if self.channels.get(label) is channel:
                del self.channels[label]
            self._notify()

        channel.on("open", self._notify)

    def _on_channel_message(self, label: str, message: str | bytes) -> None:
        received_at = time.monotonic()
        try:
            from_id, topic, data = decode_envelope(message)
        except EnvelopeError as exc:
            self.bad_envelopes += 1
            logger.warning("bad envelope from the server on %r: %s", label, exc)
            return
        delivered = DataMessage(label, from_id, topic, data, received_at)
        if self._on_data is not None:
            self._on_data(delivered)
        else:
            self.data.put_nowait(delivered)

    async def _open_channels(self, channels: Sequence[RTCDataChannel]) -> None:
        """Negotiate the SCTP association if no answer has carried it yet, then wait
        until ``channels`` are open."""
        async with self._negotiation:
            if not self._sctp_negotiated:
                await self._negotiate([])

        def all_open() -> bool:
            for channel in channels:
                if channel.readyState in ("closing", "closed"):
                    raise ConnectionError(f"DataChannel {channel.label!r} closed before it opened")
            return all(channel.readyState == "open" for channel in channels)

        await self.wait_until(all_open, self.request_timeout)

    def _require_pc(self) -> RTCPeerConnection:
        if self.pc is None:
            raise RuntimeError("join() first")
        return self.pc

    def _track_kind(self, track_id: str) -> tuple[str, str] | None:
        """(kind, publisher id) of a remote track in the roster, or None."""
        for participant in self.participants.values():
            info = participant.tracks.get(track_id)
            if info is not None:
                return info.kind, participant.id
        return None

    def _take_inactive(
        self, kind: str, bindings: list[tuple[RTCRtpTransceiver, dict[str, Any]]]
    ) -> RTCRtpTransceiver | None:
        """A negotiated-inactive transceiver of ``kind`` not bound in this offer."""
        taken = {t for t, _ in bindings}
        for transceiver in self._require_pc().getTransceivers():
            if (
                transceiver.kind == kind
                and transceiver not in taken
                and transceiver not in self._stale
                and transceiver.direction == "inactive"
                and transceiver.currentDirection in (None, "inactive")
            ):
                return transceiver
        return None

    def _want(self, track_ids: Iterable[str]) -> None:
        """Queue remote tracks for automatic subscription (coalesced into one offer)."""
        self._wanted.update(t for t in track_ids if t not in self.subscriptions)
        if self._wanted and (self._subscriber is None or self._subscriber.done()):
            self._subscriber = asyncio.create_task(self._auto_subscribe())

    async def _auto_subscribe(self) -> None:
        """Subscribe to everything queued by :meth:`_want`, until nothing is left."""
        while self._wanted and self.connected:
            async with self._negotiation:
                wanted, self._wanted = self._wanted, set()
                try:
                    await self._subscribe_locked(wanted)
                except (RoomError, ConnectionError, TimeoutError) as exc:
                    logger.warning("automatic subscription to %s failed: %s", sorted(wanted), exc)
                    return

    async def _subscribe_locked(self, track_ids: set[str]) -> list[Subscription]:
        pc = self._require_pc()
        bindings: list[tuple[RTCRtpTransceiver, dict[str, Any]]] = []
        publishers: dict[str, str] = {}
        for track_id in sorted(track_ids):
            known = self._track_kind(track_id)
            if known is None or track_id in self.subscriptions:
                continue
            kind, publishers[track_id] = known
            transceiver = self._take_inactive(kind, bindings)
            if transceiver is None:
                transceiver = pc.addTransceiver(kind, direction="recvonly")
            else:
                transceiver.direction = "recvonly"
            bindings.append((transceiver, {"subscribe": track_id}))
        if not bindings:
            return []
        answer = await self._negotiate(bindings)
        added: list[Subscription] = []
        for transceiver, spec in bindings:
            entry = answer["tracks"].get(transceiver.mid)
            if entry is None or entry.get("direction") != "subscribe":
                transceiver.direction = "inactive"  # the track has gone
                continue
            subscription = Subscription(
                track_id=entry["trackId"],
                participant_id=entry.get("participantId") or publishers[spec["subscribe"]],
                kind=transceiver.kind,
                mid=transceiver.mid,  # type: ignore[arg-type]
                transceiver=transceiver,
            )
            if self._track_kind(subscription.track_id) is None:
                # Unpublished while the offer was in flight: retire it at the next offer.
                self._stale.add(transceiver)
                continue
            self.subscriptions[subscription.track_id] = subscription
            added.append(subscription)
        self._notify()
        return added

    async def _negotiate(
        self,
        bindings: list[tuple[RTCRtpTransceiver, dict[str, Any]]],
        munge: Callable[[str], str] | None = None,
    ) -> dict[str, Any]:
        """Offer, wait for the answer, apply it. The caller holds ``_negotiation``.

        ``munge`` rewrites the offer text sent to the server (aiortc keeps its own).

        ``bindings`` name what each new or rebound transceiver carries; stale
        transceivers (their remote track has gone) go inactive in the same offer.
        On a refused offer the transceivers in ``bindings`` are set inactive, so that
        the next offer retires them, and RoomError is raised.
        """
        pc = self._require_pc()
        for transceiver in self._stale:
            transceiver.direction = "inactive"
        retired = set(self._stale)
        await pc.setLocalDescription(await pc.createOffer())
        tracks = {t.mid: spec for t, spec in bindings}
        sdp = pc.localDescription.sdp if munge is None else munge(pc.localDescription.sdp)
        try:
            answer = await self._request({"type": "offer", "sdp": sdp, "tracks": tracks})
        except RoomError:
            for transceiver, spec in bindings:
                transceiver.direction = "inactive"
                if "publish" in spec:
                    transceiver.sender.replaceTrack(None)
            raise
        if self.counter is not None:
            # Before applying: media on a new SSRC may arrive while the answer is applied.
            self.counter.update_from_sdp(answer["sdp"])
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
        if self.counter is not None and not self._tap_rebundled and pc.getTransceivers():
            # BUNDLE moved the media onto the first m-line's transport; when that was
            # the DataChannels' m=application (channels opened before any media), it
            # has no tap yet. Tapping is idempotent per transport; once is enough.
            install_tap(pc, self.counter)
            self._tap_rebundled = True
        # A channel created while this offer was in flight needs one more offer.
        self._sctp_negotiated = "\r\nm=application " in answer["sdp"]
        self._stale -= retired
        for transceiver, spec in bindings:
            entry = answer.get("tracks", {}).get(transceiver.mid)
            track = transceiver.sender.track
            if "publish" in spec and entry is not None and entry.get("direction") == "publish" and track is not None:
                self.published[entry["trackId"]] = PublishedTrack(
                    entry["trackId"], transceiver.mid, track, spec["publish"].get("source"), transceiver  # type: ignore[arg-type]
                )
        return answer


def _track_info(data: dict[str, Any]) -> TrackInfo:
    return TrackInfo(data["id"], data["kind"], data.get("source", ""), bool(data.get("muted", False)))
