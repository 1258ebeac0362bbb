"""The configuration file (signaling/config.py), `sfu token`, and the token bucket of
the per-connection rate limits."""

from __future__ import annotations

import pytest

from sfu.auth import KeyStore, verify_token
from signaling.cli import main, parse_ttl
from signaling.config import ConfigError, load_config
from signaling.session import TokenBucket

SECRET = "s" * 40


def test_a_full_file(tmp_path):
    path = tmp_path / "sfu.toml"
    path.write_text(
        f'[keys]\nk1 = "{SECRET}"\n[server]\nallowed_origins = ["https://a.example"]\nmetrics_token = "m"\n'
        'metrics_port = 9100\n[webhook]\nurls = ["https://hooks.example/x"]\napi_key = "k1"\n'
        "[limits]\nmax_tracks = 4\nmessages_per_second = 7.5\n"
    )
    config = load_config(path)
    assert config.keys.secret("k1") == SECRET
    assert (config.allowed_origins, config.metrics_token, config.metrics_port) == (["https://a.example"], "m", 9100)
    assert (config.webhook_urls, config.webhook_api_key) == (["https://hooks.example/x"], "k1")
    assert (config.limits.max_tracks, config.limits.messages_per_second, config.limits.max_rooms) == (4, 7.5, 1000)
    assert not load_config(None).keys


@pytest.mark.parametrize(
    "text",
    [
        "not toml [",
        "[nonsense]\n",
        '[keys]\nk = "short"\n',
        "[keys]\nk = 5\n",
        "[server]\nport = 1\n",
        '[server]\nmetrics_port = "9100"\n',
        '[webhook]\nurls = ["ftp://x"]\n',
        "[limits]\nmax_tracks = 0\n",
        "[limits]\nmax_tracks = 2.5\n",
        "[limits]\nmax_tracks = true\n",
        "[limits]\nwhatever = 1\n",
    ],
)
def test_bad_files_are_refused(tmp_path, text):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError):
        load_config(path)


def test_sfu_token_prints_a_token_the_server_accepts(monkeypatch, capsys):
    monkeypatch.setenv("SFU_KEYS", f"k1: {SECRET}")
    assert main(["token", "--room", "demo", "--identity", "ann", "--name", "Ann", "--grant", "canPublish=false",
                 "--grant", "hidden", "--sources", "microphone", "--ttl", "15m"]) == 0
    claims = verify_token(capsys.readouterr().out.strip(), KeyStore({"k1": SECRET}))
    assert (claims.identity, claims.name, claims.grant.room, claims.grant.room_join) == ("ann", "Ann", "demo", True)
    assert (claims.grant.can_publish, claims.grant.hidden, claims.grant.can_publish_sources) == (False, True, ("microphone",))
    assert main(["token", "--identity", "x", "--grant", "canFly"]) == 2
    monkeypatch.delenv("SFU_KEYS")
    assert main(["token", "--identity", "x"]) == 2


def test_ttl_and_refusing_a_public_bind_without_keys(monkeypatch, capsys):
    assert (parse_ttl("90"), parse_ttl("15m"), parse_ttl("6h"), parse_ttl("2d")) == (90, 900, 21600, 172800)
    with pytest.raises(ValueError):
        parse_ttl("-1h")
    monkeypatch.delenv("SFU_KEYS", raising=False)
    assert main(["serve", "--host", "0.0.0.0", "--port", "1"]) == 2
    assert "--dev" in capsys.readouterr().err


def test_token_bucket():
    bucket = TokenBucket(rate=2.0, burst=3.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.take(0.5) and not bucket.take(0.5)  # one token in 0.5 s
    assert [bucket.take(10.0) for _ in range(4)] == [True, True, True, False]  # never more than the burst


def test_media_ports_from_the_file_and_flags_that_exclude_each_other(tmp_path, monkeypatch):
    from signaling.cli import build_parser, udp_media_ports

    monkeypatch.delenv("SFU_UDP_PORT", raising=False)
    monkeypatch.delenv("SFU_UDP_PORT_RANGE", raising=False)
    path = tmp_path / "sfu.toml"
    path.write_text("[server]\nudp_port = 50000\n")
    assert load_config(path).udp_port == 50000
    path.write_text('[server]\nudp_port_range = "50000-50100"\n')
    config = load_config(path)
    assert config.udp_port_range == (50000, 50100)
    for text in ("[server]\nudp_port = 0\n", '[server]\nudp_port = "1"\n', '[server]\nudp_port_range = "9-1"\n',
                 '[server]\nudp_port = 5\nudp_port_range = "1-2"\n'):
        path.write_text(text)
        with pytest.raises(ConfigError):
            load_config(path)

    def ports(*argv):
        return udp_media_ports(build_parser().parse_args(["serve", *argv]), config)

    assert ports() == (50000, 50100)  # the file's
    assert ports("--udp-port", "40000") == 40000  # a flag wins over the file
    assert ports("--udp-port-range", "1-2") == (1, 2)
    with pytest.raises(ValueError, match="exclude each other"):
        ports("--udp-port", "40000", "--udp-port-range", "1-2")
    monkeypatch.setenv("SFU_UDP_PORT", "41000")
    assert ports() == 41000 and ports("--udp-port-range", "1-2") == (1, 2)
    monkeypatch.setenv("SFU_UDP_PORT_RANGE", "1-2")
    with pytest.raises(ValueError, match="SFU_UDP_PORT and SFU_UDP_PORT_RANGE exclude each other"):
        ports()
    assert main(["serve", "--udp-port", "40000", "--udp-port-range", "1-2"]) == 2
