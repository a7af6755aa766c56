"""The anchoring worker against a real anvil: batches, proofs, confirmations, outages, crashes,
chain resets, reverts, the lease between workers, and throughput (issue 5, Pipeline)."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from eth_typing import HexStr
from web3 import Web3

from app.audit import sealing
from app.audit.hashing import Keyer
from app.chain.anchorer import (
    ACCESS,
    CONSENT,
    VERSION,
    Anchorer,
    calldata,
    describe_revert,
)
from app.chain.deploy import connect, contract
from app.chain.devchain import DevChain
from app.chain.lease import LEASE_MS, Lease, new_holder, now_ms
from app.chain.node import ChainHandle
from app.config import Settings
from app.pipeline.hooks import Interaction, Principal
from app.storage.base import RawAccess
from app.storage.sqlite_audit import insert_rows, raw_path_of
from app.storage.sqlite_schema import RAW_SCHEMA
from tests.chain.anchoring import (
    DOCTORS,
    PATIENTS,
    access_logs,
    assert_anchored_once,
    db_rows,
    deployment,
    drain,
    make_db,
    new_handle,
    outstanding,
    proofs,
    queue_accesses,
    queue_consents,
    queue_versions,
    set_writer,
)
from tests.conftest import make_settings


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return make_db(tmp_path / "yilian.sqlite3")


@pytest.fixture
def handle(chain: DevChain) -> ChainHandle:
    return new_handle(chain.url)


def settings_for(tmp_path: Path, **kw: Any) -> Settings:
    kw.setdefault("anchor_batch_size", 1000)
    kw.setdefault("anchor_interval_ms", 50)
    return make_settings(tmp_path, **kw)


@pytest.fixture
def anchorers() -> Iterator[list[Anchorer]]:
    made: list[Anchorer] = []
    yield made
    for a in made:
        a.close()


def new_anchorer(made: list[Anchorer], db: Path, settings: Settings,
                 handle: ChainHandle | None, holder: str | None = None) -> Anchorer:
    current = {"handle": handle}
    a = Anchorer(db, settings, lambda: current["handle"], holder=holder)
    a.current = current  # type: ignore[attr-defined]  # tests swap the chain under it
    made.append(a)
    return a


class _AnyHash:
    def __eq__(self, other: object) -> bool:
        return isinstance(other, str) and len(other) == 66 and other.startswith("0x")


ANY_HASH: Any = _AnyHash()


def receipt_of(w3: Web3, tx_hash: str) -> Any:
    return w3.eth.get_transaction_receipt(HexStr(tx_hash))


# -- calldata --------------------------------------------------------------------------------


def test_hand_built_calldata_is_what_the_abi_encoder_makes(handle: ChainHandle, db: Path) -> None:
    w3 = connect(handle.rpc_url, poa=False)
    entries = queue_accesses(db, 7)
    versions = queue_versions(db, 3)
    (consent,) = queue_consents(db, 1)
    audit_log = contract(w3, "AuditLog", handle.contracts["AuditLog"])
    anchor = contract(w3, "Anchor", handle.contracts["Anchor"])
    registry = contract(w3, "ConsentRegistry", handle.contracts["ConsentRegistry"])
    assert calldata(ACCESS, entries).hex() == audit_log.encode_abi(
        "recordBatch", [b"".join(entries)]).removeprefix("0x")
    assert calldata(VERSION, versions).hex() == anchor.encode_abi(
        "anchorVersions", [b"".join(versions)]).removeprefix("0x")
    args = [consent[:32], consent[32:64], consent[64:96], consent[96],
            int.from_bytes(consent[97:105], "big"), consent[105:]]
    assert calldata(CONSENT, [consent]).hex() == registry.encode_abi(
        "decide", args).removeprefix("0x")


# -- batches and proofs ----------------------------------------------------------------------


def test_every_row_gets_the_log_of_its_own_entry_in_batches_of_the_configured_size(
        tmp_path: Path, db: Path, handle: ChainHandle, anchorers: list[Anchorer]) -> None:
    entries = queue_accesses(db, 250)
    versions = queue_versions(db, 130)
    consents = queue_consents(db, 4)
    anchorer = new_anchorer(anchorers, db, settings_for(tmp_path, anchor_batch_size=100), handle)
    assert drain(anchorer, db) == 250 + 130 + 4
    w3 = connect(handle.rpc_url, poa=False)

    batches = db_rows(db, "SELECT kind, entries, state, contract FROM chain_batch ORDER BY id")
    assert sorted((k, n) for k, n, _, _ in batches) == sorted(
        [("access", 100), ("access", 100), ("access", 50), ("version", 100), ("version", 30)]
        + [("consent", 1)] * 4)
    assert {s for _, _, s, _ in batches} == {"confirmed"}
    assert {(k, c) for k, _, _, c in batches} == {
        ("access", handle.contracts["AuditLog"]), ("version", handle.contracts["Anchor"]),
        ("consent", handle.contracts["ConsentRegistry"])}

    receipts: dict[str, Any] = {}

    def log_at(proof: Any) -> Any:
        if proof.tx_hash not in receipts:
            receipts[proof.tx_hash] = receipt_of(w3, proof.tx_hash)
        receipt = receipts[proof.tx_hash]
        assert receipt["blockNumber"] == proof.block
        (found,) = [x for x in receipt["logs"] if x["logIndex"] == proof.log_index]
        return found

    for (seq, proof), entry in zip(proofs(db).items(), entries, strict=True):
        assert proof is not None, seq
        found = log_at(proof)
        assert found["address"] == handle.contracts["AuditLog"]
        assert [bytes(t) for t in found["topics"]] == [entry[32:64], entry[:32]]
        assert int.from_bytes(bytes(found["data"]), "big") == entry[64]
    for (seq, proof), payload in zip(proofs(db, "chain_outbox", "version").items(), versions,
                                     strict=True):
        assert proof is not None, seq
        found = log_at(proof)
        assert found["address"] == handle.contracts["Anchor"]
        assert [bytes(t) for t in found["topics"][1:]] == [payload[:32], payload[32:]]
    registry = contract(w3, "ConsentRegistry", handle.contracts["ConsentRegistry"])
    for (seq, proof), payload in zip(proofs(db, "chain_outbox", "consent").items(), consents,
                                     strict=True):
        assert proof is not None, seq
        found = log_at(proof)
        event = registry.events.ConsentDecided().process_log(found)
        assert (event.args.patientHash, event.args.granteeHash, event.args.scopeHash,
                event.args.status, event.args.expiresAt, event.args.decisionHash) == (
            payload[:32], payload[32:64], payload[64:96], payload[96],
            int.from_bytes(payload[97:105], "big"), payload[105:])
    assert len(access_logs(w3, handle.contracts["AuditLog"])) == 250


# -- reads' raw accesses, sealed into the batches --------------------------------------------


def queue_raw(db: Path, n: int, start: int = 0) -> list[RawAccess]:
    """n reads' raw accesses (app/audit/sealing.py) in the raw file beside `db`: doctors of
    北京协和医院 reading lab results."""
    raws = [sealing.encode(f"5be1c0a9d2f34e17{i:012x}", 1_795_400_000_000 + i,
                           PATIENTS[i % len(PATIENTS)],
                           Interaction("read", "Observation", f"血常规-{i}"), 200,
                           Principal(subject=DOCTORS[i % len(DOCTORS)], client_id="his-emr",
                                     address="10.12.3.47", anonymous=False,
                                     fhir_user=DOCTORS[i % len(DOCTORS)]),
                           "https://fhir.pumch.example.cn", None, None,
                           [f"Observation/血常规-{i}/_history/1"])
            for i in range(start, start + n)]
    with closing(sqlite3.connect(raw_path_of(db), isolation_level=None)) as con:
        con.executescript(RAW_SCHEMA)
        con.executemany("INSERT INTO audit_raw(id, recorded_ms, patient, data) "
                        "VALUES (?, ?, ?, ?)", [(r.id, r.recorded_ms, r.patient, r.data)
                                                for r in raws])
    return raws


def raw_left(db: Path) -> int:
    with closing(sqlite3.connect(raw_path_of(db))) as con:
        return int(con.execute("SELECT count(*) FROM audit_raw").fetchone()[0])


def drain_raw(anchorer: Anchorer, db: Path, rounds: int = 100) -> None:
    for _ in range(rounds):
        asyncio.run(anchorer.run_once())
        if raw_left(db) == 0 and outstanding(db) == 0:
            return
    raise AssertionError(f"{raw_left(db)} raw accesses and {outstanding(db)} rows left "
                         f"(last error: {anchorer.last_error})")


def test_raw_accesses_are_sealed_into_the_batches_after_the_waiting_rows(
        tmp_path: Path, db: Path, handle: ChainHandle, anchorers: list[Anchorer]) -> None:
    settings = settings_for(tmp_path, anchor_batch_size=100)
    waiting = queue_accesses(db, 30)
    raws = queue_raw(db, 150)
    sealed = sealing.Sealer(Keyer.in_var_dir(settings.var_dir))(raws)
    anchorer = new_anchorer(anchorers, db, settings, handle)
    drain_raw(anchorer, db)
    # each AuditEvent is the one sealing gives, written once, already in its batch
    stored = db_rows(db, "SELECT id, body, entry FROM audit ORDER BY seq")
    assert [(i, bytes(b), bytes(e)) for i, b, e in stored[30:]] == \
        [(r.id, r.body, r.entry) for r in sealed]
    assert db_rows(db, "SELECT entries FROM chain_batch WHERE kind = 'access' ORDER BY id") == \
        [(100,), (80,)]
    # the waiting rows first, then the fresh ones, each at its own log
    assert_anchored_once(db, connect(handle.rpc_url, poa=False), handle,
                         waiting + [r.entry for r in sealed])


def test_raw_accesses_sealed_by_someone_else_meanwhile_are_anchored_once(
        tmp_path: Path, db: Path, handle: ChainHandle, anchorers: list[Anchorer]) -> None:
    """A server's housekeeping sealed some of them (or a crash came between a batch and the
    deletion of its raw accesses): they are in the audit file and still raw."""
    settings = settings_for(tmp_path, anchor_batch_size=100)
    raws = queue_raw(db, 40)
    sealed = sealing.Sealer(Keyer.in_var_dir(settings.var_dir))(raws)
    with closing(sqlite3.connect(db, isolation_level=None)) as con:
        con.execute("BEGIN IMMEDIATE")
        insert_rows(con, sealed[5:25], ())
        con.execute("COMMIT")
    anchorer = new_anchorer(anchorers, db, settings, handle)
    drain_raw(anchorer, db)
    assert db_rows(db, "SELECT count(*), count(DISTINCT id) FROM audit") == [(40, 40)]
    ids = {r.id: r.entry for r in sealed}
    entries = [ids[i] for (i,) in db_rows(db, "SELECT id FROM audit ORDER BY seq")]
    assert_anchored_once(db, connect(handle.rpc_url, poa=False), handle, entries)


def test_gas_is_estimated_once_per_epoch_for_full_batches_and_covers_smaller_ones(
        tmp_path: Path, db: Path, handle: ChainHandle, anchorers: list[Anchorer],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """anvil runs a whole batch to estimate it: that is done once, for a full batch, whose
    estimate is then the gas limit of every access batch (a smaller one costs less)."""
    anchorer = new_anchorer(anchorers, db, settings_for(tmp_path, anchor_batch_size=60), handle)
    estimates: list[int] = []
    real = anchorer._estimate

    def counted(*args: Any) -> int:
        estimates.append(len(args[3]))
        return real(*args)

    monkeypatch.setattr(anchorer, "_estimate", counted)
    entries = queue_accesses(db, 60)
    assert drain(anchorer, db) == 60 and len(estimates) == 1
    entries += queue_accesses(db, 25, start=60)
    raws = queue_raw(db, 17)  # sealed into the same batch
    drain_raw(anchorer, db)
    entries += [r.entry for r in sealing.Sealer(Keyer.in_var_dir(anchorer.settings.var_dir))(raws)]
    assert len(estimates) == 1  # the partial batch of 42 used the full batch's estimate
    w3 = connect(handle.rpc_url, poa=False)
    (full_hash,), (partial_hash,) = db_rows(db, "SELECT tx_hash FROM chain_batch ORDER BY id")
    full, partial = (w3.eth.get_transaction(HexStr(h)) for h in (full_hash, partial_hash))
    assert partial["gas"] == full["gas"]
    receipt = w3.eth.get_transaction_receipt(HexStr(partial_hash))
    assert receipt["status"] == 1 and receipt["gasUsed"] < partial["gas"]
    assert_anchored_once(db, w3, handle, entries)


def test_a_batch_waits_for_the_configured_confirmations(
        tmp_path: Path, db: Path, handle: ChainHandle, anchorers: list[Anchorer]) -> None:
    queue_accesses(db, 40)
    anchorer = new_anchorer(anchorers, db, settings_for(tmp_path, chain_confirmations=3), handle)
    w3 = connect(handle.rpc_url, poa=False)
    assert asyncio.run(anchorer.run_once()) == 0  # sent, mined at once by anvil
    (tx_hash, state), = db_rows(db, "SELECT tx_hash, state FROM chain_batch")
    assert state == "sent"
    mined = receipt_of(w3, tx_hash)["blockNumber"]
    assert asyncio.run(anchorer.run_once()) == 0
    w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
    assert w3.eth.block_number == mined + 1
    assert asyncio.run(anchorer.run_once()) == 0
    assert db_rows(db, "SELECT state FROM chain_batch") == [("sent",)]
    w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
    assert asyncio.run(anchorer.run_once()) == 40
    assert db_rows(db, "SELECT state, block FROM chain_batch") == [("confirmed", mined)]


# -- throughput ------------------------------------------------------------------------------


def test_a_20000_row_backlog_drains_in_batches_of_1000(
        tmp_path: Path, db: Path, handle: ChainHandle, anchorers: list[Anchorer],
        capsys: pytest.CaptureFixture[str]) -> None:
    queue_accesses(db, 20_000)
    anchorer = new_anchorer(anchorers, db, settings_for(tmp_path), handle)

    async def drain_with_run() -> float:
        started = time.perf_counter()
        task = asyncio.create_task(anchorer.run())
        while anchorer.confirmed_entries < 20_000 and not task.done():
            await asyncio.sleep(0.005)
        elapsed = time.perf_counter() - started
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return elapsed

    elapsed = asyncio.run(drain_with_run())
    with capsys.disabled():
        print(f"\nanchored 20,000 access entries in {elapsed:.2f} s: "
              f"{20_000 / elapsed:,.0f} entries/s (batches of 1,000, anvil on this machine)")
    assert outstanding(db) == 0
    w3 = connect(handle.rpc_url, poa=False)
    assert len(access_logs(w3, handle.contracts["AuditLog"])) == 20_000
    assert db_rows(db, "SELECT count(*), min(entries), max(entries) FROM chain_batch") == [
        (20, 1000, 1000)]
    (lag,) = db_rows(db, "SELECT max(b.mined_ms - b.created_ms) FROM chain_batch b")[0]
    assert 0 <= lag < 5000


def test_a_steady_stream_of_accesses_is_confirmed_within_two_seconds(
        tmp_path: Path, db: Path, handle: ChainHandle, anchorers: list[Anchorer],
        capsys: pytest.CaptureFixture[str]) -> None:
    """The worker's share of the access-to-chain latency, with the default 200 ms interval:
    2,000 accesses/s for 3 s, as the server would record them."""
    anchorer = new_anchorer(anchorers, db, settings_for(tmp_path, anchor_interval_ms=200), handle)

    async def stream() -> None:
        task = asyncio.create_task(anchorer.run())
        n = 0
        for _ in range(150):  # 40 accesses every 20 ms
            await asyncio.to_thread(queue_accesses, db, 40, n, now_ms())
            n += 40
            await asyncio.sleep(0.02)
        deadline = time.monotonic() + 10
        while outstanding(db) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(stream())
    assert outstanding(db) == 0
    latencies = sorted(d for (d,) in db_rows(
        db, "SELECT b.mined_ms - a.recorded_ms FROM audit a JOIN chain_batch b ON b.id = a.batch"))
    p50, p99 = latencies[len(latencies) // 2], latencies[len(latencies) * 99 // 100]
    with capsys.disabled():
        print(f"\nrecorded -> confirmed at 2,000 accesses/s: p50 {p50} ms, p99 {p99} ms, "
              f"max {latencies[-1]} ms")
    assert p99 < 2000


# -- the chain down, crashes, resets ---------------------------------------------------------


@pytest.fixture
def own_chain(tmp_path: Path) -> Iterator[DevChain]:
    """An anvil of this test alone, with its state in a file so it can be stopped and resumed."""
    dev = DevChain(state_file=tmp_path / "anvil-state.json", state_interval=1).start()
    yield dev
    dev.stop()


def test_with_the_chain_down_entries_queue_and_are_anchored_once_when_it_returns(
        tmp_path: Path, db: Path, own_chain: DevChain, anchorers: list[Anchorer],
        caplog: pytest.LogCaptureFixture) -> None:
    handle = new_handle(own_chain.url)
    entries = queue_accesses(db, 250)
    anchorer = new_anchorer(anchorers, db, settings_for(tmp_path, anchor_batch_size=100,
                                                        chain_confirmations=2), handle)
    assert asyncio.run(anchorer.run_once()) == 0  # three batches sent, none deep enough yet
    assert db_rows(db, "SELECT count(*) FROM chain_batch WHERE state = 'sent'") == [(3,)]
    own_chain.stop()
    entries += queue_accesses(db, 150, start=250)

    for _ in range(3):  # neither raises nor loses anything
        assert asyncio.run(anchorer.run_once()) == 0
    assert anchorer.failures == 3
    assert anchorer.delay() > settings_for(tmp_path).anchor_interval_ms / 1000
    assert "chain unavailable" in caplog.text and "entries stay queued" in caplog.text
    assert db_rows(db, "SELECT count(*) FROM audit WHERE batch IS NULL") == [(150,)]

    async def run_for(seconds: float) -> None:
        task = asyncio.create_task(anchorer.run())
        await asyncio.sleep(seconds)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    before = anchorer.failures
    asyncio.run(run_for(1.5))  # backs off: a handful of attempts, not one per interval
    assert 1 <= anchorer.failures - before <= 6

    own_chain.start()  # same port, same state: the chain is back as it was
    w3 = connect(handle.rpc_url, poa=False)
    w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
    drain(anchorer, db, mine=w3)
    assert anchorer.failures == 0
    assert_anchored_once(db, w3, handle, entries)


def test_confirmed_batches_lost_with_the_chains_last_blocks_are_sent_again(
        tmp_path: Path, db: Path, own_chain: DevChain, anchorers: list[Anchorer],
        caplog: pytest.LogCaptureFixture) -> None:
    handle = new_handle(own_chain.url)
    settings = settings_for(tmp_path)
    entries = queue_accesses(db, 100)
    anchorer = new_anchorer(anchorers, db, settings, handle)
    drain(anchorer, db)
    assert own_chain.state_file is not None
    own_chain.stop()  # the state as of now, as a periodic dump would have kept it
    saved = own_chain.state_file.read_bytes()
    own_chain.start()
    entries += queue_accesses(db, 50, start=100)
    drain(anchorer, db)
    lost = db_rows(db, "SELECT id, tx_hash, block FROM chain_batch WHERE id = 2")
    own_chain.stop()
    own_chain.state_file.write_bytes(saved)  # the chain comes back without the last blocks
    own_chain.start()
    w3 = connect(handle.rpc_url, poa=False)
    assert w3.eth.block_number < lost[0][2]

    for a in anchorers:  # the server restarts
        a.close()
    anchorers.clear()
    drain(new_anchorer(anchorers, db, settings, handle), db)
    assert "1 confirmed batches are no longer on chain" in caplog.text
    (again,) = db_rows(db, "SELECT id, tx_hash, state FROM chain_batch WHERE id = 2")
    assert again == (lost[0][0], lost[0][1], "confirmed")
    assert db_rows(db, "SELECT count(*) FROM chain_batch") == [(2,)]
    assert_anchored_once(db, w3, handle, entries)


def test_an_unreachable_hosted_endpoint_is_logged_without_its_credentials(
        tmp_path: Path, db: Path, handle: ChainHandle, anchorers: list[Anchorer],
        caplog: pytest.LogCaptureFixture) -> None:
    queue_accesses(db, 3)
    hosted = replace(handle, rpc_url="http://his:s3cret@127.0.0.1:9/v3/0a1b2c3d4e5f?key=k9k9")
    anchorer = new_anchorer(anchorers, db, settings_for(tmp_path), hosted)
    assert asyncio.run(anchorer.run_once()) == 0
    assert "chain unavailable at http://127.0.0.1:9/…: " in caplog.text
    for secret in ("s3cret", "0a1b2c3d4e5f", "k9k9"):
        assert secret not in caplog.text
        assert anchorer.last_error is not None and secret not in anchorer.last_error


class CrashBeforeSend(Anchorer):
    """A worker killed between writing its batch and handing the transaction to the node."""

    def _send(self, rpc: Any, batch: Any) -> None:
        return None


def test_a_batch_written_but_never_sent_is_resent_with_the_same_transaction(
        tmp_path: Path, db: Path, handle: ChainHandle, anchorers: list[Anchorer]) -> None:
    entries = queue_accesses(db, 120)
    settings = settings_for(tmp_path, anchor_batch_size=100)
    crashed = CrashBeforeSend(db, settings, lambda: handle)
    asyncio.run(crashed.run_once())
    written = db_rows(db, "SELECT id, nonce, tx_hash, state FROM chain_batch ORDER BY id")
    assert [(n, s) for _, n, _, s in written] == [(0, "sent"), (1, "sent")]
    crashed._lease.conn.close()  # dies holding the lease: no release
    crashed._db.close()
    w3 = connect(handle.rpc_url, poa=False)
    assert w3.eth.get_transaction_count(handle.account.address) == 0

    survivor = new_anchorer(anchorers, db, settings, handle)
    assert asyncio.run(survivor.run_once()) == 0  # the lease is still the dead worker's
    time.sleep(LEASE_MS / 1000 + 0.2)
    drain(survivor, db)
    after = db_rows(db, "SELECT id, nonce, tx_hash, state FROM chain_batch ORDER BY id")
    assert after == [(i, n, h, "confirmed") for i, n, h, _ in written]
    assert w3.eth.get_transaction_count(handle.account.address) == 2
    assert_anchored_once(db, w3, handle, entries)


def test_a_written_batch_whose_nonce_went_to_another_transaction_is_anchored_anew(
        tmp_path: Path, db: Path, handle: ChainHandle, anchorers: list[Anchorer],
        caplog: pytest.LogCaptureFixture) -> None:
    entries = queue_accesses(db, 70)
    settings = settings_for(tmp_path)
    crashed = CrashBeforeSend(db, settings, lambda: handle)
    asyncio.run(crashed.run_once())
    crashed.close()
    (nonce, first_hash), = db_rows(db, "SELECT nonce, tx_hash FROM chain_batch")
    w3 = connect(handle.rpc_url, poa=False)
    # Someone else used the node key meanwhile: a transfer takes the batch's nonce.
    transfer = handle.account.sign_transaction({
        "chainId": handle.chain_id, "nonce": nonce, "to": handle.account.address, "value": 1,
        "gas": 21_000, "maxFeePerGas": 10**10, "maxPriorityFeePerGas": 10**9})
    w3.eth.send_raw_transaction(transfer.raw_transaction)

    anchorer = new_anchorer(anchorers, db, settings, handle)
    drain(anchorer, db)
    assert db_rows(db, "SELECT nonce, tx_hash, state FROM chain_batch ORDER BY id") == [
        (nonce, first_hash, "failed"), (nonce + 1, ANY_HASH, "confirmed")]
    assert "its nonce 0 was used by another transaction" in caplog.text
    assert_anchored_once(db, w3, handle, entries)


def test_a_batch_mined_before_its_confirmation_was_recorded_is_confirmed_without_a_resend(
        tmp_path: Path, db: Path, handle: ChainHandle, anchorers: list[Anchorer]) -> None:
    entries = queue_accesses(db, 60)
    settings = settings_for(tmp_path, chain_confirmations=2)
    first = new_anchorer(anchorers, db, settings, handle)
    asyncio.run(first.run_once())  # sent and mined; the worker stops before confirming it
    first.close()
    anchorers.remove(first)
    w3 = connect(handle.rpc_url, poa=False)
    w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
    second = new_anchorer(anchorers, db, settings, handle)
    assert asyncio.run(second.run_once()) == 60
    assert w3.eth.get_transaction_count(handle.account.address) == 1
    assert second.sent_entries == 0
    assert_anchored_once(db, w3, handle, entries)


def test_a_new_epoch_orphans_the_old_chains_batches_and_anchors_their_rows_again(
        tmp_path: Path, db: Path, handle: ChainHandle, anchorers: list[Anchorer],
        caplog: pytest.LogCaptureFixture) -> None:
    entries = queue_accesses(db, 120)
    queue_versions(db, 10)
    settings = settings_for(tmp_path, anchor_batch_size=50, chain_confirmations=2)
    anchorer = new_anchorer(anchorers, db, settings, handle)
    old_w3 = connect(handle.rpc_url, poa=False)
    asyncio.run(anchorer.run_once())
    old_w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
    assert asyncio.run(anchorer.run_once()) == 130
    entries += queue_accesses(db, 40, start=120)
    asyncio.run(anchorer.run_once())  # sent on the old chain, not yet confirmed
    assert db_rows(db, "SELECT count(*) FROM chain_batch WHERE state = 'sent'") == [(1,)]

    with DevChain() as fresh:  # the chain was reset: new anvil, new contracts, epoch 2
        new = new_handle(fresh.url, epoch=2)
        anchorer.current["handle"] = new  # type: ignore[attr-defined]
        caplog.set_level(logging.CRITICAL, "yilian.chain.anchorer")
        for _ in range(20):
            asyncio.run(anchorer.run_once())
            fresh_w3 = connect(new.rpc_url, poa=False)
            fresh_w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
            if outstanding(db) == 0:
                break
        assert "orphaned" in caplog.text
        states = db_rows(db, "SELECT epoch, state, count(*) FROM chain_batch GROUP BY 1, 2")
        assert {(e, s) for e, s, _ in states} == {(1, "orphaned"), (2, "confirmed")}
        assert_anchored_once(db, fresh_w3, new, entries)
        assert len(access_logs(old_w3, handle.contracts["AuditLog"])) == 160  # untouched
        anchored = fresh_w3.eth.get_logs({
            "address": Web3.to_checksum_address(new.contracts["Anchor"]), "fromBlock": 0,
            "topics": [Web3.keccak(text="VersionAnchored(bytes32,bytes32)")]})
        assert len(anchored) == 10


def test_a_chain_reset_under_the_worker_is_detected_and_everything_anchored_again(
        tmp_path: Path, db: Path, anchorers: list[Anchorer]) -> None:
    dev = DevChain().start()
    try:
        handle = new_handle(dev.url)
        entries = queue_accesses(db, 80)
        settings = settings_for(tmp_path, chain="dev")
        settings.chain_dir.mkdir(parents=True)  # made by start_chain in a real server
        anchorer = new_anchorer(anchorers, db, settings, handle)
        drain(anchorer, db)
        dev.stop()
        dev.start()  # same port, empty chain: the contracts are gone
        entries += queue_accesses(db, 30, start=80)
        drain(anchorer, db)
        new = anchorer._redeployed
        assert new is not None and new.epoch == 2 and new.contracts != handle.contracts
        states = db_rows(db, "SELECT epoch, state, sum(entries) FROM chain_batch GROUP BY 1, 2")
        assert {(e, s): n for e, s, n in states}[(2, "confirmed")] == 110
        assert_anchored_once(db, connect(dev.url, poa=False), new, entries)
    finally:
        dev.stop()


# -- reverts ---------------------------------------------------------------------------------


def test_a_key_without_the_writer_role_is_named_in_the_log_and_backed_off(
        tmp_path: Path, db: Path, chain: DevChain, anchorers: list[Anchorer],
        caplog: pytest.LogCaptureFixture) -> None:
    handle, admin = deployment(chain.url, writer=False)
    entries = queue_accesses(db, 30)
    anchorer = new_anchorer(anchorers, db, settings_for(tmp_path), handle)
    assert asyncio.run(anchorer.run_once()) == 0
    assert asyncio.run(anchorer.run_once()) == 0
    assert anchorer.failures == 2 and anchorer.delay() >= 0.2
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert errors and "AuditLog.recordBatch" in errors[0].getMessage()
    assert "AccessControlUnauthorizedAccount" in errors[0].getMessage()
    assert handle.account.address.lower() in errors[0].getMessage().lower()
    assert db_rows(db, "SELECT count(*) FROM audit WHERE batch IS NULL") == [(30,)]
    w3 = connect(chain.url, poa=False)
    set_writer(w3, admin, handle.contracts, handle.account.address, True)
    drain(anchorer, db)
    assert_anchored_once(db, w3, handle, entries)


def test_a_batch_that_reverts_on_chain_fails_and_its_rows_are_queued_again(
        tmp_path: Path, db: Path, chain: DevChain, anchorers: list[Anchorer],
        caplog: pytest.LogCaptureFixture) -> None:
    handle, admin = deployment(chain.url)
    entries = queue_accesses(db, 45)
    settings = settings_for(tmp_path)
    crashed = CrashBeforeSend(db, settings, lambda: handle)
    asyncio.run(crashed.run_once())  # signed while the key could write
    crashed.close()
    w3 = connect(chain.url, poa=False)
    set_writer(w3, admin, handle.contracts, handle.account.address, False)

    anchorer = new_anchorer(anchorers, db, settings, handle)
    asyncio.run(anchorer.run_once())  # resent, mined, reverted
    asyncio.run(anchorer.run_once())
    assert db_rows(db, "SELECT state, entries FROM chain_batch") == [("failed", 45)]
    assert db_rows(db, "SELECT count(*) FROM audit WHERE batch IS NULL") == [(45,)]
    (error,) = [r.getMessage() for r in caplog.records
                if r.levelno == logging.ERROR and "reverted in block" in r.getMessage()]
    assert "AccessControlUnauthorizedAccount" in error and "queued again" in error
    assert anchorer.failures >= 1

    set_writer(w3, admin, handle.contracts, handle.account.address, True)
    drain(anchorer, db)
    assert db_rows(db, "SELECT state FROM chain_batch ORDER BY id") == [("failed",),
                                                                      ("confirmed",)]
    assert_anchored_once(db, w3, handle, entries)


def test_revert_data_is_decoded_with_the_contracts_abi() -> None:
    data = (bytes.fromhex("e2517d3f") + bytes(12) + bytes.fromhex("aa" * 20)
            + Web3.keccak(text="WRITER_ROLE"))
    assert describe_revert(data) == (
        "AccessControlUnauthorizedAccount(account=0x" + "aa" * 20 + ", neededRole=0x"
        + Web3.keccak(text="WRITER_ROLE").hex().removeprefix("0x") + ")")
    assert describe_revert(bytes.fromhex("12345678")) == "unknown error 0x12345678"


# -- the lease -------------------------------------------------------------------------------


def test_of_two_workers_on_one_database_only_the_lease_holder_sends(
        tmp_path: Path, db: Path, handle: ChainHandle, anchorers: list[Anchorer]) -> None:
    entries = queue_accesses(db, 3000)
    settings = settings_for(tmp_path, anchor_batch_size=100)
    one = new_anchorer(anchorers, db, settings, handle, holder="ward-a:101:aa")
    two = new_anchorer(anchorers, db, settings, handle, holder="ward-b:202:bb")

    async def scenario() -> tuple[Anchorer, Anchorer, float]:
        tasks = {one: asyncio.create_task(one.run()), two: asyncio.create_task(two.run())}
        while outstanding(db):
            await asyncio.sleep(0.05)
        holder, other = (one, two) if one.sent_entries else (two, one)
        assert (holder.sent_entries, other.sent_entries) == (3000, 0)
        tasks[holder].cancel()  # a clean stop releases the lease at once
        with pytest.raises(asyncio.CancelledError):
            await tasks[holder]
        entries.extend(queue_accesses(db, 200, start=3000))
        started = time.monotonic()
        while outstanding(db):
            await asyncio.sleep(0.05)
        taken_over_after = time.monotonic() - started
        tasks[other].cancel()
        with pytest.raises(asyncio.CancelledError):
            await tasks[other]
        return holder, other, taken_over_after

    holder, other, after = asyncio.run(scenario())
    assert other.sent_entries == 200 and holder.sent_entries == 3000
    assert after < LEASE_MS / 1000  # released, not expired
    assert_anchored_once(db, connect(handle.rpc_url, poa=False), handle, entries)


def test_a_worker_that_stops_renewing_is_taken_over_when_its_lease_expires(
        tmp_path: Path, db: Path, handle: ChainHandle, anchorers: list[Anchorer]) -> None:
    entries = queue_accesses(db, 2500)
    settings = settings_for(tmp_path, anchor_batch_size=100)
    hung = new_anchorer(anchorers, db, settings, handle, holder="ward-a:101:aa")
    asyncio.run(hung.run_once())  # takes the lease, sends 16 batches, then never renews
    assert hung.sent_entries == 1600
    lease = hung._lease.current()
    assert lease is not None and lease[0] == "ward-a:101:aa"
    waiting = new_anchorer(anchorers, db, settings, handle, holder="ward-b:202:bb")

    async def scenario() -> None:
        task = asyncio.create_task(waiting.run())
        await asyncio.sleep(1.0)
        assert waiting.sent_entries == 0
        deadline = time.monotonic() + LEASE_MS / 1000 + 10
        while outstanding(db):
            assert time.monotonic() < deadline, "the expired lease was never taken over"
            await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert (hung.sent_entries, waiting.sent_entries) == (1600, 900)
    (first_of_the_other,) = db_rows(db, "SELECT min(created_ms) FROM chain_batch WHERE id > 16")[0]
    assert first_of_the_other >= lease[1]  # not one batch before the lease expired
    assert_anchored_once(db, connect(handle.rpc_url, poa=False), handle, entries)


def test_a_consent_decision_the_registry_refuses_for_good_does_not_block_the_others(
        tmp_path: Path, db: Path, handle: ChainHandle, anchorers: list[Anchorer],
        caplog: pytest.LogCaptureFixture) -> None:
    queue_consents(db, 1, expires_at=1_700_000_000)  # a grant that expired while it waited
    later = queue_consents(db, 2, start=1)  # a denial and a revocation
    anchorer = new_anchorer(anchorers, db, settings_for(tmp_path), handle)
    for _ in range(4):
        asyncio.run(anchorer.run_once())
    found = proofs(db, "chain_outbox", "consent")
    assert [p is not None for p in found.values()] == [False, True, True]
    assert db_rows(db, "SELECT count(*) FROM chain_batch WHERE state = 'confirmed'") == [(2,)]
    assert len(later) == 2
    assert any("ExpiryInThePast(expiresAt=1700000000" in r.getMessage() and
               "chain_outbox seq 1" in r.getMessage() for r in caplog.records)


def test_a_worker_that_stalled_past_its_lease_assigns_no_rows_once_another_took_over(
        tmp_path: Path, db: Path, handle: ChainHandle, anchorers: list[Anchorer],
        caplog: pytest.LogCaptureFixture) -> None:
    queue_accesses(db, 20)
    rival = Lease(sqlite3.connect(db, isolation_level=None, check_same_thread=False), "anchorer",
                  "ward-b:202:bb")

    def stalled() -> ChainHandle:
        # Called inside the round, after the lease check: the worker hangs here past its
        # expiry and another worker takes the lease meanwhile.
        with sqlite3.connect(db, isolation_level=None) as con:
            con.execute("UPDATE chain_lease SET expires_ms = 0")
        assert rival.acquire()
        return handle

    anchorer = Anchorer(db, settings_for(tmp_path), stalled, holder="ward-a:101:aa")
    anchorers.append(anchorer)
    assert asyncio.run(anchorer.run_once()) == 0
    assert "no longer holds the lease; not sending" in caplog.text
    assert db_rows(db, "SELECT count(*) FROM chain_batch") == [(0,)]
    assert db_rows(db, "SELECT count(*) FROM audit WHERE batch IS NULL") == [(20,)]
    w3 = connect(handle.rpc_url, poa=False)
    assert w3.eth.get_transaction_count(handle.account.address) == 0


# -- the lease itself ------------------------------------------------------------------------


def test_the_lease_is_taken_when_free_or_expired_renewed_by_its_holder_and_released(
        db: Path) -> None:
    a = Lease(sqlite3.connect(db, isolation_level=None), "anchorer", "ward-a:101:aa", ttl_ms=300)
    b = Lease(sqlite3.connect(db, isolation_level=None), "anchorer", "ward-b:202:bb", ttl_ms=300)
    assert a.acquire() and not b.acquire()
    time.sleep(0.2)
    assert a.acquire()  # renewed: b still has to wait a full ttl
    time.sleep(0.2)
    assert not b.acquire()
    current = a.current()
    assert current is not None and current[0] == "ward-a:101:aa"
    time.sleep(0.35)  # a stops renewing
    assert b.acquire() and not a.acquire()
    b.release()
    assert a.current() is None and a.acquire()
    assert new_holder().count(":") == 2 and new_holder() != new_holder()


# -- in a server -----------------------------------------------------------------------------


def test_a_worker_started_before_the_store_made_its_tables_waits_without_raising(
        tmp_path: Path, handle: ChainHandle, anchorers: list[Anchorer]) -> None:
    path = tmp_path / "not-yet.sqlite3"
    anchorer = new_anchorer(anchorers, path, settings_for(tmp_path), handle)
    assert asyncio.run(anchorer.run_once()) == 0

    async def run_briefly() -> None:
        task = asyncio.create_task(anchorer.run())
        await asyncio.sleep(0.5)
        assert not task.done()
        make_db(path)  # the store starts
        entries = queue_accesses(path, 5)
        for _ in range(100):
            await asyncio.sleep(0.05)
            if outstanding(path) == 0:
                break
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert_anchored_once(path, connect(handle.rpc_url, poa=False), handle, entries)

    asyncio.run(run_briefly())
