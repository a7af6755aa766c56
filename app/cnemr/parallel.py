"""Importing on every core: worker processes, each with its own store connection.

Validation (fhir.resources) is CPU-bound Python, so one process uses one core. The rows of a file
are read once, split into shards that keep each row group (a report, a prescription) whole, and
each shard is mapped, validated and written by its own process. SQLite serialises the short write
transactions across processes exactly as it does for several uvicorn workers.
"""

from __future__ import annotations

import asyncio
import multiprocessing
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from app.cnemr.context import Hospital
from app.cnemr.importer import Importer, ImportReport, merge_reports, read_rows, shard_rows
from app.cnemr.mapping import ColumnMapping
from app.config import Settings
from app.pipeline.hooks import Hooks


def _work(settings: dict[str, Any], hospital: Hospital, mapping: ColumnMapping, name: str,
          rows: list[tuple[int, dict[str, str]]]) -> ImportReport:
    from app.server import build_service

    async def run() -> ImportReport:
        service, _ = build_service(Settings(**settings), Hooks())
        await service.store.start()
        try:
            report = ImportReport()
            await Importer(service, hospital).import_rows(mapping, name, rows, report)
            return report
        finally:
            await service.store.close()

    return asyncio.run(run())


def import_parallel(settings: Settings, hospital: Hospital, mapping: ColumnMapping,
                    paths: Sequence[Path], jobs: int) -> ImportReport:
    """Import `paths` with `jobs` worker processes (the store must exist and be seeded)."""
    reports: list[ImportReport] = []
    # spawn, not fork: a forked child would inherit the parent's open SQLite handles.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        for path in paths:
            read = ImportReport()
            rows = read_rows(mapping, path, read)
            reports.append(read)
            futures = [pool.submit(_work, settings.model_dump(), hospital, mapping, str(path),
                                   shard) for shard in shard_rows(mapping, rows, jobs)]
            for future in futures:
                part = future.result()
                part.rows_read = 0  # counted once, above
                reports.append(part)
    return merge_reports(reports)
