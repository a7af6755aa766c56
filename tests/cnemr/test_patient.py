"""患者基本信息 rows → FHIR R4 Patient (app.cnemr.patient)."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.cnemr import patient as patient_module
from app.cnemr.context import Hospital, patient_resource_id
from app.cnemr.errors import RowError
from app.cnemr.patient import map_patient
from app.cnemr.terminology import codes
from app.config import Settings
from app.definitions.profiles import load_profile_resources
from app.definitions.registry import load_registry
from app.fhir.profile_validation import ProfileValidator
from app.fhir.validation import validate_resource
from app.samples.hospital import EXT_ETHNICITY, EXT_SEX
from app.samples.identity import check_digit, make_id

HOSPITAL = Hospital("2.16.156.10011.1.5.110000101")
ID_CARD = "urn:oid:2.16.156.10011.1.3"
MRN = "urn:oid:2.16.156.10011.1.13"
HEALTH_CARD = "urn:oid:2.16.156.10011.1.19"
GB_RELATION = "urn:oid:2.16.156.10011.2.3.3.8"
GB_OCCUPATION = "urn:oid:2.16.156.10011.2.3.3.13"
GB_DIVISION = "urn:oid:2.16.156.10011.2.3.3.2"
ROLE_CODE = "http://terminology.hl7.org/CodeSystem/v3-RoleCode"
EXT_OCCUPATION = "https://fhir.yilian.cn/StructureDefinition/occupation"
EXT_DIVISION = "https://fhir.yilian.cn/StructureDefinition/address-division-code"
CN_PATIENT = "https://fhir.yilian.cn/StructureDefinition/cn-patient"
REGISTRY = load_registry()
PROFILES = ProfileValidator(load_profile_resources(Settings().profiles_dir), REGISTRY)

OUYANG_ID = make_id("440106", date(1996, 2, 6), 124)  # 广州天河, female
SHAN_ID = make_id("140105", date(1958, 9, 3), 317)  # 太原小店, male
# 欧阳娜娜's 居民健康卡, 职业 and 联系人 (her father), as a 首页 records them.
CONTACT = {"health_card_no": "H440106001234567", "occupation_code": "31",
           "address_code": "440106", "contact_name": "欧阳建华", "contact_relation": "5",
           "contact_phone": "13902201234", "contact_address": "广东省广州市天河区天河北路233号"}


def row(**overrides: Any) -> dict[str, Any]:
    base = {
        "patient_id": "0001023456", "name": "欧阳娜娜", "gender_code": "2",
        "birth_date": "19960206", "id_type_code": "01", "id_number": OUYANG_ID,
        "ethnicity_code": "01", "marital_status_code": "10", "phone": "13800138000",
        "address": "广东省广州市天河区天河路385号", "medical_record_no": "BA00102345",
    }
    base.update(overrides)
    return base


def mapped(r: dict[str, Any]) -> tuple[dict[str, Any], list[RowError]]:
    resources, errors = map_patient(r, HOSPITAL)
    assert len(resources) == 1
    patient = resources[0]
    assert patient["meta"]["profile"] == [CN_PATIENT]
    issues = [i for i in validate_resource(patient, REGISTRY) + PROFILES.declared_issues(patient)
              if i.severity in ("error", "fatal")]
    assert issues == [], issues
    return patient, errors


def identifier(patient: dict[str, Any], system: str) -> str | None:
    return next((i["value"] for i in patient["identifier"] if i.get("system") == system), None)


def test_a_complete_row_maps_every_data_element_and_validates() -> None:
    patient, errors = mapped(row())
    assert errors == []
    assert patient["id"] == patient_resource_id(HOSPITAL, "0001023456")
    assert identifier(patient, ID_CARD) == OUYANG_ID
    assert identifier(patient, MRN) == "BA00102345"
    assert identifier(patient, HOSPITAL.patient_id_system) == "0001023456"
    assert HOSPITAL.patient_id_system == "urn:oid:2.16.156.10011.1.5.110000101.patient"
    assert patient["gender"] == "female"
    assert patient["_gender"]["extension"][0] == {"url": EXT_SEX, "valueCoding": {
        "system": "urn:oid:2.16.156.10011.2.3.3.4", "code": "2", "display": "女性"}}
    assert patient["birthDate"] == "1996-02-06"
    assert patient["extension"][0]["url"] == EXT_ETHNICITY
    assert patient["extension"][0]["valueCodeableConcept"]["coding"][0] == {
        "system": "urn:oid:2.16.156.10011.2.3.3.3", "code": "01", "display": "汉族"}
    assert [c["code"] for c in patient["maritalStatus"]["coding"]] == ["10", "S"]
    assert patient["telecom"] == [{"system": "phone", "value": "13800138000", "use": "mobile"}]
    assert patient["address"] == [{"use": "home", "text": "广东省广州市天河区天河路385号"}]


def test_the_health_card_occupation_division_and_contact_elements_map_and_validate() -> None:
    patient, errors = mapped(row(**CONTACT))
    assert errors == []
    card = next(i for i in patient["identifier"] if i["system"] == HEALTH_CARD)
    assert card["value"] == "H440106001234567"
    assert card["type"]["coding"][0]["code"] == "HC"
    assert identifier(patient, ID_CARD) == OUYANG_ID  # beside, not instead of, the 身份证号
    assert patient["extension"][1] == {"url": EXT_OCCUPATION, "valueCodeableConcept": {
        "coding": [{"system": GB_OCCUPATION, "code": "31", "display": "学生"}], "text": "学生"}}
    assert patient["address"] == [{
        "use": "home", "text": "广东省广州市天河区天河路385号",
        "extension": [{"url": EXT_DIVISION,
                       "valueCoding": {"system": GB_DIVISION, "code": "440106"}}]}]
    assert patient["contact"] == [{
        "relationship": [{"coding": [
            {"system": GB_RELATION, "code": "5", "display": "父母"},
            {"system": ROLE_CODE, "code": "PRN", "display": "parent"}], "text": "父母"}],
        "name": {"text": "欧阳建华"},
        "telecom": [{"system": "phone", "value": "13902201234", "use": "mobile"}],
        "address": {"text": "广东省广州市天河区天河北路233号"}}]


@pytest.mark.parametrize(("relation", "gb", "role"), [
    ("0", "0", "ONESELF"), ("1", "1", "SPS"), ("2", "2", "SONC"), ("3", "3", "DAUC"),
    ("4", "4", "GRNDCHILD"), ("5", "5", "PRN"), ("6", "6", "GRPRN"), ("7", "7", "SIB"),
    ("8", "8", None), ("１", "1", "SPS"),
])
def test_contact_relations_are_gbt_4761_codes_translated_to_v3_role_codes(
        relation: str, gb: str, role: str | None) -> None:
    patient, errors = mapped(row(contact_name="欧阳建华", contact_relation=relation))
    assert errors == []
    [relationship] = patient["contact"][0]["relationship"]
    assert [(c["system"], c["code"]) for c in relationship["coding"]] == [
        (GB_RELATION, gb), *([(ROLE_CODE, role)] if role else [])]


@pytest.mark.parametrize(("word", "gb", "role"), [
    ("配偶", "1", "SPS"), ("妻子", "1", "SPS"), ("女儿", "3", "DAUC"), ("父亲", "5", "PRN"),
    ("外婆", "6", "GRPRN"), ("兄、弟、姐、妹", "7", "SIB"), ("其他", "8", None),
])
def test_a_relation_written_as_a_word_gets_its_code_and_keeps_the_word(
        word: str, gb: str, role: str | None) -> None:
    patient, errors = mapped(row(contact_name="欧阳建华", contact_relation=word))
    assert errors == []
    [relationship] = patient["contact"][0]["relationship"]
    assert [c["code"] for c in relationship["coding"]] == [gb, *([role] if role else [])]
    assert relationship["text"] == word


@pytest.mark.parametrize("relation", ["女婿", "同事", "11", "9"])
def test_a_relation_outside_gbt_4761_is_reported_and_kept_as_text_only(relation: str) -> None:
    patient, errors = mapped(row(contact_name="李卫东", contact_phone="13501234567",
                                 contact_relation=relation))
    assert patient["contact"][0]["relationship"] == [{"text": relation}]
    assert patient["contact"][0]["name"] == {"text": "李卫东"}
    assert [(e.field, e.value, e.rule, e.severity) for e in errors] == [
        ("contact_relation", relation, "gbt-4761", "warning")]


def test_a_relation_without_a_name_phone_or_address_leaves_the_contact_out() -> None:
    patient, errors = mapped(row(contact_relation="1", contact_phone="不详"))
    assert "contact" not in patient
    assert [(e.field, e.rule) for e in errors] == [("contact_phone", "phone-format"),
                                                   ("contact_relation", "contact-details")]
    assert all(e.severity == "warning" for e in errors)


def test_a_contact_with_only_a_phone_is_kept_and_two_numbers_make_two_telecoms() -> None:
    patient, errors = mapped(row(contact_phone="13902201234/020-87654321"))
    assert errors == []
    assert patient["contact"] == [{"telecom": [
        {"system": "phone", "value": "13902201234", "use": "mobile"},
        {"system": "phone", "value": "020-87654321"}]}]


def test_the_health_card_number_is_folded_and_a_malformed_one_reported_masked() -> None:
    patient, errors = mapped(row(health_card_no="Ｈ4401 0600 1234 567"))
    assert errors == []
    assert identifier(patient, HEALTH_CARD) == "H440106001234567"
    bad = "H4401060012#4567"
    patient, errors = mapped(row(health_card_no=bad))
    assert identifier(patient, HEALTH_CARD) is None
    [error] = errors
    assert (error.field, error.rule, error.severity) == ("health_card_no", "health-card-format",
                                                         "warning")
    assert bad not in error.value and error.value.endswith("4567")


def test_a_health_card_number_that_is_the_id_number_never_appears_in_a_report() -> None:
    too_long = OUYANG_ID + "-01"
    _, errors = mapped(row(health_card_no=too_long))
    [error] = errors
    assert OUYANG_ID not in error.value and OUYANG_ID not in error.message


def test_a_division_code_without_an_address_text_still_gives_a_home_address() -> None:
    patient, errors = mapped(row(address="", address_code=" 110105 "))
    assert errors == []
    assert patient["address"] == [{"use": "home", "extension": [
        {"url": EXT_DIVISION, "valueCoding": {"system": GB_DIVISION, "code": "110105"}}]}]


@pytest.mark.parametrize("code", ["4401", "000000", "991234", "44010A", "4401060", "广州市天河区"])
def test_a_division_code_that_is_not_gbt_2260_is_left_out_and_the_address_kept(code: str) -> None:
    patient, errors = mapped(row(address_code=code))
    assert patient["address"] == [{"use": "home", "text": "广东省广州市天河区天河路385号"}]
    assert [(e.field, e.value, e.rule, e.severity) for e in errors] == [
        ("address_code", code, "gbt-2260", "warning")]


@pytest.mark.parametrize(("written", "code"), [
    ("11", "11"), ("80", "80"), ("农民", "27"), ("退(离)休人员", "80"), ("退（离）休人员", "80"),
    ("退休", "80"), ("个体户", "54"), ("９０", "90"),
])
def test_occupation_codes_and_names_follow_gbt_2261_4(written: str, code: str) -> None:
    patient, errors = mapped(row(occupation_code=written, ethnicity_code=""))
    assert errors == []
    assert patient["extension"][0]["valueCodeableConcept"]["coding"] == [
        {"system": GB_OCCUPATION, "code": code, "display": {
            "11": "国家公务员", "27": "农民", "54": "个体经营者", "80": "退(离)休人员",
            "90": "其他"}[code]}]


@pytest.mark.parametrize("written", ["12", "教师", "1"])
def test_an_occupation_outside_gbt_2261_4_is_left_out_and_reported(written: str) -> None:
    patient, errors = mapped(row(occupation_code=written))
    assert [e["url"] for e in patient["extension"]] == [EXT_ETHNICITY]
    assert [(e.field, e.value, e.rule, e.severity) for e in errors] == [
        ("occupation_code", written, "gbt-2261.4", "warning")]


def test_the_new_extensions_conform_to_their_structure_definitions() -> None:
    patient, _ = mapped(row(**CONTACT))
    division = patient["address"][0]["extension"][0]
    occupation = patient["extension"][1]
    for ext in (division, occupation):
        assert PROFILES.validate({"resourceType": "Extension", **ext}, ext["url"]) == []
    # and the definitions do check: a 4-digit code and a code outside GB/T 2261.4 fail
    short = {**division, "valueCoding": {"system": GB_DIVISION, "code": "4401"}}
    other = {**occupation, "valueCodeableConcept": {"coding": [
        {"system": GB_OCCUPATION, "code": "12"}]}}
    for ext, rule in ((short, "cn-adc-1"), (other, "gbt-2261-4-occupation")):
        issues = PROFILES.validate({"resourceType": "Extension", **ext}, ext["url"])
        assert any(rule in i.diagnostics for i in issues), issues


@pytest.mark.parametrize(("name", "family", "given"), [
    ("欧阳娜娜", "欧阳", ["娜娜"]), ("单雄信", "单", ["雄信"]), ("诸葛亮", "诸葛", ["亮"]),
    ("司马光", "司马", ["光"]), ("王芳", "王", ["芳"]),
])
def test_han_names_split_into_family_and_given_with_compound_surnames(
        name: str, family: str, given: list[str]) -> None:
    patient, _ = mapped(row(name=name))
    assert patient["name"] == [{"use": "official", "text": name, "family": family,
                                "given": given}]


def test_a_uyghur_dotted_name_takes_the_fathers_name_as_family() -> None:
    patient, _ = mapped(row(name="艾力·买买提", ethnicity_code="05"))
    assert patient["name"][0] == {"use": "official", "text": "艾力·买买提",
                                  "family": "买买提", "given": ["艾力"]}


def test_a_tibetan_name_has_no_family_name() -> None:
    patient, _ = mapped(row(name="扎西顿珠", ethnicity_code="04"))
    assert patient["name"][0] == {"use": "official", "text": "扎西顿珠", "given": ["扎西顿珠"]}


def test_a_name_in_latin_letters_keeps_only_its_text() -> None:
    patient, _ = mapped(row(name="SMITH JOHN", id_type_code="03", id_number="E12345678"))
    assert patient["name"][0] == {"use": "official", "text": "SMITH JOHN"}


def test_reimporting_the_same_patient_gives_the_same_id_and_other_hospitals_differ() -> None:
    first, _ = mapped(row())
    again, _ = mapped(row(phone="13900139000"))
    other = map_patient(row(), Hospital("2.16.156.10011.1.5.310000202"))[0][0]
    assert first["id"] == again["id"] != other["id"]


def test_full_width_digits_in_phone_and_id_number_are_folded() -> None:
    full_width_id = "".join(chr(ord(c) + 0xFEE0) for c in SHAN_ID)
    patient, errors = mapped(row(name="单雄信", gender_code="1", birth_date="1958-09-03",
                                 id_number=full_width_id, phone="１３８００１３８０００"))
    assert errors == []
    assert identifier(patient, ID_CARD) == SHAN_ID
    assert patient["telecom"][0]["value"] == "13800138000"


def test_a_legacy_15_digit_id_is_upgraded_and_the_upgrade_reported() -> None:
    patient, errors = mapped(row(name="单雄信", gender_code="1", birth_date="1967-04-01",
                                 id_number="130503670401001"))
    assert identifier(patient, ID_CARD) == "13050319670401001" + check_digit("13050319670401001")
    assert [(e.field, e.rule, e.severity) for e in errors] == [
        ("id_number", "gb11643-legacy-15", "warning")]


def test_a_wrong_check_digit_leaves_the_id_out_and_reports_it_masked() -> None:
    wrong = OUYANG_ID[:17] + ("0" if OUYANG_ID[17] != "0" else "1")
    patient, errors = mapped(row(id_number=wrong))
    assert identifier(patient, ID_CARD) is None
    assert identifier(patient, MRN) == "BA00102345"
    [error] = errors
    assert (error.field, error.rule, error.severity) == ("id_number", "gb11643-check-digit",
                                                         "warning")
    assert wrong not in error.value and wrong not in error.message
    assert error.value == "440106********" + wrong[-4:]


def test_a_sex_mismatch_with_the_id_is_reported_and_both_values_kept_as_given() -> None:
    patient, errors = mapped(row(gender_code="1"))  # the number says female
    assert patient["gender"] == "male"
    assert identifier(patient, ID_CARD) == OUYANG_ID
    [error] = errors
    assert (error.field, error.value, error.rule, error.severity) == (
        "gender_code", "1", "id-sex-mismatch", "warning")


def test_a_birth_date_mismatch_with_the_id_is_reported_without_leaking_the_number() -> None:
    patient, errors = mapped(row(birth_date="1996-06-02"))
    assert patient["birthDate"] == "1996-06-02"
    [error] = errors
    assert (error.field, error.rule) == ("birth_date", "id-birth-mismatch")
    assert OUYANG_ID not in error.value


def test_blank_optional_fields_are_simply_absent_and_a_blank_gender_is_unknown() -> None:
    r = {"patient_id": "0001023999", "name": "张伟", "gender_code": "", "birth_date": None,
         "id_number": "  ", "ethnicity_code": "", "marital_status_code": "", "phone": "",
         "address": "", "medical_record_no": ""}
    patient, errors = mapped(r)
    assert errors == []
    assert set(patient) == {"resourceType", "id", "meta", "identifier", "name", "gender"}
    # cn-patient requires a gender; a row that records none says it is unknown.
    assert patient["gender"] == "unknown"


def test_missing_patient_id_or_name_rejects_the_row() -> None:
    resources, errors = map_patient(row(patient_id=" ", name=""), HOSPITAL)
    assert resources == []
    assert {(e.field, e.rule, e.severity) for e in errors} == {
        ("patient_id", "required", "error"), ("name", "required", "error")}


def test_bad_optional_codes_are_left_out_and_each_reported() -> None:
    patient, errors = mapped(row(gender_code="3", ethnicity_code="60", marital_status_code="50",
                                 phone="不详", birth_date="1996-02-30"))
    assert {"_gender", "maritalStatus", "extension", "telecom", "birthDate"}.isdisjoint(patient)
    assert patient["gender"] == "unknown"
    assert {e.rule for e in errors} == {"gbt-2261.1", "gb-3304", "gbt-2261.2", "phone-format",
                                        "date-calendar"}
    assert all(e.severity == "warning" and e.message for e in errors)


def test_gender_codes_follow_gbt_2261_1() -> None:
    for code, fhir in (("0", "unknown"), ("1", "male"), ("2", "female"), ("9", "unknown"),
                       ("男", "male"), ("女", "female")):
        patient, _ = mapped(row(gender_code=code, id_number=""))
        assert patient["gender"] == fhir


def test_excel_stripped_ethnicity_and_homepage_marital_digits_are_understood() -> None:
    patient, _ = mapped(row(ethnicity_code="8", marital_status_code="2"))
    assert patient["extension"][0]["valueCodeableConcept"]["coding"][0]["display"] == "壮族"
    assert [c["code"] for c in patient["maritalStatus"]["coding"]] == ["20", "M"]


def test_other_marital_status_has_no_v3_translation() -> None:
    patient, _ = mapped(row(marital_status_code="90"))
    assert [c["code"] for c in patient["maritalStatus"]["coding"]] == ["90"]


def test_a_passport_number_is_kept_with_its_type_but_never_as_a_resident_id() -> None:
    patient, errors = mapped(row(id_type_code="03", id_number="E12345678"))
    assert errors == []
    assert identifier(patient, ID_CARD) is None
    passport = next(i for i in patient["identifier"] if i["type"].get("text") == "护照")
    assert passport["value"] == "E12345678"


def test_two_numbers_in_one_phone_cell_become_two_telecoms_and_a_bad_one_is_reported() -> None:
    patient, errors = mapped(row(phone="13800138000/010-69156114，待补"))
    assert patient["telecom"] == [
        {"system": "phone", "value": "13800138000", "use": "mobile"},
        {"system": "phone", "value": "010-69156114"}]
    assert [(e.field, e.value, e.rule) for e in errors] == [("phone", "待补", "phone-format")]


def test_a_han_name_typed_with_a_space_still_splits_and_keeps_its_text() -> None:
    patient, _ = mapped(row(name="欧阳 娜娜"))
    assert patient["name"][0] == {"use": "official", "text": "欧阳 娜娜", "family": "欧阳",
                                  "given": ["娜娜"]}


def test_the_his_patient_id_is_typed_as_a_patient_internal_identifier() -> None:
    patient, _ = mapped(row())
    his = next(i for i in patient["identifier"] if i["system"] == HOSPITAL.patient_id_system)
    assert his["type"]["coding"][0]["code"] == "PI"


CELL = st.one_of(st.none(), st.text(max_size=24), st.integers(), st.floats(allow_nan=True),
                 st.sampled_from(["", "  ", "１", "X", "19960230", "130503670401001",
                                  OUYANG_ID, "欧阳", "·", "--", "5", "440106", "退休"]))
FIELDS = ("patient_id", "name", "gender_code", "birth_date", "id_type_code", "id_number",
          "ethnicity_code", "marital_status_code", "phone", "address", "medical_record_no",
          "address_code", "health_card_no", "occupation_code", "contact_name",
          "contact_relation", "contact_phone", "contact_address")


@settings(max_examples=300, deadline=None)
@given(st.fixed_dictionaries({}, optional={f: CELL for f in FIELDS}))
def test_no_row_content_makes_the_mapper_raise_or_emit_invalid_fhir(r: dict[str, Any]) -> None:
    resources, errors = map_patient(r, HOSPITAL)
    for resource in resources:
        issues = validate_resource(resource, REGISTRY) + PROFILES.declared_issues(resource)
        assert [i for i in issues if i.severity in ("error", "fatal")] == []
    assert all(e.rule and e.message for e in errors)


def test_the_relation_and_occupation_words_resolve_to_codes_of_their_tables() -> None:
    # Source spellings stay in the mapper; what they resolve to must be a code, and every code
    # of both tables is accepted as written.
    assert set(patient_module._RELATION_TEXT.values()) <= set(codes(GB_RELATION))
    assert set(patient_module._OCCUPATION_TEXT.values()) <= set(codes(GB_OCCUPATION))
    for code, display in codes(GB_OCCUPATION).items():
        for written in (code, display):
            patient, errors = mapped(row(occupation_code=written, ethnicity_code=""))
            assert errors == []
            assert patient["extension"][0]["valueCodeableConcept"]["coding"][0]["code"] == code
