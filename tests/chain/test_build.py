"""contracts/build/ is what the pinned solc makes of contracts/*.sol (issue 5)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from app.chain.artifacts import BUILD_DIR, CONTRACTS, load_artifact


@pytest.mark.skipif(shutil.which("node") is None, reason="Node.js is needed to run solc")
def test_committed_artifacts_match_a_fresh_compile() -> None:
    result = subprocess.run(["node", str(BUILD_DIR.parent / "compile.mjs"), "--check"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_every_contract_has_an_artifact_from_the_pinned_compiler() -> None:
    for name in CONTRACTS:
        art = load_artifact(name)
        assert art.solc.startswith("0.8.37+"), art.solc
        assert art.bytecode.startswith("0x60") and len(art.deployed_bytecode) > 2
