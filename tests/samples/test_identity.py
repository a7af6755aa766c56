"""居民身份证号 (GB 11643-1999): check characters, parsing, legacy upgrade, error messages."""

from __future__ import annotations

from datetime import date

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.samples.identity import (
    PROVINCE_PREFIXES,
    check_digit,
    is_valid_id,
    make_id,
    parse_id,
    upgrade_15_to_18,
)

# Examples published with the standard and in 公安部 material.
PUBLISHED = ("11010519491231002X", "440524188001010014")


@pytest.mark.parametrize("number", PUBLISHED)
def test_published_examples_are_valid_and_their_check_character_recomputes(number: str) -> None:
    assert check_digit(number[:17]) == number[17]
    assert is_valid_id(number)


def test_published_examples_parse_to_region_birth_and_sex() -> None:
    assert parse_id("11010519491231002X") == ("110105", date(1949, 12, 31), "female")
    assert parse_id("440524188001010014") == ("440524", date(1880, 1, 1), "male")


def test_check_digit_covers_every_remainder_including_x_and_zero() -> None:
    # S mod 11 runs through all 11 values as the last body digit changes by one (weight 2).
    seen = {check_digit(f"1101051990010100{d}") for d in range(10)}
    seen |= {check_digit(f"1101051990010101{d}") for d in range(10)}
    assert seen == set("10X98765432")


@pytest.mark.parametrize("number", [
    "11010519491231002Y",  # check character not a digit or X
    "110105194912310021",  # wrong check digit
    "11010519490231002X",  # 31 February is not a date
    "99010519491231002X",  # 99 is no province
    "1101051949123100",  # too short
    "１1010519491231002X",  # full-width digit from an IME
    "",
])
def test_malformed_numbers_are_not_valid(number: str) -> None:
    assert not is_valid_id(number)


def test_lower_case_x_is_accepted_because_hospital_systems_store_it_that_way() -> None:
    assert is_valid_id("11010519491231002x")
    assert parse_id("11010519491231002x").sex == "female"


def test_upgrading_a_15_digit_number_inserts_19_and_appends_the_check_character() -> None:
    assert upgrade_15_to_18("110105491231002") == "11010519491231002X"
    assert parse_id("110105491231002") == parse_id("11010519491231002X")


@pytest.mark.parametrize("old", ["11010549123100", "11010549023100a", "110105490231002"])
def test_upgrade_rejects_what_is_not_a_legacy_number(old: str) -> None:
    with pytest.raises(ValueError, match="居民身份证号"):
        upgrade_15_to_18(old)


@pytest.mark.parametrize(("number", "rule"), [
    ("110105194912310021", "check character"),
    ("11010519490231002X", "birth date"),
    ("99010519491231002X", "province"),
    ("1101051949123A002X", "character 14 must be a digit"),
    ("1101051949", "18 characters"),
])
def test_errors_name_the_rule_and_never_echo_the_number(number: str, rule: str) -> None:
    with pytest.raises(ValueError, match=rule) as caught:
        parse_id(number)
    assert number not in str(caught.value)
    assert number[:14] not in str(caught.value)


def test_check_digit_rejects_anything_but_17_ascii_digits() -> None:
    for bad in ("1101051949123100", "11010519491231002X", "1101051949123100a"):
        with pytest.raises(ValueError, match="17 ASCII digits"):
            check_digit(bad)


def test_make_id_rejects_bad_region_sequence_and_year() -> None:
    with pytest.raises(ValueError, match="6 ASCII digits"):
        make_id("11010", date(1990, 1, 1), 1)
    with pytest.raises(ValueError, match="province"):
        make_id("990105", date(1990, 1, 1), 1)
    with pytest.raises(ValueError, match="0-999"):
        make_id("110105", date(1990, 1, 1), 1000)
    with pytest.raises(ValueError, match="4-digit"):
        make_id("110105", date(999, 1, 1), 1)


_REGIONS = ("110105", "130602", "310104", "440305", "540102", "650102", "820000")


@given(region=st.sampled_from(_REGIONS),
       birth=st.dates(min_value=date(1900, 1, 1), max_value=date(2026, 12, 31)),
       sequence=st.integers(min_value=0, max_value=999))
def test_made_numbers_are_valid_and_parse_back_with_sex_from_sequence_parity(
        region: str, birth: date, sequence: int) -> None:
    number = make_id(region, birth, sequence)
    assert len(number) == 18
    assert is_valid_id(number)
    assert parse_id(number) == (region, birth, "male" if sequence % 2 else "female")


@given(region=st.sampled_from(_REGIONS),
       birth=st.dates(min_value=date(1900, 1, 1), max_value=date(1999, 12, 31)),
       sequence=st.integers(min_value=0, max_value=999),
       position=st.integers(min_value=0, max_value=16),
       delta=st.integers(min_value=1, max_value=9))
def test_any_single_mistyped_digit_is_caught(region: str, birth: date, sequence: int,
                                             position: int, delta: int) -> None:
    number = make_id(region, birth, sequence)
    digit = (int(number[position]) + delta) % 10
    typo = number[:position] + str(digit) + number[position + 1:]
    assert not is_valid_id(typo)


def test_province_prefixes_cover_the_mainland_and_hong_kong_macau_taiwan() -> None:
    assert {"11", "44", "54", "65", "71", "81", "82", "83"} <= PROVINCE_PREFIXES
