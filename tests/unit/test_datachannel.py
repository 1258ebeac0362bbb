"""DataChannel fan-out with fake channels: same-label delivery, server-opened channels,
targets, errors to the sender, and backpressure (lossy drops, reliable overflow)."""

import json

from sfu.datachannel import (
    LOSSY_BUFFER_BYTES,
    RELIABLE_BUFFER_BYTES,
    DataChannels,
    fan_out,
)
from sfu.metrics import COUNTERS


class FakeChannel:
    """The parts of aiortc's RTCDataChannel that DataChannels uses."""

    def __init__(self, label, ordered=True, max_retransmits=None, max_lifetime=None, state="open"):
        self.label = label
        self.ordered = ordered
        self.maxRetransmits = max_retransmits
        self.maxPacketLifeTime = max_lifetime
        self.readyState = state
        self.bufferedAmount = 0
        self.sent = []
        self.handlers = {}

    def on(self, event):
        def register(fn):
            self.handlers[event] = fn
            return fn

        return register

    def emit(self, event, *args):
        self.handlers[event](*args)

    def send(self, data):
        self.sent.append(data)

    def close(self):
        self.readyState = "closed"
        self.emit("close")


class Room:
    """A minimal room: participants' DataChannels and the fan-out between them."""

    def __init__(self, *ids, sctp=True):
        self.events = {pid: [] for pid in ids}
        self.opened = {pid: [] for pid in ids}
        self.members = {}
        for pid in ids:
            self.members[pid] = DataChannels(
                pid,
                self._opener(pid, sctp),
                lambda sender, key, out: fan_out(sender, key, out, self.members.values()),
                self.events[pid].append,
            )

    def _opener(self, pid, sctp):
        def open_channel(label, ordered, max_retransmits, max_lifetime):
            if not sctp:
                return None
            ch = FakeChannel(label, ordered, max_retransmits, max_lifetime, state="connecting")
            self.opened[pid].append(ch)
            return ch

        return open_channel


def test_message_reaches_others_on_same_label_with_sender_id():
    room = Room("A", "B", "C")
    a, b = FakeChannel("chat"), FakeChannel("chat")
    room.members["A"].add(a)
    room.members["B"].add(b)
    a.emit("message", json.dumps({"data": "hi", "from": "C"}))
    assert [json.loads(m) for m in b.sent] == [{"from": "A", "data": "hi"}]
    assert a.sent == []  # not echoed to the sender
    # C had no "chat" channel: the server opened one with the same reliability.
    (opened,) = room.opened["C"]
    assert (opened.label, opened.ordered, opened.maxRetransmits) == ("chat", True, None)
    assert opened.sent == []  # queued until the channel opens
    opened.readyState = "open"
    opened.emit("open")
    assert [json.loads(m)["data"] for m in opened.sent] == ["hi"]


def test_same_label_other_reliability_is_another_channel():
    room = Room("A", "B")
    lossy_a = FakeChannel("state", ordered=False, max_retransmits=0)
    reliable_b = FakeChannel("state")
    room.members["A"].add(lossy_a)
    room.members["B"].add(reliable_b)
    lossy_a.emit("message", json.dumps({"data": "x"}))
    assert reliable_b.sent == []
    (opened,) = room.opened["B"]
    assert (opened.ordered, opened.maxRetransmits) == (False, 0)


def test_targets_only():
    room = Room("A", "B", "C")
    chans = {pid: FakeChannel("chat") for pid in "ABC"}
    for pid, ch in chans.items():
        room.members[pid].add(ch)
    chans["A"].emit("message", json.dumps({"data": "psst", "to": ["C", "nobody"]}))
    assert chans["B"].sent == [] and len(chans["C"].sent) == 1


def test_bad_message_is_refused_with_an_error_and_counted():
    room = Room("A", "B")
    a, b = FakeChannel("chat"), FakeChannel("chat")
    room.members["A"].add(a)
    room.members["B"].add(b)
    before = COUNTERS.dc_dropped["bad_data"]
    a.emit("message", "{broken")
    assert b.sent == []
    assert room.events["A"][0]["code"] == "bad_data" and room.events["A"][0]["label"] == "chat"
    assert COUNTERS.dc_dropped["bad_data"] == before + 1
    a.emit("message", json.dumps({"data": "still works"}))
    assert len(b.sent) == 1


def test_lossy_receiver_over_its_buffer_loses_messages_only_there():
    room = Room("A", "B", "C")
    chans = {pid: FakeChannel("state", ordered=False, max_retransmits=0) for pid in "ABC"}
    for pid, ch in chans.items():
        room.members[pid].add(ch)
    chans["B"].bufferedAmount = LOSSY_BUFFER_BYTES  # B stopped reading
    before = COUNTERS.dc_dropped["buffer_full"]
    for i in range(10):
        chans["A"].emit("message", json.dumps({"data": str(i)}))
    assert chans["B"].sent == [] and len(chans["C"].sent) == 10
    assert COUNTERS.dc_dropped["buffer_full"] == before + 10
    assert room.events["B"] == []  # lossy: no overflow event


def test_reliable_receiver_hopelessly_behind_is_told_and_gets_no_gap():
    room = Room("A", "B", "C")
    chans = {pid: FakeChannel("chat") for pid in "ABC"}
    for pid, ch in chans.items():
        room.members[pid].add(ch)
    chans["A"].emit("message", json.dumps({"data": "1"}))
    chans["B"].bufferedAmount = RELIABLE_BUFFER_BYTES
    chans["A"].emit("message", json.dumps({"data": "2"}))
    chans["B"].bufferedAmount = 0  # even if it drains, nothing more goes out on it
    chans["A"].emit("message", json.dumps({"data": "3"}))
    assert [json.loads(m)["data"] for m in chans["B"].sent] == ["1"]
    assert chans["B"].readyState == "closed"
    assert room.events["B"] == [{"type": "data_overflow", "label": "chat"}]
    assert [json.loads(m)["data"] for m in chans["C"].sent] == ["1", "2", "3"]
    # B opens the channel again: delivery resumes from there.
    again = FakeChannel("chat")
    room.members["B"].add(again)
    chans["A"].emit("message", json.dumps({"data": "4"}))
    assert [json.loads(m)["data"] for m in again.sent] == ["4"]


def test_pending_messages_towards_an_opening_channel_are_bounded():
    room = Room("A", "B")
    a = FakeChannel("chat")
    room.members["A"].add(a)
    big = json.dumps({"data": "x" * 60_000})
    for _ in range(100):  # 6 MB towards a channel B never acknowledges
        a.emit("message", big)
    (opened,) = room.opened["B"]
    pending = room.members["B"]._pending_bytes.get(("chat", True, None, None), 0)
    assert pending <= RELIABLE_BUFFER_BYTES
    assert room.events["B"] == [{"type": "data_overflow", "label": "chat"}]


def test_participant_without_sctp_is_skipped_and_counted():
    room = Room("A", "B", sctp=False)
    a = FakeChannel("chat")
    room.members["A"].add(a)
    before = COUNTERS.dc_dropped["no_channel"]
    a.emit("message", json.dumps({"data": "x"}))
    assert COUNTERS.dc_dropped["no_channel"] == before + 1


def test_channels_per_participant_are_bounded():
    """A participant opening more than MAX_CHANNELS channels gets the rest closed and
    is told; the server opens no channel beyond the bound towards a receiver."""
    from sfu.datachannel import MAX_CHANNELS

    room = Room("A", "B")
    a = room.members["A"]
    channels = [FakeChannel(f"c{i}") for i in range(MAX_CHANNELS + 3)]
    for channel in channels:
        a.add(channel)
    assert len(a.labels) == MAX_CHANNELS
    assert [c.readyState for c in channels[MAX_CHANNELS:]] == ["closed"] * 3
    refusals = [e for e in room.events["A"] if e.get("code") == "too_many_channels"]
    assert len(refusals) == 3
    # B receives on server-opened channels: at most MAX_CHANNELS of them.
    for channel in channels[:MAX_CHANNELS]:
        channel.emit("message", json.dumps({"data": "x"}))
    assert len(room.opened["B"]) == MAX_CHANNELS
    before = COUNTERS.dc_dropped["too_many_channels"]
    assert room.members["B"].deliver(("one more", True, None, None), "{}") == "too_many_channels"
    assert COUNTERS.dc_dropped["too_many_channels"] == before + 1
    assert len(room.opened["B"]) == MAX_CHANNELS


def test_a_fault_in_a_message_handler_stays_with_that_message():
    """An exception while handling one message (here a failing fan-out) is counted and
    does not escape into the transport's code; the next message goes through."""

    def broken(sender, key, outgoing):
        raise RuntimeError("boom")

    events = []
    channels = DataChannels("A", lambda *a: None, broken, events.append)
    channel = FakeChannel("chat")
    channels.add(channel)
    before = COUNTERS.dc_dropped["internal"]
    channel.emit("message", json.dumps({"data": "x"}))  # must not raise
    assert COUNTERS.dc_dropped["internal"] == before + 1
