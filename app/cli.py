"""The `yilian` command: serve the FHIR server, import hospital exports, and manage SMART
authorization state (clients, users, signing keys)."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys

from app.audit.commands import add_audit_commands
from app.auth.commands import AUTH_COMMANDS, UsageError, add_auth_commands
from app.cnemr.datasets import DATASETS as DATASET_NAMES
from app.config import Settings
from app.heap import freeze_startup_heap


def _serve(args: argparse.Namespace) -> int:
    import uvicorn
    from web3.exceptions import Web3Exception

    from app.chain.deploy import DeployError
    from app.chain.devchain import DevChain, DevChainError, stop_process
    from app.chain.node import ChainError, describe, start_chain

    overrides = {k: v for k, v in (("host", args.host), ("port", args.port),
                                   ("workers", args.workers)) if v is not None}
    settings = Settings(**overrides)
    # uvicorn's workers build their Settings from the environment: hand the overrides on
    for key, value in overrides.items():
        os.environ[f"YILIAN_{key.upper()}"] = str(value)
    from app.auth.authorizer import check_dev_flag

    banner = check_dev_flag(settings)  # SystemExit: auth=off on a non-loopback host
    settings.var_dir.mkdir(parents=True, exist_ok=True)
    # SIGTERM before or after uvicorn (which re-raises it once it has shut down) must unwind
    # through the `finally` below, so that anvil is stopped and writes its state.
    signal.signal(signal.SIGTERM, _raise_stop)
    dev: DevChain | None = None
    anchoring: subprocess.Popen[bytes] | None = None
    try:
        if settings.chain != "off":
            try:
                dev, handle = start_chain(settings)
            except (ChainError, DevChainError, DeployError, Web3Exception, OSError) as exc:
                print(f"yilian serve: the chain ({settings.chain}) is not usable: {exc}",
                      file=sys.stderr, flush=True)
                return 1
            print(describe(settings, dev, handle), flush=True)
            if settings.audit == "on":
                anchoring = _start_anchor_process()
        demo_lines: list[str] = []
        if settings.demo:
            _load_demo(settings)
            demo_lines = _seed_demo_auth(settings)
        print(f"Yilian FHIR R4 server on http://{settings.host}:{settings.port}/fhir "
              f"(store: {settings.store} under {settings.var_dir}/); Ctrl-C stops it",
              flush=True)
        if demo_lines:
            print("\n".join(demo_lines), flush=True)
        if banner is not None:
            _print_banner(banner)
        uvicorn.run("app.asgi:app", host=settings.host, port=settings.port,
                    workers=settings.workers, log_level=settings.log_level,
                    access_log=False, factory=False)
    except _StopSignal:
        return 0
    except KeyboardInterrupt:
        return 130
    finally:
        if anchoring is not None:
            stop_process(anchoring)
        if dev is not None:
            dev.stop()
    return 0


def _start_anchor_process() -> subprocess.Popen[bytes]:
    """`yilian anchor` beside the uvicorn workers, which then leave anchoring to it."""
    os.environ["YILIAN_ANCHOR_IN_WORKERS"] = "false"
    from app.chain.devchain import niced

    # niced from its start: answering requests comes first (app/chain/node.py)
    return subprocess.Popen(niced([sys.executable, "-m", "app.cli", "anchor"]),
                            stdin=subprocess.DEVNULL)


def _anchor(args: argparse.Namespace) -> int:
    """Run the anchoring worker in this process until SIGTERM or Ctrl-C (settings from
    YILIAN_* variables; it takes the lease, so it can run beside workers that anchor too)."""
    import asyncio
    import contextlib
    import logging
    import sqlite3

    from app.chain.anchorer import Anchorer
    from app.chain.handles import HandleSource
    from app.storage.sqlite_schema import AUDIT_SCHEMA

    settings = Settings()
    if settings.chain == "off":
        print("yilian anchor: YILIAN_CHAIN is off: nothing to anchor on", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(levelname)s:     %(name)s %(message)s")
    settings.var_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.closing(sqlite3.connect(settings.audit_path, timeout=30)) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript(AUDIT_SCHEMA)
    anchorer = Anchorer(settings.audit_path, settings, HandleSource(settings))
    freeze_startup_heap()  # web3 and the contracts' ABIs: kept for the process's life

    async def run() -> None:
        task = asyncio.create_task(anchorer.run())
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await task

    try:
        asyncio.run(run())
    finally:
        anchorer.close()
    return 0


class _StopSignal(Exception):
    """SIGTERM arrived: stop serving and shut down cleanly."""


def _raise_stop(signum: int, frame: object) -> None:
    raise _StopSignal(signum)


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


def _seed_demo_auth(settings: Settings) -> list[str]:
    """Demo accounts and the demo app (app/auth/demo.py); the lines telling how to sign in."""
    from contextlib import closing

    from app.auth.demo import seed_demo_auth
    from app.auth.sqlite_store import SqliteAuthStore

    with closing(SqliteAuthStore.in_var_dir(settings.var_dir)) as store:
        return seed_demo_auth(store, settings.base_url, settings.var_dir)


def _print_banner(text: str) -> None:
    """A banner that cannot be missed: red and framed on a terminal, framed otherwise."""
    rule = "!" * 78
    body = f"{rule}\n!! {text}\n{rule}"
    if sys.stdout.isatty():
        body = f"\033[1;31m{body}\033[0m"
    print(body, flush=True)


def _import(args: argparse.Namespace) -> int:
    """`yilian import`: exit 0 when every row was imported, 1 when any was rejected, 2 on a
    problem with the command itself (mapping file, manifest, hospital OID)."""
    import asyncio
    from pathlib import Path

    from app.cnemr.context import Hospital
    from app.cnemr.importer import (
        DATA_ELEMENTS,
        Importer,
        ImportReport,
        count_rows,
        merge_reports,
        print_progress,
        summary,
    )
    from app.cnemr.manifest import load_manifest
    from app.cnemr.mapping import ColumnMapping, MappingError, load_mapping

    steps: list[tuple[ColumnMapping, tuple[Path, ...]]]
    try:
        if args.manifest:
            if args.dataset or args.mapping or args.paths:
                raise MappingError("--manifest names the mappings and files itself; do not "
                                   "also give --dataset, --mapping or export files")
            manifest = load_manifest(Path(args.manifest), DATA_ELEMENTS)
            steps = list(manifest.steps)
            oid = args.hospital_oid or manifest.hospital_oid
        else:
            if not (args.dataset and args.mapping and args.paths):
                raise MappingError("give --dataset, --mapping and the export files, or "
                                   "--manifest")
            mapping = load_mapping(Path(args.mapping), DATA_ELEMENTS)
            if mapping.dataset != args.dataset:
                raise MappingError(f"{args.mapping} maps dataset {mapping.dataset!r}, "
                                   f"not {args.dataset!r}")
            steps = [(mapping, tuple(Path(p) for p in args.paths))]
            oid = args.hospital_oid
        if not oid:
            raise MappingError("--hospital-oid is required (or hospital_oid in the manifest)")
        hospital = Hospital(oid)
    except (MappingError, ValueError) as exc:
        print(f"yilian import: {exc}", file=sys.stderr)
        return 2

    settings = Settings()
    jobs = max(1, args.jobs)
    progress = print_progress(sum(count_rows(paths, mapping) for mapping, paths in steps)) \
        if sys.stderr.isatty() else None

    async def prepare() -> None:
        from app.pipeline.hooks import Hooks
        from app.server import build_service, seed_conformance

        service, profiles = build_service(settings, Hooks())
        await service.store.start()
        try:
            await seed_conformance(service.store, profiles)
        finally:
            await service.store.close()

    async def in_process() -> ImportReport:
        from app.pipeline.hooks import Hooks
        from app.server import build_service

        service, _ = build_service(settings, Hooks())
        await service.store.start()
        try:
            importer = Importer(service, hospital, progress)
            parts = [await importer.import_files(mapping, paths) for mapping, paths in steps]
        finally:
            await service.store.close()
        return merge_reports(parts)

    asyncio.run(prepare())
    if jobs == 1:
        report = asyncio.run(in_process())
    else:
        from app.cnemr.parallel import import_parallel
        report = import_parallel(settings, hospital, steps, jobs, progress)
    if progress is not None:
        print(file=sys.stderr)
    report_path = Path(args.report)
    report.write_csv(report_path)
    print(summary(report))
    print(f"report: {report_path}")
    return 1 if report.rows_rejected else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="yilian", description="Yilian (医链) FHIR R4 server")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve the FHIR API (settings from YILIAN_* variables)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--workers", type=int)
    serve.set_defaults(func=_serve)
    anchor = sub.add_parser("anchor", help="run the anchoring worker (yilian serve starts one; "
                            "more are safe: one anchors at a time)")
    anchor.set_defaults(func=_anchor)
    imp = sub.add_parser("import", help="import a hospital export (CSV/TSV in UTF-8, GBK or "
                         "GB18030, XLSX, JSON Lines) of a Chinese EMR dataset, or a whole "
                         "daily export described by a manifest")
    imp.add_argument("--dataset", choices=sorted(DATASET_NAMES))
    imp.add_argument("--mapping",
                     help="YAML column mapping (see app/cnemr/mappings/ for examples)")
    imp.add_argument("--manifest",
                     help="YAML list of (mapping, files) steps imported in order with one pool "
                          "of workers (see app/cnemr/manifest.py)")
    imp.add_argument("--hospital-oid",
                     help="the hospital's organisation OID, e.g. 2.16.156.10011.1.5.110000001")
    imp.add_argument("--report", default="import-report.csv",
                     help="where to write every rejected row and doubtful value (CSV)")
    imp.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                     help="worker processes (default: one per CPU core)")
    imp.add_argument("paths", nargs="*", help="export files")
    imp.set_defaults(func=_import)
    add_auth_commands(sub)
    add_audit_commands(sub)
    args = parser.parse_args(argv)
    if args.command not in AUTH_COMMANDS:
        result: int = args.func(args)
        return result
    try:
        result = args.func(args)
    except (UsageError, ValueError) as exc:
        # ValueError: record and metadata validation (ClientError, PasswordPolicyError,
        # DuplicateError...), whose messages name the field and the rule
        print(f"yilian {args.command}: {exc}", file=sys.stderr)
        return 2
    return result


if __name__ == "__main__":
    sys.exit(main())
