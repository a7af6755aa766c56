"""Parsers for single data elements of Chinese EMR exports (WS 363 data elements) into FHIR R4.

Each parser takes the text as exported (full-width digits and punctuation from GBK-era systems
are folded with Unicode NFKC first) and either returns the FHIR form or raises
`ValueRejected` with a rule name and a message saying what was expected. Nothing here guesses:
a value that does not fit is rejected, and qualitative lab results stay text.

- dates: YYYYMMDD, YYYYMMDD[T]HHMM[SS] (WS 363 DT15), YYYY-MM-DD, YYYY/MM/DD, YYYY.MM.DD,
  YYYY年M月D日, each with an optional time HH:MM[:SS]; a time gets the hospital's zone
  (default +08:00) made explicit, as FHIR dateTime requires a zone whenever a time is given.
  A zone the source wrote itself (ISO 8601, e.g. 2026-11-20T08:30:00+08:00) is kept.
- amounts: 元 with at most two decimals → Money in CNY.
- 居民身份证号: GB 11643-1999 via `app.samples.identity`; 15-digit numbers are upgraded, and
  the sex and birth date it encodes can be cross-checked against the recorded ones.
- lab results, units (→ UCUM), reference ranges and abnormal flags
  (→ v3-ObservationInterpretation).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from datetime import date, datetime
from typing import Any, NamedTuple

from app.cnemr.context import Hospital
from app.cnemr.errors import RowError, ValueRejected
from app.samples.identity import (
    PROVINCE_PREFIXES,
    IdInfo,
    parse_id,
    upgrade_15_to_18,
)

UCUM = "http://unitsofmeasure.org"
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"

_ZONE = re.compile(r"[+-](0[0-9]|1[0-3]):[0-5][0-9]|\+14:00")


_WHITESPACE = re.compile(r"\s+")


def fold(text: str | None) -> str:
    """NFKC-folded text with whitespace runs (line breaks from spreadsheet cells included)
    collapsed to one space and stripped ('' for None): full-width ＜, ～, digits become ASCII."""
    if text is None:
        return ""
    return _WHITESPACE.sub(" ", unicodedata.normalize("NFKC", str(text))).strip()


# -- Dates -------------------------------------------------------------------------------------

# WS 363 DT15 writes YYYYMMDDThhmmss; many exports drop the T.
_COMPACT = re.compile(r"(\d{4})(\d{2})(\d{2})(?:T?(\d{2})(\d{2})(\d{2})?)?")
_SEPARATED = re.compile(
    r"(\d{4})(?:[-/.](\d{1,2})[-/.](\d{1,2})|年(\d{1,2})月(\d{1,2})日?)"
    r"(?:(?:\s+|T)(\d{1,2}):(\d{2})(?::(\d{2})(?:\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?)?")
_DATE_FORMS = ("YYYYMMDD, YYYY-MM-DD, YYYY/MM/DD or YYYY年M月D日, optionally followed by "
               "HH:MM[:SS] (or YYYYMMDD[T]HHMM[SS])")


class SourceRow:
    """One source row as a mapper reads it (values folded), with the problems found so far."""

    def __init__(self, row: Mapping[str, Any], hospital: Hospital) -> None:
        self.row = row
        self.hospital = hospital
        self.errors: list[RowError] = []

    def get(self, element: str) -> str:
        return fold(self.row.get(element))


class ParsedDateTime(NamedTuple):
    """A parsed source date: the calendar date and, if the source gave one, the clock time
    and the zone the source wrote after it (ISO 8601 exports such as CDR JSON Lines)."""

    day: date
    time: tuple[int, int, int] | None
    zone: str | None = None


def parse_source_datetime(text: str | None) -> ParsedDateTime:
    """The date and optional time of a source value, or ValueRejected naming the forms accepted."""
    s = fold(text)
    if not s:
        raise ValueRejected("date-required", "no date given")
    zone = None
    m = _COMPACT.fullmatch(s)
    if m:
        y, mo, d, hh, mi, ss = m.groups()
    else:
        m = _SEPARATED.fullmatch(s)
        if not m:
            raise ValueRejected("date-format", f"not a date in any accepted form: {_DATE_FORMS}")
        y, mo1, d1, mo2, d2, hh, mi, ss, zone = m.groups()
        mo, d = mo1 or mo2, d1 or d2
        if zone and zone != "Z":
            zone = f"{zone[:3]}:{zone[-2:]}"
            if not _ZONE.fullmatch(zone):
                raise ValueRejected("time-zone", f"{zone} is not a UTC offset between -12:00 "
                                    "and +14:00")
    try:
        day = date(int(y), int(mo), int(d))
    except ValueError:
        raise ValueRejected(
            "date-calendar", f"{y}-{mo}-{d} is not a calendar date (month 1-12, day in month)"
        ) from None
    if day.year < 1800:
        raise ValueRejected("date-range", f"year {day.year} is before 1800; check the export")
    if hh is None:
        return ParsedDateTime(day, None)
    h, minute, sec = int(hh), int(mi), int(ss or 0)
    if h > 23 or minute > 59 or sec > 59:
        raise ValueRejected("time-range", f"{hh}:{mi}:{ss or '00'} is not a time of day "
                            "(hours 00-23, minutes and seconds 00-59)")
    return ParsedDateTime(day, (h, minute, sec), zone)


def check_zone(tz: str) -> str:
    """`tz` if it is a FHIR zone offset such as +08:00, else ValueError (a setup mistake)."""
    if not _ZONE.fullmatch(tz):
        raise ValueError(f"time zone {tz!r} must be an offset like +08:00")
    return tz


def parse_date(text: str | None) -> str:
    """FHIR `date` (YYYY-MM-DD). A time part, as database dumps append to dates, is ignored."""
    return parse_source_datetime(text).day.isoformat()


def parse_datetime(text: str | None, tz: str = "+08:00") -> str:
    """FHIR `dateTime`: YYYY-MM-DD for a date alone, YYYY-MM-DDThh:mm:ss+08:00 with a time."""
    parsed = parse_source_datetime(text)
    if parsed.time is None:
        return parsed.day.isoformat()
    h, m, s = parsed.time
    zone = parsed.zone or check_zone(tz)
    return f"{parsed.day.isoformat()}T{h:02d}:{m:02d}:{s:02d}{zone}"


def parse_instant(text: str | None, tz: str = "+08:00") -> str:
    """FHIR `instant`: like `parse_datetime`, but a time of day is required."""
    parsed = parse_source_datetime(text)
    if parsed.time is None:
        raise ValueRejected("instant-needs-time",
                            "a date without a time of day cannot be a FHIR instant; export "
                            "the time as HH:MM[:SS] after the date")
    return parse_datetime(text, tz)


def as_datetime(fhir_datetime: str) -> datetime | None:
    """The aware datetime of a FHIR dateTime with a time, None for a date alone."""
    return datetime.fromisoformat(fhir_datetime) if "T" in fhir_datetime else None


# -- Amounts -----------------------------------------------------------------------------------

_AMOUNT = re.compile(r"-?\d+(\.\d+)?")


def parse_amount(text: str | None, max_decimals: int = 2) -> dict[str, Any]:
    """FHIR Money in CNY from an amount in 元: '1,234.50', '¥12.5', '12.50元'; negatives
    (refunds, 冲红) are kept. More than two decimals is rejected: 元 have 角 and 分 only. Unit
    prices are the exception (中药饮片 at 0.125 元/g): they pass `max_decimals=4`."""
    s = fold(text)
    if not s:
        raise ValueRejected("amount-required", "no amount given")
    s = s.removeprefix("¥").removesuffix("元").replace(",", "").strip()
    if not _AMOUNT.fullmatch(s):
        raise ValueRejected("amount-format",
                            "an amount must be a number of 元 such as 12.50 (optionally ¥ or 元)")
    decimals = len(s.partition(".")[2])
    if decimals > max_decimals:
        if max_decimals == 2:
            raise ValueRejected("amount-two-decimals",
                                f"{decimals} decimals: amounts in 元 have at most two (角 and "
                                "分); check whether the column is in 元 or another unit")
        raise ValueRejected("amount-decimals", f"{decimals} decimals: a unit price has at most "
                            f"{max_decimals}; check whether the column is in 元")
    value: int | float = round(float(s), decimals) if decimals else int(s)
    return {"value": value, "currency": "CNY"}


# -- 居民身份证号 ----------------------------------------------------------------------------


class IdNumber(NamedTuple):
    """A valid 18-character 居民身份证号 and what it encodes."""

    number: str
    info: IdInfo
    upgraded: bool  # True when the source gave the legacy 15-digit form


def mask_id(number: str | None) -> str:
    """The number as it may appear in an error report: region and last four kept
    (110105********002X), the birth date hidden."""
    s = fold(number)
    if len(s) >= 15:
        return s[:6] + "*" * (len(s) - 10) + s[-4:]
    return "*" * max(len(s) - 2, 0) + s[-2:]


def normalize_id_number(text: str | None) -> IdNumber:
    """The 18-character upper-case form of a 居民身份证号, checked by GB 11643-1999.

    Full-width digits and spaces are folded away and a legacy 15-digit number is upgraded.
    Messages never contain the number.
    """
    s = "".join(fold(text).split()).upper()
    if not s:
        raise ValueRejected("id-required", "no 居民身份证号 given")
    if len(s) not in (15, 18):
        raise ValueRejected("gb11643-length",
                            f"居民身份证号 must have 18 characters (or 15 legacy digits), "
                            f"got {len(s)}")
    if not s[:-1].isascii() or not s[:-1].isdigit() or not (s[-1].isdigit() or
                                                            (len(s) == 18 and s[-1] == "X")):
        raise ValueRejected("gb11643-format",
                            "居民身份证号 must be digits only, with 'X' allowed as the 18th")
    if s[:2] not in PROVINCE_PREFIXES:
        raise ValueRejected("gb11643-region",
                            "居民身份证号 characters 1-2 are not a GB/T 2260 province code")
    upgraded = len(s) == 15
    try:
        if upgraded:
            s = upgrade_15_to_18(s)
        info = parse_id(s)
    except ValueError as exc:
        # parse_id checks the birth date before the check character; so does this.
        birth = "19" + s[6:12] if len(s) == 15 else s[6:14]
        try:
            date(int(birth[:4]), int(birth[4:6]), int(birth[6:]))
            rule = "gb11643-check-digit"
        except ValueError:
            rule = "gb11643-birth-date"
        raise ValueRejected(rule, str(exc)) from None
    return IdNumber(s, info, upgraded)


def id_mismatches(info: IdInfo, gender: str | None, birth_date: str | None) -> list[
        tuple[str, ValueRejected]]:
    """(field, problem) for each recorded value that contradicts the 居民身份证号.

    `gender` is the FHIR gender mapped from the source, `birth_date` a FHIR date. Unknown or
    missing values are not contradictions. Nothing is corrected: the caller reports.
    """
    out: list[tuple[str, ValueRejected]] = []
    if gender in ("male", "female") and gender != info.sex:
        out.append(("gender_code", ValueRejected(
            "id-sex-mismatch",
            f"recorded sex is {'男' if gender == 'male' else '女'} but the 居民身份证号's "
            f"顺序码 (17th digit) says {'男' if info.sex == 'male' else '女'}; one of the two is "
            "wrong in the source system and was kept as given")))
    if birth_date and birth_date != info.birth.isoformat():
        out.append(("birth_date", ValueRejected(
            "id-birth-mismatch",
            "recorded 出生日期 differs from the birth date in the 居民身份证号 (characters "
            "7-14); one of the two is wrong in the source system and was kept as given")))
    return out


# -- Telephone ---------------------------------------------------------------------------------

_PHONE = re.compile(r"\+?[0-9][0-9\- ()]{5,30}(?:(?:转|ext\.?|x)[0-9]{1,6})?")


def parse_phone(text: str | None) -> tuple[str, str | None]:
    """(value, use) of a phone number: a mainland mobile (1xxxxxxxxxx) gets use 'mobile'."""
    s = fold(text)
    if not s:
        raise ValueRejected("phone-required", "no phone number given")
    if not _PHONE.fullmatch(s):
        raise ValueRejected("phone-format",
                            "a phone number may contain digits, +, -, spaces, brackets and an "
                            "extension (转123)")
    digits = re.sub(r"[\s\-()]", "", s)
    if re.fullmatch(r"(\+?86)?1[3-9][0-9]{9}", digits):
        return digits, "mobile"
    return s, None


# -- Units -------------------------------------------------------------------------------------

# Lower-cased unit text (after NFKC, spaces removed, μ→u) → UCUM code.
_UCUM: dict[str, str] = {
    "g/l": "g/L", "g/dl": "g/dL", "mg/l": "mg/L", "mg/dl": "mg/dL",
    "u/l": "U/L", "iu/l": "[IU]/L", "u/ml": "U/mL", "iu/ml": "[IU]/mL", "miu/ml": "m[IU]/mL",
    "umol/l": "umol/L", "mmol/l": "mmol/L", "nmol/l": "nmol/L", "pmol/l": "pmol/L",
    "%": "%", "fl": "fL", "pg": "pg", "ng/ml": "ng/mL", "pg/ml": "pg/mL", "ug/l": "ug/L",
    "ug/ml": "ug/mL", "mm/h": "mm/h", "s": "s", "sec": "s", "秒": "s", "ml/min": "mL/min",
    "ml/min/1.73m2": "mL/min/{1.73_m2}", "ml/min/1.73m^2": "mL/min/{1.73_m2}",
    "/ul": "/uL", "个/ul": "/uL", "/hp": "/[HPF]", "个/hp": "/[HPF]", "mmhg": "mm[Hg]",
    # units printed in Chinese, and immunoassay ratios as LOINC writes them in UCUM
    "毫米/小时": "mm/h", "mm/小时": "mm/h", "克/升": "g/L", "毫摩尔/升": "mmol/L",
    "微摩尔/升": "umol/L", "单位/升": "U/L", "s/co": "{s_co_ratio}", "coi": "{COI}",
}
_POWER = re.compile(r"(?:[x×*])?10(?:\^|\*|e|\*\*)?(\d{1,2})/(l|ul)")


def ucum_code(unit_text: str | None) -> str | None:
    """The UCUM code for a unit as Chinese laboratories print it, or None if not known."""
    s = fold(unit_text).replace(" ", "").replace("μ", "u").lower()
    if not s:
        return None
    m = _POWER.fullmatch(s)
    if m:
        return f"10*{int(m.group(1))}/{'L' if m.group(2) == 'l' else 'uL'}"
    return _UCUM.get(s)


def quantity(value: int | float, unit_text: str | None) -> dict[str, Any]:
    """A Quantity keeping the printed unit in `unit`, with the UCUM code when known."""
    q: dict[str, Any] = {"value": value}
    unit = fold(unit_text)
    if unit:
        q["unit"] = unit
        code = ucum_code(unit)
        if code:
            q["system"] = UCUM
            q["code"] = code
    return q


# -- Lab results -------------------------------------------------------------------------------

_NUMBER = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)"
_NUMERIC = re.compile(_NUMBER)
_COMPARED = re.compile(rf"(<=|>=|≤|≥|<|>)\s*({_NUMBER})")
_COMPARATORS = {"<": "<", ">": ">", "<=": "<=", ">=": ">=", "≤": "<=", "≥": ">="}
_TRAILING_FLAG = re.compile(r"(.*?)\s*(↑↑|↓↓|↑|↓)")


def _number(text: str) -> int | float:
    return float(text) if any(c in text for c in ".eE") else int(text)


class LabValue(NamedTuple):
    """The value[x] element of a lab Observation and any flag printed inside the result."""

    element: dict[str, Any]  # {"valueQuantity": …} or {"valueString": …}
    printed_flag: str | None  # '↑'/'↓' some LIS append to the result, e.g. '12.3↑'


def parse_lab_result(text: str | None, unit_text: str | None) -> LabValue:
    """valueQuantity for numbers and '<0.5'-style comparisons, valueString for everything
    else (阴性, 阳性, 弱阳性, +, ++, 黄色 …) exactly as printed: never forced into a number."""
    s = fold(text)
    if not s:
        raise ValueRejected("result-required", "the result is blank; an item without a result "
                            "was not performed and is not imported")
    flag = None
    m = _TRAILING_FLAG.fullmatch(s)
    if m and m.group(1) and (_NUMERIC.fullmatch(m.group(1)) or _COMPARED.fullmatch(m.group(1))):
        s, flag = m.group(1), m.group(2)
    if _NUMERIC.fullmatch(s):
        return LabValue({"valueQuantity": quantity(_number(s), unit_text)}, flag)
    m = _COMPARED.fullmatch(s)
    if m:
        q = quantity(_number(m.group(2)), unit_text)
        return LabValue({"valueQuantity": {"comparator": _COMPARATORS[m.group(1)], **q}}, flag)
    return LabValue({"valueString": s}, None)


_RANGE = re.compile(rf"({_NUMBER})\s*(?:--?|~|—|–|至|～)\s*({_NUMBER})")


def parse_reference_range(text: str | None, unit_text: str | None) -> dict[str, Any]:
    """An Observation.referenceRange: '3.5-9.5'/'3.5~9.5' → low and high, '<5' → high,
    '>60' → low, anything else ('阴性') text only. The printed text is always kept, as FHIR
    bounds are inclusive and '<5' is not quite 'at most 5'."""
    s = fold(text)
    if not s:
        raise ValueRejected("range-required", "no reference range given")
    out: dict[str, Any] = {}
    m = _RANGE.fullmatch(s)
    if m:
        low, high = _number(m.group(1)), _number(m.group(2))
        if low > high:
            raise ValueRejected("range-order",
                                "the lower bound of the reference range is above the upper one")
        out = {"low": quantity(low, unit_text), "high": quantity(high, unit_text)}
    else:
        m = _COMPARED.fullmatch(s)
        if m:
            side = "high" if m.group(1) in ("<", "<=", "≤") else "low"
            out = {side: quantity(_number(m.group(2)), unit_text)}
    out["text"] = s
    return out


# -- Abnormal flags ----------------------------------------------------------------------------

_FLAGS: dict[str, tuple[str, str]] = {
    "N": ("N", "Normal"), "正常": ("N", "Normal"),
    "H": ("H", "High"), "高": ("H", "High"), "偏高": ("H", "High"), "↑": ("H", "High"),
    "L": ("L", "Low"), "低": ("L", "Low"), "偏低": ("L", "Low"), "↓": ("L", "Low"),
    "HH": ("HH", "Critical high"), "↑↑": ("HH", "Critical high"), "危急高": ("HH", "Critical high"),
    "LL": ("LL", "Critical low"), "↓↓": ("LL", "Critical low"), "危急低": ("LL", "Critical low"),
    "A": ("A", "Abnormal"), "异常": ("A", "Abnormal"),
    "POS": ("POS", "Positive"), "阳性": ("POS", "Positive"),
    "NEG": ("NEG", "Negative"), "阴性": ("NEG", "Negative"),
}


def parse_flag(text: str | None) -> dict[str, Any] | None:
    """A v3-ObservationInterpretation CodeableConcept for an LIS abnormal flag, None if blank."""
    s = fold(text)
    if not s:
        return None
    hit = _FLAGS.get(s.upper()) or _FLAGS.get(s)
    if hit is None:
        raise ValueRejected("flag-unknown", "abnormal flag must be one of H/L/N/HH/LL/A, "
                            "高/低/正常/偏高/偏低/异常, ↑/↓/↑↑/↓↓, 阳性/阴性")
    code, display = hit
    return {"coding": [{"system": INTERPRETATION, "code": code, "display": display}], "text": s}
