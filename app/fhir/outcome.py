"""OperationOutcome errors (FHIR R4 §3.1.0.6): every non-2xx answer is one of these.

Code raises `FhirError` with the HTTP status and OperationOutcome issues; the REST layer turns it
into the response. Diagnostics are written for the person who has to fix the request.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson


@dataclass(frozen=True, slots=True)
class Issue:
    severity: str  # fatal | error | warning | information
    code: str  # IssueType: invalid, structure, required, value, not-found, conflict, ...
    diagnostics: str
    expression: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"severity": self.severity, "code": self.code,
                               "diagnostics": self.diagnostics}
        if self.expression:
            out["expression"] = list(self.expression)
            out["location"] = list(self.expression)
        return out


@dataclass
class FhirError(Exception):
    """An error answered with an OperationOutcome."""

    status: int
    issues: list[Issue]
    headers: dict[str, str] = field(default_factory=dict)
    # AuditRecords of refused interactions, recorded where the error is answered (after any
    # unit of work it escaped from has rolled back): app/server.py, FastRead, batch entries
    audit: list[Any] = field(default_factory=list, compare=False, repr=False)

    def __str__(self) -> str:
        return "; ".join(i.diagnostics for i in self.issues)


def error(status: int, code: str, diagnostics: str, *expression: str,
          headers: dict[str, str] | None = None) -> FhirError:
    """One-issue FhirError: `raise error(404, "not-found", "Patient/x is not known")`."""
    return FhirError(status, [Issue("error", code, diagnostics, tuple(e for e in expression if e))],
                     headers or {})


def outcome(issues: list[Issue]) -> dict[str, Any]:
    return {"resourceType": "OperationOutcome", "issue": [i.to_json() for i in issues]}


def outcome_bytes(issues: list[Issue]) -> bytes:
    return orjson.dumps(outcome(issues))


def information(diagnostics: str) -> dict[str, Any]:
    return outcome([Issue("information", "informational", diagnostics)])
