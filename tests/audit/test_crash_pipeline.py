"""The chain goes down mid-load and the server is killed with SIGKILL while entries are queued:
when both come back, every access is on chain exactly once.

A real `yilian serve` (2 uvicorn workers) on an existing chain (`YILIAN_CHAIN_RPC`: an anvil the
test controls, with its state persisted, so the chain can be stopped and brought back).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import httpx
from eth_account import Account

from app.chain.devchain import DevChain, rpc
from app.storage.sqlite_audit import raw_path_of
from tests.conftest import patient
from tests.live_server import LiveServer

PATIENTS = [f"pat-{n:03d}" for n in range(20)]


class Load:
    """Reads of the patients by a few client threads until stopped; counts 200 answers."""

    def __init__(self, base_url: str, threads: int = 4) -> None:
        self.base_url = base_url
        self.ok = 0
        self.failed = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(n,)) for n in range(threads)]

    def _run(self, n: int) -> None:
        with httpx.Client(base_url=self.base_url, timeout=5.0) as client:
            i = n
            while not self._stop.is_set():
                try:
                    r = client.get(f"/Patient/{PATIENTS[i % len(PATIENTS)]}")
                except httpx.HTTPError:
                    with self._lock:
                        self.failed += 1
                    time.sleep(0.05)
                    continue
                with self._lock:
                    if r.status_code == 200:
                        self.ok += 1
                    else:
                        self.failed += 1
                i += 1

    def start(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(10)


def confirmed_and_total(db_path: Path) -> tuple[int, int]:
    """AuditEvents confirmed on chain, and every access recorded: AuditEvents and the reads'
    raw accesses not sealed yet (the raw file beside the audit file)."""
    with sqlite3.connect(db_path) as db:
        confirmed, sealed = db.execute(
            "SELECT sum(b.state IS 'confirmed'), count(*) FROM audit a "
            "LEFT JOIN chain_batch b ON b.id = a.batch").fetchone()
    raw_path = raw_path_of(db_path)
    raw = 0
    if raw_path.exists():
        with sqlite3.connect(raw_path) as db:
            raw = db.execute("SELECT count(*) FROM audit_raw").fetchone()[0]
    return confirmed or 0, sealed + raw


def test_chain_down_and_kill_9_lose_and_double_nothing(tmp_path: Path) -> None:
    state = tmp_path / "chain-state.json"
    chain = DevChain(state_file=state, state_interval=1).start()
    account = Account.create()
    key_file = tmp_path / "node.key"
    key_file.write_text(account.key.hex())
    key_file.chmod(0o600)
    rpc(chain.url, "anvil_setBalance", [account.address, hex(10**21)])
    server = LiveServer(tmp_path / "var", workers=2, env={
        "YILIAN_CHAIN": "rpc", "YILIAN_CHAIN_RPC": chain.url,
        "YILIAN_CHAIN_KEY_FILE": str(key_file), "YILIAN_ANCHOR_INTERVAL_MS": "50",
        "YILIAN_CHAIN_STATE_INTERVAL": "1"})
    db_path = tmp_path / "var" / "audit.sqlite3"
    try:
        server.start()
        with server.client() as c:
            for pid in PATIENTS:
                assert c.put(f"/Patient/{pid}", json=patient(pid, mrn=f"BA-{pid}")) \
                    .status_code == 201
        load = Load(server.base_url).start()
        time.sleep(2.0)
        chain.stop()  # the chain goes down mid-load (anvil writes its state on the way out)
        time.sleep(2.0)
        before_kill = load.ok
        assert before_kill > 0
        server.kill()  # kill -9 with entries queued
        load.stop()
        confirmed, total = confirmed_and_total(db_path)
        assert total - (confirmed or 0) > 0, "nothing was queued when the server died"
        chain = DevChain(port=chain.port, state_file=state, state_interval=1).start()
        server.start()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            confirmed, total = confirmed_and_total(db_path)
            if confirmed == total:
                break
            time.sleep(0.25)
        assert confirmed == total, f"{total - (confirmed or 0)} of {total} entries not anchored"
        with sqlite3.connect(db_path) as db:
            entries = [bytes(e) for (e,) in db.execute("SELECT entry FROM audit")]
            reads = db.execute("SELECT count(*) FROM audit WHERE action = 'R'").fetchone()[0]
            contracts = {a for (a,) in db.execute(
                "SELECT DISTINCT contract FROM chain_batch WHERE kind = 'access' "
                "AND state = 'confirmed'")}
        # every answered read was recorded (a read killed in flight may be recorded unanswered)
        assert load.ok <= reads <= load.ok + 4
        assert len(contracts) == 1
        logs = rpc(chain.url, "eth_getLogs", [{"address": contracts.pop(), "fromBlock": "0x0",
                                               "toBlock": "latest"}])
        assert isinstance(logs, list)
        on_chain = [bytes.fromhex(log["topics"][1][2:]) for log in logs
                    if len(log["topics"]) == 2]  # AccessRecorded is anonymous: 2 topics
        assert len(on_chain) == len(entries), "an entry is missing or doubled on chain"
        assert sorted(on_chain) == sorted(e[:32] for e in entries)
    finally:
        server.stop()
        chain.stop()
