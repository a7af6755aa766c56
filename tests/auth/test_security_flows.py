"""Security suite, authorization server side (issue 4 "Proof"): redirect-URI tricks, PKCE
variants, code replay and expiry, refresh-token binding and scope escalation, CSRF on the
sign-in and approval forms, `aud` on the authorization request, sign-in throttling and
indistinguishable failures. Each attack must fail safe: no code, no token, no redirect to an
unregistered place."""

from __future__ import annotations

import sqlite3
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from fastapi.testclient import TestClient

from app.auth.clients import register_client
from app.auth.sqlite_store import auth_db_path
from tests.auth.authorize_flow import (
    APP_ID,
    APP_REDIRECT,
    CLINIC_ID,
    CLINIC_REDIRECT,
    DOCTOR_PASSWORD,
    DOCTOR_USER,
    OTHER_PATIENT_PASSWORD,
    OTHER_PATIENT_USER,
    PATIENT_PASSWORD,
    PATIENT_USER,
    TOKEN,
    World,
    approval_page,
    approve,
    authorize_params,
    code_from,
    exchange,
    flow_tokens,
    full_flow,
    parse_page,
    pkce,
    redirect_query,
    refresh_with,
    sign_in,
    start,
)


def _no_code_page(r: Any) -> None:
    """An error page: no redirect at all, nothing that looks like a code."""
    assert r.status_code == 400, r.text
    assert "location" not in r.headers
    assert r.headers["content-type"].startswith("text/html")
    assert "code=" not in r.text


# -- redirect URIs -------------------------------------------------------------------------

@pytest.mark.parametrize("redirect_uri", [
    "https://jiankang.example.cn/call",  # prefix of the registered URI
    "https://jiankang.example.cn/callbackx",  # registered URI as a prefix
    "https://jiankang.example.cn/callback/evil",  # extra path
    "https://jiankang.example.cn/callback/../evil",  # dot segments
    "https://jiankang.example.cn/evil/../callback",
    "https://jiankang.example.cn/callback?next=https://evil.example",  # extra query
    "https://jiankang.example.cn:8443/callback",  # other port
    "https://jiankang.example.cn:443/callback",  # same port, spelled out
    "https://JIANKANG.example.cn/callback",  # case of the host
    "https://jiankang.example.cn/Callback",  # case of the path
    "https://jiankang.example.cn/callback#frag",  # fragment
    "https://jiankang.example.cn@evil.example/callback",  # userinfo trick
    "https://evil.example/callback",
    "http://jiankang.example.cn/callback",  # scheme downgrade
    "https://jiankang.example.cn/callback/",  # trailing slash
    "https://jiankang.example.cn/callback%2F..%2Fevil",
])
def test_redirect_uri_must_match_exactly(w: World, redirect_uri: str) -> None:
    _, challenge = pkce()
    r = start(w.client, authorize_params(redirect_uri=redirect_uri, challenge=challenge))
    _no_code_page(r)


def test_missing_redirect_uri_with_several_registered_is_an_error_page(w: World) -> None:
    register_client(w.store, name="双回调应用", kind="public", client_id="two-callbacks",
                    redirect_uris=["https://a.example.cn/cb", "https://b.example.cn/cb"])
    _, challenge = pkce()
    _no_code_page(start(w.client, authorize_params(client_id="two-callbacks",
                                                   redirect_uri=None, challenge=challenge)))


def test_missing_redirect_uri_with_one_registered_uses_it(w: World) -> None:
    verifier, challenge = pkce()
    _, page = approval_page(w.client, authorize_params(redirect_uri=None, challenge=challenge),
                            PATIENT_USER, PATIENT_PASSWORD)
    code = code_from(approve(w.client, page))
    r = w.client.post(TOKEN, data={"grant_type": "authorization_code", "code": code,
                                   "code_verifier": verifier, "client_id": APP_ID})
    assert r.status_code == 200, r.text


def test_bad_redirect_shows_an_error_page_and_never_redirects(w: World) -> None:
    _, challenge = pkce()
    for params in (authorize_params(client_id="unknown-app", challenge=challenge),
                   authorize_params(client_id="", challenge=challenge),
                   authorize_params(redirect_uri="https://evil.example/cb", challenge=challenge,
                                    response_type="token"),
                   authorize_params(redirect_uri="https://evil.example/cb", state=None,
                                    challenge=None)):
        _no_code_page(start(w.client, params))
    # a repeated parameter is ambiguous: error page, no redirect
    r = w.client.get("/auth/authorize?" + "&".join([
        "response_type=code", f"client_id={APP_ID}", "redirect_uri=" + APP_REDIRECT,
        "redirect_uri=https://evil.example/cb", "state=s", "aud=http://testserver/fhir"]),
        follow_redirects=False)
    _no_code_page(r)


def test_code_is_bound_to_its_redirect_uri_and_client(w: World) -> None:
    code, verifier = full_flow(w.client)
    other_redirect = exchange(w.client, code, verifier,
                              redirect_uri="https://jiankang.example.cn/other")
    assert other_redirect.json()["error"] == "invalid_grant"
    code, verifier = full_flow(w.client)
    other_client = exchange(w.client, code, verifier, auth=(CLINIC_ID, w.clinic_secret))
    assert other_client.json()["error"] == "invalid_grant"


# -- aud, state, response type, scopes -------------------------------------------------------

@pytest.mark.parametrize("aud", [None, "http://testserver/fhir/Patient",
                                 "https://evil.example/fhir", "http://testserver/auth"])
def test_wrong_aud_issues_no_code(w: World, aud: str | None) -> None:
    _, challenge = pkce()
    _no_code_page(start(w.client, authorize_params(aud=aud, challenge=challenge)))


def test_state_is_required(w: World) -> None:
    _, challenge = pkce()
    r = start(w.client, authorize_params(state=None, challenge=challenge))
    assert r.status_code == 303
    assert redirect_query(r)["error"] == ["invalid_request"]
    assert "code" not in redirect_query(r)


def test_only_response_type_code(w: World) -> None:
    _, challenge = pkce()
    r = start(w.client, authorize_params(challenge=challenge, response_type="token"))
    assert redirect_query(r)["error"] == ["unsupported_response_type"]
    assert redirect_query(r)["state"] == ["state-7f3a"]


def test_system_scopes_are_never_offered_in_user_flows(w: World) -> None:
    _, challenge = pkce()
    _, page = approval_page(w.client, authorize_params(
        scope="launch/patient system/Patient.rs system/*.cruds patient/Patient.rs",
        challenge=challenge), PATIENT_USER, PATIENT_PASSWORD)
    assert [b["value"] for b in page.checkboxes()] == ["patient/Patient.rs"]
    verifier_code = approve(w.client, page, scopes=["patient/Patient.rs", "system/Patient.rs"])
    assert "system/" not in str(redirect_query(verifier_code))


# -- PKCE ----------------------------------------------------------------------------------

def _pkce_refused(r: Any) -> None:
    assert r.status_code == 303
    query = redirect_query(r)
    assert query["error"] == ["invalid_request"], query
    assert "code" not in query and query["state"] == ["state-7f3a"]


def test_missing_code_challenge_is_refused(w: World) -> None:
    _pkce_refused(start(w.client, authorize_params(challenge=None, method=None)))
    _pkce_refused(start(w.client, authorize_params(challenge=None)))


def test_plain_method_is_refused(w: World) -> None:
    verifier, _ = pkce()
    _pkce_refused(start(w.client, authorize_params(challenge=verifier, method="plain")))


def test_missing_method_is_refused(w: World) -> None:
    _, challenge = pkce()
    _pkce_refused(start(w.client, authorize_params(challenge=challenge, method=None)))


def test_malformed_challenge_is_refused(w: World) -> None:
    _pkce_refused(start(w.client, authorize_params(challenge="short", method="S256")))


@pytest.mark.parametrize("verifier", [None, "", "wrong-" + "x" * 50, "短"])
def test_missing_blank_or_wrong_verifier_fails(w: World, verifier: str | None) -> None:
    code, _ = full_flow(w.client)
    r = exchange(w.client, code, verifier)
    assert r.status_code == 400
    assert r.json()["error"] in ("invalid_request", "invalid_grant")
    assert "access_token" not in r.json()
    assert r.headers["cache-control"] == "no-store"


def test_verifier_equal_to_challenge_fails(w: World) -> None:
    _, challenge = pkce()
    params = authorize_params(challenge=challenge)
    _, page = approval_page(w.client, params, PATIENT_USER, PATIENT_PASSWORD)
    code = code_from(approve(w.client, page))
    r = exchange(w.client, code, challenge)
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"


def test_confidential_client_needs_pkce_too(w: World) -> None:
    r = start(w.client, authorize_params(client_id=CLINIC_ID, redirect_uri=CLINIC_REDIRECT,
                                         challenge=None, method=None))
    _pkce_refused(r)
    code, _ = full_flow(w.client, client_id=CLINIC_ID, redirect_uri=CLINIC_REDIRECT)
    r = exchange(w.client, code, None, redirect_uri=CLINIC_REDIRECT,
                 auth=(CLINIC_ID, w.clinic_secret))
    assert r.status_code == 400 and r.json()["error"] == "invalid_request"


# -- codes ---------------------------------------------------------------------------------

def test_second_use_of_a_code_fails_and_revokes_its_tokens(w: World) -> None:
    code, verifier = full_flow(w.client)
    first = exchange(w.client, code, verifier)
    assert first.status_code == 200
    second = exchange(w.client, code, verifier)
    assert second.status_code == 400 and second.json()["error"] == "invalid_grant"
    body = first.json()
    claims = w.client.app.state.keyring.verify(body["access_token"])  # type: ignore[attr-defined]
    assert w.store.is_revoked(claims["jti"], claims["gid"])
    assert refresh_with(w.client, body["refresh_token"]).json()["error"] == "invalid_grant"


def test_expired_code_fails(w: World) -> None:
    code, verifier = full_flow(w.client)
    with sqlite3.connect(auth_db_path(w.tmp_path / "var")) as db:
        db.execute("UPDATE code SET expires = expires - 3600")
    r = exchange(w.client, code, verifier)
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"


def test_unknown_code_fails(w: World) -> None:
    verifier, _ = pkce()
    r = exchange(w.client, "not-a-code", verifier)
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"


# -- refresh tokens ------------------------------------------------------------------------

def test_refresh_token_is_bound_to_its_client(w: World) -> None:
    first = flow_tokens(w)
    r = w.client.post(TOKEN, data={"grant_type": "refresh_token",
                                   "refresh_token": first["refresh_token"]},
                      auth=(CLINIC_ID, w.clinic_secret))
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"
    # not burnt by the attempt: its own client still refreshes
    assert refresh_with(w.client, first["refresh_token"]).status_code == 200


def test_refresh_cannot_widen_scope(w: World) -> None:
    first = flow_tokens(w, scope="launch/patient offline_access patient/Observation.rs")
    for wider in ("launch/patient offline_access patient/Observation.rs patient/Condition.rs",
                  "patient/Observation.cruds", "patient/*.rs", "user/Observation.rs",
                  "system/Observation.rs"):
        r = refresh_with(w.client, first["refresh_token"], scope=wider)
        assert r.status_code == 400, wider
        assert r.json()["error"] == "invalid_scope"
    assert refresh_with(w.client, first["refresh_token"]).status_code == 200


def test_refresh_can_narrow_scope(w: World) -> None:
    first = flow_tokens(w)
    r = refresh_with(w.client, first["refresh_token"], scope="patient/Observation.r")
    assert r.status_code == 200, r.text
    assert r.json()["scope"] == "patient/Observation.r"
    # the grant keeps its scope: a later refresh without `scope` gets all of it back
    again = refresh_with(w.client, r.json()["refresh_token"])
    assert again.json()["scope"] == first["scope"]



# -- CSRF ----------------------------------------------------------------------------------

def _parked(w: World) -> tuple[str, Any]:
    _, challenge = pkce()
    return approval_page(w.client, authorize_params(challenge=challenge), PATIENT_USER,
                         PATIENT_PASSWORD)


def _post_approval(c: TestClient, form: list[tuple[str, str]],
                   headers: dict[str, str] | None = None) -> Any:
    from urllib.parse import urlencode
    return c.post("/auth/approve", content=urlencode(form),
                  headers={"content-type": "application/x-www-form-urlencoded",
                           **(headers or {})}, follow_redirects=False)


def test_approval_without_csrf_token_issues_no_code(w: World) -> None:
    _, page = _parked(w)
    r = _post_approval(w.client, [("req", page.value("req")), ("decision", "approve"),
                                  ("scope", "patient/Patient.rs")])
    assert r.status_code == 403 and "location" not in r.headers
    r = _post_approval(w.client, [("req", page.value("req")), ("decision", "approve"),
                                  ("csrf", "A" * 43), ("scope", "patient/Patient.rs")])
    assert r.status_code == 403 and "location" not in r.headers
    # the real form still works afterwards
    assert code_from(approve(w.client, page))


def test_csrf_token_of_another_session_is_refused(w: World) -> None:
    _, victim_page = _parked(w)
    attacker = TestClient(w.client.app)
    _, challenge = pkce()
    _, attacker_page = approval_page(attacker, authorize_params(challenge=challenge),
                                     OTHER_PATIENT_USER, OTHER_PATIENT_PASSWORD)
    # the attacker's token with the victim's request, posted from the victim's browser
    r = _post_approval(w.client, [("csrf", attacker_page.value("csrf")),
                                  ("req", victim_page.value("req")), ("decision", "approve"),
                                  ("scope", "patient/Patient.rs")])
    assert r.status_code == 403 and "location" not in r.headers
    # the victim's token for the attacker's request is useless too
    r = _post_approval(w.client, [("csrf", victim_page.value("csrf")),
                                  ("req", attacker_page.value("req")),
                                  ("decision", "approve")])
    assert r.status_code == 403 and "location" not in r.headers


def test_cross_origin_approval_post_is_refused(w: World) -> None:
    _, page = _parked(w)
    for origin in ("https://evil.example", "null", "http://testserver:8080"):
        r = approve(w.client, page, headers={"origin": origin})
        assert r.status_code == 403 and "location" not in r.headers, origin
    r = approve(w.client, page, headers={"origin": "http://testserver"})
    assert code_from(r)


def test_approval_needs_a_session(w: World) -> None:
    _, page = _parked(w)
    stranger = TestClient(w.client.app)
    r = _post_approval(stranger, [("csrf", page.value("csrf")), ("req", page.value("req")),
                                  ("decision", "approve")])
    assert r.status_code == 403 and "location" not in r.headers


def test_login_form_requires_csrf(w: World) -> None:
    c = w.client
    page = parse_page(c.get("/auth/login").text)
    no_token = c.post("/auth/login", data={"username": PATIENT_USER,
                                           "password": PATIENT_PASSWORD},
                      follow_redirects=False)
    assert no_token.status_code == 403 and "yilian_session" not in no_token.headers.get(
        "set-cookie", "")
    # the token without its pre-session cookie (a cross-site form can't send that cookie
    # with its own token)
    fresh = TestClient(c.app)
    r = fresh.post("/auth/login", data={"csrf": page.value("csrf"), "username": PATIENT_USER,
                                        "password": PATIENT_PASSWORD}, follow_redirects=False)
    assert r.status_code == 403
    cross = c.post("/auth/login", data={"csrf": page.value("csrf"), "username": PATIENT_USER,
                                        "password": PATIENT_PASSWORD},
                   headers={"origin": "https://evil.example"}, follow_redirects=False)
    assert cross.status_code == 403
    ok = c.post("/auth/login", data={"csrf": page.value("csrf"), "username": PATIENT_USER,
                                     "password": PATIENT_PASSWORD}, follow_redirects=False)
    assert ok.status_code == 303


def test_ehr_launcher_post_requires_csrf(w: World) -> None:
    assert sign_in(w.client, "/auth/login?next=ehr", DOCTOR_USER,
                   DOCTOR_PASSWORD).status_code == 303
    r = w.client.post("/auth/ehr", data={"client_id": CLINIC_ID, "patient": "pat-000001"},
                      follow_redirects=False)
    assert r.status_code == 403 and "location" not in r.headers


def test_a_launch_belongs_to_the_practitioner_who_started_it(w: World) -> None:
    assert sign_in(w.client, "/auth/login?next=ehr", DOCTOR_USER,
                   DOCTOR_PASSWORD).status_code == 303
    page = parse_page(w.client.get("/auth/ehr").text)
    r = w.client.post("/auth/ehr", data={"csrf": page.value("csrf"), "client_id": CLINIC_ID,
                                         "patient": "pat-000002"}, follow_redirects=False)
    launch = parse_qs(urlsplit(r.headers["location"]).query)["launch"][0]
    other = TestClient(w.client.app)
    _, challenge = pkce()
    r = start(other, authorize_params(client_id=CLINIC_ID, redirect_uri=CLINIC_REDIRECT,
                                      scope="launch user/*.rs", challenge=challenge,
                                      launch=launch))
    login = other.get(r.headers["location"].removeprefix("http://testserver"),
                      follow_redirects=False)
    r = sign_in(other, login.headers["location"].removeprefix("http://testserver"),
                PATIENT_USER, PATIENT_PASSWORD)
    r = other.get(r.headers["location"].removeprefix("http://testserver"))
    assert r.status_code == 403
    assert "decision" not in r.text


# -- sign-in -------------------------------------------------------------------------------

def test_unknown_user_and_wrong_password_look_the_same(w: World) -> None:
    c = w.client
    page = parse_page(c.get("/auth/login").text)

    def attempt(username: str, password: str) -> Any:
        return c.post("/auth/login", data={"csrf": page.value("csrf"), "username": username,
                                           "password": password}, follow_redirects=False)

    wrong = attempt("zhaoliu", "一个错误的密码")
    unknown = attempt("zhaoliu-does-not-exist", "一个错误的密码")
    assert wrong.status_code == unknown.status_code == 200
    assert "用户名或密码错误" in wrong.text
    assert wrong.text.replace("zhaoliu", "") == \
        unknown.text.replace("zhaoliu-does-not-exist", "")
    real_user_wrong = attempt(PATIENT_USER, "一个错误的密码")
    assert real_user_wrong.text.replace(PATIENT_USER, "") == \
        unknown.text.replace("zhaoliu-does-not-exist", "")
    assert "yilian_session" not in real_user_wrong.headers.get("set-cookie", "")


def test_repeated_login_failures_are_throttled(w: World) -> None:
    c = w.client
    page = parse_page(c.get("/auth/login").text)

    def attempt(password: str) -> Any:
        return c.post("/auth/login", data={"csrf": page.value("csrf"),
                                           "username": DOCTOR_USER, "password": password},
                      follow_redirects=False)

    for i in range(5):
        assert attempt(f"错误密码-{i}-xxxx").status_code == 200
    locked = attempt(DOCTOR_PASSWORD)  # the right password, during the lock
    assert locked.status_code == 200 and "用户名或密码错误" in locked.text
    assert "yilian_session" not in locked.headers.get("set-cookie", "")
    # other accounts are not locked by it
    assert sign_in(c, "/auth/login", PATIENT_USER, PATIENT_PASSWORD).status_code == 303


def test_disabled_user_cannot_sign_in(w: World) -> None:
    w.store.set_user_disabled(PATIENT_USER, True)
    r = sign_in(w.client, "/auth/login", PATIENT_USER, PATIENT_PASSWORD)
    assert r.status_code == 200 and "用户名或密码错误" in r.text


def test_non_utf8_basic_credentials_are_invalid_client(w: World) -> None:
    import base64
    code, verifier = full_flow(w.client)
    bad = base64.b64encode(b"\xff\xfe:\xfd").decode()
    r = w.client.post(TOKEN, data={"grant_type": "authorization_code", "code": code,
                                   "code_verifier": verifier},
                      headers={"authorization": f"Basic {bad}"})
    assert r.status_code == 401 and r.json()["error"] == "invalid_client"


def _age(w: World, sql: str) -> None:
    with sqlite3.connect(auth_db_path(w.tmp_path / "var")) as db:
        db.execute(sql)


def test_idle_session_expires(w: World) -> None:
    assert sign_in(w.client, "/auth/login", PATIENT_USER, PATIENT_PASSWORD).status_code == 303
    assert w.client.get("/auth/manage").status_code == 200
    _age(w, "UPDATE session SET last_seen = last_seen - 31 * 60")  # idle limit: 30 min
    r = w.client.get("/auth/manage", follow_redirects=False)
    assert r.status_code == 303 and "/auth/login" in r.headers["location"]


def test_parked_authorization_request_expires(w: World) -> None:
    _, page = _parked(w)
    _age(w, "UPDATE auth_request SET expires = expires - 3600")
    r = approve(w.client, page)
    assert r.status_code == 400 and "location" not in r.headers


def test_expired_launch_is_refused(w: World) -> None:
    assert sign_in(w.client, "/auth/login?next=ehr", DOCTOR_USER,
                   DOCTOR_PASSWORD).status_code == 303
    page = parse_page(w.client.get("/auth/ehr").text)
    r = w.client.post("/auth/ehr", data={"csrf": page.value("csrf"), "client_id": CLINIC_ID,
                                         "patient": "pat-000001"}, follow_redirects=False)
    launch = parse_qs(urlsplit(r.headers["location"]).query)["launch"][0]
    _age(w, "UPDATE launch SET expires = expires - 301")  # 5 minutes
    _, challenge = pkce()
    r = start(w.client, authorize_params(client_id=CLINIC_ID, redirect_uri=CLINIC_REDIRECT,
                                         scope="launch user/*.rs", challenge=challenge,
                                         launch=launch))
    assert redirect_query(r)["error"] == ["invalid_request"]
