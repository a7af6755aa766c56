"""医疗机构/科室/医务人员 rows → Organization, Practitioner, PractitionerRole
(app.cnemr.organization)."""

from __future__ import annotations

import asyncio
import csv
import io
from datetime import date
from pathlib import Path
from typing import Any

import orjson

from app.cnemr.context import (
    Hospital,
    department_resource_id,
    organization_resource_id,
    practitioner_resource_id,
)
from app.cnemr.errors import RowError
from app.cnemr.importer import DATA_ELEMENTS, Importer, ImportReport
from app.cnemr.mapping import load_mapping
from app.cnemr.organization import LICENSE_SYSTEM, department_system, map_staff_rows
from app.definitions.registry import load_registry
from app.fhir.validation import validate_resource
from app.pipeline.hooks import Hooks
from app.samples.identity import make_id
from app.search.query import parse_search
from app.server import build_service
from tests.conftest import make_settings

HOSPITAL = Hospital("2.16.156.10011.1.5.110000101")
MAPPINGS = Path(__file__).resolve().parents[2] / "app" / "cnemr" / "mappings"
OID_STAFF = "urn:oid:2.16.156.10011.1.4"
OID_ORG = "urn:oid:2.16.156.10011.1.5"
OID_ID_CARD = "urn:oid:2.16.156.10011.1.3"
LI = make_id("110108", date(1968, 4, 9), 13)  # 男, 北京海淀

DEPT = {"hospital_name": "北京东华协和医院", "department_code": "0301",
        "department_name": "心血管内科"}
CARDIOLOGY = [
    {**DEPT, "staff_id": "D0107", "staff_name": "李志刚", "title": "主任医师",
     "license_no": "110110000012345", "id_number": LI},
    {**DEPT, "staff_id": "D0233", "staff_name": "欧阳文静", "title": "副主任医师",
     "license_no": "110110000023456"},
    {**DEPT, "staff_id": "D0412", "staff_name": "王磊", "title": "主治医师",
     "license_no": "110110000034567"},
]


def of_type(resources: list[dict[str, Any]], rtype: str) -> list[dict[str, Any]]:
    return [r for r in resources if r["resourceType"] == rtype]


def test_a_department_with_three_doctors_maps_to_valid_r4_resources_each_once() -> None:
    resources, errors = map_staff_rows(CARDIOLOGY, HOSPITAL)
    assert errors == []
    assert sorted(r["resourceType"] for r in resources) == [
        "Organization", "Organization", "Practitioner", "Practitioner", "Practitioner",
        "PractitionerRole", "PractitionerRole", "PractitionerRole"]
    registry = load_registry()
    for resource in resources:
        assert validate_resource(resource, registry) == [], resource


def test_the_hospital_is_identified_by_its_oid_in_the_national_namespace() -> None:
    resources, _ = map_staff_rows(CARDIOLOGY, HOSPITAL)
    hospital = next(r for r in resources if r["id"] == organization_resource_id(HOSPITAL))
    assert hospital["identifier"][0]["system"] == OID_ORG
    assert hospital["identifier"][0]["value"] == HOSPITAL.oid
    assert hospital["name"] == "北京东华协和医院"
    assert hospital["type"][0]["coding"][0]["code"] == "prov"


def test_the_department_is_an_organization_part_of_the_hospital() -> None:
    resources, _ = map_staff_rows(CARDIOLOGY, HOSPITAL)
    dept = next(r for r in resources if r["id"] == department_resource_id(HOSPITAL, "0301"))
    assert dept["name"] == "心血管内科"
    assert dept["identifier"][0] == {"type": {"text": "科室代码"},
                                     "system": department_system(HOSPITAL), "value": "0301"}
    assert dept["type"][0]["coding"][0]["code"] == "dept"
    assert dept["partOf"] == {"reference": "Organization/" + organization_resource_id(HOSPITAL)}


def test_practitioners_carry_staff_id_license_title_and_name() -> None:
    resources, _ = map_staff_rows(CARDIOLOGY, HOSPITAL)
    doctors = {p["name"][0]["text"]: p for p in of_type(resources, "Practitioner")}
    assert {n: p["qualification"][0]["code"]["text"] for n, p in doctors.items()} == {
        "李志刚": "主任医师", "欧阳文静": "副主任医师", "王磊": "主治医师"}
    li = doctors["李志刚"]
    assert li["id"] == practitioner_resource_id(HOSPITAL, "D0107")
    systems = {i["system"]: i["value"] for i in li["identifier"]}
    assert systems == {OID_STAFF: "D0107", LICENSE_SYSTEM: "110110000012345", OID_ID_CARD: LI}
    assert li["identifier"][0]["assigner"] == {
        "reference": "Organization/" + organization_resource_id(HOSPITAL)}
    assert (doctors["欧阳文静"]["name"][0]["family"],
            doctors["欧阳文静"]["name"][0]["given"]) == ("欧阳", ["文静"])


def test_practitioner_roles_link_each_doctor_to_the_department() -> None:
    resources, _ = map_staff_rows(CARDIOLOGY, HOSPITAL)
    roles = of_type(resources, "PractitionerRole")
    dept_ref = "Organization/" + department_resource_id(HOSPITAL, "0301")
    assert {r["organization"]["reference"] for r in roles} == {dept_ref}
    assert {r["practitioner"]["reference"] for r in roles} == {
        "Practitioner/" + practitioner_resource_id(HOSPITAL, s) for s in
        ("D0107", "D0233", "D0412")}


def test_a_doctor_in_two_departments_is_one_practitioner_with_two_roles() -> None:
    emergency = {**CARDIOLOGY[2], "department_code": "0901", "department_name": "急诊科"}
    resources, errors = map_staff_rows([*CARDIOLOGY, emergency], HOSPITAL)
    assert errors == []
    assert len(of_type(resources, "Practitioner")) == 3
    assert len(of_type(resources, "PractitionerRole")) == 4
    keys = [(r["resourceType"], r["id"]) for r in resources]
    assert len(keys) == len(set(keys))


def test_a_department_table_alone_yields_departments_only() -> None:
    rows = [{"department_code": "0301", "department_name": "心血管内科"},
            {"department_code": "0502", "department_name": "普通外科"}]
    resources, errors = map_staff_rows(rows, HOSPITAL)
    assert errors == []
    assert [r["resourceType"] for r in resources] == ["Organization"] * 3
    hospital = resources[0]
    assert "name" not in hospital  # no 医疗机构名称 column: never invented


def test_a_blank_hospital_name_does_not_erase_one_given_on_another_row() -> None:
    rows = [CARDIOLOGY[0], {**CARDIOLOGY[1], "hospital_name": ""}]
    resources, _ = map_staff_rows(rows, HOSPITAL)
    assert resources[0]["name"] == "北京东华协和医院"


def test_rows_missing_keys_are_rejected_with_their_position() -> None:
    rows = [CARDIOLOGY[0],
            {**DEPT, "staff_id": "D0999", "staff_name": ""},
            {"staff_name": "赵敏"},
            {}]
    resources, errors = map_staff_rows(rows, HOSPITAL)
    assert [(e.field, e.row, e.severity) for e in errors] == [
        ("staff_name", 1, "error"), ("staff_id", 2, "error"), ("department_code", 3, "error")]
    assert len(of_type(resources, "Practitioner")) == 1


def test_a_bad_id_number_is_left_out_masked_with_a_warning() -> None:
    bad = LI[:-1] + ("0" if LI[-1] != "0" else "1")
    resources, errors = map_staff_rows([{**CARDIOLOGY[0], "id_number": bad}], HOSPITAL)
    practitioner = of_type(resources, "Practitioner")[0]
    assert OID_ID_CARD not in {i["system"] for i in practitioner["identifier"]}
    assert [(e.field, e.severity) for e in errors] == [("id_number", "warning")]
    assert bad not in errors[0].value


def test_staff_without_a_department_get_a_role_at_the_hospital() -> None:
    row = {"staff_id": "N0031", "staff_name": "陈静", "title": "主管护师"}
    resources, errors = map_staff_rows([row], HOSPITAL)
    assert errors == []
    role = of_type(resources, "PractitionerRole")[0]
    assert role["organization"] == {
        "reference": "Organization/" + organization_resource_id(HOSPITAL)}


def test_mapper_never_raises_on_garbage() -> None:
    garbage: list[dict[str, Any]] = [{"staff_id": "  ", "staff_name": None},
                                     {"department_code": "\u3000", "id_number": "x"}, {}]
    resources, errors = map_staff_rows(garbage, HOSPITAL)
    assert resources == []
    assert all(isinstance(e, RowError) for e in errors)


def test_his_staff_export_imports_and_reimports_to_the_same_resources(tmp_path: Path) -> None:
    header = ["yymc", "ksdm", "ksmc", "ysdm", "ysxm", "zc", "yszgzh", "sfzh"]
    rows = [[r["hospital_name"], r["department_code"], r["department_name"], r["staff_id"],
             r["staff_name"], r["title"], r["license_no"], r.get("id_number", "")]
            for r in CARDIOLOGY]
    rows += [["北京东华协和医院", "0502", "普通外科", "D0520", "司马光明", "主任医师",
              "110110000045678", ""],
             ["北京东华协和医院", "0502", "普通外科", "D0521", "", "主治医师", "", ""]]
    buf = io.StringIO()
    csv.writer(buf).writerows([header, *rows])
    path = tmp_path / "xt_ysxx.csv"
    path.write_bytes(buf.getvalue().encode("gb18030"))

    async def go() -> tuple[ImportReport, dict[str, list[dict[str, Any]]]]:
        service, _ = build_service(make_settings(tmp_path), Hooks())
        await service.store.start()
        try:
            mapping = load_mapping(MAPPINGS / "staff-his.yaml", DATA_ELEMENTS)
            report = await Importer(service, HOSPITAL).import_files(mapping, [path])
            found = {}
            for rtype in ("Organization", "Practitioner", "PractitionerRole"):
                query, _ = parse_search((rtype,), [("_count", "100"), ("_sort", "_id")],
                                        service.parse_ctx)
                page = await service.store.search(query)
                found[rtype] = [{k: v for k, v in orjson.loads(m.body).items() if k != "meta"}
                                for m in page.matches]
            return report, found
        finally:
            await service.store.close()

    report, found = asyncio.run(go())
    assert report.rows_read == 5
    assert report.rows_rejected == 1
    missing = report.rejections[0]
    assert (missing.line, missing.column, missing.rule) == (6, "ysxm", "required")
    assert {len(v) for v in found.values()} == {3, 4}
    assert len(found["Organization"]) == 3  # the hospital and two 科室
    assert len(found["Practitioner"]) == len(found["PractitionerRole"]) == 4
    again_report, again = asyncio.run(go())
    assert again_report.rows_rejected == 1
    assert again == found
