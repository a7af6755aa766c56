"""The command-line arguments the interleaved harnesses share (bench/audit_chain.py,
bench/auth_overhead.py): the data set's size, the runs' shape, where the section goes."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_common(parser: argparse.ArgumentParser, *, kind: str, quick: str, runs: str,
               docs: Path) -> None:
    """--quick/--runs (helps given), --seconds, --connections, --patients, --observations,
    --docs/--no-docs, --keep-work, --render and --out; `kind` names the working stores and
    the results files (bench/results/<kind>-<timestamp>.json)."""
    parser.add_argument("--quick", action="store_true", help=quick)
    parser.add_argument("--runs", type=int, help=runs)
    parser.add_argument("--seconds", type=float, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, help="wrk connections")
    parser.add_argument("--patients", type=int, help="override the data set's patient count")
    parser.add_argument("--observations", type=int, help="override Observations per patient")
    parser.add_argument("--docs", action="store_true",
                        help="also write docs/performance.md in quick mode")
    parser.add_argument("--no-docs", action="store_true",
                        help="never write docs/performance.md (results only)")
    parser.add_argument("--keep-work", action="store_true",
                        help=f"keep the working stores under bench/.cache/{kind}-work-*")
    parser.add_argument("--render", type=Path, metavar="RESULTS_JSON",
                        help="measure nothing: write the section of a saved run "
                             f"(bench/results/{kind}-<timestamp>.json) into --out again")
    parser.add_argument("--out", type=Path, default=docs,
                        help="the document --render writes (default docs/performance.md)")


def size_overrides(parser: argparse.ArgumentParser, args: argparse.Namespace, *,
                   min_runs: int, why: str,
                   extra: tuple[tuple[str, str, float | None], ...] = ()) -> dict[str, Any]:
    """The config fields the common arguments (and `extra`: (field, flag, value) after
    --connections) override; each must be positive, and --runs at least `min_runs` (`why`)."""
    named = [("runs", "--runs", args.runs), ("seconds", "--seconds", args.seconds),
             ("connections", "--connections", args.connections), *extra,
             ("patients", "--patients", args.patients),
             ("observations_per_patient", "--observations", args.observations)]
    overrides = {field: value for field, _, value in named if value is not None}
    if any(v <= 0 for v in overrides.values()):
        flags = [flag for _, flag, _ in named]
        parser.error(f"{', '.join(flags[:-1])} and {flags[-1]} must be positive")
    if overrides.get("runs", min_runs) < min_runs:
        parser.error(f"--runs must be at least {min_runs} ({why})")
    return overrides
