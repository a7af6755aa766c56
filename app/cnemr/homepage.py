"""WS 445-2014 part 10 (住院病案首页) and part 11 (中医住院病案首页) → a set of FHIR R4 resources.

One source row is one discharge, laid out as the 首页 upload of 卫医政发〔2011〕84号 /
国卫办医发〔2016〕24号 lays it out. It becomes:

- Patient: the row's patient elements mapped by `app.cnemr.patient` (the same Patient a
  患者基本信息 import of the same 病案号 gives);
- Encounter (class IMP, profile cn-encounter) with 住院号, period, 入院途径, 离院方式, 科别,
  实际住院天数, 医疗付费方式 and the ranked diagnoses;
- Condition per diagnosis (cn-condition): 主要诊断 rank 1, 其他诊断 rank 2…, ICD-10 国家临床版 2.0,
  入院病情; for 中医首页 one more for the 中医主病 (GB/T 15657) carrying the 主证 as extension;
- Procedure per 手术及操作 (cn-procedure): ICD-9-CM-3 国家临床版 3.0, date, 手术级别, 麻醉方式,
  术者;
- Observation for ABO (LOINC 883-9) and Rh(D) (LOINC 10331-7) blood group (cn-observation-lab);
- Claim (cn-claim) with the cost categories as items, total = 总费用, 自付金额 as supportingInfo;
- Composition (cn-composition) C0032 住院病案首页 or C0033 中医住院病案首页, sections pointing at
  all of the above.

Canonical data elements (values are the exported text; blank or missing means not recorded):

- patient elements of `app.cnemr.patient` (`patient_id` required, `name` required,
  `gender_code`, `birth_date`, `id_number`, …); the 首页 keys the patient by 病案号.
- `medical_record_no` 病案号 (BAH), `inpatient_no` 住院号 (ZYH), `admission_count` 住院次数
  (ZYCS, required, a positive integer). The admission is (住院号, 住院次数), or (病案号, 住院次数)
  when the 住院号 is blank; every resource id is derived from it (`context.admission_visit_key`).
- `payment_method_code` 医疗付费方式 (YLFKFS), CV07.10.005; the 2011 form's digits 1-9 accepted.
- `admission_route_code` 入院途径 (RYTJ), CV09.00.403: 1 急诊 · 2 门诊 · 3 其他医疗机构转入 ·
  9 其他.
- `admission_time` 入院时间 (RYSJ) and `discharge_time` 出院时间 (CYSJ), both required.
- `admission_department` 入院科别 (RYKB), `discharge_department` 出院科别 (CYKB).
- `length_of_stay` 实际住院天数 (SJZYTS); computed from the dates when blank.
- `discharge_method_code` 离院方式 (LYFS), the 首页 table (CodeSystem
  discharge-disposition-shouye: 1 医嘱离院 · 2 医嘱转院 · 3 医嘱转社区卫生服务机构/乡镇卫生院 ·
  4 非医嘱离院 · 5 死亡 · 9 其他).
- `principal_diagnosis_code` / `_name` / `principal_admission_condition`: 主要诊断 (JBDM,
  ZYZD, RYBQ), required; `other_diagnosis_code_1..5` / `other_diagnosis_name_1..5` /
  `other_admission_condition_1..5`: 其他诊断 (JBDMn, QTZDn, RYBQn).
- `procedure_code_1..3`, `procedure_name_1..3`, `procedure_date_1..3`, `operation_level_1..3`,
  `anesthesia_method_1..3`, `surgeon_1..3`: 手术及操作 (SSJCZBMn, SSJCZMCn, SSJCZRQn, SSJBn,
  MZFSn, SZn).
- `abo_blood_group` 血型 (XX): 1 A · 2 B · 3 O · 4 AB · 5 不详 · 6 未查 (or the letters);
  `rh_blood_group` Rh (RH): 1 阴 · 2 阳 · 3 不详 · 4 未查. 未查 means not tested: no Observation.
- `tcm_disease_code` / `tcm_disease_name` 中医主病 and `tcm_syndrome_code` / `tcm_syndrome_name`
  主证, GB/T 15657 (edition not stated by the upload, so Coding.version is left out).
- `attending_doctor` 主治医师 (ZZYS): Composition.author; the 出院科别 stands in when blank.
- the amounts of `COST_ITEMS` (`total_cost` 总费用 ZFY, `self_paid_amount` 自付金额 ZFJE,
  `western_medicine_cost` 西药费 XYF, …) in 元; a cost category's Claim.item is coded in
  CodeSystem fee-category-shouye by its upload column.

Codes and displays of the national tables (CV07.10.005, CV09.00.403, CV05.10.019, CV05.10.024,
CV04.50.005/020, the 首页 离院方式 and cost categories) are the CodeSystems of fhir_profiles/, and
入院途径, 离院方式 and the patient type are translated to FHIR through its ConceptMaps
(`app.cnemr.terminology`); this module only knows how a 首页 writes them (single digits, names,
A/B/O, 阳/阴 …). A ConceptMap target that is narrower or inexact is not asserted: 入院途径
3 其他医疗机构转入 keeps its CV09.00.403 coding alone.

Rules: the row is rejected (severity error, no resources) when the patient, the admission key,
the dates or the 主要诊断 are missing or invalid; a bad optional value (an 其他诊断 whose ICD-10
code is malformed, an unknown 手术级别, an amount with three decimals) is left out and reported as a
warning. Blank 其他诊断/手术 slots are skipped. Never raises on row content.

Encounter.diagnosis lists the ICD-10 diagnoses with rank 1, 2 … (in 首页 order, a skipped slot
closing the gap) and use DD; the 中医主病 follows without a rank, as ranks order one coding
system's diagnoses. Ids: `homepage_resource_id` of the admission and the 首页 slot
(diagnosis-00 主要诊断, diagnosis-01… 其他诊断, proc 1-3, abo/rh, …), so a re-import updates them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any

from app.cnemr import patient
from app.cnemr.context import (
    CN_CLAIM,
    CN_COMPOSITION,
    CN_CONDITION,
    CN_ENCOUNTER,
    CN_OBSERVATION_LAB,
    CN_PROCEDURE,
    Hospital,
    admission_visit_key,
    encounter_resource_id,
    homepage_resource_id,
    patient_resource_id,
)
from app.cnemr.errors import RowError, ValueRejected, per_row
from app.cnemr.terminology import UnknownTerminology, codes, coding, translate
from app.cnemr.values import SourceRow, as_datetime, parse_amount, parse_datetime
from app.samples.hospital import (
    CS_ADMIT_SOURCE,
    CS_ICD10,
    CS_PATIENT_TYPE,
    EXT_BASE,
    HL7_TERM,
    ICD10_VERSION,
    LOINC,
    OID_INPATIENT_NO,
    UCUM,
)
from app.text import is_digits

Resource = dict[str, Any]

OTHER_DIAGNOSES = 5
PROCEDURES = 3

CS_ICD9CM3 = "urn:oid:2.16.156.10011.2.3.3.12"
ICD9CM3_VERSION = "国家临床版3.0"
CS_TCM = "urn:oid:2.16.156.10011.2.3.3.14"  # GB/T 15657 中医病证分类与代码
CS_WST500 = "urn:oid:2.16.156.10011.2.4"
CS_ABO = "urn:oid:2.16.156.10011.2.3.1.85"  # CV04.50.005
CS_RH = "urn:oid:2.16.156.10011.2.3.1.250"  # CV04.50.020
CS_OPERATION_LEVEL = "urn:oid:2.16.156.10011.2.3.1.258"  # CV05.10.024
CS_PAYMENT_METHOD = "urn:oid:2.16.156.10011.2.3.1.269"  # CV07.10.005
# No OID was found for CV05.10.019; fhir_profiles/ gives it a Yilian URL (see its README).
CS_ADMISSION_CONDITION = "https://fhir.yilian.cn/CodeSystem/cv05-10-019-admission-condition"
# 离院方式: the national table CV06.00.226 was not found; this is the 首页 form's own table.
CS_DISCHARGE_METHOD = "https://fhir.yilian.cn/CodeSystem/discharge-disposition-shouye"
CS_FEE_CATEGORY = "https://fhir.yilian.cn/CodeSystem/fee-category-shouye"
ADMIT_SOURCE_MAP = "https://fhir.yilian.cn/ConceptMap/cv09-00-403-to-admit-source"
DISCHARGE_MAP = ("https://fhir.yilian.cn/ConceptMap/"
                 "discharge-disposition-shouye-to-discharge-disposition")
PATIENT_TYPE_MAP = "https://fhir.yilian.cn/ConceptMap/cv09-00-404-to-v3-actcode"

EXT_ADMISSION_CONDITION = EXT_BASE + "admission-condition"
EXT_OPERATION_LEVEL = EXT_BASE + "operation-level"
EXT_PAYMENT_METHOD = EXT_BASE + "payment-method"
EXT_TCM_SYNDROME = EXT_BASE + "tcm-syndrome"

_LEVEL_TEXT = {"一级": "1", "二级": "2", "三级": "3", "四级": "4"}
# 麻醉方法 CV06.00.103, first level; two-digit subcodes are kept as given.
ANESTHESIA: dict[str, str] = {"1": "全身麻醉", "2": "椎管内麻醉", "3": "局部麻醉",
                              "4": "复合麻醉", "9": "其他"}
_ABO_TEXT = {"A": "1", "B": "2", "O": "3", "AB": "4", "不详": "5", "未查": "6"}
_RH_TEXT = {"阴": "1", "阴性": "1", "-": "1", "RH-": "1", "阳": "2", "阳性": "2", "+": "2",
            "RH+": "2", "不详": "3", "未查": "4"}
_NOT_TESTED = {"abo_blood_group": "6", "rh_blood_group": "4"}


@dataclass(frozen=True, slots=True)
class CostItem:
    element: str
    column: str  # the 首页 upload column; a cost category's code in CS_FEE_CATEGORY
    name: str = ""  # totals only: a category's name is its CodeSystem display


# 总费用 and 自付金额 are totals, not categories; the rest become Claim.item in this order.
COST_TOTAL = CostItem("total_cost", "ZFY", "住院总费用")
COST_SELF_PAID = CostItem("self_paid_amount", "ZFJE", "自付金额")
COST_ITEMS: tuple[CostItem, ...] = (
    CostItem("general_service_cost", "YLFUF"),  # 一般医疗服务费
    CostItem("nursing_cost", "HLF"),  # 护理费
    CostItem("laboratory_cost", "SYSZDF"),  # 实验室诊断费
    CostItem("imaging_cost", "YXXZDF"),  # 影像学诊断费
    CostItem("surgery_cost", "SSF"),  # 手术费
    CostItem("anesthesia_cost", "MAF"),  # 麻醉费
    CostItem("western_medicine_cost", "XYF"),  # 西药费
    CostItem("chinese_patent_medicine_cost", "ZCYF"),  # 中成药费
    CostItem("chinese_herbal_cost", "ZCYF1"),  # 中草药费
)

PATIENT_ELEMENTS = frozenset({
    "patient_id", "name", "gender_code", "birth_date", "id_type_code", "id_number",
    "ethnicity_code", "marital_status_code", "phone", "address", "medical_record_no"})
ELEMENTS: frozenset[str] = PATIENT_ELEMENTS | frozenset({
    "inpatient_no", "admission_count", "payment_method_code", "admission_route_code",
    "admission_time", "admission_department", "discharge_time", "discharge_department",
    "length_of_stay", "discharge_method_code", "principal_diagnosis_code",
    "principal_diagnosis_name", "principal_admission_condition", "abo_blood_group",
    "rh_blood_group", "tcm_disease_code", "tcm_disease_name", "tcm_syndrome_code",
    "tcm_syndrome_name", "attending_doctor", COST_TOTAL.element, COST_SELF_PAID.element,
    *(c.element for c in COST_ITEMS),
    *(f"{k}_{n}" for n in range(1, OTHER_DIAGNOSES + 1)
      for k in ("other_diagnosis_code", "other_diagnosis_name", "other_admission_condition")),
    *(f"{k}_{n}" for n in range(1, PROCEDURES + 1)
      for k in ("procedure_code", "procedure_name", "procedure_date", "operation_level",
                "anesthesia_method", "surgeon")),
})

# ICD-10 国家临床版 2.0: category, then up to four characters, then an optional x-extension
# (I21.000, E11.900, I10.x00x002). ICD-9-CM-3 国家临床版 3.0: 00.6601, 36.0601, 96.7201.
_ICD10 = re.compile(r"[A-Z][0-9]{2}(?:\.[0-9x]{1,4}(?:x[0-9]{3})?)?")
_ICD9CM3 = re.compile(r"[0-9]{2}(?:\.[0-9]{1,4}(?:x[0-9]{3})?)?")
_TCM_CODE = re.compile(r"[A-Za-z0-9.]{2,20}")

_DIAGNOSIS_ROLE = {"coding": [{"system": HL7_TERM + "diagnosis-role", "code": "DD",
                               "display": "Discharge diagnosis"}]}
_ENCOUNTER_DIAGNOSIS = {"coding": [{"system": HL7_TERM + "condition-category",
                                    "code": "encounter-diagnosis",
                                    "display": "Encounter Diagnosis"}]}
_LABORATORY = {"coding": [{"system": HL7_TERM + "observation-category", "code": "laboratory",
                           "display": "Laboratory"}]}


def _coding(system: str, code: str, display: str) -> dict[str, str]:
    return {"system": system, "code": code, "display": display}


def _concept(system: str, code: str) -> Resource:
    """A CodeableConcept of one code of a fhir_profiles/ CodeSystem, text its display."""
    concept = coding(system, code)
    return {"coding": [concept], "text": concept["display"]}


def _translated(system: str, code: str, concept_map: str) -> Resource:
    """`_concept` with the code's FHIR translation as a second coding, where there is one."""
    concept = _concept(system, code)
    target = translate(concept_map, system, code)
    if target:
        concept["coding"].append(target)
    return concept


class _Row(SourceRow):
    """One 首页 row with the problems found in it so far."""

    def warn(self, field: str, rule: str, message: str) -> None:
        self.errors.append(RowError(field, self.get(field), rule, message, "warning"))

    def reject(self, field: str, rule: str, message: str) -> None:
        self.errors.append(RowError(field, self.get(field), rule, message, "error"))

    def coded(self, field: str, table: Mapping[str, str], rule: str, what: str,
              aliases: Mapping[str, str] | None = None) -> str | None:
        """The table code of an optional coded element; unknown values are left out."""
        raw = self.get(field)
        if not raw:
            return None
        code = (aliases or {}).get(raw.upper(), raw)
        if is_digits(code) and code.lstrip("0") in table:
            code = code.lstrip("0")
        if code not in table:
            choices = ", ".join(f"{k} {v}" for k, v in table.items())
            self.warn(field, rule, f"{what} must be one of {choices}; left out")
            return None
        return code

    def datetime(self, field: str, required: bool) -> str | None:
        raw = self.get(field)
        if not raw and not required:
            return None
        try:
            return parse_datetime(raw, self.hospital.tz)
        except ValueRejected as exc:
            self.errors.append(exc.to_row_error(field, raw, "error" if required else "warning"))
            return None

    def money(self, field: str) -> dict[str, Any] | None:
        raw = self.get(field)
        if not raw:
            return None
        try:
            return parse_amount(raw)
        except ValueRejected as exc:
            self.errors.append(exc.to_row_error(field, raw, "warning"))
            return None


@dataclass
class _Context:
    hospital: Hospital
    visit_key: str
    patient_ref: Resource
    encounter_ref: Resource
    recorded: str

    def rid(self, prefix: str, part: str) -> str:
        return homepage_resource_id(prefix, self.hospital, self.visit_key, part)


def _icd10(code: str) -> str:
    return code[:1].upper() + code[1:].lower() if code else code


def _admission_condition(r: _Row, field: str) -> Resource | None:
    table = codes(CS_ADMISSION_CONDITION)
    code = r.coded(field, table, "cv05.10.019", "入院病情", {v: k for k, v in table.items()})
    if code is None:
        return None
    return {"url": EXT_ADMISSION_CONDITION, "valueCodeableConcept": _concept(
        CS_ADMISSION_CONDITION, code)}


def _condition(ctx: _Context, part: str, coding: dict[str, str], text: str,
               extensions: list[Resource]) -> Resource:
    condition: Resource = {"resourceType": "Condition", "id": ctx.rid("cond", part),
                           "meta": {"profile": [CN_CONDITION]}}
    if extensions:
        condition["extension"] = extensions
    condition.update({
        "verificationStatus": {"coding": [{"system": HL7_TERM + "condition-ver-status",
                                           "code": "confirmed"}]},
        "category": [_ENCOUNTER_DIAGNOSIS],
        "code": {"coding": [coding], "text": text},
        "subject": ctx.patient_ref,
        "encounter": ctx.encounter_ref,
        "recordedDate": ctx.recorded,
    })
    return condition


def _diagnoses(r: _Row, ctx: _Context) -> list[tuple[Resource, int | None]]:
    """(Condition, rank) in 首页 order: 主要诊断 (slot 00) first, then 其他诊断 01…."""
    slots = [("principal_diagnosis_code", "principal_diagnosis_name",
              "principal_admission_condition", True)]
    slots += [(f"other_diagnosis_code_{n}", f"other_diagnosis_name_{n}",
               f"other_admission_condition_{n}", False) for n in range(1, OTHER_DIAGNOSES + 1)]
    out: list[tuple[Resource, int | None]] = []
    for slot, (code_field, name_field, condition_field, principal) in enumerate(slots):
        code, name = _icd10(r.get(code_field)), r.get(name_field)
        if not code and not name and not principal:
            continue  # a blank 其他诊断 slot
        flag = r.reject if principal else r.warn
        what = "主要诊断" if principal else f"其他诊断{slot}"
        consequence = "the 首页 was not imported" if principal else "the diagnosis was left out"
        if not code:
            flag(code_field, "required", f"{what} has no ICD-10 code (疾病编码); {consequence}")
            continue
        if not _ICD10.fullmatch(code):
            flag(code_field, "icd10-format",
                 f"{what} code is not an ICD-10 国家临床版 code such as I21.000 or "
                 f"I10.x00x002 (letter, two digits, '.', up to four characters, optional "
                 f"x-extension); {consequence}")
            continue
        coding = {"system": CS_ICD10, "version": ICD10_VERSION, "code": code}
        if name:
            coding["display"] = name
        extension = _admission_condition(r, condition_field)
        condition = _condition(ctx, f"diagnosis-{slot:02d}", coding, name or code,
                               [extension] if extension else [])
        out.append((condition, len(out) + 1))
    return out


def _tcm_diagnosis(r: _Row, ctx: _Context) -> Resource | None:
    """The 中医主病 Condition, with the 主证 (证候) in the tcm-syndrome extension."""
    code, name = r.get("tcm_disease_code"), r.get("tcm_disease_name")
    syndrome_code, syndrome_name = r.get("tcm_syndrome_code"), r.get("tcm_syndrome_name")
    if not code:
        if name:
            r.warn("tcm_disease_code", "required",
                   "中医主病 has a name but no GB/T 15657 code; left out")
        if syndrome_code or syndrome_name:
            r.warn("tcm_syndrome_code", "tcm-syndrome-without-disease",
                   "主证 is recorded only with its 中医主病, which is missing; left out")
        return None
    if not _TCM_CODE.fullmatch(code):
        r.warn("tcm_disease_code", "gbt-15657-format",
               "中医主病 code must be a GB/T 15657 code (letters, digits and dots); left out")
        return None
    extensions: list[Resource] = []
    if syndrome_code and _TCM_CODE.fullmatch(syndrome_code):
        syndrome: Resource = {"system": CS_TCM, "code": syndrome_code}
        if syndrome_name:
            syndrome["display"] = syndrome_name
        extensions.append({"url": EXT_TCM_SYNDROME, "valueCodeableConcept": {
            "coding": [syndrome], "text": syndrome_name or syndrome_code}})
    elif syndrome_code or syndrome_name:
        r.warn("tcm_syndrome_code", "gbt-15657-format",
               "主证 needs a GB/T 15657 code (letters, digits and dots); left out")
    coding = {"system": CS_TCM, "code": code}
    if name:
        coding["display"] = name
    return _condition(ctx, "tcm-disease", coding, name or code, extensions)


def _procedures(r: _Row, ctx: _Context) -> list[Resource]:
    out: list[Resource] = []
    for n in range(1, PROCEDURES + 1):
        fields = {k: f"{k}_{n}" for k in ("procedure_code", "procedure_name", "procedure_date",
                                          "operation_level", "anesthesia_method", "surgeon")}
        if not any(r.get(f) for f in fields.values()):
            continue
        code, name = r.get(fields["procedure_code"]), r.get(fields["procedure_name"])
        if not code or not _ICD9CM3.fullmatch(code):
            r.warn(fields["procedure_code"], "required" if not code else "icd9cm3-format",
                   f"手术及操作{n} needs an ICD-9-CM-3 国家临床版 code such as 00.6601 "
                   "(two digits, '.', up to four digits, optional x-extension); the procedure was "
                   "left out")
            continue
        coding = {"system": CS_ICD9CM3, "version": ICD9CM3_VERSION, "code": code}
        if name:
            coding["display"] = name
        procedure: Resource = {"resourceType": "Procedure", "id": ctx.rid("proc", str(n)),
                               "meta": {"profile": [CN_PROCEDURE]}}
        levels = codes(CS_OPERATION_LEVEL)
        level = r.coded(fields["operation_level"], levels, "cv05.10.024", "手术级别",
                        _LEVEL_TEXT | {v: k for k, v in levels.items()})
        if level:
            procedure["extension"] = [{"url": EXT_OPERATION_LEVEL, "valueCodeableConcept":
                                       _concept(CS_OPERATION_LEVEL, level)}]
        procedure.update({"status": "completed", "code": {"coding": [coding],
                                                          "text": name or code},
                          "subject": ctx.patient_ref, "encounter": ctx.encounter_ref})
        performed = r.datetime(fields["procedure_date"], required=False)
        if performed:
            procedure["performedDateTime"] = performed
        surgeon = r.get(fields["surgeon"])
        if surgeon:
            procedure["performer"] = [{"function": {"text": "术者"},
                                       "actor": {"display": surgeon}}]
        anesthesia = r.get(fields["anesthesia_method"])
        if anesthesia:
            # R4 Procedure has no anesthesia element and no national extension exists for it.
            label = ANESTHESIA.get(anesthesia)
            procedure["note"] = [{"text": f"麻醉方式(CV06.00.103): {anesthesia} {label}"
                                  if label else f"麻醉方式: {anesthesia}"}]
        out.append(procedure)
    return out


def _blood_group(r: _Row, ctx: _Context, field: str) -> Resource | None:
    abo = field == "abo_blood_group"
    system, aliases = (CS_ABO, _ABO_TEXT) if abo else (CS_RH, _RH_TEXT)
    raw = r.get(field)
    if not raw:
        return None
    code = aliases.get(raw.upper(), raw)
    if code == _NOT_TESTED[field]:
        return None  # 未查: not tested, nothing to record
    if code not in codes(system):
        r.warn(field, "cv04.50.005" if abo else "cv04.50.020",
               ("血型 must be 1 A, 2 B, 3 O, 4 AB, 5 不详, 6 未查" if abo else
                "Rh must be 1 阴性, 2 阳性, 3 不详, 4 未查") + "; left out")
        return None
    loinc = ("883-9", "ABO group [Type] in Blood") if abo else ("10331-7", "Rh [Type] in Blood")
    return {
        "resourceType": "Observation", "id": ctx.rid("obs", "abo" if abo else "rh"),
        # A 血型 is a blood bank laboratory result (LOINC class BLDBK) with a coded value:
        # it meets cn-observation-lab (laboratory category, subject), whose Quantity rules
        # do not apply to a valueCodeableConcept.
        "meta": {"profile": [CN_OBSERVATION_LAB]},
        "status": "final", "category": [_LABORATORY],
        "code": {"coding": [_coding(LOINC, *loinc)], "text": "ABO血型" if abo else "Rh血型"},
        "subject": ctx.patient_ref, "encounter": ctx.encounter_ref,
        "valueCodeableConcept": _concept(system, code),
    }


def _payment_method(r: _Row) -> Resource | None:
    raw = r.get("payment_method_code")
    if not raw:
        return None
    code = "99" if raw == "9" else raw.zfill(2) if is_digits(raw) else raw
    methods = codes(CS_PAYMENT_METHOD)
    code = {v: k for k, v in methods.items()}.get(code, code)
    if code not in methods:
        r.warn("payment_method_code", "cv07.10.005",
               "医疗付费方式 must be a CV07.10.005 code 01-08 or 99 (or the 2011 首页 digit 1-9); "
               "left out")
        return None
    return {"url": EXT_PAYMENT_METHOD, "valueCodeableConcept": _concept(CS_PAYMENT_METHOD,
                                                                         code)}


def _inpatient_class() -> Resource:
    """Encounter.class of an admission: CV09.00.404 3 住院 through its ConceptMap (IMP)."""
    target = translate(PATIENT_TYPE_MAP, CS_PATIENT_TYPE, "3")
    if target is None:  # fhir_profiles/ is broken, not the row; test_terminology guards it
        raise UnknownTerminology(f"{PATIENT_TYPE_MAP} gives no Encounter.class for 3 住院")
    return target


def _length_of_stay(r: _Row, start: str, end: str) -> Resource:
    """实际住院天数: as recorded when given (a disagreement with the dates is reported), else
    出院日期 − 入院日期, a same-day stay counting one day as the 首页 rules count it."""
    computed = max((_day(end) - _day(start)).days, 1)
    raw = r.get("length_of_stay")
    days = computed
    if raw:
        if is_digits(raw):
            days = int(raw)
            if days != computed:
                r.warn("length_of_stay", "los-mismatch",
                       f"实际住院天数 {days} differs from 出院日期 − 入院日期 ({computed}); "
                       "kept as recorded")
        else:
            r.warn("length_of_stay", "los-format",
                   f"实际住院天数 must be a whole number of days; {computed} computed from the "
                   "dates was used")
    return {"value": days, "unit": "天", "system": UCUM, "code": "d"}


def _day(fhir_datetime: str) -> date:
    """The calendar day of a FHIR dateTime, in the zone it was written in."""
    parsed = as_datetime(fhir_datetime)
    return parsed.date() if parsed else date.fromisoformat(fhir_datetime)


def _encounter(r: _Row, ctx: _Context, admission_no: str, count: int, start: str, end: str,
               diagnoses: list[tuple[Resource, int | None]]) -> Resource:
    encounter: Resource = {"resourceType": "Encounter", "id": ctx.encounter_ref["reference"]
                           .removeprefix("Encounter/"), "meta": {"profile": [CN_ENCOUNTER]}}
    payment = _payment_method(r)
    if payment:
        encounter["extension"] = [payment]
    identifiers: list[Resource] = []
    if r.get("inpatient_no"):
        identifiers.append({"use": "official", "type": {"text": "住院号"},
                            "system": OID_INPATIENT_NO, "value": r.get("inpatient_no")})
    identifiers.append({"use": "usual", "type": {"text": "住院号/住院次数" if r.get(
        "inpatient_no") else "病案号/住院次数"}, "system": f"urn:oid:{ctx.hospital.oid}.admission",
                        "value": admission_visit_key(admission_no, count)})
    encounter.update({
        "identifier": identifiers,
        "status": "finished",
        "class": _inpatient_class(),
        "type": [_concept(CS_PATIENT_TYPE, "3")],
        "subject": ctx.patient_ref,
        "period": {"start": start, "end": end},
        "length": _length_of_stay(r, start, end),
    })
    departments = [d for d in (r.get("admission_department"), r.get("discharge_department")) if d]
    if departments:
        encounter["serviceType"] = {"text": departments[-1]}
    if diagnoses:
        encounter["diagnosis"] = []
        for condition, rank in diagnoses:
            entry: Resource = {}
            admission = [e for e in condition.get("extension", [])
                         if e["url"] == EXT_ADMISSION_CONDITION]
            if admission:
                entry["extension"] = admission
            entry.update({"condition": {"reference": f"Condition/{condition['id']}"},
                          "use": _DIAGNOSIS_ROLE})
            if rank is not None:
                entry["rank"] = rank
            encounter["diagnosis"].append(entry)
    hospitalization: Resource = {}
    routes = codes(CS_ADMIT_SOURCE)
    route = r.coded("admission_route_code", routes, "cv09.00.403", "入院途径",
                    {v: k for k, v in routes.items()})
    if route:
        hospitalization["admitSource"] = _translated(CS_ADMIT_SOURCE, route, ADMIT_SOURCE_MAP)
    methods = codes(CS_DISCHARGE_METHOD)
    method = r.coded("discharge_method_code", methods, "shouye-lyfs", "离院方式",
                     {v: k for k, v in methods.items()})
    if method:
        hospitalization["dischargeDisposition"] = _translated(CS_DISCHARGE_METHOD, method,
                                                              DISCHARGE_MAP)
    if hospitalization:
        encounter["hospitalization"] = hospitalization
    locations = [{"location": {"display": d}, "status": "completed"}
                 for i, d in enumerate(departments) if d not in departments[:i]]
    if locations:
        encounter["location"] = locations
    return encounter


def _claim(r: _Row, ctx: _Context, admission_no: str, count: int,
           payment: Resource | None) -> Resource | None:
    """总费用 as Claim.total, each cost category as an item, 自付金额 as supportingInfo (Claim
    has no patient-share element; the 医保 split belongs in a ClaimResponse)."""
    total = r.money(COST_TOTAL.element)
    self_paid = r.money(COST_SELF_PAID.element)
    items: list[Resource] = []
    for cost in COST_ITEMS:
        net = r.money(cost.element)
        if net is not None:
            items.append({"sequence": len(items) + 1,
                          "productOrService": _concept(CS_FEE_CATEGORY, cost.column),
                          "net": net})
    if total is None and self_paid is None and not items:
        return None
    method = payment["valueCodeableConcept"]["text"] if payment else "医疗付费方式未记录"
    claim: Resource = {"resourceType": "Claim", "id": ctx.rid("claim", "costs"),
                       "meta": {"profile": [CN_CLAIM]}}
    if payment:
        claim["extension"] = [payment]
    claim.update({
        "identifier": [{"system": f"urn:oid:{ctx.hospital.oid}.admission",
                        "value": admission_visit_key(admission_no, count)}],
        "status": "active",
        "type": {"coding": [{"system": HL7_TERM + "claim-type", "code": "institutional"}]},
        "use": "claim",
        "patient": ctx.patient_ref,
        "created": ctx.recorded,
        "provider": {"identifier": {"system": "urn:ietf:rfc:3986",
                                    "value": f"urn:oid:{ctx.hospital.oid}"}},
        "priority": {"coding": [{"system": HL7_TERM + "processpriority", "code": "normal"}]},
        "insurance": [{"sequence": 1, "focal": True, "coverage": {"display": method}}],
    })
    if self_paid is not None:
        claim["supportingInfo"] = [{
            "sequence": 1,
            "category": {"coding": [{"system": HL7_TERM + "claiminformationcategory",
                                     "code": "info"}], "text": COST_SELF_PAID.name},
            "valueQuantity": {"value": self_paid["value"], "unit": "元",
                              "system": "urn:iso:std:iso:4217", "code": "CNY"}}]
    if items:
        claim["item"] = items
    if total is not None:
        claim["total"] = total
    return claim


def _composition(r: _Row, ctx: _Context, tcm: bool, sections: list[tuple[str, list[Resource]]]
                 ) -> Resource:
    document = _concept(CS_WST500, "C0033" if tcm else "C0032")  # 中医住院病案首页 / 住院病案首页
    code, title = document["coding"][0]["code"], document["text"]
    author = r.get("attending_doctor") or r.get("discharge_department") or "病案科"
    return {
        "resourceType": "Composition", "id": ctx.rid("comp", code),
        "meta": {"profile": [CN_COMPOSITION]},
        "status": "final",
        "type": document,
        "subject": ctx.patient_ref, "encounter": ctx.encounter_ref,
        "date": ctx.recorded,
        "author": [{"display": author}],
        "title": title,
        "section": [{"title": name, "entry": [
            {"reference": f"{res['resourceType']}/{res['id']}"} for res in entries]}
            for name, entries in sections if entries],
    }


def map_homepage(row: Mapping[str, Any], hospital: Hospital) -> tuple[list[Resource],
                                                                       list[RowError]]:
    """One 首页 row → (resources, problems); ([], problems) when the row is rejected."""
    r = _Row(row, hospital)
    patients, patient_errors = patient.map_patient(row, hospital)
    r.errors += patient_errors
    admission_no = r.get("inpatient_no") or r.get("medical_record_no")
    if not admission_no:
        r.reject("inpatient_no", "required",
                 "住院号 (or else 病案号) is required: with 住院次数 it keys the admission")
    raw_count = r.get("admission_count")
    count = int(raw_count) if is_digits(raw_count) and int(raw_count) > 0 else 0
    if not count:
        r.reject("admission_count", "required" if not raw_count else "positive-integer",
                 "住院次数 must be a positive whole number: with the 住院号 it keys the admission")
    start = r.datetime("admission_time", required=True)
    end = r.datetime("discharge_time", required=True)
    if start and end and _day(end) < _day(start):
        r.reject("discharge_time", "discharge-before-admission",
                 "出院时间 is before 入院时间; the 首页 was not imported")
    patient_id = r.get("patient_id")
    if not patients or not patient_id or not admission_no or not count or not start or not end:
        return [], r.errors

    visit_key = admission_visit_key(admission_no, count)
    ctx = _Context(hospital, visit_key,
                   {"reference": "Patient/" + patient_resource_id(hospital, patient_id)},
                   {"reference": "Encounter/" + encounter_resource_id(hospital, visit_key)},
                   end)
    diagnoses = _diagnoses(r, ctx)
    if any(e.severity == "error" for e in r.errors):
        return [], r.errors
    tcm = _tcm_diagnosis(r, ctx)
    if tcm:
        diagnoses.append((tcm, None))
    procedures = _procedures(r, ctx)
    blood = [o for f in ("abo_blood_group", "rh_blood_group")
             if (o := _blood_group(r, ctx, f)) is not None]
    encounter = _encounter(r, ctx, admission_no, count, start, end, diagnoses)
    payment = next((e for e in encounter.get("extension", [])
                    if e["url"] == EXT_PAYMENT_METHOD), None)
    claim = _claim(r, ctx, admission_no, count, payment)
    conditions = [c for c, _ in diagnoses]
    tcm_home = tcm is not None or any(r.get(f) for f in (
        "tcm_disease_code", "tcm_disease_name", "tcm_syndrome_code", "tcm_syndrome_name"))
    composition = _composition(r, ctx, tcm_home, [
        ("诊断", conditions), ("手术及操作", procedures), ("血型", blood),
        ("住院费用", [claim] if claim else [])])
    resources = [*patients, encounter, *conditions, *procedures, *blood,
                 *([claim] if claim else []), composition]
    return resources, r.errors


# `datasets.MapRows` over 首页 rows, each one discharge on its own.
map_homepage_rows = per_row(map_homepage)
