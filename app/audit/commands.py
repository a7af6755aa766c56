"""`yilian audit verify`: check every AuditEvent, anchored resource version and consent decision
in the store against the chain, without the running server (app/audit/verify.py).

Exit status: 0 everything checked is on chain as recorded (entries still waiting in the outbox
are counted as pending, not as problems); 1 a missing, altered or extra entry was found; 2 the
command could not run (bad arguments, no database or secret, chain unreachable).
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.config import Settings

if TYPE_CHECKING:
    from app.audit.hashing import Keyer


class AuditUsageError(Exception):
    """A problem with the command itself: one line on stderr, exit status 2."""


def add_audit_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    audit = sub.add_parser("audit", help="the audit trail and its chain anchors")
    asub = audit.add_subparsers(dest="audit_command", required=True)
    verify = asub.add_parser(
        "verify", help="check every AuditEvent (or a range), resource version and consent "
        "decision in the database against the chain; report missing, altered and extra entries")
    verify.add_argument("--var-dir", type=Path,
                        help="the server's var directory (default: YILIAN_VAR_DIR or ./var)")
    verify.add_argument("--rpc", help="JSON-RPC URL of the chain (default: rpc_url of "
                        "<var>/chain/deployment.json, else YILIAN_CHAIN_RPC)")
    verify.add_argument("--from-seq", type=int, help="first audit row (seq) to check")
    verify.add_argument("--to-seq", type=int, help="last audit row (seq) to check")
    verify.add_argument("--audit-log", action="append", default=[],
                        help="an AuditLog address known from the consortium (repeatable); its "
                             "entries by our writers must all be in the database")
    verify.add_argument("--writer", action="append", default=[],
                        help="a writer address of this hospital's node (repeatable)")
    verify.add_argument("--timeout", type=float, default=10.0,
                        help="seconds per JSON-RPC call (default 10)")
    verify.add_argument("--json", action="store_true", help="print the report as JSON")
    verify.set_defaults(func=_audit_verify)


def _deployment(var_dir: Path) -> dict[str, Any]:
    path = var_dir / "chain" / "deployment.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise AuditUsageError(f"{path} is not readable JSON: {exc}") from None
    if not isinstance(data, dict):
        raise AuditUsageError(f"{path} must hold a JSON object")
    return data


def _keyer(var_dir: Path) -> Keyer:
    """The server's keyer; never creates a secret (a new one would verify nothing)."""
    from app.audit.hashing import Keyer, load_secret

    path = var_dir / "audit" / "secret"
    if not path.is_file():
        raise AuditUsageError(f"{path} is missing: the server secret is needed to recompute "
                              "the keyed hashes of resource versions")
    try:
        return Keyer(load_secret(path))
    except (OSError, ValueError) as exc:
        raise AuditUsageError(f"{path}: {exc}") from None


def _audit_verify(args: argparse.Namespace) -> int:
    from app.audit.verify import ChainError, ChainReader, verify_database

    try:
        if args.from_seq is not None and args.to_seq is not None and args.from_seq > args.to_seq:
            raise AuditUsageError(f"--from-seq {args.from_seq} is after --to-seq {args.to_seq}")
        settings = Settings(var_dir=args.var_dir) if args.var_dir else Settings()
        deployment = _deployment(settings.var_dir)
        rpc_url = args.rpc or deployment.get("rpc_url") or settings.chain_rpc
        if not rpc_url:
            raise AuditUsageError("no chain to check against: give --rpc, or run the server "
                                  "once so var/chain/deployment.json names it")
        keyer = _keyer(settings.var_dir)
        audit_logs = list(args.audit_log)
        contracts = deployment.get("contracts")
        if isinstance(contracts, dict) and isinstance(contracts.get("AuditLog"), str):
            audit_logs.append(contracts["AuditLog"])
        report = verify_database(settings.audit_path, keyer,
                                 ChainReader(str(rpc_url), timeout=args.timeout),
                                 from_seq=args.from_seq, to_seq=args.to_seq,
                                 audit_logs=audit_logs, writers=args.writer,
                                 store_db=settings.sqlite_path)
    except ChainError as exc:
        print(f"yilian audit verify: {exc}\n(is the chain running? The dev chain runs while "
              "`yilian serve` does; --rpc names another endpoint)", file=sys.stderr)
        return 2
    except (AuditUsageError, FileNotFoundError, sqlite3.Error) as exc:
        print(f"yilian audit verify: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        counts = report.counts
        print(f"chain {report.chain_id} at {report.rpc_url}: checked {counts['checked']}, "
              f"verified {counts['verified']}, pending {counts['pending']}, "
              f"missing {counts['missing']}, altered {counts['altered']}, "
              f"extra {counts['extra']}"
              + (f" (entries of other nodes: {report.foreign})" if report.foreign else ""))
        for problem in report.problems:
            # the database is untrusted: an id may hold bytes that are not UTF-8
            print(str(problem).encode("utf-8", "backslashreplace").decode())
        print("OK: every checked entry is on chain as recorded" if report.ok
              else f"PROBLEMS: {len(report.problems)}")
    return 0 if report.ok else 1
