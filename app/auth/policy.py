"""What a SMART access token may do, per resource type and permission (design §8, "Policy").

`AccessPolicy(principal).rule(type, perm)` turns the token's scopes and launch context into a
`Rule`: DENY (no alternative), ALL (an unrestricted alternative) or a filter, the OR of
alternatives, each "in the Patient compartment of x" and/or "matches this granular query":

- `patient/` scopes: the compartment of the token's `patient` claim (no claim: nothing);
- `user/` scopes: `fhirUser` `Patient/x` → x's compartment; `Practitioner/…` → every patient
  (a stated policy gap until care teams exist, docs/architecture.md "Authorization"); any other
  or no `fhirUser`: nothing;
- `system/` scopes: the scopes alone (a Consent gate comes with the Consent issue).

Types outside the Patient compartment: under a patient compartment only the shared directory and
conformance types of `SHARED_READABLE` may be read and searched; every other one (Binary, Bundle,
Group, …) is denied. Several scopes for one type and permission OR together; an unrestricted one
absorbs the rest.

A rule is used twice, and both must agree: compiled into search clauses (`clauses`, the
`InCompartment`/`AnyOf` clauses of `app/search/query.py`, so SQL does the filtering) and judged on
one resource in memory (`Matcher.matches`, for reads, writes and included resources).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC
from typing import Any

from app.auth.compartment import PatientCompartment
from app.auth.scopes import CONTEXTS, permits
from app.definitions.registry import Registry
from app.pipeline.hooks import Principal
from app.search.extract import Indexer
from app.search.index import IndexRows
from app.search.query import (
    AnyOf,
    Clause,
    InCompartment,
    ParseContext,
    Predicate,
    ReferenceValue,
    StringValue,
    TokenValue,
    UriValue,
    parse_search,
)

# Readable and searchable under a patient compartment although no patient's compartment holds
# them: an app must resolve a lab's performer, a prescription's medication, a profile.
SHARED_READABLE = frozenset({
    "Practitioner", "PractitionerRole", "Organization", "Location", "Medication", "Substance",
    "HealthcareService", "Endpoint",
    "CapabilityStatement", "StructureDefinition", "ValueSet", "CodeSystem", "ConceptMap",
    "SearchParameter", "OperationDefinition", "NamingSystem", "CompartmentDefinition",
    "ImplementationGuide",
})
# Compartment member types a patient compartment still may not see: a Group lists many patients.
PATIENT_DENIED = frozenset({"Group"})

Query = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Alternative:
    compartment: str | None  # a Patient id: only that patient's compartment; None: any
    query: Query = ()  # a granular scope's restriction (name, value) pairs; (): none


@dataclass(frozen=True, slots=True)
class Rule:
    alternatives: tuple[Alternative, ...]

    @property
    def deny(self) -> bool:
        return not self.alternatives

    @property
    def all(self) -> bool:
        return self.alternatives == (UNRESTRICTED,)


UNRESTRICTED = Alternative(None)
ALL = Rule((UNRESTRICTED,))
DENY = Rule(())


def _rule(alternatives: Sequence[Alternative]) -> Rule:
    if UNRESTRICTED in alternatives:
        return ALL
    out: list[Alternative] = []
    for alt in alternatives:
        if alt in out:
            continue
        # "compartment x" absorbs "compartment x and query q"
        if alt.query and Alternative(alt.compartment) in alternatives:
            continue
        out.append(alt)
    return Rule(tuple(out))


class AccessPolicy:
    """The rules of one principal (cached per type and permission)."""

    def __init__(self, principal: Principal, compartment: PatientCompartment) -> None:
        self.principal = principal
        self.compartment = compartment
        self._rules: dict[tuple[str, str], Rule] = {}

    def rule(self, resource_type: str, perm: str) -> Rule:
        key = (resource_type, perm)
        found = self._rules.get(key)
        if found is None:
            found = self._rules[key] = self._compute(resource_type, perm)
        return found

    def _compute(self, resource_type: str, perm: str) -> Rule:
        p = self.principal
        if p.internal:
            return ALL
        scopes = p.scope_set
        if p.anonymous or scopes is None:
            return DENY
        alts: list[Alternative] = []
        for context in CONTEXTS:
            matches = permits(scopes, context, resource_type, perm)
            if not matches:
                continue
            patient: str | None = None
            if context == "patient":
                if not p.patient:
                    continue
                patient = p.patient
            elif context == "user":
                fhir_user = p.fhir_user or ""
                if fhir_user.startswith("Patient/") and len(fhir_user) > 8:
                    patient = fhir_user[8:]
                elif not (fhir_user.startswith("Practitioner/") and len(fhir_user) > 13):
                    continue  # no fhirUser, or a kind of user without a policy yet
            compartment: str | None = None
            if patient is not None:
                if resource_type in PATIENT_DENIED:
                    continue
                if resource_type in self.compartment.member_types():
                    compartment = patient
                elif resource_type in SHARED_READABLE and perm in ("r", "s"):
                    compartment = None
                else:
                    continue
            alts += [Alternative(compartment, m.query) for m in matches]
        return _rule(alts)

    def needed_scope(self, resource_type: str | None, perm: str) -> str:
        """The scope that would allow `perm` on `resource_type`, for the 403 challenge."""
        p = self.principal
        contexts = {s.context for s in p.scope_set.clinical} if p.scope_set else set()
        context = "patient" if "patient" in contexts or p.patient else \
            "user" if "user" in contexts else "system" if "system" in contexts else "patient"
        return f"{context}/{resource_type or '*'}.{perm}"


class Matcher:
    """Rules compiled into search clauses, and judged on one resource in memory."""

    def __init__(self, registry: Registry, indexer: Indexer,
                 compartment: PatientCompartment) -> None:
        self.registry = registry
        self.indexer = indexer
        self.compartment = compartment
        # The context `parse_scopes` judged the query with, so both read it the same way.
        self._ctx = ParseContext(registry=registry, default_tz=UTC, base_urls=())
        self._queries: dict[tuple[str, Query], tuple[Predicate, ...] | None] = {}

    def predicates(self, resource_type: str, query: Query) -> tuple[Predicate, ...] | None:
        """The query's predicates; None (matches nothing: fail closed) if it does not parse,
        which `parse_scopes` already rules out for every token we issue."""
        key = (resource_type, query)
        if key not in self._queries:
            parsed, issues = parse_search((resource_type,), list(query), self._ctx)
            preds = tuple(c for c in parsed.clauses if isinstance(c, Predicate))
            self._queries[key] = None if issues or len(preds) != len(query) else preds
        return self._queries[key]

    # -- SQL ---------------------------------------------------------------------------------------

    def alternative_clauses(self, resource_type: str, alt: Alternative) -> tuple[Clause, ...]:
        out: list[Clause] = []
        if alt.compartment is not None:
            out.append(InCompartment(resource_type, alt.compartment,
                                     tuple(sorted(self.compartment.params(resource_type)))))
        preds = self.predicates(resource_type, alt.query)
        out.extend(preds if preds is not None else (AnyOf(()),))
        return tuple(out)

    def clauses(self, resource_type: str, rule: Rule) -> list[Clause]:
        """Clauses to AND into a search of `resource_type` (none for ALL)."""
        if rule.all:
            return []
        alts = [self.alternative_clauses(resource_type, a) for a in rule.alternatives]
        if len(alts) == 1:
            return list(alts[0])
        return [AnyOf(tuple(alts))]

    # -- in memory ---------------------------------------------------------------------------------

    def matches(self, rule: Rule, resource: dict[str, Any]) -> bool:
        if rule.all:
            return True
        rtype = resource.get("resourceType")
        if not isinstance(rtype, str):
            return False
        patients: frozenset[str] | None = None
        rows: IndexRows | None = None
        for alt in rule.alternatives:
            if alt.compartment is not None:
                if patients is None:
                    patients = self.compartment.patients_of(resource)
                if alt.compartment not in patients:
                    continue
            if alt.query:
                preds = self.predicates(rtype, alt.query)
                if preds is None:
                    continue
                rows = self._rows(resource, {p.param.code for p in preds}, rows)
                if not all(_predicate_matches(p, rows) for p in preds):
                    continue
            return True
        return False


    def _rows(self, resource: dict[str, Any], codes: set[str],
              rows: IndexRows | None) -> IndexRows:
        """Index rows of just the parameters `codes` (what the store indexes for them), added
        to `rows` once per parameter: a granular check costs a few expressions, not the
        resource's whole index."""
        out = rows if rows is not None else IndexRows()
        have: set[str] = {r.param for r in out.token} | {r.param for r in out.string} | \
            {r.param for r in out.uri} | {r.param for r in out.reference}
        missing = codes - have
        return self.indexer.rows(resource, only=missing, into=out) if missing else out


def _predicate_matches(p: Predicate, rows: IndexRows) -> bool:
    code = p.param.code
    kind = p.param.type
    for v in p.values:
        if kind == "token" and isinstance(v, TokenValue):
            for t in rows.token:
                if t.param == code and (v.code is None or t.code == v.code) and (
                        not v.system_given or t.system == v.system):
                    return True
        elif kind == "string" and isinstance(v, StringValue):
            if any(s.param == code and s.norm.startswith(v.norm) for s in rows.string):
                return True
        elif kind == "uri" and isinstance(v, UriValue):
            if any(u.param == code and u.value == v.value for u in rows.uri):
                return True
        elif kind == "reference" and isinstance(v, ReferenceValue):
            for r in rows.reference:
                if r.param != code:
                    continue
                if v.url is not None:
                    if r.url == v.url:
                        return True
                elif r.target_id == v.id and (v.type is None or r.target_type == v.type):
                    return True
    return False
