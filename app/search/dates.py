"""FHIR date, dateTime and instant values as half-open millisecond ranges (R4 search §3.1.1.4.2).

`2024` is the whole year, `2024-03-05T08:30` the whole minute; a value without a zone is read in
the server's default zone (China Standard Time unless configured otherwise).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from functools import lru_cache


def parse_offset(text: str) -> timezone:
    """`+08:00` → timezone(+8h). Raises ValueError on anything else."""
    if text == "Z":
        return UTC
    m = re.fullmatch(r"([+-])(\d{2}):(\d{2})", text)
    if not m:
        raise ValueError(f"time zone offset {text!r} is not of the form +08:00")
    sign = -1 if m.group(1) == "-" else 1
    hours, minutes = int(m.group(2)), int(m.group(3))
    if hours > 14 or minutes > 59:
        raise ValueError(f"time zone offset {text!r} is out of range")
    return timezone(sign * timedelta(hours=hours, minutes=minutes))


def date_range(text: str, default_tz: timezone) -> tuple[int, int]:
    """The half-open [lo, hi) range in epoch milliseconds that a FHIR date value stands for.

    Raises ValueError with a message naming the expected forms when `text` is not a FHIR date.
    """
    offset = default_tz.utcoffset(None)
    assert offset is not None
    found = date_range_ms(text, offset // timedelta(milliseconds=1))
    if found is None:
        raise ValueError(
            f"{text!r} is not a FHIR date: use YYYY, YYYY-MM, YYYY-MM-DD or "
            "YYYY-MM-DDThh:mm[:ss[.fff]][Z|+hh:mm] with a real calendar date and time"
        )
    return found


def now_instant() -> str:
    """The current time as a FHIR instant in UTC with millisecond precision."""
    return format_instant_ms(int(datetime.now(UTC).timestamp() * 1000))


_second: tuple[int, str] = (-1, "")  # the last second formatted (every audited read asks)


def format_instant_ms(ms: int) -> str:
    global _second
    sec = ms // 1000
    cached, prefix = _second
    if sec != cached:
        prefix = datetime.fromtimestamp(sec, UTC).strftime("%Y-%m-%dT%H:%M:%S.")
        _second = (sec, prefix)
    return f"{prefix}{ms % 1000:03d}Z"


def instant_to_ms(text: str) -> int:
    """A FHIR instant (or any full dateTime with zone) → epoch ms. Raises ValueError."""
    return date_range(text, UTC)[0]


def http_date(instant: str) -> str:
    """FHIR instant → RFC 9110 HTTP-date for Last-Modified."""
    dt = datetime.fromtimestamp(instant_to_ms(instant) / 1000, UTC)
    return dt.strftime("%a, %d %b %Y %H:%M:%S GMT")


def parse_http_date(text: str) -> int | None:
    """RFC 9110 HTTP-date → epoch ms, or None if it is not one."""
    from email.utils import parsedate_to_datetime

    try:
        dt = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


# ---------------------------------------------------------------------------------------------
# The parser behind both the index (extraction, several times per resource on the write path)
# and the query side (`date_range`): integer arithmetic, so both agree to the millisecond and
# the year 9999 works.

_PARSE_RE = re.compile(
    r"([0-9]{4})(?:-([0-9]{2})(?:-([0-9]{2})"
    r"(?:T([0-9]{2}):([0-9]{2})(?::([0-9]{2})(?:\.([0-9]{1,9}))?)?"
    r"(Z|[+-][0-9]{2}:[0-9]{2})?)?)?)?"
)
# Times to the second or finer (effective times, meta.lastUpdated): most dates on the write path.
_SECONDS_RE = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?"
    r"(Z|[+-](?:0[0-9]|1[0-4]):[0-5][0-9])?"
)
_EPOCH_NAIVE = datetime(1970, 1, 1)
_EPOCH_UTC = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
_OFFSET_RE = re.compile(r"([+-])([0-9]{2}):([0-9]{2})")
_DAYS_IN_MONTH = (0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
_DAY_MS = 86_400_000


def parse_offset_ms(text: str) -> int:
    """`+08:00` → 28 800 000; `Z` → 0. Raises ValueError naming the expected form."""
    if text == "Z":
        return 0
    m = _OFFSET_RE.fullmatch(text)
    if m is None or int(m.group(2)) > 14 or int(m.group(3)) > 59:
        raise ValueError(f"time zone offset {text!r} is not of the form +08:00 (at most ±14:00)")
    minutes = int(m.group(2)) * 60 + int(m.group(3))
    return (-1 if m.group(1) == "-" else 1) * minutes * 60_000


def _days_from_civil(y: int, m: int, d: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm)."""
    y -= m <= 2
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    return era * 146097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719468


def _month_days(y: int, m: int) -> int:
    if m == 2 and y % 4 == 0 and (y % 100 != 0 or y % 400 == 0):
        return 29
    return _DAYS_IN_MONTH[m]


# The results of a lab panel (血常规: 20-odd Observations) share their effective and issued
# times, so recent values are worth remembering.
@lru_cache(maxsize=4096)
def date_range_ms(text: str, default_offset_ms: int) -> tuple[int, int] | None:
    """[lo, hi) in epoch ms of a FHIR date, dateTime or instant; None if it is not one."""
    seconds = _SECONDS_RE.fullmatch(text)
    if seconds is not None:
        return _seconds_range(text, seconds, default_offset_ms)
    m = _PARSE_RE.fullmatch(text)
    if m is None:
        return None
    ys, ms, ds, hs, mins, ss, frac, tz = m.groups()
    y = int(ys)
    if y < 1:
        return None
    if ms is None:
        lo_days, hi_days = _days_from_civil(y, 1, 1), _days_from_civil(y + 1, 1, 1)
    else:
        mo = int(ms)
        if not 1 <= mo <= 12:
            return None
        if ds is None:
            lo_days = _days_from_civil(y, mo, 1)
            hi_days = lo_days + _month_days(y, mo)
        else:
            d = int(ds)
            if not 1 <= d <= _month_days(y, mo):
                return None
            lo_days = _days_from_civil(y, mo, d)
            hi_days = lo_days + 1
    offset = default_offset_ms
    if tz is not None:
        if tz == "Z":
            offset = 0
        else:
            th, tm = int(tz[1:3]), int(tz[4:6])
            if th > 14 or tm > 59:
                return None
            offset = (th * 60 + tm) * 60_000 * (-1 if tz[0] == "-" else 1)
    if hs is None:
        return lo_days * _DAY_MS - offset, hi_days * _DAY_MS - offset
    h, mi = int(hs), int(mins)
    if h > 23 or mi > 59:
        return None
    lo = lo_days * _DAY_MS + (h * 60 + mi) * 60_000
    if ss is None:
        width = 60_000
    else:
        s = int(ss)
        if s > 59:
            return None
        lo += s * 1000
        if frac is None:
            width = 1000
        elif len(frac) >= 3:
            lo += int(frac[:3])
            width = 1
        else:
            lo += int(frac) * 10 ** (3 - len(frac))
            width = 10 ** (3 - len(frac))
    return lo - offset, lo - offset + width


def _seconds_range(
    text: str, match: re.Match[str], default_offset_ms: int
) -> tuple[int, int] | None:
    """The `_SECONDS_RE` shape through the C ISO parser: half the cost of the general path."""
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:  # 24:00:00, 02-30, :60 seconds
        return None
    frac, tz = match.groups()
    # Floor division: instants before 1970 round down to their millisecond too.
    lo = (dt - _EPOCH_NAIVE) // _MS - default_offset_ms if tz is None else (dt - _EPOCH_UTC) // _MS
    digits = len(frac) - 1 if frac else 0
    return lo, lo + (10 ** (3 - digits) if digits < 3 else 1)
