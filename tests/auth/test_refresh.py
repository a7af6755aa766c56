"""Refresh tokens (RFC 6749 §6) through the real app: rotation, reuse detection, client
binding, narrowing without widening, online_access bound to the session; revocation (RFC 7009)
and introspection (RFC 7662) of user-flow tokens."""

from __future__ import annotations

from tests.auth.authorize_flow import (
    APP_ID,
    CLINIC_ID,
    CLINIC_REDIRECT,
    TOKEN,
    World,
    exchange,
    flow_tokens,
    full_flow,
    refresh_with,
)
from tests.conftest import BASE


def test_refresh_rotates_and_keeps_the_launch_context(w: World) -> None:
    first = flow_tokens(w)
    r = refresh_with(w.client, first["refresh_token"])
    assert r.status_code == 200, r.text
    assert r.headers["cache-control"] == "no-store"
    body = r.json()
    assert body["access_token"] != first["access_token"]
    assert body["refresh_token"] != first["refresh_token"]
    assert body["patient"] == "pat-000001"
    assert body["scope"] == first["scope"]
    assert body["expires_in"] == 3600
    # the rotated token works once more
    assert refresh_with(w.client, body["refresh_token"]).status_code == 200


def test_reusing_a_rotated_refresh_token_revokes_the_grant(w: World) -> None:
    first = flow_tokens(w)
    second = refresh_with(w.client, first["refresh_token"]).json()
    replay = refresh_with(w.client, first["refresh_token"])
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"
    # the thief's replay kills the legitimate chain too
    assert refresh_with(w.client, second["refresh_token"]).json()["error"] == "invalid_grant"


def test_online_access_refresh_ends_with_the_session(w: World) -> None:
    first = flow_tokens(w, scope="launch/patient online_access patient/Patient.rs")
    assert first["refresh_token"]
    second = refresh_with(w.client, first["refresh_token"])
    assert second.status_code == 200
    page = w.client.get("/auth/logout").text
    from tests.auth.authorize_flow import parse_page
    w.client.post("/auth/logout", data={"csrf": parse_page(page).value("csrf")})
    r = refresh_with(w.client, second.json()["refresh_token"])
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"


def test_confidential_client_refreshes_with_basic_auth_only(w: World) -> None:
    code, verifier = full_flow(w.client, client_id=CLINIC_ID, redirect_uri=CLINIC_REDIRECT)
    r = exchange(w.client, code, verifier, redirect_uri=CLINIC_REDIRECT,
                 auth=(CLINIC_ID, w.clinic_secret))
    refresh = r.json()["refresh_token"]
    bare = refresh_with(w.client, refresh, client_id=CLINIC_ID)  # no secret
    assert bare.status_code == 401 and bare.json()["error"] == "invalid_client"
    wrong = w.client.post(TOKEN, data={"grant_type": "refresh_token", "refresh_token": refresh},
                          auth=(CLINIC_ID, "not-the-secret"))
    assert wrong.status_code == 401
    ok = w.client.post(TOKEN, data={"grant_type": "refresh_token", "refresh_token": refresh,
                                    "client_id": CLINIC_ID, "client_secret": w.clinic_secret})
    assert ok.status_code == 200, ok.text


def test_revoking_refresh_token_kills_the_grant_and_its_access_tokens(w: World) -> None:
    first = flow_tokens(w)
    r = w.client.post("/auth/revoke", data={"token": first["refresh_token"],
                                            "client_id": APP_ID})
    assert r.status_code == 200, r.text
    assert refresh_with(w.client, first["refresh_token"]).json()["error"] == "invalid_grant"
    claims = w.client.app.state.keyring.verify(first["access_token"])  # type: ignore[attr-defined]
    assert w.store.is_revoked(claims["jti"], claims["gid"])


def test_another_client_cannot_revoke_a_refresh_token(w: World) -> None:
    first = flow_tokens(w)
    r = w.client.post("/auth/revoke", data={"token": first["refresh_token"]},
                      auth=(CLINIC_ID, w.clinic_secret))
    assert r.status_code == 200  # RFC 7009 §2.2: the answer never tells
    assert refresh_with(w.client, first["refresh_token"]).status_code == 200


def test_introspection_returns_the_launch_context(w: World) -> None:
    code, verifier = full_flow(w.client, client_id=CLINIC_ID, redirect_uri=CLINIC_REDIRECT)
    body = exchange(w.client, code, verifier, redirect_uri=CLINIC_REDIRECT,
                    auth=(CLINIC_ID, w.clinic_secret)).json()
    r = w.client.post("/auth/introspect", data={"token": body["access_token"]},
                      auth=(CLINIC_ID, w.clinic_secret))
    assert r.status_code == 200, r.text
    info = r.json()
    assert info["active"] is True
    assert info["patient"] == "pat-000001"
    assert info["fhirUser"] == f"{BASE}/Patient/pat-000001"
    assert info["client_id"] == CLINIC_ID
    refresh = w.client.post("/auth/introspect", data={"token": body["refresh_token"]},
                            auth=(CLINIC_ID, w.clinic_secret)).json()
    assert refresh["active"] is True and refresh["patient"] == "pat-000001"
    # a public client cannot introspect
    r = w.client.post("/auth/introspect", data={"token": body["access_token"],
                                                "client_id": APP_ID})
    assert r.status_code in (400, 401)
    assert "active" not in r.json()


def test_disabling_a_user_stops_refresh_and_ends_sessions(w: World) -> None:
    first = flow_tokens(w)
    w.store.set_user_disabled("zhangsan", True)
    r = refresh_with(w.client, first["refresh_token"])
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"
    manage = w.client.get("/auth/manage", follow_redirects=False)
    assert manage.status_code == 303 and "/auth/login" in manage.headers["location"]
