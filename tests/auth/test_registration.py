"""RFC 7591 dynamic client registration through the real app: `POST /auth/register`, guarded
by initial access tokens made with `yilian clients token` (here: the same function, on the app's
own `var/auth.sqlite3`) or `YILIAN_REGISTRATION_TOKEN`."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from joserfc import jws
from joserfc.jwk import ECKey, RSAKey
from joserfc.jws import JWSRegistry

from app.auth.clients import issue_registration_token, verify_client_secret
from app.auth.sqlite_store import SqliteAuthStore
from app.cli import main
from app.server import create_app
from tests.conftest import make_settings

OPERATOR_TOKEN = "yilian-ops-registration-2026-bjrmyy-0123456789"
APP_REDIRECT = "https://app.jiankang-zhushou.example.cn/smart/callback"
APP_LAUNCH = "https://app.jiankang-zhushou.example.cn/smart/launch"


@pytest.fixture(scope="module")
def app_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    settings = make_settings(tmp_path_factory.mktemp("register"), auth="smart",
                             registration_token=OPERATOR_TOKEN)
    with TestClient(create_app(settings)) as c:
        yield c


def _store(client: TestClient) -> SqliteAuthStore:
    app = client.app
    assert isinstance(app, FastAPI)
    store: SqliteAuthStore = app.state.auth_store
    return store


def _token(client: TestClient, uses: int = 1, ttl: float = 3600) -> str:
    return issue_registration_token(_store(client), uses=uses, ttl_seconds=ttl)


def _register(client: TestClient, metadata: Any, token: str | None = OPERATOR_TOKEN,
              **kw: Any) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return client.post("/auth/register", json=metadata, headers=headers, **kw)


def _public_app(**extra: Any) -> dict[str, Any]:
    return {"client_name": "健康助手", "client_name#en": "Health Assistant",
            "redirect_uris": [APP_REDIRECT], "token_endpoint_auth_method": "none",
            "grant_types": ["authorization_code", "refresh_token"], "response_types": ["code"],
            "scope": "openid fhirUser launch/patient offline_access patient/*.rs",
            "launch_uri": APP_LAUNCH, **extra}


def test_registration_requires_initial_access_token(app_client: TestClient) -> None:
    before = len(_store(app_client).list_clients())
    response = _register(app_client, _public_app(), token=None)
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer ")
    assert response.headers["cache-control"] == "no-store"
    assert response.json()["error"] == "invalid_token"
    assert len(_store(app_client).list_clients()) == before


@pytest.mark.parametrize("header", ["Bearer not-a-token-we-made", "Basic eWlsaWFuOnlpbGlhbg==",
                                    "Bearer", "bearer  "])
def test_unknown_or_malformed_initial_access_token_is_refused(app_client: TestClient,
                                                             header: str) -> None:
    before = len(_store(app_client).list_clients())
    response = app_client.post("/auth/register", json=_public_app(),
                               headers={"Authorization": header})
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_token"
    assert len(_store(app_client).list_clients()) == before


def test_public_app_registers_with_a_cli_token_and_gets_no_secret(app_client: TestClient,
                                                                  ) -> None:
    response = _register(app_client, _public_app(), token=_token(app_client))
    assert response.status_code == 201, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert "client_secret" not in body
    assert body["token_endpoint_auth_method"] == "none"
    assert body["redirect_uris"] == [APP_REDIRECT]
    assert body["launch_uri"] == APP_LAUNCH
    assert body["client_name"] == "健康助手" and body["client_name#en"] == "Health Assistant"
    stored = _store(app_client).get_client(body["client_id"])
    assert stored is not None and stored.kind == "public"
    assert stored.redirect_uris == (APP_REDIRECT,)
    assert stored.scope == body["scope"]


def test_single_use_token_cannot_register_twice(app_client: TestClient) -> None:
    token = _token(app_client, uses=1)
    assert _register(app_client, _public_app(), token=token).status_code == 201
    second = _register(app_client, _public_app(), token=token)
    assert second.status_code == 401
    assert second.json()["error"] == "invalid_token"


def test_expired_token_is_refused(app_client: TestClient) -> None:
    token = issue_registration_token(_store(app_client), uses=5, ttl_seconds=1,
                                     clock=lambda: time.time() - 10)
    response = _register(app_client, _public_app(), token=token)
    assert response.status_code == 401


def test_symmetric_client_gets_its_secret_once_and_it_is_stored_hashed(
        app_client: TestClient) -> None:
    response = _register(app_client, _public_app(token_endpoint_auth_method="client_secret_basic",
                                                 client_name="协和医院 病历查询"))
    assert response.status_code == 201, response.text
    body = response.json()
    secret = body["client_secret"]
    assert len(secret) >= 43 and body["client_secret_expires_at"] == 0
    stored = _store(app_client).get_client(body["client_id"])
    assert stored is not None and stored.kind == "symmetric"
    assert stored.secret_hash != secret
    assert verify_client_secret(stored, secret)


def test_default_auth_method_is_client_secret_basic(app_client: TestClient) -> None:
    metadata = _public_app()
    del metadata["token_endpoint_auth_method"]
    body = _register(app_client, metadata).json()
    assert body["token_endpoint_auth_method"] == "client_secret_basic"
    assert "client_secret" in body


@pytest.mark.parametrize("key", [
    RSAKey.generate_key(2048, parameters={"kid": "taikang-rsa-1"}),
    ECKey.generate_key("P-384", parameters={"kid": "taikang-ec-1"}),
], ids=["RS384", "ES384"])
def test_backend_service_registers_with_its_public_jwks(app_client: TestClient,
                                                        key: RSAKey | ECKey) -> None:
    jwks = {"keys": [key.as_dict(private=False)]}
    response = _register(app_client, {
        "client_name": "泰康保险 理赔核查", "token_endpoint_auth_method": "private_key_jwt",
        "grant_types": ["client_credentials"], "scope": "system/Patient.rs system/Claim.rs",
        "jwks": jwks})
    assert response.status_code == 201, response.text
    body = response.json()
    assert "client_secret" not in body and "redirect_uris" not in body
    assert body["grant_types"] == ["client_credentials"]
    stored = _store(app_client).get_client(body["client_id"])
    assert stored is not None and stored.kind == "asymmetric"
    assert stored.jwks is not None and stored.jwks["keys"][0]["kid"] == key.kid


def test_backend_service_may_register_a_jwks_uri(app_client: TestClient) -> None:
    response = _register(app_client, {
        "client_name": "中国人寿 核保系统", "token_endpoint_auth_method": "private_key_jwt",
        "grant_types": ["client_credentials"], "scope": "system/Observation.rs",
        "jwks_uri": "https://keys.chinalife.example.cn/smart/jwks.json"})
    assert response.status_code == 201, response.text
    assert response.json()["jwks_uri"] == "https://keys.chinalife.example.cn/smart/jwks.json"


def test_private_key_in_jwks_is_refused(app_client: TestClient) -> None:
    key = ECKey.generate_key("P-384", parameters={"kid": "leaky"})
    response = _register(app_client, {
        "client_name": "泄露密钥的系统", "token_endpoint_auth_method": "private_key_jwt",
        "grant_types": ["client_credentials"], "scope": "system/Patient.rs",
        "jwks": {"keys": [key.as_dict(private=True)]}})
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_client_metadata"
    assert "private key" in response.json()["error_description"]


@pytest.mark.parametrize("uri", [
    "http://app.jiankang-zhushou.example.cn/callback",  # http off loopback
    "https://app.jiankang-zhushou.example.cn/cb#frag",
    "https://evil.example@app.jiankang-zhushou.example.cn/cb",
    "/relative/callback",
    "javascript:alert(1)",
])
def test_bad_redirect_uri_is_invalid_redirect_uri(app_client: TestClient, uri: str) -> None:
    response = _register(app_client, _public_app(redirect_uris=[uri]))
    assert response.status_code == 400
    body = response.json()
    assert body["error"] == "invalid_redirect_uri"
    assert "redirect_uri" in body["error_description"]
    assert response.headers["cache-control"] == "no-store"


def test_loopback_http_redirect_is_allowed_for_native_and_dev_apps(app_client: TestClient,
                                                                   ) -> None:
    response = _register(app_client, _public_app(redirect_uris=["http://127.0.0.1:53682/cb"]))
    assert response.status_code == 201, response.text


@pytest.mark.parametrize(("metadata", "field"), [
    (_public_app(token_endpoint_auth_method="tls_client_auth"), "token_endpoint_auth_method"),
    (_public_app(response_types=["token"]), "response_types"),
    (_public_app(grant_types=["password"]), "grant_types"),
    (_public_app(scope="patient/Observation.banana"), "scope"),
    (_public_app(scope="system/Patient.rs"), "scope"),
    (_public_app(redirect_uris="https://app.example.cn/cb"), "redirect_uris"),
    ({k: v for k, v in _public_app().items() if not k.startswith("client_name")},
     "client_name"),
    (_public_app(redirect_uris=[]), "redirect_uri"),
    (_public_app(token_endpoint_auth_method="private_key_jwt"), "jwks"),
    (["not", "an", "object"], "JSON object"),
])
def test_bad_metadata_is_invalid_client_metadata_naming_the_field(
        app_client: TestClient, metadata: Any, field: str) -> None:
    response = _register(app_client, metadata)
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["error"] == "invalid_client_metadata"
    assert field in body["error_description"]


@pytest.mark.parametrize(("content", "ctype"), [
    (b"{not json", "application/json"),
    (b'{"client_name": "x"}', "application/x-www-form-urlencoded"),
    (b"\xff\xfe", "application/json"),
    (b'{"client_name": "' + b"a" * 70_000 + b'"}', "application/json"),
])
def test_malformed_bodies_get_json_errors_never_500(app_client: TestClient, content: bytes,
                                                    ctype: str) -> None:
    response = app_client.post("/auth/register", content=content, headers={
        "Authorization": f"Bearer {OPERATOR_TOKEN}", "Content-Type": ctype})
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_client_metadata"


def test_server_chooses_the_client_id(app_client: TestClient) -> None:
    response = _register(app_client, _public_app(client_id="yilian-demo"))
    assert response.status_code == 201
    assert response.json()["client_id"] != "yilian-demo"


def test_registered_backend_client_can_get_a_token(app_client: TestClient) -> None:
    """The registration is real: the client it creates authenticates at the token endpoint."""
    key = ECKey.generate_key("P-384", parameters={"kid": "renbao-ec-2026"})
    body = _register(app_client, {
        "client_name": "人保健康 理赔", "token_endpoint_auth_method": "private_key_jwt",
        "grant_types": ["client_credentials"], "scope": "system/Patient.rs",
        "jwks": {"keys": [key.as_dict(private=False)]}}).json()
    now = int(time.time())
    claims = {"iss": body["client_id"], "sub": body["client_id"],
              "aud": "http://testserver/auth/token", "exp": now + 240, "iat": now,
              "jti": str(uuid.uuid4())}
    assertion = jws.serialize_compact({"alg": "ES384", "kid": key.kid, "typ": "JWT"},
                                      json.dumps(claims), key,
                                      registry=JWSRegistry(algorithms=["ES384"]))
    response = app_client.post("/auth/token", data={
        "grant_type": "client_credentials", "scope": "system/Patient.rs",
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": assertion})
    assert response.status_code == 200, response.text
    assert response.json()["scope"] == "system/Patient.rs"


def test_token_printed_by_yilian_clients_token_registers_two_apps(
        app_client: TestClient, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    app = app_client.app
    assert isinstance(app, FastAPI)
    monkeypatch.setenv("YILIAN_VAR_DIR", str(app.state.settings.var_dir))
    assert main(["clients", "token", "--uses", "2", "--ttl", "10m"]) == 0
    token = capsys.readouterr().out.strip()
    assert _register(app_client, _public_app(), token=token).status_code == 201
    assert _register(app_client, _public_app(), token=token).status_code == 201
    assert _register(app_client, _public_app(), token=token).status_code == 401


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner,
                                                                max_size=3),
    max_leaves=8)
_metadata = st.fixed_dictionaries({}, optional={
    name: _json_values | st.sampled_from(values) for name, values in {
        "client_name": ["健康助手", ""],
        "redirect_uris": [[APP_REDIRECT], ["http://127.0.0.1/cb", "http://127.0.0.1/cb"]],
        "token_endpoint_auth_method": ["none", "private_key_jwt", "client_secret_basic"],
        "grant_types": [["authorization_code"], ["client_credentials"], []],
        "response_types": [["code"], []],
        "scope": ["patient/*.rs openid", "system/*.rs", ""],
        "jwks": [{"keys": []}, {"keys": [{"kty": "EC"}]}],
        "jwks_uri": ["https://keys.example.cn/jwks", "ftp://x"],
        "launch_uri": [APP_LAUNCH, "javascript:alert(1)"],
    }.items()})


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(metadata=_metadata)
def test_any_metadata_gets_201_or_an_rfc7591_error_never_500(app_client: TestClient,
                                                              metadata: dict[str, Any]) -> None:
    response = _register(app_client, metadata)
    assert response.status_code in (201, 400), response.text
    if response.status_code == 400:
        assert response.json()["error"] in ("invalid_client_metadata", "invalid_redirect_uri")
