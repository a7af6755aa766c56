"""Crash recovery of the embedded store: `kill -9` mid-stream loses no acknowledged write and
leaves no partial one.

The SQLite store commits each interaction (and each transaction Bundle) as one `BEGIN IMMEDIATE`
transaction in WAL mode; a process killed between two statements leaves an uncommitted WAL tail
that SQLite discards when the next process opens the file. These tests check that promise from
the outside: a real `yilian serve` takes concurrent creates, updates and 50-entry transaction
Bundles of realistic Chinese hospital data, is killed with SIGKILL at a random moment, and is
started again on the same store. Then every acknowledged write must be readable at (at least)
its acknowledged version, every Bundle must be present entirely or not at all, and search,
history and reads must agree on what is stored.
"""

from __future__ import annotations

import copy
import os
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from app.samples import HospitalGenerator, transaction_bundle
from app.samples.hospital import OID_ID_CARD, PANELS
from app.server import create_app
from tests.conftest import FHIR_JSON, make_settings
from tests.live_server import LiveServer

Resource = dict[str, Any]

WRITER_THREADS = 4
BUNDLE_ENTRIES = 50
MAX_STEPS_PER_THREAD = 2000  # bounds the stream even if the kill never comes
MIN_ACKED_BUNDLES = 4
MIN_ACKED_SINGLE_WRITES = 40
STREAM_TIMEOUT = 60.0


# -- realistic payloads --------------------------------------------------------------------------

def patient_record(gen: HospitalGenerator, patient: Resource, size: int) -> list[Resource]:
    """`size` resources about one patient: the Patient, encounters, diagnoses, lab results."""
    encounters = list(gen.encounters(patient, 3))
    out: list[Resource] = [patient, *encounters]
    for enc in encounters:
        out += list(gen.conditions(patient, enc))
    panels = list(PANELS)
    report_seq = obs_seq = 1
    while len(out) < size:
        room = size - len(out) - 1  # one entry goes to the DiagnosticReport
        panel = PANELS[panels[report_seq % len(panels)]]
        if room < 1:
            break
        items = min(len(panel.items), room)
        out += list(gen.lab_panel(patient, encounters[report_seq % len(encounters)], panel.name,
                                  report_seq=report_seq, obs_seq=obs_seq, items=items))
        obs_seq += items
        report_seq += 1
    return out[:size]


def with_phone(patient: Resource, phone: str) -> Resource:
    body = copy.deepcopy(patient)
    body["telecom"] = [{"system": "phone", "use": "mobile", "value": phone}]
    return body


def identity_number(patient: Resource) -> str:
    return next(i["value"] for i in patient["identifier"] if i["system"] == OID_ID_CARD)


# -- what the clients were told ------------------------------------------------------------------

@dataclass
class PatientAck:
    id: str
    id_number: str
    body: Resource  # as last sent, without meta
    phones: dict[int, str] = field(default_factory=dict)  # acknowledged version -> phone sent


@dataclass
class BundleSent:
    label: str
    method: str  # PUT: keys are known; POST: the server assigns ids
    keys: list[str]  # Type/id (PUT bundles)
    patient_id_number: str
    counts: dict[str, int]  # resources per type in the bundle
    acked: bool = False


@dataclass
class Ledger:
    """One writer thread's record: only what the server acknowledged counts as written."""

    patients: list[PatientAck] = field(default_factory=list)
    observations: list[str] = field(default_factory=list)
    bundles: list[BundleSent] = field(default_factory=list)
    in_flight: list[str] = field(default_factory=list)
    in_flight_patient_numbers: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def single_writes(self) -> int:
        return sum(len(p.phones) for p in self.patients) + len(self.observations)


@dataclass
class Workload:
    singles: list[Resource]  # Patients to POST one by one
    bundles: list[tuple[str, list[Resource]]]  # ("PUT" | "POST", resources)
    lab_templates: list[Resource]


def build_workload(seed: int) -> Workload:
    gen = HospitalGenerator()
    people = list(gen.patients(WRITER_THREADS * (MAX_STEPS_PER_THREAD // 4 + 40)))
    rng = random.Random(seed)
    bundle_people = people[: WRITER_THREADS * 40]
    singles = people[WRITER_THREADS * 40:]
    bundles = [("PUT" if i % 2 == 0 else "POST", patient_record(gen, p, BUNDLE_ENTRIES))
               for i, p in enumerate(bundle_people)]
    templates = [r for r in patient_record(gen, rng.choice(bundle_people), 30)
                 if r["resourceType"] == "Observation"]
    return Workload(singles, bundles, templates)


# -- the stream ----------------------------------------------------------------------------------

class Writer:
    """One client thread sending creates, updates and transactions until the server dies."""

    def __init__(self, server: LiveServer, n: int, workload: Workload, seed: int,
                 stop: threading.Event) -> None:
        self.server = server
        self.n = n
        self.rng = random.Random(seed * 100 + n)
        self.singles = iter(workload.singles[n::WRITER_THREADS])
        self.bundles = iter(workload.bundles[n::WRITER_THREADS])
        self.templates = workload.lab_templates
        self.stop = stop
        self.ledger = Ledger()
        self.phone_seq = 0

    def next_phone(self) -> str:
        self.phone_seq += 1
        return f"139{self.n:02d}{self.phone_seq:06d}"

    def run(self) -> None:
        with self.server.client() as http:
            for _ in range(MAX_STEPS_PER_THREAD):
                if self.stop.is_set():
                    return
                roll = self.rng.random()
                try:
                    if roll < 0.15:
                        self.send_bundle(http)
                    elif roll < 0.45 or not self.ledger.patients:
                        self.create_patient(http)
                    elif roll < 0.85:
                        self.update_patient(http)
                    else:
                        self.create_observation(http)
                except (httpx.TransportError, StopIteration):
                    return  # the server is gone (or the payloads ran out): stop writing

    def create_patient(self, http: httpx.Client) -> None:
        template = next(self.singles)
        phone = self.next_phone()
        body = with_phone({k: v for k, v in template.items() if k != "id"}, phone)
        what = f"POST Patient {identity_number(body)}"
        self.ledger.in_flight.append(what)
        self.ledger.in_flight_patient_numbers.append(identity_number(body))
        r = http.post("/Patient", json=body, headers=FHIR_JSON)
        self.ledger.in_flight.pop()
        self.ledger.in_flight_patient_numbers.pop()
        if r.status_code != 201:
            self.ledger.errors.append(f"{what}: {r.status_code} {r.text[:300]}")
            return
        created = r.json()
        ack = PatientAck(created["id"], identity_number(body), body)
        ack.phones[int(created["meta"]["versionId"])] = phone
        self.ledger.patients.append(ack)

    def update_patient(self, http: httpx.Client) -> None:
        if not self.ledger.patients:
            return
        ack = self.rng.choice(self.ledger.patients)
        phone = self.next_phone()
        body = with_phone({**ack.body, "id": ack.id}, phone)
        last = max(ack.phones)
        headers = dict(FHIR_JSON)
        if self.rng.random() < 0.5:
            headers["If-Match"] = f'W/"{last}"'
        what = f"PUT Patient/{ack.id} (after version {last})"
        self.ledger.in_flight.append(what)
        r = http.put(f"/Patient/{ack.id}", json=body, headers=headers)
        self.ledger.in_flight.pop()
        if r.status_code != 200:
            self.ledger.errors.append(f"{what}: {r.status_code} {r.text[:300]}")
            return
        version = int(r.json()["meta"]["versionId"])
        if version != last + 1:
            # Only this thread writes this patient, so versions must follow one another.
            self.ledger.errors.append(f"{what}: acknowledged version {version}, expected "
                                      f"{last + 1}")
        ack.body = body
        ack.phones[version] = phone

    def create_observation(self, http: httpx.Client) -> None:
        if not self.ledger.patients:
            return
        subject = self.rng.choice(self.ledger.patients)
        body = {k: v for k, v in self.rng.choice(self.templates).items()
                if k not in ("id", "encounter")}
        body["subject"] = {"reference": f"Patient/{subject.id}"}
        self.ledger.in_flight.append(f"POST Observation for Patient/{subject.id}")
        r = http.post("/Observation", json=body, headers=FHIR_JSON)
        self.ledger.in_flight.pop()
        if r.status_code != 201:
            self.ledger.errors.append(f"POST Observation: {r.status_code} {r.text[:300]}")
            return
        self.ledger.observations.append(r.json()["id"])

    def send_bundle(self, http: httpx.Client) -> None:
        method, resources = next(self.bundles)
        counts: dict[str, int] = {}
        for res in resources:
            counts[res["resourceType"]] = counts.get(res["resourceType"], 0) + 1
        keys = [f"{r['resourceType']}/{r['id']}" for r in resources]
        bundle = transaction_bundle(resources, method="PUT" if method == "PUT" else "POST")
        sent = BundleSent(f"{method} bundle of {keys[0]}", method, keys,
                          identity_number(resources[0]), counts)
        self.ledger.bundles.append(sent)
        self.ledger.in_flight.append(sent.label)
        r = http.post(self.server.base_url, json=bundle, headers=FHIR_JSON)
        self.ledger.in_flight.pop()
        if r.status_code != 200:
            self.ledger.errors.append(f"{sent.label}: {r.status_code} {r.text[:300]}")
            return
        statuses = [e["response"]["status"] for e in r.json()["entry"]]
        if len(statuses) != len(resources) or not all(s.startswith("201") for s in statuses):
            self.ledger.errors.append(f"{sent.label}: entry statuses {statuses}")
        sent.acked = True


def load_reference_data(server: LiveServer) -> None:
    """The hospital and its doctors, which every encounter and report refers to."""
    gen = HospitalGenerator()
    bundle = transaction_bundle([gen.organization(), *gen.practitioners()])
    with server.client() as http:
        r = http.post(server.base_url, json=bundle, headers=FHIR_JSON)
    assert r.status_code == 200, r.text


def run_stream_and_kill(server: LiveServer, workload: Workload,
                        seed: int) -> tuple[list[Ledger], float]:
    """Run the writers, SIGKILL the server at a random moment once enough was acknowledged."""
    stop = threading.Event()
    writers = [Writer(server, n, workload, seed, stop) for n in range(WRITER_THREADS)]
    threads = [threading.Thread(target=w.run, name=f"writer-{w.n}") for w in writers]
    for t in threads:
        t.start()
    rng = random.Random(seed)
    started = time.monotonic()
    try:
        while time.monotonic() - started < STREAM_TIMEOUT:
            acked_bundles = sum(b.acked for w in writers for b in w.ledger.bundles)
            singles = sum(w.ledger.single_writes for w in writers)
            if acked_bundles >= MIN_ACKED_BUNDLES and singles >= MIN_ACKED_SINGLE_WRITES:
                break
            if not any(t.is_alive() for t in threads):
                break
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 1.0))
    finally:
        killed_after = time.monotonic() - started
        server.kill()
        stop.set()
        for t in threads:
            t.join(timeout=90)
    assert not any(t.is_alive() for t in threads), "a writer thread did not stop"
    return [w.ledger for w in writers], killed_after


# -- the checks after the restart ----------------------------------------------------------------

def total(http: httpx.Client, query: str) -> int:
    r = http.get(query + ("&" if "?" in query else "?") + "_summary=count")
    assert r.status_code == 200, f"GET {query}: {r.status_code} {r.text[:300]}"
    return int(r.json()["total"])


def check_patient(http: httpx.Client, ack: PatientAck) -> list[str]:
    problems = []
    acked = max(ack.phones)
    r = http.get(f"/Patient/{ack.id}")
    if r.status_code != 200:
        return [f"Patient/{ack.id} acknowledged at version {acked}: read answers "
                f"{r.status_code} {r.text[:200]}"]
    current = r.json()
    version = int(current["meta"]["versionId"])
    if version < acked:
        problems.append(f"Patient/{ack.id}: acknowledged version {acked}, current is {version}")
    for v, phone in ack.phones.items():
        rv = http.get(f"/Patient/{ack.id}/_history/{v}")
        got = rv.json().get("telecom", [{}])[0].get("value") if rv.status_code == 200 else None
        if got != phone:
            problems.append(f"Patient/{ack.id} version {v} was acknowledged with phone {phone}; "
                            f"vread answers {rv.status_code} with phone {got}")
    hist = http.get(f"/Patient/{ack.id}/_history", params={"_count": 1000}).json()
    versions = sorted(int(e["response"]["etag"].split('"')[1]) for e in hist.get("entry", []))
    if versions != list(range(1, version + 1)):
        problems.append(f"Patient/{ack.id}: current version {version} but _history holds "
                        f"versions {versions}")
    found = http.get("/Patient", params={"identifier": f"{OID_ID_CARD}|{ack.id_number}"}).json()
    found_ids = [e["resource"]["id"] for e in found.get("entry", [])]
    if found_ids != [ack.id]:
        problems.append(f"Patient/{ack.id}: search by its 身份证号 {ack.id_number} finds "
                        f"{found_ids}")
    phone = current["telecom"][0]["value"]
    by_phone = http.get("/Patient", params={"phone": phone}).json()
    phone_ids = [e["resource"]["id"] for e in by_phone.get("entry", [])]
    if phone_ids != [ack.id]:
        problems.append(f"Patient/{ack.id}: search by its current phone {phone} (version "
                        f"{version}) finds {phone_ids}: the index disagrees with the resource")
    return problems


def check_bundle(http: httpx.Client, sent: BundleSent) -> list[str]:
    found = http.get("/Patient", params={"identifier": f"{OID_ID_CARD}|"
                                         f"{sent.patient_id_number}"}).json()
    patient_ids = [e["resource"]["id"] for e in found.get("entry", [])]
    if len(patient_ids) > 1:
        return [f"{sent.label}: its patient is stored {len(patient_ids)} times: {patient_ids}"]
    present: dict[str, int] = {}
    if sent.method == "PUT":
        missing = []
        for key in sent.keys:
            r = http.get(f"/{key}")
            if r.status_code == 200:
                present[key.split("/")[0]] = present.get(key.split("/")[0], 0) + 1
            elif r.status_code == 404:
                missing.append(key)
            else:
                return [f"{sent.label}: GET {key} answers {r.status_code} {r.text[:200]}"]
        if present and missing:
            return [f"{sent.label} is partly stored: {sum(present.values())} of "
                    f"{len(sent.keys)} entries, missing {missing[:5]}"]
    if patient_ids:
        pid = patient_ids[0]
        for rtype in ("Encounter", "Condition", "Observation", "DiagnosticReport"):
            present_by_search = total(http, f"/{rtype}?subject=Patient/{pid}")
            if sent.method == "PUT" and present.get(rtype, 0) != present_by_search:
                return [f"{sent.label}: {present.get(rtype, 0)} {rtype}s can be read but "
                        f"search by subject finds {present_by_search}"]
            present[rtype] = present_by_search
        present["Patient"] = 1
    stored = sum(present.values())
    if sent.acked and present != sent.counts:
        return [f"{sent.label} was acknowledged but after the restart holds {present} instead "
                f"of {sent.counts}"]
    if stored and present != sent.counts:
        return [f"{sent.label} is partly stored: {present} of {sent.counts}"]
    return []


def check_everything(server: LiveServer, ledgers: list[Ledger]) -> list[str]:
    problems: list[str] = []
    with server.client() as http:
        for ledger in ledgers:
            for ack in ledger.patients:
                problems += check_patient(http, ack)
            for oid in ledger.observations:
                r = http.get(f"/Observation/{oid}")
                if r.status_code != 200:
                    problems.append(f"Observation/{oid} was acknowledged; read answers "
                                    f"{r.status_code}")
            for sent in ledger.bundles:
                problems += check_bundle(http, sent)
            for number in ledger.in_flight_patient_numbers:
                hits = total(http, f"/Patient?identifier={OID_ID_CARD}|{number}")
                if hits > 1:
                    problems.append(f"the in-flight create of 身份证号 {number} is stored "
                                    f"{hits} times")
        # Nothing beyond what was sent: every stored Patient is acknowledged, from a Bundle
        # that was sent, or the one create that was in flight when the server died.
        acked = sum(len(ledger.patients) for ledger in ledgers)
        in_flight = sum(len(ledger.in_flight_patient_numbers) for ledger in ledgers)
        bundled = sum(1 for ledger in ledgers for b in ledger.bundles
                      if total(http, f"/Patient?identifier={OID_ID_CARD}|"
                                     f"{b.patient_id_number}"))
        stored = total(http, "/Patient")
        if not acked + bundled <= stored <= acked + bundled + in_flight:
            problems.append(f"{stored} Patients are stored; expected {acked} acknowledged + "
                            f"{bundled} from Bundles + at most {in_flight} in flight")
        # The restarted server keeps working on the recovered store.
        r = http.post("/Organization", json={"resourceType": "Organization",
                                             "name": "北京市西城区展览路社区卫生服务中心"},
                      headers=FHIR_JSON)
        if r.status_code != 201:
            problems.append(f"a write after the restart answers {r.status_code} {r.text[:200]}")
    return problems


@pytest.fixture
def seed() -> int:
    value = int(os.environ.get("YILIAN_CRASH_SEED", random.randrange(1_000_000)))
    print(f"crash test seed: {value} (rerun with YILIAN_CRASH_SEED={value})")
    return value


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_kill_9_mid_stream_loses_no_acknowledged_write_and_leaves_no_partial_one(
        tmp_path: Path, seed: int, workers: int) -> None:
    workload = build_workload(seed)
    server = LiveServer(tmp_path / "var", workers=workers).start()
    try:
        load_reference_data(server)
        ledgers, killed_after = run_stream_and_kill(server, workload, seed)
        errors = [e for ledger in ledgers for e in ledger.errors]
        assert not errors, f"writes failed before the kill (seed {seed}):\n" + "\n".join(
            errors[:20]) + "\n" + "\n".join(server.tracebacks()[:3])
        acked_bundles = sum(b.acked for ledger in ledgers for b in ledger.bundles)
        singles = sum(ledger.single_writes for ledger in ledgers)
        assert acked_bundles >= MIN_ACKED_BUNDLES and singles >= MIN_ACKED_SINGLE_WRITES, (
            f"the stream acknowledged only {acked_bundles} bundles and {singles} writes in "
            f"{killed_after:.1f}s")
        in_flight = [w for ledger in ledgers for w in ledger.in_flight]
        print(f"killed after {killed_after:.2f}s: {singles} single writes and {acked_bundles} "
              f"bundles acknowledged; in flight: {in_flight}")

        server.start()
        problems = check_everything(server, ledgers)
        assert not problems, (f"after kill -9 and restart (seed {seed}, in flight at the kill: "
                              f"{in_flight}):\n" + "\n".join(problems[:30]))
    finally:
        server.stop()


# -- a rolled-back transaction and a restart -----------------------------------------------------

def test_search_index_survives_a_rolled_back_transaction_and_a_restart(tmp_path: Path) -> None:
    """A transaction that fails after indexing the first resource of a type must not leave the
    store unable to find resources of that type once the server restarts."""
    gen = HospitalGenerator()
    people = list(gen.patients(2))
    record = patient_record(gen, people[0], 12)
    first_lab = next(r for r in record if r["resourceType"] == "Observation")
    loinc = first_lab["code"]["coding"][0]["code"]
    failing = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {k: v for k, v in first_lab.items() if k != "id"},
         "request": {"method": "POST", "url": "Observation"}},
        # The precondition fails, so the whole transaction (with the Observation) rolls back.
        {"resource": people[1], "request": {"method": "PUT", "url": f"Patient/{people[1]['id']}",
                                            "ifMatch": 'W/"3"'}},
    ]}
    with TestClient(create_app(make_settings(tmp_path))) as client:
        r = client.post("/fhir", json=failing, headers=FHIR_JSON)
        assert r.status_code == 412, r.text
        r = client.put(f"/fhir/Patient/{people[0]['id']}", json=people[0], headers=FHIR_JSON)
        assert r.status_code == 201, r.text
        r = client.put(f"/fhir/Observation/{first_lab['id']}", json=first_lab,
                       headers=FHIR_JSON)
        assert r.status_code == 201, r.text
        assert client.get(f"/fhir/Observation?code={loinc}").json()["total"] == 1

    with TestClient(create_app(make_settings(tmp_path))) as client:  # the restart
        by_code = client.get(f"/fhir/Observation?code={loinc}").json()["total"]
        by_subject = client.get(
            f"/fhir/Observation?subject=Patient/{people[0]['id']}").json()["total"]
        by_name = client.get("/fhir/Patient",
                             params={"name": people[0]["name"][0]["text"]}).json()["total"]
    assert (by_code, by_subject, by_name) == (1, 1, 1), (
        f"after a restart, search no longer finds what it found before: Observation?code={loinc}"
        f" finds {by_code}, Observation?subject finds {by_subject}, Patient?name finds {by_name}")
