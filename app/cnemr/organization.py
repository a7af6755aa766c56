"""WS 445-2014 part 17 (医疗机构信息) 医疗机构/科室/医务人员 HIS rows → FHIR R4 Organization,
Practitioner and PractitionerRole.

A HIS staff export (xt_ysxx 医生信息 joined with xt_ksxx 科室信息) has one row per staff member;
a 科室 table alone (no staff columns) has one row per 科室. Rows are dicts keyed by these
canonical data elements (values are the exported text; blank or missing means not recorded):

- `hospital_name`: 医疗机构名称 → the hospital Organization's name.
- `department_code`: 科室代码 → the 科室 Organization's identifier in
  `urn:oid:<hospital OID>.department` (a hospital-local table, like `Hospital.lis_item_system`)
  and its id; rows are grouped by it.
- `department_name`: 科室名称 → the 科室 Organization's name.
- `staff_id`: 医务人员工号 → Practitioner.identifier urn:oid:2.16.156.10011.1.4 (医务人员 ID),
  with the hospital Organization as assigner because 工号 are only unique inside a hospital;
  keys the Practitioner id.
- `staff_name` (required with `staff_id`): 姓名 → Practitioner.name.
- `title`: 专业技术职务 (职称: 主任医师, 副主任医师, 主治医师 …) → Practitioner.qualification
  code.text (no code: the GB/T 8561 专业技术职务代码 were not verified).
- `license_no`: 医师执业证书编码 → Practitioner.identifier in `LICENSE_SYSTEM`, type v2-0203 MD.
- `id_number`: 居民身份证号 → Practitioner.identifier urn:oid:2.16.156.10011.1.3 when it passes
  GB 11643-1999 (else left out and reported, masked).

Every row yields the hospital Organization (type prov, identifier 医疗机构
urn:oid:2.16.156.10011.1.5 whose value is the hospital's OID, id from the OID alone). The 科室
is an **Organization** (type dept, partOf the hospital), not a Location: a HIS 科室 is an
administrative unit that staff belong to and that orders and bills, which is what
PractitionerRole.organization means; the rooms and wards where care happens (诊室, 病区) are
Locations and are not in this export. A staff row yields the Practitioner and one
PractitionerRole (practitioner → 科室, or → the hospital when the row has no 科室).
Ids are stable from (hospital OID, code), so a re-import updates.

Resources shared by several rows (the hospital, a 科室, a doctor listed in two 科室) are
returned once per call; the last row's content wins.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from app.cnemr.context import (
    Hospital,
    department_resource_id,
    organization_resource_id,
    practitioner_resource_id,
    stable_id,
)
from app.cnemr.errors import RowError, ValueRejected
from app.cnemr.values import fold, mask_id, normalize_id_number
from app.samples.hospital import OID_ID_CARD, OID_ORG, OID_STAFF
from app.search.normalize import split_chinese_name

Resource = dict[str, Any]

HL7_TERM = "http://terminology.hl7.org/CodeSystem/"
# 医师执业证书编码 are issued by the 国家卫生健康委员会; no national FHIR or OID namespace for
# them was found, so Yilian names one under its canonical base.
LICENSE_SYSTEM = "https://fhir.yilian.cn/NamingSystem/cn-physician-practice-certificate"


def department_system(hospital: Hospital) -> str:
    """The identifier system of a hospital's 科室代码 (a hospital-local table)."""
    return f"urn:oid:{hospital.oid}.department"


def _coding(system: str, code: str, display: str) -> dict[str, str]:
    return {"system": system, "code": code, "display": display}


def hospital_organization(hospital: Hospital, name: str = "") -> Resource:
    """The hospital as an Organization, identified in the 医疗机构 namespace by its OID."""
    org: Resource = {
        "resourceType": "Organization",
        "id": organization_resource_id(hospital),
        "identifier": [{"use": "official", "type": {"text": "医疗机构"}, "system": OID_ORG,
                        "value": hospital.oid}],
        "active": True,
        "type": [{"coding": [_coding(HL7_TERM + "organization-type", "prov",
                                     "Healthcare Provider")]}],
    }
    if name:
        org["name"] = name
    return org


def department_organization(hospital: Hospital, code: str, name: str) -> Resource:
    dept: Resource = {
        "resourceType": "Organization",
        "id": department_resource_id(hospital, code),
        "identifier": [{"type": {"text": "科室代码"}, "system": department_system(hospital),
                        "value": code}],
        "active": True,
        "type": [{"coding": [_coding(HL7_TERM + "organization-type", "dept",
                                     "Hospital Department")]}],
        "partOf": {"reference": "Organization/" + organization_resource_id(hospital)},
    }
    if name:
        dept["name"] = name
    return dept


def _name(text: str) -> Resource:
    human: Resource = {"use": "official", "text": text}
    compact = "".join(text.split())
    if compact and all("\u4e00" <= c <= "\u9fff" for c in compact):
        family, given = split_chinese_name(compact)
        human["family"] = family
        if given:
            human["given"] = [given]
    return human


def _practitioner(row: Mapping[str, Any], hospital: Hospital, staff_id: str, name: str,
                  errors: list[RowError]) -> Resource:
    org_ref = {"reference": "Organization/" + organization_resource_id(hospital)}
    identifiers: list[Resource] = [{
        "use": "official", "type": {"text": "医务人员工号"}, "system": OID_STAFF,
        "value": staff_id, "assigner": org_ref}]
    license_no = fold(row.get("license_no"))
    if license_no:
        identifiers.append({
            "type": {"coding": [_coding(HL7_TERM + "v2-0203", "MD", "Medical License number")],
                     "text": "医师执业证书编码"},
            "system": LICENSE_SYSTEM, "value": license_no})
    raw_id = fold(row.get("id_number"))
    if raw_id:
        try:
            number = normalize_id_number(raw_id).number
            identifiers.append({"type": {"text": "居民身份证号"}, "system": OID_ID_CARD,
                                "value": number})
        except ValueRejected as exc:
            errors.append(exc.to_row_error("id_number", mask_id(raw_id), "warning"))
    practitioner: Resource = {
        "resourceType": "Practitioner",
        "id": practitioner_resource_id(hospital, staff_id),
        "identifier": identifiers,
        "active": True,
        "name": [_name(name)],
    }
    title = fold(row.get("title"))
    if title:
        practitioner["qualification"] = [{"code": {"text": title}}]
    return practitioner


def map_staff(row: Mapping[str, Any], hospital: Hospital) -> tuple[list[Resource],
                                                                    list[RowError]]:
    """One 科室/医务人员 row → ([hospital, 科室?, Practitioner?, PractitionerRole?], problems).

    Rejected when the row has neither 科室代码 nor 工号, or a 工号 without a 姓名; a bad
    身份证号 is left out with a warning. Never raises on row content.
    """
    errors: list[RowError] = []
    dept_code = fold(row.get("department_code"))
    staff_id = fold(row.get("staff_id"))
    staff_name = fold(row.get("staff_name"))
    if staff_name and not staff_id:
        return [], [RowError("staff_id", "", "required",
                             f"医务人员工号 is required for {staff_name}: it keys the Practitioner "
                             "so that re-imports update it")]
    if not dept_code and not staff_id:
        return [], [RowError("department_code", "", "required",
                             "a row needs a 科室代码 or a 医务人员工号 (or both)")]
    if staff_id and not staff_name:
        return [], [RowError("staff_name", "", "required",
                             f"姓名 is required for 医务人员工号 {staff_id}")]
    resources = [hospital_organization(hospital, fold(row.get("hospital_name")))]
    if dept_code:
        resources.append(department_organization(hospital, dept_code,
                                                 fold(row.get("department_name"))))
    if staff_id:
        practitioner = _practitioner(row, hospital, staff_id, staff_name, errors)
        org_id = (department_resource_id(hospital, dept_code) if dept_code
                  else organization_resource_id(hospital))
        role: Resource = {
            "resourceType": "PractitionerRole",
            "id": stable_id("prr", hospital, staff_id, dept_code),
            "active": True,
            "practitioner": {"reference": "Practitioner/" + practitioner["id"],
                             "display": staff_name},
            "organization": {"reference": "Organization/" + org_id},
        }
        dept_name = fold(row.get("department_name"))
        if dept_code and dept_name:
            role["organization"]["display"] = dept_name
        resources += [practitioner, role]
    return resources, errors


def map_staff_rows(rows: Sequence[Mapping[str, Any]], hospital: Hospital
                   ) -> tuple[list[Resource], list[RowError]]:
    """Staff rows (any number, any order) → each resource once, and problems with
    `RowError.row` the 0-based position in `rows`. A later row's version of a shared resource
    (hospital, 科室, a doctor in two 科室) replaces an earlier one, except that a hospital or
    科室 name is never replaced by a blank."""
    out: dict[tuple[str, str], Resource] = {}
    errors: list[RowError] = []
    for index, row in enumerate(rows):
        mapped, problems = map_staff(row, hospital)
        errors += [RowError(e.field, e.value, e.rule, e.message, e.severity, index)
                   for e in problems]
        for resource in mapped:
            key = (resource["resourceType"], resource["id"])
            previous = out.get(key)
            if previous and "name" in previous and "name" not in resource:
                resource = {**resource, "name": previous["name"]}
            out[key] = resource
    return list(out.values()), errors
