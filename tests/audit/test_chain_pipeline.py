"""The whole pipeline on a real dev chain: accesses become AuditEvents, the anchoring worker puts
them on chain, the proof comes back to the AuditEvent, and `$verify` checks it — and catches a
record altered in the database afterwards. Also the fail-closed policy with the chain down.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.audit.hashing import PROOF_URL
from app.chain.devchain import DevChain
from app.chain.node import start_chain
from app.config import Settings
from app.server import create_app
from app.storage.sqlite_audit import raw_path_of
from tests.audit.conftest import seal
from tests.conftest import lab, make_settings, patient


def proof_of(event: dict[str, Any]) -> dict[str, Any] | None:
    for ext in event.get("extension", []):
        if ext["url"] == PROOF_URL:
            return {e["url"]: e.get("valueUnsignedInt", e.get("valueString"))
                    for e in ext["extension"]}
    return None


def param(parameters: dict[str, Any], name: str) -> Any:
    for p in parameters["parameter"]:
        if p["name"] == name:
            return p.get("valueBoolean", p.get("valueString"))
    return None


class Running:
    def __init__(self, client: TestClient, settings: Settings, dev: DevChain | None) -> None:
        self.c = client
        self.settings = settings
        self.dev = dev

    def db(self) -> sqlite3.Connection:
        """The audit trail's file."""
        return sqlite3.connect(self.settings.audit_path)

    def wait_anchored(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.db() as db:
                waiting = db.execute(
                    "SELECT (SELECT count(*) FROM audit a LEFT JOIN chain_batch b ON b.id = "
                    "a.batch WHERE b.state IS NOT 'confirmed') + (SELECT count(*) FROM "
                    "chain_outbox o LEFT JOIN chain_batch b ON b.id = o.batch WHERE "
                    "b.state IS NOT 'confirmed')").fetchone()[0]
            raw_path = raw_path_of(self.settings.audit_path)
            if raw_path.exists():  # reads recorded and not yet sealed into AuditEvents
                with closing(sqlite3.connect(raw_path)) as raw:
                    waiting += raw.execute("SELECT count(*) FROM audit_raw").fetchone()[0]
            if waiting == 0:
                return
            time.sleep(0.1)
        raise AssertionError(f"{waiting} entries still not anchored after {timeout} s")


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Running]:
    settings = make_settings(tmp_path, chain="dev", anchor_interval_ms=50)
    dev, _ = start_chain(settings)
    try:
        with TestClient(create_app(settings)) as client:
            yield Running(client, settings, dev)
    finally:
        if dev is not None:
            dev.stop()


def test_accesses_are_anchored_and_verify_against_the_chain(running: Running) -> None:
    c = running.c
    assert c.put("/fhir/Patient/pat-lq", json=patient("pat-lq", family="刘", given="强",
                                                      mrn="BA-LQ")).status_code == 201
    assert c.put("/fhir/Observation/obs-lq", json=lab("pat-lq", oid="obs-lq")).status_code == 201
    assert c.get("/fhir/Observation/obs-lq").status_code == 200
    assert c.get("/fhir/Observation?patient=pat-lq").status_code == 200
    running.wait_anchored()
    events = c.get("/fhir/AuditEvent?patient=pat-lq&_count=50").json()["entry"]
    assert len(events) >= 4
    for entry in events[1:]:  # the newest records the search itself, not yet anchored
        event = entry["resource"]
        proof = proof_of(event)
        assert proof is not None, event["id"]
        assert proof["chainId"] == 31337
        verdict = c.get(f"/fhir/AuditEvent/{event['id']}/$verify").json()
        assert verdict["resourceType"] == "Parameters"
        assert param(verdict, "verified") is True, verdict
    verdict = c.get("/fhir/Observation/obs-lq/_history/1/$verify").json()
    assert param(verdict, "verified") is True, verdict
    status = c.get("/chain/status").json()
    assert status["reachable"] is True and status["latest_block"] > 0
    assert set(status["contracts"]) == {"AuditLog", "ConsentRegistry", "Anchor"}
    running.wait_anchored()
    assert c.get("/chain/status").json()["anchoring_lag_seconds"] < 5


def test_an_altered_record_fails_verification(running: Running) -> None:
    c = running.c
    assert c.put("/fhir/Patient/pat-zm", json=patient("pat-zm", family="赵", given="敏",
                                                      mrn="BA-ZM")).status_code == 201
    assert c.get("/fhir/Patient/pat-zm").status_code == 200
    running.wait_anchored()
    with running.db() as db:
        seq, event_id, body = db.execute("SELECT seq, id, body FROM audit WHERE patient = "
                                         "'pat-zm' AND action = 'R'").fetchone()
        db.execute("UPDATE audit SET body = ? WHERE seq = ?",
                   (body.replace(b'"outcome":"0"', b'"outcome":"4"'), seq))
    with sqlite3.connect(running.settings.sqlite_path) as db:
        db.execute("UPDATE history SET body = CAST(replace(body, '赵', '钱') AS BLOB) WHERE rid = "
                   "(SELECT rid FROM resource WHERE type = 'Patient' AND id = 'pat-zm')")
    verdict = c.get(f"/fhir/AuditEvent/{event_id}/$verify").json()
    assert param(verdict, "verified") is False
    assert "altered" in param(verdict, "reason") or "differs" in param(verdict, "reason")
    verdict = c.get("/fhir/Patient/pat-zm/_history/1/$verify").json()
    assert param(verdict, "verified") is False, verdict


def test_not_yet_anchored_and_unknown_versions_say_why(running: Running) -> None:
    c = running.c
    assert c.put("/fhir/Patient/pat-sy", json=patient("pat-sy", mrn="BA-SY")).status_code == 201
    assert c.get("/fhir/Patient/pat-sy/_history/9/$verify").status_code == 404
    assert c.get("/fhir/Patient/pat-sy/_history/1/$nope").status_code == 404
    assert c.get("/fhir/AuditEvent/nope/$verify").status_code == 404


def test_fail_closed_refuses_writes_but_not_reads_while_the_chain_is_down(
        tmp_path: Path) -> None:
    settings = make_settings(tmp_path, chain="dev", audit_fail_closed=True,
                             audit_fail_closed_lag_seconds=1, anchor_interval_ms=50)
    dev, _ = start_chain(settings)
    try:
        with TestClient(create_app(settings)) as c:
            assert c.put("/fhir/Patient/pat-hl", json=patient("pat-hl", mrn="BA-HL")) \
                .status_code == 201
            assert dev is not None
            dev.stop()  # the chain goes away; entries queue
            assert c.get("/fhir/Patient/pat-hl").status_code == 200
            time.sleep(2.2)
            r = c.put("/fhir/Patient/pat-hl", json=patient("pat-hl", mrn="BA-HL2"))
            assert r.status_code == 503, r.text
            assert r.json()["resourceType"] == "OperationOutcome"
            assert "YILIAN_AUDIT_FAIL_CLOSED" in r.text
            assert c.get("/fhir/Patient/pat-hl").status_code == 200
            seal(settings.var_dir)  # the refusal was recorded as a raw access
            with sqlite3.connect(settings.audit_path) as db:
                refused = db.execute("SELECT count(*) FROM audit WHERE outcome = '8' AND "
                                     "action = 'U'").fetchone()[0]
            assert refused == 1
    finally:
        if dev is not None:
            dev.stop()


def test_deleting_a_consent_revokes_its_decisions_on_chain(running: Running) -> None:
    """A DELETE of a Consent is a revocation: the decisions of its last version are recorded
    again as Revoked, and the independent verifier recomputes them from the history."""
    from app.audit.hashing import CONSENT_REVOKED, Keyer
    from app.audit.verify import ChainReader, verify_database
    from app.consent.chain import decisions_of
    from tests.consent.test_chain_decisions import RESEARCH_CONSENT

    c = running.c
    assert c.put("/fhir/Patient/pat-000001", json=patient("pat-000001")).status_code == 201
    consent = {**RESEARCH_CONSENT, "patient": {"reference": "Patient/pat-000001"}}
    created = c.post("/fhir/Consent", json=consent)
    assert created.status_code == 201, created.text
    cid = created.json()["id"]
    stored = c.get(f"/fhir/Consent/{cid}")
    assert c.delete(f"/fhir/Consent/{cid}").status_code == 204
    running.wait_anchored()
    keyer = Keyer.in_var_dir(running.settings.var_dir)
    granted = [p for _, p in decisions_of(stored.json(), stored.content, keyer)]
    with running.db() as db:
        revoked = [bytes(p) for (p,) in db.execute(
            "SELECT payload FROM chain_outbox WHERE kind = 'consent' AND ref = ? ORDER BY seq",
            (f"Consent/{cid}/_history/2",))]
    assert len(revoked) == len(granted) == 2
    for before, after in zip(granted, revoked, strict=True):
        assert after[:96] == before[:96]  # same patient, grantee and scope
        assert after[96] == CONSENT_REVOKED
    handle = running.c.app.state.chain_handle()  # type: ignore[attr-defined]
    report = verify_database(running.settings.audit_path, keyer, ChainReader(handle.rpc_url),
                             store_db=running.settings.sqlite_path)
    assert report.problems == [], report.problems
    assert report.counts["verified"] >= 6
