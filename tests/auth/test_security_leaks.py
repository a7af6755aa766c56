"""Security suite, leak paths: a token sees and changes only what its grant covers, through every
door (docs/smart-auth-design.md §10 "leak paths").

Two patients of 中山医院 — 张三 (pat-a) and 李四 (pat-b) — with labs, vital signs, a diagnosis,
plus a shared Practitioner and Organization, a Binary and a Group, loaded by a backend service
(`system/*.cruds`). The patient app's token is for 张三; everything of 李四 must look absent.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from fastapi.testclient import TestClient

from app.server import create_app
from tests.auth.test_security_tokens import Smart, bearer
from tests.conftest import FHIR_JSON, condition, lab, make_settings, patient

LAB = "http://terminology.hl7.org/CodeSystem/observation-category|laboratory"
B_SECRET = "李四"  # 李四's name: never in an answer to 张三's app
B_ID_NUMBER = "110105196502170036"


def vital(pid: str, oid: str) -> dict[str, Any]:
    res = lab(pid, loinc="8867-4", display="心率", value=72, unit="/min", oid=oid)
    res["category"] = [{"coding": [{
        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
        "code": "vital-signs"}]}]
    return res


class World:
    def __init__(self, smart: Smart) -> None:
        self.smart = smart
        self.c = smart.client
        self.admin = smart.headers("system/*.cruds")
        # 张三's patient app
        self.a = smart.headers("launch/patient patient/*.rs", patient="pat-a",
                               fhir_user="Patient/pat-a", grant_id="grant-a")
        self.a_write = smart.headers("launch/patient patient/*.cruds", patient="pat-a",
                                     fhir_user="Patient/pat-a", grant_id="grant-aw")

    def put(self, resource: dict[str, Any]) -> None:
        r = self.c.put(f"/fhir/{resource['resourceType']}/{resource['id']}", json=resource,
                       headers=self.admin)
        assert r.status_code in (200, 201), r.text

    def load(self) -> None:
        self.put(patient("pat-a", family="张", given="三", mrn="BA-A"))
        self.put(patient("pat-b", family="李", given="四", id_number=B_ID_NUMBER, mrn="BA-B",
                         gender="female", birth="1965-02-17"))
        self.put({"resourceType": "Practitioner", "id": "prac-1",
                  "name": [{"text": "王医生", "family": "王"}]})
        self.put({"resourceType": "Organization", "id": "org-1", "name": "中山医院"})
        a1 = lab("pat-a", oid="obs-a1", value=6.5)
        a1["performer"] = [{"reference": "Practitioner/prac-1"}]
        self.put(a1)
        self.put(vital("pat-a", "obs-a2"))
        b1 = lab("pat-b", oid="obs-b1", value=11.2)
        b1["performer"] = [{"reference": "Practitioner/prac-1"}]
        self.put(b1)
        self.put(lab("pat-b", oid="obs-b2", loinc="718-7", display="血红蛋白", value=98,
                     unit="g/L"))
        self.put({**condition("pat-a"), "id": "cond-a"})
        self.put({**condition("pat-b", code="I10.x00", display="高血压"), "id": "cond-b"})
        self.put({"resourceType": "Binary", "id": "bin-1", "contentType": "text/plain",
                  "data": base64.b64encode("李四的病历".encode()).decode()})
        self.put({"resourceType": "Group", "id": "grp-1", "type": "person", "actual": True,
                  "member": [{"entity": {"reference": "Patient/pat-a"}},
                             {"entity": {"reference": "Patient/pat-b"}}]})

    def ids(self, r: Any, mode: str | None = None) -> set[str]:
        assert r.status_code == 200, r.text
        return {f"{e['resource']['resourceType']}/{e['resource']['id']}"
                for e in r.json().get("entry", [])
                if "resource" in e and (mode is None or e.get("search", {}).get("mode") == mode)}


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    app = create_app(make_settings(tmp_path, auth="smart"))
    with TestClient(app) as client:
        w = World(Smart(client))
        w.load()
        yield w


def test_search_returns_only_the_patients_compartment(world: World) -> None:
    assert world.ids(world.c.get("/fhir/Observation", headers=world.a)) == {
        "Observation/obs-a1", "Observation/obs-a2"}
    assert world.ids(world.c.get("/fhir/Patient", headers=world.a)) == {"Patient/pat-a"}
    assert world.ids(world.c.get("/fhir/Condition?subject=Patient/pat-b",
                                 headers=world.a)) == set()
    # _type search: each type limited by its own rule
    assert world.ids(world.c.get("/fhir?_type=Observation,Condition", headers=world.a)) == {
        "Observation/obs-a1", "Observation/obs-a2", "Condition/cond-a"}
    # the admin sees both patients
    assert len(world.ids(world.c.get("/fhir/Observation", headers=world.admin))) == 4


def test_total_and_summary_count_count_only_permitted_resources(world: World) -> None:
    r = world.c.get("/fhir/Observation?_summary=count", headers=world.a)
    assert r.json()["total"] == 2
    r = world.c.get("/fhir/Observation?_total=accurate&_count=1", headers=world.a)
    assert r.json()["total"] == 2
    r = world.c.get("/fhir/Observation?_summary=count", headers=world.admin)
    assert r.json()["total"] == 4


def test_include_never_returns_resources_outside_the_grant(world: World) -> None:
    # the shared Practitioner is readable under patient/ scopes
    r = world.c.get("/fhir/Observation?_include=Observation:performer", headers=world.a)
    assert world.ids(r, "include") == {"Practitioner/prac-1"}
    r = world.c.get("/fhir/Practitioner?_revinclude=Observation:performer", headers=world.a)
    assert world.ids(r, "include") == {"Observation/obs-a1"}
    r = world.c.get("/fhir/Observation?_id=obs-a1&_include=Observation:subject",
                    headers=world.a)
    assert world.ids(r, "include") == {"Patient/pat-a"}
    # _include by type the token may not read: 403 before any data is touched
    narrow = world.smart.headers("patient/Observation.rs", patient="pat-a")
    r = world.c.get("/fhir/Observation?_include=Observation:subject:Patient", headers=narrow)
    assert r.status_code == 403
    assert "patient/Patient.r" in r.headers["www-authenticate"]
    # without a named type, unreadable includes are simply left out
    r = world.c.get("/fhir/Observation?_include=Observation:subject", headers=narrow)
    assert world.ids(r, "include") == set()


def test_revinclude_iterate_does_not_walk_through_hidden_resources(world: World) -> None:
    # obs-a3 (张三) lists 李四's obs-b1 as a member; obs-b1 names a member of 张三 (obs-a4)
    b1 = world.c.get("/fhir/Observation/obs-b1", headers=world.admin).json()
    b1["hasMember"] = [{"reference": "Observation/obs-a4"}]
    world.put(b1)
    world.put(lab("pat-a", oid="obs-a4", value=1.0))
    a3 = lab("pat-a", oid="obs-a3", value=2.0)
    a3["hasMember"] = [{"reference": "Observation/obs-b1"}]
    world.put(a3)
    r = world.c.get("/fhir/Practitioner?_id=prac-1&_revinclude=Observation:performer"
                    "&_revinclude:iterate=Observation:has-member", headers=world.a)
    included = world.ids(r, "include")
    assert "Observation/obs-b1" not in included
    assert "Observation/obs-a3" not in included  # reachable only through obs-b1
    assert "Observation/obs-a1" in included
    r = world.c.get("/fhir/Observation?_id=obs-a3&_include:iterate=Observation:has-member",
                    headers=world.a)
    assert world.ids(r, "include") == set()  # obs-b1 hidden, obs-a4 only behind it
    r = world.c.get("/fhir/Observation?_id=obs-a3&_include:iterate=Observation:has-member",
                    headers=world.admin)
    assert world.ids(r, "include") == {"Observation/obs-b1", "Observation/obs-a4"}


def test_chain_through_a_hidden_resource_matches_nothing(world: World) -> None:
    r = world.c.get("/fhir/Observation?subject:Patient.family=李", headers=world.admin)
    assert world.ids(r) == {"Observation/obs-b1", "Observation/obs-b2"}
    r = world.c.get("/fhir/Observation?subject:Patient.family=李", headers=world.a)
    assert world.ids(r) == set()
    r = world.c.get("/fhir/Observation?subject.family=李", headers=world.a)
    assert world.ids(r) == set()
    r = world.c.get("/fhir/Observation?subject:Patient.family=张", headers=world.a)
    assert world.ids(r) == {"Observation/obs-a1", "Observation/obs-a2"}
    # 张三's own Observation pointing at 李四 (performer): the chain must not see 李四's name
    a5 = lab("pat-a", oid="obs-a5", value=3.0)
    a5["performer"] = [{"reference": "Patient/pat-b"}]
    world.put(a5)
    q = "/fhir/Observation?performer:Patient.family=李"
    assert world.ids(world.c.get(q, headers=world.admin)) == {"Observation/obs-a5"}
    assert world.ids(world.c.get(q, headers=world.a)) == set()
    assert world.ids(world.c.get("/fhir/Observation?performer:Patient.family=张",
                                 headers=world.a)) == set()
    # the same through a search across types: each type's chain is restricted too
    q = "/fhir?_type=Observation,Condition&subject:Patient.family=李"
    assert world.ids(world.c.get(q, headers=world.admin)) == {
        "Observation/obs-b1", "Observation/obs-b2", "Condition/cond-b"}
    assert world.ids(world.c.get(q, headers=world.a)) == set()
    q = "/fhir?_type=Observation,DiagnosticReport&performer:Patient.family=李"
    assert world.ids(world.c.get(q, headers=world.admin)) == {"Observation/obs-a5"}
    assert world.ids(world.c.get(q, headers=world.a)) == set()
    # a system token restricted by a granular scope: a chain cannot see past it either
    granular = world.smart.headers("system/Observation.rs system/Patient.rs?gender=female")
    r = world.c.get("/fhir/Observation?subject:Patient.family=张", headers=granular)
    assert world.ids(r) == set()


def test_has_on_hidden_resources_matches_nothing(world: World) -> None:
    q = "/fhir/Patient?_has:Observation:subject:code=http://loinc.org|718-7"
    assert world.ids(world.c.get(q, headers=world.admin)) == {"Patient/pat-b"}
    assert world.ids(world.c.get(q, headers=world.a)) == set()
    # 张三's own lab does not reveal that 李四 has one too
    q = "/fhir/Patient?_has:Observation:subject:code=http://loinc.org|6690-2"
    assert world.ids(world.c.get(q, headers=world.a)) == {"Patient/pat-a"}
    # a practitioner-token with Patient but no Observation permission: _has is 403
    doctor = world.smart.headers("user/Patient.rs", fhir_user="Practitioner/prac-1")
    assert world.c.get(q, headers=doctor).status_code == 403


def test_chain_into_an_ungranted_type_is_403(world: World) -> None:
    narrow = world.smart.headers("patient/Observation.rs", patient="pat-a")
    r = world.c.get("/fhir/Observation?subject:Patient.family=张", headers=narrow)
    assert r.status_code == 403
    assert 'error="insufficient_scope"' in r.headers["www-authenticate"]
    assert r.json()["issue"][0]["code"] == "forbidden"
    r = world.c.get("/fhir/Condition", headers=narrow)
    assert r.status_code == 403
    assert 'scope="patient/Condition.s"' in r.headers["www-authenticate"]


def test_history_lists_only_visible_versions(world: World) -> None:
    # 李四's lab gets a second version; 张三's too
    for oid in ("obs-a1", "obs-b1"):
        res = world.c.get(f"/fhir/Observation/{oid}", headers=world.admin).json()
        res["status"] = "amended"
        world.put(res)
    r = world.c.get("/fhir/Observation/_history", headers=world.a)
    assert r.status_code == 200
    seen = {(e["resource"]["id"], e["resource"]["meta"]["versionId"])
            for e in r.json().get("entry", []) if "resource" in e}
    assert {s[0] for s in seen} <= {"obs-a1", "obs-a2"} and ("obs-a1", "2") in seen
    assert "total" not in r.json()  # could not be counted without revealing hidden versions
    r = world.c.get("/fhir/_history", headers=world.a)
    ids = {e["resource"]["id"] for e in r.json().get("entry", []) if "resource" in e}
    assert "obs-b1" not in ids and "pat-b" not in ids and "cond-b" not in ids
    assert "obs-a1" in ids
    assert B_SECRET not in r.text
    # instance history of a hidden resource: the same 404 as a missing one
    assert world.c.get("/fhir/Observation/obs-b1/_history", headers=world.a).status_code == 404
    r = world.c.get("/fhir/Observation/obs-a1/_history", headers=world.a)
    assert len(r.json()["entry"]) == 2
    # paging follows the permitted versions only: 张三 has 3 Observation versions, so pages of
    # one end after the third (the server holds 6)
    url: str | None = "/fhir/Observation/_history?_count=1"
    pages = []
    while url:
        page = world.c.get(url, headers=world.a).json()
        pages.append([e["resource"]["id"] for e in page.get("entry", [])])
        nxt = [link["url"] for link in page["link"] if link["relation"] == "next"]
        url = "/fhir/" + nxt[0].split("/fhir/", 1)[1] if nxt else None
    assert sorted(i for p in pages for i in p) == ["obs-a1", "obs-a1", "obs-a2"]
    assert len(pages) == 3


def test_everything_counts_only_granted_types(world: World) -> None:
    r = world.c.get("/fhir/Patient/pat-a/$everything", headers=world.a)
    assert world.ids(r) == {"Patient/pat-a", "Observation/obs-a1", "Observation/obs-a2",
                            "Condition/cond-a"}
    assert r.json()["total"] == 4
    only_obs = world.smart.headers("patient/Patient.rs patient/Observation.rs", patient="pat-a")
    r = world.c.get("/fhir/Patient/pat-a/$everything", headers=only_obs)
    assert world.ids(r) == {"Patient/pat-a", "Observation/obs-a1", "Observation/obs-a2"}
    assert r.json()["total"] == 3
    labs = world.smart.headers(f"patient/Patient.rs patient/Observation.rs?category={LAB}",
                               patient="pat-a")
    r = world.c.get("/fhir/Patient/pat-a/$everything", headers=labs)
    assert world.ids(r) == {"Patient/pat-a", "Observation/obs-a1"}
    assert r.json()["total"] == 2
    r = world.c.get("/fhir/Patient/pat-a/$everything?_type=Condition", headers=labs)
    assert r.status_code == 403
    r = world.c.get("/fhir/Patient/pat-a/$everything?_type=Observation", headers=labs)
    assert world.ids(r) == {"Observation/obs-a1"}
    # another patient's $everything is 404, as for a patient that does not exist
    r = world.c.get("/fhir/Patient/pat-b/$everything", headers=world.a)
    assert r.status_code == 404
    missing = world.c.get("/fhir/Patient/pat-zz/$everything", headers=world.a)
    assert r.json() == json.loads(missing.text.replace("pat-zz", "pat-b"))


def _transaction(*entries: dict[str, Any], kind: str = "transaction") -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": kind, "entry": list(entries)}


def test_transaction_entry_outside_the_grant_fails_the_transaction(world: World) -> None:
    bundle = _transaction(
        {"fullUrl": "urn:uuid:1", "resource": lab("pat-a", value=5.0),
         "request": {"method": "POST", "url": "Observation"}},
        {"fullUrl": "urn:uuid:2", "resource": lab("pat-b", value=5.1),
         "request": {"method": "POST", "url": "Observation"}})
    r = world.c.post("/fhir", json=bundle, headers=world.a_write)
    assert r.status_code == 403, r.text
    assert "Bundle.entry[1]" in r.text
    r = world.c.get("/fhir/Observation?_summary=count", headers=world.admin)
    assert r.json()["total"] == 4  # nothing of the transaction was written


def test_batch_entries_are_authorized_one_by_one(world: World) -> None:
    bundle = _transaction(
        {"request": {"method": "GET", "url": "Observation/obs-a1"}},
        {"request": {"method": "GET", "url": "Observation/obs-b1"}},
        {"request": {"method": "GET", "url": "Condition?subject=Patient/pat-b"}},
        {"resource": lab("pat-a", value=4.0), "request": {"method": "POST",
                                                           "url": "Observation"}},
        {"resource": lab("pat-b", value=4.0), "request": {"method": "POST",
                                                           "url": "Observation"}},
        {"request": {"method": "GET", "url": "Binary/bin-1"}},
        kind="batch")
    r = world.c.post("/fhir", json=bundle, headers=world.a_write)
    assert r.status_code == 200, r.text
    statuses = [e["response"]["status"] for e in r.json()["entry"]]
    assert statuses[0].startswith("200")
    assert statuses[1].startswith("404")
    assert statuses[2].startswith("200")
    assert r.json()["entry"][2]["resource"].get("total") == 0
    assert statuses[3].startswith("201")
    assert statuses[4].startswith("403")
    assert statuses[5].startswith("403")  # Binary is not for patient/ tokens
    assert B_SECRET not in r.text and "11.2" not in r.text


def test_transaction_if_none_exist_cannot_return_a_hidden_resource(world: World) -> None:
    bundle = _transaction(
        {"fullUrl": "urn:uuid:p", "resource": patient(family="李", given="四"),
         "request": {"method": "POST", "url": "Patient",
                     "ifNoneExist": f"identifier={B_ID_NUMBER}"}})
    r = world.c.post("/fhir", json=bundle, headers=world.a_write)
    # no match is visible, so it is a create of a Patient outside the compartment: 403
    assert r.status_code == 403, r.text
    assert "pat-b" not in r.text and B_ID_NUMBER not in r.text.replace(
        f"identifier={B_ID_NUMBER}", "")
    # the same through a read-and-search token that may create Observations only
    obs_writer = world.smart.headers("patient/Observation.crs patient/Patient.rs",
                                     patient="pat-a")
    bundle = _transaction(
        {"fullUrl": "urn:uuid:o", "resource": lab("pat-a", value=7.7),
         "request": {"method": "POST", "url": "Observation",
                     "ifNoneExist": "code=http://loinc.org|718-7"}})
    r = world.c.post("/fhir", json=bundle, headers=obs_writer)
    assert r.status_code == 200, r.text
    entry = r.json()["entry"][0]
    assert entry["response"]["status"].startswith("201")  # 李四's obs-b2 matched nothing
    assert "obs-b2" not in r.text


def test_conditional_create_ignores_hidden_matches(world: World) -> None:
    headers = {**world.a_write, "If-None-Exist": "code=http://loinc.org|718-7"}
    r = world.c.post("/fhir/Observation", json=lab("pat-a", loinc="718-7", display="血红蛋白"),
                     headers=headers)
    assert r.status_code == 201, r.text
    assert r.json()["subject"]["reference"] == "Patient/pat-a"
    r = world.c.post("/fhir/Observation", json=lab("pat-a", loinc="718-7", display="血红蛋白"),
                     headers=headers)
    assert r.status_code == 200  # now 张三's own one matches


def test_conditional_reference_to_hidden_resource_is_not_found(world: World) -> None:
    obs = lab("pat-a", value=3.3)
    obs["subject"] = {"reference": f"Patient?identifier={B_ID_NUMBER}"}
    r = world.c.post("/fhir", json=_transaction(
        {"fullUrl": "urn:uuid:x", "resource": obs,
         "request": {"method": "POST", "url": "Observation"}}), headers=world.a_write)
    assert r.status_code == 412, r.text
    assert "matched 0" in r.text
    r = world.c.post("/fhir", json=_transaction(
        {"fullUrl": "urn:uuid:x", "resource": obs,
         "request": {"method": "POST", "url": "Observation"}}), headers=world.admin)
    assert r.status_code == 200, r.text


def test_page_token_of_another_token_is_refused(world: World) -> None:
    r = world.c.get("/fhir/Observation?_count=1", headers=world.a)
    nxt = next(link["url"] for link in r.json()["link"] if link["relation"] == "next")
    path = urlsplit(nxt)
    url = f"/fhir/Observation?{path.query}"
    assert "_page_token" in dict(parse_qsl(path.query))
    assert world.c.get(url, headers=world.a).status_code == 200
    other = world.smart.headers("launch/patient patient/*.rs", patient="pat-b",
                                grant_id="grant-b")
    r2 = world.c.get(url, headers=other)
    assert r2.status_code == 410
    same_scopes = world.smart.headers("system/*.rs", grant_id="grant-sys")
    assert world.c.get(url, headers=same_scopes).status_code == 410
    assert world.c.get(url).status_code == 401


def test_hidden_and_missing_resources_get_identical_404(world: World) -> None:
    cases = [
        ("GET", "/fhir/Observation/{id}", None),
        ("GET", "/fhir/Observation/{id}/_history/1", None),
        ("GET", "/fhir/Observation/{id}/_history", None),
        ("GET", "/fhir/Observation/{id}/$validate", None),
        ("PATCH", "/fhir/Observation/{id}", "patch"),
        ("DELETE", "/fhir/Observation/{id}", None),
        ("PUT", "/fhir/Observation/{id}", "update"),  # last: it creates the missing one
    ]
    for method, template, body in cases:
        answers = []
        for oid in ("obs-b1", "obs-zz"):
            content: bytes | None = None
            headers = dict(world.a_write)
            if body == "update":
                content = json.dumps({**lab("pat-a"), "id": oid}).encode()
            elif body == "patch":
                content = b'[{"op": "replace", "path": "/status", "value": "amended"}]'
                headers["Content-Type"] = "application/json-patch+json"
            r = world.c.request(method, template.format(id=oid), content=content,
                                headers=headers)
            answers.append((r.status_code, r.text.replace(oid, "{id}")))
        if method == "PUT":
            # a PUT of a missing id creates it (update-as-create); a hidden one must not leak
            assert answers[0][0] == 404, (template, answers)
            continue
        assert answers[0] == answers[1], (method, template, answers)
        assert answers[0][0] == 404
    # the FastRead path and the routed path agree
    r = world.c.get("/fhir/Observation/obs-b1?_pretty=false", headers=world.a)
    assert r.status_code == 404
    # a deleted hidden resource is 404 too, not 410
    world.c.delete("/fhir/Observation/obs-b2", headers=world.admin)
    r = world.c.get("/fhir/Observation/obs-b2", headers=world.a)
    assert r.status_code == 404
    assert world.c.get("/fhir/Observation/obs-b2", headers=world.admin).status_code == 410


@pytest.mark.parametrize("path", [
    "/fhir/Patient/pat-b", "/fhir/Patient/pat-b/_history/1", "/fhir/Patient/pat-b/_history",
    "/fhir/Patient/pat-b/$everything", "/fhir/Patient/pat-b/$validate"])
def test_patient_token_gets_404_for_another_patients_data(world: World, path: str) -> None:
    r = world.c.get(path, headers=world.a)
    assert r.status_code == 404, r.text
    assert B_SECRET not in r.text and B_ID_NUMBER not in r.text


def test_error_messages_never_echo_hidden_content(world: World) -> None:
    answers = [
        world.c.get("/fhir/Observation/obs-b1", headers=world.a),
        world.c.get("/fhir/Patient?identifier=" + B_ID_NUMBER, headers=world.a),
        world.c.put(f"/fhir/Patient?identifier={B_ID_NUMBER}",
                    json=patient(family="王", given="五"), headers=world.a_write),
        world.c.delete(f"/fhir/Patient?identifier={B_ID_NUMBER}", headers=world.a_write),
        world.c.patch("/fhir/Observation?code=http://loinc.org|718-7",
                      content=b'[{"op": "replace", "path": "/status", "value": "amended"}]',
                      headers={**world.a_write,
                               "Content-Type": "application/json-patch+json"}),
        world.c.put("/fhir/Observation/obs-b1", json={**lab("pat-a"), "id": "obs-b1"},
                    headers=world.a_write),
        world.c.get("/fhir/Binary/bin-1", headers=world.a),
        world.c.get("/fhir/Group/grp-1", headers=world.a),
    ]
    for r in answers:
        assert B_SECRET not in r.text and "高血压" not in r.text and "98" not in r.text, r.text
        assert "pat-b" not in r.text and "obs-b2" not in r.text
        assert r.status_code != 500
    # 李四 is still there, unchanged
    r = world.c.get("/fhir/Patient/pat-b", headers=world.admin)
    assert r.status_code == 200 and r.json()["meta"]["versionId"] == "1"


def test_granular_scope_returns_only_matching_resources(world: World) -> None:
    labs = world.smart.headers(f"patient/Observation.rs?category={LAB}", patient="pat-a")
    assert world.ids(world.c.get("/fhir/Observation", headers=labs)) == {"Observation/obs-a1"}
    assert world.c.get("/fhir/Observation/obs-a1", headers=labs).status_code == 200
    assert world.c.get("/fhir/Observation/obs-a2", headers=labs).status_code == 404
    r = world.c.get("/fhir/Observation?_summary=count", headers=labs)
    assert r.json()["total"] == 1
    # two granular scopes OR together
    both = world.smart.headers(
        f"patient/Observation.rs?category={LAB} "
        "patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/"
        "observation-category|vital-signs", patient="pat-a")
    assert world.ids(world.c.get("/fhir/Observation", headers=both)) == {
        "Observation/obs-a1", "Observation/obs-a2"}
    # a system token with a granular scope sees matching resources of every patient
    system_labs = world.smart.headers(f"system/Observation.rs?category={LAB}")
    assert world.ids(world.c.get("/fhir/Observation", headers=system_labs)) == {
        "Observation/obs-a1", "Observation/obs-b1", "Observation/obs-b2"}


def test_write_outside_the_compartment_is_403(world: World) -> None:
    r = world.c.post("/fhir/Observation", json=lab("pat-b"), headers=world.a_write)
    assert r.status_code == 403
    r = world.c.post("/fhir/Observation", json=lab("pat-a"), headers=world.a_write)
    assert r.status_code == 201, r.text
    # shared types are readable, not writable, under patient/ scopes
    r = world.c.put("/fhir/Organization/org-1", json={"resourceType": "Organization",
                                                        "id": "org-1", "name": "改名"},
                    headers=world.a_write)
    assert r.status_code == 403
    assert world.c.get("/fhir/Organization/org-1", headers=world.a).status_code == 200
    # a read-only token cannot write at all: 403 from the token alone
    r = world.c.post("/fhir/Observation", json=lab("pat-a"), headers=world.a)
    assert r.status_code == 403
    assert 'scope="patient/Observation.c"' in r.headers["www-authenticate"]
    # Binary and Group are denied to patient/ tokens; no patient claim denies everything
    assert world.c.get("/fhir/Binary/bin-1", headers=world.a).status_code == 403
    assert world.c.get("/fhir/Group", headers=world.a).status_code == 403
    no_patient = world.smart.headers("patient/*.rs")
    assert world.c.get("/fhir/Observation", headers=no_patient).status_code == 403


def test_update_cannot_move_a_resource_to_another_patient(world: World) -> None:
    res = world.c.get("/fhir/Observation/obs-a1", headers=world.a).json()
    res["subject"] = {"reference": "Patient/pat-b"}
    r = world.c.put("/fhir/Observation/obs-a1", json=res, headers=world.a_write)
    assert r.status_code == 403
    patch = [{"op": "replace", "path": "/subject/reference", "value": "Patient/pat-b"}]
    r = world.c.patch("/fhir/Observation/obs-a1", json=patch,
                      headers={**world.a_write, "Content-Type": "application/json-patch+json"})
    assert r.status_code == 403
    assert world.c.get("/fhir/Observation/obs-a1", headers=world.admin).json()["subject"] == {
        "reference": "Patient/pat-a"}
    # changing one's own resource is fine
    res["subject"] = {"reference": "Patient/pat-a"}
    res["status"] = "amended"
    assert world.c.put("/fhir/Observation/obs-a1", json=res,
                       headers=world.a_write).status_code == 200


def test_user_scopes_follow_the_signed_in_user(world: World) -> None:
    doctor = world.smart.headers("user/*.rs", fhir_user="Practitioner/prac-1")
    assert len(world.ids(world.c.get("/fhir/Observation", headers=doctor))) == 4  # policy gap
    me = world.smart.headers("user/*.rs", fhir_user="Patient/pat-a")
    assert world.ids(world.c.get("/fhir/Observation", headers=me)) == {
        "Observation/obs-a1", "Observation/obs-a2"}
    nobody = world.smart.headers("user/*.rs")
    assert world.c.get("/fhir/Observation", headers=nobody).status_code == 403


def test_import_cn_writes_are_held_to_the_callers_scopes(world: World, tmp_path: Path) -> None:
    from tests.cnemr.test_importer import HOSPITAL, shouye_file
    csv_bytes = shouye_file(tmp_path).read_bytes()
    params = {"resourceType": "Parameters", "parameter": [
        {"name": "dataset", "valueCode": "patient"},
        {"name": "mapping", "valueString": "patient-shouye"},
        {"name": "hospitalOid", "valueString": HOSPITAL.oid},
        {"name": "file", "valueAttachment": {"contentType": "text/csv", "title": "basy.csv",
                                             "data": base64.b64encode(csv_bytes).decode()}}]}
    before = world.c.get("/fhir/Patient?_summary=count", headers=world.admin).json()["total"]
    # a token that may write Observations only: the operation runs, every row is refused
    obs_only = world.smart.headers("system/Observation.cu")
    r = world.c.post("/fhir/$import-cn", json=params, headers=obs_only)
    assert r.status_code == 200, r.text
    out = {p["name"]: p for p in r.json()["parameter"]}
    assert out["resourcesWritten"]["valueInteger"] == 0
    assert out["rowsRejected"]["valueInteger"] == out["rowsRead"]["valueInteger"] > 0
    # a patient app cannot import other patients either
    r = world.c.post("/fhir/$import-cn", json=params, headers=world.a_write)
    assert r.status_code == 200, r.text
    assert {p["name"]: p for p in r.json()["parameter"]}["resourcesWritten"][
        "valueInteger"] == 0
    assert world.c.get("/fhir/Patient?_summary=count",
                       headers=world.admin).json()["total"] == before
    # a read-only token may not call it at all
    assert world.c.post("/fhir/$import-cn", json=params,
                        headers=world.a).status_code == 403
    # the administrator's import writes
    r = world.c.post("/fhir/$import-cn", json=params, headers=world.admin)
    assert {p["name"]: p for p in r.json()["parameter"]}["resourcesWritten"][
        "valueInteger"] > 0
    assert world.c.get("/fhir/Patient?_summary=count",
                       headers=world.admin).json()["total"] > before


def test_system_token_behaves_like_an_open_server(world: World, tmp_path: Path) -> None:
    """Smoke: a slice of CRUD, search and bundle behaviour with `system/*.cruds` equals the
    same requests on a server with authorization off."""
    off = TestClient(create_app(make_settings(tmp_path / "off")))
    with off:
        answers: list[list[tuple[int, Any]]] = []
        for client, headers in ((world.c, world.admin), (off, FHIR_JSON)):
            got: list[tuple[int, Any]] = []

            def norm(r: Any) -> tuple[int, Any]:
                return r.status_code, _strip_volatile(r.json()) if r.content else None

            got.append(norm(client.put("/fhir/Patient/p-1", json=patient("p-1"),
                                       headers=headers)))
            got.append(norm(client.post("/fhir/Observation", json={**lab("p-1"),
                                                                    "id": "ignored"},
                                        headers={**headers, "Prefer": "return=minimal"})))
            got.append(norm(client.get("/fhir/Patient/p-1", headers=headers)))
            got.append(norm(client.get("/fhir/Observation?subject=Patient/p-1&_total=accurate",
                                       headers=headers)))
            got.append(norm(client.get("/fhir/Patient/nope", headers=headers)))
            got.append(norm(client.post("/fhir", json=_transaction(
                {"fullUrl": "urn:uuid:c", "resource": condition("p-1"),
                 "request": {"method": "POST", "url": "Condition"}}), headers=headers)))
            got.append(norm(client.get("/fhir/Condition?_summary=count", headers=headers)))
            got.append(norm(client.delete("/fhir/Patient/p-1", headers=headers)))
            got.append(norm(client.get("/fhir/Patient/p-1", headers=headers)))
            answers.append(got)
    smart_answers, off_answers = answers
    # the SMART world holds extra data: compare what does not depend on it
    assert [s for s, _ in smart_answers] == [s for s, _ in off_answers]
    assert smart_answers[2] == off_answers[2]
    assert smart_answers[4] == off_answers[4]
    assert smart_answers[8] == off_answers[8]


def _strip_volatile(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _strip_volatile(v) for k, v in node.items()
                if k not in ("lastUpdated", "id", "fullUrl", "etag", "location", "url",
                             "versionId")}
    if isinstance(node, list):
        return [_strip_volatile(v) for v in node]
    return node


def test_bearer_helper_is_a_plain_header() -> None:
    assert bearer("abc") == {"Authorization": "Bearer abc"}


def test_validate_needs_the_permission_it_stands_for(world: World) -> None:
    body = lab("pat-a")
    r = world.c.post("/fhir/Observation/$validate", json=body, headers=world.a)
    assert r.status_code == 403  # validating a body is a dry-run create: needs c
    assert 'scope="patient/Observation.c"' in r.headers["www-authenticate"]
    r = world.c.post("/fhir/Observation/$validate", json=body, headers=world.a_write)
    assert r.status_code == 200 and r.json()["resourceType"] == "OperationOutcome"
    assert world.c.get("/fhir/Observation/obs-a1/$validate", headers=world.a).status_code == 200
    assert world.c.get("/fhir/Observation/obs-b1/$validate", headers=world.a).status_code == 404


def test_v1_scopes_are_held_like_their_v2_equivalents(world: World) -> None:
    # SMART v1 names: `.read` = `.rs`, `.write` = `.cud`, `.*` = `.cruds`
    reader = world.smart.headers("launch/patient patient/Observation.read", patient="pat-a",
                                 grant_id="grant-v1r")
    assert world.ids(world.c.get("/fhir/Observation", headers=reader)) == {
        "Observation/obs-a1", "Observation/obs-a2"}
    assert world.c.get("/fhir/Observation/obs-b1", headers=reader).status_code == 404
    assert world.c.get("/fhir/Condition", headers=reader).status_code == 403
    assert world.c.put("/fhir/Observation/obs-a2", json=vital("pat-a", "obs-a2"),
                       headers=reader).status_code == 403
    writer = world.smart.headers("launch/patient patient/Observation.write", patient="pat-a",
                                 grant_id="grant-v1w")
    assert world.c.put("/fhir/Observation/obs-a2", json=vital("pat-a", "obs-a2"),
                       headers=writer).status_code == 200
    assert world.c.get("/fhir/Observation/obs-a2", headers=writer).status_code == 403
    everything = world.smart.headers("user/*.*", fhir_user="Patient/pat-a", grant_id="grant-v1a")
    assert world.ids(world.c.get("/fhir/Condition", headers=everything)) == {"Condition/cond-a"}
    assert world.c.delete("/fhir/Condition/cond-b", headers=everything).status_code == 404
