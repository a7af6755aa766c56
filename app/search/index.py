"""The search-index rows extracted from a resource, one list per search-parameter type.

These rows are the contract between extraction (`app.search.extract`, pure) and the storage
backends (which persist them in the same unit of work as the resource). Values are already
normalised, so backends compare them without knowing FHIR.

Ranges are half-open `[lo, hi)`:
- dates: integer milliseconds since the Unix epoch (UTC); a value's range is its precision
  (`2024-03` covers the whole month in the server's time zone when none is given); open ends of a
  Period are `DATE_MIN` / `DATE_MAX`.
- numbers and quantities: floats; a value's range is its implicit precision (`100` is
  `[99.5, 100.5)`, `1.50` is `[1.495, 1.505)`), its exact value kept beside it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

DATE_MIN = -(2**62)
DATE_MAX = 2**62


@dataclass(frozen=True, slots=True)
class StringRow:
    param: str
    norm: str  # lower-cased, accents stripped, whitespace folded; pinyin variants too
    exact: str | None  # the original text; None for derived variants (pinyin)


@dataclass(frozen=True, slots=True)
class TokenRow:
    param: str
    system: str | None
    code: str | None
    text: str | None  # normalised display / CodeableConcept.text / Identifier.type.text


@dataclass(frozen=True, slots=True)
class DateRow:
    param: str
    lo: int
    hi: int


@dataclass(frozen=True, slots=True)
class NumberRow:
    param: str
    value: float
    lo: float
    hi: float


@dataclass(frozen=True, slots=True)
class QuantityRow:
    param: str
    system: str | None
    code: str | None  # Quantity.code, else Quantity.unit
    value: float
    lo: float
    hi: float


@dataclass(frozen=True, slots=True)
class ReferenceRow:
    param: str
    target_type: str | None  # set for local references: "Patient"
    target_id: str | None  # set for local references: "p-001"
    url: str | None  # absolute/canonical/urn references, without a `|version`
    identifier_system: str | None  # Reference.identifier, for `:identifier`
    identifier_value: str | None


@dataclass(frozen=True, slots=True)
class UriRow:
    param: str
    value: str


@dataclass(frozen=True, slots=True)
class CompositeRow:
    """One tuple of a composite parameter, its components from the same element.

    Component 1 is a token (system, code) or a reference (type, id). Component 2 fills the
    columns of its type: token (c2_system, c2_code), quantity (c2_system, c2_code, c2_lo, c2_hi),
    date/number (c2_lo, c2_hi), string (c2_str). A third number component uses c3_lo/c3_hi.
    """

    param: str
    c1_system: str | None
    c1_code: str | None
    c2_system: str | None = None
    c2_code: str | None = None
    c2_lo: float | None = None
    c2_hi: float | None = None
    c2_str: str | None = None
    c3_lo: float | None = None
    c3_hi: float | None = None


@dataclass(slots=True)
class IndexRows:
    string: list[StringRow] = field(default_factory=list)
    token: list[TokenRow] = field(default_factory=list)
    date: list[DateRow] = field(default_factory=list)
    number: list[NumberRow] = field(default_factory=list)
    quantity: list[QuantityRow] = field(default_factory=list)
    reference: list[ReferenceRow] = field(default_factory=list)
    uri: list[UriRow] = field(default_factory=list)
    composite: list[CompositeRow] = field(default_factory=list)
