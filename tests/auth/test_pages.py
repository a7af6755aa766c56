"""The sign-in and approval pages as a browser gets them: Chinese by default, English on request,
usable on a phone, never cached, framed or scripted; deselecting a scope narrows the grant."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from app.auth.clients import register_client
from app.auth.scopes import describe, parse_clinical
from app.config import Settings
from app.server import create_app
from tests.auth.authorize_flow import (
    APP_ID,
    APP_REDIRECT,
    PATIENT_PASSWORD,
    PATIENT_USER,
    World,
    approval_page,
    approve,
    auth_store,
    authorize_params,
    code_from,
    exchange,
    parse_page,
    pkce,
    seed_auth,
    sign_in,
)


def _assert_page_headers(headers: dict[str, str] | object) -> None:
    h = headers  # httpx.Headers
    assert h["cache-control"] == "no-store"  # type: ignore[index]
    csp = h["content-security-policy"]  # type: ignore[index]
    assert "frame-ancestors 'none'" in csp and "default-src 'none'" in csp
    assert h["x-frame-options"] == "DENY"  # type: ignore[index]
    assert h["referrer-policy"] == "same-origin"  # type: ignore[index]
    assert h["content-type"].startswith("text/html")  # type: ignore[index]


def test_login_page_is_chinese_by_default_phone_ready_and_not_cached(w: World) -> None:
    r = w.client.get("/auth/login")
    assert r.status_code == 200
    _assert_page_headers(r.headers)
    assert '<html lang="zh-CN">' in r.text
    page = parse_page(r.text)
    assert any(m.get("name") == "viewport" and "width=device-width" in (m.get("content") or "")
               for m in page.metas)
    assert page.scripts == 0
    assert "用户名" in page.text and "密码" in page.text
    names = {i.get("name"): i.get("type") for i in page.inputs}
    assert names["username"] == "text" and names["password"] == "password"
    assert any(b.get("type") == "submit" for b in page.buttons)
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "Path=/auth" in cookie and "SameSite=lax" in cookie


def test_english_by_query_cookie_or_accept_language(w: World) -> None:
    r = w.client.get("/auth/login?lang=en")
    assert '<html lang="en">' in r.text and "Username" in r.text
    assert r.headers["content-language"] == "en"
    # remembered in a cookie
    assert "Username" in w.client.get("/auth/login").text
    fresh = TestClient(w.client.app)
    r = fresh.get("/auth/login", headers={"accept-language": "en-GB,en;q=0.9"})
    assert "Sign in" in r.text
    r = fresh.get("/auth/login", headers={"accept-language": "zh-CN,zh;q=0.9,en;q=0.5"})
    assert "用户名" in r.text


def test_approval_page_lists_each_clinical_scope_in_plain_words(w: World) -> None:
    _, challenge = pkce()
    params = authorize_params(challenge=challenge)
    r_url, page = approval_page(w.client, params, PATIENT_USER, PATIENT_PASSWORD)
    boxes = [b for b in page.checkboxes() if "checked" in b]
    values = [b["value"] for b in boxes]
    assert values == ["patient/Condition.rs", "patient/Observation.rs", "patient/Patient.rs"]
    # category choices (granular selection) are offered unticked
    unticked = [b["value"] for b in page.checkboxes() if "checked" not in b]
    assert "patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/" \
           "observation-category|laboratory" in unticked
    assert all(str(v).split("?")[0] in ("patient/Observation.rs", "patient/Condition.rs")
               for v in unticked)
    for v in values:
        assert describe(parse_clinical(str(v)), "zh") in page.text
    decisions = {(b.get("name"), b.get("value"), b.get("type")) for b in page.buttons}
    assert ("decision", "approve", "submit") in decisions
    assert ("decision", "deny", "submit") in decisions
    r = w.client.get(r_url)
    _assert_page_headers(r.headers)
    # the approve POST ends in a redirect to the app: CSP form-action must allow its origin
    assert "form-action 'self' https://jiankang.example.cn" in r.headers[
        "content-security-policy"]
    english = parse_page(w.client.get(r_url + "&lang=en").text)
    assert describe(parse_clinical("patient/Observation.rs"), "en") in english.text


def test_deselected_scope_is_not_granted(w: World) -> None:
    verifier, challenge = pkce()
    _, page = approval_page(w.client, authorize_params(challenge=challenge), PATIENT_USER,
                            PATIENT_PASSWORD)
    r = approve(w.client, page, scopes=["patient/Patient.rs", "patient/Observation.rs"])
    body = exchange(w.client, code_from(r), verifier).json()
    granted = body["scope"].split()
    assert "patient/Condition.rs" not in granted
    assert {"patient/Patient.rs", "patient/Observation.rs", "launch/patient",
            "offline_access"} <= set(granted)
    claims = w.client.app.state.keyring.verify(body["access_token"])  # type: ignore[attr-defined]
    assert "patient/Condition.rs" not in claims["scope"].split()


def test_user_can_narrow_observations_to_a_category(w: World) -> None:
    lab = ("patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/"
           "observation-category|laboratory")
    verifier, challenge = pkce()
    _, page = approval_page(w.client, authorize_params(challenge=challenge), PATIENT_USER,
                            PATIENT_PASSWORD)
    r = approve(w.client, page, scopes=["patient/Patient.rs", lab])
    granted = exchange(w.client, code_from(r), verifier).json()["scope"].split()
    assert lab in granted
    assert "patient/Observation.rs" not in granted and "patient/Condition.rs" not in granted


def test_ticking_a_scope_that_was_not_requested_grants_nothing_more(w: World) -> None:
    verifier, challenge = pkce()
    _, page = approval_page(w.client, authorize_params(challenge=challenge), PATIENT_USER,
                            PATIENT_PASSWORD)
    r = approve(w.client, page, scopes=[
        "patient/Patient.rs", "patient/*.cruds", "user/*.rs",
        "patient/Encounter.rs?category=http://terminology.hl7.org/CodeSystem/"
        "observation-category|laboratory"])
    granted = exchange(w.client, code_from(r), verifier).json()["scope"].split()
    assert [s for s in granted if "/" in s and not s.startswith("launch")] == \
        ["patient/Patient.rs"]


def test_error_page_is_localised_and_escaped(w: World) -> None:
    r = w.client.get("/auth/authorize", params={"client_id": "<script>x</script>",
                                                "lang": "en"})
    assert r.status_code == 400
    _assert_page_headers(r.headers)
    assert "Unknown app" in r.text and "<script>" not in r.text
    r = w.client.get("/auth/authorize", params={"client_id": "nope", "lang": "zh"})
    assert "未知的应用" in r.text


def test_app_names_are_escaped(w: World) -> None:
    register_client(w.store, name="<script>alert(1)</script>健康", kind="public",
                    client_id="xss-app", redirect_uris=[APP_REDIRECT])
    _, challenge = pkce()
    _, page = approval_page(w.client, authorize_params(client_id="xss-app",
                                                       challenge=challenge),
                            PATIENT_USER, PATIENT_PASSWORD)
    assert page.scripts == 0
    assert "<script>alert(1)</script>健康" in page.text  # shown as text


def test_session_cookie_is_secure_on_https(tmp_path: Path) -> None:
    settings = Settings.model_validate({"var_dir": tmp_path / "var", "auth": "smart",
                                        "base_url": "https://yilian.example.cn/fhir"})
    with TestClient(create_app(settings), base_url="https://yilian.example.cn") as c:
        seed_auth(c)
        r = sign_in(c, "/auth/login", PATIENT_USER, PATIENT_PASSWORD)
        assert r.status_code == 303, r.text
        cookie = next(v for k, v in r.headers.multi_items()
                      if k == "set-cookie" and v.startswith("yilian_session="))
        assert "Secure" in cookie and "HttpOnly" in cookie and "Path=/auth" in cookie
        assert "SameSite=lax" in cookie
        assert r.headers["location"] == "https://yilian.example.cn/auth/manage"
        assert auth_store(c).list_grants(PATIENT_USER, 0) == []


def test_pages_never_500_on_garbage(w: World) -> None:
    c = w.client
    for path in ("/auth/approve?req=x", "/auth/approve", "/auth/login?req=%00",
                 "/auth/ehr", "/auth/manage", "/auth/logout"):
        assert c.get(path, follow_redirects=False).status_code < 500, path
    for path in ("/auth/approve", "/auth/login", "/auth/ehr", "/auth/manage", "/auth/logout",
                 "/auth/authorize"):
        r = c.post(path, content=b"\xff\xfe=\x00", headers={
            "content-type": "application/x-www-form-urlencoded"}, follow_redirects=False)
        assert r.status_code < 500, path
        r = c.post(path, json={"a": 1}, follow_redirects=False)
        assert r.status_code < 500, path
    assert APP_ID
