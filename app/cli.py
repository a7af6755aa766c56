"""The `yilian` command: serve the FHIR server (more subcommands come with later parts)."""

from __future__ import annotations

import argparse
import os
import sys

from app.cnemr.datasets import DATASETS as DATASET_NAMES
from app.config import Settings


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    overrides = {k: v for k, v in (("host", args.host), ("port", args.port),
                                   ("workers", args.workers)) if v is not None}
    settings = Settings(**overrides)
    settings.var_dir.mkdir(parents=True, exist_ok=True)
    if settings.demo:
        _load_demo(settings)
    print(f"Yilian FHIR R4 server on http://{settings.host}:{settings.port}/fhir "
          f"(store: {settings.store} under {settings.var_dir}/); Ctrl-C stops it", flush=True)
    uvicorn.run("app.asgi:app", host=settings.host, port=settings.port,
                workers=settings.workers, log_level=settings.log_level,
                access_log=False, factory=False)
    return 0


def _load_demo(settings: Settings) -> None:
    """Load the demo hospital before the server starts (only into an empty store)."""
    import asyncio

    from app.pipeline.hooks import Hooks
    from app.samples.demo import load_demo_if_empty
    from app.server import build_service, seed_conformance

    async def run() -> int:
        service, profiles = build_service(settings, Hooks())
        await service.store.start()
        try:
            await seed_conformance(service.store, profiles)
            return await load_demo_if_empty(service)
        finally:
            await service.store.close()

    written = asyncio.run(run())
    if written:
        print(f"loaded the demo hospital: {written} resources (YILIAN_DEMO=false to skip)",
              flush=True)


def _import(args: argparse.Namespace) -> int:
    """`yilian import`: exit 0 when every row was imported, 1 when any was rejected, 2 on a
    problem with the command itself (mapping file, hospital OID)."""
    import asyncio
    from pathlib import Path

    from app.cnemr.context import Hospital
    from app.cnemr.importer import DATA_ELEMENTS, Importer, count_rows, print_progress, summary
    from app.cnemr.mapping import MappingError, load_mapping
    from app.cnemr.parallel import import_parallel
    from app.pipeline.hooks import Hooks
    from app.server import build_service, seed_conformance

    try:
        mapping = load_mapping(Path(args.mapping), DATA_ELEMENTS)
        hospital = Hospital(args.hospital_oid)
    except (MappingError, ValueError) as exc:
        print(f"yilian import: {exc}", file=sys.stderr)
        return 2
    if mapping.dataset != args.dataset:
        print(f"yilian import: {args.mapping} maps dataset {mapping.dataset!r}, "
              f"not {args.dataset!r}", file=sys.stderr)
        return 2
    paths = [Path(p) for p in args.paths]

    settings = Settings()
    jobs = max(1, args.jobs)

    async def run() -> int:
        service, profiles = build_service(settings, Hooks())
        await service.store.start()
        progress = None
        try:
            await seed_conformance(service.store, profiles)
            if jobs == 1:
                progress = print_progress(count_rows(paths, mapping)) \
                    if sys.stderr.isatty() else None
                report = await Importer(service, hospital, progress).import_files(mapping,
                                                                                  paths)
        finally:
            await service.store.close()
        if jobs > 1:
            report = import_parallel(settings, hospital, mapping, paths, jobs)
        if progress is not None:
            print(file=sys.stderr)
        report_path = Path(args.report)
        report.write_csv(report_path)
        print(summary(report))
        print(f"report: {report_path}")
        return 1 if report.rows_rejected else 0

    return asyncio.run(run())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="yilian", description="Yilian (医链) FHIR R4 server")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve the FHIR API (settings from YILIAN_* variables)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--workers", type=int)
    serve.set_defaults(func=_serve)
    imp = sub.add_parser("import", help="import a hospital export (CSV in UTF-8/GBK/GB18030, "
                         "JSON Lines) of a Chinese EMR dataset")
    imp.add_argument("--dataset", required=True, choices=sorted(DATASET_NAMES))
    imp.add_argument("--mapping", required=True,
                     help="YAML column mapping (see app/cnemr/mappings/ for examples)")
    imp.add_argument("--hospital-oid", required=True,
                     help="the hospital's organisation OID, e.g. 2.16.156.10011.1.5.110000001")
    imp.add_argument("--report", default="import-report.csv",
                     help="where to write every rejected row and doubtful value (CSV)")
    imp.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                     help="worker processes (default: one per CPU core)")
    imp.add_argument("paths", nargs="+", help="export files")
    imp.set_defaults(func=_import)
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
