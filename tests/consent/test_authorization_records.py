"""What the audit trail keeps of a SMART authorization: the authorization events (approved,
denied, token issued, refreshed and revoked) as AuditEvents, and each Consent version's
decisions queued for the ConsentRegistry exactly as `decisions_of` computes them."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import orjson
from fastapi.testclient import TestClient

from app.audit.hashing import Keyer
from app.consent.chain import decisions_of
from app.server import create_app
from tests.auth.authorize_flow import (
    APP_ID,
    PATIENT_PASSWORD,
    PATIENT_USER,
    World,
    approval_page,
    approve,
    authorize_params,
    flow_tokens,
    pkce,
    refresh_with,
)
from tests.conftest import make_settings, patient
from tests.consent.test_chain_decisions import RESEARCH_CONSENT

AUTH_EVENTS = "https://fhir.yilian.cn/CodeSystem/auth-event"


def db(w: World) -> sqlite3.Connection:
    return sqlite3.connect(w.tmp_path / "var" / "audit.sqlite3")


def auth_events(w: World) -> list[dict[str, Any]]:
    with db(w) as conn:
        bodies = [orjson.loads(r[0]) for r in conn.execute("SELECT body FROM audit ORDER BY seq")]
    return [e for e in bodies
            if any(s.get("system") == AUTH_EVENTS for s in e.get("subtype", []))]


def subtype(event: dict[str, Any]) -> str:
    return str(next(s["code"] for s in event["subtype"] if s["system"] == AUTH_EVENTS))


def test_each_step_of_a_launch_is_an_authorization_event(w: World) -> None:
    tokens = flow_tokens(w)
    assert refresh_with(w.client, tokens["refresh_token"]).status_code == 200
    assert refresh_with(w.client, tokens["refresh_token"]).status_code == 400  # replayed
    events = auth_events(w)
    assert [(subtype(e), e["outcome"]) for e in events] == [
        ("authorization-approved", "0"), ("token-issued", "0"), ("token-refreshed", "0"),
        ("token-revoked", "0"), ("token-refreshed", "4")]
    approved = events[0]
    assert any(e.get("what", {}).get("reference") == "Patient/pat-000001"
               for e in approved["entity"])
    assert any("patient/Observation.rs" in e.get("description", "")
               for e in approved["entity"])
    assert APP_ID in orjson.dumps(approved["agent"]).decode()


def test_a_denial_is_a_failed_authorization_event(w: World) -> None:
    _, challenge = pkce()
    _, page = approval_page(w.client, authorize_params(challenge=challenge), PATIENT_USER,
                            PATIENT_PASSWORD)
    approve(w.client, page, decision="deny")
    [event] = auth_events(w)
    assert subtype(event) == "authorization-denied" and event["outcome"] != "0"


def test_every_consent_version_queues_its_decisions(w: World) -> None:
    tokens = flow_tokens(w)
    w.client.post("/auth/revoke", data={"token": tokens["refresh_token"], "client_id": APP_ID})
    keyer = Keyer.in_var_dir(w.tmp_path / "var")
    with db(w) as conn:
        versions = conn.execute(
            "SELECT DISTINCT ref FROM chain_outbox WHERE kind = 'consent' ORDER BY seq"
        ).fetchall()
        assert len(versions) == 2  # active, then inactive
        service = w.client.app.state.service  # type: ignore[attr-defined]
        for (ref,) in versions:
            type_, id_, _, version = ref.split("/")
            assert w.client.portal is not None
            stored = w.client.portal.call(service.store.vread, type_, id_, int(version))
            expected = [p for _, p in decisions_of(orjson.loads(stored.body), stored.body,
                                                   keyer)]
            queued = [bytes(r[0]) for r in conn.execute(
                "SELECT payload FROM chain_outbox WHERE kind = 'consent' AND ref = ? "
                "ORDER BY seq", (ref,))]
            assert queued == expected and len(queued) == 3


def test_a_consent_a_client_posts_queues_its_decisions(tmp_path: Path) -> None:
    consent = {**RESEARCH_CONSENT, "patient": {"reference": "Patient/pat-000001"}}
    with TestClient(create_app(make_settings(tmp_path))) as c:
        assert c.put("/fhir/Patient/pat-000001", json=patient("pat-000001")).status_code in \
            (200, 201)
        r = c.post("/fhir/Consent", json=consent)
        assert r.status_code == 201, r.text
        location = r.headers["location"]
        stored = c.get("/fhir" + location.split("/fhir", 1)[1])
        assert stored.status_code == 200
    keyer = Keyer.in_var_dir(tmp_path / "var")
    ref = "Consent/" + location.split("/Consent/", 1)[1]
    with sqlite3.connect(tmp_path / "var" / "audit.sqlite3") as conn:
        queued = [bytes(p) for (p,) in conn.execute(
            "SELECT payload FROM chain_outbox WHERE kind = 'consent' AND ref = ? ORDER BY seq",
            (ref,))]
    expected = [p for _, p in decisions_of(stored.json(), stored.content, keyer)]
    assert queued == expected and len(expected) == 2
