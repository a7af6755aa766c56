"""Reads' raw accesses and their sealing into AuditEvents (app/audit/sealing.py).

A read at 北京协和医院 stores a raw access before it is answered; sealing must give exactly the
AuditEvent the request path would have built, exactly once, whoever seals and whenever it
crashes.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import orjson
import pytest

from app.audit import events, sealing
from app.audit.hashing import Keyer, access_entry, canonical_json, sha256
from app.pipeline.hooks import Interaction, Principal
from app.search.dates import format_instant_ms
from app.storage.base import AuditRow, RawAccess
from app.storage.sqlite_audit import raw_path_of, seal_raw
from app.storage.sqlite_schema import AUDIT_SCHEMA, RAW_SCHEMA

SOURCE = "https://fhir.pumch.example.cn"
DOCTOR = Principal(subject="Practitioner/doc-li-na", client_id="his-emr", address="10.12.3.45",
                   anonymous=False, fhir_user="Practitioner/doc-li-na", patient="pat-110101")
PATIENT_APP = Principal(subject="Patient/pat-110101", client_id="jiankang-app",
                        address="223.104.3.7", anonymous=False, fhir_user="Patient/pat-110101",
                        patient="pat-110101")
BACKEND = Principal(subject="system/his-sync", client_id="his-sync", address="10.12.0.8",
                    anonymous=False)
ANONYMOUS = Principal(address="127.0.0.1")

# who, what, status, query, detail, versions returned, the patient
Case = tuple[Principal, Interaction, int, str | None, str | None, list[str], str | None]

CASES: list[Case] = [
    # a clinician's read of a lab result
    (DOCTOR, Interaction("read", "Observation", "obs-xuetang-1"), 200, None, None,
     ["Observation/obs-xuetang-1/_history/3"], "pat-110101"),
    # a patient's app searching its own results (query kept, base64, in the AuditEvent)
    (PATIENT_APP, Interaction("search-type", "Observation"), 200,
     "patient=pat-110101&code=http%3A%2F%2Floinc.org%7C2345-7", None,
     ["Observation/obs-xuetang-1/_history/3", "Observation/obs-xuetang-2/_history/1"],
     "pat-110101"),
    # a refused operation, with why
    (BACKEND, Interaction("operation", "Patient", "pat-110101", "$everything"), 403, None,
     "scope system/Patient.r does not allow $everything", [], "pat-110101"),
    # an anonymous miss touching no patient
    (ANONYMOUS, Interaction("read", "Organization", "org-0001"), 401, None,
     "no access token", [], None),
]


def direct(keyer: Keyer, id_: str, now_ms: int, case: Case) -> AuditRow:
    """The AuditEvent row as the request path builds it for writes (no raw step)."""
    principal, interaction, status, query, detail, refs, patient = case
    key = keyer.patient(patient)
    event = events.rest_event(id_, format_instant_ms(now_ms), interaction, status, principal,
                              patient, key, refs, SOURCE, query, detail)
    body = canonical_json(event)
    return AuditRow(id_, now_ms, patient, event["action"], event["outcome"],
                    principal.fhir_user or principal.subject, principal.client_id, body,
                    access_entry(sha256(body), key, event["action"]))


def raw_of(id_: str, now_ms: int, case: Case) -> RawAccess:
    principal, interaction, status, query, detail, refs, patient = case
    return sealing.encode(id_, now_ms, patient, interaction, status, principal, SOURCE, query,
                          detail, refs)


@pytest.mark.parametrize("case", CASES, ids=["read", "search", "refused", "anonymous"])
def test_a_sealed_raw_access_is_the_auditevent_the_request_would_have_built(
        keyer: Keyer, case: Case) -> None:
    now_ms = 1_795_400_000_137
    raw = raw_of("3f9c2a7d1e6b4c08000000000001", now_ms, case)
    assert len(raw.data) < 400  # a raw access is small: no AuditEvent JSON on the read path
    sealed = sealing.Sealer(keyer)([raw])
    assert sealed == [direct(keyer, "3f9c2a7d1e6b4c08000000000001", now_ms, case)]


def test_a_raw_access_of_another_format_is_refused(keyer: Keyer) -> None:
    with pytest.raises(ValueError, match="format"):
        sealing.decode(orjson.dumps([2, "read"]))


class Files:
    def __init__(self, var: Path) -> None:
        self.audit_path = var / "audit.sqlite3"
        self.raw_path = raw_path_of(self.audit_path)
        with closing(self.connect(self.audit_path)) as db:
            db.executescript(AUDIT_SCHEMA)
        with closing(self.connect(self.raw_path)) as db:
            db.executescript(RAW_SCHEMA)

    @staticmethod
    def connect(path: Path) -> sqlite3.Connection:
        conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        return conn

    def record(self, n: int, start: int = 0, recorded_ms: int | None = None) -> list[str]:
        ids = [f"3f9c2a7d1e6b4c08{i:012x}" for i in range(start, start + n)]
        when = recorded_ms if recorded_ms is not None else int(time.time() * 1000)
        with closing(self.connect(self.raw_path)) as db:
            db.executemany("INSERT INTO audit_raw(id, recorded_ms, patient, data) "
                           "VALUES (?, ?, ?, ?)",
                           [(r.id, r.recorded_ms, r.patient, r.data)
                            for r in (raw_of(i, when, CASES[k % len(CASES)])
                                      for k, i in enumerate(ids))])
        return ids

    def sealed_ids(self) -> list[str]:
        with closing(self.connect(self.audit_path)) as db:
            return [i for (i,) in db.execute("SELECT id FROM audit ORDER BY seq")]

    def raw_count(self) -> int:
        with closing(self.connect(self.raw_path)) as db:
            return int(db.execute("SELECT count(*) FROM audit_raw").fetchone()[0])

    def seal(self, keyer: Keyer, before_ms: int | None = None) -> int:
        with closing(self.connect(self.raw_path)) as raw, \
                closing(self.connect(self.audit_path)) as audit:
            return seal_raw(raw, audit, sealing.Sealer(keyer), before_ms)


@pytest.fixture
def files(tmp_path: Path) -> Iterator[Files]:
    yield Files(tmp_path)


def test_sealing_moves_every_raw_access_once_in_order(files: Files, keyer: Keyer) -> None:
    ids = files.record(12_345)  # more than one chunk
    assert files.seal(keyer) == 12_345
    assert files.sealed_ids() == ids and files.raw_count() == 0
    assert files.seal(keyer) == 0


def test_a_crash_between_the_two_files_neither_loses_nor_doubles(
        files: Files, keyer: Keyer) -> None:
    """The AuditEvents committed, then the process died before the raw rows were deleted."""
    ids = files.record(40)
    rows = sealing.Sealer(keyer)([raw_of(i, 0, CASES[k % len(CASES)])
                                  for k, i in enumerate(ids[:25])])
    with closing(files.connect(files.audit_path)) as db:
        db.executemany("INSERT INTO audit(id, recorded_ms, patient, action, outcome, agent, "
                       "client, body, entry) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       [(r.id, r.recorded_ms, r.patient, r.action, r.outcome, r.agent, r.client,
                         r.body, r.entry) for r in rows])
    assert files.seal(keyer) == 40
    assert files.sealed_ids() == ids and files.raw_count() == 0


def test_concurrent_sealers_seal_each_access_exactly_once(files: Files, keyer: Keyer) -> None:
    """Workers' housekeeping and the anchoring worker may seal at the same moment while reads
    keep recording."""
    errors: list[BaseException] = []
    stop = threading.Event()
    recorded: list[str] = []

    def seal_until_stopped() -> None:
        try:
            while not stop.is_set():
                files.seal(keyer)
        except BaseException as exc:
            errors.append(exc)

    sealers = [threading.Thread(target=seal_until_stopped) for _ in range(3)]
    for t in sealers:
        t.start()
    for batch in range(30):
        recorded += files.record(97, start=batch * 97)
    stop.set()
    for t in sealers:
        t.join()
    assert errors == []
    files.seal(keyer)
    assert sorted(files.sealed_ids()) == sorted(recorded) and files.raw_count() == 0


def test_housekeeping_seals_only_what_waited_past_the_grace_period(
        files: Files, keyer: Keyer) -> None:
    now = int(time.time() * 1000)
    old = files.record(3, recorded_ms=now - 5000)
    files.record(2, start=3, recorded_ms=now)
    assert files.seal(keyer, before_ms=now - 2000) == 3
    assert files.sealed_ids() == old and files.raw_count() == 2
