"""kill -9 of the anchoring worker mid-drain loses and doubles nothing (issue 5, Pipeline).

The worker runs in its own process on a database full of queued accesses and is killed with
SIGKILL while it sends; a second process is started and killed the same way; then a fresh worker
finishes. Every row must end confirmed exactly once, at the chain log that carries its entry.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from app.chain.anchorer import Anchorer
from app.chain.deploy import connect
from app.chain.devchain import REPO_ROOT, DevChain
from app.chain.node import ChainHandle
from app.config import Settings
from tests.chain.anchoring import (
    assert_anchored_once,
    db_rows,
    drain,
    make_db,
    new_handle,
    outstanding,
    queue_accesses,
)
from tests.conftest import make_settings

WORKER = """
import asyncio, json, os
from pathlib import Path
from eth_account import Account
from app.chain.anchorer import Anchorer
from app.chain.node import ChainHandle
from app.config import Settings

spec = json.loads(os.environ["ANCHORER_SPEC"])
handle = ChainHandle(rpc_url=spec["rpc_url"], chain_id=spec["chain_id"],
                     genesis_hash=spec["genesis_hash"], account=Account.from_key(spec["key"]),
                     contracts=spec["contracts"], epoch=1, poa=False,
                     code_hashes=spec["code_hashes"])
settings = Settings(var_dir=Path(spec["var_dir"]), chain="off", anchor_batch_size=200,
                    anchor_interval_ms=20)
asyncio.run(Anchorer(Path(spec["db"]), settings, lambda: handle).run())
"""


def worker_env(handle: ChainHandle, var_dir: Path, db: Path) -> dict[str, str]:
    """The environment of a worker process: this test's chain handle, settings and database."""
    spec = {"rpc_url": handle.rpc_url, "chain_id": handle.chain_id,
            "genesis_hash": handle.genesis_hash, "key": handle.account.key.hex(),
            "contracts": handle.contracts, "code_hashes": handle.code_hashes,
            "var_dir": str(var_dir), "db": str(db)}
    return {**os.environ, "ANCHORER_SPEC": json.dumps(spec)}


def in_flight(db: Path) -> int:
    return int(db_rows(db, "SELECT count(*) FROM chain_batch WHERE state = 'sent'")[0][0])


def confirmed_entries(db: Path) -> int:
    (n,) = db_rows(db, "SELECT coalesce(sum(entries), 0) FROM chain_batch "
                   "WHERE state = 'confirmed'")[0]
    return int(n)


def take_over_and_drain(db: Path, settings: Settings, handle: ChainHandle) -> None:
    """A new worker waits for the dead one's lease to expire, then anchors everything left."""
    survivor = Anchorer(db, settings, lambda: handle)
    try:
        deadline = time.monotonic() + 30
        while asyncio.run(survivor.run_once()) == 0 and outstanding(db):
            assert time.monotonic() < deadline, "the dead worker's lease never expired"
            time.sleep(0.2)
        drain(survivor, db)
    finally:
        survivor.close()


def test_workers_killed_mid_drain_leave_every_access_anchored_exactly_once(
        tmp_path: Path, chain: DevChain) -> None:
    db = make_db(tmp_path / "yilian.sqlite3")
    entries = queue_accesses(db, 12_000)
    handle = new_handle(chain.url)
    env = worker_env(handle, tmp_path / "var", db)

    killed_with: list[int] = []
    for kill in range(2):
        before = confirmed_entries(db)
        worker = subprocess.Popen([sys.executable, "-c", WORKER], cwd=REPO_ROOT, env=env)
        try:
            deadline = time.monotonic() + 60
            # Kill once it is well into the drain (it has confirmed some batches of this run)
            # and while it has transactions in flight.
            while (confirmed_entries(db) < before + 1000 + 600 * kill
                   or not in_flight(db)):
                assert worker.poll() is None, "the worker exited on its own"
                assert time.monotonic() < deadline, "the worker made no progress"
                time.sleep(0.01)
        finally:
            os.kill(worker.pid, signal.SIGKILL)
            worker.wait()
        assert worker.returncode == -signal.SIGKILL
        assert outstanding(db) > 0, "the worker finished before it was killed"
        killed_with.append(in_flight(db))

    take_over_and_drain(db, make_settings(tmp_path, anchor_batch_size=200,
                                          anchor_interval_ms=20), handle)
    print(f"\nbatches in flight at each kill: {killed_with}")
    assert_anchored_once(db, connect(chain.url, poa=False), handle, entries)
    assert db_rows(db, "SELECT count(*) FROM chain_batch WHERE state != 'confirmed'") == [(0,)]


def test_a_worker_killed_while_the_chain_is_down_loses_nothing_when_both_come_back(
        tmp_path: Path) -> None:
    dev = DevChain(state_file=tmp_path / "anvil-state.json", state_interval=1).start()
    try:
        db = make_db(tmp_path / "yilian.sqlite3")
        entries = queue_accesses(db, 6_000)
        handle = new_handle(dev.url)
        worker = subprocess.Popen([sys.executable, "-c", WORKER], cwd=REPO_ROOT,
                                  env=worker_env(handle, tmp_path / "var", db))
        try:
            deadline = time.monotonic() + 60
            while confirmed_entries(db) < 1000:
                assert worker.poll() is None and time.monotonic() < deadline
                time.sleep(0.01)
            dev.stop()  # the chain goes away mid-drain; accesses keep coming
            entries += queue_accesses(db, 500, start=6_000)
            time.sleep(1.0)
            assert worker.poll() is None, "the worker must survive the outage"
        finally:
            os.kill(worker.pid, signal.SIGKILL)
            worker.wait()
        assert outstanding(db) > 500
        dev.start()

        take_over_and_drain(db, make_settings(tmp_path, anchor_batch_size=200), handle)
        assert_anchored_once(db, connect(dev.url, poa=False), handle, entries)
    finally:
        dev.stop()
