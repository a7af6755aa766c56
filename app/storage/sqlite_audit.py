"""The audit trail's own SQLite file (var/audit.sqlite3): AuditEvents and the chain outbox.

Why a file of its own: every read of the server writes an AuditEvent, and a commit to a SQLite
file makes every other connection to it drop its page cache at its next read — with the audit
trail in the resource file, each audited read made the next reads of resources start cold
(measured in docs/performance.md, audit section). Kept apart, reads of resources never notice.

Atomicity with writes is kept: a write's AuditEvents and chain entries go into the *resource*
file's inbox tables (`audit_inbox`, `outbox_inbox`) inside the write's own transaction, and are
moved here right after its commit, before it is answered, idempotently (AuditEvent ids and
outbox origins are unique; the inbox rows are deleted only after the move committed), so a
crash at any point loses or doubles nothing.

Reads are recorded as raw accesses (app/audit/sealing.py) in a third file,
var/audit.raw.sqlite3: the anchoring worker's transactions on the audit file (sealing, batches,
proofs) hold its write lock for milliseconds, and a read must not wait for them. Raw accesses
are group-committed: requests queued while one commit runs go together in the next; a commit
runs inline on the event loop when the file's write lock is free (an append to one B-tree and a
WAL write, cheaper than a thread hop) and otherwise on the audit thread, which waits for the
lock. Inline connections never checkpoint; the audit thread does, once a second (PASSIVE), so
no request waits for a checkpoint. `seal_raw` turns raw accesses into AuditEvents here
idempotently: inserted OR IGNORE by their unique id, then deleted from the raw file by the last
(never reused) seq of the chunk.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from app.storage.base import (
    AuditQuery,
    AuditRow,
    ChainProof,
    OutboxRow,
    RawAccess,
    SealFn,
    StoredAudit,
)
from app.storage.sqlite_schema import AUDIT_SCHEMA, RAW_SCHEMA

log = logging.getLogger("yilian.audit")
T = TypeVar("T")
MOVE_CHUNK = 5000
SEAL_CHUNK = 5000  # raw accesses sealed per transaction

# An AuditEvent with the proof of its batch once that batch is confirmed on chain.
_AUDIT_SQL = ("SELECT a.seq, a.id, a.recorded_ms, a.patient, a.action, a.outcome, a.agent, "
              "a.client, a.body, a.entry, b.chain_id, b.contract, b.tx_hash, b.block, "
              "b.first_log + a.pos FROM audit a LEFT JOIN chain_batch b ON b.id = a.batch "
              "AND b.state = 'confirmed'")
_AUDIT_COLUMNS = "id, recorded_ms, patient, action, outcome, agent, client, body, entry"


def raw_path_of(audit_path: Path) -> Path:
    """The file of reads' raw accesses beside the audit file: var/audit.raw.sqlite3."""
    return audit_path.with_name(f"{audit_path.stem}.raw{audit_path.suffix}")


class SqliteAuditTrail:
    """AuditEvents and chain entries in `path`, with the inbox of the resource file `store_path`
    (`connect` opens a connection the way the store does)."""

    def __init__(self, path: Path, store_path: Path,
                 connect: Callable[[Path], sqlite3.Connection]) -> None:
        self.path = path
        self.raw_path = raw_path_of(path)
        self.store_path = store_path
        self._connect = connect
        self._inline: sqlite3.Connection | None = None
        self._waiting: sqlite3.Connection | None = None  # audit thread only
        self._raw_inline: sqlite3.Connection | None = None  # the raw file, on the event loop
        self._raw_waiting: sqlite3.Connection | None = None  # the raw file, audit thread only
        self._inbox: sqlite3.Connection | None = None  # audit thread only: the resource file
        self._pool: ThreadPoolExecutor | None = None
        self._local = threading.local()
        self._queue: list[tuple[Sequence[AuditRow], Sequence[OutboxRow],
                                Sequence[RawAccess], asyncio.Future[None]]] = []
        self._seal: SealFn | None = None
        self._seal_grace_ms = 0
        self._flusher: asyncio.Task[None] | None = None
        self._housekeeper: asyncio.Task[None] | None = None
        self._move_lock = asyncio.Lock()

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        self._waiting = self._connect(self.path)
        self._waiting.executescript(AUDIT_SCHEMA)
        self._inline = self._connect(self.path)
        self._raw_waiting = self._connect(self.raw_path)
        self._raw_waiting.executescript(RAW_SCHEMA)
        self._raw_inline = self._connect(self.raw_path)
        for conn in (self._inline, self._raw_inline):
            conn.execute("PRAGMA busy_timeout=0")
            conn.execute("PRAGMA wal_autocheckpoint=0")
        self._inbox = self._connect(self.store_path)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="sqlite-audit")
        await self._in_thread(self._move_inbox)  # what a crash left in the inbox
        self._housekeeper = asyncio.create_task(self._housekeeping())

    async def close(self) -> None:
        if self._flusher is not None:
            await asyncio.gather(self._flusher, return_exceptions=True)
        if self._housekeeper is not None:
            self._housekeeper.cancel()
            await asyncio.gather(self._housekeeper, return_exceptions=True)
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        for conn in (self._inline, self._waiting, self._inbox, self._raw_inline,
                     self._raw_waiting):
            if conn is not None:
                conn.close()
        self._inline = self._waiting = self._inbox = None
        self._raw_inline = self._raw_waiting = None

    async def _in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def reader(self) -> sqlite3.Connection:
        """This thread's read connection to the audit file (reader threads of the store)."""
        return self._thread_reader("conn", self.path)

    def raw_reader(self) -> sqlite3.Connection:
        """This thread's read connection to the raw file."""
        return self._thread_reader("raw", self.raw_path)

    def _thread_reader(self, name: str, path: Path) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, name, None)
        if conn is None:
            conn = self._connect(path)
            conn.execute("PRAGMA query_only=1")
            setattr(self._local, name, conn)
        return conn

    # -- writing -----------------------------------------------------------------------------

    async def append(self, audit: Sequence[AuditRow], outbox: Sequence[OutboxRow],
                     raw: Sequence[RawAccess] = ()) -> None:
        """Store rows durably (group commit); returns once they are committed."""
        if not audit and not outbox and not raw:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((audit, outbox, raw, fut))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        await fut

    async def _flush(self) -> None:
        await asyncio.sleep(0)  # let the requests of this loop iteration queue theirs too
        while self._queue:
            batch, self._queue = self._queue, []
            audit = [r for a, _, _, _ in batch for r in a]
            outbox = [r for _, o, _, _ in batch for r in o]
            raw = [r for _, _, w, _ in batch for r in w]
            try:
                if raw:  # reads: the raw file
                    await self._store(self._raw_inline, self._raw_waiting, (), (), raw)
                if audit or outbox:  # authorization events and in-process callers
                    await self._store(self._inline, self._waiting, audit, outbox, ())
            except Exception as exc:  # every waiter learns its audit was not stored
                for _, _, _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
            else:
                for _, _, _, fut in batch:
                    if not fut.done():
                        fut.set_result(None)

    async def _store(self, inline: sqlite3.Connection | None,
                     waiting: sqlite3.Connection | None, audit: Sequence[AuditRow],
                     outbox: Sequence[OutboxRow], raw: Sequence[RawAccess]) -> None:
        """Commit inline when the file's write lock is free, else on the audit thread."""
        assert inline is not None and waiting is not None
        if not _try_commit(inline, audit, outbox, raw):
            await self._in_thread(_commit, waiting, audit, outbox, raw)

    # -- sealing raw accesses (app/audit/sealing.py) -------------------------------------------

    def use_sealer(self, seal: SealFn, grace_ms: int) -> None:
        self._seal = seal
        self._seal_grace_ms = grace_ms

    async def seal_now(self) -> None:
        """Seal every raw access (before the trail is read), on the audit thread."""
        if self._seal is not None:
            await self._in_thread(self._seal_older, None)

    def _seal_older(self, grace_ms: int | None) -> None:
        assert self._waiting is not None and self._raw_waiting is not None
        assert self._seal is not None
        before = None if grace_ms is None else int(time.time() * 1000) - grace_ms
        seal_raw(self._raw_waiting, self._waiting, self._seal, before)

    # -- the inbox of writes -------------------------------------------------------------------

    async def move(self) -> None:
        """Move the inbox here now: a write's answer waits for it, so its AuditEvents can be
        searched once the write is answered. A failure is logged, never raised (the write has
        committed); housekeeping retries within a second."""
        async with self._move_lock:
            try:
                await self._in_thread(self._move_inbox)
            except sqlite3.Error as exc:
                log.warning("moving AuditEvents of writes to %s failed (retried): %s",
                            self.path, exc)

    def _move_inbox(self) -> None:
        """Audit thread: copy the inbox into the audit file, then empty what was copied."""
        src, dst = self._inbox, self._waiting
        assert src is not None and dst is not None
        while True:
            audit = src.execute(f"SELECT seq, {_AUDIT_COLUMNS} FROM audit_inbox ORDER BY seq "
                                "LIMIT ?", (MOVE_CHUNK,)).fetchall()
            outbox = src.execute("SELECT seq, kind, ref, payload, recorded_ms FROM outbox_inbox "
                                 "ORDER BY seq LIMIT ?", (MOVE_CHUNK,)).fetchall()
            if not audit and not outbox:
                return
            dst.execute("BEGIN IMMEDIATE")
            _in_transaction(dst, _copy, dst, audit, outbox)
            src.execute("BEGIN IMMEDIATE")
            _in_transaction(src, _forget, src, audit, outbox)

    async def _housekeeping(self) -> None:
        """Every second: checkpoint the WALs of the audit and raw files, move any inbox
        leftovers, and seal raw accesses that waited longer than the grace period."""
        while True:
            await asyncio.sleep(1.0)
            try:
                await self._in_thread(self._checkpoint_and_move)
            except sqlite3.Error as exc:
                log.warning("audit trail housekeeping failed (retried): %s", exc)

    def _checkpoint_and_move(self) -> None:
        assert self._waiting is not None and self._raw_waiting is not None
        self._waiting.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        self._raw_waiting.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        self._move_inbox()
        if self._seal is not None:
            self._seal_older(self._seal_grace_ms)

    # -- reading -----------------------------------------------------------------------------

    def get(self, conn: sqlite3.Connection, id_: str) -> StoredAudit | None:
        row = conn.execute(_AUDIT_SQL + " WHERE a.id = ?", (id_,)).fetchone()
        return None if row is None else _stored_audit(row)

    def search(self, conn: sqlite3.Connection,
               query: AuditQuery) -> tuple[list[StoredAudit], int]:
        where: list[str] = []
        params: list[Any] = []
        for column, value in (("a.patient", query.patient), ("a.agent", query.agent),
                              ("a.client", query.client), ("a.action", query.action),
                              ("a.outcome", query.outcome)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if query.since_ms is not None:
            where.append("a.recorded_ms >= ?")
            params.append(query.since_ms)
        if query.until_ms is not None:
            where.append("a.recorded_ms < ?")
            params.append(query.until_ms)
        cond = " AND ".join(where) or "1"
        total = conn.execute(f"SELECT count(*) FROM audit a WHERE {cond}", params).fetchone()[0]
        page_cond, page_params = cond, list(params)
        if query.before_seq is not None:
            page_cond += " AND a.seq < ?"
            page_params.append(query.before_seq)
        rows = conn.execute(f"{_AUDIT_SQL} WHERE {page_cond} ORDER BY a.seq DESC LIMIT ?",
                            [*page_params, query.count]).fetchall()
        return [_stored_audit(r) for r in rows], total

    def version_proof(self, conn: sqlite3.Connection, ref: str,
                      ) -> tuple[bytes, ChainProof | None] | None:
        row = conn.execute(
            "SELECT o.payload, b.chain_id, b.contract, b.tx_hash, b.block, b.first_log + o.pos "
            "FROM chain_outbox o LEFT JOIN chain_batch b ON b.id = o.batch "
            "AND b.state = 'confirmed' WHERE o.kind = 'version' AND o.ref = ? "
            "ORDER BY o.seq DESC LIMIT 1", (ref,)).fetchone()
        if row is None:
            return None
        proof = None if row[1] is None else ChainProof(row[1], row[2], row[3], row[4], row[5])
        return row[0], proof

    def oldest_unanchored_ms(self, conn: sqlite3.Connection) -> int | None:
        a = conn.execute("SELECT recorded_ms FROM audit WHERE batch IS NULL "
                         "ORDER BY seq LIMIT 1").fetchone()
        o = conn.execute("SELECT min(recorded_ms) FROM chain_outbox "
                         "WHERE batch IS NULL").fetchone()
        r = self.raw_reader().execute(
            "SELECT recorded_ms FROM audit_raw ORDER BY seq LIMIT 1").fetchone()
        found = [v for v in (a[0] if a else None, o[0] if o else None, r[0] if r else None)
                 if v is not None]
        return min(found) if found else None


def seal_raw(raw: sqlite3.Connection, audit: sqlite3.Connection, seal: SealFn,
             before_ms: int | None = None) -> int:
    """Seal raw accesses (`raw`: the raw file) recorded before `before_ms`, or all, into
    AuditEvents (`audit`: the audit file); how many.

    Each chunk is built before any write lock is taken, committed to the audit file, then
    deleted from the raw file: a crash in between leaves it in both, and sealing it again
    inserts nothing (AuditEvent ids are unique: INSERT OR IGNORE) and deletes it. So concurrent
    sealers (workers' housekeeping, the anchoring worker) never seal an access twice, and none
    is ever lost. Raw seqs are never reused (AUTOINCREMENT), so a chunk is deleted by its last
    seq.
    """
    done = 0
    while True:
        rows = raw.execute("SELECT seq, id, recorded_ms, patient, data FROM audit_raw "
                           "ORDER BY seq LIMIT ?", (SEAL_CHUNK,)).fetchall()
        full = len(rows) == SEAL_CHUNK
        if before_ms is not None:  # the oldest ones: a prefix of the table
            rows = list(itertools.takewhile(lambda r: r[2] < before_ms, rows))
            full = full and len(rows) == SEAL_CHUNK
        if not rows:
            return done
        sealed = seal([RawAccess(r[1], r[2], r[3], bytes(r[4])) for r in rows])
        audit.execute("BEGIN IMMEDIATE")
        _in_transaction(audit, _insert_sealed, audit, sealed)
        raw.execute("DELETE FROM audit_raw WHERE seq <= ?", (rows[-1][0],))  # autocommit
        done += len(rows)
        if not full:
            return done


def _insert_sealed(conn: sqlite3.Connection, sealed: Sequence[AuditRow]) -> None:
    insert_rows(conn, sealed, (), ignore=True)


def _try_commit(conn: sqlite3.Connection, audit: Sequence[AuditRow],
                outbox: Sequence[OutboxRow], raw: Sequence[RawAccess]) -> bool:
    """Commit on `conn` (busy_timeout 0) unless its file's write lock is taken: False."""
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            return False
        raise
    _in_transaction(conn, insert_rows, conn, audit, outbox, raw)
    return True


def _commit(conn: sqlite3.Connection, audit: Sequence[AuditRow], outbox: Sequence[OutboxRow],
            raw: Sequence[RawAccess]) -> None:
    """Commit on `conn`, waiting for the write lock (the audit thread)."""
    conn.execute("BEGIN IMMEDIATE")
    _in_transaction(conn, insert_rows, conn, audit, outbox, raw)


def insert_rows(conn: sqlite3.Connection, audit: Sequence[AuditRow],
                outbox: Sequence[OutboxRow], raw: Sequence[RawAccess] = (), *,
                inbox: bool = False, ignore: bool = False) -> None:
    """Insert AuditEvents and chain entries: into the audit file, or (`inbox`) into the
    resource file's inbox within a write's transaction."""
    audit_table, outbox_table = ("audit_inbox", "outbox_inbox") if inbox else \
        ("audit", "chain_outbox")
    if audit:
        conn.executemany(
            f"INSERT {'OR IGNORE ' if ignore else ''}INTO {audit_table}({_AUDIT_COLUMNS}) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(r.id, r.recorded_ms, r.patient, r.action, r.outcome, r.agent, r.client, r.body,
              r.entry) for r in audit])
    if outbox:
        conn.executemany(
            f"INSERT INTO {outbox_table}(kind, ref, payload, recorded_ms) VALUES (?, ?, ?, ?)",
            [(r.kind, r.ref, r.payload, r.recorded_ms) for r in outbox])
    if raw:
        conn.executemany("INSERT INTO audit_raw(id, recorded_ms, patient, data) "
                         "VALUES (?, ?, ?, ?)",
                         [(r.id, r.recorded_ms, r.patient, r.data) for r in raw])


def _copy(conn: sqlite3.Connection, audit: list[Any], outbox: list[Any]) -> None:
    if audit:
        conn.executemany(f"INSERT OR IGNORE INTO audit({_AUDIT_COLUMNS}) "
                         "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", [r[1:] for r in audit])
    if outbox:
        conn.executemany("INSERT OR IGNORE INTO chain_outbox(origin, kind, ref, payload, "
                         "recorded_ms) VALUES (?, ?, ?, ?, ?)", outbox)


def _forget(conn: sqlite3.Connection, audit: list[Any], outbox: list[Any]) -> None:
    if audit:
        conn.execute("DELETE FROM audit_inbox WHERE seq <= ?", (audit[-1][0],))
    if outbox:
        conn.execute("DELETE FROM outbox_inbox WHERE seq <= ?", (outbox[-1][0],))


def _in_transaction(conn: sqlite3.Connection, body: Callable[..., None], *args: Any) -> None:
    """Run `body(*args)` in the transaction just begun on `conn`, then commit (or roll back)."""
    try:
        body(*args)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _stored_audit(row: Sequence[Any]) -> StoredAudit:
    proof = None if row[10] is None else ChainProof(row[10], row[11], row[12], row[13], row[14])
    return StoredAudit(row[0], AuditRow(*row[1:10]), proof)
