"""WS 445-2014 part 1 (病历概要) 患者基本信息 → FHIR R4 Patient.

A row is a dict keyed by these canonical data elements (values are the exported text; blank
or missing means not recorded):

- `patient_id` (required): 院内患者ID, the HIS patient id → identifier in
  `Hospital.patient_id_system`; also keys Patient.id.
- `name` (required): 姓名 → name.text, family/given (复姓 欧阳, 司马, 诸葛 … kept whole).
- `gender_code`: 性别代码, GB/T 2261.1 (0/1/2/9, or 男/女) → gender through the ConceptMap
  gbt-2261-1-to-administrative-gender, with the GB/T 2261.1 coding in an extension on
  `_gender`. Blank or not a GB/T 2261.1 code (reported) → gender `unknown` without the
  extension: the CN Patient profile requires a gender, and unknown is what the row says.
- `birth_date`: 出生日期 → birthDate.
- `id_type_code`: 身份证件类别代码, CV02.01.101 (blank means 01 when a number is given).
- `id_number`: 身份证件号码 → identifier urn:oid:2.16.156.10011.1.3 for 01 居民身份证; other
  document types keep only their CV02.01.101 type (no national namespace exists for them).
- `ethnicity_code`: 民族, GB 3304 (01-56, 97, 98; '1' and 汉族/汉 accepted) → extension.
- `marital_status_code`: 婚姻状况代码, GB/T 2261.2 (also the 首页 digits 1/2/3/4/9) →
  maritalStatus with the GB/T 2261.2 coding and its v3-MaritalStatus translation (ConceptMap
  gbt-2261-2-to-v3-marital-status; 90 其他 has none).
- `phone`: 电话号码 → telecom, one per number when a cell holds several (138…/010-…);
  use mobile for a mainland mobile number.
- `address`: 现住址 → address (use home, text).
- `address_code`: 现住址行政区划代码, GB/T 2260 (6 digits, e.g. 440106 广州市天河区) → extension
  `address-division-code` on that address, a Coding in urn:oid:2.16.156.10011.2.3.3.2. R4
  Address has only text parts (state, city, district): a code put there would read as a place
  name, so the code travels in the extension and the parts stay text. Checked for six digits
  and a GB/T 2260 province prefix (the county itself is not: GB/T 2260 is not shipped).
- `medical_record_no`: 病案号 → identifier urn:oid:2.16.156.10011.1.13.
- `health_card_no`: 居民健康卡号 (首页 JKKH) → identifier urn:oid:2.16.156.10011.1.19, type v2-0203
  HC, the namespace the card importer (`app.cnemr.card`) gives the same card on Coverage. 1-64
  ASCII letters and digits (a 居民健康卡号 is often the 身份证号, an 电子健康卡 ID is 64 hex
  characters); anything else is reported masked.
- `occupation_code`: 职业, GB/T 2261.4 从业状况 (11 国家公务员 … 90 其他, or the name, 退休 …)
  → extension `occupation` (FHIR R4 Patient has no occupation element).
- `contact_name`: 联系人姓名 → contact.name.text.
- `contact_relation`: 联系人与患者的关系, GB/T 4761 one-digit code (0 本人 … 8 其他, as the 首页 GX
  writes it) or the word (配偶, 父亲, 女儿 …) → contact.relationship with the GB/T 4761 coding
  and its v3 RoleCode translation (ConceptMap gbt-4761-to-v3-rolecode; 8 其他 has none), text
  the word the source wrote. A relation outside the table is reported and kept as text only.
- `contact_phone`: 联系人电话 → contact.telecom, one per number as for `phone`.
- `contact_address`: 联系人地址 → contact.address.text.

Rules: a 居民身份证号 is checked by GB 11643-1999 and upgraded from 15 digits; if it fails the
check it is left out and reported. Its sex and birth date are cross-checked against the
recorded ones and a mismatch is reported, with both kept exactly as the source gave them.
A contact needs a name, a phone or an address (R4 pat-1): a relation alone is reported and the
contact left out. The 民族 and 性别 extension URLs are the ones `app.samples.hospital` already
uses, so sample data and imported data look the same. Codes, displays and translations come
from the CodeSystems and ConceptMaps of fhir_profiles/ (`app.cnemr.terminology`); this module
only knows how exports write them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from app.cnemr.card import OID_HEALTH_CARD
from app.cnemr.context import CN_PATIENT, Hospital, patient_resource_id
from app.cnemr.errors import RowError, ValueRejected
from app.cnemr.terminology import codes, coding, translate
from app.cnemr.values import (
    fold,
    id_mismatches,
    mask_id,
    normalize_id_number,
    parse_date,
    parse_phone,
)
from app.samples.hospital import (
    CS_ETHNICITY,
    CS_ID_TYPE,
    CS_MARITAL,
    CS_SEX,
    EXT_ETHNICITY,
    EXT_SEX,
    OID_ID_CARD,
    OID_MRN,
)
from app.samples.identity import PROVINCE_PREFIXES
from app.search.normalize import has_han, split_chinese_name
from app.text import is_digits

Resource = dict[str, Any]

_PHONE_SEPARATORS = re.compile("[/,;、，；]")
_NAME_DOTS = re.compile("[·•・‧.．]")
_ALL_HAN = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f]+")

HL7_TERM = "http://terminology.hl7.org/CodeSystem/"

# The code tables (GB/T 2261.1, GB 3304, GB/T 2261.2, CV02.01.101) and their translations to
# FHIR are the CodeSystems and ConceptMaps of fhir_profiles/ (`app.cnemr.terminology`); below
# are only the ways exports write the codes.
GENDER_MAP = "https://fhir.yilian.cn/ConceptMap/gbt-2261-1-to-administrative-gender"
MARITAL_MAP = "https://fhir.yilian.cn/ConceptMap/gbt-2261-2-to-v3-marital-status"
RELATION_MAP = "https://fhir.yilian.cn/ConceptMap/gbt-4761-to-v3-rolecode"
CS_RELATION = "urn:oid:2.16.156.10011.2.3.3.8"  # 家庭关系 GB/T 4761
CS_OCCUPATION = "urn:oid:2.16.156.10011.2.3.3.13"  # 从业状况 GB/T 2261.4
CS_DIVISION = "urn:oid:2.16.156.10011.2.3.3.2"  # 行政区划 GB/T 2260 (not shipped)
EXT_OCCUPATION = "https://fhir.yilian.cn/StructureDefinition/occupation"
EXT_DIVISION = "https://fhir.yilian.cn/StructureDefinition/address-division-code"

_GENDER_TEXT = {"男": "1", "男性": "1", "女": "2", "女性": "2", "未知": "0", "未说明": "9"}
# 住院病案首页 (卫医政发〔2011〕84号) writes the first digit only.
_MARITAL_SHORT = {"1": "10", "2": "20", "3": "30", "4": "40", "9": "90"}
# 家庭关系 as words: the one-digit GB/T 4761 group each belongs to (51 父亲 is in 5 父母 …).
# 女婿 and 儿媳 are left out on purpose: GB/T 4761 files them under 2 子 / 3 女, but the v3
# translation of those (son, daughter) would be wrong for an in-law.
_RELATION_TEXT = {
    "本人": "0", "患者本人": "0", "自己": "0", "夫": "1", "妻": "1", "丈夫": "1", "妻子": "1",
    "夫妻": "1", "爱人": "1", "儿子": "2", "养子": "2", "继子": "2", "女儿": "3", "养女": "3",
    "继女": "3", "孙辈": "4", "孙子": "4", "孙女": "4", "外孙": "4", "外孙子": "4", "外孙女": "4",
    "父亲": "5", "母亲": "5", "父": "5", "母": "5", "祖辈": "6", "祖父": "6", "祖母": "6",
    "外祖父": "6", "外祖母": "6", "爷爷": "6", "奶奶": "6", "外公": "6", "外婆": "6",
    "兄弟姐妹": "7", "兄弟": "7", "姐妹": "7", "兄": "7", "弟": "7", "姐": "7", "妹": "7",
    "哥哥": "7", "弟弟": "7", "姐姐": "7", "妹妹": "7"}
# 职业 as HIS write it in words.
_OCCUPATION_TEXT = {
    "公务员": "11", "技术人员": "13", "企业管理": "21", "军人": "37", "自由职业": "51",
    "个体": "54", "个体户": "54", "无业": "70", "待业": "70", "退休": "80", "离休": "80",
    "离退休": "80", "退休人员": "80", "退(离)休": "80"}
_HEALTH_CARD = re.compile("[0-9A-Za-z]{1,64}")


@lru_cache(maxsize=1)
def _ethnicity_by_name() -> dict[str, str]:
    """民族 written as a name: 汉族, or without 族 as many exports do (汉, 维吾尔)."""
    table = codes(CS_ETHNICITY)
    return {name: code for code, name in table.items()} | {
        name.removesuffix("族"): code for code, name in table.items() if name.endswith("族")}


def _coding(system: str, code: str, display: str) -> dict[str, str]:
    return {"system": system, "code": code, "display": display}


def _gender(row: Mapping[str, Any], errors: list[RowError]) -> tuple[str, str, str] | None:
    raw = fold(row.get("gender_code"))
    if not raw:
        return None
    code = _GENDER_TEXT.get(raw, raw)
    target = translate(GENDER_MAP, CS_SEX, code) if code in codes(CS_SEX) else None
    if target is None:
        errors.append(RowError("gender_code", raw, "gbt-2261.1",
                               "性别代码 must be a GB/T 2261.1 code: 0 未知的性别, 1 男, 2 女, "
                               "9 未说明的性别 (or 男/女); gender recorded as unknown",
                               "warning"))
        return None
    return code, codes(CS_SEX)[code], target["code"]


def _ethnicity(row: Mapping[str, Any], errors: list[RowError]) -> Resource | None:
    raw = fold(row.get("ethnicity_code"))
    if not raw:
        return None
    code = _ethnicity_by_name().get(raw) or (raw.zfill(2) if is_digits(raw) else raw)
    if code not in codes(CS_ETHNICITY):
        errors.append(RowError("ethnicity_code", raw, "gb-3304",
                               "民族 must be a GB 3304 code 01-56, 97 or 98 (01 汉族 … 56 "
                               "基诺族) or its name; left out", "warning"))
        return None
    ethnicity = coding(CS_ETHNICITY, code)
    return {"url": EXT_ETHNICITY, "valueCodeableConcept": {
        "coding": [ethnicity], "text": ethnicity["display"]}}


def _marital(row: Mapping[str, Any], errors: list[RowError]) -> Resource | None:
    raw = fold(row.get("marital_status_code"))
    if not raw:
        return None
    code = _MARITAL_SHORT.get(raw, raw)
    if code not in codes(CS_MARITAL):
        errors.append(RowError("marital_status_code", raw, "gbt-2261.2",
                               "婚姻状况 must be a GB/T 2261.2 code (10 未婚, 20 已婚, 21-23, "
                               "30 丧偶, 40 离婚, 90 其他) or the 首页 digit 1/2/3/4/9; left out",
                               "warning"))
        return None
    marital = coding(CS_MARITAL, code)
    # 90 其他 has no v3 counterpart (the ConceptMap's UNK is inexact): the GB/T coding alone.
    v3 = translate(MARITAL_MAP, CS_MARITAL, code)
    return {"coding": [marital, v3] if v3 else [marital], "text": marital["display"]}


def _telecoms(row: Mapping[str, Any], errors: list[RowError],
              field: str = "phone") -> list[Resource]:
    """One ContactPoint per number: exports often put two in one cell (138…/010-…)."""
    out: list[Resource] = []
    for part in _PHONE_SEPARATORS.split(fold(row.get(field))):
        if not part.strip():
            continue
        try:
            number, use = parse_phone(part)
        except ValueRejected as exc:
            errors.append(exc.to_row_error(field, part.strip(), "warning"))
            continue
        telecom: Resource = {"system": "phone", "value": number}
        if use:
            telecom["use"] = use
        out.append(telecom)
    return out


def _id_identifier(row: Mapping[str, Any], errors: list[RowError], gender: str | None,
                   birth: str | None) -> Resource | None:
    raw = fold(row.get("id_number"))
    id_type = fold(row.get("id_type_code"))
    if not raw:
        return None
    id_type = id_type.zfill(2) if is_digits(id_type) else id_type
    if id_type and id_type not in codes(CS_ID_TYPE):
        errors.append(RowError("id_type_code", id_type, "cv02.01.101",
                               "身份证件类别 must be a CV02.01.101 code (01 居民身份证, 02 户口簿, "
                               "03 护照 … 99 其他); the 证件号码 was left out", "warning"))
        return None
    if id_type and id_type != "01":
        # No national namespace exists for the other documents: keep the number with its type
        # only, so it is findable but never confused with a 居民身份证号.
        document = coding(CS_ID_TYPE, id_type)
        return {"use": "secondary",
                "type": {"coding": [document], "text": document["display"]},
                "value": "".join(raw.split())}
    try:
        parsed = normalize_id_number(raw)
    except ValueRejected as exc:
        errors.append(RowError("id_number", mask_id(raw), exc.rule,
                               exc.message + "; the 居民身份证号 was left out", "warning"))
        return None
    if parsed.upgraded:
        errors.append(RowError("id_number", mask_id(raw), "gb11643-legacy-15",
                               "legacy 15-digit 居民身份证号 upgraded to 18 characters "
                               "(century 19 and check character added)", "warning"))
    for field, problem in id_mismatches(parsed.info, gender, birth):
        errors.append(problem.to_row_error(field, fold(row.get(field)), "warning"))
    return {"use": "official",
            "type": {"coding": [coding(CS_ID_TYPE, "01")]},
            "system": OID_ID_CARD, "value": parsed.number}


def _health_card(row: Mapping[str, Any], errors: list[RowError]) -> Resource | None:
    raw = fold(row.get("health_card_no"))
    number = "".join(raw.split())
    if not number:
        return None
    if not _HEALTH_CARD.fullmatch(number):
        errors.append(RowError("health_card_no", mask_id(number), "health-card-format",
                               "居民健康卡号 must be 1-64 letters and digits (often the 身份证号; "
                               "an 电子健康卡 ID is 64 hex characters); left out", "warning"))
        return None
    return {"use": "secondary",
            "type": {"coding": [_coding(HL7_TERM + "v2-0203", "HC", "Health Card Number")],
                     "text": "居民健康卡号"},
            "system": OID_HEALTH_CARD, "value": number}


def _occupation(row: Mapping[str, Any], errors: list[RowError]) -> Resource | None:
    raw = fold(row.get("occupation_code"))
    if not raw:
        return None
    table = codes(CS_OCCUPATION)
    by_name = {name: code for code, name in table.items()} | _OCCUPATION_TEXT
    code = by_name.get(raw, raw)
    if code not in table:
        errors.append(RowError("occupation_code", raw, "gbt-2261.4",
                               "职业 must be a GB/T 2261.4 code (11 国家公务员, 13 专业技术人员, "
                               "17 职员, 21 企业管理人员, 24 工人, 27 农民, 31 学生, "
                               "37 现役军人, 51 自由职业者, 54 个体经营者, 70 无业人员, "
                               "80 退(离)休人员, 90 其他) or its name; left out", "warning"))
        return None
    occupation = coding(CS_OCCUPATION, code)
    return {"url": EXT_OCCUPATION, "valueCodeableConcept": {
        "coding": [occupation], "text": occupation["display"]}}


def _address(row: Mapping[str, Any], errors: list[RowError]) -> Resource | None:
    text = fold(row.get("address"))
    raw = fold(row.get("address_code"))
    division = "".join(raw.split())
    address: Resource = {"use": "home"}
    if text:
        address["text"] = text
    if division:
        if len(division) == 6 and is_digits(division) and division[:2] in PROVINCE_PREFIXES:
            address["extension"] = [{"url": EXT_DIVISION, "valueCoding": {
                "system": CS_DIVISION, "code": division}}]
        else:
            errors.append(RowError("address_code", raw, "gbt-2260",
                                   "现住址行政区划代码 must be a 6-digit GB/T 2260 code starting "
                                   "with a province code (11-15, 21-23, 31-37, 41-46, 50-54, "
                                   "61-65, 71, 81-83), e.g. 440106; left out", "warning"))
    return address if len(address) > 1 else None


def _relationship(raw: str, errors: list[RowError]) -> Resource:
    table = codes(CS_RELATION)
    by_name = {name: code for code, name in table.items()} | _RELATION_TEXT
    code = by_name.get(raw, raw)
    if code not in table:
        errors.append(RowError("contact_relation", raw, "gbt-4761",
                               "联系人关系 must be a GB/T 4761 one-digit code (0 本人, 1 配偶, "
                               "2 子, 3 女, 4 孙子女, 5 父母, 6 祖父母, 7 兄弟姐妹, 8 其他) or "
                               "the word; kept as text only", "warning"))
        return {"text": raw}
    relation = coding(CS_RELATION, code)
    # 8 其他 has no RoleCode: the GB/T 4761 coding alone.
    role = translate(RELATION_MAP, CS_RELATION, code)
    return {"coding": [relation, role] if role else [relation],
            "text": relation["display"] if raw == code else raw}


def _contact(row: Mapping[str, Any], errors: list[RowError]) -> Resource | None:
    """联系人 → Patient.contact: name, relation, phones and address as the row gives them."""
    contact: Resource = {}
    relation = fold(row.get("contact_relation"))
    if relation:
        contact["relationship"] = [_relationship(relation, errors)]
    name = fold(row.get("contact_name"))
    if name:
        contact["name"] = {"text": name}
    telecoms = _telecoms(row, errors, "contact_phone")
    if telecoms:
        contact["telecom"] = telecoms
    address = fold(row.get("contact_address"))
    if address:
        contact["address"] = {"text": address}
    if contact and not {"name", "telecom", "address"} & contact.keys():
        # R4 pat-1: a contact is a name, a phone or an address; a relation alone is none.
        errors.append(RowError("contact_relation", relation, "contact-details",
                               "联系人关系 was given without 联系人姓名, 电话 or 地址 (a usable "
                               "phone); the contact was left out", "warning"))
        return None
    return contact or None


def _human_name(name: str, ethnicity: Resource | None) -> Resource:
    """name.text as written, family/given only where the naming convention is known: Han
    names (复姓 kept whole), dotted transliterations such as Uyghur 'given·father' (the last
    part is the family name, as app.samples.hospital writes them), Tibetan names (no family
    name). Anything else, such as a name in Latin letters, keeps the text alone."""
    human: Resource = {"use": "official", "text": name}
    parts = [p for p in _NAME_DOTS.split(name) if p]
    if len(parts) > 1 and all(has_han(p) for p in parts):
        human["family"], human["given"] = parts[-1], parts[:-1]
    elif ethnicity and ethnicity["valueCodeableConcept"]["coding"][0]["code"] == "04":
        human["given"] = [name]
    elif _ALL_HAN.fullmatch("".join(name.split())):
        family, given = split_chinese_name(name)
        human["family"] = family
        if given:
            human["given"] = [given]
    return human


def map_patient(row: Mapping[str, Any], hospital: Hospital) -> tuple[list[Resource],
                                                                      list[RowError]]:
    """One 患者基本信息 row → ([Patient], problems), or ([], problems) if the row is rejected.

    Rejected only when 院内患者ID or 姓名 is missing; a bad optional value is left out and
    reported as a warning. Never raises on any row content.
    """
    errors: list[RowError] = []
    patient_id = fold(row.get("patient_id"))
    name = fold(row.get("name"))
    if not patient_id:
        errors.append(RowError("patient_id", "", "required",
                               "院内患者ID is required: it keys the Patient so that re-imports "
                               "update it"))
    if not name:
        errors.append(RowError("name", "", "required", "姓名 is required"))
    if errors:
        return [], errors

    patient: Resource = {"resourceType": "Patient",
                         "id": patient_resource_id(hospital, patient_id),
                         "meta": {"profile": [CN_PATIENT]}}
    gender = _gender(row, errors)
    birth: str | None = None
    if fold(row.get("birth_date")):
        try:
            birth = parse_date(row.get("birth_date"))
        except ValueRejected as exc:
            errors.append(exc.to_row_error("birth_date", fold(row.get("birth_date")), "warning"))
    ethnicity = _ethnicity(row, errors)
    extensions = [e for e in (ethnicity, _occupation(row, errors)) if e]
    if extensions:
        patient["extension"] = extensions

    identifiers: list[Resource] = []
    id_card = _id_identifier(row, errors, gender[2] if gender else None, birth)
    if id_card:
        identifiers.append(id_card)
    mrn = fold(row.get("medical_record_no"))
    if mrn:
        identifiers.append({
            "use": "usual",
            "type": {"coding": [_coding(HL7_TERM + "v2-0203", "MR", "Medical record number")],
                     "text": "病案号"},
            "system": OID_MRN, "value": mrn})
    health_card = _health_card(row, errors)
    if health_card:
        identifiers.append(health_card)
    identifiers.append({"use": "secondary", "type": {
        "coding": [_coding(HL7_TERM + "v2-0203", "PI", "Patient internal identifier")],
        "text": "院内患者ID"},
                        "system": hospital.patient_id_system, "value": patient_id})
    patient["identifier"] = identifiers

    patient["name"] = [_human_name(name, ethnicity)]

    telecoms = _telecoms(row, errors)
    if telecoms:
        patient["telecom"] = telecoms
    if gender:
        code, display, fhir = gender
        patient["gender"] = fhir
        patient["_gender"] = {"extension": [{"url": EXT_SEX,
                                             "valueCoding": _coding(CS_SEX, code, display)}]}
    else:
        patient["gender"] = "unknown"
    if birth:
        patient["birthDate"] = birth
    address = _address(row, errors)
    if address:
        patient["address"] = [address]
    marital = _marital(row, errors)
    if marital:
        patient["maritalStatus"] = marital
    contact = _contact(row, errors)
    if contact:
        patient["contact"] = [contact]
    return [patient], errors
