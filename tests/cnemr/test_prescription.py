"""门(急)诊处方 西药 and 中药 line items → FHIR R4 MedicationRequest and MedicationDispense
(app.cnemr.prescription)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson

from app.cnemr.context import (
    Hospital,
    encounter_resource_id,
    outpatient_visit_key,
    patient_resource_id,
)
from app.cnemr.errors import RowError
from app.cnemr.importer import DATA_ELEMENTS, Importer
from app.cnemr.mapping import load_mapping
from app.cnemr.prescription import dispense_resource_id, map_prescription_rows
from app.cnemr.visit import map_visit_rows
from app.config import Settings
from app.definitions.profiles import load_profile_resources
from app.definitions.registry import load_registry
from app.fhir.profile_validation import ProfileValidator
from app.fhir.validation import validate_resource
from app.pipeline.hooks import Hooks
from app.search.query import parse_search
from app.server import build_service
from tests.cnemr.exports import write_csv
from tests.conftest import make_settings

HOSPITAL = Hospital("2.16.156.10011.1.5.110000101")
UCUM = "http://unitsofmeasure.org"
CV_FREQUENCY = "urn:oid:2.16.156.10011.2.3.1.267"
MAPPINGS = Path(__file__).resolve().parents[2] / "app" / "cnemr" / "mappings"
REGISTRY = load_registry()
PROFILES = ProfileValidator(load_profile_resources(Settings().profiles_dir), REGISTRY)
CN_MEDICATION_REQUEST = "https://fhir.yilian.cn/StructureDefinition/cn-medication-request"

HEADER = {"prescription_no": "CF202611200153", "patient_id": "0001023456", "visit_no": "0000871",
          "prescribed_time": "2026-11-20 09:20:00", "doctor": "李淑芬",
          "prescription_type": "西药"}


def line(**values: str) -> dict[str, str]:
    return {**HEADER, **values}


WESTERN = [
    line(line_no="1", drug_code="Y0012033", drug_name="阿莫西林胶囊", specification="0.25g×24粒",
         nhsa_drug_code="XJ01CAA040A001010100483", dose="0.5", dose_unit="g",
         frequency_code="tid", route="口服", quantity="2", quantity_unit="盒", days="7"),
    line(line_no="2", drug_code="Y0020118", drug_name="盐酸二甲双胍片", specification="0.5g×20片",
         dose="0.5", dose_unit="g", frequency_code="1", route="口服", quantity="3",
         quantity_unit="盒", days="30"),
    line(line_no="3", drug_code="Y0031007", drug_name="布洛芬缓释胶囊", specification="0.3g×20粒",
         dose="1", dose_unit="粒", frequency_code="13", route="口服", quantity="1",
         quantity_unit="盒"),
]
TCM_HEADER = {"prescription_no": "CF202611200188", "patient_id": "0001023457",
              "visit_no": "0000902", "prescribed_time": "20261120", "doctor": "张仲和",
              "prescription_type": "中药", "doses_count": "7", "dispensed": "1"}
TCM = [{**TCM_HEADER, "line_no": str(n), "drug_code": code, "drug_name": name, "dose": dose,
        "dose_unit": "g", "frequency_code": "bid", "route": "水煎服", "days": "7",
        "quantity": str(int(dose) * 7), "quantity_unit": "g", "decoction": decoction}
       for n, (code, name, dose, decoction) in enumerate((
           ("ZY0101", "黄芪", "30", "水煎服"), ("ZY0102", "当归", "10", "水煎服"),
           ("ZY0103", "党参", "15", "水煎服"), ("ZY0104", "炙甘草", "6", "水煎服")), 1)]


def mapped(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[RowError]]:
    resources, errors = map_prescription_rows(rows, HOSPITAL)
    for resource in resources:
        issues = validate_resource(resource, REGISTRY)
        if resource["resourceType"] == "MedicationRequest":
            issues += PROFILES.validate(resource, CN_MEDICATION_REQUEST)
        else:  # fhir_profiles/ has no MedicationDispense profile: held to R4 alone
            assert resource["resourceType"] == "MedicationDispense"
            assert "meta" not in resource
        assert [i for i in issues if i.severity in ("error", "fatal")] == [], resource
    return resources, errors


def of_type(resources: list[dict[str, Any]], rtype: str) -> list[dict[str, Any]]:
    return [r for r in resources if r["resourceType"] == rtype]


def named(resources: list[dict[str, Any]], name: str,
          rtype: str = "MedicationRequest") -> dict[str, Any]:
    return next(r for r in of_type(resources, rtype)
                if r["medicationCodeableConcept"]["text"] == name)


def test_a_western_prescription_maps_one_medication_request_per_line() -> None:
    resources, errors = mapped(WESTERN)
    assert errors == []
    assert len(resources) == 3
    assert {r["groupIdentifier"]["value"] for r in resources} == {"CF202611200153"}
    assert len({r["id"] for r in resources}) == 3
    amoxicillin = named(resources, "阿莫西林胶囊")
    assert amoxicillin["groupIdentifier"]["system"] == "urn:oid:2.16.156.10011.1.20"
    assert (amoxicillin["intent"], amoxicillin["status"]) == ("order", "active")
    assert amoxicillin["subject"] == {"reference": "Patient/" + patient_resource_id(
        HOSPITAL, "0001023456")}
    assert amoxicillin["encounter"] == {"reference": "Encounter/" + encounter_resource_id(
        HOSPITAL, outpatient_visit_key("0000871", "2026-11-20"))}
    assert amoxicillin["requester"] == {"display": "李淑芬"}
    assert amoxicillin["authoredOn"] == "2026-11-20T09:20:00+08:00"
    assert amoxicillin["medicationCodeableConcept"]["coding"] == [
        {"system": "https://fhir.yilian.cn/CodeSystem/nhsa-drug-code",
         "code": "XJ01CAA040A001010100483"},
        {"system": "urn:oid:2.16.156.10011.1.5.110000101.drug", "code": "Y0012033",
         "display": "阿莫西林胶囊"}]
    [dosage] = amoxicillin["dosageInstruction"]
    assert dosage["doseAndRate"] == [{"doseQuantity": {"value": 0.5, "unit": "g",
                                                       "system": UCUM, "code": "g"}}]
    assert dosage["timing"]["repeat"] == {"frequency": 3, "period": 1, "periodUnit": "d"}
    assert dosage["timing"]["code"]["text"] == "tid"
    assert dosage["route"] == {"text": "口服"}
    assert amoxicillin["dispenseRequest"] == {
        "quantity": {"value": 2, "unit": "盒"},
        "expectedSupplyDuration": {"value": 7, "unit": "天", "system": UCUM, "code": "d"}}
    assert {"text": "规格: 0.25g×24粒"} in amoxicillin["note"]
    assert {c["coding"][0]["code"] for c in amoxicillin["category"]} == {"outpatient", "C0004"}


def test_cv06_00_228_frequency_codes_become_timing_code_and_repeat() -> None:
    resources, _ = mapped(WESTERN)
    metformin = named(resources, "盐酸二甲双胍片")["dosageInstruction"][0]["timing"]
    assert metformin["code"]["coding"][0] == {"system": CV_FREQUENCY, "code": "1",
                                              "display": "bid"}
    assert metformin["repeat"] == {"frequency": 2, "period": 1, "periodUnit": "d"}
    ibuprofen = named(resources, "布洛芬缓释胶囊")["dosageInstruction"][0]
    assert ibuprofen["timing"]["repeat"] == {"count": 1}
    assert ibuprofen["doseAndRate"][0]["doseQuantity"] == {"value": 1, "unit": "粒"}


def test_a_tcm_prescription_keeps_each_herb_the_doses_count_and_the_decoction() -> None:
    resources, errors = mapped(TCM)
    assert errors == []
    assert [r["medicationCodeableConcept"]["text"]
            for r in of_type(resources, "MedicationRequest")] == ["黄芪", "当归", "党参", "炙甘草"]
    huangqi = named(resources, "黄芪")
    assert huangqi["status"] == "completed"
    assert {"text": "共7付"} in huangqi["note"]
    assert "numberOfRepeatsAllowed" not in huangqi["dispenseRequest"]
    [dosage] = huangqi["dosageInstruction"]
    assert dosage["doseAndRate"][0]["doseQuantity"] == {"value": 30, "unit": "g",
                                                        "system": UCUM, "code": "g"}
    assert dosage["additionalInstruction"] == [{"text": "水煎服"}]
    assert huangqi["dispenseRequest"]["quantity"]["value"] == 210
    assert {c["coding"][0]["code"] for c in huangqi["category"]} == {"outpatient", "C0005"}


def test_lines_sharing_a_group_number_name_each_other_in_a_note() -> None:
    rows = [line(line_no="1", drug_code="Y0400012", drug_name="0.9%氯化钠注射液", dose="100",
                 dose_unit="ml", frequency_code="9", route="静脉滴注", group_no="1"),
            line(line_no="2", drug_code="Y0400231", drug_name="注射用头孢曲松钠", dose="2",
                 dose_unit="g", frequency_code="9", route="静脉滴注", group_no="1"),
            line(line_no="3", drug_code="Y0012033", drug_name="阿莫西林胶囊", dose="0.5",
                 dose_unit="g", frequency_code="tid", route="口服", group_no="2")]
    resources, errors = mapped(rows)
    assert errors == []
    ceftriaxone = named(resources, "注射用头孢曲松钠")
    assert ceftriaxone["note"] == [{"text": "组号 1: 同组 0.9%氯化钠注射液"}]
    assert "note" not in named(resources, "阿莫西林胶囊")
    saline = named(resources, "0.9%氯化钠注射液")["dosageInstruction"][0]
    assert saline["doseAndRate"][0]["doseQuantity"]["code"] == "mL"


def test_a_bad_frequency_code_is_reported_and_the_line_kept_without_timing() -> None:
    rows = [WESTERN[0], {**WESTERN[1], "frequency_code": "每晚两次"}]
    resources, errors = mapped(rows)
    assert len(resources) == 2
    [error] = errors
    assert (error.field, error.value, error.rule, error.severity, error.row) == (
        "frequency_code", "每晚两次", "cv06.00.228", "warning", 1)
    assert "timing" not in named(resources, "盐酸二甲双胍片")["dosageInstruction"][0]


def test_an_unparseable_prescription_date_rejects_the_whole_prescription() -> None:
    rows = [{**r, "prescribed_time": "2026-02-30"} for r in WESTERN]
    resources, errors = mapped(rows + TCM)
    assert len(of_type(resources, "MedicationRequest")) == len(TCM)
    assert {r["authorizingPrescription"][0]["reference"]
            for r in of_type(resources, "MedicationDispense")} == {
        f"MedicationRequest/{r['id']}" for r in of_type(resources, "MedicationRequest")}
    assert [(e.field, e.rule, e.row) for e in errors] == [
        ("prescribed_time", "date-calendar", i) for i in range(3)]


def test_lines_disagreeing_on_the_patient_reject_the_prescription() -> None:
    rows = [WESTERN[0], {**WESTERN[1], "patient_id": "0009999999"}]
    resources, errors = mapped(rows)
    assert resources == []
    assert {(e.rule, e.severity) for e in errors} == {("prescription-consistency", "error")}


def test_a_repeated_line_is_imported_once_and_a_conflicting_one_reported() -> None:
    rows = [WESTERN[0], dict(WESTERN[0]), {**WESTERN[0], "dose": "1"}]
    resources, errors = mapped(rows)
    assert len(resources) == 1
    assert [(e.rule, e.severity, e.row) for e in errors] == [
        ("duplicate-line", "warning", 1), ("conflicting-line", "error", 2)]


def test_prescription_and_registration_point_at_the_same_encounter() -> None:
    visits, _ = map_visit_rows([{"visit_no": "0000871", "visit_date": "2026-11-20 08:12:33",
                                 "patient_id": "0001023456", "visit_type_code": "1"}], HOSPITAL)
    resources, _ = mapped(WESTERN)
    assert {r["encounter"]["reference"] for r in resources} == {f"Encounter/{visits[0]['id']}"}


def test_his_prescription_export_imports_through_the_mapping_file(tmp_path: Path) -> None:
    header = ["cfh", "patid", "mzh", "kfrq", "ysxm", "cflx", "fs", "jzfs", "xh", "ypCode",
              "ypmc", "gg", "mcjl", "mcjldw", "yfCode", "pcCode", "sl", "dw", "je", "zh", "ts"]
    rows = [
        ["CF202611200153", "0001023456", "0000871", "2026-11-20 09:20", "李淑芬", "西药", "", "",
         "1", "Y0012033", "阿莫西林胶囊", "0.25g×24粒", "0.5", "g", "01", "tid", "2", "盒",
         "36.80", "1", "7"],
        ["CF202611200153", "0001023456", "0000871", "2026-11-20 09:20", "李淑芬", "西药", "", "",
         "2", "Y0020118", "盐酸二甲双胍片", "0.5g×20片", "0.5", "g", "01", "1", "3", "盒",
         "25.50", "2", "30"],
        ["CF202611200153", "0001023456", "0000871", "2026-11-20 09:20", "李淑芬", "西药", "", "",
         "3", "Y0031007", "布洛芬缓释胶囊", "0.3g×20粒", "1", "粒", "01", "每晚两次", "1", "盒",
         "18.00", "3", ""],
        ["CF202611200188", "0001023457", "0000902", "2026-11-20 10:02", "张仲和", "中药", "7",
         "水煎服", "1", "ZY0101", "黄芪", "", "30", "g", "06", "bid", "210", "g", "29.40", "",
         "7"],
        ["CF202611200188", "0001023457", "0000902", "2026-11-20 10:02", "张仲和", "中药", "7",
         "水煎服", "2", "ZY0102", "当归", "", "10", "g", "06", "bid", "70", "g", "16.10", "",
         "7"],
        ["CF202611200199", "0001023458", "0000903", "2026-11-20", "", "西药", "", "", "1",
         "Y0012033", "阿莫西林胶囊", "0.25g×24粒", "0.5", "g", "01", "tid", "2", "盒", "36.80",
         "", "7"],
    ]
    path = write_csv(tmp_path / "xt_dzcfmx.csv", header, rows, "gb18030")

    async def go() -> tuple[Any, list[dict[str, Any]]]:
        service, _ = build_service(make_settings(tmp_path), Hooks())
        await service.store.start()
        try:
            mapping = load_mapping(MAPPINGS / "prescription-his.yaml", DATA_ELEMENTS)
            report = await Importer(service, HOSPITAL).import_files(mapping, [path])
            query, _ = parse_search(("MedicationRequest",), [("_count", "20")],
                                    service.parse_ctx)
            page = await service.store.search(query)
            return report, [orjson.loads(v.body) for v in page.matches]
        finally:
            await service.store.close()

    report, requests = asyncio.run(go())
    assert report.rows_read == 6
    assert report.rows_rejected == 1
    assert {(r.line, r.column, r.rule, r.severity) for r in report.rejections} == {
        (4, "pcCode", "cv06.00.228", "warning"), (7, "ysxm", "required", "error")}
    assert len(requests) == 5
    assert {r["groupIdentifier"]["value"] for r in requests} == {"CF202611200153",
                                                                 "CF202611200188"}
    huangqi = next(r for r in requests if r["medicationCodeableConcept"]["text"] == "黄芪")
    assert huangqi["dosageInstruction"][0]["route"] == {"text": "水煎服"}
    assert {"text": "共7付"} in huangqi["note"]


DISPENSED = [{**r, "dispensed": "1", "dispensed_time": "2026-11-20 09:41:12",
              "pharmacist": "孙晓梅"} for r in WESTERN]


def test_a_dispensed_prescription_records_one_dispense_per_line_after_its_request() -> None:
    resources, errors = mapped(DISPENSED)
    assert errors == []
    assert [r["resourceType"] for r in resources] == [
        "MedicationRequest", "MedicationDispense"] * 3
    for request, dispense in zip(resources[::2], resources[1::2], strict=True):
        assert request["status"] == "completed"
        assert dispense["status"] == "completed"
        assert dispense["authorizingPrescription"] == [
            {"reference": f"MedicationRequest/{request['id']}"}]
        assert dispense["medicationCodeableConcept"] == request["medicationCodeableConcept"]
        assert dispense["subject"] == request["subject"]
        assert dispense["context"] == request["encounter"]
        assert dispense["whenHandedOver"] == "2026-11-20T09:41:12+08:00"
        assert dispense["performer"] == [{"actor": {"display": "孙晓梅"}}]
    amoxicillin = named(resources, "阿莫西林胶囊", "MedicationDispense")
    assert amoxicillin["id"] == dispense_resource_id(HOSPITAL, "CF202611200153", "1")
    assert amoxicillin["quantity"] == {"value": 2, "unit": "盒"}
    assert amoxicillin["daysSupply"] == {"value": 7, "unit": "天", "system": UCUM, "code": "d"}
    # 布洛芬 has no 用药天数: no daysSupply rather than a guess.
    assert "daysSupply" not in named(resources, "布洛芬缓释胶囊", "MedicationDispense")


def test_dispense_ids_are_stable_across_reimports() -> None:
    first, _ = mapped(DISPENSED)
    again, _ = mapped(list(reversed(DISPENSED)))
    assert {r["id"] for r in first} == {r["id"] for r in again}
    assert len({r["id"] for r in first}) == 6


def test_a_dispensed_prescription_without_time_or_pharmacist_still_records_the_dispense() -> None:
    resources, errors = mapped(TCM)
    assert errors == []
    dispenses = of_type(resources, "MedicationDispense")
    assert len(dispenses) == 4
    assert not {"whenHandedOver", "performer"} & {k for d in dispenses for k in d}
    huangqi = named(resources, "黄芪", "MedicationDispense")
    assert huangqi["quantity"] == {"value": 210, "unit": "g", "system": UCUM, "code": "g"}


def test_a_prescription_not_dispensed_records_no_dispense() -> None:
    resources, errors = mapped(WESTERN)
    assert errors == []
    assert of_type(resources, "MedicationDispense") == []
    assert {r["status"] for r in resources} == {"active"}


def test_dispense_details_without_the_dispensed_flag_are_left_out_with_warnings() -> None:
    rows = [{**r, "dispensed": "0", "dispensed_time": "2026-11-20 09:41",
             "pharmacist": "孙晓梅"} for r in WESTERN]
    resources, errors = mapped(rows)
    assert of_type(resources, "MedicationDispense") == []
    assert [(e.field, e.value, e.rule, e.severity, e.row) for e in errors] == [
        ("dispensed_time", "2026-11-20 09:41", "dispense-not-flagged", "warning", 0),
        ("pharmacist", "孙晓梅", "dispense-not-flagged", "warning", 0)]
    assert "发药标志" in errors[0].message


def test_a_bad_dispense_time_is_left_out_with_a_warning() -> None:
    rows = [{**r, "dispensed_time": "2026-11-20 25:10"} for r in DISPENSED]
    resources, errors = mapped(rows)
    assert len(of_type(resources, "MedicationDispense")) == 3
    assert all("whenHandedOver" not in d for d in of_type(resources, "MedicationDispense"))
    assert [(e.field, e.severity, e.row) for e in errors] == [
        ("dispensed_time", "warning", 0)]


def test_lines_disagreeing_on_the_dispense_time_or_pharmacist_reject_the_prescription() -> None:
    for key, other in (("dispensed_time", "2026-11-20 10:02:00"), ("pharmacist", "钱国栋")):
        rows = [*DISPENSED[:2], {**DISPENSED[2], key: other}]
        resources, errors = mapped(rows)
        assert resources == []
        assert {(e.field, e.rule, e.severity) for e in errors} == {
            (key, "prescription-consistency", "error")}


def test_a_rejected_line_of_a_dispensed_prescription_gets_no_dispense() -> None:
    rows = [*DISPENSED[:2], {**DISPENSED[2], "drug_code": "", "drug_name": ""}]
    resources, errors = mapped(rows)
    assert len(of_type(resources, "MedicationDispense")) == 2
    assert [(e.field, e.severity, e.row) for e in errors] == [("drug_code", "error", 2)]
