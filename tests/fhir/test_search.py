"""Search semantics (R4 search.html): types, modifiers, prefixes, chains, _has, includes, paging."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest
from fastapi.testclient import TestClient

from tests.conftest import FHIR_JSON, ID_SYSTEM, condition, lab, patient


def put(client: TestClient, body: dict) -> dict:
    r = client.put(f"/fhir/{body['resourceType']}/{body['id']}", json=body, headers=FHIR_JSON)
    assert r.status_code in (200, 201), r.text
    return r.json()


def ids(bundle: dict, mode: str = "match") -> list[str]:
    return [e["resource"]["id"] for e in bundle.get("entry", [])
            if e.get("search", {}).get("mode") == mode]


def search(client: TestClient, query: str, **headers: str) -> dict:
    r = client.get(f"/fhir/{query}", headers=headers)
    assert r.status_code == 200, r.text
    return r.json()


@pytest.fixture
def ward(client: TestClient) -> TestClient:
    put(client, patient("p1", family="张", given="三", id_number="11010519491231002X",
                        birth="1949-12-31"))
    put(client, patient("p2", family="单", given="雄信", id_number="440524188001010014",
                        birth="1880-01-01", mrn="B2"))
    put(client, patient("p3", family="欧阳", given="娜娜", id_number="110101199003070016",
                        gender="female", birth="1990-03-07", mrn="B3"))
    put(client, {**lab("p1", value=6.5, when="2026-11-20T08:30:00+08:00"), "id": "o1"})
    put(client, {**lab("p1", value=11.2, when="2026-11-21T08:30:00+08:00"), "id": "o2"})
    put(client, {**lab("p1", loinc="718-7", display="血红蛋白", value=135, unit="g/L",
                       when="2026-11-22T09:00:00+08:00"), "id": "o3"})
    put(client, {**lab("p2", value=4.1, when="2025-01-05T10:00:00+08:00"), "id": "o4"})
    put(client, {**condition("p1"), "id": "c1"})
    put(client, {**condition("p3", "I10.x00x002", "原发性高血压"), "id": "c2"})
    return client


def test_string_search_finds_chinese_names_by_prefix(ward: TestClient) -> None:
    assert ids(search(ward, "Patient?name=张")) == ["p1"]
    assert ids(search(ward, "Patient?family=欧阳")) == ["p3"]
    assert ids(search(ward, "Patient?name:contains=雄")) == ["p2"]
    assert ids(search(ward, "Patient?name:exact=张")) == ["p1"]


def test_patient_names_match_by_pinyin(ward: TestClient) -> None:
    assert ids(search(ward, "Patient?name=zhangsan")) == ["p1"]
    assert ids(search(ward, "Patient?name=zhang")) == ["p1"]
    assert ids(search(ward, "Patient?name=shan")) == ["p2"]  # 单 read as a surname
    assert ids(search(ward, "Patient?name=ouyang")) == ["p3"]


def test_token_search_forms(ward: TestClient) -> None:
    assert ids(search(ward, f"Patient?identifier={ID_SYSTEM}|440524188001010014")) == ["p2"]
    assert ids(search(ward, "Patient?identifier=440524188001010014")) == ["p2"]
    assert ids(search(ward, "Patient?identifier=|440524188001010014")) == []
    assert sorted(ids(search(ward, f"Patient?identifier={ID_SYSTEM}|"))) == ["p1", "p2", "p3"]
    assert sorted(ids(search(ward, "Patient?gender=male"))) == ["p1", "p2"]
    assert ids(search(ward, "Patient?gender:not=male")) == ["p3"]
    assert sorted(ids(search(ward, "Observation?code=http://loinc.org|6690-2"))) == \
        ["o1", "o2", "o4"]
    assert ids(search(ward, "Observation?code:text=血红")) == ["o3"]


def test_or_with_commas_and_and_with_repeats(ward: TestClient) -> None:
    assert sorted(ids(search(ward, "Patient?_id=p1,p3"))) == ["p1", "p3"]
    assert ids(search(ward, "Patient?gender=male&birthdate=lt1900")) == ["p2"]


def test_date_prefixes_follow_precision_ranges(ward: TestClient) -> None:
    assert ids(search(ward, "Patient?birthdate=1949")) == ["p1"]
    assert ids(search(ward, "Patient?birthdate=1949-12")) == ["p1"]
    assert ids(search(ward, "Patient?birthdate=eq1949-12-31")) == ["p1"]
    assert sorted(ids(search(ward, "Patient?birthdate=gt1949-12-31"))) == ["p3"]
    assert sorted(ids(search(ward, "Patient?birthdate=ge1949-12-31"))) == ["p1", "p3"]
    assert sorted(ids(search(ward, "Patient?birthdate=le1949-12-31"))) == ["p1", "p2"]
    assert ids(search(ward, "Patient?birthdate=ne1949-12-31&birthdate=lt1950")) == ["p2"]
    assert ids(search(ward, "Observation?date=sa2026-11-21")) == ["o3"]
    assert ids(search(ward, "Observation?date=eb2026-01-01")) == ["o4"]
    # 08:30+08:00 is 00:30Z: a search value in another zone finds it.
    assert ids(search(ward, "Observation?date=2026-11-20T00:30:00Z")) == ["o1"]


def test_quantity_search_with_units_and_prefixes(ward: TestClient) -> None:
    q = "Observation?value-quantity="
    assert ids(search(ward, q + "gt10|http://unitsofmeasure.org|10*9/L")) == ["o2"]
    assert ids(search(ward, q + "6.5||10*9/L")) == ["o1"]
    assert ids(search(ward, q + "135")) == ["o3"]
    assert sorted(ids(search(ward, q + "lt7"))) == ["o1", "o4"]


def test_reference_search_forms_and_missing(ward: TestClient) -> None:
    assert sorted(ids(search(ward, "Observation?subject=Patient/p1"))) == ["o1", "o2", "o3"]
    assert sorted(ids(search(ward, "Observation?patient=p1"))) == ["o1", "o2", "o3"]
    assert sorted(ids(search(ward, "Observation?subject:Patient=p2"))) == ["o4"]
    assert sorted(ids(search(ward, "Observation?subject=http://testserver/fhir/Patient/p2"))) \
        == ["o4"]
    assert ids(search(ward, "Observation?encounter:missing=false")) == []
    assert len(ids(search(ward, "Observation?encounter:missing=true"))) == 4


def test_composite_code_value_quantity(ward: TestClient) -> None:
    b = search(ward, "Observation?code-value-quantity=http://loinc.org|6690-2$gt10")
    assert ids(b) == ["o2"]


def test_chained_parameters_two_levels(ward: TestClient) -> None:
    assert sorted(ids(search(ward, "Observation?subject:Patient.name=张"))) == ["o1", "o2", "o3"]
    assert ids(search(ward, "Observation?patient.birthdate=lt1900")) == ["o4"]
    put(ward, {"resourceType": "Organization", "id": "org1", "name": "协和医院"})
    pat = ward.get("/fhir/Patient/p3").json()
    put(ward, {**pat, "managingOrganization": {"reference": "Organization/org1"}})
    assert ids(search(ward, "Condition?patient.organization.name=协和")) == ["c2"]


def test_reverse_chaining_has(ward: TestClient) -> None:
    assert ids(search(ward, "Patient?_has:Observation:patient:code=718-7")) == ["p1"]
    assert sorted(ids(search(ward, "Patient?_has:Condition:patient:code=E11.900"))) == ["p1"]


def test_include_and_revinclude(ward: TestClient) -> None:
    b = search(ward, "Observation?_id=o4&_include=Observation:patient")
    assert ids(b) == ["o4"] and ids(b, "include") == ["p2"]
    b = search(ward, "Patient?_id=p1&_revinclude=Observation:patient")
    assert sorted(ids(b, "include")) == ["o1", "o2", "o3"]
    b = search(ward, "Condition?_id=c1&_include=Condition:patient"
                     "&_revinclude:iterate=Observation:patient")
    assert sorted(ids(b, "include")) == ["o1", "o2", "o3", "p1"]


def test_sort_on_several_keys_descending(ward: TestClient) -> None:
    assert ids(search(ward, "Observation?patient=p1&_sort=-date")) == ["o3", "o2", "o1"]
    assert ids(search(ward, "Patient?_sort=gender,-birthdate")) == ["p3", "p1", "p2"]


def test_paging_links_and_total_modes(ward: TestClient) -> None:
    b = search(ward, "Observation?_count=2&_sort=date")
    assert b["total"] == 4 and len(ids(b)) == 2
    nxt = next(link["url"] for link in b["link"] if link["relation"] == "next")
    page2 = ward.get(urlsplit(nxt).path + "?" + urlsplit(nxt).query).json()
    assert ids(page2) == ["o2", "o3"]
    assert "total" not in search(ward, "Observation?_total=none")
    count = search(ward, "Observation?_summary=count")
    assert count["total"] == 4 and "entry" not in count


def test_paging_is_stable_while_other_clients_write(ward: TestClient) -> None:
    b = search(ward, "Observation?_count=2&_sort=date")
    first = ids(b)
    put(ward, {**lab("p2", value=1.0, when="2000-01-01T00:00:00+08:00"), "id": "o-new"})
    ward.delete("/fhir/Observation/o3")
    seen = list(first)
    url = next(link["url"] for link in b["link"] if link["relation"] == "next")
    while url:
        page = ward.get(urlsplit(url).path + "?" + urlsplit(url).query).json()
        seen += ids(page)
        url = next((link["url"] for link in page["link"] if link["relation"] == "next"), None)
    assert "o-new" not in seen
    assert len(seen) == len(set(seen))
    assert seen == ["o4", "o1", "o2"]  # o3 deleted since: gone, but nothing else skipped


def test_strict_handling_rejects_unknown_parameters_lenient_ignores(ward: TestClient) -> None:
    r = ward.get("/fhir/Patient?nonsense=1", headers={"Prefer": "handling=strict"})
    assert r.status_code == 400
    assert "nonsense" in r.json()["issue"][0]["diagnostics"]
    b = search(ward, "Patient?nonsense=1&gender=female")
    assert ids(b) == ["p3"]
    self_link = next(link["url"] for link in b["link"] if link["relation"] == "self")
    assert parse_qs(urlsplit(self_link).query) == {"gender": ["female"]}


def test_malformed_values_are_400_under_strict(ward: TestClient) -> None:
    for q in ("Patient?birthdate=yesterday", "Observation?value-quantity=abc",
              "Patient?_count=-1", "Observation?subject=not a ref", "Patient?gender:foo=male"):
        r = ward.get(f"/fhir/{q}", headers={"Prefer": "handling=strict"})
        assert r.status_code == 400, q
        assert r.json()["resourceType"] == "OperationOutcome"


def test_post_search_equals_get_search(ward: TestClient) -> None:
    r = ward.post("/fhir/Patient/_search", data={"name": "张"})
    assert r.status_code == 200
    assert ids(r.json()) == ["p1"]


def test_system_search_across_types(ward: TestClient) -> None:
    b = search(ward, "?_type=Patient,Condition&_id=p1,c2")
    assert sorted(ids(b)) == ["c2", "p1"]


def test_deleted_resources_never_match(ward: TestClient) -> None:
    ward.delete("/fhir/Observation/o1")
    assert "o1" not in ids(search(ward, "Observation?patient=p1"))


def test_last_updated_and_tag_profile_security(ward: TestClient) -> None:
    put(ward, {**patient("p9", mrn="B9"), "meta": {
        "tag": [{"system": "http://yilian.cn/tags", "code": "vip"}],
        "profile": ["http://hl7.org.cn/fhir/StructureDefinition/CNPatient"]}})
    assert ids(search(ward, "Patient?_tag=http://yilian.cn/tags|vip")) == ["p9"]
    profile = "http://hl7.org.cn/fhir/StructureDefinition/CNPatient"
    assert ids(search(ward, f"Patient?_profile={profile}")) == ["p9"]
    assert len(ids(search(ward, "Patient?_lastUpdated=gt2000-01-01"))) == 4


def test_content_search(ward: TestClient) -> None:
    assert ids(search(ward, "Condition?_content=高血压")) == ["c2"]


def test_identifier_of_type_matches_the_identifier_type_coding(ward: TestClient) -> None:
    v2 = "http://terminology.hl7.org/CodeSystem/v2-0203"
    pat = ward.get("/fhir/Patient/p1").json()
    pat["identifier"].append({"type": {"coding": [{"system": v2, "code": "MR"}]},
                              "system": "urn:oid:2.16.156.10011.1.12", "value": "ZY20261123"})
    put(ward, pat)
    assert ids(search(ward, f"Patient?identifier:of-type={v2}|MR|ZY20261123")) == ["p1"]
    assert ids(search(ward, f"Patient?identifier:of-type={v2}|MB|ZY20261123")) == []
    r = ward.get(f"/fhir/Patient?identifier:of-type={v2}|MR",
                 headers={"Prefer": "handling=strict"})
    assert r.status_code == 400
    assert "type-system|type-code|identifier-value" in r.json()["issue"][0]["diagnostics"]


def test_summary_count_has_no_paging_links(ward: TestClient) -> None:
    for query in ("Observation?_summary=count", "Observation?_count=0"):
        b = search(ward, query)
        assert b["total"] == 4 and "entry" not in b
        assert [link["relation"] for link in b["link"]] == ["self"]
