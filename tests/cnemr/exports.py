"""Writing small hospital export files for importer tests, and importing them into a fresh store."""

from __future__ import annotations

import asyncio
import csv
import io
from pathlib import Path
from typing import Any

import orjson

from app.cnemr.context import Hospital
from app.cnemr.importer import DATA_ELEMENTS, Importer, ImportReport
from app.cnemr.mapping import load_mapping
from app.pipeline.hooks import Hooks
from app.server import build_service
from app.storage.base import HistoryQuery
from tests.conftest import make_settings

Resource = dict[str, Any]
MAPPINGS = Path(__file__).resolve().parents[2] / "app" / "cnemr" / "mappings"


def write_csv(path: Path, header: list[str], rows: list[list[str]],
              encoding: str = "utf-8") -> Path:
    """A CSV export with a header row, in the encoding the hospital's system writes."""
    buf = io.StringIO()
    csv.writer(buf).writerows([header, *rows])
    path.write_bytes(buf.getvalue().encode(encoding))
    return path


def import_export(tmp: Path, mapping_name: str, files: list[Path], hospital: Hospital
                  ) -> tuple[ImportReport, dict[tuple[str, str], Resource]]:
    """Import export files with a shipped mapping into a fresh store under `tmp`, through the
    real FhirService; the report, and every resource the store then holds (current version)
    by (resourceType, id)."""

    async def go() -> tuple[ImportReport, dict[tuple[str, str], Resource]]:
        service, _ = build_service(make_settings(tmp), Hooks())
        await service.store.start()
        try:
            mapping = load_mapping(MAPPINGS / mapping_name, DATA_ELEMENTS)
            report = await Importer(service, hospital).import_files(mapping, files)
            history = await service.store.history(HistoryQuery(count=100_000))
            assert history.total == len(history.versions), "more versions than one page"
            stored: dict[tuple[str, str], Resource] = {}
            for key in {(v.type, v.id) for v in history.versions}:
                current = await service.store.read(*key)
                if current is not None and not current.deleted:
                    stored[key] = orjson.loads(current.body)
            return report, stored
        finally:
            await service.store.close()

    return asyncio.run(go())


def import_of_types(tmp: Path, mapping_name: str, files: list[Path], hospital: Hospital,
                    *types: str) -> tuple[ImportReport, list[Resource]]:
    """`import_export`, keeping the stored resources of `types`, in that type order, each type
    by id."""
    report, stored = import_export(tmp, mapping_name, files, hospital)
    return report, [stored[key] for t in types for key in sorted(k for k in stored if k[0] == t)]


def without_version(resource: Resource) -> Resource:
    """A stored resource without meta.versionId and meta.lastUpdated, which the store sets on
    every write; the rest of meta (profile, tag …) is content and stays."""
    meta = {k: v for k, v in resource.get("meta", {}).items()
            if k not in ("versionId", "lastUpdated")}
    out = {k: v for k, v in resource.items() if k != "meta"}
    if meta:
        out["meta"] = meta
    return out
