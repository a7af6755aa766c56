"""Single data elements of Chinese EMR exports → FHIR R4 values (app.cnemr.values)."""

from __future__ import annotations

from datetime import date

import pytest

from app.cnemr.errors import ValueRejected
from app.cnemr.values import (
    INTERPRETATION,
    UCUM,
    id_mismatches,
    mask_id,
    normalize_id_number,
    parse_amount,
    parse_date,
    parse_datetime,
    parse_flag,
    parse_instant,
    parse_lab_result,
    parse_phone,
    parse_reference_range,
    ucum_code,
)
from app.samples.identity import check_digit, make_id


def rejected(call: object, *args: object) -> ValueRejected:
    assert callable(call)
    with pytest.raises(ValueRejected) as info:
        call(*args)
    return info.value


# -- dates -------------------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["20261120", "2026-11-20", "2026/11/20", "2026.11.20",
                                  "2026年11月20日",
                                  "２０２６１１２０", " 2026-11-20 "])
def test_every_common_date_form_gives_the_same_fhir_date(text: str) -> None:
    assert parse_date(text) == "2026-11-20"


def test_single_digit_month_and_day_from_spreadsheets_are_accepted() -> None:
    assert parse_date("2026/1/5") == "2026-01-05"


@pytest.mark.parametrize(("text", "expected"), [
    ("2026/11/20 08:30", "2026-11-20T08:30:00+08:00"),
    ("2026-11-20 08:30:15", "2026-11-20T08:30:15+08:00"),
    ("20261120083015", "2026-11-20T08:30:15+08:00"),
    ("202611200830", "2026-11-20T08:30:00+08:00"),
    ("20261120T083015", "2026-11-20T08:30:15+08:00"),  # WS 363 DT15
    ("2026-11-20T8:05", "2026-11-20T08:05:00+08:00"),
    ("2026-11-20 08:30:15.000", "2026-11-20T08:30:15+08:00"),
])
def test_a_time_gets_the_hospital_zone_made_explicit(text: str, expected: str) -> None:
    assert parse_datetime(text) == expected


def test_a_date_without_time_stays_a_date_because_fhir_forbids_a_zone_without_a_time() -> None:
    assert parse_datetime("20261120") == "2026-11-20"


def test_a_zone_written_by_the_source_is_kept() -> None:
    assert parse_datetime("2026-11-20T08:30:00+08:00", "+06:00") == "2026-11-20T08:30:00+08:00"
    assert parse_datetime("2026-11-20T00:30:00Z") == "2026-11-20T00:30:00Z"
    assert parse_datetime("2026-11-20 08:30+0800") == "2026-11-20T08:30:00+08:00"
    assert rejected(parse_datetime, "2026-11-20 08:30+1500").rule == "time-zone"


def test_the_hospital_zone_is_a_parameter() -> None:
    assert parse_datetime("2026-11-20 08:30", "+06:00") == "2026-11-20T08:30:00+06:00"


def test_a_date_dumped_with_midnight_time_is_still_a_birth_date() -> None:
    assert parse_date("1996-02-06 00:00:00") == "1996-02-06"


@pytest.mark.parametrize(("text", "rule"), [
    ("2026-02-30", "date-calendar"), ("20261320", "date-calendar"),
    ("2026-11-20 25:00", "time-range"), ("20/11/2026", "date-format"),
    ("十一月", "date-format"), ("", "date-required"), ("17990101", "date-range"),
])
def test_impossible_or_unrecognised_dates_are_rejected_with_the_rule(text: str, rule: str) -> None:
    problem = rejected(parse_datetime, text)
    assert problem.rule == rule
    assert problem.message


def test_an_instant_needs_a_time_of_day() -> None:
    assert parse_instant("2026/11/20 09:30") == "2026-11-20T09:30:00+08:00"
    assert rejected(parse_instant, "2026-11-20").rule == "instant-needs-time"


# -- amounts -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "value"), [
    ("12.50", 12.5), ("1,234.56", 1234.56), ("¥8.00", 8.0), ("￥25", 25), ("300元", 300),
    ("-12.50", -12.5), ("１２.５", 12.5),
])
def test_amounts_in_yuan_become_cny_money(text: str, value: float) -> None:
    assert parse_amount(text) == {"value": value, "currency": "CNY"}


@pytest.mark.parametrize(("text", "rule"), [
    ("12.345", "amount-two-decimals"), ("十二元", "amount-format"), ("", "amount-required"),
])
def test_amounts_that_are_not_yuan_with_two_decimals_are_rejected(text: str, rule: str) -> None:
    assert rejected(parse_amount, text).rule == rule


# -- 居民身份证号 ----------------------------------------------------------------------------

def test_valid_numbers_from_several_provinces_are_accepted_and_parsed() -> None:
    for region, birth, seq, sex in (("110105", date(1949, 12, 31), 2, "female"),
                                    ("440106", date(1996, 2, 6), 123, "male"),
                                    ("650102", date(1978, 7, 15), 88, "female"),
                                    ("510107", date(2001, 3, 9), 457, "male")):
        number = make_id(region, birth, seq)
        parsed = normalize_id_number(number)
        assert parsed.number == number
        assert (parsed.info.region, parsed.info.birth, parsed.info.sex) == (region, birth, sex)
        assert not parsed.upgraded


def test_full_width_digits_spaces_and_lower_case_x_are_normalised() -> None:
    number = "11010519491231002X"
    full_width = "".join(chr(ord(c) + 0xFEE0) for c in number[:17]) + "ｘ"
    assert normalize_id_number(full_width).number == number
    assert normalize_id_number("110105 19491231 002x").number == number


def test_a_legacy_15_digit_number_is_upgraded_to_18_characters() -> None:
    parsed = normalize_id_number("130503670401001")
    assert parsed.upgraded
    assert parsed.number == "13050319670401001" + check_digit("13050319670401001")
    assert parsed.info.birth == date(1967, 4, 1)
    assert parsed.info.sex == "male"


def test_a_wrong_check_digit_is_rejected_without_echoing_the_number() -> None:
    good = make_id("320106", date(1985, 5, 20), 36)
    wrong = good[:17] + ("0" if good[17] != "0" else "1")
    problem = rejected(normalize_id_number, wrong)
    assert problem.rule == "gb11643-check-digit"
    assert wrong not in problem.message and wrong[6:14] not in problem.message


@pytest.mark.parametrize(("text", "rule"), [
    ("1101051949123100", "gb11643-length"), ("11010519491231A02X", "gb11643-format"),
    ("99010519491231002X", "gb11643-region"),
    ("110105194913310021", "gb11643-birth-date"), ("110105194913310020", "gb11643-birth-date"),
    ("616354340431000", "gb11643-birth-date"),
])
def test_malformed_numbers_are_rejected_with_the_rule_they_break(text: str, rule: str) -> None:
    assert rejected(normalize_id_number, text).rule == rule


def test_a_sex_or_birth_mismatch_is_reported_not_corrected() -> None:
    info = normalize_id_number(make_id("440106", date(1996, 2, 6), 124)).info  # female
    problems = dict(id_mismatches(info, "male", "1996-02-07"))
    assert problems["gender_code"].rule == "id-sex-mismatch"
    assert problems["birth_date"].rule == "id-birth-mismatch"
    assert id_mismatches(info, "female", "1996-02-06") == []
    assert id_mismatches(info, "unknown", None) == []


def test_masked_numbers_keep_region_and_last_four_but_hide_the_birth_date() -> None:
    assert mask_id("11010519491231002X") == "110105********002X"
    assert "19491231" not in mask_id("11010519491231002X")


# -- phones ------------------------------------------------------------------------------------

def test_full_width_mobile_numbers_are_folded_and_marked_mobile() -> None:
    assert parse_phone("１３８００１３８０００") == ("13800138000", "mobile")
    assert parse_phone("138-0013-8000") == ("13800138000", "mobile")


def test_landlines_with_extensions_are_kept_as_written() -> None:
    assert parse_phone("010-69156114转8001") == ("010-69156114转8001", None)


def test_text_that_is_not_a_phone_number_is_rejected() -> None:
    assert rejected(parse_phone, "无").rule == "phone-format"


# -- units -------------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "code"), [
    ("10^9/L", "10*9/L"), ("×10^9/L", "10*9/L"), ("x10^12/L", "10*12/L"), ("10E9/L", "10*9/L"),
    ("10*12/L", "10*12/L"), ("g/L", "g/L"), ("U/L", "U/L"), ("μmol/L", "umol/L"),
    ("µmol/L", "umol/L"), ("umol/l", "umol/L"), ("mmol/L", "mmol/L"), ("%", "%"), ("fL", "fL"),
    ("pg", "pg"), ("ｍｍｏｌ／Ｌ", "mmol/L"),
])
def test_chinese_laboratory_units_map_to_ucum(text: str, code: str) -> None:
    assert ucum_code(text) == code


def test_unknown_units_have_no_ucum_code() -> None:
    assert ucum_code("滴度") is None
    assert ucum_code("") is None


# -- lab results -------------------------------------------------------------------------------

def test_a_number_becomes_a_ucum_quantity_keeping_the_printed_unit() -> None:
    value = parse_lab_result("6.52", "10^9/L")
    assert value.element == {"valueQuantity": {"value": 6.52, "unit": "10^9/L", "system": UCUM,
                                                "code": "10*9/L"}}


def test_whole_numbers_stay_integers() -> None:
    assert parse_lab_result("138", "g/L").element["valueQuantity"]["value"] == 138


@pytest.mark.parametrize(("text", "comparator", "value"), [
    ("<0.5", "<", 0.5), (">1000", ">", 1000), ("≥5", ">=", 5), ("≤0.01", "<=", 0.01),
    ("＜0.5", "<", 0.5), ("> 1000", ">", 1000),
])
def test_comparator_results_keep_their_comparator(text: str, comparator: str,
                                                  value: float) -> None:
    q = parse_lab_result(text, "mg/L").element["valueQuantity"]
    assert (q["comparator"], q["value"], q["code"]) == (comparator, value, "mg/L")


@pytest.mark.parametrize("text", ["阴性", "阳性", "弱阳性", "+", "-", "++", "阴性(-)", "±", "黄色"])
def test_qualitative_results_stay_text_and_are_never_forced_into_numbers(text: str) -> None:
    assert parse_lab_result(text, "").element == {"valueString": text}


def test_an_arrow_printed_after_the_number_becomes_the_flag() -> None:
    value = parse_lab_result("12.3↑", "10^9/L")
    assert value.element["valueQuantity"]["value"] == 12.3
    assert value.printed_flag == "↑"


def test_a_blank_result_is_rejected() -> None:
    assert rejected(parse_lab_result, "  ", "g/L").rule == "result-required"


# -- reference ranges --------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["3.5-9.5", "3.5~9.5", "3.5～9.5", "3.5 - 9.5", "3.5--9.5",
                                  "3.5—9.5"])
def test_numeric_ranges_give_low_and_high_in_ucum(text: str) -> None:
    rr = parse_reference_range(text, "10^9/L")
    assert rr["low"] == {"value": 3.5, "unit": "10^9/L", "system": UCUM, "code": "10*9/L"}
    assert rr["high"]["value"] == 9.5
    assert rr["text"]


def test_negative_bounds_are_read_as_numbers_not_separators() -> None:
    rr = parse_reference_range("-3~3", "mmol/L")
    assert (rr["low"]["value"], rr["high"]["value"]) == (-3, 3)


def test_one_sided_ranges_keep_the_printed_text() -> None:
    assert parse_reference_range("<5", "mg/L") == {
        "high": {"value": 5, "unit": "mg/L", "system": UCUM, "code": "mg/L"}, "text": "<5"}
    assert parse_reference_range("≥60", "mL/min")["low"]["value"] == 60


def test_qualitative_ranges_are_text_only() -> None:
    assert parse_reference_range("阴性", "") == {"text": "阴性"}


def test_a_range_with_low_above_high_is_rejected() -> None:
    assert rejected(parse_reference_range, "9.5-3.5", "g/L").rule == "range-order"


# -- abnormal flags ----------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "code"), [
    ("H", "H"), ("h", "H"), ("高", "H"), ("↑", "H"), ("L", "L"), ("低", "L"), ("↓", "L"),
    ("N", "N"), ("正常", "N"), ("HH", "HH"), ("↓↓", "LL"), ("阳性", "POS"),
])
def test_lis_flags_map_to_v3_observation_interpretation(text: str, code: str) -> None:
    flag = parse_flag(text)
    assert flag is not None
    assert flag["coding"][0]["system"] == INTERPRETATION
    assert flag["coding"][0]["code"] == code
    assert flag["text"] == text


def test_a_blank_flag_is_no_interpretation_and_an_unknown_one_is_rejected() -> None:
    assert parse_flag("") is None
    assert rejected(parse_flag, "Q").rule == "flag-unknown"
