"""A hospital's daily export as one import: which mapping reads which files, in which order.

    # 每日导出 (paths are relative to this file)
    hospital_oid: 2.16.156.10011.1.5.110000001   # optional when --hospital-oid is given
    steps:                                        # imported in this order
      - mapping: patient-shouye                   # a shipped mapping (app/cnemr/mappings/)
        files: [basy.csv]                         #   or a path to the hospital's own file
      - mapping: mappings/mz_gh.yaml
        files: [mz_gh_20261120.csv, mz_gh_20261121.csv]

`yilian import --manifest daily.yaml` imports every step with one pool of workers, patients
before the visits and results that point at them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from app.cnemr.mapping import ColumnMapping, MappingError, load_mapping

SHIPPED = Path(__file__).resolve().parent / "mappings"


@dataclass(frozen=True)
class Manifest:
    hospital_oid: str | None
    steps: tuple[tuple[ColumnMapping, tuple[Path, ...]], ...]


def _mapping_path(name: str, base: Path) -> Path:
    own = base / name
    if own.is_file():
        return own
    shipped = SHIPPED / (name if name.endswith((".yaml", ".yml")) else f"{name}.yaml")
    if shipped.is_file():
        return shipped
    raise MappingError(f"mapping {name!r}: neither {own} nor a shipped mapping of that name "
                       f"(shipped: {', '.join(sorted(p.stem for p in SHIPPED.glob('*.yaml')))})")


def load_manifest(path: Path, known_elements: dict[str, frozenset[str]]) -> Manifest:
    """Read and check a manifest; every mapping is loaded and every file must exist."""
    try:
        data: Any = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise MappingError(f"{path}: cannot read the manifest: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("steps"), list) or \
            not data["steps"]:
        raise MappingError(f"{path}: a manifest is a YAML mapping with a non-empty list "
                           "`steps`, each step a `mapping` and its `files`")
    base = path.parent
    steps: list[tuple[ColumnMapping, tuple[Path, ...]]] = []
    for i, step in enumerate(data["steps"], start=1):
        if not isinstance(step, dict) or not isinstance(step.get("mapping"), str):
            raise MappingError(f"{path}: step {i} needs `mapping` (a file or a shipped name)")
        files = step.get("files")
        if isinstance(files, str):
            files = [files]
        if not isinstance(files, list) or not files or \
                not all(isinstance(f, str) for f in files):
            raise MappingError(f"{path}: step {i} needs `files`, a list of export files")
        paths = tuple(base / f for f in files)
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise MappingError(f"{path}: step {i}: no such file: {', '.join(missing)}")
        mapping = load_mapping(_mapping_path(step["mapping"], base), known_elements)
        steps.append((mapping, paths))
    oid = data.get("hospital_oid")
    if oid is not None and not isinstance(oid, str):
        raise MappingError(f"{path}: hospital_oid must be a string such as "
                           "'2.16.156.10011.1.5.110000001' (quote it in YAML)")
    return Manifest(oid, tuple(steps))
