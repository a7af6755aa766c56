"""History (instance/type/system, _since, _at, paging), $validate and Patient/$everything."""

from __future__ import annotations

import time
from urllib.parse import urlsplit

from fastapi.testclient import TestClient

from tests.conftest import FHIR_JSON, condition, lab, patient


def put(client: TestClient, body: dict) -> dict:
    r = client.put(f"/fhir/{body['resourceType']}/{body['id']}", json=body, headers=FHIR_JSON)
    assert r.status_code in (200, 201), r.text
    return r.json()


def test_instance_type_and_system_history(client: TestClient) -> None:
    first = put(client, patient("p1"))["meta"]["lastUpdated"]
    put(client, {**patient("p1"), "gender": "female"})
    put(client, {**lab("p1"), "id": "o1"})
    inst = client.get("/fhir/Patient/p1/_history").json()
    assert inst["type"] == "history" and inst["total"] == 2
    assert [e["resource"]["meta"]["versionId"] for e in inst["entry"]] == ["2", "1"]
    assert client.get("/fhir/Patient/_history").json()["total"] == 2
    # System history also holds the CN conformance resources stored at start-up.
    system = client.get("/fhir/_history", params={"_since": first}).json()
    assert system["total"] == 3
    assert system["entry"][0]["request"]["url"] == "Observation/o1"
    assert client.get("/fhir/Patient/none/_history").status_code == 404


def test_history_since_at_and_paging(client: TestClient) -> None:
    put(client, patient("p1"))
    time.sleep(0.01)
    mid = client.get("/fhir/Patient/p1").json()["meta"]["lastUpdated"]
    time.sleep(0.01)
    put(client, {**patient("p1"), "gender": "female"})
    put(client, {**patient("p1"), "gender": "other"})
    since = client.get(f"/fhir/Patient/p1/_history?_since={mid}").json()
    assert since["total"] == 3
    after = client.get("/fhir/Patient/p1/_history",
                       params={"_since": since["entry"][1]["resource"]["meta"]["lastUpdated"]})
    assert after.json()["total"] == 2
    at = client.get("/fhir/Patient/p1/_history", params={"_at": mid}).json()
    assert [e["resource"]["meta"]["versionId"] for e in at["entry"]] == ["1"]
    page = client.get("/fhir/Patient/p1/_history?_count=2").json()
    assert len(page["entry"]) == 2
    nxt = next(link["url"] for link in page["link"] if link["relation"] == "next")
    put(client, {**patient("p1"), "gender": "unknown"})  # must not shift the next page
    page2 = client.get(urlsplit(nxt).path + "?" + urlsplit(nxt).query).json()
    assert [e["resource"]["meta"]["versionId"] for e in page2["entry"]] == ["1"]
    assert client.get("/fhir/_history?_since=notadate").status_code == 400


def test_validate_type_and_instance_level(client: TestClient) -> None:
    ok = client.post("/fhir/Patient/$validate", json=patient(), headers=FHIR_JSON)
    assert ok.status_code == 200
    assert ok.json()["issue"][0]["severity"] == "information"
    bad = client.post("/fhir/Patient/$validate", json={**patient(), "gender": "男"},
                      headers=FHIR_JSON)
    assert bad.status_code == 200
    assert any(i["severity"] == "error" for i in bad.json()["issue"])
    params = {"resourceType": "Parameters", "parameter": [
        {"name": "resource", "resource": patient()}, {"name": "mode", "valueCode": "create"}]}
    assert client.post("/fhir/Patient/$validate", json=params,
                       headers=FHIR_JSON).json()["issue"][0]["severity"] == "information"
    put(client, patient("p1"))
    assert client.get("/fhir/Patient/p1/$validate").status_code == 200
    assert client.get("/fhir/Patient/zz/$validate").status_code == 404
    assert client.post("/fhir/Patient/$validate?mode=bogus", json=patient(),
                       headers=FHIR_JSON).status_code == 400


def test_everything_returns_the_compartment_with_type_since_and_paging(client: TestClient) -> None:
    put(client, patient("p1"))
    put(client, patient("p2", mrn="B2"))
    put(client, {**lab("p1"), "id": "o1"})
    put(client, {**lab("p2"), "id": "o2"})
    put(client, {**condition("p1"), "id": "c1"})
    b = client.get("/fhir/Patient/p1/$everything").json()
    got = {(e["resource"]["resourceType"], e["resource"]["id"]) for e in b["entry"]}
    assert got == {("Patient", "p1"), ("Observation", "o1"), ("Condition", "c1")}
    b = client.get("/fhir/Patient/p1/$everything?_type=Observation").json()
    assert [e["resource"]["id"] for e in b["entry"]] == ["o1"]
    b = client.get("/fhir/Patient/p1/$everything?_count=1").json()
    assert b["total"] == 3 and len(b["entry"]) == 1
    assert any(link["relation"] == "next" for link in b["link"])
    assert client.get("/fhir/Patient/none/$everything").status_code == 404
