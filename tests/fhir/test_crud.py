"""CRUD, versioning and conditional interactions (R4 http.html §3.1.0.1–3.1.0.8)."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.conftest import FHIR_JSON, ID_SYSTEM, lab, patient


def create(client: TestClient, body: dict, **headers: str) -> dict:
    r = client.post(f"/fhir/{body['resourceType']}", json=body, headers={**FHIR_JSON, **headers})
    assert r.status_code == 201, r.text
    return r.json()


def test_create_assigns_id_version_and_location_headers(client: TestClient) -> None:
    r = client.post("/fhir/Patient", json={**patient(), "id": "ignored"}, headers=FHIR_JSON)
    assert r.status_code == 201
    body = r.json()
    assert body["id"] != "ignored"
    assert body["meta"]["versionId"] == "1"
    assert r.headers["ETag"] == 'W/"1"'
    assert r.headers["Location"].endswith(f"/fhir/Patient/{body['id']}/_history/1")
    assert "Last-Modified" in r.headers
    assert r.headers["content-type"].startswith("application/fhir+json")


def test_read_serves_the_stored_resource_with_etag(client: TestClient) -> None:
    created = create(client, patient())
    r = client.get(f"/fhir/Patient/{created['id']}")
    assert r.status_code == 200
    assert r.json() == created
    assert r.headers["ETag"] == 'W/"1"'


def test_read_of_unknown_id_is_404_operation_outcome(client: TestClient) -> None:
    r = client.get("/fhir/Patient/nobody")
    assert r.status_code == 404
    assert r.json()["resourceType"] == "OperationOutcome"
    assert "Patient/nobody" in r.json()["issue"][0]["diagnostics"]


def test_unknown_resource_type_is_404_not_500(client: TestClient) -> None:
    r = client.get("/fhir/Patientt/1")
    assert r.status_code == 404
    assert r.json()["issue"][0]["code"] == "not-supported"


def test_update_creates_versions_and_vread_returns_each(client: TestClient) -> None:
    p = create(client, patient())
    p2 = {**p, "gender": "female"}
    r = client.put(f"/fhir/Patient/{p['id']}", json=p2, headers=FHIR_JSON)
    assert r.status_code == 200
    assert r.json()["meta"]["versionId"] == "2"
    assert client.get(f"/fhir/Patient/{p['id']}/_history/1").json()["gender"] == "male"
    assert client.get(f"/fhir/Patient/{p['id']}/_history/2").json()["gender"] == "female"
    assert client.get(f"/fhir/Patient/{p['id']}/_history/3").status_code == 404


def test_version_ids_and_patch_indexes_in_unicode_digits_are_client_errors(
        client: TestClient) -> None:
    # "²" and "①" pass str.isdigit() but int() refuses them: they must be 4xx, never 500
    p = create(client, patient())
    for vid in ("²", "①", "٣", "1²"):
        r = client.get(f"/fhir/Patient/{p['id']}/_history/{vid}")
        assert r.status_code in (400, 404), (vid, r.status_code)
        assert r.json()["resourceType"] == "OperationOutcome"
    patch = [{"op": "replace", "path": "/name/²/text", "value": "张三"}]
    r = client.patch(f"/fhir/Patient/{p['id']}", json=patch,
                     headers={"Content-Type": "application/json-patch+json"})
    assert r.status_code in (400, 422), r.status_code
    r = client.get(f"/fhir/Patient/{p['id']}/$everything", params={"_count": "²"})
    assert r.status_code == 400


def test_update_with_unknown_id_creates_the_resource(client: TestClient) -> None:
    r = client.put("/fhir/Patient/pat-zhang", json=patient("pat-zhang"), headers=FHIR_JSON)
    assert r.status_code == 201
    assert client.get("/fhir/Patient/pat-zhang").status_code == 200


def test_update_rejects_id_mismatch_and_missing_id(client: TestClient) -> None:
    r = client.put("/fhir/Patient/a", json=patient("b"), headers=FHIR_JSON)
    assert r.status_code == 400
    assert r.json()["issue"][0]["expression"] == ["Patient.id"]
    r = client.put("/fhir/Patient/a", json=patient(), headers=FHIR_JSON)
    assert r.status_code == 400


def test_wrong_resource_type_for_url_is_400(client: TestClient) -> None:
    r = client.post("/fhir/Observation", json=patient(), headers=FHIR_JSON)
    assert r.status_code == 400
    assert "Observation" in r.json()["issue"][0]["diagnostics"]


def test_malformed_json_is_400(client: TestClient) -> None:
    r = client.post("/fhir/Patient", content=b'{"resourceType": "Patient",',
                    headers=FHIR_JSON)
    assert r.status_code == 400
    assert r.json()["issue"][0]["code"] == "structure"


def test_invalid_resource_is_rejected_with_the_field(client: TestClient) -> None:
    bad = {**patient(), "birthDate": "1949-13-45"}
    r = client.post("/fhir/Patient", json=bad, headers=FHIR_JSON)
    assert r.status_code in (400, 422)
    issue = r.json()["issue"][0]
    assert any("birthDate" in e for e in issue.get("expression", []))


def test_if_match_mismatch_is_412_and_match_updates(client: TestClient) -> None:
    p = create(client, patient())
    url = f"/fhir/Patient/{p['id']}"
    r = client.put(url, json=p, headers={**FHIR_JSON, "If-Match": 'W/"7"'})
    assert r.status_code == 412
    r = client.put(url, json=p, headers={**FHIR_JSON, "If-Match": 'W/"1"'})
    assert r.status_code == 200
    assert r.json()["meta"]["versionId"] == "2"


def test_if_none_match_and_if_modified_since_give_304(client: TestClient) -> None:
    p = create(client, patient())
    url = f"/fhir/Patient/{p['id']}"
    assert client.get(url, headers={"If-None-Match": 'W/"1"'}).status_code == 304
    assert client.get(url, headers={"If-None-Match": 'W/"0"'}).status_code == 200
    lm = client.get(url).headers["Last-Modified"]
    assert client.get(url, headers={"If-Modified-Since": lm}).status_code == 304
    assert client.get(url, headers={
        "If-Modified-Since": "Mon, 01 Jan 2001 00:00:00 GMT"}).status_code == 200


def test_delete_then_read_is_410_and_history_keeps_versions(client: TestClient) -> None:
    p = create(client, patient())
    url = f"/fhir/Patient/{p['id']}"
    assert client.delete(url).status_code == 204
    assert client.get(url).status_code == 410
    assert client.delete(url).status_code == 204  # idempotent
    hist = client.get(f"{url}/_history").json()
    assert hist["total"] == 2
    assert hist["entry"][0]["request"]["method"] == "DELETE"
    assert client.put(url, json=p, headers=FHIR_JSON).status_code == 201


def test_conditional_create_zero_one_many(client: TestClient) -> None:
    cond = {"If-None-Exist": f"identifier={ID_SYSTEM}|11010519491231002X"}
    first = client.post("/fhir/Patient", json=patient(), headers={**FHIR_JSON, **cond})
    assert first.status_code == 201
    again = client.post("/fhir/Patient", json=patient(), headers={**FHIR_JSON, **cond})
    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    create(client, patient(mrn="BA2026002"))
    many = client.post("/fhir/Patient", json=patient(),
                       headers={**FHIR_JSON, "If-None-Exist": "family=%E5%BC%A0"})
    assert many.status_code == 412


def test_conditional_update_zero_one_many(client: TestClient) -> None:
    q = f"/fhir/Patient?identifier={ID_SYSTEM}|440524188001010014"
    body = patient(id_number="440524188001010014", family="李", given="四")
    r = client.put(q, json=body, headers=FHIR_JSON)
    assert r.status_code == 201
    pid = r.json()["id"]
    r = client.put(q, json={**body, "gender": "other"}, headers=FHIR_JSON)
    assert r.status_code == 200
    assert r.json()["id"] == pid
    create(client, patient(family="李", given="五", mrn="X2"))
    assert client.put("/fhir/Patient?family=李", json=body, headers=FHIR_JSON).status_code == 412


def test_conditional_delete(client: TestClient) -> None:
    p = create(client, patient())
    r = client.delete(f"/fhir/Patient?identifier={ID_SYSTEM}|11010519491231002X")
    assert r.status_code == 204
    assert client.get(f"/fhir/Patient/{p['id']}").status_code == 410
    assert client.delete(f"/fhir/Patient?identifier={ID_SYSTEM}|nobody").status_code == 204


def test_json_patch_updates_and_bad_patch_is_422(client: TestClient) -> None:
    p = create(client, patient())
    url = f"/fhir/Patient/{p['id']}"
    ops = [{"op": "replace", "path": "/gender", "value": "female"}]
    r = client.patch(url, json=ops, headers={"Content-Type": "application/json-patch+json"})
    assert r.status_code == 200, r.text
    assert r.json()["gender"] == "female"
    assert r.json()["meta"]["versionId"] == "2"
    bad = [{"op": "remove", "path": "/nothing/here"}]
    r = client.patch(url, json=bad, headers={"Content-Type": "application/json-patch+json"})
    assert r.status_code in (400, 422)
    invalid = [{"op": "replace", "path": "/gender", "value": "男"}]
    r = client.patch(url, json=invalid, headers={"Content-Type": "application/json-patch+json"})
    assert r.status_code == 422


def test_prefer_return_minimal_and_operation_outcome(client: TestClient) -> None:
    r = client.post("/fhir/Patient", json=patient(),
                    headers={**FHIR_JSON, "Prefer": "return=minimal"})
    assert r.status_code == 201 and r.content == b""
    assert r.headers["Location"]
    r = client.post("/fhir/Patient", json=patient(mrn="B2"),
                    headers={**FHIR_JSON, "Prefer": "return=OperationOutcome"})
    assert r.json()["resourceType"] == "OperationOutcome"


def test_unsupported_format_is_406_and_xml_content_is_415(client: TestClient) -> None:
    p = create(client, patient())
    assert client.get(f"/fhir/Patient/{p['id']}?_format=xml").status_code == 406
    assert client.get(f"/fhir/Patient/{p['id']}",
                      headers={"Accept": "application/fhir+xml"}).status_code == 406
    assert client.get(f"/fhir/Patient/{p['id']}",
                      headers={"Accept": "application/fhir+json"}).status_code == 200
    r = client.post("/fhir/Patient", content=b"<Patient/>",
                    headers={"Content-Type": "application/fhir+xml"})
    assert r.status_code == 415


def test_pretty_summary_and_elements_on_read(client: TestClient) -> None:
    p = create(client, {**patient(), "text": {"status": "generated",
                                              "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">张三</div>"}})
    url = f"/fhir/Patient/{p['id']}"
    assert b"\n  " in client.get(f"{url}?_pretty=true").content
    data = client.get(f"{url}?_summary=data").json()
    assert "text" not in data and data["name"]
    el = client.get(f"{url}?_elements=gender").json()
    assert el["gender"] == "male" and "name" not in el
    assert any(t.get("code") == "SUBSETTED" for t in el["meta"].get("tag", []))


def test_body_over_the_limit_is_413(tmp_path) -> None:
    from app.server import create_app
    from tests.conftest import make_settings

    app = create_app(make_settings(tmp_path, max_body_bytes=1000))
    with TestClient(app) as c:
        big = patient()
        big["address"][0]["line"] = ["长" * 2000]
        r = c.post("/fhir/Patient", json=big, headers=FHIR_JSON)
        assert r.status_code == 413
        assert r.json()["resourceType"] == "OperationOutcome"


def test_metadata_is_generated_capability_statement(client: TestClient) -> None:
    cs = client.get("/fhir/metadata").json()
    assert cs["resourceType"] == "CapabilityStatement"
    assert cs["fhirVersion"] == "4.0.1"
    types = {r["type"]: r for r in cs["rest"][0]["resource"]}
    assert len(types) > 140
    obs_params = {p["name"] for p in types["Observation"]["searchParam"]}
    assert {"code", "patient", "date", "value-quantity", "code-value-quantity"} <= obs_params
    everything = "http://hl7.org/fhir/OperationDefinition/Patient-everything"
    assert {"name": "everything", "definition": everything} in types["Patient"]["operation"]


def test_unknown_path_is_operation_outcome(client: TestClient) -> None:
    r = client.get("/nothing")
    assert r.status_code == 404
    assert r.json()["resourceType"] == "OperationOutcome"


def test_observation_round_trip(client: TestClient) -> None:
    p = create(client, patient())
    o = create(client, lab(p["id"]))
    assert client.get(f"/fhir/Observation/{o['id']}").json()["valueQuantity"]["value"] == 6.5


def test_trailing_slash_is_the_same_endpoint_not_a_redirect(client: TestClient) -> None:
    r = client.post("/fhir/Patient/", json=patient(), headers=FHIR_JSON,
                    follow_redirects=False)
    assert r.status_code == 201
    assert client.get("/fhir/Patient/", follow_redirects=False).json()["total"] == 1
