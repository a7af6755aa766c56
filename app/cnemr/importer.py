"""Importing hospital exports into the store: map rows, write Bundles, report every rejection.

Rows are read with their line numbers, renamed through the hospital's mapping file, mapped by
the dataset's mapper, and written as transaction Bundles of PUT entries (stable ids, so a rerun
updates instead of duplicating) through the same `FhirService` as the REST API — validation,
authorization and audit included. A Bundle the server refuses is retried entry by entry as a
batch, so one bad resource costs only its own row. Every rejected or doubtful value ends up in the
report with file, line, column, value, rule and message: nothing is dropped silently.
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.cnemr.context import Hospital
from app.cnemr.datasets import DATASETS
from app.cnemr.errors import RowError
from app.cnemr.mapping import ColumnMapping
from app.cnemr.sources import SourceError, read_records
from app.cnemr.values import fold
from app.fhir.bundles import BundleProcessor
from app.fhir.interactions import Call, FhirService
from app.fhir.outcome import FhirError
from app.pipeline.hooks import Principal

Resource = dict[str, Any]
# Resources per transaction. Larger transactions mean fewer hand-overs of the database write
# lock between worker processes; 2,000 measured best of 100/500/2,000/5,000 (docs/performance.md).
BUNDLE_SIZE = 2000

# The data elements each dataset's mapper reads (documented in its module).
DATA_ELEMENTS: dict[str, frozenset[str]] = {name: d.elements for name, d in DATASETS.items()}


@dataclass(frozen=True)
class Rejection:
    file: str
    line: int | None
    column: str
    value: str
    rule: str
    severity: str  # error: the row was not imported; warning: imported, this value left out
    message: str


@dataclass
class ImportReport:
    rows_read: int = 0
    rows_rejected: int = 0
    resources_written: int = 0
    rejections: list[Rejection] = field(default_factory=list)

    @property
    def rows_accepted(self) -> int:
        return self.rows_read - self.rows_rejected

    def write_csv(self, path: Path) -> None:
        """The report for a hospital IT team: UTF-8 with BOM so that Excel opens it right."""
        with path.open("w", encoding="utf-8-sig", newline="") as fh:
            out = csv.writer(fh)
            out.writerow(["file", "line", "column", "value", "rule", "severity", "message"])
            for r in self.rejections:
                out.writerow([r.file, r.line or "", r.column, r.value, r.rule, r.severity,
                              r.message])


@dataclass
class _Unit:
    """Resources that stand or fall together, and the source lines they came from."""

    resources: list[Resource]
    lines: list[int]


class Importer:
    def __init__(self, service: FhirService, hospital: Hospital,
                 progress: Callable[[int], None] | None = None, *,
                 principal: Principal | None = None) -> None:
        self.service = service
        self.bundles = BundleProcessor(service)
        self.hospital = hospital
        self.progress = progress
        # Over HTTP ($import-cn) the caller's principal, so every write is held to its scopes;
        # the command line imports as an in-process (internal) caller.
        if principal is None:
            principal = Principal(subject="system/importer", anonymous=False, internal=True)
        self.call = Call(principal, prefer_return="minimal")

    async def import_files(self, mapping: ColumnMapping, paths: Iterable[Path]) -> ImportReport:
        report = ImportReport()
        for path in paths:
            await self._import_file(mapping, path, report)
        return report

    async def _import_file(self, mapping: ColumnMapping, path: Path,
                           report: ImportReport) -> None:
        rows = read_rows(mapping, path, report)
        await self.import_rows(mapping, str(path), rows, report)

    async def import_rows(self, mapping: ColumnMapping, name: str,
                          rows: list[tuple[int, dict[str, str]]], report: ImportReport) -> None:
        """Map and write rows already read (line number, row keyed by data element)."""
        units = self._map(mapping, name, rows, report)
        await self._write(units, name, report)

    def _map(self, mapping: ColumnMapping, name: str, rows: list[tuple[int, dict[str, str]]],
             report: ImportReport) -> list[_Unit]:
        units: list[_Unit] = []

        def reject(errors: list[RowError], lines: list[int]) -> bool:
            bad_lines: set[int] = set()
            for e in errors:
                line = lines[e.row] if e.row is not None and e.row < len(lines) else \
                    (lines[0] if len(lines) == 1 else None)
                report.rejections.append(Rejection(name, line, mapping.source_column(e.field),
                                                   e.value, e.rule, e.severity, e.message))
                if e.severity == "error" and line is not None:
                    bad_lines.add(line)
            report.rows_rejected += len(bad_lines)
            return bool(bad_lines)

        dataset = DATASETS[mapping.dataset]
        groups: dict[str, list[tuple[int, dict[str, str]]]] = {}
        for line, row in rows:
            key = fold(row.get(dataset.group_by)) if dataset.group_by else str(line)
            groups.setdefault(key, []).append((line, row))
        for group in groups.values():
            lines = [line for line, _ in group]
            resources, errors = dataset.map_rows([row for _, row in group], self.hospital)
            reject(errors, lines)
            if resources:
                units.append(_Unit(resources, lines))
        return units

    async def _write(self, units: list[_Unit], name: str, report: ImportReport) -> None:
        chunk: list[_Unit] = []
        size = 0
        for unit in units:
            chunk.append(unit)
            size += len(unit.resources)
            if size >= BUNDLE_SIZE:
                await self._write_chunk(chunk, name, report)
                chunk, size = [], 0
        if chunk:
            await self._write_chunk(chunk, name, report)

    async def _write_chunk(self, chunk: list[_Unit], name: str, report: ImportReport) -> None:
        # Groups may share a resource (the hospital, a visit's Account): a transaction may
        # touch each resource once, so the last copy stands for all.
        resources = list({(r["resourceType"], r["id"]): r
                          for unit in chunk for r in unit.resources}.values())
        try:
            await self.bundles.process(self.call, _bundle("transaction", resources))
        except FhirError:
            await self._write_one_by_one(chunk, name, report)
        else:
            report.resources_written += len(resources)
        if self.progress is not None:
            self.progress(sum(len(u.lines) for u in chunk))

    async def _write_one_by_one(self, chunk: list[_Unit], name: str,
                                report: ImportReport) -> None:
        for unit in chunk:
            try:
                await self.bundles.process(self.call, _bundle("transaction", unit.resources))
            except FhirError as exc:
                report.rows_rejected += len(unit.lines)
                for line in unit.lines:
                    for issue in exc.issues:
                        report.rejections.append(Rejection(
                            name, line, ",".join(issue.expression), "", "fhir-" + issue.code,
                            "error", issue.diagnostics))
            else:
                report.resources_written += len(unit.resources)


def read_rows(mapping: ColumnMapping, path: Path,
              report: ImportReport) -> list[tuple[int, dict[str, str]]]:
    """The rows of one export file, renamed to data elements; unreadable lines are reported."""
    name = str(path)
    rows: list[tuple[int, dict[str, str]]] = []
    try:
        for line, record in read_records(path, mapping.encoding, mapping.sheet):
            report.rows_read += 1
            if isinstance(record, str):
                report.rows_rejected += 1
                report.rejections.append(Rejection(name, line, "", "", "format", "error", record))
                continue
            rows.append((line, mapping.apply(record)))
    except SourceError as exc:
        report.rejections.append(Rejection(name, None, "", "", "file", "error", str(exc)))
    return rows


def shard_rows(mapping: ColumnMapping, rows: list[tuple[int, dict[str, str]]],
               shards: int) -> list[list[tuple[int, dict[str, str]]]]:
    """Split rows into at most `shards` stretches of about equal size, in file order, keeping
    each group (the rows of one report, one prescription) within one stretch."""
    group_by = DATASETS[mapping.dataset].group_by
    groups: dict[str, list[tuple[int, dict[str, str]]]] = {}
    for line, row in rows:
        key = fold(row.get(group_by)) if group_by else str(line)
        groups.setdefault(key, []).append((line, row))
    size = max(1, -(-len(rows) // max(1, shards)))
    parts: list[list[tuple[int, dict[str, str]]]] = [[]]
    for group in groups.values():
        if len(parts[-1]) >= size:
            parts.append([])
        parts[-1].extend(group)
    return [p for p in parts if p]


def merge_reports(parts: Iterable[ImportReport]) -> ImportReport:
    merged = ImportReport()
    for part in parts:
        merged.rows_read += part.rows_read
        merged.rows_rejected += part.rows_rejected
        merged.resources_written += part.resources_written
        merged.rejections += part.rejections
    merged.rejections.sort(key=lambda r: (r.file, r.line or 0))
    return merged


def _bundle(kind: str, resources: list[Resource]) -> dict[str, Any]:
    # handed over as a dict: serialising 2,000 entries only to parse them again cost ~3%
    return {"resourceType": "Bundle", "type": kind, "entry": [
        {"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}}
        for r in resources]}


def print_progress(total: int) -> Callable[[int], None]:
    """A one-line progress bar on stderr for long imports."""
    done = 0

    def step(rows: int) -> None:
        nonlocal done
        done += rows
        width = 30
        filled = min(width, int(width * done / total)) if total else width
        sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} rows")
        sys.stderr.flush()

    return step


def count_rows(paths: Iterable[Path], mapping: ColumnMapping) -> int:
    total = 0
    for path in paths:
        try:
            total += sum(1 for _ in read_records(path, mapping.encoding, mapping.sheet))
        except SourceError:
            continue
    return total


def summary(report: ImportReport, limit: int = 20) -> str:
    lines = [f"rows read {report.rows_read}, imported {report.rows_accepted}, "
             f"rejected {report.rows_rejected}; resources written {report.resources_written}; "
             f"{len(report.rejections)} problems reported"]
    for r in report.rejections[:limit]:
        where = f"{r.file}:{r.line}" if r.line else r.file
        lines.append(f"  {r.severity:7} {where} {r.column} {r.value!r} [{r.rule}] {r.message}")
    if len(report.rejections) > limit:
        lines.append(f"  … {len(report.rejections) - limit} more in the report file")
    return "\n".join(lines)
