"""居民身份证号 (GB 11643-1999 公民身份号码): check character, validation, parsing, 15→18 upgrade.

An 18-character number is 6 digits of 行政区划 (GB/T 2260, the registration place at issue),
8 digits of birth date (YYYYMMDD), a 3-digit 顺序码 whose parity carries the sex (odd male,
even female) and a check character computed over the first 17 digits (ISO 7064 MOD 11-2).
Numbers issued before 1999 have 15 digits: a 2-digit year and no check character.

The number is personal data: error messages here never echo it, so a rejected number cannot leak
into logs or an OperationOutcome through the exception text.
"""

from __future__ import annotations

from datetime import date
from typing import NamedTuple

# GB 11643-1999 §7.2: weight i = 2^(17-i) mod 11 for positions 1..17.
WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
# Index is S mod 11, value the check character.
CHECK_CHARS = "10X98765432"

# GB/T 2260 province-level prefixes, plus 83 (台湾) which 港澳台居民居住证 numbers use. A prefix
# outside this set is a typo or a fabricated number, not a real registration place.
PROVINCE_PREFIXES = frozenset({
    "11", "12", "13", "14", "15",
    "21", "22", "23",
    "31", "32", "33", "34", "35", "36", "37",
    "41", "42", "43", "44", "45", "46",
    "50", "51", "52", "53", "54",
    "61", "62", "63", "64", "65",
    "71", "81", "82", "83",
})


class IdInfo(NamedTuple):
    """What a 居民身份证号 says about its holder."""

    region: str  # 6-digit GB/T 2260 code of the registration place
    birth: date
    sex: str  # FHIR AdministrativeGender: "male" | "female"


def check_digit(first17: str) -> str:
    """The check character ('0'-'9' or 'X') for the first 17 digits of a 居民身份证号."""
    if len(first17) != 17 or not first17.isascii() or not first17.isdigit():
        raise ValueError(
            f"居民身份证号 check character needs exactly 17 ASCII digits, got {len(first17)} "
            "characters" + ("" if first17.isascii() and first17.isdigit() else " (not all digits)")
        )
    total = sum(int(c) * w for c, w in zip(first17, WEIGHTS, strict=True))
    return CHECK_CHARS[total % 11]


def _birth(yyyymmdd: str) -> date:
    try:
        return date(int(yyyymmdd[:4]), int(yyyymmdd[4:6]), int(yyyymmdd[6:8]))
    except ValueError:
        raise ValueError(
            "居民身份证号 birth date (characters 7-14) is not a calendar date: expected YYYYMMDD"
        ) from None


def parse_id(number: str) -> IdInfo:
    """Region, birth date and sex from an 18-character number, or a legacy 15-digit one.

    Raises ValueError naming the rule that failed; the message never contains the number.
    A lower-case 'x' check character is accepted, as many hospital systems store it that way.
    """
    if len(number) == 15:
        number = upgrade_15_to_18(number)
    if len(number) != 18:
        raise ValueError(
            f"居民身份证号 must have 18 characters (or 15 legacy digits), got {len(number)}")
    body, check = number[:17], number[17].upper()
    if not body.isascii() or not body.isdigit():
        bad = next(i for i, c in enumerate(body, 1) if not ("0" <= c <= "9"))
        raise ValueError(f"居民身份证号 character {bad} must be a digit (only the 18th may be 'X')")
    if check not in CHECK_CHARS:
        raise ValueError("居民身份证号 check character (18th) must be a digit or 'X'")
    if body[:2] not in PROVINCE_PREFIXES:
        raise ValueError(
            "居民身份证号 characters 1-2 are not a GB/T 2260 province code (11-15, 21-23, 31-37, "
            "41-46, 50-54, 61-65, 71, 81-83)"
        )
    birth = _birth(body[6:14])
    expected = check_digit(body)
    if check != expected:
        raise ValueError(
            f"居民身份证号 check character is '{check}' but GB 11643-1999 MOD 11-2 over the first "
            f"17 digits gives '{expected}': a digit was mistyped or the number is invented"
        )
    return IdInfo(body[:6], birth, "male" if int(body[16]) % 2 else "female")


def is_valid_id(number: str) -> bool:
    """True for a well-formed 18-character number: digits, province, real birth date, check."""
    if len(number) != 18:
        return False
    try:
        parse_id(number)
    except ValueError:
        return False
    return True


def make_id(region_code: str, birth: date, sequence: int) -> str:
    """Build an 18-character number; `sequence` (0-999) odd for a man, even for a woman."""
    if len(region_code) != 6 or not region_code.isascii() or not region_code.isdigit():
        raise ValueError("居民身份证号 region code must be 6 ASCII digits (GB/T 2260)")
    if region_code[:2] not in PROVINCE_PREFIXES:
        raise ValueError(f"region code {region_code} does not start with a GB/T 2260 province code")
    if not 0 <= sequence <= 999:
        raise ValueError(f"居民身份证号 顺序码 must be 0-999, got {sequence}")
    if not 1000 <= birth.year <= 9999:
        raise ValueError(f"birth year {birth.year} does not fit the 4-digit YYYY field")
    first17 = f"{region_code}{birth:%Y%m%d}{sequence:03d}"
    return first17 + check_digit(first17)


def upgrade_15_to_18(old: str) -> str:
    """The 18-character form of a legacy 15-digit number (GB 11643-1999 appendix, 19xx births).

    15-digit numbers were issued before 1999 with a 2-digit year, so the century is always 19.
    """
    if len(old) != 15 or not old.isascii() or not old.isdigit():
        raise ValueError(
            f"legacy 居民身份证号 must be exactly 15 ASCII digits, got {len(old)} characters"
            + ("" if old.isascii() and old.isdigit() else " (not all digits)"))
    first17 = old[:6] + "19" + old[6:]
    _birth(first17[6:14])
    return first17 + check_digit(first17)
