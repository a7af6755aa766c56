"""Transaction and batch Bundles (R4 http.html §3.1.0.11)."""

from __future__ import annotations

import base64
import json

from fastapi.testclient import TestClient

from tests.conftest import FHIR_JSON, ID_SYSTEM, lab, patient


def post_bundle(client: TestClient, bundle: dict) -> tuple[int, dict]:
    r = client.post("/fhir", json=bundle, headers=FHIR_JSON)
    return r.status_code, r.json()


def test_transaction_resolves_urn_uuid_references_and_is_ordered(client: TestClient) -> None:
    pat_url = "urn:uuid:8d1f3c9e-1c53-4d2f-9a52-3f0f3b1f0a01"
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:0b6f2c4a-7e8d-4c1b-9a0e-1f2d3c4b5a60",
         "resource": {**lab("x"), "subject": {"reference": pat_url}},
         "request": {"method": "POST", "url": "Observation"}},
        {"fullUrl": pat_url, "resource": patient(),
         "request": {"method": "POST", "url": "Patient"}},
    ]}
    status, body = post_bundle(client, bundle)
    assert status == 200, body
    assert body["type"] == "transaction-response"
    obs_loc, pat_loc = (e["response"]["location"] for e in body["entry"])
    pid = pat_loc.split("/")[1]
    obs = client.get("/fhir/" + "/".join(obs_loc.split("/")[:2])).json()
    assert obs["subject"]["reference"] == f"Patient/{pid}"
    assert all(e["response"]["status"].startswith("201") for e in body["entry"])


def test_transaction_is_all_or_nothing(client: TestClient) -> None:
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": patient("ok-1"), "request": {"method": "PUT", "url": "Patient/ok-1"}},
        {"resource": {**patient("bad-1"), "gender": "男"},
         "request": {"method": "PUT", "url": "Patient/bad-1"}},
    ]}
    status, body = post_bundle(client, bundle)
    assert status in (400, 422)
    assert body["resourceType"] == "OperationOutcome"
    assert "Bundle.entry[1]" in body["issue"][0]["diagnostics"]
    assert client.get("/fhir/Patient/ok-1").status_code == 404


def test_transaction_conditional_references_and_if_none_exist(client: TestClient) -> None:
    client.put("/fhir/Patient/p1", json=patient("p1"), headers=FHIR_JSON)
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {**lab("x"), "subject": {
            "reference": f"Patient?identifier={ID_SYSTEM}|11010519491231002X"}},
         "request": {"method": "POST", "url": "Observation"}},
        {"fullUrl": "urn:uuid:1b6f2c4a-7e8d-4c1b-9a0e-1f2d3c4b5a61", "resource": patient(),
         "request": {"method": "POST", "url": "Patient",
                     "ifNoneExist": f"identifier={ID_SYSTEM}|11010519491231002X"}},
    ]}
    status, body = post_bundle(client, bundle)
    assert status == 200, body
    loc = body["entry"][0]["response"]["location"]
    obs = client.get("/fhir/" + "/".join(loc.split("/")[:2])).json()
    assert obs["subject"]["reference"] == "Patient/p1"
    assert body["entry"][1]["response"]["status"].startswith("200")
    assert client.get("/fhir/Patient").json()["total"] == 1


def test_transaction_rejects_two_entries_for_one_resource(client: TestClient) -> None:
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": patient("p1"), "request": {"method": "PUT", "url": "Patient/p1"}},
        {"request": {"method": "DELETE", "url": "Patient/p1"}},
    ]}
    status, _ = post_bundle(client, bundle)
    assert status == 400


def test_transaction_patch_entry_with_binary(client: TestClient) -> None:
    client.put("/fhir/Patient/p1", json=patient("p1"), headers=FHIR_JSON)
    doc = base64.b64encode(json.dumps(
        [{"op": "replace", "path": "/gender", "value": "female"}]).encode()).decode()
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Binary", "contentType": "application/json-patch+json",
                      "data": doc}, "request": {"method": "PATCH", "url": "Patient/p1"}}]}
    status, body = post_bundle(client, bundle)
    assert status == 200, body
    assert client.get("/fhir/Patient/p1").json()["gender"] == "female"


def test_batch_processes_entries_independently(client: TestClient) -> None:
    bundle = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": patient("b1"), "request": {"method": "PUT", "url": "Patient/b1"}},
        {"resource": {**patient("b2"), "gender": "男"},
         "request": {"method": "PUT", "url": "Patient/b2"}},
        {"request": {"method": "GET", "url": "Patient/b1"}},
        {"request": {"method": "GET", "url": "Patient?_id=b1"}},
    ]}
    status, body = post_bundle(client, bundle)
    assert status == 200
    assert body["type"] == "batch-response"
    statuses = [e["response"]["status"] for e in body["entry"]]
    assert statuses[0].startswith("201")
    assert statuses[1].startswith("422") or statuses[1].startswith("400")
    assert body["entry"][1]["response"]["outcome"]["resourceType"] == "OperationOutcome"
    assert body["entry"][2]["resource"]["id"] == "b1"
    assert body["entry"][3]["resource"]["total"] == 1


def test_bundle_of_wrong_type_is_400(client: TestClient) -> None:
    status, body = post_bundle(client, {"resourceType": "Bundle", "type": "collection"})
    assert status == 400
    assert body["issue"][0]["expression"] == ["Bundle.type"]


def test_unresolvable_urn_reference_fails_the_transaction(client: TestClient) -> None:
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {**lab("x"), "subject": {
            "reference": "urn:uuid:9f1f3c9e-1c53-4d2f-9a52-3f0f3b1f0a09"}},
         "request": {"method": "POST", "url": "Observation"}}]}
    status, body = post_bundle(client, bundle)
    assert status == 404
    assert "urn:uuid:9f1f3c9e" in body["issue"][0]["diagnostics"]


def test_malformed_entry_requests_are_400_not_server_errors(client: TestClient) -> None:
    for request in ({"method": ["PUT"], "url": "Patient/p1"},
                    {"method": {"x": 1}, "url": "Patient/p1"},
                    {"method": "PUT", "url": "Patient/p1", "ifMatch": ["W/\"1\""]},
                    {"method": "POST", "url": "Patient", "ifNoneExist": {"a": 1}}):
        bundle = {"resourceType": "Bundle", "type": "transaction",
                  "entry": [{"resource": patient("p1"), "request": request}]}
        status, body = post_bundle(client, bundle)
        assert status == 400, (request, body)
        assert body["resourceType"] == "OperationOutcome"
