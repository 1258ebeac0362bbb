"""Access tokens (sfu.auth): minted tokens verify with their claims; every kind of bad
token is refused with InvalidToken; grants read and write LiveKit's claim names."""

import time

import jwt
import pytest

from sfu.auth import (
    DEFAULT_TTL_S,
    InvalidToken,
    KeyStore,
    VideoGrant,
    mint_token,
    verify_token,
)

SECRET = "s" * 32
KEYS = KeyStore({"key1": SECRET, "key2": "t" * 40})
NOW = 1_800_000_000.0


def test_a_minted_token_verifies_with_its_claims():
    grant = VideoGrant(room="demo", room_join=True, can_publish_sources=("camera", "microphone"), hidden=True)
    token = mint_token("key1", SECRET, "alice", grant, name="Alice", metadata='{"seat": 3}', now=NOW)
    claims = verify_token(token, KEYS, now=NOW + 60)
    assert (claims.api_key, claims.identity, claims.name, claims.metadata) == ("key1", "alice", "Alice", '{"seat": 3}')
    assert claims.grant == grant
    assert claims.expires_at == NOW + DEFAULT_TTL_S
    raw = jwt.decode(token, SECRET, algorithms=["HS256"], options={"verify_exp": False, "verify_nbf": False})
    assert raw["video"] == {
        "room": "demo", "roomJoin": True, "canPublish": True, "canSubscribe": True, "canPublishData": True,
        "canPublishSources": ["camera", "microphone"], "hidden": True, "roomAdmin": False, "roomList": False,
        "roomCreate": False,
    }


def test_the_name_defaults_to_the_identity_and_the_real_clock_works():
    token = mint_token("key2", "t" * 40, "bob", VideoGrant(room="r", room_join=True))
    claims = verify_token(token, KEYS)
    assert claims.name == "bob" and claims.expires_at > time.time()


def _forged(claims: dict, secret: str = SECRET, alg: str = "HS256") -> str:
    return jwt.encode(claims, secret, algorithm=alg)


@pytest.mark.parametrize(
    ("token", "why"),
    [
        (None, "no token"),
        ("", "no token"),
        ("not.a.jwt", "malformed"),
        ("x" * 9000, "longer than"),
        (mint_token("key1", SECRET, "a", VideoGrant(), now=NOW - DEFAULT_TTL_S - 60), "expired"),
        (mint_token("key1", SECRET, "a", VideoGrant(), now=NOW + 600), "not valid yet"),
        (mint_token("key1", "w" * 32, "a", VideoGrant(), now=NOW), "signature"),
        (mint_token("nokey", SECRET, "a", VideoGrant(), now=NOW), "unknown API key"),
        (_forged({"iss": "key1", "sub": "a", "exp": NOW + 60}, secret="s" * 64, alg="HS512"), "HS256"),
        (_forged({"iss": "key1", "sub": "a"}), "exp"),
        (_forged({"iss": "key1", "exp": NOW + 60}), "sub"),
        (_forged({"iss": "key1", "sub": "", "exp": NOW + 60}), "identity"),
        (_forged({"iss": "key1", "sub": "a", "exp": NOW + 60, "name": 5}), "'name'"),
        (_forged({"iss": "key1", "sub": "a", "exp": NOW + 60, "metadata": "m" * 5000}), "'metadata'"),
        (_forged({"iss": "key1", "sub": "a", "exp": NOW + 60, "video": []}), "'video'"),
        (_forged({"iss": "key1", "sub": "a", "exp": NOW + 60, "video": {"canPublish": "yes"}}), "canPublish"),
        (_forged({"iss": "key1", "sub": "a", "exp": NOW + 60, "video": {"canPublishSources": ["tv"]}}), "canPublishSources"),
        (_forged({"iss": "key1", "sub": "a", "exp": NOW + 60, "video": {"room": 7}}), "video.room"),
    ],
)
def test_bad_tokens_are_refused_with_a_reason(token, why):
    with pytest.raises(InvalidToken, match=why):
        verify_token(token, KEYS, now=NOW)


def test_the_alg_none_token_is_refused():
    unsigned = jwt.encode({"iss": "key1", "sub": "a", "exp": NOW + 60}, None, algorithm="none")
    with pytest.raises(InvalidToken):
        verify_token(unsigned, KEYS, now=NOW)


def test_sources_and_defaults():
    grant = VideoGrant()
    assert grant.can_publish and grant.can_subscribe and grant.can_publish_data and not grant.room_join
    assert grant.allows_source("screen") and grant.allows_source("")
    only_mic = VideoGrant(can_publish_sources=("microphone",))
    assert only_mic.allows_source("microphone") and not only_mic.allows_source("camera")
    assert not VideoGrant(can_publish=False).allows_source("camera")
    assert VideoGrant(can_publish_sources=("custom",)).allows_source("")


def test_merged_applies_camel_case_changes_and_validates():
    grant = VideoGrant(room="r", room_join=True)
    changed = grant.merged({"canPublish": False, "canPublishSources": ["microphone"]})
    assert (changed.can_publish, changed.can_publish_sources, changed.room_join) == (False, ("microphone",), True)
    with pytest.raises(InvalidToken):
        grant.merged({"canFly": True})
    with pytest.raises(InvalidToken):
        grant.merged({"canPublish": 1})


def test_key_store_from_the_environment_format_and_weak_secrets():
    store = KeyStore.from_env_value("k1: " + "a" * 32 + ", k2:" + "b" * 32)
    assert store.secret("k1") == "a" * 32 and store.secret("k2") == "b" * 32
    with pytest.raises(ValueError):
        KeyStore.from_env_value("k1 " + "a" * 32)
    with pytest.raises(ValueError, match="at least 32"):
        KeyStore({"k": "short"})
    assert not KeyStore() and KeyStore.development()
