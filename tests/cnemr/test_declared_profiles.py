"""Every dataset's mapper declares the CN profile of each resource it emits (meta.profile), and
what it emits conforms to that profile, so the server can hold imported data to it on write."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.cnemr.context import CN_DIAGNOSTIC_REPORT, CN_PATIENT, PROFILE_BASE, Hospital
from app.cnemr.datasets import DATASETS
from app.cnemr.lab import map_lab_rows
from app.cnemr.patient import map_patient
from app.cnemr.values import fold
from app.config import Settings
from app.definitions.profiles import load_profile_resources
from app.definitions.registry import load_registry
from app.fhir.profile_validation import ProfileValidator
from app.fhir.validation import validate_resource
from app.server import create_app
from tests.cnemr import (
    test_billing,
    test_card,
    test_documents,
    test_exam,
    test_homepage,
    test_lab,
    test_organization,
    test_patient,
    test_prescription,
    test_visit,
)
from tests.conftest import make_settings

HOSPITAL = Hospital("2.16.156.10011.1.5.110000101")
REGISTRY = load_registry()
PROFILES = ProfileValidator(load_profile_resources(Settings().profiles_dir), REGISTRY)
FHIR_PROFILES = Path(__file__).resolve().parents[2] / "fhir_profiles" / "StructureDefinition"

# Realistic rows of each dataset, from its own test module: the documented fixtures there.
ROWS: dict[str, list[dict[str, Any]]] = {
    "patient": [test_patient.row(),
                test_patient.row(patient_id="0001023999", name="单雄信", gender_code="",
                                 birth_date="19580903",
                                 id_number=test_patient.SHAN_ID, ethnicity_code="")],
    "lab": [*test_lab.CBC,
            *[{**r, "report_id": "JY20261120000732", "visit_id": "", "visit_no": "0000871",
               "visit_date": "2026-11-20", "panel_name": "肝功能"} for r in (
                test_lab.item("ALT", "丙氨酸氨基转移酶", "56", "U/L", "7-40", "H"),
                test_lab.item("TBIL", "总胆红素", "12.4", "μmol/L", "3.4-20.5"),
                test_lab.item("ESR", "血沉", "12", "毫米/小时", "0-20"),
                test_lab.item("INR", "国际标准化比值", "1.02", "", "0.8-1.2"),
                test_lab.item("HBsAg", "乙型肝炎表面抗原", "阴性", "", "阴性"))]],
    "visit": [test_visit.OUTPATIENT, test_visit.EMERGENCY],
    "prescription": [*test_prescription.WESTERN, *test_prescription.TCM],
    "homepage": [test_homepage.WESTERN, test_homepage.TCM],
    "billing": [*test_billing.LINES,
                *[{**r, "settlement_id": "JS202610190031", "outpatient_no": "",
                   "inpatient_no": "ZY20261012", "admission_count": "2", "patient_type": "住院"}
                  for r in test_billing.LINES]],
    "staff": test_organization.CARDIOLOGY,
    "exam": [test_exam.HEAD_CT, test_exam.ABDOMEN_US],
    "card": [test_card.SOCIAL_SECURITY, test_card.VISIT_CARD],
    "outpatient_record": [test_documents.RECORD, test_documents.TCM_RECORD],
    "document": [*test_documents.doc_rows(test_documents.ADMISSION,
                                          test_documents.ADMISSION_SECTIONS),
                 test_documents.file_row()],
}

# Resource types with a CN profile whose instances from a dataset do not declare it, and why.
UNDECLARED = {
    # A settlement export names the 医疗保险类别 but no insurer-issued number (医保卡号 / 个人编号),
    # and cn-coverage requires Coverage.identifier: the 就诊卡/医保卡 dataset's Coverage has it.
    ("billing", "Coverage"),
}


def cn_profiles() -> dict[str, str]:
    """Resource type → the canonical URL of its CN profile, from fhir_profiles/."""
    out: dict[str, str] = {}
    for rtype in sorted({r["resourceType"] for rows in MAPPED.values() for r in rows[0]}):
        urls = PROFILES.profiles_for(rtype)
        if urls:
            [out[rtype]] = urls
    return out


def map_like_the_importer(dataset: str, rows: Sequence[Mapping[str, Any]]
                          ) -> tuple[list[dict[str, Any]], list[Any]]:
    """The rows mapped group by group, as `Importer` hands them to the dataset's mapper."""
    spec = DATASETS[dataset]
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for index, row in enumerate(rows):
        key = fold(row.get(spec.group_by)) if spec.group_by else str(index)
        groups.setdefault(key, []).append(row)
    resources: list[dict[str, Any]] = []
    errors: list[Any] = []
    for group in groups.values():
        mapped, problems = spec.map_rows(group, HOSPITAL)
        resources += mapped
        errors += problems
    return resources, errors


MAPPED = {name: map_like_the_importer(name, rows) for name, rows in ROWS.items()}


def test_every_dataset_has_rows_here() -> None:
    assert set(ROWS) == set(DATASETS)


def test_the_profile_constants_name_the_profiles_of_fhir_profiles() -> None:
    from app.cnemr import context
    urls = {v for k, v in vars(context).items() if k.startswith("CN_")}
    assert len(urls) == 11
    for url in urls:
        assert url.startswith(PROFILE_BASE)
        assert (FHIR_PROFILES / f"{url.removeprefix(PROFILE_BASE)}.json").is_file(), url
        assert PROFILES.knows(url), url


@pytest.mark.parametrize("dataset", sorted(ROWS))
def test_every_resource_with_a_cn_profile_declares_it_and_conforms(dataset: str) -> None:
    resources, errors = MAPPED[dataset]
    assert resources, dataset
    assert [e for e in errors if e.severity == "error"] == []
    profiles = cn_profiles()
    for resource in resources:
        rtype = resource["resourceType"]
        declared = resource.get("meta", {}).get("profile", [])
        assert all(PROFILES.knows(url) for url in declared), (rtype, declared)
        if rtype in profiles and (dataset, rtype) not in UNDECLARED:
            assert declared == [profiles[rtype]], (dataset, rtype)
        issues = validate_resource(resource, REGISTRY) + PROFILES.declared_issues(resource)
        assert [i for i in issues if i.severity in ("error", "fatal")] == [], (
            dataset, rtype, issues)


def test_the_exemptions_are_still_needed() -> None:
    for dataset, rtype in UNDECLARED:
        emitted = [r for r in MAPPED[dataset][0] if r["resourceType"] == rtype]
        assert emitted, (dataset, rtype)
        assert all(PROFILES.validate(r, cn_profiles()[rtype]) for r in emitted), (dataset, rtype)


def test_the_rows_cover_every_cn_profiled_type_the_mappers_emit() -> None:
    emitted = {r["resourceType"] for resources, _ in MAPPED.values() for r in resources}
    assert {"Patient", "Encounter", "Condition", "Observation", "DiagnosticReport",
            "MedicationRequest", "Procedure", "Composition", "Claim", "Coverage",
            "DocumentReference"} <= emitted


def test_a_resource_that_breaks_its_declared_profile_is_refused_on_write(
        tmp_path: Path) -> None:
    """What the importer writes goes through this same FhirService validation: a lab report
    without its subject is valid R4 (0..1) but not cn-diagnostic-report (1..1)."""
    resources, _ = map_lab_rows(test_lab.CBC, HOSPITAL)
    [report] = [r for r in resources if r["resourceType"] == "DiagnosticReport"]
    broken = {k: v for k, v in report.items() if k != "subject"}
    headers = {"Content-Type": "application/fhir+json"}
    with TestClient(create_app(make_settings(tmp_path))) as client:
        refused = client.put(f"/fhir/DiagnosticReport/{report['id']}", json=broken,
                             headers=headers)
        assert refused.status_code == 422, refused.text
        issues = refused.json()["issue"]
        assert any(i["severity"] == "error" and CN_DIAGNOSTIC_REPORT in i["diagnostics"]
                   and "DiagnosticReport.subject" in i["diagnostics"] for i in issues), issues
        # Undeclared, the same resource is only held to R4 and is stored.
        plain = {k: v for k, v in broken.items() if k != "meta"}
        assert client.put(f"/fhir/DiagnosticReport/{report['id']}", json=plain,
                          headers=headers).status_code == 201
        assert client.put(f"/fhir/DiagnosticReport/{report['id']}", json=report,
                          headers=headers).status_code == 200


def test_a_patient_row_without_gender_imports_as_unknown_instead_of_failing_cn_patient() -> None:
    [patient], errors = map_patient({"patient_id": "0001024001", "name": "王芳"}, HOSPITAL)
    assert errors == []
    assert patient["meta"]["profile"] == [CN_PATIENT]
    assert patient["gender"] == "unknown"
    assert PROFILES.declared_issues(patient) == []
    assert PROFILES.validate({k: v for k, v in patient.items() if k != "gender"}, CN_PATIENT)


def test_the_patient_extensions_are_checked_through_the_cn_patient_slices() -> None:
    """cn-patient slices the occupation and address-division-code extensions, so a Patient
    declaring it is held to their definitions on every write, not only by their own tests."""
    [patient], errors = map_patient({
        "patient_id": "0001024002", "name": "李娜", "gender_code": "2",
        "occupation_code": "31", "address": "北京市朝阳区建国路88号", "address_code": "110105"},
        HOSPITAL)
    assert errors == []
    assert PROFILES.declared_issues(patient) == []
    occupation = next(e for e in patient["extension"] if e["url"].endswith("/occupation"))
    bad = {**patient, "extension": [
        {**occupation, "valueCodeableConcept": {"coding": [
            {**occupation["valueCodeableConcept"]["coding"][0], "code": "99999"}]}}]}
    assert any("occupation" in i.diagnostics for i in PROFILES.declared_issues(bad))
    [home] = patient["address"]
    division = home["extension"][0]
    wrong = {**patient, "address": [{**home, "extension": [
        {**division, "valueCoding": {**division["valueCoding"], "code": "1101"}}]}]}
    assert any(i.severity == "error" for i in PROFILES.declared_issues(wrong))
