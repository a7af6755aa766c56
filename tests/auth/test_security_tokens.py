"""Security suite, tokens: every FHIR request is held to a valid SMART access token of ours.

A real server (`create_app` with `auth="smart"`, its own keyring and auth store) behind a
TestClient, real RS256 JWTs from the app's keyring (`issue_access_token`), and tokens forged by
hand the way an attacker would: alg=none, HS256 keyed with our public key, a foreign key, wrong
`iss`/`aud`, expired, not yet valid, an id_token, a revoked token (also across two workers of a
live server).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from joserfc.jwk import RSAKey

from app.auth.bearer import issue_access_token
from app.auth.keys import Keyring
from app.auth.routes_token import AuthUrls
from app.auth.scopes import parse_scopes
from app.auth.sqlite_store import REVOCATION_RECHECK_SECONDS, SqliteAuthStore
from app.server import create_app
from tests.conftest import BASE, FHIR_JSON, make_settings
from tests.live_server import LiveServer

ISSUER = AuthUrls.from_base_url(BASE).issuer
CHALLENGE = 'Bearer realm="yilian"'


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class Smart:
    """A SMART-enforcing server in a TestClient, and a token mint on its keyring."""

    def __init__(self, client: TestClient) -> None:
        self.client = client
        app: Any = client.app
        self.app = app
        self.keyring: Keyring = app.state.keyring

    def token(self, scope: str, *, patient: str | None = None, fhir_user: str | None = None,
              subject: str | None = None, client_id: str = "jiankang-app",
              grant_id: str | None = None, lifetime: int = 3600,
              audience: str = BASE, issuer: str = ISSUER) -> str:
        parsed = parse_scopes(scope)
        assert not parsed.invalid, parsed.invalid
        return issue_access_token(
            self.keyring, issuer=issuer, audience=audience, client_id=client_id,
            scope=parsed.scopes, subject=subject or fhir_user or client_id, fhir_user=fhir_user,
            patient=patient, lifetime=lifetime, grant_id=grant_id)

    def headers(self, scope: str, **kw: Any) -> dict[str, str]:
        return {**bearer(self.token(scope, **kw)), **FHIR_JSON}

    def revoke(self, *, jti: str | None = None, grant_id: str | None = None) -> None:
        self.app.state.auth_store.revoke(jti=jti, grant_id=grant_id, until=time.time() + 3600)


@pytest.fixture
def smart(tmp_path: Path) -> Iterator[Smart]:
    app = create_app(make_settings(tmp_path, auth="smart"))
    with TestClient(app) as client:
        yield Smart(client)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_json(value: dict[str, Any]) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode())


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    out: dict[str, Any] = {
        "iss": ISSUER, "aud": BASE, "sub": "jiankang-app", "client_id": "jiankang-app",
        "scope": "system/*.cruds", "iat": now, "exp": now + 300, "jti": "forged-jti-0001"}
    out.update(overrides)
    return out


def assert_invalid_token(r: httpx.Response, description: str | None = None) -> None:
    assert r.status_code == 401, r.text
    challenge = r.headers["www-authenticate"]
    assert challenge.startswith('Bearer realm="yilian", error="invalid_token"'), challenge
    if description is not None:
        assert f'error_description="{description}"' in challenge
    body = r.json()
    assert body["resourceType"] == "OperationOutcome"


def test_valid_token_reads_and_no_token_gets_401(smart: Smart) -> None:
    r = smart.client.get("/fhir/Patient", headers=bearer(smart.token("system/Patient.rs")))
    assert r.status_code == 200, r.text
    r = smart.client.get("/fhir/Patient")
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == CHALLENGE
    assert r.json()["resourceType"] == "OperationOutcome"


def test_alg_none_token_is_rejected(smart: Smart) -> None:
    kid = smart.keyring.keys()[0].kid
    for alg in ("none", "None"):
        token = f"{b64url_json({'alg': alg, 'kid': kid, 'typ': 'at+jwt'})}." \
                f"{b64url_json(claims())}."
        assert_invalid_token(smart.client.get("/fhir/Patient", headers=bearer(token)))
        assert_invalid_token(smart.client.get("/fhir/Patient/x", headers=bearer(token)))


def test_hs256_token_signed_with_our_public_key_is_rejected(smart: Smart) -> None:
    [public] = [k for k in smart.keyring.jwks()["keys"] if k["alg"] == "RS256"]
    secret = RSAKey.import_key(public).as_pem(private=False)
    signing_input = (f"{b64url_json({'alg': 'HS256', 'kid': public['kid'], 'typ': 'at+jwt'})}."
                     f"{b64url_json(claims())}")
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    token = f"{signing_input}.{b64url(mac)}"
    assert_invalid_token(smart.client.get("/fhir/Patient", headers=bearer(token)))


def test_unknown_kid_is_rejected(smart: Smart, tmp_path: Path) -> None:
    other = Keyring(tmp_path / "another-hospital-keys")
    other.ensure()
    token = issue_access_token(other, issuer=ISSUER, audience=BASE, client_id="x",
                               scope=parse_scopes("system/*.rs").scopes, subject="x")
    r = smart.client.get("/fhir/Patient", headers=bearer(token))
    assert_invalid_token(r)
    assert other.keys()[0].kid not in r.headers["www-authenticate"] + r.text


def test_expired_token_gets_401_invalid_token(smart: Smart) -> None:
    now = int(time.time())
    token = smart.keyring.sign(claims(iat=now - 4000, exp=now - 400), typ="at+jwt")
    assert_invalid_token(smart.client.get("/fhir/Patient", headers=bearer(token)),
                         "The access token expired")


def test_token_before_nbf_is_rejected(smart: Smart) -> None:
    now = int(time.time())
    token = smart.keyring.sign(claims(nbf=now + 600, exp=now + 900), typ="at+jwt")
    assert_invalid_token(smart.client.get("/fhir/Patient", headers=bearer(token)),
                         "The access token is not valid yet")


def test_token_for_another_audience_is_rejected(smart: Smart) -> None:
    token = smart.token("system/*.rs", audience="https://other-hospital.example.cn/fhir")
    assert_invalid_token(smart.client.get("/fhir/Patient", headers=bearer(token)),
                         "The access token is not meant for this server")


def test_token_from_another_issuer_is_rejected(smart: Smart) -> None:
    token = smart.token("system/*.rs", issuer="https://evil.example.com/auth")
    assert_invalid_token(smart.client.get("/fhir/Patient", headers=bearer(token)),
                         "The access token was not issued by this server")


def test_id_token_is_not_an_access_token(smart: Smart) -> None:
    id_token = smart.keyring.sign(claims(nonce="n-1"), typ="JWT")
    assert_invalid_token(smart.client.get("/fhir/Patient", headers=bearer(id_token)),
                         "The token is not an access token")


def test_other_schemes_and_garbage_are_refused(smart: Smart) -> None:
    r = smart.client.get("/fhir/Patient", headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert r.status_code == 401 and r.headers["www-authenticate"] == CHALLENGE
    r = smart.client.get("/fhir/Patient", headers={"Authorization": "Bearer not.a.jwt"})
    assert_invalid_token(r)


def test_revoked_access_token_gets_401(smart: Smart) -> None:
    token = smart.token("system/*.rs", grant_id="grant-1")
    assert smart.client.get("/fhir/Patient", headers=bearer(token)).status_code == 200
    other = smart.token("system/*.rs", grant_id="grant-2")
    _, payload, _ = token.split(".")
    jti = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["jti"]
    smart.revoke(jti=jti)
    assert_invalid_token(smart.client.get("/fhir/Patient", headers=bearer(token)),
                         "The access token has been revoked")
    assert smart.client.get("/fhir/Patient/x", headers=bearer(token)).status_code == 401
    assert smart.client.get("/fhir/Patient", headers=bearer(other)).status_code == 200
    smart.revoke(grant_id="grant-2")
    assert_invalid_token(smart.client.get("/fhir/Patient", headers=bearer(other)))


def test_revoked_access_token_gets_401_in_every_worker(tmp_path: Path) -> None:
    with LiveServer(tmp_path / "var", workers=2, env={"YILIAN_AUTH": "smart"}) as server:
        keyring = Keyring(tmp_path / "var" / "keys")
        token = issue_access_token(
            keyring, issuer=AuthUrls.from_base_url(server.base_url).issuer,
            audience=server.base_url, client_id="insurer", subject="insurer",
            scope=parse_scopes("system/Patient.rs").scopes, grant_id="grant-live")
        with server.client() as c:
            # Several connections so both workers verify (and cache) the token.
            for _ in range(8):
                with server.client() as fresh:
                    assert fresh.get("Patient", headers=bearer(token)).status_code == 200
            assert c.get("Patient").status_code == 401
        store = SqliteAuthStore.in_var_dir(tmp_path / "var")
        try:
            store.revoke(grant_id="grant-live", until=time.time() + 3600)
        finally:
            store.close()
        # another process's revocation holds everywhere within REVOCATION_RECHECK_SECONDS
        time.sleep(REVOCATION_RECHECK_SECONDS)
        for _ in range(8):
            with server.client() as fresh:
                r = fresh.get("Patient", headers=bearer(token))
                assert r.status_code == 401, r.text
                assert 'error="invalid_token"' in r.headers["www-authenticate"]


def _routes() -> list[tuple[str, str, bytes | None]]:
    """(method, path, body) of every kind of FHIR interaction: the routed endpoints (walked from
    the OpenAPI schema), the FastRead path, bundles and operations."""
    resource = json.dumps({"resourceType": "Patient", "id": "p1"}).encode()
    bundle = json.dumps({"resourceType": "Bundle", "type": "batch", "entry": []}).encode()
    return [
        ("GET", "/fhir/Patient/p1", None),  # FastRead
        ("GET", "/fhir/Patient", None),
        ("POST", "/fhir/Patient/_search", b""),
        ("GET", "/fhir?_type=Patient", None),
        ("POST", "/fhir/_search", b""),
        ("POST", "/fhir/Patient", resource),
        ("PUT", "/fhir/Patient/p1", resource),
        ("PUT", "/fhir/Patient?identifier=x", resource),
        ("PATCH", "/fhir/Patient/p1", b"[]"),
        ("PATCH", "/fhir/Patient?identifier=x", b"[]"),
        ("DELETE", "/fhir/Patient/p1", None),
        ("DELETE", "/fhir/Patient?identifier=x", None),
        ("GET", "/fhir/_history", None),
        ("GET", "/fhir/Patient/_history", None),
        ("GET", "/fhir/Patient/p1/_history", None),
        ("GET", "/fhir/Patient/p1/_history/1", None),
        ("GET", "/fhir/Patient/p1/_history/1/$verify", None),
        ("GET", "/fhir/AuditEvent/a1/$verify", None),
        ("POST", "/fhir", bundle),
        ("GET", "/fhir/Patient/p1/$everything", None),
        ("POST", "/fhir/Patient/$validate", resource),
        ("GET", "/fhir/Patient/p1/$validate", None),
        ("POST", "/fhir/Patient/p1/$validate", resource),
        ("POST", "/fhir/$import-cn", json.dumps({"resourceType": "Parameters"}).encode()),
    ]


def test_every_fhir_route_without_token_gets_401_with_www_authenticate(smart: Smart) -> None:
    schema = smart.client.get("/openapi.json").json()
    fhir_paths = {p for p in schema["paths"] if p.startswith("/fhir")}
    public = {"/fhir/metadata"} | {p for p in fhir_paths if "/.well-known/" in p}
    walked = [(m.upper(), p) for p in fhir_paths - public for m in schema["paths"][p]]
    # every routed endpoint of the schema is exercised by a concrete request below
    covered = {(m, _template(p)) for m, p, _ in _routes()}
    for method, path in walked:
        assert any(m == method and _matches(path, t) for m, t in covered), (method, path)
    for method, path, body in _routes():
        headers = {"Content-Type": "application/json-patch+json"} if method == "PATCH" else \
            FHIR_JSON
        if path.endswith("/_search"):
            headers = {"Content-Type": "application/x-www-form-urlencoded"}
        r = smart.client.request(method, path, content=body, headers=headers)
        assert r.status_code == 401, (method, path, r.status_code, r.text)
        assert r.headers.get("www-authenticate") == CHALLENGE, (method, path)
        assert r.json()["resourceType"] == "OperationOutcome"


def _template(path: str) -> str:
    return path.split("?")[0]


def _matches(template: str, concrete: str) -> bool:
    t, c = template.strip("/").split("/"), concrete.strip("/").split("/")
    if len(t) != len(c):
        return False
    return all(a == b or a.startswith("{") for a, b in zip(t, c, strict=True))


def test_metadata_and_discovery_are_public(smart: Smart) -> None:
    r = smart.client.get("/fhir/metadata")
    assert r.status_code == 200
    assert r.json()["resourceType"] == "CapabilityStatement"
    r = smart.client.get("/auth/jwks")
    assert r.status_code == 200
    r = smart.client.get("/fhir/.well-known/smart-configuration")
    assert r.status_code in (200, 404)  # served once discovery is wired; never 401
    assert r.status_code != 401


def test_auth_off_still_serves_without_token(tmp_path: Path) -> None:
    app = create_app(make_settings(tmp_path))  # auth="off"
    with TestClient(app) as client:
        assert client.get("/fhir/Patient").status_code == 200


def test_dev_flag_is_refused_off_loopback(tmp_path: Path) -> None:
    from app.auth.authorizer import check_dev_flag
    assert check_dev_flag(make_settings(tmp_path, auth="smart", host="0.0.0.0")) is None
    assert check_dev_flag(make_settings(tmp_path, auth="off", host="127.0.0.1"))
    assert check_dev_flag(make_settings(tmp_path, auth="off", host="::1"))
    with pytest.raises(SystemExit):
        check_dev_flag(make_settings(tmp_path, auth="off", host="0.0.0.0"))
    with pytest.raises(SystemExit):
        check_dev_flag(make_settings(tmp_path, auth="off", host="10.1.2.3"))
