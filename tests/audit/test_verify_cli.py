"""`yilian audit verify` end to end: a separate process, the store file, the chain (issue 5)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from app.chain.devchain import REPO_ROOT, free_loopback_port
from tests.audit.conftest import Store, fill


def yilian(*args: str, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("YILIAN_")}
    return subprocess.run([sys.executable, "-m", "app.cli", "audit", "verify", *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_the_command_exits_0_when_everything_verifies_and_1_on_an_altered_entry(
        store: Store) -> None:
    info = fill(store)
    rpc = store.rpc_url
    done = yilian("--var-dir", str(store.var_dir), "--rpc", rpc)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "checked 19, verified 17, pending 2, missing 0, altered 0, extra 0" in done.stdout
    assert "OK: every checked entry is on chain as recorded" in done.stdout

    store.conn.execute("UPDATE audit SET body = replace(body, '10.12.3.45', '10.12.3.46') "
                       "WHERE seq = ?", (info["seqs"][2],))
    done = yilian("--var-dir", str(store.var_dir), "--rpc", rpc)
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"altered: AuditEvent/ae-000002 (seq {info['seqs'][2]})" in done.stdout

    done = yilian("--var-dir", str(store.var_dir), "--rpc", rpc, "--json")
    report = json.loads(done.stdout)
    assert done.returncode == 1
    assert report["counts"]["altered"] == 1 and report["ok"] is False
    assert report["problems"][0]["subject"] == "AuditEvent/ae-000002"

    # a range that leaves the altered row out
    done = yilian("--var-dir", str(store.var_dir), "--rpc", rpc,
                  "--from-seq", str(info["seqs"][3]), "--to-seq", str(info["seqs"][8]))
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_chain_comes_from_the_deployment_record(store: Store) -> None:
    fill(store)
    (store.var_dir / "chain").mkdir()
    (store.var_dir / "chain" / "deployment.json").write_text(json.dumps({
        "rpc_url": store.rpc_url, "chain_id": 31337,
        "contracts": {"AuditLog": store.chain.audit_log.address}}))
    done = yilian("--var-dir", str(store.var_dir))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"chain 31337 at {store.rpc_url}" in done.stdout


def test_usage_problems_and_an_unreachable_chain_exit_2(store: Store, tmp_path: Path) -> None:
    fill(store)
    url = f"http://127.0.0.1:{free_loopback_port()}"
    done = yilian("--var-dir", str(store.var_dir), "--rpc", url, "--timeout", "2")
    assert done.returncode == 2
    assert done.stderr.startswith(f"yilian audit verify: eth_chainId failed on {url}")
    assert "Traceback" not in done.stderr

    done = yilian("--var-dir", str(tmp_path / "nowhere"), "--rpc", url)
    assert (done.returncode, "Traceback" in done.stderr) == (2, False)
    assert "secret is missing" in done.stderr or "no such database" in done.stderr

    done = yilian("--var-dir", str(store.var_dir), "--rpc", store.rpc_url,
                  "--from-seq", "9", "--to-seq", "3")
    assert done.returncode == 2 and "--from-seq 9 is after --to-seq 3" in done.stderr
