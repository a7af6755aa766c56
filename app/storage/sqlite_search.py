"""Compile a parsed FHIR search (`app.search.query.SearchQuery`) into SQLite SQL.

Each clause becomes a condition on a `resource` row alias. The first clause that can drive the
query (a positive match on an indexed value, best of all a reference or a token) is compiled as
`rid IN (…)` so SQLite starts from the index; the others are correlated `EXISTS` probes through
the `(rid, pid)` indexes, which cost one index lookup per candidate row.

Ranges follow R4 §3.1.1.4 exactly: with the search value's range S = [slo, shi) and the indexed
value's range T = [lo, hi):
    eq  S contains T            lo >= slo AND hi <= shi
    ne  not eq
    gt  T reaches above S       hi > shi
    lt  T reaches below S       lo < slo
    ge  gt or eq;  le  lt or eq
    sa  T starts after S        lo >= shi
    eb  T ends before S         hi <= slo
    ap  T overlaps S widened by 10% of its distance from now (dates) or of the value (numbers)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from app.search.extract import of_type_system
from app.search.query import (
    AnyOf,
    Chain,
    Clause,
    CompositeValue,
    ContentMatch,
    Has,
    InCompartment,
    MissingValue,
    Predicate,
    QuantityValue,
    RangeValue,
    ReferenceValue,
    SearchQuery,
    StringValue,
    TokenValue,
    TypeIs,
    UriValue,
)

TABLE_OF_TYPE = {
    "string": "ix_string", "token": "ix_token", "date": "ix_date", "number": "ix_number",
    "quantity": "ix_quantity", "reference": "ix_reference", "uri": "ix_uri",
    "composite": "ix_composite",
}
# Lower ranks drive the query: they are the most selective kinds of match.
DRIVE_RANK = {"reference": 0, "token": 1, "uri": 2, "string": 3, "composite": 4, "quantity": 5,
              "number": 6, "date": 7}

PidOf = Callable[[str, str], int]


@dataclass
class Sql:
    text: str
    params: list[Any] = field(default_factory=list)


class Compiler:
    def __init__(self, pid_of: PidOf) -> None:
        self._pid_of = pid_of
        self._alias = 0

    def alias(self) -> str:
        self._alias += 1
        return f"r{self._alias}"

    # -- top level -----------------------------------------------------------------------------

    def where(self, query: SearchQuery, r: str) -> Sql:
        """The WHERE condition selecting current, matching resources of the query's types."""
        types = query.resource_types
        parts = [Sql(f"{r}.deleted = 0")]
        clauses = list(query.clauses)
        driver = self._pick_driver(clauses)
        if types:
            marks = ",".join("?" * len(types))
            # With a driving clause, `+` keeps SQLite from scanning every resource of the type
            # through the type index instead of starting from the clause's value index.
            plus = "+" if driver is not None else ""
            parts.append(Sql(f"{plus}{r}.type IN ({marks})", list(types)))
        for i, clause in enumerate(clauses):
            parts.append(self.clause(clause, r, drive=(i == driver)))
        return _and(parts)

    def _pick_driver(self, clauses: list[Clause]) -> int | None:
        best, best_rank = None, 99
        for i, clause in enumerate(clauses):
            rank = self._drive_rank(clause)
            if rank < best_rank:
                best, best_rank = i, rank
        return best

    def _drive_rank(self, clause: Clause) -> int:
        if isinstance(clause, Predicate):
            if clause.param.code == "_id":
                return -1
            if clause.modifier in ("not", "missing") or clause.param.code == "_lastUpdated":
                return 99
            return DRIVE_RANK.get(clause.param.type, 99)
        if isinstance(clause, Chain):
            return 8
        if isinstance(clause, InCompartment):
            return 0
        return 99

    def clause(self, clause: Clause, r: str, drive: bool = False) -> Sql:
        if isinstance(clause, Predicate):
            return self.predicate(clause, r, drive)
        if isinstance(clause, Chain):
            return self.chain(clause, r)
        if isinstance(clause, Has):
            return self.has(clause, r)
        if isinstance(clause, InCompartment):
            return self.in_compartment(clause, r)
        if isinstance(clause, TypeIs):
            return Sql(f"{r}.type = ?", [clause.resource_type])
        if isinstance(clause, AnyOf):
            return _or([_and([self.clause(c, r) for c in alt]) if alt else Sql("1")
                        for alt in clause.alternatives])
        return self.content(clause, r)

    # -- access (authorization) ----------------------------------------------------------------

    def in_compartment(self, c: InCompartment, r: str) -> Sql:
        """The SQL `everything()` uses: reference index rows of the compartment's parameters
        pointing at the patient (a Patient is also in its own compartment)."""
        pids = [self._pid_of(c.resource_type, p) for p in c.params]
        alts: list[Sql] = []
        if pids:
            marks = ",".join("?" * len(pids))
            alts.append(Sql(f"{r}.rid IN (SELECT x.rid FROM ix_reference x WHERE x.pid IN "
                            f"({marks}) AND x.ttype = 'Patient' AND x.tid = ?)",
                            [*pids, c.patient_id]))
        if c.resource_type == "Patient":
            alts.append(Sql(f"({r}.type = 'Patient' AND {r}.id = ?)", [c.patient_id]))
        return _or(alts)

    # -- parameters ----------------------------------------------------------------------------

    def predicate(self, p: Predicate, r: str, drive: bool) -> Sql:
        code = p.param.code
        if code == "_id" and p.modifier is None:
            ids = [v.code for v in p.values if isinstance(v, TokenValue) and v.code]
            return Sql(f"{r}.id IN ({','.join('?' * len(ids))})", ids) if ids else Sql("0")
        if code == "_lastUpdated" and p.modifier is None:
            return _or([_range_sql(v, f"{r}.lu_ms", f"{r}.lu_ms + 1", "date") for v in p.values])
        table = TABLE_OF_TYPE[p.param.type]
        pid = self._pid_of(p.resource_type, code)
        if p.modifier == "missing":
            missing = isinstance(p.values[0], MissingValue) and p.values[0].missing
            inner = Sql(f"SELECT 1 FROM {table} x WHERE x.rid = {r}.rid AND x.pid = ?", [pid])
            return Sql(f"{'NOT ' if missing else ''}EXISTS ({inner.text})", inner.params)
        matches = _or([self.value(p, v, "x") for v in p.values])
        # Probes are pinned to the (rid, pid) index: with planner statistics SQLite would
        # otherwise probe through the value index, scanning every row with that value.
        probe = f"{table} x INDEXED BY {table}_r"
        if p.modifier == "not":
            return Sql(f"NOT EXISTS (SELECT 1 FROM {probe} WHERE x.rid = {r}.rid AND x.pid = ? "
                       f"AND {matches.text})", [pid, *matches.params])
        if drive:
            return Sql(f"{r}.rid IN (SELECT x.rid FROM {table} x WHERE x.pid = ? AND "
                       f"{matches.text})", [pid, *matches.params])
        return Sql(f"EXISTS (SELECT 1 FROM {probe} WHERE x.rid = {r}.rid AND x.pid = ? AND "
                   f"{matches.text})", [pid, *matches.params])

    def value(self, p: Predicate, v: Any, x: str) -> Sql:
        kind = p.param.type
        if kind == "string":
            assert isinstance(v, StringValue)
            if p.modifier == "exact":
                return Sql(f"{x}.exact = ?", [v.raw])
            if p.modifier == "contains":
                return Sql(f"{x}.norm LIKE ? ESCAPE '\\'", [f"%{_like_escape(v.norm)}%"])
            return _prefix_sql(f"{x}.norm", v.norm)
        if kind == "token":
            assert isinstance(v, TokenValue)
            if p.modifier == "text":
                assert v.code is not None
                return Sql(f"({x}.text LIKE ? ESCAPE '\\' OR {x}.text LIKE ? ESCAPE '\\')",
                           [f"{_like_escape(v.code)}%", f"% {_like_escape(v.code)}%"])
            if p.modifier == "of-type":
                assert v.type_system is not None and v.type_code is not None
                return Sql(f"({x}.system = ? AND {x}.code = ?)",
                           [of_type_system(v.type_system, v.type_code), v.code])
            return _token_sql(v, f"{x}.system", f"{x}.code")
        if kind in ("date", "number"):
            assert isinstance(v, RangeValue)
            return _range_sql(v, f"{x}.lo", f"{x}.hi", kind)
        if kind == "quantity":
            assert isinstance(v, QuantityValue)
            return _quantity_sql(v, f"{x}.system", f"{x}.code", f"{x}.lo", f"{x}.hi")
        if kind == "reference":
            if isinstance(v, TokenValue):  # :identifier
                return _token_sql(v, f"{x}.isys", f"{x}.ival")
            assert isinstance(v, ReferenceValue)
            type_hint = p.modifier if p.modifier and p.modifier[0].isupper() else None
            if v.url is not None:
                return Sql(f"{x}.url = ?", [v.url])
            if v.type or type_hint:
                return Sql(f"({x}.tid = ? AND {x}.ttype = ?)", [v.id, v.type or type_hint])
            return Sql(f"{x}.tid = ?", [v.id])
        if kind == "uri":
            assert isinstance(v, UriValue)
            if p.modifier == "below":
                return _prefix_sql(f"{x}.value", v.value)
            if p.modifier == "above":
                return Sql(f"(? >= {x}.value AND substr(?, 1, length({x}.value)) = {x}.value)",
                           [v.value, v.value])
            return Sql(f"{x}.value = ?", [v.value])
        if kind == "composite":
            assert isinstance(v, CompositeValue)
            return self._composite(v, x)
        return Sql("0")

    def _composite(self, v: CompositeValue, x: str) -> Sql:
        parts: list[Sql] = []
        first, first_type = v.parts[0], v.types[0]
        if first_type == "token":
            parts.append(_token_sql(first, f"{x}.c1_system", f"{x}.c1_code"))
        else:
            ref = first
            assert isinstance(ref, ReferenceValue)
            parts.append(Sql(f"{x}.c1_code = ?", [ref.id or ref.url]))
        for i, (part, kind) in enumerate(zip(v.parts[1:], v.types[1:], strict=True)):
            col = "c2" if i == 0 else "c3"
            if kind == "token":
                parts.append(_token_sql(part, f"{x}.{col}_system", f"{x}.{col}_code"))
            elif kind == "quantity":
                parts.append(_quantity_sql(part, f"{x}.c2_system", f"{x}.c2_code",
                                           f"{x}.c2_lo", f"{x}.c2_hi"))
            elif kind in ("date", "number"):
                parts.append(_range_sql(part, f"{x}.{col}_lo", f"{x}.{col}_hi", kind))
            elif kind == "string":
                parts.append(_prefix_sql(f"{x}.c2_str", part.norm))
            else:
                parts.append(Sql("0"))
        return _and(parts)

    # -- chains, _has, _content ------------------------------------------------------------------

    def chain(self, c: Chain, r: str) -> Sql:
        pid = self._pid_of(c.resource_type, c.param.code)
        alts = []
        for target_type, inner in c.targets:
            t = self.alias()
            cond = self.clause(inner, t, drive=False)
            alts.append(Sql(
                f"{r}.rid IN (SELECT x.rid FROM ix_reference x JOIN resource {t} "
                f"ON {t}.type = x.ttype AND {t}.id = x.tid WHERE x.pid = ? AND x.ttype = ? "
                f"AND {t}.deleted = 0 AND {cond.text})", [pid, target_type, *cond.params]))
        return _or(alts)

    def has(self, h: Has, r: str) -> Sql:
        pid = self._pid_of(h.source_type, h.param.code)
        s = self.alias()
        cond = self.clause(h.inner, s, drive=False)
        return Sql(
            f"{r}.id IN (SELECT x.tid FROM ix_reference x JOIN resource {s} ON {s}.rid = x.rid "
            f"WHERE x.pid = ? AND x.ttype = {r}.type AND {s}.type = ? AND {s}.deleted = 0 "
            f"AND {cond.text})", [pid, h.source_type, *cond.params])

    def content(self, c: ContentMatch, r: str) -> Sql:
        target = "json_extract(CAST(h.body AS TEXT), '$.text.div')" if c.narrative_only else \
            "CAST(h.body AS TEXT)"
        alts = [Sql(f"lower({target}) LIKE ? ESCAPE '\\'", [f"%{_like_escape(v)}%"])
                for v in c.values]
        cond = _or(alts)
        return Sql(f"EXISTS (SELECT 1 FROM history h WHERE h.seq = {r}.seq AND {cond.text})",
                   cond.params)

    # -- sorting -------------------------------------------------------------------------------

    def order_by(self, query: SearchQuery, r: str) -> Sql:
        keys: list[Sql] = []
        for key in query.sort:
            code, kind = key.param.code, key.param.type
            direction = "DESC" if key.descending else "ASC"
            if code == "_id":
                keys.append(Sql(f"{r}.id {direction}"))
                continue
            if code == "_lastUpdated":
                keys.append(Sql(f"{r}.lu_ms {direction}"))
                continue
            table = TABLE_OF_TYPE[kind]
            column = {"string": "norm", "token": "code", "date": "lo", "number": "value",
                      "quantity": "value", "reference": "coalesce(tid, url)",
                      "uri": "value"}[kind]
            if kind == "date" and key.descending:
                column = "hi"
            agg = "MAX" if key.descending else "MIN"
            pid = self._pid_of(query.resource_types[0], code)
            expr = f"(SELECT {agg}(x.{column}) FROM {table} x WHERE x.rid = {r}.rid AND x.pid = ?)"
            if column.startswith("coalesce"):
                expr = (f"(SELECT {agg}(coalesce(x.tid, x.url)) FROM {table} x "
                        f"WHERE x.rid = {r}.rid AND x.pid = ?)")
            # Resources without a value sort last in either direction.
            keys.append(Sql(f"{expr} IS NULL, {expr} {direction}", [pid, pid]))
        keys.append(Sql(f"{r}.rid ASC"))
        return Sql(", ".join(k.text for k in keys), [p for k in keys for p in k.params])


def _and(parts: list[Sql]) -> Sql:
    parts = [p for p in parts if p.text]
    if not parts:
        return Sql("1")
    if len(parts) == 1:
        return parts[0]
    return Sql(" AND ".join(f"({p.text})" for p in parts), [x for p in parts for x in p.params])


def _or(parts: list[Sql]) -> Sql:
    if not parts:
        return Sql("0")
    if len(parts) == 1:
        return parts[0]
    return Sql("(" + " OR ".join(f"({p.text})" for p in parts) + ")",
               [x for p in parts for x in p.params])


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _prefix_sql(column: str, prefix: str) -> Sql:
    """`column` starts with `prefix`, as an index range (LIKE would not use the index)."""
    if not prefix:
        return Sql(f"{column} IS NOT NULL")
    upper = prefix + "\U0010ffff"
    return Sql(f"({column} >= ? AND {column} < ?)", [prefix, upper])


def _token_sql(v: TokenValue, system_col: str, code_col: str) -> Sql:
    parts: list[Sql] = []
    if v.code is not None:
        parts.append(Sql(f"{code_col} = ?", [v.code]))
    if v.system_given:
        if v.system is None:
            parts.append(Sql(f"{system_col} IS NULL"))
        else:
            parts.append(Sql(f"{system_col} = ?", [v.system]))
    return _and(parts)


def _quantity_sql(v: QuantityValue, system_col: str, code_col: str, lo: str, hi: str) -> Sql:
    parts = [_range_sql(RangeValue(v.prefix, v.lo, v.hi, v.value), lo, hi, "number")]
    if v.code is not None:
        parts.append(Sql(f"{code_col} = ?", [v.code]))
    if v.system is not None:
        parts.append(Sql(f"{system_col} = ?", [v.system]))
    return _and(parts)


def _range_sql(v: RangeValue, lo: str, hi: str, kind: str) -> Sql:
    slo, shi = v.lo, v.hi
    prefix = v.prefix
    eq = Sql(f"({lo} >= ? AND {hi} <= ?)", [slo, shi])
    if prefix == "eq":
        return eq
    if prefix == "ne":
        return Sql(f"({lo} < ? OR {hi} > ?)", [slo, shi])
    if prefix == "gt":
        return Sql(f"{hi} > ?", [shi])
    if prefix == "lt":
        return Sql(f"{lo} < ?", [slo])
    if prefix == "ge":
        return Sql(f"({hi} > ? OR ({lo} >= ? AND {hi} <= ?))", [shi, slo, shi])
    if prefix == "le":
        return Sql(f"({lo} < ? OR ({lo} >= ? AND {hi} <= ?))", [slo, slo, shi])
    if prefix == "sa":
        return Sql(f"{lo} >= ?", [shi])
    if prefix == "eb":
        return Sql(f"{hi} <= ?", [slo])
    # ap: widen by 10% of the distance from now (dates) or of the value (numbers).
    gap = abs((time.time() * 1000 if kind == "date" else 0) - v.value) * 0.1
    return Sql(f"({lo} < ? AND {hi} > ?)", [shi + gap, slo - gap])
