"""The CN conformance resources of fhir_profiles/ are loaded, registered, indexed and served."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.conftest import FHIR_JSON, ID_SYSTEM, patient

ETHNICITY = "https://fhir.yilian.cn/StructureDefinition/ethnicity"
GB_3304 = "urn:oid:2.16.156.10011.2.3.3.3"


def test_capability_statement_lists_cn_profiles_and_search_parameters(client: TestClient) -> None:
    cs = client.get("/fhir/metadata").json()
    pat = next(r for r in cs["rest"][0]["resource"] if r["type"] == "Patient")
    assert "https://fhir.yilian.cn/StructureDefinition/cn-patient" in pat["supportedProfile"]
    assert {"ethnicity", "id-card"} <= {p["name"] for p in pat["searchParam"]}


def test_cn_conformance_resources_are_readable_and_searchable(client: TestClient) -> None:
    sd = client.get("/fhir/StructureDefinition/cn-patient")
    assert sd.status_code == 200
    assert sd.json()["baseDefinition"] == "http://hl7.org/fhir/StructureDefinition/Patient"
    found = client.get("/fhir/CodeSystem?url=urn:oid:2.16.156.10011.2.3.3.3").json()
    assert found["total"] == 1
    assert any(c["code"] == "01" and c["display"] == "汉族"
               for c in found["entry"][0]["resource"]["concept"])


def test_patients_are_searchable_by_ethnicity_and_id_card(client: TestClient) -> None:
    p = patient("p-hui", family="马", given="晓梅", gender="female",
                id_number="640102199005120027", birth="1990-05-12")
    p["extension"] = [{"url": ETHNICITY, "valueCodeableConcept": {
        "coding": [{"system": GB_3304, "code": "03", "display": "回族"}]}}]
    assert client.put("/fhir/Patient/p-hui", json=p, headers=FHIR_JSON).status_code == 201
    client.put("/fhir/Patient/p-han", json=patient("p-han"), headers=FHIR_JSON)
    by_ethnicity = client.get(f"/fhir/Patient?ethnicity={GB_3304}|03").json()
    assert [e["resource"]["id"] for e in by_ethnicity["entry"]] == ["p-hui"]
    by_card = client.get("/fhir/Patient?id-card=640102199005120027").json()
    assert [e["resource"]["id"] for e in by_card["entry"]] == ["p-hui"]
    assert client.get(f"/fhir/Patient?identifier={ID_SYSTEM}|640102199005120027").json()[
        "total"] == 1


def test_restart_does_not_write_new_versions_of_unchanged_profiles(tmp_path) -> None:
    from app.server import create_app
    from tests.conftest import make_settings

    for _ in range(2):
        with TestClient(create_app(make_settings(tmp_path))) as c:
            meta = c.get("/fhir/StructureDefinition/cn-patient").json()["meta"]
    assert meta["versionId"] == "1"
