"""Compiled contracts: the committed artifacts in contracts/build/ (`make contracts`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BUILD_DIR = Path(__file__).resolve().parents[2] / "contracts" / "build"
CONTRACTS = ("AuditLog", "ConsentRegistry", "Anchor")


@dataclass(frozen=True)
class Artifact:
    name: str
    abi: list[dict[str, Any]]
    bytecode: str
    deployed_bytecode: str
    solc: str


def load_artifact(name: str, build_dir: Path = BUILD_DIR) -> Artifact:
    path = build_dir / f"{name}.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} is missing: run `make contracts`") from None
    return Artifact(name=data["contractName"], abi=data["abi"], bytecode=data["bytecode"],
                    deployed_bytecode=data["deployedBytecode"], solc=data["compiler"]["solc"])
