"""A store's SQLite file with the server's schema and a real anvil chain with the contracts, filled
the way the server and the anchoring worker fill them: AuditEvents with their access entries,
resource versions with their anchors, batches sent with recordBatch/anchorVersions/decide and
recorded in chain_batch once mined.

Accounts are anvil's unlocked dev accounts: 0 deploys (the consortium admin), 1 is the writer
node of 北京协和医院, 2 the writer node of another hospital in the same consortium.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from web3 import Web3
from web3.contract import Contract

from app.audit.hashing import (
    PATIENT_KEY_URL,
    Keyer,
    access_entry,
    canonical_json,
    entry_hash,
    version_entry,
)
from app.audit.sealing import Sealer
from app.chain.artifacts import load_artifact
from app.consent.chain import decisions_of
from app.storage.sqlite_audit import raw_path_of, seal_raw
from app.storage.sqlite_schema import AUDIT_SCHEMA, SCHEMA

# The server secret (var/audit/secret) of the test hospital: fixed, so hashes are stable.
SECRET_HEX = "8f3a61d0c47b29e5a1d84c6f0b3e97a25c1f7d08e6b4a3920d5c7e1f8a6b4c2d"

HOSPITAL = "北京协和医院"
# Realistic patients: (id, name, 身份证号 with a valid check digit, mobile, MRN 病案号)
PATIENTS = [
    ("p-zhangwei", "张伟", "110105198503120020", "13812345678", "BA2026110001"),
    ("p-wangfang", "王芳", "510107199208174327", "13998765432", "BA2026110002"),
    ("p-liuyang", "刘洋", "31011519781125101X", "15021436587", "BA2026110003"),
]
PRACTITIONERS = [("doc-liqiang", "李强"), ("doc-chenjing", "陈静")]


def seal(var_dir: Path) -> int:
    """Seal the raw accesses of reads in `var_dir`'s audit file, as the anchoring worker does;
    how many."""
    audit = var_dir / "audit.sqlite3"
    with closing(sqlite3.connect(audit, isolation_level=None)) as db, \
            closing(sqlite3.connect(raw_path_of(audit), isolation_level=None)) as raw:
        return seal_raw(raw, db, Sealer(Keyer.in_var_dir(var_dir)))


def patient_resource(pid: str, name: str, id_number: str, phone: str, mrn: str) -> dict[str, Any]:
    return {
        "resourceType": "Patient", "id": pid,
        "meta": {"versionId": "1", "lastUpdated": "2026-11-23T01:02:03.456Z"},
        "identifier": [
            {"system": "http://www.moh.gov.cn/identifier/resident-id", "value": id_number},
            {"type": {"text": "病案号"}, "system": "urn:oid:2.16.156.10011.1.5.110000001.1",
             "value": mrn}],
        "name": [{"text": name, "family": name[0], "given": [name[1:]]}],
        "telecom": [{"system": "phone", "value": phone, "use": "mobile"}],
        "gender": "male" if pid in ("p-zhangwei", "p-liuyang") else "female",
        "birthDate": f"{id_number[6:10]}-{id_number[10:12]}-{id_number[12:14]}",
    }


def observation_resource(oid: str, pid: str, value: float) -> dict[str, Any]:
    return {
        "resourceType": "Observation", "id": oid,
        "meta": {"versionId": "1", "lastUpdated": "2026-11-23T01:05:00.000Z"},
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "6690-2",
                             "display": "白细胞计数"}]},
        "subject": {"reference": f"Patient/{pid}"},
        "effectiveDateTime": "2026-11-22T08:30:00+08:00",
        "valueQuantity": {"value": value, "unit": "10*9/L", "system": "http://unitsofmeasure.org",
                          "code": "10*9/L"},
    }


def consent_resource(cid: str, pid: str) -> dict[str, Any]:
    """The patient lets the hospital's EMR client read their laboratory results."""
    return {
        "resourceType": "Consent", "id": cid, "status": "active",
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope",
                              "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0",
                                  "display": "Patient Consent"}]}],
        "patient": {"reference": f"Patient/{pid}"},
        "dateTime": "2026-11-23T08:50:00+08:00",
        "provision": {
            "type": "permit",
            "period": {"start": "2026-11-23", "end": "2027-11-22"},
            "actor": [{"role": {"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                "code": "IRCP"}]}, "reference": {"reference": "Organization/org-0001"}}],
            "class": [{"system": "http://hl7.org/fhir/resource-types", "code": "Observation"}]},
    }


def audit_event(keyer: Keyer, n: int, patient_id: str | None, action: str = "R",
                interaction: str = "read", what: str | None = None) -> dict[str, Any]:
    """An AuditEvent as the server stores it (patient key extension, no proof yet)."""
    doc_id, doc_name = PRACTITIONERS[n % len(PRACTITIONERS)]
    event: dict[str, Any] = {
        "resourceType": "AuditEvent", "id": f"ae-{n:06d}",
        "meta": {"lastUpdated": f"2026-11-23T01:15:{n % 60:02d}.137Z"},
        "extension": [{"url": PATIENT_KEY_URL, "valueString": keyer.patient(patient_id).hex()}],
        "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type",
                 "code": "rest", "display": "RESTful Operation"},
        "subtype": [{"system": "http://hl7.org/fhir/restful-interaction", "code": interaction,
                     "display": interaction}],
        "action": action,
        "recorded": f"2026-11-23T09:15:{n % 60:02d}.137+08:00",
        "outcome": "0",
        "purposeOfEvent": [{"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "TREAT",
            "display": "treatment"}]}],
        "agent": [
            {"type": {"coding": [{"system": "http://dicom.nema.org/resources/ontology/DCM",
                                  "code": "110153", "display": "Source Role ID"}]},
             "who": {"reference": f"Practitioner/{doc_id}", "display": doc_name},
             "requestor": True, "network": {"address": "10.12.3.45", "type": "2"}},
            {"who": {"identifier": {"system": "urn:yilian:client", "value": "his-emr"}},
             "requestor": False}],
        "source": {"observer": {"display": f"{HOSPITAL} Yilian"},
                   "type": [{"system": "http://terminology.hl7.org/CodeSystem/security-source-type",
                             "code": "4"}]},
        "entity": [{"what": {"reference": what or f"Patient/{patient_id}"}}],
    }
    if patient_id is None:  # no patient: no patient-key extension (the key is 32 zero bytes)
        del event["extension"]
    return event


@dataclass
class Contracts:
    audit_log: Contract
    anchor: Contract
    consent_registry: Contract
    writer: str
    other_writer: str


@dataclass
class Store:
    """The store's SQLite file as the server and the anchoring worker write it."""

    var_dir: Path
    keyer: Keyer
    w3: Web3
    chain: Contracts
    conn: sqlite3.Connection = field(init=False)

    def __post_init__(self) -> None:
        (self.var_dir / "audit").mkdir(parents=True, exist_ok=True)
        secret = self.var_dir / "audit" / "secret"
        secret.write_text(SECRET_HEX)
        secret.chmod(0o600)
        with closing(sqlite3.connect(self.store_path)) as resources:
            resources.execute("PRAGMA journal_mode=WAL")
            resources.executescript(SCHEMA)
        # the audit file, with the resource file attached: unqualified table names find both
        self.conn = sqlite3.connect(self.db_path, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.executescript(AUDIT_SCHEMA)
        self.conn.execute("ATTACH DATABASE ? AS store", (str(self.store_path),))

    @property
    def rpc_url(self) -> str:
        return str(getattr(self.w3.provider, "endpoint_uri", ""))

    @property
    def db_path(self) -> Path:
        """The audit trail's file."""
        return self.var_dir / "audit.sqlite3"

    @property
    def store_path(self) -> Path:
        """The resource file."""
        return self.var_dir / "yilian.sqlite3"

    def now_ms(self) -> int:
        return int(time.time() * 1000)

    def put(self, resource: dict[str, Any]) -> tuple[str, bytes]:
        """Write a resource version and queue its anchor; (ref, body)."""
        type_, id_ = resource["resourceType"], resource["id"]
        row = self.conn.execute("SELECT rid, version FROM resource WHERE type = ? AND id = ?",
                                (type_, id_)).fetchone()
        version = 1 if row is None else row[1] + 1
        body = canonical_json({**resource, "meta": {**resource.get("meta", {}),
                                                    "versionId": str(version)}})
        now = self.now_ms()
        if row is None:
            rid = self.conn.execute(
                "INSERT INTO resource(type, id, version, lu_ms, deleted, seq) "
                "VALUES (?, ?, ?, ?, 0, 0)", (type_, id_, version, now)).lastrowid
        else:
            rid = row[0]
        seq = self.conn.execute(
            "INSERT INTO history(rid, version, lu, lu_ms, method, deleted, body) "
            "VALUES (?, ?, '2026-11-23T01:02:03.456Z', ?, 'PUT', 0, ?)",
            (rid, version, now, body)).lastrowid
        self.conn.execute("UPDATE resource SET version = ?, seq = ? WHERE rid = ?",
                          (version, seq, rid))
        ref = f"{type_}/{id_}/_history/{version}"
        self.conn.execute(
            "INSERT INTO chain_outbox(kind, ref, payload, recorded_ms) VALUES ('version', ?, ?, ?)",
            (ref, version_entry(self.keyer.version(type_, id_, version), body), now))
        return ref, body

    def audit(self, event: dict[str, Any]) -> int:
        """Store an AuditEvent and its access entry (in the outbox until anchored); its seq."""
        patient_key = bytes.fromhex(next(
            (e["valueString"] for e in event.get("extension", []) if e["url"] == PATIENT_KEY_URL),
            "00" * 32))
        entry = access_entry(entry_hash(event), patient_key, event["action"])
        return int(self.conn.execute(
            "INSERT INTO audit(id, recorded_ms, patient, action, outcome, agent, client, body, "
            "entry) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (event["id"], self.now_ms(), None, event["action"], event["outcome"],
             event["agent"][0]["who"].get("reference"), "his-emr", canonical_json(event),
             entry)).lastrowid or 0)

    def _send(self, call: Any, sender: str) -> Any:
        receipt = self.w3.eth.wait_for_transaction_receipt(call.transact({"from": sender}))
        assert receipt["status"] == 1, receipt
        return receipt

    def _record_batch(self, kind: str, contract: Contract, receipt: Any, entries: int) -> int:
        tx = self.w3.eth.get_transaction(receipt["transactionHash"])
        return int(self.conn.execute(
            "INSERT INTO chain_batch(kind, epoch, chain_id, contract, nonce, raw_tx, tx_hash, "
            "state, entries, block, first_log, created_ms, mined_ms) "
            "VALUES (?, 1, ?, ?, ?, x'', ?, 'confirmed', ?, ?, ?, ?, ?)",
            (kind, self.w3.eth.chain_id, contract.address, tx["nonce"],
             "0x" + bytes(receipt["transactionHash"]).hex(), entries, receipt["blockNumber"],
             receipt["logs"][0]["logIndex"], self.now_ms(), self.now_ms())).lastrowid or 0)

    def anchor_access(self, seqs: list[int], sender: str | None = None) -> int:
        """Send the rows' entries in one recordBatch and record the batch as the worker does."""
        entries = [bytes(self.conn.execute("SELECT entry FROM audit WHERE seq = ?",
                                           (s,)).fetchone()[0]) for s in seqs]
        contract = self.chain.audit_log
        receipt = self._send(contract.functions.recordBatch(b"".join(entries)),
                             sender or self.chain.writer)
        batch = self._record_batch("access", contract, receipt, len(seqs))
        for pos, seq in enumerate(seqs):
            self.conn.execute("UPDATE audit SET batch = ?, pos = ? WHERE seq = ?",
                              (batch, pos, seq))
        return batch

    def anchor_versions(self) -> int:
        """Anchor every version waiting in the outbox in one anchorVersions."""
        rows = self.conn.execute("SELECT seq, payload FROM chain_outbox WHERE kind = 'version' "
                                 "AND batch IS NULL ORDER BY seq").fetchall()
        contract = self.chain.anchor
        receipt = self._send(contract.functions.anchorVersions(b"".join(p for _, p in rows)),
                             self.chain.writer)
        batch = self._record_batch("version", contract, receipt, len(rows))
        for pos, (seq, _) in enumerate(rows):
            self.conn.execute("UPDATE chain_outbox SET batch = ?, pos = ? WHERE seq = ?",
                              (batch, pos, seq))
        return batch

    def anchor_consent(self, ref: str, payload: bytes) -> int:
        """Queue a consent decision and send it with decide(), one per transaction."""
        seq = self.conn.execute(
            "INSERT INTO chain_outbox(kind, ref, payload, recorded_ms) VALUES ('consent', ?, ?, ?)",
            (ref, payload, self.now_ms())).lastrowid
        p = payload
        call = self.chain.consent_registry.functions.decide(
            p[:32], p[32:64], p[64:96], p[96], int.from_bytes(p[97:105], "big"), p[105:137])
        receipt = self._send(call, self.chain.writer)
        batch = self._record_batch("consent", self.chain.consent_registry, receipt, 1)
        self.conn.execute("UPDATE chain_outbox SET batch = ?, pos = 0 WHERE seq = ?",
                          (batch, seq))
        return batch

    def proof(self, seq: int) -> dict[str, Any]:
        """The chain proof of an anchored audit row, as the server writes it back."""
        chain_id, contract, tx_hash, block, first_log, pos = self.conn.execute(
            "SELECT b.chain_id, b.contract, b.tx_hash, b.block, b.first_log, a.pos FROM audit a "
            "JOIN chain_batch b ON b.id = a.batch WHERE a.seq = ?", (seq,)).fetchone()
        return {"chainId": chain_id, "contract": contract, "txHash": tx_hash,
                "blockNumber": block, "logIndex": first_log + pos}

    def version_proof(self, ref: str) -> dict[str, Any]:
        chain_id, contract, tx_hash, block, first_log, pos = self.conn.execute(
            "SELECT b.chain_id, b.contract, b.tx_hash, b.block, b.first_log, o.pos "
            "FROM chain_outbox o JOIN chain_batch b ON b.id = o.batch WHERE o.ref = ?",
            (ref,)).fetchone()
        return {"chainId": chain_id, "contract": contract, "txHash": tx_hash,
                "blockNumber": block, "logIndex": first_log + pos}


def deploy(w3: Web3, name: str, writers: Sequence[str]) -> Contract:
    admin = w3.eth.accounts[0]
    art = load_artifact(name)
    factory = w3.eth.contract(abi=art.abi, bytecode=art.bytecode)
    receipt = w3.eth.wait_for_transaction_receipt(factory.constructor(admin).transact(
        {"from": admin}))
    address = receipt["contractAddress"]
    assert address is not None
    contract: Contract = w3.eth.contract(address=address, abi=art.abi)
    role = contract.functions.WRITER_ROLE().call()
    for writer in writers:
        w3.eth.wait_for_transaction_receipt(
            contract.functions.grantRole(role, writer).transact({"from": admin}))
    return contract


def deploy_all(w3: Web3) -> Contracts:
    """The three contracts, with writer nodes for two hospitals."""
    writers = list(w3.eth.accounts)[1:3]
    return Contracts(audit_log=deploy(w3, "AuditLog", writers),
                     anchor=deploy(w3, "Anchor", writers),
                     consent_registry=deploy(w3, "ConsentRegistry", writers),
                     writer=writers[0], other_writer=writers[1])


@pytest.fixture
def contracts(w3: Web3) -> Contracts:
    return deploy_all(w3)


@pytest.fixture
def keyer() -> Keyer:
    return Keyer(bytes.fromhex(SECRET_HEX))


@pytest.fixture
def store(tmp_path: Path, w3: Web3, contracts: Contracts, keyer: Keyer) -> Iterator[Store]:
    s = Store(tmp_path / "var", keyer, w3, contracts)
    yield s
    s.conn.close()


def fill(store: Store) -> dict[str, Any]:
    """A morning at the hospital: patients and a lab result written, read by two doctors;
    everything anchored except the last two accesses (still in the outbox)."""
    keyer = store.keyer
    refs = [store.put(patient_resource(*p))[0] for p in PATIENTS]
    obs_ref, _ = store.put(observation_resource("obs-wbc-20261122", "p-zhangwei", 6.5))
    obs2_ref, _ = store.put(observation_resource("obs-wbc-20261122", "p-zhangwei", 6.8))
    seqs = []
    for n, (pid, *_rest) in enumerate(PATIENTS):
        seqs.append(store.audit(audit_event(keyer, n, pid, "C", "create")))
    for n in range(3, 9):
        pid = PATIENTS[n % 3][0]
        seqs.append(store.audit(audit_event(keyer, n, pid)))
    seqs.append(store.audit(audit_event(keyer, 9, None, "E", "search-type",
                                        what="CapabilityStatement/yilian")))
    first = store.anchor_access(seqs[:6])
    second = store.anchor_access(seqs[6:])
    pending = [store.audit(audit_event(keyer, n, "p-wangfang")) for n in (10, 11)]
    consent_ref, consent_body = store.put(consent_resource("c-zhangwei-his", "p-zhangwei"))
    store.anchor_versions()
    for _, decision in decisions_of(orjson.loads(consent_body), consent_body, keyer):
        store.anchor_consent(consent_ref, decision)
    return {"refs": [*refs, obs_ref, obs2_ref], "seqs": seqs, "pending": pending,
            "batches": (first, second)}
