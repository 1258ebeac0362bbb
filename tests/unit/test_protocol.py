"""Signaling message validation (docs/PROTOCOL.md): what a hostile or sloppy client
sends gets a ProtocolError with a code, never another exception."""

import json

import pytest

from signaling.protocol import ProtocolError, parse_message


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("not json", "bad_json"),
        ("[1, 2]", "bad_json"),
        ("[" * 5000, "bad_json"),  # nested deeper than json's recursion limit
        ('{"type": "join", "room": ' + "[" * 5000 + "]" * 5000 + "}", "bad_json"),
        ('{"type": "join"}\udc80', "bad_json"),
        (json.dumps({"type": "no_such_type"}), "unknown_type"),
        (json.dumps({"type": 5}), "bad_message"),
        (json.dumps({"type": "join", "room": "r", "name": "n", "resume": "PA_1"}), "bad_message"),
        (json.dumps({"type": "join", "room": "r", "name": "n", "resume": {"participantId": "PA_1"}}), "bad_message"),
        (json.dumps({"type": "join", "room": "r", "name": "n", "resume": {"participantId": 1, "key": "k"}}), "bad_message"),
        (json.dumps({"type": "join", "room": "r", "name": "n", "resume": {"participantId": "P", "key": "k" * 65}}),
         "bad_message"),
        (json.dumps({"type": "offer", "sdp": "v=0", "tracks": {"0": {"publish": {"trackId": 7}}}}), "bad_message"),
        (json.dumps({"type": "offer", "sdp": "v=0", "tracks": {"0": {"publish": {"trackId": "T" * 65}}}}), "bad_message"),
    ],
)
def test_bad_frames_get_a_protocol_error(text, code):
    with pytest.raises(ProtocolError) as err:
        parse_message(text)
    assert err.value.code == code


def test_a_resume_and_a_publish_track_id_are_accepted():
    msg = parse_message(json.dumps({"type": "join", "room": "r", "name": "n", "resume": {"participantId": "PA_1", "key": "k"}}))
    assert msg["resume"] == {"participantId": "PA_1", "key": "k"}
    msg = parse_message(json.dumps({"type": "offer", "sdp": "v=0", "tracks": {"0": {"publish": {"trackId": "TR_1"}}}}))
    assert msg["tracks"]["0"]["publish"]["trackId"] == "TR_1"
