"""The anchoring worker: moves the audit outbox onto the chain in batches and writes back proofs.

The server writes every AuditEvent (its 65-byte access entry in `audit.entry`) and every other
chain entry (`chain_outbox`: resource-version anchors, consent decisions) in the same SQLite
transaction as the access itself; this worker is the only writer of `chain_batch` and of the
rows' `batch`/`pos`. One round:

1. On a new epoch (the chain was reset and the contracts redeployed) every batch of an older epoch
   becomes `orphaned` and its rows return to the outbox, to be anchored again on the new chain.
2. Batches in state `sent` are settled from their receipts: mined with status 1 and
   `chain_confirmations` deep -> `confirmed` with block and first_log (the proof of row `pos` is
   log `first_log + pos` of that block); reverted -> `failed`, rows back to the outbox; unknown to
   the node -> the same signed transaction (same nonce, same hash) is sent again.
3. New batches: pending rows in seq order, up to `anchor_batch_size` per transaction
   (AuditLog.recordBatch, Anchor.anchorVersions; one ConsentRegistry.decide per consent). The
   transaction is signed locally, then written to `chain_batch` (state `sent`, raw_tx, tx_hash)
   together with the rows' batch/pos in ONE SQLite transaction, and only then sent. A kill -9 at
   any point leaves either no batch (rows still queued) or a batch whose exact transaction step 2
   resends, so no entry is lost or recorded twice. A transaction that would revert (gas
   estimation fails, e.g. this node's key lacks WRITER_ROLE) is not sent: the contract error is
   logged by name and the worker backs off with the rows still queued.

Every round checks the current epoch first, and every `RESET_CHECK_S` (or sooner when the node
answers unexpectedly) compares the chain with the deployment (app/chain/node.py `check_chain`);
a reset found there is redeployed (`redeploy`) and anchoring starts over on the new contracts.
Recently confirmed batches are re-checked whenever the lease is taken and after an outage: a
dev chain restored from an older state dump may have lost their blocks, and their transactions
are then resent.
`chain_batch.mined_ms` is when the worker first saw the receipt (block timestamps have whole
seconds only).

Calldata is built by hand (selector + ABI head of one `bytes` argument + the packed entries): the
entries are already in the contracts' byte format, and per-entry Python work is what limits
throughput. Only the process holding the `anchorer` lease (app/chain/lease.py) sends.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import requests
from eth_abi import decode as abi_decode
from web3 import Web3

from app.audit.hashing import Keyer
from app.audit.sealing import Sealer
from app.chain.artifacts import CONTRACTS, load_artifact
from app.chain.lease import RENEW_S, Lease, holds, new_holder, now_ms
from app.chain.node import (
    ChainHandle,
    ChainUnreachable,
    check_chain,
    public_url,
    redeploy,
)
from app.config import Settings
from app.storage.base import AuditRow, RawAccess
from app.storage.sqlite_audit import raw_path_of, seal_raw
from app.storage.sqlite_schema import RAW_SCHEMA

log = logging.getLogger("yilian.chain.anchorer")

LEASE_NAME = "anchorer"
MAX_IN_FLIGHT = 16  # sent-but-unconfirmed transactions before new ones wait
BACKOFF_CAP_S = 10.0
RPC_TIMEOUT_S = 10.0
RECHECK_CONFIRMED = 64  # recent confirmed batches re-checked when the lease is (re)taken
RESET_CHECK_S = 10.0  # how often the chain is compared with the deployment (check_chain)
GAS_MARGIN_NUM, GAS_MARGIN_DEN, GAS_MARGIN_ADD = 6, 5, 10_000
DEFAULT_TIP_WEI = 10**9
# ConsentRegistry errors that depend on the decision alone (a grant whose expiry passed while it
# waited, no status): retrying cannot help, and the decision must not block those behind it.
REFUSED_FOR_GOOD = ("ExpiryInThePast(", "NoDecision(")


@dataclass(frozen=True)
class Kind:
    """One kind of chain entry: where its rows wait and which contract function takes them."""

    name: str  # chain_batch.kind
    contract: str  # key of ChainHandle.contracts
    signature: str
    entry_size: int
    table: str
    column: str
    one_per_tx: bool

    @property
    def selector(self) -> bytes:
        return Web3.keccak(text=self.signature)[:4]


ACCESS = Kind("access", "AuditLog", "recordBatch(bytes)", 65, "audit", "entry", False)
VERSION = Kind("version", "Anchor", "anchorVersions(bytes)", 64, "chain_outbox", "payload", False)
CONSENT = Kind("consent", "ConsentRegistry",
               "decide(bytes32,bytes32,bytes32,uint8,uint64,bytes32)", 137, "chain_outbox",
               "payload", True)
KINDS = (ACCESS, VERSION, CONSENT)
KIND_BY_NAME = {k.name: k for k in KINDS}


def packed_calldata(selector: bytes, packed: bytes) -> bytes:
    """ABI encoding of `f(bytes packed)`: offset word, length word, data right-padded to 32."""
    return (selector + (32).to_bytes(32, "big") + len(packed).to_bytes(32, "big") + packed
            + bytes(-len(packed) % 32))


def decide_calldata(selector: bytes, payload: bytes) -> bytes:
    """ABI encoding of ConsentRegistry.decide from a 137-byte consent entry (app/audit/hashing)."""
    if len(payload) != CONSENT.entry_size:
        raise ValueError(f"a consent entry has {CONSENT.entry_size} bytes, not {len(payload)}")
    return (selector + payload[:96] + bytes(31) + payload[96:97] + bytes(24) + payload[97:105]
            + payload[105:137])


def calldata(kind: Kind, payloads: Sequence[bytes]) -> bytes:
    if kind.one_per_tx:
        (payload,) = payloads
        return decide_calldata(kind.selector, payload)
    packed = b"".join(payloads)
    if len(packed) != kind.entry_size * len(payloads):
        raise ValueError(f"{kind.name} entries must have {kind.entry_size} bytes each")
    return packed_calldata(kind.selector, packed)


def _error_table() -> dict[bytes, tuple[str, list[str], list[str]]]:
    table: dict[bytes, tuple[str, list[str], list[str]]] = {
        bytes.fromhex("08c379a0"): ("Error", ["string"], ["message"]),
        bytes.fromhex("4e487b71"): ("Panic", ["uint256"], ["code"]),
    }
    for name in CONTRACTS:
        for item in load_artifact(name).abi:
            if item["type"] == "error":
                types = [i["type"] for i in item["inputs"]]
                names = [i["name"] for i in item["inputs"]]
                table[Web3.keccak(text=f"{item['name']}({','.join(types)})")[:4]] = (
                    item["name"], types, names)
    return table


_ERRORS = _error_table()


def describe_revert(data: bytes) -> str:
    """A revert's data as `ErrorName(arg=value, ...)` from the contracts' ABIs."""
    if len(data) < 4:
        return "revert without reason"
    found = _ERRORS.get(data[:4])
    if found is None:
        return f"unknown error 0x{data[:4].hex()}"
    name, types, names = found
    try:
        values = abi_decode(types, data[4:])
    except Exception:  # malformed arguments: the name is still the useful part
        return f"{name}(…)"
    shown = [f"{n}=0x{v.hex()}" if isinstance(v, bytes) else f"{n}={v}"
             for n, v in zip(names, values, strict=True)]
    return f"{name}({', '.join(shown)})"


class RpcError(Exception):
    """The node answered a JSON-RPC call with an error."""

    def __init__(self, method: str, error: dict[str, Any]) -> None:
        self.method = method
        self.code = int(error.get("code", 0))
        self.message = str(error.get("message", ""))
        raw = error.get("data")
        if isinstance(raw, dict):  # some nodes nest it: {"data": {"data": "0x…"}}
            raw = raw.get("data")
        self.revert: bytes | None = None
        if isinstance(raw, str) and raw.startswith("0x"):
            try:
                self.revert = bytes.fromhex(raw[2:])
            except ValueError:
                self.revert = None
        super().__init__(f"{method}: {self.message} (code {self.code})")


class Reverted(Exception):
    """A call the worker needs would revert: a rule of the contract, not a chain outage."""


class Rpc:
    """Raw JSON-RPC over one keep-alive HTTP session: no result formatting, no retries (the
    anchorer's backoff is the retry), batch requests for receipts. JSON through orjson: a
    receipt of a full batch carries 1,000 logs (~300 kB), decoded several times a second."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._session = requests.Session()
        self._ids = itertools.count(1)

    def _post(self, payload: Any) -> Any:
        reply = self._session.post(self.url, data=orjson.dumps(payload), timeout=RPC_TIMEOUT_S,
                                   headers={"Content-Type": "application/json"})
        reply.raise_for_status()
        return orjson.loads(reply.content)

    def call(self, method: str, *params: Any) -> Any:
        reply = self._post({"jsonrpc": "2.0", "id": next(self._ids), "method": method,
                            "params": list(params)})
        if not isinstance(reply, dict):
            raise RpcError(method, {"message": f"not a JSON-RPC reply: {str(reply)[:200]}"})
        if reply.get("error"):
            raise RpcError(method, dict(reply["error"]))
        return reply.get("result")

    def batch(self, calls: Sequence[tuple[str, list[Any]]]) -> list[Any]:
        """Results in order; an RpcError instance in place of each failed call."""
        if not calls:
            return []
        first = next(self._ids)
        for _ in calls[1:]:
            next(self._ids)
        replies = self._post([{"jsonrpc": "2.0", "id": first + i, "method": m, "params": p}
                              for i, (m, p) in enumerate(calls)])
        if not isinstance(replies, list):  # the whole batch was refused
            error = replies.get("error") if isinstance(replies, dict) else None
            raise RpcError("batch", dict(error or {"message": "not a JSON-RPC batch reply"}))
        by_id = {r.get("id"): r for r in replies if isinstance(r, dict)}
        out: list[Any] = []
        for i, (m, _) in enumerate(calls):
            r = by_id.get(first + i)
            if r is None:
                out.append(RpcError(m, {"message": "no reply in the batch"}))
            elif r.get("error"):
                out.append(RpcError(m, dict(r["error"])))
            else:
                out.append(r.get("result"))
        return out


@dataclass(frozen=True)
class _Fresh:
    """Raw accesses sealed for the next access batch: their AuditEvent rows and the last raw
    seq they came from."""

    rows: list[AuditRow] = field(default_factory=list)
    last_seq: int = 0


class _SealedMeanwhile(Exception):
    """A freshly sealed AuditEvent was in the audit file already (another sealer, or a crash
    after the batch was written and before its raw accesses were deleted)."""


@dataclass(frozen=True)
class _Batch:
    id: int
    kind: Kind
    nonce: int
    raw_tx: bytes
    tx_hash: str
    entries: int
    contract: str
    block: int | None = None


def _int(value: Any) -> int:
    return int(value, 16) if isinstance(value, str) else int(value)


@contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE … COMMIT (the connection is in autocommit mode): one fsync, and the
    write lock from the start, so a read inside cannot go stale before the write."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA busy_timeout=30000")
    # A batch row must be on disk before its transaction leaves the process.
    conn.execute("PRAGMA synchronous=FULL")
    return conn


class Anchorer:
    """The single anchoring worker of this database (see the module docstring).

    `handle` returns the current chain (or None while there is none yet); it is called every
    round, so a redeployment (epoch + 1) is picked up without restarting the worker.
    """

    def __init__(self, db_path: Path, settings: Settings,
                 handle: Callable[[], ChainHandle | None], holder: str | None = None) -> None:
        self.db_path = db_path
        self.settings = settings
        self._handle = handle
        self.holder = holder or new_holder()
        self._db = _connect(db_path)
        self._lease = Lease(_connect(db_path), LEASE_NAME, self.holder)
        # reads' raw accesses become AuditEvents here, off the servers' request paths
        self._sealer = Sealer(Keyer.in_var_dir(settings.var_dir))
        self._raw = _connect(raw_path_of(db_path))
        self._raw.execute("PRAGMA synchronous=NORMAL")  # deletes of what the audit file holds
        self._raw.executescript(RAW_SCHEMA)
        self._rpc: Rpc | None = None
        self._orphaned_below = -1  # epochs below this were orphaned already
        self._recheck = True  # re-check recent confirmations when the lease is (re)taken
        self._redeployed: ChainHandle | None = None  # our own redeployment after a reset
        self._next_reset_check = 0.0  # monotonic time; 0: at the next round
        self._skipped: set[int] = set()  # consent rows the registry refuses for good
        self._seen_mined: dict[int, int] = {}  # batch id -> when its receipt was first seen
        self.failures = 0  # consecutive failed rounds: drives the backoff
        # (epoch, contract) -> {entries: estimated gas} of the batches estimated so far
        self._gas_points: dict[tuple[int, str], dict[int, int]] = {}
        self.last_error: str | None = None
        self.sent_entries = 0
        self.confirmed_entries = 0

    # -- scheduling -------------------------------------------------------------------------

    def delay(self) -> float:
        """Seconds to wait before the next round: the interval, doubled per failed round."""
        base = self.settings.anchor_interval_ms / 1000
        if self.failures == 0:
            return base
        return float(min(BACKOFF_CAP_S, base * 2 ** min(self.failures, 16)))

    async def run(self) -> None:
        """Anchor until cancelled: wait for the lease, then rounds; releases it on a clean stop."""
        try:
            while True:
                if not await asyncio.to_thread(self._try_acquire):
                    await asyncio.sleep(RENEW_S)
                    continue
                log.info("anchoring worker %s took the lease", self.holder)
                self._recheck = True
                keeper = asyncio.create_task(self._keep_lease())
                try:
                    while not keeper.done():
                        _, busy = await self._round_in_thread()
                        await asyncio.sleep(0 if busy and self.failures == 0 else self.delay())
                finally:
                    keeper.cancel()
        finally:
            await asyncio.to_thread(self._try_release)

    async def run_once(self) -> int:
        """One round (taking or renewing the lease first); entries newly confirmed."""
        if not await asyncio.to_thread(self._try_acquire):
            return 0
        confirmed, _ = await self._round_in_thread()
        return confirmed

    def close(self) -> None:
        """Give up the lease and close the database connections."""
        try:
            self._try_release()
        finally:
            self._lease.conn.close()
            self._db.close()
            self._raw.close()

    def _try_acquire(self) -> bool:
        try:
            return self._lease.acquire()
        except sqlite3.Error as exc:  # locked for 30 s, or the store has not made its tables
            log.warning("could not take or renew the anchoring lease in %s: %s", self.db_path,
                        exc)
            return False

    def _try_release(self) -> None:
        try:
            self._lease.release()
        except sqlite3.Error as exc:  # it expires by itself
            log.warning("could not release the anchoring lease: %s", exc)

    async def _keep_lease(self) -> None:
        while True:
            await asyncio.sleep(RENEW_S)
            held = await asyncio.to_thread(self._try_acquire)
            if not held:
                log.warning("anchoring worker %s lost the lease to %s", self.holder,
                            self._lease.current())
                return

    async def _round_in_thread(self) -> tuple[int, bool]:
        # A round that was started finishes even when the task is cancelled: its SQLite
        # transaction and the send that follows belong together.
        fut = asyncio.ensure_future(asyncio.to_thread(self._round_safe))
        try:
            return await asyncio.shield(fut)
        except asyncio.CancelledError:
            await asyncio.wait([fut])
            raise

    def _round_safe(self) -> tuple[int, bool]:
        try:
            result = self._round()
        except Reverted as exc:
            self._failed(str(exc), logging.ERROR)
            return 0, False
        except (RpcError, ChainUnreachable, requests.RequestException, OSError) as exc:
            if isinstance(exc, RpcError):  # a node that answers oddly may be a new chain
                self._next_reset_check = 0.0
            # A chain that comes back may have been restored from a state dump older than its
            # last blocks: look at the recent confirmations again then.
            self._recheck = True
            # Hosted RPC URLs carry API keys in the path or query, and requests' messages
            # repeat them: name the endpoint by scheme, host and port, the error by its type.
            where = public_url(self._rpc.url) if self._rpc else "the chain"
            what = (type(exc.__cause__ or exc).__name__
                    if isinstance(exc, (requests.RequestException, ChainUnreachable))
                    else str(exc))
            self._failed(f"chain unavailable at {where}: {what}", logging.WARNING)
            return 0, False
        except Exception as exc:  # never let the worker die: log it and back off
            log.exception("anchoring round failed")
            self._failed(f"{type(exc).__name__}: {exc}", None)
            return 0, False
        if self.failures:
            log.info("anchoring resumed after %d failed rounds", self.failures)
        self.failures = 0
        self.last_error = None
        return result

    def _failed(self, why: str, level: int | None) -> None:
        self.failures += 1
        self.last_error = why
        if level is not None:
            log.log(level, "%s; entries stay queued, next attempt in %.2f s", why, self.delay())

    # -- one round --------------------------------------------------------------------------

    def _round(self) -> tuple[int, bool]:
        handle = self._handle()
        if handle is None:
            return 0, False
        if self._redeployed is not None:
            if self._redeployed.epoch > handle.epoch:
                handle = self._redeployed
            else:
                self._redeployed = None
        if self._rpc is None or self._rpc.url != handle.rpc_url:
            self._rpc = Rpc(handle.rpc_url)
        if time.monotonic() >= self._next_reset_check:
            handle = self._check_reset(handle)
            if self._rpc.url != handle.rpc_url:
                self._rpc = Rpc(handle.rpc_url)
        rpc = self._rpc
        if handle.epoch > self._orphaned_below:
            self._orphan_older_epochs(handle.epoch)
        if self._recheck:
            self._recheck_confirmed(handle, rpc)
            self._recheck = False
        confirmed = self._settle(handle, rpc)
        backlog = self._send_new(handle, rpc)
        return confirmed, backlog

    def _check_reset(self, handle: ChainHandle) -> ChainHandle:
        """A chain reset under the running server (new block 0, contracts gone or replaced) is
        a new epoch: redeploy (app/chain/node.py says so loudly) and re-anchor on the new one."""
        reason = check_chain(handle)
        self._next_reset_check = time.monotonic() + RESET_CHECK_S
        if reason is None:
            return handle
        self._redeployed = redeploy(self.settings, handle, reason)
        return self._redeployed

    def _orphan_older_epochs(self, epoch: int) -> None:
        with _transaction(self._db) as db:
            ids = [r[0] for r in db.execute(
                "SELECT id FROM chain_batch WHERE epoch < ? AND state != 'orphaned'", (epoch,))]
            if ids:
                marks = ",".join("?" * len(ids))
                for table in ("audit", "chain_outbox"):
                    db.execute(f"UPDATE {table} SET batch = NULL, pos = NULL "
                               f"WHERE batch IN ({marks})", ids)
                db.execute(f"UPDATE chain_batch SET state = 'orphaned' WHERE id IN ({marks})", ids)
        if ids:
            log.critical("chain epoch %d: %d batches of earlier chains orphaned; their entries "
                         "are queued to be anchored again on the new chain", epoch, len(ids))
        self._orphaned_below = epoch

    def _recheck_confirmed(self, handle: ChainHandle, rpc: Rpc) -> None:
        """Confirmed batches the chain no longer has (a dev chain restarted from a state dump
        older than its last blocks) go back to `sent`, so their transactions are resent."""
        rows = self._db.execute(
            "SELECT id, tx_hash, block FROM chain_batch WHERE state = 'confirmed' AND epoch = ? "
            "ORDER BY id DESC LIMIT ?", (handle.epoch, RECHECK_CONFIRMED)).fetchall()
        if not rows:
            return
        # Blocks with transaction hashes only: receipts would carry every entry's log.
        blocks = sorted({r[2] for r in rows})
        replies = rpc.batch([("eth_getBlockByNumber", [hex(b), False]) for b in blocks])
        held: dict[int, set[str]] = {}
        for block, reply in zip(blocks, replies, strict=True):
            if isinstance(reply, RpcError):
                raise reply
            held[block] = {str(t).lower() for t in reply["transactions"]} if reply else set()
        lost = [(batch_id,) for batch_id, tx_hash, block in rows
                if tx_hash.lower() not in held[block]]
        if lost:
            self._next_reset_check = 0.0
            with _transaction(self._db) as db:
                db.executemany(
                    "UPDATE chain_batch SET state = 'sent', block = NULL, first_log = NULL, "
                    "mined_ms = NULL WHERE id = ? AND state = 'confirmed'", lost)
            log.warning("%d confirmed batches are no longer on chain %d as recorded; resending "
                        "their transactions", len(lost), handle.chain_id)

    def _sent_batches(self, epoch: int) -> list[_Batch]:
        return [_Batch(r[0], KIND_BY_NAME[r[1]], r[2], r[3], r[4], r[5], r[6])
                for r in self._db.execute(
                    "SELECT id, kind, nonce, raw_tx, tx_hash, entries, contract FROM chain_batch "
                    "WHERE state = 'sent' AND epoch = ? ORDER BY nonce, id", (epoch,))]

    def _settle(self, handle: ChainHandle, rpc: Rpc) -> int:
        sent = self._sent_batches(handle.epoch)
        if not sent:
            return 0
        replies = rpc.batch([("eth_blockNumber", [])]
                            + [("eth_getTransactionReceipt", [b.tx_hash]) for b in sent])
        for reply in replies:
            if isinstance(reply, RpcError):
                raise reply
        head = _int(replies[0])
        confirmations = self.settings.chain_confirmations
        confirmed: list[tuple[int, int, int, int]] = []
        reverted: list[tuple[_Batch, dict[str, Any]]] = []
        missing: list[_Batch] = []
        now = now_ms()
        for batch, receipt in zip(sent, replies[1:], strict=True):
            if receipt is None:
                missing.append(batch)
                continue
            block = _int(receipt["blockNumber"])
            if _int(receipt["status"]) != 1:
                reverted.append((batch, receipt))
                continue
            # mined_ms is when this worker first saw the receipt: block timestamps have whole
            # seconds only, too coarse for the access-to-chain latency it serves to measure.
            seen = self._seen_mined.setdefault(batch.id, now)
            if head - block + 1 < confirmations:
                continue
            del self._seen_mined[batch.id]
            address = batch.contract.lower()
            logs = [x for x in receipt["logs"] if str(x["address"]).lower() == address]
            if len(logs) < batch.entries:
                self._next_reset_check = 0.0
                raise RuntimeError(f"batch {batch.id} ({batch.tx_hash}) has {len(logs)} logs of "
                                   f"{batch.contract}, expected at least {batch.entries}")
            confirmed.append((block, _int(logs[0]["logIndex"]), seen, batch.id))
        done = {c[3] for c in confirmed}
        count = sum(b.entries for b in sent if b.id in done)
        if confirmed:
            with _transaction(self._db) as db:
                db.executemany(
                    "UPDATE chain_batch SET state = 'confirmed', block = ?, first_log = ?, "
                    "mined_ms = ? WHERE id = ? AND state = 'sent'", confirmed)
            self.confirmed_entries += count
        for batch, receipt in reverted:
            why = self._revert_reason(rpc, batch, receipt)
            self._fail(batch, _int(receipt["blockNumber"]))
            log.error("%s batch %d (%d entries, tx %s) reverted in block %d: %s; the entries are "
                      "queued again", batch.kind.name, batch.id, batch.entries, batch.tx_hash,
                      _int(receipt["blockNumber"]), why)
        if reverted:
            raise Reverted(f"{len(reverted)} batches reverted on chain {handle.chain_id}")
        if missing:
            self._next_reset_check = 0.0
            self._resend(rpc, missing)
        return count

    def _resend(self, rpc: Rpc, missing: list[_Batch]) -> None:
        """Send again, with their nonces, the transactions the node does not know (never
        arrived, dropped, or lost when the chain restarted); pending ones are left alone."""
        known = rpc.batch([("eth_getTransactionByHash", [b.tx_hash]) for b in missing])
        for batch, tx in zip(missing, known, strict=True):
            if isinstance(tx, RpcError):
                raise tx
            if tx is not None:
                continue  # in the node's pool, not mined yet
            try:
                rpc.call("eth_sendRawTransaction", "0x" + batch.raw_tx.hex())
            except RpcError as exc:
                text = exc.message.lower()
                if "already known" in text or "known transaction" in text:
                    continue
                if "nonce too low" in text and rpc.call("eth_getTransactionReceipt",
                                                        batch.tx_hash) is None:
                    # The nonce went to another transaction of this key: this one never will.
                    self._fail(batch, None)
                    log.error("%s batch %d (tx %s) can never be mined: its nonce %d was used "
                              "by another transaction; the entries are queued again",
                              batch.kind.name, batch.id, batch.tx_hash, batch.nonce)
                    continue
                raise
            log.info("resent %s batch %d (nonce %d, tx %s)", batch.kind.name, batch.id,
                     batch.nonce, batch.tx_hash)

    def _fail(self, batch: _Batch, block: int | None) -> None:
        self._gas_points.clear()  # estimate afresh: the line may have been too low
        with _transaction(self._db) as db:
            cur = db.execute("UPDATE chain_batch SET state = 'failed', block = ? "
                             "WHERE id = ? AND state = 'sent'", (block, batch.id))
            if cur.rowcount:
                db.execute(f"UPDATE {batch.kind.table} SET batch = NULL, pos = NULL "
                           "WHERE batch = ?", (batch.id,))

    def _revert_reason(self, rpc: Rpc, batch: _Batch, receipt: dict[str, Any]) -> str:
        """Why a mined transaction reverted: replayed with eth_call on the block before."""
        try:
            tx = rpc.call("eth_getTransactionByHash", batch.tx_hash)
            block = _int(receipt["blockNumber"])
            rpc.call("eth_call", {"from": tx["from"], "to": tx["to"], "data": tx["input"],
                                  "gas": tx["gas"]}, hex(max(block - 1, 0)))
        except RpcError as exc:
            return describe_revert(exc.revert) if exc.revert is not None else exc.message
        except (requests.RequestException, OSError, KeyError, TypeError) as exc:
            return f"reason unavailable ({exc})"
        return "reverted on chain; the same call succeeds when replayed"

    # -- new batches ------------------------------------------------------------------------

    def _send_new(self, handle: ChainHandle, rpc: Rpc) -> bool:
        """Send what is pending; True when more is waiting than one round sends (a backlog: the
        next round starts at once), False when the outbox was emptied (wait the interval, so a
        trickle of entries collects into batches instead of spinning)."""
        db = self._db
        in_flight = db.execute("SELECT count(*) FROM chain_batch WHERE state = 'sent' AND "
                               "epoch = ?", (handle.epoch,)).fetchone()[0]
        budget = MAX_IN_FLIGHT - in_flight
        if budget <= 0:  # waiting for blocks: the interval, not a spin
            return False
        size = self.settings.anchor_batch_size
        pending = {k: self._pending(k, 1 if k.one_per_tx else size) for k in KINDS}
        fresh = self._fresh(size - len(pending[ACCESS]))
        if not any(pending.values()) and not fresh.rows:
            return False
        account = handle.account
        latest, tip, node_nonce = rpc.batch([
            ("eth_getBlockByNumber", ["latest", False]),
            ("eth_maxPriorityFeePerGas", []),
            ("eth_getTransactionCount", [account.address, "pending"])])
        for reply in (latest, node_nonce):
            if isinstance(reply, RpcError):
                raise reply
        fees: dict[str, int]
        if latest.get("baseFeePerGas") is not None:
            priority = DEFAULT_TIP_WEI if isinstance(tip, RpcError) else _int(tip)
            fees = {"maxFeePerGas": 2 * _int(latest["baseFeePerGas"]) + priority,
                    "maxPriorityFeePerGas": priority}
        else:
            fees = {"gasPrice": _int(rpc.call("eth_gasPrice"))}
        gas_cap = _int(latest["gasLimit"])
        local = db.execute("SELECT max(nonce) FROM chain_batch WHERE state = 'sent' AND epoch = ? "
                           "AND chain_id = ?", (handle.epoch, handle.chain_id)).fetchone()[0]
        nonce = max(_int(node_nonce), -1 if local is None else local + 1)
        full = False
        # Round-robin over the kinds so a flood of accesses cannot starve consent decisions.
        while budget > 0 and (any(pending.values()) or fresh.rows):
            for kind in KINDS:
                rows = pending[kind]
                new = fresh if kind is ACCESS else _Fresh()
                if (not rows and not new.rows) or budget <= 0:
                    continue
                entries = len(rows) + len(new.rows)
                address = handle.contracts[kind.contract]
                data = calldata(kind, [r[1] for r in rows] + [a.entry for a in new.rows])
                # Full batches of one kind cost the same (estimated once per epoch), and a
                # smaller one of the same kind costs less (events only, a cost per entry that
                # varies by less than the estimate's margin with the entries' zero bytes): the
                # full batch's estimate is its gas limit too, and unused gas is not paid for.
                # Before a full batch was estimated, a partial one is estimated (one a round);
                # a consent decision's cost depends on whether its storage slot is new, so
                # each is estimated.
                full_gas = self._gas_points.get((handle.epoch, address), {}).get(size)
                gas_known = None if kind.one_per_tx or full_gas is None or entries > size \
                    else full_gas
                if gas_known is None:
                    try:
                        estimated = self._estimate(rpc, account.address, address, data)
                    except Reverted as exc:
                        if kind.one_per_tx and any(e in str(exc) for e in REFUSED_FOR_GOOD):
                            self._skipped.add(rows[0][0])
                            log.error("consent decision (chain_outbox seq %d) is refused by the "
                                      "registry and cannot be recorded: %s", rows[0][0], exc)
                            pending[kind] = self._pending(kind, 1)
                            continue
                        raise
                    if entries == size and not kind.one_per_tx:
                        self._gas_points.setdefault((handle.epoch, address), {})[entries] = \
                            estimated
                    gas_known = estimated
                gas = min(gas_known, gas_cap)
                tx = {"chainId": handle.chain_id, "nonce": nonce, "to": address, "value": 0,
                      "data": data, "gas": gas, **fees}
                signed = account.sign_transaction(tx)  # type: ignore[arg-type]
                raw = bytes(signed.raw_transaction)
                tx_hash = "0x" + bytes(signed.hash).hex()
                try:
                    batch_id = self._write_batch(handle, kind, address, nonce, raw, tx_hash,
                                                 rows, new)
                except _SealedMeanwhile:
                    # another sealer took some of these raw accesses (or a crash left them
                    # sealed): seal what is raw the plain way; the next round batches them
                    seal_raw(self._raw, self._db, self._sealer)
                    return True
                if batch_id is None:  # lost the lease in the meantime
                    return False
                if new.rows:  # sealed and batched: no longer raw
                    self._raw.execute("DELETE FROM audit_raw WHERE seq <= ?", (new.last_seq,))
                nonce += 1
                budget -= 1
                self._send(rpc, _Batch(batch_id, kind, nonce - 1, raw, tx_hash, entries,
                                       address))
                self.sent_entries += entries
                batch_full = entries == size
                if kind.one_per_tx or batch_full:
                    pending[kind] = self._pending(kind, 1 if kind.one_per_tx else size)
                    if kind is ACCESS:
                        fresh = self._fresh(size - len(pending[ACCESS]))
                else:
                    # a partial batch took everything there was: what arrives meanwhile waits
                    # for the next round, so a steady stream makes one batch per interval
                    # rather than a transaction per handful of entries
                    pending[kind] = []
                    if kind is ACCESS:
                        fresh = _Fresh()
                full = full or (not kind.one_per_tx and batch_full)
        return full or any(pending.values()) or bool(fresh.rows)

    def _pending(self, kind: Kind, limit: int) -> list[tuple[int, bytes]]:
        if kind.table == "audit":
            rows = self._db.execute("SELECT seq, entry FROM audit WHERE batch IS NULL "
                                    "ORDER BY seq LIMIT ?", (limit,)).fetchall()
        else:
            rows = self._db.execute(
                "SELECT seq, payload FROM chain_outbox WHERE kind = ? AND batch IS NULL "
                "ORDER BY seq LIMIT ?", (kind.name, limit + len(self._skipped))).fetchall()
            rows = [r for r in rows if r[0] not in self._skipped][:limit]
        for seq, payload in rows:
            if len(payload) != kind.entry_size:
                raise ValueError(f"{kind.table} seq {seq}: a {kind.name} entry has "
                                 f"{kind.entry_size} bytes, this one {len(payload)}")
        return rows

    def _fresh(self, limit: int) -> _Fresh:
        """Up to `limit` reads' raw accesses, sealed here into AuditEvents that go into the
        next access batch as they are inserted (app/audit/sealing.py): no second write of each
        row to assign it its batch."""
        if limit <= 0:
            return _Fresh()
        raws = self._raw.execute("SELECT seq, id, recorded_ms, patient, data FROM audit_raw "
                                 "ORDER BY seq LIMIT ?", (limit,)).fetchall()
        if not raws:
            return _Fresh()
        rows = self._sealer([RawAccess(r[1], r[2], r[3], bytes(r[4])) for r in raws])
        return _Fresh(rows, int(raws[-1][0]))

    def _estimate(self, rpc: Rpc, sender: str, to: str, data: bytes) -> int:
        try:
            gas = _int(rpc.call("eth_estimateGas", {"from": sender, "to": to,
                                                    "data": "0x" + data.hex()}))
        except RpcError as exc:
            if exc.revert is None and "revert" not in exc.message.lower():
                raise
            why = describe_revert(exc.revert) if exc.revert is not None else exc.message
            name = next((k.contract for k in KINDS if k.selector == data[:4]), to)
            fn = next((k.signature.split("(")[0] for k in KINDS if k.selector == data[:4]), "?")
            raise Reverted(f"{name}.{fn} from {sender} at {to} would revert: {why}") from None
        return gas * GAS_MARGIN_NUM // GAS_MARGIN_DEN + GAS_MARGIN_ADD

    def _write_batch(self, handle: ChainHandle, kind: Kind, address: str, nonce: int,
                     raw: bytes, tx_hash: str, rows: list[tuple[int, bytes]],
                     fresh: _Fresh) -> int | None:
        """The batch row, its waiting rows' batch/pos and its freshly sealed AuditEvents in
        one transaction, before anything is sent; None (nothing written) when this worker no
        longer holds the lease. Raises `_SealedMeanwhile` (nothing written) when one of the
        fresh AuditEvents is in the audit file already."""
        with _transaction(self._db) as db:
            if not holds(db, LEASE_NAME, self.holder):
                log.warning("anchoring worker %s no longer holds the lease; not sending",
                            self.holder)
                return None
            batch_id = db.execute(
                "INSERT INTO chain_batch(kind, epoch, chain_id, contract, nonce, raw_tx, tx_hash, "
                "state, entries, created_ms) VALUES (?, ?, ?, ?, ?, ?, ?, 'sent', ?, ?)",
                (kind.name, handle.epoch, handle.chain_id, address, nonce, raw, tx_hash,
                 len(rows) + len(fresh.rows), now_ms())).lastrowid
            assert batch_id is not None
            if fresh.rows:
                before = db.total_changes
                db.executemany(
                    "INSERT OR IGNORE INTO audit(id, recorded_ms, patient, action, outcome, "
                    "agent, client, body, entry, batch, pos) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [(a.id, a.recorded_ms, a.patient, a.action, a.outcome, a.agent, a.client,
                      a.body, a.entry, batch_id, len(rows) + pos)
                     for pos, a in enumerate(fresh.rows)])
                if db.total_changes - before != len(fresh.rows):
                    raise _SealedMeanwhile
            if not rows:
                return int(batch_id)
            first, last = rows[0][0], rows[-1][0]
            if last - first + 1 == len(rows):
                cur = db.execute(f"UPDATE {kind.table} SET batch = ?, pos = seq - ? "
                                 "WHERE seq BETWEEN ? AND ? AND batch IS NULL",
                                 (batch_id, first, first, last))
                changed = cur.rowcount
            else:
                before = db.total_changes
                db.executemany(f"UPDATE {kind.table} SET batch = ?, pos = ? "
                               "WHERE seq = ? AND batch IS NULL",
                               [(batch_id, pos, seq) for pos, (seq, _) in enumerate(rows)])
                changed = db.total_changes - before
            if changed != len(rows):
                raise RuntimeError(f"{kind.table} rows {first}..{last} changed while batch "
                                   f"{batch_id} was written ({changed} of {len(rows)} pending)")
        return int(batch_id)

    def _send(self, rpc: Rpc, batch: _Batch) -> None:
        try:
            rpc.call("eth_sendRawTransaction", "0x" + batch.raw_tx.hex())
        except RpcError as exc:
            # Refused by the node (fees, funds, nonce): it is not in the pool, so the batch is
            # given up and its rows queued again; the round backs off. A node refusing what it
            # accepted before (funds, nonces) may also be a new chain: check that next round.
            self._fail(batch, None)
            self._next_reset_check = 0.0
            raise Reverted(f"the node refused {batch.kind.name} batch {batch.id} (nonce "
                           f"{batch.nonce}): {exc.message}") from None
