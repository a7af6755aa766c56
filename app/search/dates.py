"""FHIR date/dateTime/instant values as half-open millisecond ranges (R4 §2.1.0.x, search §3.1.1.4.2).

`2024` is the whole year, `2024-03-05T08:30` the whole minute; a value without a zone is read in
the server's default zone (China Standard Time unless configured otherwise).
"""

from __future__ import annotations

import calendar
import re
from datetime import UTC, datetime, timedelta, timezone

_DATE_RE = re.compile(
    r"^(?P<y>\d{4})(?:-(?P<m>\d{2})(?:-(?P<d>\d{2})"
    r"(?:T(?P<H>\d{2})(?::(?P<M>\d{2})(?::(?P<S>\d{2})(?:\.(?P<f>\d{1,9}))?)?)?"
    r"(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?$"
)


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
    m = _DATE_RE.match(text)
    if not m:
        raise ValueError(
            f"{text!r} is not a FHIR date: use YYYY, YYYY-MM, YYYY-MM-DD or "
            "YYYY-MM-DDThh:mm[:ss[.fff]][Z|+hh:mm]"
        )
    g = m.groupdict()
    tz = parse_offset(g["tz"]) if g["tz"] else default_tz
    if g["H"] is not None and g["M"] is None:
        raise ValueError(f"{text!r}: a time needs at least hours and minutes (hh:mm)")
    try:
        year = int(g["y"])
        month = int(g["m"] or 1)
        day = int(g["d"] or 1)
        start = datetime(year, month, day, int(g["H"] or 0), int(g["M"] or 0), int(g["S"] or 0),
                         tzinfo=tz)
    except ValueError as exc:
        raise ValueError(f"{text!r} is not a real calendar date or time: {exc}") from None
    if g["f"] is not None:
        frac = g["f"]
        start = start.replace(microsecond=int(frac[:6].ljust(6, "0")))
        end = start + timedelta(microseconds=10 ** max(0, 6 - len(frac)))
    elif g["S"] is not None:
        end = start + timedelta(seconds=1)
    elif g["M"] is not None:
        end = start + timedelta(minutes=1)
    elif g["d"] is not None:
        end = start + timedelta(days=1)
    elif g["m"] is not None:
        days = calendar.monthrange(year, month)[1]
        end = start + timedelta(days=days)
    else:
        end = start.replace(year=year + 1)
    return _ms(start), max(_ms(end), _ms(start) + 1)


def _ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000) if dt.microsecond % 1000 == 0 else (
        int(dt.timestamp()) * 1000 + dt.microsecond // 1000)


def now_instant() -> str:
    """The current time as a FHIR instant in UTC with millisecond precision."""
    return format_instant_ms(int(datetime.now(UTC).timestamp() * 1000))


def format_instant_ms(ms: int) -> str:
    dt = datetime.fromtimestamp(ms / 1000, UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


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
