"""Client registry: exact redirect URIs, loopback http, hashed secrets, jwks, scope ceilings."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from joserfc.jwk import ECKey, RSAKey

from app.auth.clients import (
    DEFAULT_BACKEND_SCOPE,
    DEFAULT_USER_SCOPE,
    ClientError,
    check_redirect_uri,
    issue_registration_token,
    register_client,
    resolve_redirect_uri,
    use_registration_token,
    verify_client_secret,
)
from app.auth.scopes import parse_scopes
from app.auth.sqlite_store import SqliteAuthStore
from app.auth.store import hash_secret

CB = "https://app.jiankang.cn/smart/callback"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteAuthStore]:
    s = SqliteAuthStore(tmp_path / "auth.sqlite3")
    yield s
    s.close()


def _public_jwks(*keys: tuple[str, Any]) -> dict[str, Any]:
    return {"keys": [{**key.as_dict(private=False), "kid": kid} for kid, key in keys]}


def _app(store: SqliteAuthStore, *uris: str) -> Any:
    return register_client(store, name="健康助手", kind="public", redirect_uris=uris or (CB,)
                           ).client


@pytest.mark.parametrize("requested", [
    CB + "/",                                       # trailing slash
    CB + "/../evil",                                # extra path, dot segments
    CB[:-3],                                        # prefix
    CB + "x",
    "https://APP.jiankang.cn/smart/callback",       # case of the host
    "https://app.jiankang.cn/smart/Callback",       # case of the path
    "HTTPS://app.jiankang.cn/smart/callback",       # case of the scheme
    CB + "?next=https://evil.cn",                   # extra query
    CB + "#frag",                                   # fragment
    "https://app.jiankang.cn:443/smart/callback",   # explicit default port
    "https://app.jiankang.cn:8443/smart/callback",  # other port
    "http://app.jiankang.cn/smart/callback",        # other scheme
    "https://app.jiankang.cn@evil.cn/smart/callback",
    "https://evil.cn/smart/callback",
    "",
])
def test_redirect_uri_must_match_exactly(store: SqliteAuthStore, requested: str) -> None:
    client = _app(store)
    assert resolve_redirect_uri(client, CB) == CB
    assert resolve_redirect_uri(client, requested) is None


def test_registered_query_must_match_exactly_too(store: SqliteAuthStore) -> None:
    uri = "https://app.jiankang.cn/cb?hospital=bj-301"
    client = _app(store, uri)
    assert resolve_redirect_uri(client, uri) == uri
    for other in ("https://app.jiankang.cn/cb?hospital=bj-302",
                  "https://app.jiankang.cn/cb?hospital=bj-301&x=1",
                  "https://app.jiankang.cn/cb", "https://app.jiankang.cn/cb?HOSPITAL=bj-301"):
        assert resolve_redirect_uri(client, other) is None, other


def test_missing_redirect_uri_is_resolved_only_when_one_is_registered(
        store: SqliteAuthStore) -> None:
    assert resolve_redirect_uri(_app(store), None) == CB
    two = _app(store, CB, "http://127.0.0.1:9000/cb")
    assert resolve_redirect_uri(two, None) is None
    assert resolve_redirect_uri(two, "http://127.0.0.1:9000/cb") == "http://127.0.0.1:9000/cb"


@pytest.mark.parametrize("uri", [
    "http://127.0.0.1/cb", "http://127.0.0.1:51004/oauth2redirect", "http://[::1]:8080/cb",
    "http://localhost:3000/callback", "https://app.jiankang.cn/cb",
    "https://app.jiankang.cn/cb?hospital=bj-301",
])
def test_https_and_loopback_http_redirects_are_accepted(uri: str) -> None:
    assert check_redirect_uri(uri) == uri


@pytest.mark.parametrize("uri, reason", [
    ("http://app.jiankang.cn/cb", "https"),
    ("http://192.168.1.20:8080/cb", "https"),
    ("http://10.0.0.1/cb", "https"),
    ("http://127.0.0.1.evil.cn/cb", "https"),
    ("http://localhost.evil.cn/cb", "https"),
    ("http://127.0.0.2/cb", "https"),
    ("cn.jiankang.app:/oauth2redirect", "host"),
    ("javascript:alert(1)", "host"),
    ("ftp://app.jiankang.cn/cb", "https"),
    ("https://app.jiankang.cn/cb#done", "fragment"),
    ("https://app.jiankang.cn/cb#", "fragment"),
    ("https://user@app.jiankang.cn/cb", "user information"),
    ("/smart/callback", "host"),
    ("https:///cb", "host"),
    ("https://app.jiankang.cn:99999/cb", "valid URL"),
    ("https://app.jiankang.cn/c b", "whitespace"),
    ("https://app.jiankang.cn/cb\n", "whitespace"),
])
def test_other_redirect_uris_are_refused(store: SqliteAuthStore, uri: str, reason: str) -> None:
    with pytest.raises(ClientError, match=reason):
        _app(store, uri)
    assert store.list_clients() == []


def test_symmetric_client_secret_is_shown_once_and_stored_hashed_only(
        store: SqliteAuthStore, tmp_path: Path) -> None:
    done = register_client(store, name="医保结算", kind="symmetric", redirect_uris=(CB,))
    assert done.secret is not None and len(done.secret) >= 43  # 256 bits, base64url
    assert done.client.secret_hash == hash_secret(done.secret)
    stored = store.get_client(done.client.client_id)
    assert stored is not None and verify_client_secret(stored, done.secret)
    store.close()
    files = [p for p in tmp_path.iterdir() if p.name.startswith("auth.sqlite3")]
    assert files
    for f in files:
        assert done.secret.encode() not in f.read_bytes(), f


def test_client_secret_verification(store: SqliteAuthStore) -> None:
    done = register_client(store, name="医保结算", kind="symmetric", redirect_uris=(CB,))
    assert done.secret is not None
    assert verify_client_secret(done.client, done.secret) is True
    assert verify_client_secret(done.client, done.secret[:-1]) is False
    assert verify_client_secret(done.client, done.secret.upper()) is False
    assert verify_client_secret(done.client, "") is False
    public = register_client(store, name="健康助手", kind="public", redirect_uris=(CB,))
    assert public.secret is None
    assert verify_client_secret(public.client, "") is False
    assert verify_client_secret(public.client, hash_secret("")) is False


def test_each_client_gets_its_own_random_id_and_secret(store: SqliteAuthStore) -> None:
    a = register_client(store, name="甲", kind="symmetric", redirect_uris=(CB,))
    b = register_client(store, name="乙", kind="symmetric", redirect_uris=(CB,))
    assert a.client.client_id != b.client.client_id
    assert a.secret != b.secret
    for _ in range(50):  # never looks like a command-line option
        assert not _app(store).client_id.startswith("-")


@pytest.mark.parametrize("client_id", ["-rf", "", "健康助手", "a b", "a/b", "x" * 129])
def test_chosen_client_id_must_be_url_unreserved(store: SqliteAuthStore, client_id: str) -> None:
    with pytest.raises(ClientError, match="client_id"):
        register_client(store, name="健康助手", kind="public", redirect_uris=(CB,),
                        client_id=client_id)


def test_asymmetric_backend_client_with_jwks(store: SqliteAuthStore) -> None:
    jwks = _public_jwks(("insurer-es384", ECKey.generate_key("P-384")),
                        ("insurer-rs384", RSAKey.generate_key(2048)))
    done = register_client(store, name="平安医保", kind="asymmetric", jwks=jwks,
                           client_id="pingan-insurer")
    assert done.secret is None
    client = store.get_client("pingan-insurer")
    assert client is not None
    assert client.jwks == jwks
    assert client.grant_types == ("client_credentials",)
    assert client.scope == DEFAULT_BACKEND_SCOPE
    assert client.redirect_uris == ()


@pytest.mark.parametrize("jwks_uri", ["https://insurer.pingan.cn/.well-known/jwks.json",
                                      "http://127.0.0.1:9100/jwks.json"])
def test_asymmetric_client_with_jwks_uri(store: SqliteAuthStore, jwks_uri: str) -> None:
    client = register_client(store, name="平安医保", kind="asymmetric", jwks_uri=jwks_uri).client
    assert client.jwks_uri == jwks_uri and client.jwks is None


def _private_jwk() -> dict[str, Any]:
    return {**ECKey.generate_key("P-384").as_dict(private=True), "kid": "k1"}


@pytest.mark.parametrize("kwargs, reason", [
    ({}, "exactly one of jwks and jwks_uri"),
    ({"jwks_uri": "http://insurer.pingan.cn/jwks.json"}, "https"),
    ({"jwks_uri": "https://insurer.pingan.cn/jwks.json#k1"}, "fragment"),
    ({"jwks": {"keys": []}}, "at least one key"),
    ({"jwks": [{"kty": "EC"}]}, "JSON object"),
    ({"jwks": {"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "k1"}]}}, "RSA or EC"),
    ({"jwks": {"keys": [{"kty": "EC", "crv": "P-384", "x": "AA", "y": "BB"}]}}, "no kid"),
    ({"jwks": {"keys": [{"kty": "EC", "kid": "a"}, {"kty": "RSA", "kid": "a"}]}}, "unique"),
])
def test_asymmetric_client_needs_a_valid_public_jwks_or_https_jwks_uri(
        store: SqliteAuthStore, kwargs: dict[str, Any], reason: str) -> None:
    with pytest.raises(ClientError, match=reason):
        register_client(store, name="平安医保", kind="asymmetric", **kwargs)


def test_private_key_material_in_jwks_is_refused(store: SqliteAuthStore) -> None:
    with pytest.raises(ClientError, match="private key material"):
        register_client(store, name="平安医保", kind="asymmetric",
                        jwks={"keys": [_private_jwk()]})


def test_jwks_on_a_public_client_is_refused(store: SqliteAuthStore) -> None:
    with pytest.raises(ClientError, match="asymmetric"):
        register_client(store, name="健康助手", kind="public", redirect_uris=(CB,),
                        jwks_uri="https://app.jiankang.cn/jwks")


def test_user_facing_client_needs_a_redirect_uri(store: SqliteAuthStore) -> None:
    with pytest.raises(ClientError, match="redirect_uri"):
        register_client(store, name="健康助手", kind="public")


def test_scope_ceiling_is_parsed_and_written_canonically(store: SqliteAuthStore) -> None:
    client = register_client(
        store, name="健康助手", kind="public", redirect_uris=(CB,),
        scope="patient/Observation.read offline_access  openid patient/Patient.rs fhirUser"
    ).client
    assert sorted(client.scope.split(" ")) == sorted(
        ["openid", "fhirUser", "offline_access", "patient/Patient.rs",
         "patient/Observation.read"])
    assert client.scope == parse_scopes(client.scope).scopes.to_string()  # canonical form
    assert _app(store).scope == DEFAULT_USER_SCOPE


@pytest.mark.parametrize("kind, scope, reason", [
    ("public", "patient/Observation.sr", "invalid permissions"),
    ("public", "patient/Obsrvation.rs", "not an R4 resource type"),
    ("public", "openid admin", "unknown scope"),
    ("public", "system/Patient.rs", "backend services"),
    ("public", "   ", "empty"),
    ("asymmetric", "patient/*.rs", "system/ scopes only"),
    ("asymmetric", "system/*.rs launch", "system/ scopes only"),
])
def test_invalid_or_unusable_scope_ceilings_are_refused(store: SqliteAuthStore, kind: str,
                                                        scope: str, reason: str) -> None:
    extra: dict[str, Any] = ({"jwks_uri": "https://insurer.pingan.cn/jwks"}
                             if kind == "asymmetric" else {"redirect_uris": (CB,)})
    with pytest.raises(ClientError, match=reason):
        register_client(store, name="应用", kind=kind, scope=scope, **extra)  # type: ignore[arg-type]


def test_client_credentials_needs_an_asymmetric_client(store: SqliteAuthStore) -> None:
    with pytest.raises(ClientError, match="asymmetric"):
        register_client(store, name="医保", kind="symmetric",
                        grant_types=("client_credentials",), scope="system/*.rs")


def test_asymmetric_client_with_redirect_uri_gets_both_flows(store: SqliteAuthStore) -> None:
    client = register_client(store, name="区域平台", kind="asymmetric", redirect_uris=(CB,),
                             jwks_uri="https://platform.example.cn/jwks").client
    assert client.grant_types == ("authorization_code", "refresh_token", "client_credentials")
    assert client.scope == DEFAULT_USER_SCOPE + " " + DEFAULT_BACKEND_SCOPE


def test_registration_token_is_stored_hashed_and_limited_in_uses_and_time(
        store: SqliteAuthStore, tmp_path: Path) -> None:
    now = [1_795_000_000.0]
    token = issue_registration_token(store, uses=2, ttl_seconds=3600, clock=lambda: now[0])
    assert len(token) >= 43
    assert use_registration_token(store, token, clock=lambda: now[0]) is True
    assert use_registration_token(store, token + "x", clock=lambda: now[0]) is False
    short = issue_registration_token(store, uses=5, ttl_seconds=60, clock=lambda: now[0])
    now[0] += 61
    assert use_registration_token(store, short, clock=lambda: now[0]) is False
    assert use_registration_token(store, token, clock=lambda: now[0]) is True
    assert use_registration_token(store, token, clock=lambda: now[0]) is False
    store.close()
    for f in tmp_path.iterdir():
        assert token.encode() not in f.read_bytes()
    with pytest.raises(ClientError):
        issue_registration_token(SqliteAuthStore(tmp_path / "b.sqlite3"), uses=0,
                                 ttl_seconds=60)
