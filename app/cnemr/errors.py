"""What a Chinese EMR mapper reports about a value or row it could not take as given.

Mappers never raise on bad source data: they return `(resources, errors)`. Each `RowError`
names the canonical data element (`field`), the offending value as received (personal
identifiers masked), the rule it broke and a message a hospital IT person can act on.

`severity` says what happened to the row:
- "error": the row was rejected and produced no resources;
- "warning": the row was accepted; the value was left out, or (for a conflict such as a
  身份证号 whose sex differs from the recorded sex) kept exactly as the source gave it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

Severity = Literal["error", "warning"]


@dataclass(frozen=True, slots=True)
class RowError:
    """One problem with one data element of one source row."""

    field: str
    value: str
    rule: str
    message: str
    severity: Severity = "error"
    # Position of the row in the sequence given to a multi-row mapper (0-based), so the
    # importer can turn it into a file line; None for single-row mappers.
    row: int | None = None


class ValueRejected(ValueError):
    """Raised by the parsers in `values`; mappers turn it into a `RowError`."""

    def __init__(self, rule: str, message: str) -> None:
        super().__init__(message)
        self.rule = rule
        self.message = message

    def to_row_error(self, field: str, value: str, severity: Severity = "error",
                     row: int | None = None) -> RowError:
        return RowError(field, value, self.rule, self.message, severity, row)


def per_row(map_one: Callable[[Mapping[str, Any], Any], tuple[list[dict[str, Any]],
                                                          list[RowError]]]
            ) -> Callable[[Sequence[Mapping[str, Any]], Any],
                          tuple[list[dict[str, Any]], list[RowError]]]:
    """A single-row mapper as a `map_rows` over a group, with `RowError.row` set to the index."""

    def map_rows(rows: Sequence[Mapping[str, Any]], hospital: Any
                 ) -> tuple[list[dict[str, Any]], list[RowError]]:
        resources: list[dict[str, Any]] = []
        errors: list[RowError] = []
        for index, row in enumerate(rows):
            mapped, problems = map_one(row, hospital)
            resources += mapped
            errors += [RowError(e.field, e.value, e.rule, e.message, e.severity, index)
                       for e in problems]
        return resources, errors

    return map_rows


MapGroup = Callable[[Sequence[Mapping[str, Any]], Any], tuple[list[dict[str, Any]], list[RowError]]]


def per_group(key_of: Callable[[Mapping[str, Any]], str], map_group: MapGroup) -> MapGroup:
    """A mapper of one row group (a settlement, a report, a document) as a `map_rows` over rows
    of any number of groups in any order: rows are grouped by `key_of`, `RowError.row` becomes
    the position in `rows`, and a resource several groups return (a shared Account, an
    ImagingStudy) is returned once, the last group's version."""

    def map_rows(rows: Sequence[Mapping[str, Any]], hospital: Any
                 ) -> tuple[list[dict[str, Any]], list[RowError]]:
        groups: dict[str, list[int]] = {}
        for index, row in enumerate(rows):
            groups.setdefault(key_of(row), []).append(index)
        out: dict[tuple[str, str], dict[str, Any]] = {}
        errors: list[RowError] = []
        for positions in groups.values():
            mapped, problems = map_group([rows[i] for i in positions], hospital)
            for resource in mapped:
                out[(resource["resourceType"], resource["id"])] = resource
            errors += [RowError(e.field, e.value, e.rule, e.message, e.severity,
                                None if e.row is None else positions[e.row]) for e in problems]
        errors.sort(key=lambda e: -1 if e.row is None else e.row)
        return list(out.values()), errors

    return map_rows
