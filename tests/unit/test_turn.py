"""TURN REST API credentials and the ICE servers given to clients (sfu/turn.py)."""

import base64
import hashlib
import hmac

import pytest

from sfu.turn import IceServers, turn_rest_credentials
from signaling.config import ConfigError, load_config


def test_credentials_follow_the_turn_rest_scheme():
    username, password = turn_rest_credentials("north", "alice", 3600, now=1_700_000_000.5)
    assert username == "1700003600:alice"
    expected = base64.b64encode(hmac.new(b"north", b"1700003600:alice", hashlib.sha1).digest()).decode()
    assert password == expected and len(base64.b64decode(password)) == 20
    with pytest.raises(ValueError):
        turn_rest_credentials("", "alice", 60)
    with pytest.raises(ValueError):
        turn_rest_credentials("s", "alice", 0)


def test_servers_for_a_client_and_as_link_headers():
    servers = IceServers(["stun:stun.example.com:3478"], ["turn:t.example.com:3478", "turns:t.example.com:5349"], "north", 600)
    stun, turn = servers.for_client("bob", now=1000)
    assert stun == {"urls": ["stun:stun.example.com:3478"]}
    assert turn["urls"] == ["turn:t.example.com:3478", "turns:t.example.com:5349"] and turn["username"] == "1600:bob"
    links = servers.link_headers("bob", now=1000)
    assert links[0] == '<stun:stun.example.com:3478>; rel="ice-server"'
    assert links[1] == f'<turn:t.example.com:3478>; rel="ice-server"; username="1600:bob"; credential="{turn["credential"]}"; credential-type="password"'
    assert len(links) == 3
    assert IceServers([], ["turn:t:3478"]).for_client("x") == [{"urls": ["turn:t:3478"]}]  # no secret: no credentials
    assert not IceServers() and IceServers().for_client("x") == []
    with pytest.raises(ValueError):
        IceServers(["turn:x"])
    with pytest.raises(ValueError):
        IceServers([], ["http://x"])


def test_the_ice_table_of_the_configuration_file(tmp_path):
    path = tmp_path / "sfu.toml"
    path.write_text('[ice]\nstun_urls = ["stun:s:3478"]\nturn_urls = ["turn:t:3478?transport=tcp"]\nturn_secret = "x"\ncredential_ttl_s = 60\n')
    ice = load_config(path).ice
    assert (ice.stun_urls, ice.turn_urls, ice.turn_secret, ice.ttl_s) == (["stun:s:3478"], ["turn:t:3478?transport=tcp"], "x", 60)
    for bad in ('[ice]\nturn_urls = ["stun:x"]\n', "[ice]\ncredential_ttl_s = 0\n", "[ice]\nservers = []\n"):
        path.write_text(bad)
        with pytest.raises(ConfigError):
            load_config(path)
