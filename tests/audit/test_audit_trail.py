"""Every FHIR interaction becomes AuditEvents (one per patient touched) with their chain entries,
stored with the access they record; patients list who accessed their data.

The world: two patients of 北京协和医院 — 张伟 (pat-zw) and 王芳 (pat-wf) — with lab results, loaded
by a backend service; 张伟's own app reads its AuditEvents.
"""

from __future__ import annotations

import base64
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

from app.audit.hashing import (
    ACTION_CODES,
    PATIENT_KEY_URL,
    Keyer,
    access_entry,
    canonical_json,
    entry_hash,
    sha256,
    version_entry,
)
from app.fhir.validation import validate_resource
from app.server import create_app
from tests.audit.conftest import seal
from tests.auth.test_security_tokens import Smart
from tests.conftest import lab, make_settings, patient


class Trail:
    def __init__(self, smart: Smart, var: Path) -> None:
        self.smart = smart
        self.c = smart.client
        self.var = var
        self.admin = smart.headers("system/*.cruds", client_id="his-sync")
        self.zw = smart.headers("launch/patient patient/*.rs", patient="pat-zw",
                                fhir_user="Patient/pat-zw", grant_id="grant-zw",
                                client_id="jiankang-app")

    def db(self) -> sqlite3.Connection:
        """The resource file."""
        return sqlite3.connect(self.var / "yilian.sqlite3")

    def audit_db(self) -> sqlite3.Connection:
        """The audit trail's file: AuditEvents and the chain outbox."""
        return sqlite3.connect(self.var / "audit.sqlite3")

    def raw(self) -> list[dict[str, Any]]:
        """Reads' raw accesses not sealed into AuditEvents yet."""
        with closing(sqlite3.connect(self.var / "audit.raw.sqlite3")) as db:
            db.row_factory = sqlite3.Row
            return [dict(r) for r in db.execute("SELECT * FROM audit_raw ORDER BY seq")]

    def seal(self) -> int:
        return seal(self.var)

    def rows(self, where: str = "1", params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        """AuditEvent rows, once every raw access is sealed."""
        self.seal()
        with closing(self.audit_db()) as db:
            db.row_factory = sqlite3.Row
            return [dict(r) for r in db.execute(
                f"SELECT * FROM audit WHERE {where} ORDER BY seq", params)]

    def events(self, where: str = "1", params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        return [orjson.loads(r["body"]) for r in self.rows(where, params)]

    def put(self, resource: dict[str, Any]) -> None:
        r = self.c.put(f"/fhir/{resource['resourceType']}/{resource['id']}", json=resource,
                       headers=self.admin)
        assert r.status_code in (200, 201), r.text


@pytest.fixture
def t(tmp_path: Path) -> Iterator[Trail]:
    app = create_app(make_settings(tmp_path, auth="smart"))
    with TestClient(app) as client:
        trail = Trail(Smart(client), tmp_path / "var")
        trail.put(patient("pat-zw", family="张", given="伟", mrn="BA-ZW"))
        trail.put(patient("pat-wf", family="王", given="芳", id_number="110105196502170036",
                          mrn="BA-WF", gender="female", birth="1965-02-17"))
        trail.put(lab("pat-zw", oid="obs-zw-1"))
        trail.put(lab("pat-zw", loinc="718-7", display="血红蛋白", value=135, unit="g/L",
                      oid="obs-zw-2"))
        trail.put(lab("pat-wf", oid="obs-wf-1"))
        yield trail


def subtype(event: dict[str, Any]) -> str:
    return str(event["subtype"][0]["code"])


def test_every_write_is_an_audit_event_with_its_version_anchor(t: Trail) -> None:
    writes = t.events("action IN ('C', 'U')")
    assert len(writes) == 5
    assert {subtype(e) for e in writes} == {"update"}  # PUT with a client id: update-as-create
    with t.audit_db() as db:
        anchors = db.execute("SELECT ref, payload FROM chain_outbox WHERE kind = 'version' "
                             "ORDER BY seq").fetchall()
    with t.db() as db:
        bodies = dict(db.execute(
            "SELECT r.type || '/' || r.id || '/_history/' || h.version, h.body FROM history h "
            "JOIN resource r ON r.rid = h.rid WHERE r.type IN ('Patient', 'Observation')"))
    keyer = Keyer.in_var_dir(t.var)
    assert [ref for ref, _ in anchors] == [
        "Patient/pat-zw/_history/1", "Patient/pat-wf/_history/1",
        "Observation/obs-zw-1/_history/1", "Observation/obs-zw-2/_history/1",
        "Observation/obs-wf-1/_history/1"]
    for ref, payload in anchors:
        type_, id_, _, version = ref.split("/")
        assert payload == version_entry(keyer.version(type_, id_, int(version)), bodies[ref])


def test_each_event_is_valid_r4_and_its_entry_is_recomputable(t: Trail) -> None:
    assert t.c.get("/fhir/Observation?patient=pat-zw", headers=t.zw).status_code == 200
    registry: Any = t.c.app.state.service.registry  # type: ignore[attr-defined]
    keyer = Keyer.in_var_dir(t.var)
    for row in t.rows():
        event = orjson.loads(row["body"])
        problems = [i.diagnostics for i in validate_resource(event, registry)
                    if i.severity in ("error", "fatal")]
        assert problems == [], problems
        assert canonical_json(event) == row["body"]  # stored canonical: rehashing agrees
        patient_key = keyer.patient(row["patient"])
        assert row["entry"] == access_entry(entry_hash(event), patient_key, event["action"])
        assert row["entry"][64] == ACTION_CODES[event["action"]]
        if row["patient"]:
            assert {"url": PATIENT_KEY_URL, "valueString": patient_key.hex()} \
                in event["extension"]


def test_read_is_recorded_before_the_answer_with_user_client_address_and_purpose(
        t: Trail) -> None:
    before = len(t.rows())
    assert t.raw() == []
    r = t.c.get("/fhir/Observation/obs-zw-1", headers=t.zw)
    assert r.status_code == 200
    # stored before the answer, as a raw access (the facts its AuditEvent is built from), unless
    # housekeeping (each second, at once without a chain) has sealed it already
    raw = t.raw()
    rows = t.rows("seq > (SELECT max(seq) FROM audit) - 1")
    assert len(t.rows()) == before + 1 and t.raw() == []
    if raw:
        assert [(r["id"], r["recorded_ms"], r["patient"]) for r in raw] == \
            [(rows[0]["id"], rows[0]["recorded_ms"], "pat-zw")]
        assert b"obs-zw-1" in raw[0]["data"]
    event = orjson.loads(rows[0]["body"])
    assert (event["action"], subtype(event), event["outcome"]) == ("R", "read", "0")
    assert rows[0]["patient"] == "pat-zw"
    user, app = event["agent"]
    assert user["who"] == {"reference": "Patient/pat-zw"} and user["requestor"] is True
    assert user["network"]["address"] == "testclient"
    assert app["who"]["identifier"]["value"] == "jiankang-app"
    assert event["purposeOfEvent"][0]["coding"][0]["code"] == "PATRQT"
    refs = [e["what"]["reference"] for e in event["entity"] if "what" in e]
    assert refs == ["Patient/pat-zw", "Observation/obs-zw-1/_history/1"]


def test_a_search_over_two_patients_is_one_event_per_patient(t: Trail) -> None:
    r = t.c.get("/fhir/Observation?code=http://loinc.org|6690-2", headers=t.admin)
    assert r.status_code == 200 and r.json()["total"] == 2
    events = t.events("action = 'E'")
    by_patient = {e["entity"][0]["what"]["reference"]: e for e in events[-2:]}
    assert set(by_patient) == {"Patient/pat-zw", "Patient/pat-wf"}
    zw = by_patient["Patient/pat-zw"]
    assert [e["what"]["reference"] for e in zw["entity"] if "what" in e][1:] == \
        ["Observation/obs-zw-1/_history/1"]
    query = next(e for e in zw["entity"] if "query" in e)
    assert base64.b64decode(query["query"]).decode() == "code=http%3A%2F%2Floinc.org%7C6690-2"
    assert zw["purposeOfEvent"][0]["coding"][0]["code"] == "HOPERAT"


def test_refusals_and_misses_are_recorded_as_failures(t: Trail) -> None:
    assert t.c.get("/fhir/Observation/obs-wf-1", headers=t.zw).status_code == 404
    assert t.c.post("/fhir/Observation", json=lab("pat-zw"), headers=t.zw).status_code == 403
    events = t.events()[-2:]
    assert [(subtype(e), e["outcome"]) for e in events] == [("read", "4"), ("create", "4")]
    assert events[1]["outcomeDesc"].startswith("HTTP 403")
    assert "王芳" not in orjson.dumps(events).decode()


def test_a_failed_write_leaves_no_audit_and_no_anchor(t: Trail) -> None:
    before_audit, before_out = len(t.rows()), _count(t, "chain_outbox")
    stale = {**lab("pat-zw", oid="obs-zw-1"), "status": "amended"}
    r = t.c.put("/fhir/Observation/obs-zw-1", json=stale,
                headers={**t.admin, "If-Match": 'W/"7"'})
    assert r.status_code == 412
    assert _count(t, "chain_outbox") == before_out
    # a transaction whose second entry fails: neither entry is recorded as done
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": lab("pat-zw"), "request": {"method": "POST", "url": "Observation"}},
        {"resource": stale, "request": {"method": "PUT", "url": "Observation/obs-zw-1",
                                        "ifMatch": 'W/"7"'}}]}
    assert t.c.post("/fhir", json=bundle, headers=t.admin).status_code == 412
    assert _count(t, "chain_outbox") == before_out
    assert [e for e in t.events("seq > ?", (before_audit,)) if e["outcome"] == "0"] == []


def test_transaction_entries_are_audited_with_the_transaction(t: Trail) -> None:
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": lab("pat-zw"), "request": {"method": "POST", "url": "Observation"}},
        {"request": {"method": "GET", "url": "Patient/pat-wf"}}]}
    r = t.c.post("/fhir", json=bundle, headers=t.admin)
    assert r.status_code == 200, r.text
    kinds = [(subtype(e), e["entity"][0]["what"]["reference"]) for e in t.events()[-2:]]
    assert kinds == [("create", "Patient/pat-zw"), ("read", "Patient/pat-wf")]


def test_patient_lists_who_accessed_their_data_and_nothing_else(t: Trail) -> None:
    assert t.c.get("/fhir/Patient/pat-wf", headers=t.admin).status_code == 200
    r = t.c.get("/fhir/AuditEvent?patient=pat-zw&_count=100",
                headers=t.smart.headers("launch/patient patient/AuditEvent.rs",
                                        patient="pat-zw", fhir_user="Patient/pat-zw"))
    assert r.status_code == 200, r.text
    entries = [e["resource"] for e in r.json()["entry"]]
    assert len(entries) == r.json()["total"] == 3  # the three writes of 张伟's data
    for e in entries:
        assert e["entity"][0]["what"]["reference"] == "Patient/pat-zw"
        assert e["agent"][1]["who"]["identifier"]["value"] == "his-sync"
    token = t.smart.headers("launch/patient patient/AuditEvent.rs", patient="pat-zw",
                            fhir_user="Patient/pat-zw")
    other = t.c.get("/fhir/AuditEvent?patient=pat-wf", headers=token).json()
    assert other["total"] == 0 and "entry" not in other
    everyone = t.c.get("/fhir/AuditEvent?_count=100", headers=token).json()
    assert {e["resource"]["entity"][0]["what"]["reference"] for e in everyone["entry"]} == \
        {"Patient/pat-zw"}
    wf_event = t.rows("patient = 'pat-wf'")[0]["id"]
    assert t.c.get(f"/fhir/AuditEvent/{wf_event}", headers=token).status_code == 404
    # a token without AuditEvent in its grant gets nothing
    assert t.c.get("/fhir/AuditEvent", headers=t.smart.headers(
        "launch/patient patient/Observation.rs", patient="pat-zw")).status_code == 403


def test_audit_events_cannot_be_written_or_searched_loosely(t: Trail) -> None:
    event_id = t.rows()[0]["id"]
    got = t.c.get(f"/fhir/AuditEvent/{event_id}", headers=t.admin)
    assert got.status_code == 200 and got.headers["etag"] == 'W/"1"'
    event = got.json()
    assert t.c.put(f"/fhir/AuditEvent/{event_id}", json=event,
                   headers=t.admin).status_code == 405
    assert t.c.delete(f"/fhir/AuditEvent/{event_id}", headers=t.admin).status_code == 405
    assert t.c.post("/fhir/AuditEvent", json=event, headers=t.admin).status_code == 405
    for bad in ("name=张伟", "date=yesterday", "action=X", "_count=many", "_page_token=x"):
        r = t.c.get(f"/fhir/AuditEvent?{bad}", headers=t.admin)
        assert r.status_code == 400, bad
        assert r.json()["resourceType"] == "OperationOutcome"


def test_audit_search_filters_and_pages_newest_first(t: Trail) -> None:
    seen: list[str] = []
    url: str | None = "/fhir/AuditEvent?action=U&_count=2"
    while url:
        page = t.c.get(url, headers=t.admin).json()
        assert page["total"] == 5
        seen += [e["resource"]["id"] for e in page.get("entry", [])]
        url = next((link["url"].removeprefix("http://testserver")
                    for link in page["link"] if link["relation"] == "next"), None)
    assert seen == [r["id"] for r in reversed(t.rows("action = 'U'"))]
    recorded = t.events()[0]["recorded"]
    assert t.c.get(f"/fhir/AuditEvent?date=lt{recorded[:10]}",
                   headers=t.admin).json()["total"] == 0
    assert t.c.get("/fhir/AuditEvent?agent=Patient/pat-zw",
                   headers=t.admin).json()["total"] == 0


def test_entries_hash_nothing_personal_into_the_chain_entry(t: Trail) -> None:
    keyer = Keyer.in_var_dir(t.var)
    secret = (t.var / "audit" / "secret")
    assert secret.stat().st_mode & 0o777 == 0o600
    for row in t.rows():
        entry = row["entry"]
        assert len(entry) == 65
        assert entry[:32] == sha256(row["body"])
        assert entry[32:64] in (keyer.patient(row["patient"]), bytes(32))
        assert b"pat-zw" not in entry and sha256(b"Patient/pat-zw") not in entry


def _count(t: Trail, table: str) -> int:
    with t.audit_db() as db:
        return int(db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


def test_a_writes_audit_commits_with_it_and_is_searchable_once_answered(t: Trail) -> None:
    """The write's AuditEvent is in the resource file's inbox in the write's own transaction,
    and in the audit file (searchable) by the time the write is answered."""
    r = t.c.put("/fhir/Observation/obs-zw-3", json=lab("pat-zw", oid="obs-zw-3"),
                headers=t.admin)
    assert r.status_code == 201
    with t.db() as db:
        assert db.execute("SELECT count(*) FROM audit_inbox").fetchone()[0] == 0
        assert db.execute("SELECT count(*) FROM outbox_inbox").fetchone()[0] == 0
    found = t.c.get("/fhir/AuditEvent?patient=pat-zw&action=U&_count=1",
                    headers=t.admin).json()["entry"][0]["resource"]
    assert found["entity"][-1]["what"]["reference"] == "Observation/obs-zw-3/_history/1"
    with t.audit_db() as db:
        origins = [o for (o,) in db.execute("SELECT origin FROM chain_outbox ORDER BY seq")]
    assert len(origins) == len(set(origins)) == 6 and None not in origins


def test_the_inbox_left_by_a_crash_is_moved_once_on_start(tmp_path: Path) -> None:
    """Rows committed to the inbox by a write whose process died before moving them are moved
    when the store starts again, once, even if a move was half done (copied, not yet deleted)."""
    settings = make_settings(tmp_path)
    with TestClient(create_app(settings)) as c:
        assert c.put("/fhir/Patient/pat-cr", json=patient("pat-cr", mrn="BA-CR")) \
            .status_code == 201
    audit_db = sqlite3.connect(settings.audit_path)
    event = audit_db.execute("SELECT id, recorded_ms, patient, action, outcome, agent, client, "
                             "body, entry FROM audit").fetchone()
    anchor = audit_db.execute("SELECT origin, kind, ref, payload, recorded_ms FROM "
                              "chain_outbox").fetchone()
    audit_db.close()
    with sqlite3.connect(settings.sqlite_path) as db:  # as if the move had not happened
        db.execute("INSERT INTO audit_inbox(id, recorded_ms, patient, action, outcome, agent, "
                   "client, body, entry) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", event)
        db.execute("INSERT INTO outbox_inbox(seq, kind, ref, payload, recorded_ms) "
                   "VALUES (?, ?, ?, ?, ?)", anchor)
        db.execute("INSERT INTO audit_inbox(id, recorded_ms, patient, action, outcome, agent, "
                   "client, body, entry) VALUES ('crash-1', 1, 'pat-cr', 'U', '0', NULL, NULL, "
                   "x'7b7d', zeroblob(65))")
    with TestClient(create_app(settings)):
        pass
    with sqlite3.connect(settings.sqlite_path) as db:
        assert db.execute("SELECT count(*) FROM audit_inbox").fetchone()[0] == 0
        assert db.execute("SELECT count(*) FROM outbox_inbox").fetchone()[0] == 0
    with sqlite3.connect(settings.audit_path) as db:
        ids = [i for (i,) in db.execute("SELECT id FROM audit WHERE action = 'U'")]
        assert ids == [event[0], "crash-1"]
        assert db.execute("SELECT count(*) FROM chain_outbox").fetchone()[0] == 1
