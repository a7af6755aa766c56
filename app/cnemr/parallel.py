"""Importing on every core: worker processes, each with its own store connection.

Validation (fhir.resources) is CPU-bound Python, so one process uses one core. The rows of a file
are read once, cut into stretches of at most `SHARD_ROWS` rows that keep each row group (a
report, a prescription) whole, and each stretch is mapped, validated and written by whichever
worker is free, so the workers stay busy to the end and the progress bar moves as stretches
finish. SQLite serialises the short write transactions across processes exactly as it does for
several uvicorn workers.

One pool serves every (mapping, files) step of an import, so a daily export of several tables
starts its workers once. Steps run in the order given (patients before the visits that point
at them); the files of one step are imported together.
"""

from __future__ import annotations

import asyncio
import multiprocessing
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any

from app.cnemr.context import Hospital
from app.cnemr.importer import Importer, ImportReport, merge_reports, read_rows, shard_rows
from app.cnemr.mapping import ColumnMapping
from app.config import Settings
from app.pipeline.hooks import Hooks

SHARD_ROWS = 5000


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


def import_parallel(settings: Settings, hospital: Hospital,
                    steps: Sequence[tuple[ColumnMapping, Sequence[Path]]], jobs: int,
                    progress: Callable[[int], None] | None = None) -> ImportReport:
    """Import each step's files with `jobs` worker processes (the store must exist and be
    seeded); `progress` hears how many rows each finished stretch held."""
    reports: list[ImportReport] = []
    # spawn, not fork: a forked child would inherit the parent's open SQLite handles.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        for mapping, paths in steps:
            futures: list[tuple[Future[ImportReport], int]] = []
            for path in paths:
                read = ImportReport()
                rows = read_rows(mapping, path, read)
                reports.append(read)
                if progress is not None and read.rows_read > len(rows):
                    progress(read.rows_read - len(rows))  # unreadable lines: done already
                shards = max(jobs, -(-len(rows) // SHARD_ROWS))
                for shard in shard_rows(mapping, rows, shards):
                    futures.append((pool.submit(_work, settings.model_dump(), hospital,
                                                mapping, str(path), shard), len(shard)))
            for future, size in futures:
                part = future.result()
                part.rows_read = 0  # counted once, when the file was read
                reports.append(part)
                if progress is not None:
                    progress(size)
    return merge_reports(reports)
