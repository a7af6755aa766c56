"""Concurrent writes through several uvicorn workers (R4 http.html §3.1.0.4 versioning, §3.1.0.8
conditional create, §3.1.0.5 managing resource contention).

`yilian serve --workers 2` runs two processes on one SQLite store; each write holds
`BEGIN IMMEDIATE` from its version check to its commit, so contention between processes must look
exactly like contention inside one: one winner per If-Match version, versions without gaps or
duplicates, one resource per If-None-Exist criteria, and meta.lastUpdated that follows commit
order across workers (what `_history?_since=` synchronisation relies on). Clients are released
together by a barrier so that their requests overlap in both workers.
"""

from __future__ import annotations

import copy
import itertools
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from fastapi.testclient import TestClient

from app.samples import HospitalGenerator
from app.samples.hospital import OID_ID_CARD
from app.server import create_app
from tests.conftest import make_settings
from tests.live_server import FHIR_JSON, LiveServer

T = TypeVar("T")
Resource = dict[str, Any]

WORKERS = 2
CLIENTS = 6


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = LiveServer(Path(tmp_path_factory.mktemp("concurrency")) / "var", workers=WORKERS)
    with live:
        yield live
        assert not live.tracebacks(), "the server logged errors:\n" + "\n".join(
            live.tracebacks()[:3])


@pytest.fixture(scope="module")
def people() -> Iterator[Resource]:
    """Distinct realistic patients (distinct 身份证号), handed out one per use."""
    return iter(HospitalGenerator(seed=8).patients(200))


def identity_number(patient: Resource) -> str:
    return next(i["value"] for i in patient["identifier"] if i["system"] == OID_ID_CARD)


def with_phone(patient: Resource, phone: str) -> Resource:
    body = copy.deepcopy(patient)
    body["telecom"] = [{"system": "phone", "use": "mobile", "value": phone}]
    return body


def together(server: LiveServer, n: int, request: Callable[[httpx.Client, int], T]) -> list[T]:
    """Run `request(client, i)` for i in 0..n-1 in n threads released at the same instant."""
    barrier = threading.Barrier(n)
    clients = [server.client() for _ in range(n)]
    for c in clients:  # open the connections first, so the requests start together
        c.get("/metadata")

    def run(i: int) -> T:
        barrier.wait(timeout=30)
        return request(clients[i], i)

    try:
        with ThreadPoolExecutor(n) as pool:
            return list(pool.map(run, range(n)))
    finally:
        for c in clients:
            c.close()


def history_versions(http: httpx.Client, type_: str, id_: str) -> list[Resource]:
    r = http.get(f"/{type_}/{id_}/_history", params={"_count": 1000})
    assert r.status_code == 200, r.text
    return r.json().get("entry", [])


def version_of(entry: Resource) -> int:
    return int(entry["response"]["etag"].split('"')[1])


def assert_outcome(r: httpx.Response) -> None:
    body = r.json()
    assert body["resourceType"] == "OperationOutcome", r.text
    assert body["issue"] and body["issue"][0].get("diagnostics"), r.text


def test_if_match_updates_racing_for_one_version_have_exactly_one_winner(
        server: LiveServer, people: Iterator[Resource]) -> None:
    person = next(people)
    with server.client() as http:
        r = http.put(f"/Patient/{person['id']}", json=person, headers=FHIR_JSON)
        assert r.status_code == 201, r.text
    rounds = 8
    winners: dict[int, str] = {1: person["telecom"][0]["value"]}
    for round_no in range(rounds):
        current = round_no + 1

        def update(http: httpx.Client, i: int, current: int = current,
                   round_no: int = round_no) -> tuple[int, str, httpx.Response]:
            phone = f"1370{round_no:03d}{i:04d}"
            r = http.put(f"/Patient/{person['id']}", json=with_phone(person, phone),
                         headers={**FHIR_JSON, "If-Match": f'W/"{current}"'})
            return r.status_code, phone, r

        results = together(server, CLIENTS, update)
        statuses = Counter(status for status, _, _ in results)
        assert statuses == {200: 1, 412: CLIENTS - 1}, (
            f"round {round_no}: {CLIENTS} updates with If-Match W/\"{current}\" answered "
            f"{dict(statuses)}: " + "; ".join(r.text[:200] for _, _, r in results
                                              if r.status_code not in (200, 412)))
        for status, phone, r in results:
            if status == 200:
                assert r.json()["meta"]["versionId"] == str(current + 1)
                winners[current + 1] = phone
            else:
                assert_outcome(r)

    with server.client() as http:
        entries = history_versions(http, "Patient", person["id"])
        versions = sorted(version_of(e) for e in entries)
        assert versions == list(range(1, rounds + 2)), f"_history holds versions {versions}"
        for e in entries:
            assert e["resource"]["telecom"][0]["value"] == winners[version_of(e)], (
                f"version {version_of(e)} holds another update than the one acknowledged")
        assert http.get(f"/Patient/{person['id']}").json()["meta"]["versionId"] == str(rounds + 1)


def test_concurrent_unconditional_updates_get_distinct_consecutive_versions(
        server: LiveServer, people: Iterator[Resource]) -> None:
    person = next(people)
    with server.client() as http:
        r = http.put(f"/Patient/{person['id']}", json=person, headers=FHIR_JSON)
        assert r.status_code == 201, r.text
    per_client = 8

    def updates(http: httpx.Client, i: int) -> list[tuple[int, str]]:
        out = []
        for k in range(per_client):
            phone = f"1380{i:03d}{k:04d}"
            r = http.put(f"/Patient/{person['id']}", json=with_phone(person, phone),
                         headers=FHIR_JSON)
            assert r.status_code == 200, r.text
            out.append((int(r.json()["meta"]["versionId"]), phone))
        return out

    acked = [pair for batch in together(server, CLIENTS, updates) for pair in batch]
    n = CLIENTS * per_client
    versions = sorted(v for v, _ in acked)
    assert versions == list(range(2, n + 2)), (
        f"{n} concurrent updates were acknowledged with versions {versions}")
    phone_of = dict(acked)
    with server.client() as http:
        entries = history_versions(http, "Patient", person["id"])
        assert sorted(version_of(e) for e in entries) == list(range(1, n + 2))
        for e in entries:
            v = version_of(e)
            if v > 1:
                assert e["resource"]["telecom"][0]["value"] == phone_of[v], (
                    f"version {v} holds another update than the one acknowledged as {v}")
        by_version = sorted(entries, key=version_of)
        stamps = [e["response"]["lastModified"] for e in by_version]
        backwards = [(version_of(a), version_of(b)) for a, b in
                     itertools.pairwise(by_version)
                     if b["response"]["lastModified"] < a["response"]["lastModified"]]
        assert not backwards, (f"meta.lastUpdated goes backwards between versions {backwards} "
                               f"(stamps {stamps})")


def test_concurrent_conditional_creates_with_one_if_none_exist_make_one_resource(
        server: LiveServer, people: Iterator[Resource]) -> None:
    for _ in range(4):
        person = {k: v for k, v in next(people).items() if k != "id"}
        criteria = f"identifier={OID_ID_CARD}|{identity_number(person)}"

        def create(http: httpx.Client, i: int, person: Resource = person,
                   criteria: str = criteria) -> httpx.Response:
            return http.post("/Patient", json=person,
                             headers={**FHIR_JSON, "If-None-Exist": criteria})

        results = together(server, CLIENTS, create)
        statuses = Counter(r.status_code for r in results)
        ids = {r.json().get("id") for r in results if r.status_code in (200, 201)}
        with server.client() as http:
            stored = http.get(f"/Patient?{criteria}").json()["total"]
        assert (statuses, len(ids), stored) == (Counter({201: 1, 200: CLIENTS - 1}), 1, 1), (
            f"{CLIENTS} concurrent creates with If-None-Exist: {criteria} answered "
            f"{dict(statuses)} with ids {ids}; {stored} Patients match the criteria now")


def test_concurrent_conditional_updates_of_a_new_resource_make_one_resource(
        server: LiveServer, people: Iterator[Resource]) -> None:
    person = {k: v for k, v in next(people).items() if k != "id"}
    criteria = f"identifier={OID_ID_CARD}|{identity_number(person)}"

    def upsert(http: httpx.Client, i: int) -> httpx.Response:
        return http.put(f"/Patient?{criteria}", json=with_phone(person, f"1390000{i:04d}"),
                        headers=FHIR_JSON)

    results = together(server, CLIENTS, upsert)
    statuses = Counter(r.status_code for r in results)
    ids = {r.json().get("id") for r in results if r.status_code in (200, 201)}
    versions = sorted(int(r.json()["meta"]["versionId"]) for r in results
                      if r.status_code in (200, 201))
    with server.client() as http:
        stored = http.get(f"/Patient?{criteria}").json()["total"]
    assert (statuses, len(ids), stored) == (Counter({201: 1, 200: CLIENTS - 1}), 1, 1), (
        f"{CLIENTS} concurrent conditional updates of {criteria} answered {dict(statuses)} "
        f"with ids {ids}; {stored} Patients match now")
    assert versions == list(range(1, CLIENTS + 1))


def test_concurrent_transactions_with_one_if_none_exist_make_one_patient(
        server: LiveServer, people: Iterator[Resource]) -> None:
    person = {k: v for k, v in next(people).items() if k != "id"}
    criteria = f"identifier={OID_ID_CARD}|{identity_number(person)}"
    urn = "urn:uuid:3f0c8a52-6a1e-4c59-9d7e-0b4f5c1d2e3a"

    def transaction(http: httpx.Client, i: int) -> httpx.Response:
        bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
            {"fullUrl": urn, "resource": person,
             "request": {"method": "POST", "url": "Patient", "ifNoneExist": criteria}},
            {"resource": {
                "resourceType": "Observation", "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4",
                                     "display": "Heart rate"}], "text": "心率"},
                "subject": {"reference": urn},
                "effectiveDateTime": f"2026-11-20T08:{i:02d}:00+08:00",
                "valueQuantity": {"value": 72 + i, "unit": "次/分",
                                  "system": "http://unitsofmeasure.org", "code": "/min"}},
             "request": {"method": "POST", "url": "Observation"}}]}
        return http.post(server.base_url, json=bundle, headers=FHIR_JSON)

    results = together(server, CLIENTS, transaction)
    assert all(r.status_code == 200 for r in results), [r.text[:300] for r in results]
    with server.client() as http:
        found = http.get(f"/Patient?{criteria}").json()
        assert found["total"] == 1, f"{found['total']} Patients match {criteria}"
        pid = found["entry"][0]["resource"]["id"]
        observations = http.get(f"/Observation?subject=Patient/{pid}").json()["total"]
    assert observations == CLIENTS, (
        f"{observations} of {CLIENTS} Observations point at the one Patient")


def test_if_match_deletes_racing_have_exactly_one_winner(
        server: LiveServer, people: Iterator[Resource]) -> None:
    person = next(people)
    with server.client() as http:
        assert http.put(f"/Patient/{person['id']}", json=person,
                        headers=FHIR_JSON).status_code == 201

    def delete(http: httpx.Client, i: int) -> httpx.Response:
        return http.delete(f"/Patient/{person['id']}", headers={"If-Match": 'W/"1"'})

    results = together(server, CLIENTS, delete)
    statuses = Counter(r.status_code for r in results)
    assert statuses == {204: 1, 412: CLIENTS - 1}, dict(statuses)
    with server.client() as http:
        assert http.get(f"/Patient/{person['id']}").status_code == 410
        assert sorted(version_of(e) for e in history_versions(
            http, "Patient", person["id"])) == [1, 2]


def _basic_bundle(tag: str, n: int) -> Resource:
    """A transaction of `n` small follow-up records (many writes per millisecond)."""
    return {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Basic", "id": f"{tag}-{i}",
                      "code": {"text": "随访登记"}},
         "request": {"method": "PUT", "url": f"Basic/{tag}-{i}"}} for i in range(n)]}


def test_last_updated_never_runs_ahead_of_the_clock(tmp_path: Path) -> None:
    """meta.lastUpdated is when the version was stored: a version acknowledged at wall-clock
    time T cannot carry a later lastUpdated (one process, so this is deterministic)."""
    with TestClient(create_app(make_settings(tmp_path))) as client:
        r = client.post("/fhir", json=_basic_bundle("sf", 2000), headers=FHIR_JSON)
        acknowledged = datetime.now(UTC)
        assert r.status_code == 200, r.text[:300]
        latest = max(e["response"]["lastModified"] for e in r.json()["entry"])
    stamp = datetime.fromisoformat(latest.replace("Z", "+00:00"))
    ahead = (stamp - acknowledged).total_seconds()
    assert ahead <= 0.05, (f"a transaction acknowledged at {acknowledged.isoformat()} stored "
                           f"versions with lastUpdated {latest}, {ahead:.3f}s in the future")


def test_history_since_the_last_seen_update_finds_every_later_write(
        server: LiveServer) -> None:
    """A client that syncs with `_history?_since=<latest lastUpdated it has seen>` must see every
    write acknowledged after that, whichever worker stored it."""
    misses = []
    for attempt in range(6):
        with server.client() as bulk:
            r = bulk.post(server.base_url, json=_basic_bundle(f"sync{attempt}", 1000),
                          headers=FHIR_JSON)
            assert r.status_code == 200, r.text[:300]
            seen = max(e["response"]["lastModified"] for e in r.json()["entry"])
        # A fresh connection: it may be accepted by either worker.
        with server.client() as later:
            body = {"resourceType": "Basic", "id": f"later-{attempt}", "code": {"text": "复诊"}}
            r = later.put(f"/Basic/later-{attempt}", json=body, headers=FHIR_JSON)
            assert r.status_code == 201, r.text
            written = r.json()["meta"]["lastUpdated"]
            history = later.get("/Basic/_history", params={"_since": seen, "_count": 1000})
            found = [e["fullUrl"].rsplit("/", 1)[1] for e in history.json().get("entry", [])]
        if f"later-{attempt}" not in found:
            misses.append(f"attempt {attempt}: Basic/later-{attempt} written after the bundle "
                          f"got lastUpdated {written}, before the bundle's {seen}")
    assert not misses, ("_history?_since misses writes acknowledged later:\n"
                        + "\n".join(misses))
