"""Verification of the audit trail and the data against the chain, trusting neither the server
nor its database: every hash is recomputed here and compared with the logs the chain returns.

Three entry points (docs/chain.md describes the same checks for a verifier with its own code):
- `verify_event`: one AuditEvent as the server serves it, with its chain-proof extension
  (`proof_extension` below is the one place that writes that extension's layout);
- `verify_version`: one resource version (its bytes as `GET …/_history/{vid}` returns them);
- `verify_database`: every audit row, resource-version anchor and consent decision of a store's
  SQLite file, opened read-only, plus every AccessRecorded log our writers put on chain, so a
  missing, altered or extra entry is found (`yilian audit verify`). Each entry is recomputed
  from what the database holds now (the AuditEvent, the history row, the Consent version) and
  compared both with the entry queued in the database and with the log on chain.

An access entry's log (AuditLog.recordBatch): anonymous, topics [patientKey, entryHash], data
the action code as one uint256 word. A version's log (Anchor.anchorVersions): topics
[keccak("VersionAnchored(bytes32,bytes32)"), resourceKey, contentHash], no data. A consent
decision's log (ConsentRegistry.decide): topics [keccak("ConsentDecided(bytes32,bytes32,bytes32,
uint8,uint64,bytes32)"), patientHash, granteeHash, scopeHash], data status | expiresAt |
decisionHash as three uint256 words.
"""

from __future__ import annotations

import re
import sqlite3
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson
from eth_utils import keccak

from app.audit.hashing import (
    ACTION_CODES,
    PATIENT_KEY_URL,
    PROOF_URL,
    ZERO32,
    Keyer,
    entry_hash,
    sha256,
    version_entry,
)
from app.storage.sqlite_audit import raw_path_of

VERSION_ANCHORED_TOPIC = keccak(text="VersionAnchored(bytes32,bytes32)")
CONSENT_DECIDED_TOPIC = keccak(
    text="ConsentDecided(bytes32,bytes32,bytes32,uint8,uint64,bytes32)")
BATCH_RECORDED_TOPIC = keccak(text="BatchRecorded(address,uint256,uint256)")

# FHIR integer and unsignedInt stop at 2^31 - 1; larger chain ids or block numbers are written
# as decimal valueString (the reader accepts both).
FHIR_INT_MAX = 2**31 - 1
MAX_LOGS_PER_CALL = 10_000  # aim of the adaptive eth_getLogs block ranges
PROOF_FIELDS = ("chainId", "contract", "txHash", "blockNumber", "logIndex")
_INT_FIELDS = ("chainId", "blockNumber", "logIndex")
_HEX_DIGITS = {"contract": 40, "txHash": 64}


class ChainError(RuntimeError):
    """The chain's JSON-RPC endpoint is unreachable or answered with an error."""


# --- reading the chain ------------------------------------------------------------------------

@dataclass(frozen=True)
class ChainLog:
    address: str  # checksum address of the emitting contract
    topics: tuple[bytes, ...]
    data: bytes
    log_index: int  # position in the block (JSON-RPC logIndex)
    block_number: int
    tx_hash: str  # "0x…" lower case


@dataclass(frozen=True)
class Receipt:
    tx_hash: str
    status: int
    block_number: int
    logs: tuple[ChainLog, ...]

    def log(self, log_index: int) -> ChainLog | None:
        for entry in self.logs:
            if entry.log_index == log_index:
                return entry
        return None


def _hex(value: Any) -> str:
    if isinstance(value, bytes | bytearray):
        return "0x" + bytes(value).hex()
    return str(value).lower()


def _bytes(value: str) -> bytes:
    return bytes.fromhex(value.removeprefix("0x"))


def _log(raw: dict[str, Any]) -> ChainLog:
    """A log as JSON-RPC returns it (hex strings)."""
    return ChainLog(address=str(raw["address"]).lower(),
                    topics=tuple(_bytes(t) for t in raw["topics"]),
                    data=_bytes(raw["data"]),
                    log_index=int(raw["logIndex"], 16),
                    block_number=int(raw["blockNumber"], 16),
                    tx_hash=str(raw["transactionHash"]).lower())


class ChainReader:
    """Read-only JSON-RPC access to an EVM chain over web3.py's HTTPProvider: a timeout per
    call, no silent retries, and errors that say which endpoint failed and how (`ChainError`).

    Answers are read as the JSON-RPC hex strings (the provider's raw responses), skipping
    web3's result formatters, which would cost more than all the hashing of a verification.
    """

    def __init__(self, url: str, timeout: float = 10.0, cache_receipts: int = 64) -> None:
        from web3 import HTTPProvider

        self.url = url
        self._provider = HTTPProvider(url, request_kwargs={"timeout": timeout},
                                      exception_retry_configuration=None)
        self._chain_id: int | None = None
        self._receipts: OrderedDict[str, Receipt | None] = OrderedDict()
        self._cache_size = cache_receipts

    def call(self, method: str, params: list[Any]) -> Any:
        """One JSON-RPC call's result."""
        from web3.types import RPCEndpoint

        try:
            reply = self._provider.make_request(RPCEndpoint(method), params)
        except Exception as exc:  # requests, socket and decoding errors alike
            raise ChainError(f"{method} failed on {self.url}: {type(exc).__name__}: {exc}") from exc
        if not isinstance(reply, dict) or reply.get("error") or "result" not in reply:
            detail = reply.get("error") if isinstance(reply, dict) else reply
            raise ChainError(f"{method} failed on {self.url}: {detail}")
        return reply["result"]

    def chain_id(self) -> int:
        if self._chain_id is None:
            self._chain_id = int(self.call("eth_chainId", []), 16)
        return self._chain_id

    def block_number(self) -> int:
        return int(self.call("eth_blockNumber", []), 16)

    def receipt(self, tx_hash: str) -> Receipt | None:
        """The transaction's receipt, or None when this chain has no such mined transaction."""
        key = tx_hash.lower()
        if key in self._receipts:
            self._receipts.move_to_end(key)
            return self._receipts[key]
        raw = self.call("eth_getTransactionReceipt", [key])
        try:
            result = None if raw is None else Receipt(
                tx_hash=key, status=int(raw["status"], 16),
                block_number=int(raw["blockNumber"], 16),
                logs=tuple(_log(entry) for entry in raw["logs"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ChainError(f"eth_getTransactionReceipt on {self.url} answered a malformed "
                             f"receipt for {key}: {exc!r}") from exc
        self._receipts[key] = result
        if len(self._receipts) > self._cache_size:
            self._receipts.popitem(last=False)
        return result

    def logs(self, addresses: Iterable[str], from_block: int, to_block: int) -> list[ChainLog]:
        """Every log the contracts emitted in [from_block, to_block] (one eth_getLogs)."""
        raw = self.call("eth_getLogs", [{"address": sorted(a.lower() for a in addresses),
                                         "fromBlock": hex(from_block), "toBlock": hex(to_block)}])
        try:
            return [_log(entry) for entry in raw]
        except (KeyError, TypeError, ValueError) as exc:
            raise ChainError(f"eth_getLogs on {self.url} answered a malformed log: "
                             f"{exc!r}") from exc


# --- the proof extension and verdicts ---------------------------------------------------------

def proof_extension(chain_id: int, contract: str, tx_hash: str, block_number: int,
                    log_index: int) -> dict[str, Any]:
    """The chain-proof extension an anchored AuditEvent carries (docs/chain.md)."""
    return {"url": PROOF_URL, "extension": [
        _number("chainId", chain_id),
        {"url": "contract", "valueString": contract},
        {"url": "txHash", "valueString": tx_hash.lower()},
        _number("blockNumber", block_number),
        _number("logIndex", log_index),
    ]}


def _number(url: str, value: int) -> dict[str, Any]:
    if 0 <= value <= FHIR_INT_MAX:
        return {"url": url, "valueUnsignedInt": value}
    return {"url": url, "valueString": str(value)}


class ProofError(ValueError):
    """A chain-proof extension that is present but cannot be read."""


def read_proof(event: dict[str, Any]) -> dict[str, Any] | None:
    """The proof (chainId, contract, txHash, blockNumber, logIndex) of an AuditEvent, or None
    when it carries no chain-proof extension (not anchored yet)."""
    for ext in event.get("extension") or []:
        if isinstance(ext, dict) and ext.get("url") == PROOF_URL:
            parts = {p.get("url"): p for p in ext.get("extension") or [] if isinstance(p, dict)}
            return {name: _proof_value(name, parts.get(name)) for name in PROOF_FIELDS}
    return None


def _proof_value(name: str, part: dict[str, Any] | None) -> int | str:
    if part is None:
        raise ProofError(f"the chain-proof extension has no {name!r}")
    value = next((v for k, v in part.items() if k.startswith("value")), None)
    if name in _INT_FIELDS:
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
        if isinstance(value, str) and value.isdigit():
            return int(value)
        raise ProofError(f"chain-proof {name!r} must be a non-negative integer, not {value!r}")
    digits = _HEX_DIGITS[name]
    if not isinstance(value, str) or not re.fullmatch(f"0x[0-9a-fA-F]{{{digits}}}", value):
        raise ProofError(f"chain-proof {name!r} must be 0x and {digits} hex digits, "
                         f"not {value!r}")
    return value


def patient_key_of(event: dict[str, Any]) -> bytes:
    """The keyed patient hash an AuditEvent records (32 zero bytes: no patient)."""
    for ext in event.get("extension") or []:
        if isinstance(ext, dict) and ext.get("url") == PATIENT_KEY_URL:
            value = ext.get("valueString")
            try:
                key = bytes.fromhex(str(value).removeprefix("0x"))
            except ValueError:
                raise ProofError(f"the patient-key extension is not hex: {value!r}") from None
            if len(key) != 32:
                raise ProofError(f"the patient-key extension must be 32 bytes, not {len(key)}")
            return key
    return ZERO32


@dataclass(frozen=True)
class Verdict:
    verified: bool
    reason: str | None = None
    # chainId, contract, txHash, blockNumber, logIndex and the hashes checked (0x-hex)
    proof: dict[str, Any] | None = None


def verify_event(event: dict[str, Any], rpc: ChainReader, *,
                 audit_log: str | None = None) -> Verdict:
    """Recompute the AuditEvent's access entry and find it in the log its proof names.

    `audit_log`: the AuditLog address the verifier knows from the consortium; without it the
    contract named in the proof is taken at its word (then only the writer's address, in the
    batch's BatchRecorded log, ties the entry to a hospital).
    """
    try:
        proof = read_proof(event)
        if proof is None:
            return Verdict(False, "not anchored yet: the AuditEvent carries no chain proof")
        patient_key = patient_key_of(event)
    except ProofError as exc:
        return Verdict(False, str(exc))
    action = event.get("action")
    if action not in ACTION_CODES:
        return Verdict(False, f"action {action!r} is not one of {sorted(ACTION_CODES)}")
    digest = entry_hash(event)
    proof = {**proof, "entryHash": _hex(digest), "patientKey": _hex(patient_key)}
    if audit_log is not None and str(proof["contract"]).lower() != audit_log.lower():
        return Verdict(False, f"the proof names contract {proof['contract']}, not the AuditLog "
                              f"at {audit_log}", proof)
    found = _proof_log(rpc, proof)
    if isinstance(found, str):
        return Verdict(False, found, proof)
    reason = _access_log_problem(found, digest, patient_key, ACTION_CODES[action])
    return Verdict(reason is None, reason, proof)


def verify_version(type_: str, id_: str, version: int, body: bytes, proof: dict[str, Any],
                   resource_key: bytes, rpc: ChainReader) -> Verdict:
    """Check one resource version's bytes against its VersionAnchored log.

    `proof`: chainId, contract, txHash, blockNumber, logIndex of the version's anchor;
    `resource_key`: Keyer.version(type_, id_, version), the keyed hash the chain holds.
    """
    content = sha256(body)
    proof = {**proof, "resourceKey": _hex(resource_key), "contentHash": _hex(content)}
    found = _proof_log(rpc, proof)
    if isinstance(found, str):
        return Verdict(False, found, proof)
    reason = _version_log_problem(found, resource_key, content, f"{type_}/{id_}/_history/{version}")
    return Verdict(reason is None, reason, proof)


def _proof_log(rpc: ChainReader, proof: dict[str, Any]) -> ChainLog | str:
    """The log a proof points at, or why there is none."""
    chain_id = rpc.chain_id()
    if int(proof["chainId"]) != chain_id:
        return (f"the proof is for chain {proof['chainId']}, the RPC endpoint serves "
                f"chain {chain_id}")
    receipt = rpc.receipt(str(proof["txHash"]))
    if receipt is None:
        return f"no such transaction on this chain: {proof['txHash']}"
    if receipt.status != 1:
        return f"transaction {proof['txHash']} reverted: it recorded nothing"
    if receipt.block_number != int(proof["blockNumber"]):
        return (f"transaction {proof['txHash']} is in block {receipt.block_number}, "
                f"not {proof['blockNumber']} as the proof says")
    found = receipt.log(int(proof["logIndex"]))
    if found is None:
        return f"transaction {proof['txHash']} has no log {proof['logIndex']}"
    if found.address.lower() != str(proof["contract"]).lower():
        return (f"log {proof['logIndex']} was emitted by {found.address}, not by the contract "
                f"{proof['contract']} the proof names")
    return found


def _access_log_problem(found: ChainLog, digest: bytes, patient_key: bytes,
                        action: int) -> str | None:
    if len(found.topics) != 2 or len(found.data) != 32:
        return (f"log {found.log_index} is not an AccessRecorded of the AuditLog "
                f"({len(found.topics)} topics, {len(found.data)} data bytes)")
    if found.topics[1] != digest:
        return (f"altered: entry hash differs from the one on chain (recomputed {_hex(digest)}, "
                f"chain {_hex(found.topics[1])})")
    if found.topics[0] != patient_key:
        return (f"altered: patient key differs from the one on chain (event {_hex(patient_key)}, "
                f"chain {_hex(found.topics[0])})")
    if int.from_bytes(found.data, "big") != action:
        return (f"altered: action code {action} differs from the one on chain "
                f"({int.from_bytes(found.data, 'big')})")
    return None


def _version_log_problem(found: ChainLog, resource_key: bytes, content: bytes,
                         ref: str) -> str | None:
    if len(found.topics) != 3 or found.topics[0] != VERSION_ANCHORED_TOPIC:
        return f"log {found.log_index} is not a VersionAnchored of the Anchor"
    if found.topics[1] != resource_key:
        return f"the log anchors another resource version than {ref}"
    if found.topics[2] != content:
        return (f"altered: content hash of {ref} differs from the one on chain (recomputed "
                f"{_hex(content)}, chain {_hex(found.topics[2])})")
    return None


def _consent_log_problem(found: ChainLog, payload: bytes) -> str | None:
    if len(found.topics) != 4 or found.topics[0] != CONSENT_DECIDED_TOPIC or len(found.data) != 96:
        return f"log {found.log_index} is not a ConsentDecided of the ConsentRegistry"
    patient, grantee, scope = payload[:32], payload[32:64], payload[64:96]
    status, expires, decision = payload[96], payload[97:105], payload[105:137]
    on_chain = (found.topics[1], found.topics[2], found.topics[3],
                int.from_bytes(found.data[:32], "big"), found.data[32:64][-8:], found.data[64:96])
    if on_chain != (patient, grantee, scope, status, expires, decision):
        return "altered: the consent decision differs from the one on chain"
    return None


def parameters(verdict: Verdict) -> dict[str, Any]:
    """The `$verify` answer: a FHIR Parameters resource (verified, reason, proof parts)."""
    params: list[dict[str, Any]] = [{"name": "verified", "valueBoolean": verdict.verified}]
    if verdict.reason:
        params.append({"name": "reason", "valueString": verdict.reason})
    if verdict.proof:
        parts = []
        for name, value in verdict.proof.items():
            if isinstance(value, int) and not isinstance(value, bool):
                part = _number(name, value)
                parts.append({"name": name, **{k: v for k, v in part.items() if k != "url"}})
            else:
                parts.append({"name": name, "valueString": str(value)})
        params.append({"name": "proof", "part": parts})
    return {"resourceType": "Parameters", "parameter": params}


# --- the whole database -----------------------------------------------------------------------

@dataclass(frozen=True)
class Problem:
    kind: str  # missing | altered | extra
    subject: str  # AuditEvent/<id>, <type>/<id>/_history/<v>, Consent/…, or a chain log
    reason: str
    seq: int | None = None  # audit.seq or chain_outbox.seq

    def __str__(self) -> str:
        seq = f" (seq {self.seq})" if self.seq is not None else ""
        return f"{self.kind}: {self.subject}{seq}: {self.reason}"


COUNT_NAMES = ("checked", "verified", "pending", "missing", "altered", "extra")


@dataclass
class Report:
    rpc_url: str
    chain_id: int
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNT_NAMES, 0))
    # AccessRecorded logs of other nodes' writers in the same AuditLog (not ours to account for)
    foreign: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, problem: Problem) -> None:
        prefix = f"{problem.kind}: "
        if problem.reason.startswith(prefix):  # said once, by the kind
            problem = Problem(problem.kind, problem.subject, problem.reason.removeprefix(prefix),
                              problem.seq)
        self.problems.append(problem)
        self.counts[problem.kind] += 1

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "rpcUrl": self.rpc_url, "chainId": self.chain_id,
                "counts": dict(self.counts), "foreign": self.foreign,
                "problems": [asdict(p) for p in self.problems]}


@dataclass(frozen=True)
class _Batch:
    id: int
    kind: str
    chain_id: int
    contract: str
    tx_hash: str
    state: str
    block: int | None
    first_log: int | None


def open_read_only(db_path: Path) -> sqlite3.Connection:
    """The store's SQLite file, read-only (the file is never written, even by WAL recovery)."""
    if not db_path.is_file():
        raise FileNotFoundError(f"{db_path}: no such database file")
    conn = sqlite3.connect(f"{db_path.resolve().as_uri()}?mode=ro", uri=True)
    # TEXT that is not UTF-8 (an edited BLOB) must not stop the run: keep its bytes
    conn.text_factory = lambda raw: raw.decode("utf-8", "surrogateescape")
    conn.execute("PRAGMA query_only = ON")
    return conn


def verify_database(db_path: Path, keyer: Keyer, rpc: ChainReader, *,
                    from_seq: int | None = None, to_seq: int | None = None,
                    audit_logs: Iterable[str] = (), writers: Iterable[str] = (),
                    log_chunk: int = 5000, store_db: Path | None = None) -> Report:
    """Check the audit trail at `db_path` (var/audit.sqlite3) and the resources of `store_db`
    (var/yilian.sqlite3; None: the same file) against the chain (see the module docstring).

    `from_seq`/`to_seq` select the audit rows (inclusive); resource versions and consent
    decisions are always checked whole. Extra entries are searched in every block when no range
    is given, otherwise in the blocks of the selected rows' batches. `audit_logs` and `writers`
    add AuditLog contracts and writer addresses known from outside the database (the consortium's
    deployment record) to those named in chain_batch, so deleting batches from the database does
    not hide their entries.
    """
    conn = open_read_only(db_path)
    if store_db is not None and store_db.resolve() != db_path.resolve():
        if not store_db.is_file():
            raise FileNotFoundError(f"{store_db}: no such database file")
        # unqualified `history`/`resource` resolve to the attached resource file
        conn.execute("ATTACH DATABASE ? AS store", (f"{store_db.resolve().as_uri()}?mode=ro",))
    try:
        report = Report(rpc_url=rpc.url, chain_id=rpc.chain_id())
        conn.execute("BEGIN")  # one snapshot for every query below
        batches = {row[0]: _Batch(*row) for row in conn.execute(
            "SELECT id, kind, chain_id, contract, tx_hash, state, block, first_log "
            "FROM chain_batch")}
        blocks = _check_audit(conn, batches, rpc, report, from_seq, to_seq)
        if from_seq is None and to_seq is None:
            # reads recorded but not sealed into AuditEvents yet (app/audit/sealing.py): they
            # have no seq, and nothing to check until the anchoring worker seals them
            report.counts["pending"] += _raw_accesses(raw_path_of(db_path))
        _check_outbox(conn, batches, keyer, rpc, report)
        if from_seq is None and to_seq is None:
            span: tuple[int, int] | None = (0, rpc.block_number())
        else:
            span = (min(blocks), max(blocks)) if blocks else None
        if span is not None:
            _find_extra(conn, batches, rpc, report, span, set(audit_logs), set(writers),
                        log_chunk)
    finally:
        conn.close()
    return report


def _raw_accesses(raw_path: Path) -> int:
    """Reads recorded in the raw file and not sealed yet (no file: none)."""
    if not raw_path.is_file():
        return 0
    conn = open_read_only(raw_path)
    try:
        return int(conn.execute("SELECT count(*) FROM audit_raw").fetchone()[0])
    except sqlite3.OperationalError as exc:  # a file without the table
        if "no such table" in str(exc):
            return 0
        raise
    finally:
        conn.close()


def _blob(value: Any) -> bytes:
    """A BLOB column's bytes; the file is untrusted, so TEXT (what SQLite's string functions
    return) and NULL are read too rather than failing the whole run."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    return b"" if value is None else str(value).encode("utf-8", "surrogateescape")


def _seq_range(from_seq: int | None, to_seq: int | None) -> tuple[str, list[int]]:
    clauses, args = [], []
    if from_seq is not None:
        clauses.append("seq >= ?")
        args.append(from_seq)
    if to_seq is not None:
        clauses.append("seq <= ?")
        args.append(to_seq)
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", args


def _recompute_access(body: bytes) -> bytes | str:
    """The 65-byte access entry an audit row's body gives, or why it gives none."""
    try:
        event = orjson.loads(body)
    except orjson.JSONDecodeError:
        return "altered: the stored AuditEvent is not JSON"
    if not isinstance(event, dict) or event.get("resourceType") != "AuditEvent":
        return "altered: the stored body is not an AuditEvent"
    action = event.get("action")
    if action not in ACTION_CODES:
        return f"altered: action {action!r} has no code"
    try:
        patient_key = patient_key_of(event)
    except ProofError as exc:
        return f"altered: {exc}"
    return entry_hash(event) + patient_key + bytes((ACTION_CODES[action],))


def _batch_log(batch: _Batch | None, pos: int, rpc: ChainReader) -> ChainLog | str | None:
    """The log of entry `pos` of a batch; None while the batch is not confirmed; or the reason
    the chain does not have it."""
    if batch is None:
        return "its batch is not in chain_batch"
    if batch.state != "confirmed":
        return None
    if batch.block is None or batch.first_log is None:
        return f"batch {batch.id} is confirmed but has no block or first log index"
    proof = {"chainId": batch.chain_id, "contract": batch.contract, "txHash": batch.tx_hash,
             "blockNumber": batch.block, "logIndex": batch.first_log + pos}
    return _proof_log(rpc, proof)


def _check_audit(conn: sqlite3.Connection, batches: dict[int, _Batch], rpc: ChainReader,
                 report: Report, from_seq: int | None, to_seq: int | None) -> set[int]:
    """Every audit row in range; returns the blocks of their confirmed batches."""
    where, args = _seq_range(from_seq, to_seq)
    blocks: set[int] = set()
    rows = conn.execute(f"SELECT seq, id, body, entry, batch, pos FROM audit{where} ORDER BY seq",
                        args)
    for seq, id_, body, stored, batch_id, pos in rows:
        report.counts["checked"] += 1
        subject = f"AuditEvent/{id_}"
        expected = _recompute_access(_blob(body))
        if isinstance(expected, str):
            report.add(Problem("altered", subject, expected, seq))
            continue
        if _blob(stored) != expected:
            what = "entry hash" if _blob(stored)[:32] != expected[:32] else "patient key or action"
            report.add(Problem("altered", subject, f"altered: {what} recomputed from the stored "
                               "AuditEvent differs from the entry queued for the chain", seq))
            continue
        if batch_id is None:
            report.counts["pending"] += 1
            continue
        batch = batches.get(batch_id)
        found = _batch_log(batch, pos, rpc)
        if found is None:
            report.counts["pending"] += 1
            continue
        if batch is not None and batch.block is not None:
            blocks.add(batch.block)
        if isinstance(found, str):
            report.add(Problem("missing", subject, f"batch {batch_id} entry {pos}: {found}", seq))
            continue
        reason = _access_log_problem(found, expected[:32], expected[32:64], expected[64])
        _record(report, subject, reason, batch_id, pos, seq)
    return blocks


def _record(report: Report, subject: str, reason: str | None, batch_id: int, pos: int,
            seq: int) -> None:
    """Count an entry checked against its log: verified, altered, or missing from the chain."""
    if reason is None:
        report.counts["verified"] += 1
    elif reason.startswith("altered"):
        report.add(Problem("altered", subject, reason, seq))
    else:
        report.add(Problem("missing", subject, f"batch {batch_id} entry {pos}: {reason}", seq))


def _parse_ref(ref: str) -> tuple[str, str, int] | None:
    parts = ref.split("/")
    if len(parts) != 4 or parts[2] != "_history" or not parts[3].isdigit():
        return None
    return parts[0], parts[1], int(parts[3])


def _check_outbox(conn: sqlite3.Connection, batches: dict[int, _Batch], keyer: Keyer,
                  rpc: ChainReader, report: Report) -> None:
    """Resource-version anchors (recomputed from the history table) and consent decisions."""
    rows = conn.execute("SELECT seq, kind, ref, payload, batch, pos FROM chain_outbox "
                        "WHERE kind IN ('version', 'consent') ORDER BY seq")
    for seq, kind, ref, payload, batch_id, pos in rows:
        report.counts["checked"] += 1
        payload = _blob(payload)
        parsed = _parse_ref(ref)
        if parsed is None:
            report.add(Problem("altered", ref, f"altered: {ref!r} names no resource version", seq))
            continue
        body = _history_body(conn, *parsed)
        if body is None:
            report.add(Problem("altered", ref, "altered: the anchored version is no longer "
                               "in the history table", seq))
            continue
        if kind == "version" and payload != version_entry(keyer.version(*parsed), body):
            report.add(Problem("altered", ref, "altered: content hash of the stored version "
                               "differs from the one queued for the chain", seq))
            continue
        if kind == "consent" and payload not in _consent_entries(conn, parsed, body, keyer):
            report.add(Problem("altered", ref, "altered: the consent decision recomputed from "
                               "the stored Consent differs from the one queued for the chain",
                               seq))
            continue
        if batch_id is None:
            report.counts["pending"] += 1
            continue
        found = _batch_log(batches.get(batch_id), pos, rpc)
        if found is None:
            report.counts["pending"] += 1
            continue
        if isinstance(found, str):
            report.add(Problem("missing", ref, f"batch {batch_id} entry {pos}: {found}", seq))
            continue
        if kind == "version":
            reason = _version_log_problem(found, payload[:32], payload[32:], ref)
        else:
            reason = _consent_log_problem(found, payload)
        _record(report, ref, reason, batch_id, pos, seq)


def _consent_entries(conn: sqlite3.Connection, ref: tuple[str, str, int], body: bytes,
                     keyer: Keyer) -> list[bytes]:
    """The decisions a stored Consent version gives (app/consent/chain.py has the rules); a
    deletion (empty body) revokes those of the version before it."""
    from app.consent.chain import decisions_of, deletion_decisions

    source = body
    if not body:
        type_, id_, version = ref
        previous = _history_body(conn, type_, id_, version - 1)
        if not previous:
            return []
        source = previous
    try:
        consent = orjson.loads(source)
    except orjson.JSONDecodeError:
        return []
    if not isinstance(consent, dict):
        return []
    if not body:
        return [entry for _, entry in deletion_decisions(consent, keyer)]
    return [entry for _, entry in decisions_of(consent, body, keyer)]


def _history_body(conn: sqlite3.Connection, type_: str, id_: str, version: int) -> bytes | None:
    row = conn.execute("SELECT h.body FROM history h JOIN resource r ON r.rid = h.rid "
                       "WHERE r.type = ? AND r.id = ? AND h.version = ?",
                       (type_, id_, version)).fetchone()
    return None if row is None else _blob(row[0])


def _find_extra(conn: sqlite3.Connection, batches: dict[int, _Batch], rpc: ChainReader,
                report: Report, span: tuple[int, int], audit_logs: set[str], writers: set[str],
                chunk: int) -> None:
    """AccessRecorded logs written by our writers that no audit row accounts for.

    Our writers are those given plus the `writer` of the BatchRecorded log closing each of our
    confirmed transactions, as the chain has it: learnt during the scan, so unaccounted logs
    are judged only at its end.
    """
    chain_id = rpc.chain_id()
    ours = [b for b in batches.values() if b.kind == "access" and b.chain_id == chain_id]
    contracts = {c.lower() for c in audit_logs} | {b.contract.lower() for b in ours}
    if not contracts:
        return
    our_txs = {b.tx_hash.lower() for b in ours if b.state == "confirmed"}
    writer_set = {w.lower() for w in writers}
    known = {_blob(row[0]) for row in conn.execute("SELECT substr(entry, 1, 32) FROM audit")}
    claimed = {(str(tx).lower(), int(index)) for tx, index in conn.execute(
        "SELECT b.tx_hash, b.first_log + a.pos FROM audit a JOIN chain_batch b ON b.id = a.batch "
        "WHERE b.kind = 'access' AND b.state = 'confirmed' AND b.first_log IS NOT NULL")}
    unaccounted: dict[str, list[ChainLog]] = {}
    for tx_hash, tx_logs in _logs_by_tx(rpc, contracts, span, chunk):
        closing = [entry for entry in tx_logs if _is_batch_recorded(entry)]
        writer = _writer(closing[-1]) if closing else "an unknown writer"
        if tx_hash in our_txs:
            writer_set.add(writer)
        for entry in tx_logs:
            if len(entry.topics) != 2 or len(entry.data) != 32:
                continue  # not an AccessRecorded
            if (tx_hash, entry.log_index) in claimed or entry.topics[1] in known:
                continue
            unaccounted.setdefault(writer, []).append(entry)
    for writer, logs in unaccounted.items():
        if writer not in writer_set:
            report.foreign += len(logs)
            continue
        for entry in logs:
            report.add(Problem(
                "extra", f"log {entry.log_index} of {entry.tx_hash}",
                f"AccessRecorded by our writer {writer} in block {entry.block_number} (entry hash "
                f"{_hex(entry.topics[1])}, patient key {_hex(entry.topics[0])}) has no audit row"))


def _is_batch_recorded(entry: ChainLog) -> bool:
    return len(entry.topics) == 3 and entry.topics[0] == BATCH_RECORDED_TOPIC


def _writer(entry: ChainLog) -> str:
    return "0x" + entry.topics[1][-20:].hex()


def _logs_by_tx(rpc: ChainReader, contracts: set[str], span: tuple[int, int],
                chunk: int) -> Iterator[tuple[str, list[ChainLog]]]:
    """The contracts' logs in the block span, grouped by transaction, in chain order.

    The block range of each eth_getLogs shrinks when an answer is large or refused (nodes
    limit results, e.g. geth and Besu at 10,000 logs), so a busy chain is read in bounded calls.
    """
    start, end = span
    while start <= end:
        stop = min(end, start + chunk - 1)
        try:
            logs = rpc.logs(contracts, start, stop)
        except ChainError:
            if stop == start:
                raise
            chunk = max(1, (stop - start + 1) // 2)
            continue
        if len(logs) > MAX_LOGS_PER_CALL:
            chunk = max(1, chunk * MAX_LOGS_PER_CALL // len(logs))
        group: list[ChainLog] = []
        for entry in logs:
            if group and group[0].tx_hash != entry.tx_hash:
                yield group[0].tx_hash, group
                group = []
            group.append(entry)
        if group:
            yield group[0].tx_hash, group
        start = stop + 1
