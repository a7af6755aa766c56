"""Helpers of the anchoring-worker tests: an outbox database as the server leaves it, a fresh
deployment with its own writer key, and the chain's view of what was anchored.

Rows are written the way the server's auditor writes them (app/audit/hashing.py formats): an
`audit` row per AuditEvent with its 65-byte access entry, `chain_outbox` rows of 64-byte
version anchors and 137-byte consent decisions.
"""

from __future__ import annotations

import asyncio
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import Web3
from web3.types import Nonce

from app.audit.hashing import (
    CONSENT_DENIED,
    CONSENT_GRANTED,
    CONSENT_REVOKED,
    Keyer,
    access_entry,
    canonical_json,
    consent_entry,
    entry_hash,
    sha256,
    version_entry,
)
from app.chain.anchorer import Anchorer
from app.chain.deploy import WRITER_ROLE, connect, contract, deploy_contracts, fund_dev_account
from app.chain.node import ChainHandle
from app.storage.sqlite_schema import AUDIT_SCHEMA, SCHEMA

KEYER = Keyer(bytes.fromhex("3c9a1f5e7b2d4c6a8e0f1a3b5c7d9e2f4a6b8c0d1e3f5a7b9c2d4e6f8a0b1c3d"))
# 身份证号 with valid check digits (GB 11643-1999) of the 北京协和医院 patients in these tests.
PATIENTS = ("11010519491231002X", "440524188001010014", "510104198507120022",
            "110101199003074578", "320102198001011234")
DOCTORS = ("Practitioner/心内科-王建国", "Practitioner/呼吸科-李秀英", "Practitioner/急诊科-张伟")
ACTIONS = "RRRRCUDE"  # reads dominate, as in a real ward


def make_db(path: Path) -> Path:
    with sqlite3.connect(path) as con:
        con.executescript(SCHEMA + AUDIT_SCHEMA)  # one file holds both here
        con.execute("PRAGMA journal_mode=WAL")
    return path


def audit_event(i: int) -> dict[str, Any]:
    """The AuditEvent of the i-th access: a doctor of 北京协和医院 touching a patient's record."""
    action = ACTIONS[i % len(ACTIONS)]
    patient = PATIENTS[i % len(PATIENTS)]
    return {
        "resourceType": "AuditEvent",
        "id": f"ae-{i:07d}",
        "type": {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110110",
                 "display": "Patient Record"},
        "subtype": [{"system": "http://hl7.org/fhir/restful-interaction",
                     "code": {"R": "read", "C": "create", "U": "update", "D": "delete",
                              "E": "operation"}[action]}],
        "action": action,
        "recorded": f"2026-11-23T16:{i // 60 % 60:02d}:{i % 60:02d}.{i % 1000:03d}+08:00",
        "outcome": "0",
        "purposeOfEvent": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/"
                                        "v3-ActReason", "code": "TREAT"}]}],
        "agent": [{"who": {"reference": DOCTORS[i % len(DOCTORS)]}, "requestor": True,
                   "network": {"address": "10.12.3.47", "type": "2"}}],
        "source": {"observer": {"display": "北京协和医院 门诊部"}},
        "entity": [{"what": {"reference": f"Observation/血常规-{i}"}},
                   {"what": {"reference": f"Patient/{patient}"}}],
    }


def queue_accesses(db: Path, n: int, start: int = 0,
                   recorded_ms: int | None = None) -> list[bytes]:
    """n audit rows waiting in the outbox; their 65-byte entries in seq order."""
    rows = []
    for i in range(start, start + n):
        event = audit_event(i)
        patient = PATIENTS[i % len(PATIENTS)]
        entry = access_entry(entry_hash(event), KEYER.patient(patient), event["action"])
        recorded = recorded_ms or 1_763_900_000_000 + i
        rows.append((event["id"], recorded, patient, event["action"], "0",
                     DOCTORS[i % len(DOCTORS)], "his-outpatient", canonical_json(event), entry))
    with sqlite3.connect(db, timeout=30) as con:
        con.executemany("INSERT INTO audit(id, recorded_ms, patient, action, outcome, agent, "
                        "client, body, entry) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    return [r[-1] for r in rows]


def queue_versions(db: Path, n: int, start: int = 0) -> list[bytes]:
    rows = []
    for i in range(start, start + n):
        ref = f"Observation/血常规-{i}/_history/1"
        body = canonical_json({"resourceType": "Observation", "id": f"血常规-{i}",
                               "status": "final", "code": {"text": "血红蛋白"},
                               "valueQuantity": {"value": 120 + i % 40, "unit": "g/L"}})
        rows.append(("version", ref, version_entry(KEYER.key(ref), body), 1_763_900_000_000 + i))
    with sqlite3.connect(db, timeout=30) as con:
        con.executemany("INSERT INTO chain_outbox(kind, ref, payload, recorded_ms) "
                        "VALUES (?, ?, ?, ?)", rows)
    return [r[2] for r in rows]


def consent_payload(i: int, expires_at: int = 0) -> bytes:
    status = (CONSENT_GRANTED, CONSENT_DENIED, CONSENT_REVOKED)[i % 3]
    return consent_entry(KEYER.patient(PATIENTS[i % len(PATIENTS)]),
                         KEYER.key("Client/健康云-随访助手"),
                         sha256(b"patient/Observation.rs"), status, expires_at,
                         sha256(canonical_json({"resourceType": "Consent", "id": f"c{i}"})))


def queue_consents(db: Path, n: int, start: int = 0, expires_at: int = 0) -> list[bytes]:
    rows = [("consent", f"Consent/c{i}/_history/1", consent_payload(i, expires_at),
             1_763_900_000_000 + i) for i in range(start, start + n)]
    with sqlite3.connect(db, timeout=30) as con:
        con.executemany("INSERT INTO chain_outbox(kind, ref, payload, recorded_ms) "
                        "VALUES (?, ?, ?, ?)", rows)
    return [r[2] for r in rows]


def deployment(rpc_url: str, epoch: int = 1,
               writer: bool = True) -> tuple[ChainHandle, LocalAccount]:
    """A fresh deployment of the three contracts by a consortium admin key, and the handle of a
    fresh node key (funded on anvil) that holds WRITER_ROLE on them unless `writer` is False."""
    w3 = connect(rpc_url, poa=False)
    admin: LocalAccount = Account.create()
    node: LocalAccount = Account.create()
    fund_dev_account(w3, admin.address)
    fund_dev_account(w3, node.address)
    deployed = deploy_contracts(w3, admin)
    if writer:
        set_writer(w3, admin, deployed.contracts, node.address, True)
    genesis = w3.eth.get_block(0)["hash"]
    handle = ChainHandle(rpc_url=rpc_url, chain_id=w3.eth.chain_id,
                         genesis_hash="0x" + bytes(genesis).hex(), account=node,
                         contracts=deployed.contracts, epoch=epoch, poa=False,
                         code_hashes=deployed.code_hashes)
    return handle, admin


def new_handle(rpc_url: str, epoch: int = 1, writer: bool = True) -> ChainHandle:
    return deployment(rpc_url, epoch, writer)[0]


def set_writer(w3: Web3, admin: LocalAccount, contracts: dict[str, str], node: str,
               grant: bool) -> None:
    """Grant (or revoke) WRITER_ROLE to `node` on every contract, signed by the admin key."""
    nonce = w3.eth.get_transaction_count(admin.address, "pending")
    hashes = []
    for name, address in contracts.items():
        fn = contract(w3, name, address).functions
        call = fn.grantRole(WRITER_ROLE, node) if grant else fn.revokeRole(WRITER_ROLE, node)
        tx = call.build_transaction({"from": admin.address, "nonce": Nonce(nonce),
                                     "chainId": w3.eth.chain_id})
        signed = admin.sign_transaction(tx)  # type: ignore[arg-type]
        hashes.append(w3.eth.send_raw_transaction(signed.raw_transaction))
        nonce = Nonce(nonce + 1)
    for h in hashes:
        assert w3.eth.wait_for_transaction_receipt(h)["status"] == 1


@dataclass(frozen=True)
class Proof:
    tx_hash: str
    block: int
    log_index: int
    state: str


def proofs(db: Path, table: str = "audit", kind: str | None = None) -> dict[int, Proof | None]:
    """seq -> the proof recorded for the row (None while not confirmed)."""
    where = "" if kind is None else f"WHERE r.kind = '{kind}'"
    with sqlite3.connect(db, timeout=30) as con:
        rows = con.execute(
            f"SELECT r.seq, b.tx_hash, b.block, b.first_log + r.pos, b.state FROM {table} r "
            f"LEFT JOIN chain_batch b ON b.id = r.batch {where} ORDER BY r.seq").fetchall()
    return {seq: Proof(tx, block, index, state) if state == "confirmed" else None
            for seq, tx, block, index, state in rows}


def access_logs(w3: Web3, address: str) -> list[dict[str, Any]]:
    """Every AccessRecorded log of the AuditLog at `address` (anonymous: exactly 2 topics)."""
    logs = w3.eth.get_logs({"address": Web3.to_checksum_address(address), "fromBlock": 0,
                            "toBlock": "latest"})
    return [dict(x) for x in logs if len(x["topics"]) == 2]


def db_rows(db: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db, timeout=30) as con:
        return con.execute(sql, args).fetchall()


def outstanding(db: Path) -> int:
    """Rows not yet confirmed: queued or in a batch that is still `sent`."""
    (n,) = db_rows(db, "SELECT (SELECT count(*) FROM audit a LEFT JOIN chain_batch b ON "
                   "b.id = a.batch WHERE b.state IS NULL OR b.state != 'confirmed') + "
                   "(SELECT count(*) FROM chain_outbox o LEFT JOIN chain_batch b ON "
                   "b.id = o.batch WHERE b.state IS NULL OR b.state != 'confirmed')")[0]
    return int(n)


def drain(anchorer: Anchorer, db: Path, rounds: int = 200, mine: Web3 | None = None) -> int:
    """Run rounds until every row is confirmed; the entries confirmed. `mine`: add a block
    after each round (for more than one confirmation on anvil, which mines only on demand)."""
    total = 0
    for _ in range(rounds):
        total += asyncio.run(anchorer.run_once())
        if mine is not None:
            mine.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
        if outstanding(db) == 0:
            return total
    raise AssertionError(f"{outstanding(db)} rows still not confirmed after {rounds} rounds "
                         f"(last error: {anchorer.last_error})")


def assert_anchored_once(db: Path, w3: Web3, handle: ChainHandle, entries: list[bytes]) -> None:
    """Every access row confirmed exactly once, at the log carrying its entry, and the chain
    holds no AccessRecorded log that is not some row's proof."""
    logs = access_logs(w3, handle.contracts["AuditLog"])
    assert len(logs) == len(entries)
    by_place = {(x["blockNumber"], x["logIndex"]): x for x in logs}
    found = proofs(db)
    assert len(found) == len(entries)
    places = set()
    for (seq, proof), entry in zip(found.items(), entries, strict=True):
        assert proof is not None, f"audit row {seq} is not confirmed"
        log = by_place[(proof.block, proof.log_index)]
        assert [bytes(t) for t in log["topics"]] == [entry[32:64], entry[:32]], seq
        places.add((proof.block, proof.log_index))
    assert len(places) == len(entries)
    (confirmed,) = db_rows(db, "SELECT sum(entries) FROM chain_batch WHERE state = 'confirmed' "
                           "AND kind = 'access' AND epoch = ?", handle.epoch)[0]
    assert confirmed == len(entries)
