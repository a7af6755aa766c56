"""`PatientCompartment`: which patients a resource belongs to, per the R4 Patient
CompartmentDefinition, and agreement with what the store's `Patient/<id>/$everything` returns."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.auth.compartment import PatientCompartment
from app.definitions.registry import load_registry
from app.samples import HospitalGenerator
from app.samples.hospital import transaction_bundle
from app.search.extract import Indexer
from app.server import create_app
from tests.conftest import BASE, FHIR_JSON, condition, lab, make_settings, patient

REGISTRY = load_registry()
COMPARTMENT = PatientCompartment(REGISTRY, Indexer(REGISTRY, base_urls=(BASE,)))

GEN = HospitalGenerator(seed=404)
ORG = GEN.organization()
PRACS = list(GEN.practitioners(3))
DOC = f"Practitioner/{PRACS[0]['id']}"
NURSE = f"Practitioner/{PRACS[1]['id']}"
HOSPITAL = f"Organization/{ORG['id']}"


def ref(target: str, display: str | None = None) -> dict[str, str]:
    out = {"reference": target}
    if display:
        out["display"] = display
    return out


def cc(system: str, code: str, display: str) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code, "display": display}], "text": display}


# -- hand-written examples from a Chinese hospital -------------------------------------------

ZHANG = patient("zhang-san")  # 张三, the father
LI = patient("li-xiaohong", family="李", given="小红", id_number="110105201503150021",
             gender="female", birth="2015-03-15", mrn="BA2026002")  # his daughter
WANG = patient("wang-wu", family="王", given="五", id_number="310101198001010017",
               mrn="BA2026003")
# A duplicate record merged into 张三: R4 puts it in 张三's compartment through `link`.
ZHANG_DUP = {**patient("zhang-san-dup", mrn="BA2019077"),
             "link": [{"other": ref("Patient/zhang-san"), "type": "replaced-by"}]}


def examples() -> list[dict[str, Any]]:
    """Realistic resources covering each compartment parameter of interest (ids are fixed)."""
    bp_self = {  # home blood pressure the patient measured herself: performer is the patient
        "resourceType": "Observation", "id": "obs-home-bp", "status": "final",
        "code": cc("http://loinc.org", "85354-9", "血压"),
        "subject": ref("Patient/wang-wu"), "performer": [ref("Patient/wang-wu")],
        "effectiveDateTime": "2026-11-20T07:00:00+08:00",
        "component": [
            {"code": cc("http://loinc.org", "8480-6", "收缩压"),
             "valueQuantity": {"value": 138, "unit": "mmHg",
                               "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}},
            {"code": cc("http://loinc.org", "8462-4", "舒张压"),
             "valueQuantity": {"value": 88, "unit": "mmHg",
                               "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}}],
    }
    # 父亲张三 reports his daughter's temperature: subject 李小红, performer 张三 -> both.
    fever = {**lab("li-xiaohong", loinc="8310-5", display="体温", value=38.6, unit="Cel",
                   oid="obs-fever"), "performer": [ref("Patient/zhang-san")]}
    fever["category"] = [{"coding": [{
        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
        "code": "vital-signs"}]}]
    wbc = {**lab("zhang-san", oid="obs-wbc"), "performer": [ref(DOC), ref(HOSPITAL)]}
    absolute = lab("zhang-san", oid="obs-absolute")
    absolute["subject"] = ref(f"{BASE}/Patient/zhang-san")
    versioned = lab("wang-wu", oid="obs-versioned")
    versioned["subject"] = ref("Patient/wang-wu/_history/2")
    foreign = lab("zhang-san", oid="obs-foreign")  # 外院 (另一家医院) 的患者
    foreign["subject"] = ref("http://fhir.other-hospital.example.cn/fhir/Patient/zhang-san")
    identifier_only = lab("zhang-san", oid="obs-identifier-only")
    identifier_only["subject"] = {"identifier": {"system": "urn:oid:2.16.156.10011.1.13",
                                                 "value": "BA2026001"}}
    # 张三's own result that is about his daughter: `focus` is no compartment parameter.
    focus = {**lab("zhang-san", oid="obs-focus"), "focus": [ref("Patient/li-xiaohong")]}
    encounter = {
        "resourceType": "Encounter", "id": "enc-zhang-1", "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                  "code": "AMB", "display": "门诊"},
        "subject": ref("Patient/zhang-san", "张三"),
        "participant": [{"individual": ref(DOC)}],
        "period": {"start": "2026-11-20T08:00:00+08:00", "end": "2026-11-20T08:20:00+08:00"},
        "serviceProvider": ref(HOSPITAL),
    }
    cond_by_doctor = {**condition("zhang-san"), "id": "cond-dm", "asserter": ref(DOC),
                      "encounter": ref("Encounter/enc-zhang-1")}
    # 父亲 (also a patient here) states his daughter's condition: asserter is a Patient.
    cond_by_father = {**condition("li-xiaohong", code="J45.900", display="支气管哮喘"),
                      "id": "cond-asthma", "asserter": ref("Patient/zhang-san")}
    med_request = {
        "resourceType": "MedicationRequest", "id": "mr-metformin", "status": "active",
        "intent": "order",
        "medicationCodeableConcept": cc("urn:oid:2.16.156.10011.2.3.2.1", "86900718000020",
                                        "二甲双胍片 0.5g"),
        "subject": ref("Patient/zhang-san"), "requester": ref(DOC),
        "authoredOn": "2026-11-20T08:15:00+08:00",
        "dosageInstruction": [{"text": "每日两次，每次一片，餐后口服"}],
    }
    report = {
        "resourceType": "DiagnosticReport", "id": "dr-cbc", "status": "final",
        "code": cc("http://loinc.org", "58410-2", "血常规"),
        "subject": ref("Patient/zhang-san"), "performer": [ref(HOSPITAL)],
        "result": [ref("Observation/obs-wbc")], "issued": "2026-11-20T10:00:00+08:00",
    }
    allergy_recorded_by_doctor = {
        "resourceType": "AllergyIntolerance", "id": "ai-penicillin",
        "code": cc("http://snomed.info/sct", "764146007", "青霉素"),
        "patient": ref("Patient/li-xiaohong"), "recorder": ref(NURSE),
        "asserter": ref("Patient/zhang-san"),  # 由父亲告知
    }
    allergy_self_recorded = {
        "resourceType": "AllergyIntolerance", "id": "ai-seafood",
        "code": cc("http://snomed.info/sct", "44027008", "海鲜"),
        "patient": ref("Patient/wang-wu"), "recorder": ref("Patient/wang-wu"),
    }
    # 父亲自费为女儿投保: beneficiary 李小红, subscriber/policyHolder/payor 张三.
    coverage = {
        "resourceType": "Coverage", "id": "cov-li", "status": "active",
        "type": cc("http://terminology.hl7.org/CodeSystem/v3-ActCode", "pay", "自费"),
        "policyHolder": ref("Patient/zhang-san"), "subscriber": ref("Patient/zhang-san"),
        "beneficiary": ref("Patient/li-xiaohong"), "relationship": cc(
            "http://terminology.hl7.org/CodeSystem/subscriber-relationship", "child", "子女"),
        "payor": [ref("Patient/zhang-san")],
    }
    coverage_insurer = {  # 城镇职工医保: payor is an Organization
        "resourceType": "Coverage", "id": "cov-wang", "status": "active",
        "beneficiary": ref("Patient/wang-wu"), "payor": [ref(HOSPITAL)],
    }
    claim = {
        "resourceType": "Claim", "id": "claim-li", "status": "active",
        "type": cc("http://terminology.hl7.org/CodeSystem/claim-type", "professional", "门诊"),
        "use": "claim", "patient": ref("Patient/li-xiaohong"),
        "created": "2026-11-20", "provider": ref(HOSPITAL),
        "priority": cc("http://terminology.hl7.org/CodeSystem/processpriority", "normal", "普通"),
        "payee": {"type": cc("http://terminology.hl7.org/CodeSystem/payeetype", "subscriber",
                             "投保人"), "party": ref("Patient/zhang-san")},
        "insurance": [{"sequence": 1, "focal": True, "coverage": ref("Coverage/cov-li")}],
    }
    composition = {
        "resourceType": "Composition", "id": "comp-discharge", "status": "final",
        "type": cc("http://loinc.org", "18842-5", "出院小结"),
        "subject": ref("Patient/zhang-san"), "date": "2026-11-22T16:00:00+08:00",
        "author": [ref(DOC)], "title": "出院小结",
        "attester": [{"mode": "legal", "party": ref(DOC)}],
    }
    composition_by_patient = {  # 患者自述 (patient-authored history)
        "resourceType": "Composition", "id": "comp-self", "status": "final",
        "type": cc("http://loinc.org", "11329-0", "病史"),
        "subject": ref("Patient/li-xiaohong"), "date": "2026-11-21T09:00:00+08:00",
        "author": [ref("Patient/zhang-san")], "title": "家长陈述病史",
    }
    document = {
        "resourceType": "DocumentReference", "id": "doc-ct", "status": "current",
        "type": cc("http://loinc.org", "18748-4", "影像报告"),
        "subject": ref("Patient/wang-wu"), "author": [ref(DOC)],
        "content": [{"attachment": {"contentType": "application/pdf",
                                    "url": "http://pacs.example.cn/ct/2026-11-20.pdf",
                                    "title": "胸部CT报告"}}],
    }
    group = {
        "resourceType": "Group", "id": "grp-dm-followup", "type": "person", "actual": True,
        "name": "糖尿病随访组",
        "member": [{"entity": ref("Patient/zhang-san")}, {"entity": ref("Patient/wang-wu")}],
    }
    provenance = {
        "resourceType": "Provenance", "id": "prov-import",
        "target": [ref("Patient/wang-wu"), ref("Observation/obs-wbc")],
        "recorded": "2026-11-20T10:00:00+08:00",
        "agent": [{"who": ref(HOSPITAL)}],
    }
    provenance_no_patient = {  # about 张三's Observation, but names no Patient: not in
        "resourceType": "Provenance", "id": "prov-obs",
        "target": [ref("Observation/obs-wbc")], "recorded": "2026-11-20T10:00:00+08:00",
        "agent": [{"who": ref(DOC)}],
    }
    return [ZHANG, LI, WANG, ZHANG_DUP, bp_self, fever, wbc, absolute, versioned, foreign,
            identifier_only, focus, encounter, cond_by_doctor, cond_by_father, med_request, report,
            allergy_recorded_by_doctor, allergy_self_recorded, coverage, coverage_insurer, claim,
            composition, composition_by_patient, document, group, provenance,
            provenance_no_patient]


EXAMPLES = {f"{r['resourceType']}/{r['id']}": r for r in examples()}


def of(key: str) -> frozenset[str]:
    return COMPARTMENT.patients_of(EXAMPLES[key])


# -- per resource -----------------------------------------------------------------------------

@pytest.mark.parametrize(("key", "expected"), [
    ("Observation/obs-home-bp", {"wang-wu"}),  # subject and performer, same patient
    ("Observation/obs-fever", {"li-xiaohong", "zhang-san"}),  # performer is another patient
    ("Observation/obs-wbc", {"zhang-san"}),  # performer Practitioner/Organization: no one
    ("Observation/obs-focus", {"zhang-san"}),  # `focus` does not count
    ("Encounter/enc-zhang-1", {"zhang-san"}),
    ("Condition/cond-dm", {"zhang-san"}),
    ("Condition/cond-asthma", {"li-xiaohong", "zhang-san"}),  # asserter is a Patient
    ("MedicationRequest/mr-metformin", {"zhang-san"}),
    ("DiagnosticReport/dr-cbc", {"zhang-san"}),
    ("AllergyIntolerance/ai-penicillin", {"li-xiaohong", "zhang-san"}),  # asserter param
    ("AllergyIntolerance/ai-seafood", {"wang-wu"}),  # patient and recorder
    ("Coverage/cov-li", {"li-xiaohong", "zhang-san"}),  # beneficiary; subscriber/payor
    ("Coverage/cov-wang", {"wang-wu"}),  # payor an Organization
    ("Claim/claim-li", {"li-xiaohong", "zhang-san"}),  # patient; payee.party a Patient
    ("Composition/comp-discharge", {"zhang-san"}),  # author/attester are Practitioners
    ("Composition/comp-self", {"li-xiaohong", "zhang-san"}),  # author a Patient
    ("DocumentReference/doc-ct", {"wang-wu"}),
    ("Group/grp-dm-followup", {"zhang-san", "wang-wu"}),  # R4: Group.member.entity
    ("Provenance/prov-import", {"wang-wu"}),  # R4: target.where(resolve() is Patient)
    ("Provenance/prov-obs", set()),  # targets an Observation only
    ("Patient/zhang-san", {"zhang-san"}),  # its own compartment
    ("Patient/zhang-san-dup", {"zhang-san-dup", "zhang-san"}),  # and link.other's
])
def test_patients_of_hand_written_examples(key: str, expected: set[str]) -> None:
    assert of(key) == frozenset(expected)
    for pid in ("zhang-san", "li-xiaohong", "wang-wu"):
        assert COMPARTMENT.contains(EXAMPLES[key], pid) == (pid in expected)


def test_only_compartment_parameters_count() -> None:
    obs = {**lab("zhang-san"), "focus": [ref("Patient/wang-wu")],
           "hasMember": [ref("Observation/x")]}
    assert COMPARTMENT.patients_of(obs) == {"zhang-san"}  # `focus` is not a compartment param
    enc = {"resourceType": "Encounter", "status": "finished",
           "class": {"code": "AMB"}, "subject": ref("Patient/zhang-san"),
           "participant": [{"individual": ref("RelatedPerson/rp-1")}]}
    assert COMPARTMENT.patients_of(enc) == {"zhang-san"}
    # DiagnosticReport's only compartment parameter is `subject`: a Patient performer is not.
    dr = {"resourceType": "DiagnosticReport", "status": "final", "code": {"text": "血常规"},
          "subject": ref("Patient/zhang-san"), "performer": [ref("Patient/wang-wu")]}
    assert COMPARTMENT.patients_of(dr) == {"zhang-san"}


def test_absolute_and_versioned_references_are_local() -> None:
    assert of("Observation/obs-absolute") == {"zhang-san"}
    assert of("Observation/obs-versioned") == {"wang-wu"}
    with_slash = PatientCompartment(REGISTRY, Indexer(REGISTRY, base_urls=(BASE + "/",)))
    assert with_slash.patients_of(EXAMPLES["Observation/obs-absolute"]) == {"zhang-san"}
    versioned_absolute = {**lab("x"), "subject": ref(f"{BASE}/Patient/zhang-san/_history/7")}
    assert COMPARTMENT.patients_of(versioned_absolute) == {"zhang-san"}


def test_references_that_name_no_local_patient_count_for_no_one() -> None:
    assert of("Observation/obs-foreign") == frozenset()
    assert of("Observation/obs-identifier-only") == frozenset()
    for target in ("#p1", "urn:uuid:6f1b2a9e-3c4d-5e6f-8a7b-9c0d1e2f3a4b",
                   "http://testserver/other/Patient/zhang-san",  # not under our base
                   "https://testserver/fhir/Patient/zhang-san",  # other scheme: other server
                   "Practitioner/zhang-san", "Patient/", "Patient/有中文"):
        obs = {**lab("x"), "subject": ref(target)}
        assert COMPARTMENT.patients_of(obs) == frozenset(), target
    # Without base URLs every absolute URL is another server's.
    bare = PatientCompartment(REGISTRY, Indexer(REGISTRY))
    assert bare.patients_of(EXAMPLES["Observation/obs-absolute"]) == frozenset()
    assert bare.patients_of(EXAMPLES["Observation/obs-wbc"]) == {"zhang-san"}


def test_shared_types_and_odd_input_are_in_no_compartment() -> None:
    for res in (ORG, *PRACS):
        assert COMPARTMENT.patients_of(res) == frozenset()
        assert COMPARTMENT.is_shared(res["resourceType"])
    medication = {"resourceType": "Medication", "id": "m1",
                  "code": cc("urn:oid:2.16.156.10011.2.3.2.1", "1", "阿莫西林胶囊")}
    assert COMPARTMENT.patients_of(medication) == frozenset()
    # Location is shared: no reference of it counts, whatever it names.
    loc = {"resourceType": "Location", "name": "内科病房", "managingOrganization": ref(HOSPITAL)}
    assert COMPARTMENT.patients_of(loc) == frozenset()
    for odd in ({}, {"resourceType": 3}, {"resourceType": "NotAType", "subject":
                                          ref("Patient/zhang-san")}, "Patient/zhang-san"):
        assert COMPARTMENT.patients_of(odd) == frozenset()  # type: ignore[arg-type]
    assert COMPARTMENT.patients_of({"resourceType": "Patient"}) == frozenset()  # no id yet


def test_member_types_and_is_shared_follow_the_definition() -> None:
    members = COMPARTMENT.member_types()
    for t in ("Patient", "Observation", "Encounter", "Condition", "MedicationRequest",
              "DiagnosticReport", "AllergyIntolerance", "Claim", "Coverage", "Composition",
              "DocumentReference", "Group", "Provenance", "RelatedPerson", "Person",
              "AuditEvent", "Appointment", "Schedule"):
        assert t in members and not COMPARTMENT.is_shared(t), t
    for t in ("Organization", "Practitioner", "PractitionerRole", "Location", "Medication",
              "Substance", "HealthcareService", "Endpoint", "Device", "Binary", "Bundle",
              "StructureDefinition", "ValueSet", "CodeSystem", "Slot", "Contract"):
        assert t not in members and COMPARTMENT.is_shared(t), t
    assert not COMPARTMENT.is_shared("NotAType") and "NotAType" not in members
    # Every R4 resource type is exactly one of the two.
    assert {t for t in REGISTRY.resource_types if COMPARTMENT.is_shared(t)} == (
        set(REGISTRY.resource_types) - members)
    assert members <= set(REGISTRY.resource_types)
    assert COMPARTMENT.params("Observation") == {"subject", "performer"}
    assert COMPARTMENT.params("Coverage") == {"policy-holder", "subscriber", "beneficiary",
                                              "payor"}
    assert COMPARTMENT.params("Organization") == frozenset()


def test_generated_hospital_resources() -> None:
    gen = HospitalGenerator(seed=9)
    seen: dict[str, int] = defaultdict(int)
    for res in gen.population(3, 6):
        got = COMPARTMENT.patients_of(res)
        rtype = res["resourceType"]
        seen[rtype] += 1
        if rtype in ("Organization", "Practitioner"):
            assert got == frozenset()
        elif rtype == "Patient":
            assert got == {res["id"]}
        else:
            assert got == {res["subject"]["reference"].split("/", 1)[1]}, res["id"]
    assert {"Patient", "Encounter", "Condition", "Observation", "DiagnosticReport"} <= set(seen)


# -- agreement with the store ----------------------------------------------------------------

def test_patients_of_agrees_with_everything(tmp_path: Path) -> None:
    """For every stored resource, `patients_of` names exactly the patients whose
    `Patient/<id>/$everything` (the store's compartment query) lists it."""
    gen = HospitalGenerator(seed=404)
    resources = [r for r in gen.population(4, 10)
                 if r["resourceType"] != "Practitioner" or r["id"] in {p["id"] for p in PRACS}]
    resources += examples()
    app = create_app(make_settings(tmp_path))
    with TestClient(app) as client:
        r = client.post("/fhir", json=transaction_bundle(resources), headers=FHIR_JSON)
        assert r.status_code == 200, r.text[:2000]
        patients = [res["id"] for res in resources if res["resourceType"] == "Patient"]
        assert len(patients) == 8
        listed: dict[str, set[str]] = {}
        for pid in patients:
            body = client.get(f"/fhir/Patient/{pid}/$everything?_count=1000").json()
            assert body["total"] == len(body.get("entry", [])), pid
            listed[pid] = {f"{e['resource']['resourceType']}/{e['resource']['id']}"
                           for e in body.get("entry", [])}
    expected: dict[str, set[str]] = {pid: set() for pid in patients}
    for res in resources:
        for pid in COMPARTMENT.patients_of(res):
            expected.setdefault(pid, set()).add(f"{res['resourceType']}/{res['id']}")
    assert set(expected) == set(patients)  # no reference to a patient we did not store
    for pid in patients:
        assert listed[pid] == expected[pid], pid
    # The comparison is not vacuous: shared, multi-patient and linked cases are in it.
    assert "Observation/obs-fever" in listed["zhang-san"] & listed["li-xiaohong"]
    assert "Patient/zhang-san-dup" in listed["zhang-san"]
    assert "Group/grp-dm-followup" in listed["wang-wu"]
    assert "Observation/obs-focus" not in listed["li-xiaohong"]
    assert not any(k.startswith(("Organization/", "Practitioner/"))
                   for keys in listed.values() for k in keys)
    assert not any("obs-foreign" in k or "prov-obs" in k for keys in listed.values() for k in keys)
