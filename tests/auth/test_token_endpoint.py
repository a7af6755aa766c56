"""The SMART Backend Services token service through the real app: `POST /auth/token`,
`/auth/revoke` (RFC 7009) and `/auth/introspect` (RFC 7662), with real asymmetric clients
registered in the app's own `var/auth.sqlite3` and real RS384 / ES384 assertions."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from joserfc import jws
from joserfc.jwk import ECKey, RSAKey
from joserfc.jws import JWSRegistry

from app.auth.bearer import BearerError, BearerVerifier, issue_access_token
from app.auth.clients import register_client
from app.auth.rfc7523_backend import JWT_BEARER_ASSERTION_TYPE
from app.auth.routes_token import MAX_FORM_BYTES, AuthUrls
from app.auth.scopes import parse_scopes
from app.auth.sqlite_store import SqliteAuthStore
from app.server import create_app
from tests.conftest import BASE, make_settings

ISSUER = "http://testserver/auth"
TOKEN_URL = "http://testserver/auth/token"
INSURER = "pingan-claims"  # 平安健康保险 理赔系统
LAB = "kingmed-lab"  # 金域医学 检验系统
CEILING = "system/Patient.rs system/Observation.rs"
FORM = "application/x-www-form-urlencoded"
REGISTRY = JWSRegistry(algorithms=["RS384", "ES384"])


@pytest.fixture(scope="module")
def rsa_key() -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": "pingan-rsa-2026"})


@pytest.fixture(scope="module")
def ec_key() -> ECKey:
    return ECKey.generate_key("P-384", parameters={"kid": "kingmed-ec-2026"})


@pytest.fixture(scope="module")
def app_client(tmp_path_factory: pytest.TempPathFactory, rsa_key: RSAKey,
               ec_key: ECKey) -> Iterator[TestClient]:
    app = create_app(make_settings(tmp_path_factory.mktemp("token")))
    with TestClient(app) as c:
        store = _store(app)
        register_client(store, name="平安健康保险 理赔系统", kind="asymmetric",
                        client_id=INSURER, scope=CEILING,
                        jwks={"keys": [rsa_key.as_dict(private=False)]})
        register_client(store, name="金域医学 检验系统", kind="asymmetric", client_id=LAB,
                        scope="system/Observation.cruds",
                        jwks={"keys": [ec_key.as_dict(private=False)]})
        yield c


@pytest.fixture
def client(app_client: TestClient) -> TestClient:
    return app_client


def _app(c: TestClient) -> FastAPI:
    app = c.app
    assert isinstance(app, FastAPI)
    return app


def _store(app: FastAPI) -> SqliteAuthStore:
    store = app.state.auth_store
    assert isinstance(store, SqliteAuthStore)
    return store


def _verifier(c: TestClient) -> BearerVerifier:
    app = _app(c)
    return BearerVerifier(app.state.keyring, issuer=ISSUER, audience=BASE,
                          revoked=_store(app).is_revoked)


def _assertion(key: RSAKey | ECKey, client_id: str, *, alg: str | None = None,
               **over: Any) -> str:
    now = int(time.time())
    claims: dict[str, Any] = {"iss": client_id, "sub": client_id, "aud": TOKEN_URL,
                              "exp": now + 240, "iat": now, "jti": str(uuid.uuid4())}
    claims.update(over)
    alg = alg or ("RS384" if isinstance(key, RSAKey) else "ES384")
    return jws.serialize_compact({"alg": alg, "kid": key.kid, "typ": "JWT"}, json.dumps(claims),
                                 key, algorithms=[alg], registry=REGISTRY)


def _auth(assertion: str) -> dict[str, str]:
    return {"client_assertion_type": JWT_BEARER_ASSERTION_TYPE, "client_assertion": assertion}


def _post(c: TestClient, path: str, form: dict[str, str] | str | bytes,
          content_type: str = FORM, **headers: str) -> Any:
    body = urlencode(form) if isinstance(form, dict) else form
    return c.post(path, content=body, headers={"Content-Type": content_type, **headers})


def _token(c: TestClient, key: RSAKey | ECKey, client_id: str, scope: str) -> Any:
    return _post(c, "/auth/token", {"grant_type": "client_credentials", "scope": scope,
                                    **_auth(_assertion(key, client_id))})


def _oauth_error(resp: Any, error: str, status: int = 400) -> str:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body["error"] == error
    assert isinstance(body["error_description"], str) and body["error_description"]
    assert resp.headers["cache-control"] == "no-store"
    assert resp.headers["pragma"] == "no-cache"
    assert "Traceback" not in resp.text
    return str(body["error_description"])


# -- URLs ----------------------------------------------------------------------------------------


def test_urls_derive_from_the_fhir_base_url() -> None:
    urls = AuthUrls.from_base_url("http://127.0.0.1:8080/fhir")
    assert (urls.issuer, urls.token, urls.fhir_base) == (
        "http://127.0.0.1:8080/auth", "http://127.0.0.1:8080/auth/token",
        "http://127.0.0.1:8080/fhir")
    prefixed = AuthUrls.from_base_url("https://his.zsyy.cn/yilian/fhir/")
    assert prefixed.issuer == "https://his.zsyy.cn/yilian/auth"
    assert prefixed.introspect == "https://his.zsyy.cn/yilian/auth/introspect"
    assert prefixed.fhir_base == "https://his.zsyy.cn/yilian/fhir"


# -- token ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("who", ["rsa", "ec"])
def test_token_issued_for_rs384_and_es384_assertions(client: TestClient, rsa_key: RSAKey,
                                                     ec_key: ECKey, who: str) -> None:
    key, cid, scope = ((rsa_key, INSURER, "system/Patient.rs") if who == "rsa"
                       else (ec_key, LAB, "system/Observation.rs"))
    before = time.time()
    resp = _token(client, key, cid, scope)
    assert resp.status_code == 200, resp.text
    assert resp.headers["cache-control"] == "no-store"
    assert resp.headers["pragma"] == "no-cache"
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 300 and isinstance(body["expires_in"], int)
    assert body["scope"] == scope
    principal = _verifier(client).verify("Bearer " + body["access_token"])
    assert principal.client_id == cid and principal.subject == cid
    assert principal.scopes == (scope,)
    claims = _verifier(client).verify_token(body["access_token"])
    assert claims.issuer == ISSUER and claims.audience == (BASE,)
    assert claims.expires_at - claims.issued_at == 300
    assert before - 1 <= claims.issued_at <= time.time() + 1
    assert claims.patient is None and claims.fhir_user is None


def test_scope_narrowed_to_the_registered_ceiling(client: TestClient, rsa_key: RSAKey) -> None:
    resp = _token(client, rsa_key, INSURER,
                  "system/*.cruds system/Condition.rs system/Observation.r")
    assert resp.status_code == 200, resp.text
    granted = resp.json()["scope"]
    # system/*.cruds meets each ceiling scope (create/update/delete dropped); Condition is
    # outside the ceiling; Observation.r is kept as asked (canonical order)
    assert granted == "system/Observation.rs system/Observation.r system/Patient.rs"
    principal = _verifier(client).verify("Bearer " + resp.json()["access_token"])
    assert principal.scopes == tuple(granted.split())
    v1 = _token(client, rsa_key, INSURER, "system/Patient.read")
    assert v1.status_code == 200 and v1.json()["scope"] == "system/Patient.read"


def test_scope_outside_the_ceiling_is_invalid_scope(client: TestClient,
                                                    rsa_key: RSAKey) -> None:
    _oauth_error(_token(client, rsa_key, INSURER, "system/Condition.rs"), "invalid_scope")


@pytest.mark.parametrize("scope", ["patient/Patient.rs", "user/Observation.rs",
                                   "system/Patient.rs openid", "launch/patient",
                                   "system/Patient.rs user/Patient.rs", "system/NoSuchType.rs",
                                   "not a scope"])
def test_patient_user_and_bad_scopes_refused(client: TestClient, rsa_key: RSAKey,
                                             scope: str) -> None:
    _oauth_error(_token(client, rsa_key, INSURER, scope), "invalid_scope")


def test_missing_scope_is_invalid_scope(client: TestClient, rsa_key: RSAKey) -> None:
    resp = _post(client, "/auth/token", {"grant_type": "client_credentials",
                                         **_auth(_assertion(rsa_key, INSURER))})
    _oauth_error(resp, "invalid_scope")


@pytest.mark.parametrize("grant", ["password", "implicit",
                                   "urn:ietf:params:oauth:grant-type:jwt-bearer"])
def test_unknown_grant_type(client: TestClient, rsa_key: RSAKey, grant: str) -> None:
    resp = _post(client, "/auth/token", {"grant_type": grant, "scope": "system/Patient.rs",
                                         **_auth(_assertion(rsa_key, INSURER))})
    _oauth_error(resp, "unsupported_grant_type")


@pytest.mark.parametrize("grant", ["authorization_code", "refresh_token"])
def test_backend_client_cannot_use_user_flow_grants(client: TestClient, rsa_key: RSAKey,
                                                    grant: str) -> None:
    resp = _post(client, "/auth/token", {"grant_type": grant, "code": "x", "refresh_token": "x",
                                         **_auth(_assertion(rsa_key, INSURER))})
    _oauth_error(resp, "unauthorized_client")


def test_missing_grant_type(client: TestClient, rsa_key: RSAKey) -> None:
    resp = _post(client, "/auth/token", {"scope": "system/Patient.rs",
                                         **_auth(_assertion(rsa_key, INSURER))})
    _oauth_error(resp, "invalid_request")


def test_client_without_client_credentials_grant(client: TestClient) -> None:
    key = RSAKey.generate_key(2048, parameters={"kid": "both-grants"})
    register_client(_store(_app(client)), name="协和 患者应用", kind="asymmetric",
                    client_id="pumch-app", redirect_uris=["https://app.pumch.cn/cb"],
                    grant_types=["authorization_code"], scope="patient/Patient.rs",
                    jwks={"keys": [key.as_dict(private=False)]})
    _oauth_error(_token(client, key, "pumch-app", "system/Patient.rs"), "unauthorized_client")


def test_missing_assertion(client: TestClient) -> None:
    resp = _post(client, "/auth/token", {"grant_type": "client_credentials",
                                         "scope": "system/Patient.rs"})
    _oauth_error(resp, "invalid_request")
    resp = _post(client, "/auth/token", {"grant_type": "client_credentials",
                                         "scope": "system/Patient.rs",
                                         "client_assertion_type": JWT_BEARER_ASSERTION_TYPE})
    _oauth_error(resp, "invalid_request")


@pytest.mark.parametrize("case", ["other key", "wrong aud", "expired", "garbage", "RS256",
                                  "unknown client"])
def test_invalid_assertion(client: TestClient, rsa_key: RSAKey, case: str) -> None:
    stranger = RSAKey.generate_key(2048, parameters={"kid": "pingan-rsa-2026"})
    assertion = {
        "other key": lambda: _assertion(stranger, INSURER),
        "wrong aud": lambda: _assertion(rsa_key, INSURER, aud=BASE),
        "expired": lambda: _assertion(rsa_key, INSURER, exp=int(time.time()) - 120),
        "garbage": lambda: "not.a.jwt",
        "RS256": lambda: _assertion(rsa_key, INSURER, alg="RS256"),
        "unknown client": lambda: _assertion(rsa_key, "nobody", iss="nobody", sub="nobody"),
    }[case]
    try:
        text = assertion()
    except Exception:  # joserfc refuses to sign RS256 with our registry: build it unregistered
        text = jws.serialize_compact({"alg": "RS256", "kid": rsa_key.kid}, b"{}", rsa_key,
                                     algorithms=["RS256"])
    resp = _post(client, "/auth/token", {"grant_type": "client_credentials",
                                         "scope": "system/Patient.rs", **_auth(text)})
    _oauth_error(resp, "invalid_client")
    assert "www-authenticate" not in resp.headers


def test_authorization_header_gets_401_with_challenge(client: TestClient,
                                                      rsa_key: RSAKey) -> None:
    resp = _post(client, "/auth/token", {"grant_type": "client_credentials",
                                         "scope": "system/Patient.rs",
                                         **_auth(_assertion(rsa_key, INSURER))},
                 Authorization="Basic cGluZ2FuOnNlY3JldA==")
    _oauth_error(resp, "invalid_client", 401)
    assert resp.headers["www-authenticate"].startswith('Basic realm="yilian"')


def test_replayed_assertion_refused(client: TestClient, rsa_key: RSAKey) -> None:
    form = {"grant_type": "client_credentials", "scope": "system/Patient.rs",
            **_auth(_assertion(rsa_key, INSURER))}
    assert _post(client, "/auth/token", form).status_code == 200
    text = _oauth_error(_post(client, "/auth/token", form), "invalid_client")
    assert "already used" in text


@pytest.mark.parametrize("ctype", ["application/json", "multipart/form-data; boundary=x",
                                   "text/plain", "", "application/x-www-form-urlencoded; "
                                   "charset=gbk"])
def test_wrong_content_type(client: TestClient, rsa_key: RSAKey, ctype: str) -> None:
    form = {"grant_type": "client_credentials", "scope": "system/Patient.rs",
            **_auth(_assertion(rsa_key, INSURER))}
    body = json.dumps(form) if ctype == "application/json" else urlencode(form)
    resp = client.post("/auth/token", content=body,
                       headers={"Content-Type": ctype} if ctype else {})
    _oauth_error(resp, "invalid_request")


def test_content_type_parameters_and_case_accepted(client: TestClient, rsa_key: RSAKey) -> None:
    form = {"grant_type": "client_credentials", "scope": "system/Patient.rs",
            **_auth(_assertion(rsa_key, INSURER))}
    resp = _post(client, "/auth/token", form,
                 content_type="Application/X-WWW-Form-Urlencoded; charset=UTF-8")
    assert resp.status_code == 200, resp.text


@pytest.mark.parametrize("dup", ["grant_type", "scope", "client_assertion"])
def test_duplicate_parameters_refused(client: TestClient, rsa_key: RSAKey, dup: str) -> None:
    form = {"grant_type": "client_credentials", "scope": "system/Patient.rs",
            **_auth(_assertion(rsa_key, INSURER))}
    body = urlencode(form) + "&" + urlencode({dup: form[dup]})
    text = _oauth_error(_post(client, "/auth/token", body), "invalid_request")
    assert dup in text


def test_blank_parameter_counts_as_omitted(client: TestClient, rsa_key: RSAKey) -> None:
    form = {"grant_type": "client_credentials", "scope": "system/Patient.rs",
            **_auth(_assertion(rsa_key, INSURER))}
    resp = _post(client, "/auth/token", urlencode(form) + "&client_id=")
    assert resp.status_code == 200, resp.text


def test_oversized_body_refused(client: TestClient, rsa_key: RSAKey) -> None:
    form = {"grant_type": "client_credentials", "scope": "system/Patient.rs",
            **_auth(_assertion(rsa_key, INSURER)), "padding": "x" * MAX_FORM_BYTES}
    text = _oauth_error(_post(client, "/auth/token", form), "invalid_request")
    assert str(MAX_FORM_BYTES) in text

    def chunks() -> Iterator[bytes]:  # no Content-Length: the streamed size counts
        yield urlencode(form).encode()

    resp = client.post("/auth/token", content=chunks(), headers={"Content-Type": FORM})
    _oauth_error(resp, "invalid_request")


def test_invalid_utf8_refused(client: TestClient) -> None:
    _oauth_error(_post(client, "/auth/token", b"grant_type=%ff%fe"), "invalid_request")
    _oauth_error(_post(client, "/auth/token", b"grant_type=\xff"), "invalid_request")


def test_routes_not_in_openapi(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert not any(p.startswith("/auth") for p in paths)


def test_before_startup_answers_503_not_500(tmp_path: Path) -> None:
    app = create_app(make_settings(tmp_path))
    c = TestClient(app)  # no `with`: the lifespan (which opens the auth store) never ran
    resp = _post(c, "/auth/token", {"grant_type": "client_credentials", "scope": "x",
                                    "client_assertion_type": JWT_BEARER_ASSERTION_TYPE,
                                    "client_assertion": "a.b.c"})
    _oauth_error(resp, "temporarily_unavailable", 503)


# -- revoke and introspect ----------------------------------------------------------------------


def _introspect(c: TestClient, key: RSAKey | ECKey, client_id: str, token: str) -> Any:
    resp = _post(c, "/auth/introspect", {"token": token, **_auth(_assertion(key, client_id))})
    assert resp.status_code == 200, resp.text
    assert resp.headers["cache-control"] == "no-store"
    return resp.json()


def _revoke(c: TestClient, key: RSAKey | ECKey, client_id: str, token: str) -> Any:
    resp = _post(c, "/auth/revoke", {"token": token, "token_type_hint": "access_token",
                                     **_auth(_assertion(key, client_id))})
    assert resp.status_code == 200, resp.text
    assert resp.headers["cache-control"] == "no-store"
    return resp


def test_introspect_active_token(client: TestClient, rsa_key: RSAKey) -> None:
    token = _token(client, rsa_key, INSURER, "system/Patient.rs").json()["access_token"]
    info = _introspect(client, rsa_key, INSURER, token)
    claims = _verifier(client).verify_token(token)
    assert info == {"active": True, "scope": "system/Patient.rs", "client_id": INSURER,
                    "sub": INSURER, "iss": ISSUER, "aud": BASE, "iat": claims.issued_at,
                    "exp": claims.expires_at, "jti": claims.jti, "token_type": "Bearer"}


def test_introspect_reports_launch_context(client: TestClient, rsa_key: RSAKey) -> None:
    keyring = _app(client).state.keyring
    token = issue_access_token(keyring, issuer=ISSUER, audience=BASE, client_id=INSURER,
                               scope=parse_scopes("patient/Observation.rs").scopes,
                               subject="zhangsan", fhir_user="Patient/pat-000001",
                               patient="pat-000001", encounter="enc-1", lifetime=600)
    info = _introspect(client, rsa_key, INSURER, token)
    assert info["active"] is True
    assert (info["patient"], info["encounter"], info["fhirUser"], info["sub"]) == (
        "pat-000001", "enc-1", f"{BASE}/Patient/pat-000001", "zhangsan")  # SMART: a URL


def test_revoke_then_inactive_and_refused(client: TestClient, rsa_key: RSAKey) -> None:
    token = _token(client, rsa_key, INSURER, "system/Patient.rs").json()["access_token"]
    verifier = _verifier(client)
    assert verifier.verify("Bearer " + token).client_id == INSURER
    resp = _revoke(client, rsa_key, INSURER, token)
    assert resp.content == b""
    assert _introspect(client, rsa_key, INSURER, token) == {"active": False}
    with pytest.raises(BearerError) as info:
        verifier.verify("Bearer " + token)
    assert info.value.error == "invalid_token" and info.value.status == 401
    claims = verifier.verify_token(token)
    assert _store(_app(client)).is_revoked(claims.jti, None)
    _revoke(client, rsa_key, INSURER, token)  # revoking twice is fine


def test_other_clients_token_neither_introspected_nor_revoked(
        client: TestClient, rsa_key: RSAKey, ec_key: ECKey) -> None:
    token = _token(client, rsa_key, INSURER, "system/Patient.rs").json()["access_token"]
    assert _introspect(client, ec_key, LAB, token) == {"active": False}
    _revoke(client, ec_key, LAB, token)
    assert _introspect(client, rsa_key, INSURER, token)["active"] is True
    assert _verifier(client).verify("Bearer " + token).client_id == INSURER


@pytest.mark.parametrize("token", ["", "garbage", "a.b.c", "x" * 20_000, "日本.語.字"])
def test_unknown_tokens(client: TestClient, rsa_key: RSAKey, token: str) -> None:
    if token:
        _revoke(client, rsa_key, INSURER, token)
        assert _introspect(client, rsa_key, INSURER, token) == {"active": False}
    else:  # a blank token is an omitted one
        for path in ("/auth/revoke", "/auth/introspect"):
            resp = _post(client, path, {"token": "", **_auth(_assertion(rsa_key, INSURER))})
            _oauth_error(resp, "invalid_request")


def test_expired_and_foreign_tokens_inactive(client: TestClient, rsa_key: RSAKey) -> None:
    keyring = _app(client).state.keyring
    scope = parse_scopes("system/Patient.rs").scopes
    expired = issue_access_token(keyring, issuer=ISSUER, audience=BASE, client_id=INSURER,
                                 scope=scope, subject=INSURER, lifetime=300,
                                 now=time.time() - 400)
    elsewhere = issue_access_token(keyring, issuer=ISSUER, audience="https://other/fhir",
                                   client_id=INSURER, scope=scope, subject=INSURER, lifetime=300)
    for token in (expired, elsewhere):
        assert _introspect(client, rsa_key, INSURER, token) == {"active": False}


@pytest.mark.parametrize("path", ["/auth/revoke", "/auth/introspect"])
def test_revoke_and_introspect_need_client_authentication(client: TestClient, rsa_key: RSAKey,
                                                          path: str) -> None:
    token = _token(client, rsa_key, INSURER, "system/Patient.rs").json()["access_token"]
    _oauth_error(_post(client, path, {"token": token}), "invalid_request")
    stranger = RSAKey.generate_key(2048, parameters={"kid": "pingan-rsa-2026"})
    resp = _post(client, path, {"token": token, **_auth(_assertion(stranger, INSURER))})
    _oauth_error(resp, "invalid_client")
    form = {"token": token, **_auth(_assertion(rsa_key, INSURER))}
    assert _post(client, path, form).status_code == 200
    _oauth_error(_post(client, path, form), "invalid_client")  # the assertion is single use
    _oauth_error(_post(client, path, json.dumps(form), "application/json"), "invalid_request")
    # the one authenticated revocation went through; introspection changed nothing
    assert _introspect(client, rsa_key, INSURER, token)["active"] is (path == "/auth/introspect")


# -- never a 5xx ---------------------------------------------------------------------------------

_NAMES = st.sampled_from(["grant_type", "scope", "client_assertion_type", "client_assertion",
                          "client_id", "token", "token_type_hint", "x"])
_VALUES = st.one_of(st.text(max_size=40),
                    st.sampled_from(["client_credentials", JWT_BEARER_ASSERTION_TYPE,
                                     "system/Patient.rs", "a.b.c", "eyJhbGciOiJub25lIn0.e30.",
                                     "patient/*.rs", "%ff", "&&=="]))


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(["/auth/token", "/auth/revoke", "/auth/introspect"]),
       pairs=st.lists(st.tuples(_NAMES, _VALUES), max_size=6),
       raw=st.one_of(st.none(), st.binary(max_size=200)),
       ctype=st.sampled_from([FORM, FORM + "; charset=utf-8", "application/json", "",
                              "text/plain; charset=gbk"]),
       signed=st.booleans())
def test_random_forms_never_5xx(app_client: TestClient, rsa_key: RSAKey, path: str,
                                pairs: list[tuple[str, str]], raw: bytes | None,
                                ctype: str, signed: bool) -> None:
    if signed:  # a valid client assertion, so the random rest reaches grant/scope/token code
        pairs = [*pairs, *_auth(_assertion(rsa_key, INSURER)).items()]
    body = raw if raw is not None else urlencode(pairs).encode()
    resp = app_client.post(path, content=body,
                           headers={"Content-Type": ctype} if ctype else {})
    assert resp.status_code < 500, resp.text
    assert resp.status_code in (200, 400, 401)
    if resp.status_code != 200:
        assert resp.json()["error"] in ("invalid_request", "invalid_client", "invalid_scope",
                                        "unsupported_grant_type", "unauthorized_client")


# -- the store's revocation records ------------------------------------------------------------


def test_store_revocations(tmp_path: Path) -> None:
    now = [1_795_000_000.0]
    store = SqliteAuthStore(tmp_path / "auth.sqlite3", lambda: now[0])
    try:
        assert not store.is_revoked("t1", None) and not store.is_revoked("t1", "g1")
        store.revoke(jti="t1", until=now[0] + 300)
        store.revoke(jti="t1", until=now[0] + 100)  # idempotent; never shortens the record
        assert store.is_revoked("t1", None) and store.is_revoked("t1", "g9")
        assert not store.is_revoked("t2", None)
        store.revoke(grant_id="g1", until=now[0] + 3600)
        assert store.is_revoked("t2", "g1") and not store.is_revoked("g1", None)
        for bad in ({}, {"jti": "a", "grant_id": "b"}, {"jti": ""}):
            with pytest.raises(ValueError):
                store.revoke(until=now[0], **bad)
        assert store.purge(now[0] + 200, 900) == 0
        assert store.is_revoked("t1", None)
        assert store.purge(now[0] + 301, 900) == 1
        assert not store.is_revoked("t1", None) and store.is_revoked("t2", "g1")
    finally:
        store.close()
