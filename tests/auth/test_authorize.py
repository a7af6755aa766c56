"""SMART App Launch user flows through the real app: standalone patient launch, a practitioner's
standalone launch with the patient/encounter pickers, EHR launch from `/auth/ehr`; token
response fields; id_token and access token verified against `/auth/jwks`."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

from joserfc import jwt
from joserfc.jwk import KeySet

from tests.auth.authorize_flow import (
    APP_ID,
    CLINIC_ID,
    CLINIC_LAUNCH,
    CLINIC_REDIRECT,
    DOCTOR_PASSWORD,
    DOCTOR_USER,
    ISSUER,
    PATIENT_SCOPE,
    World,
    approval_page,
    approve,
    authorize_params,
    code_from,
    exchange,
    full_flow,
    parse_page,
    path_of,
    pkce,
    redirect_query,
    sign_in,
)
from tests.conftest import BASE


def _decode(w: World, token: str) -> dict[str, Any]:
    keys = KeySet.import_key_set(w.client.get("/auth/jwks").json())
    return dict(jwt.decode(token, keys, algorithms=["RS256", "ES384"]).claims)


def test_standalone_patient_launch_returns_every_token_field(w: World) -> None:
    code, verifier = full_flow(w.client, nonce="n-0d9c41")
    r = exchange(w.client, code, verifier)
    assert r.status_code == 200, r.text
    assert r.headers["cache-control"] == "no-store"
    assert r.headers["pragma"] == "no-cache"
    body = r.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 3600
    assert set(body["scope"].split()) == set(PATIENT_SCOPE.split())
    assert body["patient"] == "pat-000001"
    assert body["fhirUser"] == f"{BASE}/Patient/pat-000001"
    assert body["need_patient_banner"] is True
    assert body["smart_style_url"] == f"{ISSUER}/style.json"
    assert body["refresh_token"]
    assert "encounter" not in body

    access = _decode(w, body["access_token"])
    assert access["aud"] == BASE and access["iss"] == ISSUER
    assert access["client_id"] == APP_ID and access["patient"] == "pat-000001"
    assert access["gid"] and access["exp"] - access["iat"] == 3600

    id_token = _decode(w, body["id_token"])
    assert id_token["iss"] == ISSUER
    assert id_token["aud"] == APP_ID
    assert id_token["nonce"] == "n-0d9c41"
    assert id_token["fhirUser"] == f"{BASE}/Patient/pat-000001"
    assert id_token["sub"] == "Patient/pat-000001"
    assert id_token["at_hash"]

    style = w.client.get("/auth/style.json")
    assert style.status_code == 200 and style.json()["color_highlight"].startswith("#")


def test_no_refresh_token_without_offline_or_online_access(w: World) -> None:
    code, verifier = full_flow(w.client, scope="launch/patient patient/Patient.rs")
    body = exchange(w.client, code, verifier).json()
    assert "refresh_token" not in body and "id_token" not in body
    assert body["patient"] == "pat-000001"


def test_practitioner_standalone_launch_picks_patient_and_encounter(w: World) -> None:
    verifier, challenge = pkce()
    params = authorize_params(scope="launch/patient launch/encounter openid fhirUser "
                                    "patient/Patient.rs patient/Encounter.rs",
                              challenge=challenge)
    _, page = approval_page(w.client, params, DOCTOR_USER, DOCTOR_PASSWORD)
    assert set(page.selects["patient"]) == {"pat-000001", "pat-000002"}
    assert "enc-0002" in page.selects["encounter"]
    r = approve(w.client, page, extra={"patient": "pat-000002", "encounter": "enc-0002"})
    body = exchange(w.client, code_from(r), verifier).json()
    assert body["patient"] == "pat-000002"
    assert body["encounter"] == "enc-0002"
    assert body["fhirUser"] == f"{BASE}/Practitioner/prac-0001"
    assert body["need_patient_banner"] is True


def test_practitioner_finds_the_patient_by_name_pinyin_or_id_number(w: World) -> None:
    _, challenge = pkce()
    params = authorize_params(scope="launch/patient openid fhirUser patient/Patient.rs",
                              challenge=challenge)
    url, page = approval_page(w.client, params, DOCTOR_USER, DOCTOR_PASSWORD)
    assert page.value("q") == ""
    for query, found in (("李四", {"pat-000002"}), ("zhangsan", {"pat-000001"}),
                         ("110101199003074514", {"pat-000002"}), ("王五", set())):
        r = w.client.get(f"{url}&q={quote(query)}")
        assert r.status_code == 200, r.text
        assert set(parse_page(r.text).selects["patient"]) == found, query
    assert "没有找到匹配的患者" in w.client.get(f"{url}&q={quote('王五')}").text


def test_practitioner_cannot_pick_another_patients_encounter(w: World) -> None:
    _, challenge = pkce()
    params = authorize_params(scope="launch/patient launch/encounter patient/Patient.rs",
                              challenge=challenge)
    _, page = approval_page(w.client, params, DOCTOR_USER, DOCTOR_PASSWORD)
    r = approve(w.client, page, extra={"patient": "pat-000001", "encounter": "enc-0002"})
    assert r.status_code == 400
    assert "location" not in r.headers


def test_practitioner_cannot_pick_an_unknown_patient(w: World) -> None:
    _, challenge = pkce()
    params = authorize_params(scope="launch/patient patient/Patient.rs", challenge=challenge)
    _, page = approval_page(w.client, params, DOCTOR_USER, DOCTOR_PASSWORD)
    r = approve(w.client, page, extra={"patient": "pat-999999"})
    assert r.status_code == 400 and "location" not in r.headers


def _ehr_launch(w: World, patient: str = "pat-000001", encounter: str = "enc-0001") -> str:
    c = w.client
    r = c.get("/auth/ehr", follow_redirects=False)
    assert r.status_code == 303 and "/auth/login" in r.headers["location"]
    r = sign_in(c, path_of(r.headers["location"]), DOCTOR_USER, DOCTOR_PASSWORD)
    assert r.status_code == 303 and r.headers["location"].endswith("/auth/ehr")
    page = parse_page(c.get("/auth/ehr").text)
    assert page.selects["client_id"] == [CLINIC_ID]  # only apps with a launch_uri
    assert {"pat-000001", "pat-000002"} <= set(page.selects["patient"])
    assert "enc-0001" in page.selects["encounter"]
    assert any(b.get("type") == "submit" for b in page.buttons)
    r = c.post("/auth/ehr", data={"csrf": page.value("csrf"), "client_id": CLINIC_ID,
                                  "patient": patient, "encounter": encounter},
               follow_redirects=False)
    assert r.status_code == 303, r.text
    location = r.headers["location"]
    assert location.startswith(CLINIC_LAUNCH + "?")
    query = parse_qs(urlsplit(location).query)
    assert query["iss"] == [BASE]
    return query["launch"][0]


def test_ehr_launch_binds_patient_and_encounter(w: World) -> None:
    launch = _ehr_launch(w)
    verifier, challenge = pkce()
    params = authorize_params(client_id=CLINIC_ID, redirect_uri=CLINIC_REDIRECT,
                              scope="launch openid fhirUser user/*.rs offline_access",
                              challenge=challenge, launch=launch)
    _, page = approval_page(w.client, params, DOCTOR_USER, DOCTOR_PASSWORD)
    assert "patient" not in page.selects  # the context comes from the launch
    r = approve(w.client, page)
    code = code_from(r, CLINIC_REDIRECT)
    r = exchange(w.client, code, verifier, redirect_uri=CLINIC_REDIRECT,
                 auth=(CLINIC_ID, w.clinic_secret))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["patient"] == "pat-000001"
    assert body["encounter"] == "enc-0001"
    assert body["need_patient_banner"] is False
    assert body["fhirUser"] == f"{BASE}/Practitioner/prac-0001"
    assert _decode(w, body["access_token"])["encounter"] == "enc-0001"


def test_ehr_launch_id_is_single_use(w: World) -> None:
    launch = _ehr_launch(w)
    _, challenge = pkce()
    params = authorize_params(client_id=CLINIC_ID, redirect_uri=CLINIC_REDIRECT,
                              scope="launch user/*.rs", challenge=challenge, launch=launch)
    first = w.client.get("/auth/authorize", params=params, follow_redirects=False)
    assert first.headers["location"].startswith(f"{ISSUER}/approve?")
    second = w.client.get("/auth/authorize", params=params, follow_redirects=False)
    assert second.status_code == 303
    assert redirect_query(second)["error"] == ["invalid_request"]


def test_ehr_launch_of_another_app_is_refused(w: World) -> None:
    launch = _ehr_launch(w)
    _, challenge = pkce()
    r = w.client.get("/auth/authorize", params=authorize_params(
        scope="launch patient/*.rs", challenge=challenge, launch=launch),
        follow_redirects=False)
    assert redirect_query(r)["error"] == ["invalid_request"]


def test_patients_cannot_use_the_ehr_launcher(w: World) -> None:
    from tests.auth.authorize_flow import PATIENT_PASSWORD, PATIENT_USER
    r = sign_in(w.client, "/auth/login?next=ehr", PATIENT_USER, PATIENT_PASSWORD)
    assert r.status_code == 303
    assert w.client.get("/auth/ehr").status_code == 403


def test_deny_redirects_with_access_denied_and_state(w: World) -> None:
    from tests.auth.authorize_flow import PATIENT_PASSWORD, PATIENT_USER
    _, challenge = pkce()
    _, page = approval_page(w.client, authorize_params(challenge=challenge), PATIENT_USER,
                            PATIENT_PASSWORD)
    r = approve(w.client, page, decision="deny")
    assert r.status_code == 303
    query = redirect_query(r)
    assert query["error"] == ["access_denied"] and query["state"] == ["state-7f3a"]
    assert "code" not in query


def test_authorize_post_works_like_get(w: World) -> None:
    _, challenge = pkce()
    r = w.client.post("/auth/authorize", data=authorize_params(challenge=challenge),
                      headers={"origin": "https://jiankang.example.cn"},
                      follow_redirects=False)
    assert r.status_code == 303
    assert r.headers["location"].startswith(f"{ISSUER}/approve?req=")


def test_manage_lists_and_revokes_grants(w: World) -> None:
    code, verifier = full_flow(w.client)
    body = exchange(w.client, code, verifier).json()
    page = parse_page(w.client.get("/auth/manage").text)
    grant_id = page.value("grant_id")
    assert grant_id == _decode(w, body["access_token"])["gid"]
    r = w.client.post("/auth/manage", data={"csrf": page.value("csrf"), "grant_id": grant_id},
                      follow_redirects=False)
    assert r.status_code == 303
    refresh = w.client.post("/auth/token", data={"grant_type": "refresh_token",
                                                 "refresh_token": body["refresh_token"],
                                                 "client_id": APP_ID})
    assert refresh.status_code == 400 and refresh.json()["error"] == "invalid_grant"
    assert w.store.is_revoked("any-jti", grant_id)


def test_issued_access_token_reads_the_patients_record(w: World) -> None:
    code, verifier = full_flow(w.client)
    token = exchange(w.client, code, verifier).json()["access_token"]
    bearer = {"authorization": f"Bearer {token}"}
    r = w.client.get("/fhir/Patient/pat-000001", headers=bearer)
    assert r.status_code == 200, r.text
    assert w.client.get("/fhir/Patient/pat-000001").status_code == 401
    # another patient's record is not part of the grant
    assert w.client.get("/fhir/Patient/pat-000002", headers=bearer).status_code in (403, 404)


def test_a_version_1_auth_store_gains_the_user_flow_tables(tmp_path: Path) -> None:
    import sqlite3

    from app.auth.sqlite_store import SqliteAuthStore
    path = tmp_path / "auth.sqlite3"
    with sqlite3.connect(path) as db:  # what a version-1 file holds
        db.executescript("CREATE TABLE client (client_id TEXT PRIMARY KEY, kind TEXT, "
                         "secret_hash TEXT, redirect_uris TEXT, launch_uri TEXT, jwks TEXT, "
                         "jwks_uri TEXT, scope TEXT, grant_types TEXT, name_zh TEXT, "
                         "name_en TEXT, created REAL); PRAGMA user_version=1;")
    store = SqliteAuthStore(path)
    try:
        assert store.get_session("x") is None and store.get_grant("g") is None
        assert store.consume_code("h", 0.0) == (None, False)
        assert len(store.server_secret()) == 32
        assert store.server_secret() == store.server_secret()
    finally:
        store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 2


def test_asymmetric_client_launch_with_private_key_jwt(w: World) -> None:
    import time
    import uuid

    from joserfc.jwk import RSAKey

    from app.auth.clients import register_client
    from app.auth.rfc7523_backend import JWT_BEARER_ASSERTION_TYPE
    key = RSAKey.generate_key(2048, parameters={"kid": "yingxiang-2026"})
    redirect = "https://yingxiang.example.cn/cb"  # 影像云 (imaging viewer)
    register_client(w.store, name="影像云", kind="asymmetric", client_id="yingxiang-yun",
                    redirect_uris=[redirect], grant_types=["authorization_code"],
                    jwks={"keys": [key.as_dict(private=False)]})
    code, verifier = full_flow(w.client, client_id="yingxiang-yun", redirect_uri=redirect)
    now = int(time.time())
    assertion = jwt.encode({"alg": "RS384", "kid": "yingxiang-2026", "typ": "JWT"},
                           {"iss": "yingxiang-yun", "sub": "yingxiang-yun",
                            "aud": f"{ISSUER}/token", "exp": now + 240, "iat": now,
                            "jti": str(uuid.uuid4())}, key, algorithms=["RS384"])
    unauthenticated = exchange(w.client, code, verifier, client_id="yingxiang-yun",
                               redirect_uri=redirect)
    assert unauthenticated.status_code == 401
    code, verifier = full_flow(w.client, client_id="yingxiang-yun", redirect_uri=redirect)
    r = exchange(w.client, code, verifier, client_id="yingxiang-yun", redirect_uri=redirect,
                 client_assertion_type=JWT_BEARER_ASSERTION_TYPE, client_assertion=assertion)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["patient"] == "pat-000001"
    assert "refresh_token" not in body  # not registered for refresh_token
