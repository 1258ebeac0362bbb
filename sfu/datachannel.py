"""DataChannel fan-out: every message a participant sends reaches the room's others.

Each participant has a :class:`DataChannels`: its channels keyed by label and
reliability (RFC 8831 §6.4: ordered, max retransmits, max packet lifetime). A message
on one participant's channel is decoded once (:mod:`sfu.core.envelope`), stamped with
the sender's id, encoded once, and delivered on each receiver's channel with the same
key; the server opens that channel (DCEP, RFC 8832) when the receiver has none.

Backpressure per receiver channel: lossy channels drop beyond
:data:`LOSSY_BUFFER_BYTES` buffered; reliable channels are closed towards a receiver
beyond :data:`RELIABLE_BUFFER_BYTES` and the receiver is told (``data_overflow``), so a
reliable stream never has a silent gap and server memory stays bounded. All of one
receiver's channels together hold at most :data:`PARTICIPANT_BUFFER_BYTES`, and a
participant has at most :data:`MAX_CHANNELS` channels (more are closed, counted and
refused with ``too_many_channels``).
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Any, Callable, Iterable

from .core.envelope import (
    EnvelopeError,
    Outgoing,
    decode_client_message,
    encode_delivery,
)
from .metrics import COUNTERS
from .ratelog import RateLimitedLog

__all__ = [
    "ChannelKey",
    "DataChannels",
    "LOSSY_BUFFER_BYTES",
    "MAX_CHANNELS",
    "PARTICIPANT_BUFFER_BYTES",
    "RELIABLE_BUFFER_BYTES",
    "RESERVED_PREFIX",
    "channel_key",
    "fan_out",
    "is_lossy",
]

logger = logging.getLogger(__name__)

LOSSY_BUFFER_BYTES = 64 * 1024  # real-time state: ~0.5 s of 1,000 small messages/s, not seconds
RELIABLE_BUFFER_BYTES = 4 * 1024 * 1024
PARTICIPANT_BUFFER_BYTES = 8 * 1024 * 1024  # all of one receiver's channels together
MAX_CHANNELS = 16  # DataChannels per participant (its own and those the server opened)
RESERVED_PREFIX = "_sfu"

_errors = RateLimitedLog(logger)

# (label, ordered, maxRetransmits, maxPacketLifeTime in ms)
ChannelKey = tuple[str, bool, "int | None", "int | None"]


def channel_key(channel: Any) -> ChannelKey:
    """The key of an ``RTCDataChannel``: label and reliability parameters."""
    return (channel.label, bool(channel.ordered), channel.maxRetransmits, channel.maxPacketLifeTime)


def is_lossy(key: ChannelKey) -> bool:
    """True for channels that may lose messages (unordered, or partial reliability)."""
    _, ordered, max_retransmits, max_lifetime = key
    return not ordered or max_retransmits is not None or max_lifetime is not None


def _size(message: str | bytes) -> int:
    return len(message.encode()) if isinstance(message, str) else len(message)


class DataChannels:
    """The DataChannels of one participant, both directions.

    Args:
        participant_id: the owner, stamped as ``from`` on what it sends.
        open_channel: opens a server-initiated channel towards the participant,
            ``open_channel(label, ordered, max_retransmits, max_packet_lifetime)``
            returning an aiortc ``RTCDataChannel``, or None when the participant has
            no SCTP association.
        on_message: called with (sender id, key, decoded message) for every valid
            message the participant sends.
        send_event: sends a protocol message over the participant's WebSocket.
    """

    def __init__(
        self,
        participant_id: str,
        open_channel: Callable[[str, bool, int | None, int | None], Any],
        on_message: Callable[[str, ChannelKey, Outgoing], None],
        send_event: Callable[[dict[str, Any]], None],
    ) -> None:
        self.participant_id = participant_id
        self._open_channel = open_channel
        self._on_message = on_message
        self._send_event = send_event
        self._channels: dict[ChannelKey, Any] = {}
        self._pending: dict[ChannelKey, deque[str | bytes]] = {}
        self._pending_bytes: dict[ChannelKey, int] = {}
        self._overflowed: set[ChannelKey] = set()

    @property
    def labels(self) -> list[str]:
        """Labels of the open or opening channels."""
        return sorted({key[0] for key in self._channels})

    def add(self, channel: Any) -> None:
        """Adopt a channel the participant opened (or one the server opened)."""
        key = channel_key(channel)
        if key[0].startswith(RESERVED_PREFIX):
            return
        if key not in self._channels and len(self._channels) >= MAX_CHANNELS:
            self._drop("too_many_channels")
            self._send_event({"type": "error", "code": "too_many_channels", "requestType": "data", "label": key[0][:64],
                              "message": f"at most {MAX_CHANNELS} DataChannels per participant"})
            try:
                channel.close()
            except Exception:
                logger.debug("closing a refused channel failed", exc_info=True)
            return
        self._channels[key] = channel
        self._overflowed.discard(key)

        @channel.on("message")
        def _message(message: str | bytes) -> None:
            self._received(key, message)

        @channel.on("open")
        def _opened() -> None:
            self._flush_pending(key, channel)

        @channel.on("close")
        def _closed() -> None:
            if self._channels.get(key) is channel:
                del self._channels[key]
                self._drop_pending(key)

    def _received(self, key: ChannelKey, message: str | bytes) -> None:
        """A message from the participant (called by aiortc's SCTP code: nothing may
        escape from here into it, or the participant's connection would be torn down)."""
        try:
            COUNTERS.dc_messages_received += 1
            COUNTERS.dc_bytes_received += _size(message)
            try:
                outgoing = decode_client_message(message)
            except EnvelopeError as exc:
                COUNTERS.dc_dropped[exc.code] += 1
                self._send_event(
                    {"type": "error", "code": exc.code, "message": str(exc), "requestType": "data", "label": key[0]}
                )
                return
            self._on_message(self.participant_id, key, outgoing)
        except Exception:  # a fault of ours: counted, logged rarely, the others go on
            COUNTERS.dc_dropped["internal"] += 1
            _errors.log("received", logging.ERROR, "participant %s: a DataChannel message failed", self.participant_id,
                        exc_info=True)

    def deliver(self, key: ChannelKey, message: str | bytes) -> str | None:
        """Send an encoded delivery envelope to this participant on channel ``key``.

        Returns:
            None when sent or queued, else the drop reason (also counted): ``overflowed``,
            ``buffer_full`` (lossy channel over its limit), ``no_channel``.
        """
        if key in self._overflowed:
            return self._drop("overflowed")
        channel = self._channels.get(key)
        if channel is None:
            if len(self._channels) >= MAX_CHANNELS:
                return self._drop("too_many_channels")
            channel = self._open_channel(*key)
            if channel is None:
                return self._drop("no_channel")
            self.add(channel)
        if channel.readyState == "open":
            buffered = channel.bufferedAmount
            if not self._room_for(key, buffered) or self._total_buffered() >= PARTICIPANT_BUFFER_BYTES:
                return self._backpressure(key, channel)
            try:
                channel.send(message)
            except Exception:  # closing underneath us: the message is lost for this receiver
                return self._drop("closed")
            COUNTERS.dc_messages_sent += 1
            COUNTERS.dc_bytes_sent += _size(message)
            return None
        if channel.readyState == "connecting":
            pending_bytes = self._pending_bytes.get(key, 0)
            if not self._room_for(key, pending_bytes) or self._total_buffered() >= PARTICIPANT_BUFFER_BYTES:
                return self._backpressure(key, channel)
            self._pending.setdefault(key, deque()).append(message)
            self._pending_bytes[key] = pending_bytes + _size(message)
            return None
        return self._drop("closed")

    def _total_buffered(self) -> int:
        """Bytes waiting for this receiver on all its channels (at most MAX_CHANNELS)."""
        total = sum(self._pending_bytes.values())
        for channel in self._channels.values():
            if channel.readyState == "open":
                total += channel.bufferedAmount
        return total

    @staticmethod
    def _room_for(key: ChannelKey, buffered: int) -> bool:
        return buffered < (LOSSY_BUFFER_BYTES if is_lossy(key) else RELIABLE_BUFFER_BYTES)

    def _backpressure(self, key: ChannelKey, channel: Any) -> str:
        if is_lossy(key):
            return self._drop("buffer_full")
        # A reliable receiver hopelessly behind: stop, close, and tell it.
        self._overflowed.add(key)
        self._drop_pending(key)
        if self._channels.get(key) is channel:
            del self._channels[key]
        try:
            channel.close()
        except Exception:
            logger.debug("closing an overflowed channel failed", exc_info=True)
        self._send_event({"type": "data_overflow", "label": key[0]})
        logger.info("participant %s: DataChannel %r overflowed; closed", self.participant_id, key[0])
        return self._drop("overflowed")

    def _flush_pending(self, key: ChannelKey, channel: Any) -> None:
        queue = self._pending.pop(key, None)
        self._pending_bytes.pop(key, None)
        while queue:
            message = queue.popleft()
            channel.send(message)
            COUNTERS.dc_messages_sent += 1
            COUNTERS.dc_bytes_sent += _size(message)

    def _drop_pending(self, key: ChannelKey) -> None:
        queue = self._pending.pop(key, None)
        self._pending_bytes.pop(key, None)
        if queue:
            COUNTERS.dc_dropped["closed"] += len(queue)

    @staticmethod
    def _drop(reason: str) -> str:
        COUNTERS.dc_dropped[reason] += 1
        return reason

    def close(self) -> None:
        """Forget every channel (the participant left); pending messages are dropped."""
        for key in list(self._pending):
            self._drop_pending(key)
        self._channels.clear()


def fan_out(
    sender_id: str,
    key: ChannelKey,
    outgoing: Outgoing,
    receivers: Iterable[DataChannels],
) -> int:
    """Deliver ``outgoing`` from ``sender_id`` to the other participants' channels.

    Args:
        receivers: the room's participants' DataChannels (the sender's may be
            included; it is skipped).

    Returns:
        how many receivers it was sent or queued to.
    """
    message = encode_delivery(sender_id, outgoing)
    targets = outgoing.to
    delivered = 0
    for channels in receivers:
        participant_id = channels.participant_id
        if participant_id == sender_id or (targets is not None and participant_id not in targets):
            continue
        if channels.deliver(key, message) is None:
            delivered += 1
    return delivered
