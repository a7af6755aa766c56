"""The embedded store: SQLite in WAL mode behind the `Store` interface.

Concurrency: every process (uvicorn worker) has one writer connection used from one dedicated
thread; a unit of work holds `BEGIN IMMEDIATE` from its first statement to its commit, so the
version check, the new version, its history row and its index rows are one SQLite transaction
across processes. Reads by id run inline on the event loop (a primary-key lookup in WAL mode
takes microseconds and never waits for writers); searches run on a small reader thread pool.

Search paging: the first page of a search computes the full ordered list of matching row ids and,
when there is more than one page, keeps it as a snapshot in a side database, so later pages are
slices of the same list: concurrent writes cannot shift results between pages.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import sqlite3
import threading
import time
import uuid
from array import array
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import orjson

from app.definitions.registry import Registry
from app.search.dates import format_instant_ms, instant_to_ms
from app.search.extract import Indexer
from app.search.index import IndexRows
from app.search.query import AnyOf, IncludeSpec, SearchQuery
from app.storage.base import (
    AuditQuery,
    AuditRow,
    ChainProof,
    HistoryPage,
    HistoryQuery,
    OutboxRow,
    RawAccess,
    SealFn,
    SearchPage,
    StoredAudit,
    StoredVersion,
    VersionConflict,
    WriteResult,
)
from app.storage.sqlite_audit import SqliteAuditTrail, insert_rows
from app.storage.sqlite_schema import INDEX_TABLES, SCHEMA, SCHEMA_VERSION, SNAPSHOT_SCHEMA
from app.storage.sqlite_search import Compiler

log = logging.getLogger("yilian.store")
T = TypeVar("T")
MAX_INCLUDE_ROUNDS = 4
MAX_INCLUDED = 5000

_READ_SQL = ("SELECT r.version, h.lu, r.deleted, h.body, h.method FROM resource r "
             "JOIN history h ON h.seq = r.seq WHERE r.type = ? AND r.id = ?")


def _connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=OFF")
    conn.execute("PRAGMA temp_store=MEMORY")
    conn.execute("PRAGMA cache_size=-65536")
    conn.execute("PRAGMA mmap_size=1073741824")
    if readonly:
        conn.execute("PRAGMA query_only=1")
    return conn


class SqliteStore:
    """`Store` on one SQLite file (see module docstring for the concurrency model)."""

    def __init__(self, path: Path, registry: Registry, indexer: Indexer, *,
                 snapshot_seconds: int = 3600, reader_threads: int = 4,
                 audit_path: Path | None = None) -> None:
        self.path = path
        self.registry = registry
        self.indexer = indexer
        self.snapshot_seconds = snapshot_seconds
        self._reader_threads = reader_threads
        self._writer: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._write_pool: ThreadPoolExecutor | None = None
        self._read_pool: ThreadPoolExecutor | None = None
        self._write_lock = asyncio.Lock()
        self._local = threading.local()
        self._pids: dict[tuple[str, str], int] = {}
        # AuditEvents and the chain outbox: a file of their own (app/storage/sqlite_audit.py)
        self.audit = SqliteAuditTrail(audit_path or path.with_name("audit.sqlite3"), path,
                                      _connect)
        self._uow: SqliteUnitOfWork | None = None  # the open unit of work and its task
        self._uow_task: asyncio.Task[Any] | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = _connect(self.path)
        self._writer.executescript(SCHEMA)
        self._writer.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('schema', ?)",
                             (str(SCHEMA_VERSION),))
        snap = sqlite3.connect(self._snapshot_path(), timeout=30.0, isolation_level=None)
        snap.execute("PRAGMA journal_mode=WAL")
        snap.executescript(SNAPSHOT_SCHEMA)
        snap.close()
        self._register_pids(self._writer)
        self._reader = _connect(self.path, readonly=True)
        self._write_pool = ThreadPoolExecutor(1, thread_name_prefix="sqlite-writer")
        await self.audit.start()
        self._read_pool = ThreadPoolExecutor(self._reader_threads,
                                             thread_name_prefix="sqlite-reader")

    async def close(self) -> None:
        await self.audit.close()
        for pool in (self._write_pool, self._read_pool):
            if pool is not None:
                pool.shutdown(wait=True)
        for conn in (self._writer, self._reader):
            if conn is not None:
                conn.close()
        self._writer = self._reader = None

    def _snapshot_path(self) -> Path:
        return self.path.with_name(self.path.stem + "-search.sqlite3")

    # -- helpers -------------------------------------------------------------------------------

    def _thread_reader(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = _connect(self.path, readonly=True)
            self._local.conn = conn
        return conn

    def _thread_snapshots(self) -> sqlite3.Connection:
        conn = getattr(self._local, "snap", None)
        if conn is None:
            conn = sqlite3.connect(self._snapshot_path(), timeout=30.0, isolation_level=None,
                                   check_same_thread=False)
            conn.execute("PRAGMA synchronous=OFF")
            self._local.snap = conn
        return conn

    async def _in_reader(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        assert self._read_pool is not None
        return await loop.run_in_executor(self._read_pool, lambda: fn(self._thread_reader()))

    async def _in_writer(self, fn: Callable[[], T]) -> T:
        loop = asyncio.get_running_loop()
        assert self._write_pool is not None
        return await loop.run_in_executor(self._write_pool, fn)

    def _register_pids(self, conn: sqlite3.Connection) -> None:
        """Intern every registered search parameter once, committed, before any write.

        Interning lazily inside a unit of work would cache ids that a rollback (or a crash, or
        another worker process racing for the same name) never committed.
        """
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany("INSERT OR IGNORE INTO sp(type, code) VALUES (?, ?)",
                             [(t, c) for t, params in self.registry.search_params.items()
                              for c in params])
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        for pid, type_, code in conn.execute("SELECT pid, type, code FROM sp"):
            self._pids[(type_, code)] = pid

    def _pid(self, type_: str, code: str) -> int:
        """The interned id of a search parameter (-1, matching nothing, if it is not registered)."""
        return self._pids.get((type_, code), -1)

    def _now_ms(self, conn: sqlite3.Connection) -> int:
        """The timestamp of a new version: the clock, never before the newest stored version.

        Called inside the write lock, and read from the database rather than a per-process
        counter, so lastUpdated follows commit order across every worker process (what
        `_history?_since=` relies on) and never runs ahead of the clock under bursts: versions
        written in the same millisecond share it.
        """
        now = int(time.time() * 1000)
        newest = conn.execute("SELECT max(lu_ms) FROM history").fetchone()[0]
        return now if newest is None or now >= newest else newest

    # -- reads ---------------------------------------------------------------------------------

    async def read(self, type_: str, id_: str) -> StoredVersion | None:
        assert self._reader is not None
        row = self._reader.execute(_READ_SQL, (type_, id_)).fetchone()
        if row is None:
            return None
        return StoredVersion(type_, id_, row[0], row[1], bool(row[2]), row[3], row[4])

    async def vread(self, type_: str, id_: str, version: int) -> StoredVersion | None:
        assert self._reader is not None
        row = self._reader.execute(
            "SELECT h.version, h.lu, h.deleted, h.body, h.method FROM resource r "
            "JOIN history h ON h.rid = r.rid WHERE r.type = ? AND r.id = ? AND h.version = ?",
            (type_, id_, version)).fetchone()
        if row is None:
            return None
        return StoredVersion(type_, id_, row[0], row[1], bool(row[2]), row[3], row[4])

    async def history(self, query: HistoryQuery) -> HistoryPage:
        return await self._in_reader(lambda conn: self._history(conn, query))

    def _history(self, conn: sqlite3.Connection, q: HistoryQuery) -> HistoryPage:
        snapshot = q.snapshot
        if snapshot is None:
            snapshot = conn.execute("SELECT coalesce(max(seq), 0) FROM history").fetchone()[0]
        where = ["h.seq <= ?"]
        params: list[Any] = [snapshot]
        if q.type is not None:
            where.append("r.type = ?")
            params.append(q.type)
        if q.id is not None:
            where.append("r.id = ?")
            params.append(q.id)
        if q.since is not None:
            where.append("h.lu_ms >= ?")
            params.append(instant_to_ms(q.since))
        if q.access:
            compiled = Compiler(self._pid).clause(AnyOf((q.access,)), "r")
            where.append(compiled.text)
            params += compiled.params
        if q.at is not None:
            # Versions current at `at`: the last version of each resource written before it.
            where.append("h.lu_ms <= ? AND NOT EXISTS (SELECT 1 FROM history n WHERE "
                         "n.rid = h.rid AND n.version > h.version AND n.lu_ms <= ?)")
            at_ms = instant_to_ms(q.at)
            params += [at_ms, at_ms]
        cond = " AND ".join(where)
        total = conn.execute(f"SELECT count(*) FROM history h JOIN resource r ON r.rid = h.rid "
                             f"WHERE {cond}", params).fetchone()[0]
        rows = conn.execute(
            f"SELECT r.type, r.id, h.version, h.lu, h.deleted, h.body, h.method FROM history h "
            f"JOIN resource r ON r.rid = h.rid WHERE {cond} ORDER BY h.seq DESC LIMIT ? OFFSET ?",
            [*params, q.count, q.offset]).fetchall()
        versions = [StoredVersion(t, i, v, lu, bool(d), b, m) for t, i, v, lu, d, b, m in rows]
        return HistoryPage(versions, total, snapshot)

    # -- search --------------------------------------------------------------------------------

    async def search(self, query: SearchQuery) -> SearchPage:
        return await self._in_reader(lambda conn: self._search(conn, query))

    def _search(self, conn: sqlite3.Connection, query: SearchQuery) -> SearchPage:
        rids = self._matching_rids(conn, query)
        total = len(rids)
        page = rids[: query.count]
        snapshot_id = None
        if total > query.count > 0:  # _count=0 (and _summary=count) asks for the total only
            snapshot_id = self._save_snapshot(rids, query.owner)
        return self._page(conn, query, page, total, snapshot_id, 0)

    def _matching_rids(self, conn: sqlite3.Connection, query: SearchQuery) -> list[int]:
        compiler = Compiler(self._pid)
        where = compiler.where(query, "r")
        order = compiler.order_by(query, "r")
        sql = f"SELECT r.rid FROM resource r WHERE {where.text} ORDER BY {order.text}"
        return [row[0] for row in conn.execute(sql, [*where.params, *order.params])]

    def _save_snapshot(self, rids: list[int], owner: str = "") -> str:
        snap = self._thread_snapshots()
        sid = secrets.token_urlsafe(12)
        now = int(time.time() * 1000)
        snap.execute("INSERT INTO snapshot(id, created_ms, total, rids) VALUES (?, ?, ?, ?)",
                     (_snapshot_key(sid, owner), now, len(rids), array("q", rids).tobytes()))
        if secrets.randbelow(50) == 0:
            snap.execute("DELETE FROM snapshot WHERE created_ms < ?",
                         (now - self.snapshot_seconds * 1000,))
        return sid

    async def search_page(self, snapshot_id: str, offset: int, count: int,
                          query: SearchQuery) -> SearchPage | None:
        def run(conn: sqlite3.Connection) -> SearchPage | None:
            snap = self._thread_snapshots()
            cutoff = int(time.time() * 1000) - self.snapshot_seconds * 1000
            row = snap.execute(
                "SELECT total, substr(rids, ?, ?) FROM snapshot WHERE id = ? AND created_ms >= ?",
                (offset * 8 + 1, count * 8, _snapshot_key(snapshot_id, query.owner),
                 cutoff)).fetchone()
            if row is None:
                return None
            page = array("q")
            page.frombytes(row[1])
            return self._page(conn, query, list(page), row[0], snapshot_id, offset)
        return await self._in_reader(run)

    def _page(self, conn: sqlite3.Connection, query: SearchQuery, rids: list[int],
              total: int, snapshot_id: str | None, offset: int) -> SearchPage:
        matches = self._load(conn, rids)
        included = self._includes(conn, query, matches) if query.includes and matches else []
        return SearchPage(matches, included, total, snapshot_id, offset,
                          offset + len(rids) < total)

    def _load(self, conn: sqlite3.Connection, rids: Sequence[int]) -> list[StoredVersion]:
        """Current versions of `rids`, in the given order, skipping any deleted since."""
        if not rids:
            return []
        out: dict[int, StoredVersion] = {}
        for chunk in _chunks(list(rids), 500):
            marks = ",".join("?" * len(chunk))
            for rid, t, i, v, lu, d, b, m in conn.execute(
                f"SELECT r.rid, r.type, r.id, r.version, h.lu, r.deleted, h.body, h.method "
                f"FROM resource r JOIN history h ON h.seq = r.seq WHERE r.rid IN ({marks})",
                chunk,
            ):
                if not d:
                    out[rid] = StoredVersion(t, i, v, lu, False, b, m)
        return [out[r] for r in rids if r in out]

    def _includes(self, conn: sqlite3.Connection, query: SearchQuery,
                  matches: list[StoredVersion]) -> list[StoredVersion]:
        seen = {(m.type, m.id) for m in matches}
        frontier = matches
        included: list[StoredVersion] = []
        for round_no in range(MAX_INCLUDE_ROUNDS):
            specs = [s for s in query.includes if round_no == 0 or s.iterate]
            found: list[StoredVersion] = []
            allowed = query.include_filter
            for spec in specs:
                for item in self._include_step(conn, spec, frontier):
                    key = (item.type, item.id)
                    # A hidden resource is neither returned nor walked through (:iterate).
                    if allowed is not None and not allowed(item):
                        continue
                    if key not in seen:
                        seen.add(key)
                        found.append(item)
            if not found or len(included) + len(found) > MAX_INCLUDED:
                included.extend(found[: max(0, MAX_INCLUDED - len(included))])
                break
            included.extend(found)
            frontier = found
        return included

    def _include_step(self, conn: sqlite3.Connection, spec: IncludeSpec,
                      frontier: list[StoredVersion]) -> list[StoredVersion]:
        if spec.reverse:
            targets = [(f.type, f.id) for f in frontier]
            pids = self._include_pids(spec.source_type, spec.param)
            rids: list[int] = []
            for chunk in _chunks(targets, 400):
                cond = " OR ".join("(x.tid = ? AND x.ttype = ?)" for _ in chunk)
                params = [p for t, i in chunk for p in (i, t)]
                marks = ",".join("?" * len(pids))
                rids += [r for (r,) in conn.execute(
                    f"SELECT DISTINCT x.rid FROM ix_reference x WHERE x.pid IN ({marks}) "
                    f"AND ({cond})", [*pids, *params])]
            return self._load(conn, rids)
        sources = [f for f in frontier if spec.source_type in (f.type, "*")]
        if not sources:
            return []
        refs: list[tuple[str, str]] = []
        for src_type in {s.type for s in sources}:
            pids = self._include_pids(src_type, spec.param)
            ids = [s.id for s in sources if s.type == src_type]
            for chunk in _chunks(ids, 400):
                marks = ",".join("?" * len(chunk))
                pmarks = ",".join("?" * len(pids))
                sql = (f"SELECT x.ttype, x.tid FROM ix_reference x JOIN resource r "
                       f"ON r.rid = x.rid WHERE r.type = ? AND r.id IN ({marks}) "
                       f"AND x.pid IN ({pmarks}) AND x.tid IS NOT NULL")
                args: list[Any] = [src_type, *chunk, *pids]
                if spec.target_type:
                    sql += " AND x.ttype = ?"
                    args.append(spec.target_type)
                refs += list(conn.execute(sql, args))
        return self._load_by_keys(conn, refs)

    def _include_pids(self, source_type: str, code: str | None) -> list[int]:
        if code is not None:
            return [self._pid(source_type, code)]
        params = self.registry.search_params.get(source_type, {})
        return [self._pid(source_type, c) for c, p in params.items() if p.type == "reference"]

    def _load_by_keys(self, conn: sqlite3.Connection,
                      keys: list[tuple[str, str]]) -> list[StoredVersion]:
        out: list[StoredVersion] = []
        for t, i in dict.fromkeys(keys):
            row = conn.execute(_READ_SQL, (t, i)).fetchone()
            if row is not None and not row[2]:
                out.append(StoredVersion(t, i, row[0], row[1], False, row[3], row[4]))
        return out

    async def everything(self, patient_id: str, types: Sequence[str] | None,
                         since: str | None) -> list[tuple[str, str]]:
        def run(conn: sqlite3.Connection) -> list[tuple[str, str]]:
            out: list[tuple[str, str]] = []
            since_ms = instant_to_ms(since) if since else None
            for rtype, params in self.registry.compartment_patient.items():
                if not params or (types and rtype not in types):
                    continue
                pids = [self._pid(rtype, p) for p in params if p != "{def}"]
                marks = ",".join("?" * len(pids))
                sql = (f"SELECT DISTINCT r.type, r.id, r.rid FROM ix_reference x JOIN resource r "
                       f"ON r.rid = x.rid WHERE x.pid IN ({marks}) AND x.ttype = 'Patient' "
                       f"AND x.tid = ? AND r.deleted = 0")
                params_: list[Any] = [*pids, patient_id]
                if since_ms is not None:
                    sql += " AND r.lu_ms >= ?"
                    params_.append(since_ms)
                out += [(t, i) for t, i, _ in conn.execute(sql + " ORDER BY r.rid", params_)]
            return out
        return await self._in_reader(run)

    # -- writes --------------------------------------------------------------------------------

    @asynccontextmanager
    async def unit_of_work(self) -> AsyncIterator[SqliteUnitOfWork]:
        async with self._write_lock:
            assert self._writer is not None
            uow = SqliteUnitOfWork(self, self._writer)
            await self._in_writer(lambda: uow.conn.execute("BEGIN IMMEDIATE"))
            self._uow, self._uow_task = uow, asyncio.current_task()
            try:
                yield uow
            except BaseException:
                self._uow = self._uow_task = None
                await self._in_writer(lambda: uow.conn.execute("ROLLBACK"))
                raise
            else:
                self._uow = self._uow_task = None
                await self._in_writer(lambda: uow.conn.execute("COMMIT"))
        if uow.inbox_dirty:
            # after the lock: the next write need not wait for this one's AuditEvents to move
            await self.audit.move()

    # -- audit trail and chain outbox (app/audit/, app/chain/anchorer.py) ------------------------

    async def append_audit(self, audit: Sequence[AuditRow], outbox: Sequence[OutboxRow]) -> None:
        """AuditEvents and chain entries of reads (app/storage/sqlite_audit.py): durable when
        this returns."""
        if not audit and not outbox:
            return
        uow = self._uow
        if uow is not None and self._uow_task is asyncio.current_task():
            # inside this task's own unit of work (a read in a transaction bundle): the rows
            # commit with it, and a transaction that fails returned nothing to record
            await uow.append_audit(audit, outbox)
            return
        await self.audit.append(audit, outbox)

    async def append_access(self, raw: Sequence[RawAccess]) -> None:
        """Reads' raw accesses (app/audit/sealing.py), group-committed: durable when this
        returns."""
        await self.audit.append((), (), raw)

    def in_unit_of_work(self) -> bool:
        return self._uow is not None and self._uow_task is asyncio.current_task()

    def use_sealer(self, seal: SealFn, grace_ms: int) -> None:
        self.audit.use_sealer(seal, grace_ms)

    async def seal_accesses(self) -> None:
        await self.audit.seal_now()

    async def audit_get(self, id_: str) -> StoredAudit | None:
        await self.audit.seal_now()
        return await self._in_reader(lambda _: self.audit.get(self.audit.reader(), id_))

    async def audit_search(self, query: AuditQuery) -> tuple[list[StoredAudit], int]:
        await self.audit.seal_now()
        return await self._in_reader(lambda _: self.audit.search(self.audit.reader(), query))

    async def version_proof(self, type_: str, id_: str, version: int,
                            ) -> tuple[bytes, ChainProof | None] | None:
        ref = f"{type_}/{id_}/_history/{version}"
        return await self._in_reader(lambda _: self.audit.version_proof(self.audit.reader(),
                                                                        ref))

    async def oldest_unanchored_ms(self) -> int | None:
        return await self._in_reader(
            lambda _: self.audit.oldest_unanchored_ms(self.audit.reader()))

    def _put(self, conn: sqlite3.Connection, type_: str, id_: str, resource: dict[str, Any],
             method: str, if_match: int | None) -> WriteResult:
        row = conn.execute("SELECT rid, version, deleted FROM resource WHERE type = ? AND id = ?",
                           (type_, id_)).fetchone()
        current = None if row is None else row[1]
        if if_match is not None and (row is None or row[2] or current != if_match):
            raise VersionConflict(None if row is None or row[2] else current, if_match)
        version = 1 if current is None else current + 1
        lu_ms = self._now_ms(conn)
        lu = format_instant_ms(lu_ms)
        meta = dict(resource.get("meta") or {})
        meta["versionId"] = str(version)
        meta["lastUpdated"] = lu
        body_dict: dict[str, Any] = {"resourceType": type_, "id": id_, "meta": meta}
        for k, v in resource.items():
            if k not in body_dict:
                body_dict[k] = v
        body = orjson.dumps(body_dict)
        rows = self.indexer.rows(body_dict)
        if row is None:
            rid = int(conn.execute(
                "INSERT INTO resource(type, id, version, lu_ms, deleted, seq) "
                "VALUES (?, ?, ?, ?, 0, 0)", (type_, id_, version, lu_ms)).lastrowid or 0)
        else:
            rid = row[0]
            self._clear_index(conn, rid)
        seq = conn.execute(
            "INSERT INTO history(rid, version, lu, lu_ms, method, deleted, body) "
            "VALUES (?, ?, ?, ?, ?, 0, ?)", (rid, version, lu, lu_ms, method, body)).lastrowid
        conn.execute("UPDATE resource SET version = ?, lu_ms = ?, deleted = 0, seq = ? "
                     "WHERE rid = ?", (version, lu_ms, seq, rid))
        self._write_index(conn, rid, type_, rows)
        stored = StoredVersion(type_, id_, version, lu, False, body, method)
        return WriteResult(stored, created=row is None or bool(row[2]))

    def _delete(self, conn: sqlite3.Connection, type_: str, id_: str,
                if_match: int | None) -> WriteResult | None:
        row = conn.execute("SELECT rid, version, deleted FROM resource WHERE type = ? AND id = ?",
                           (type_, id_)).fetchone()
        if if_match is not None and (row is None or row[2] or row[1] != if_match):
            raise VersionConflict(None if row is None or row[2] else row[1], if_match)
        if row is None or row[2]:
            return None
        rid, version = row[0], row[1] + 1
        lu_ms = self._now_ms(conn)
        lu = format_instant_ms(lu_ms)
        seq = conn.execute(
            "INSERT INTO history(rid, version, lu, lu_ms, method, deleted, body) "
            "VALUES (?, ?, ?, ?, 'DELETE', 1, x'')", (rid, version, lu, lu_ms)).lastrowid
        conn.execute("UPDATE resource SET version = ?, lu_ms = ?, deleted = 1, seq = ? "
                     "WHERE rid = ?", (version, lu_ms, seq, rid))
        self._clear_index(conn, rid)
        return WriteResult(StoredVersion(type_, id_, version, lu, True, b"", "DELETE"), False)

    def _clear_index(self, conn: sqlite3.Connection, rid: int) -> None:
        for table in INDEX_TABLES:
            conn.execute(f"DELETE FROM {table} WHERE rid = ?", (rid,))

    def _write_index(self, conn: sqlite3.Connection, rid: int, type_: str,
                     rows: IndexRows) -> None:
        def pid(code: str) -> int:
            return self._pids[(type_, code)]

        if rows.string:
            conn.executemany("INSERT INTO ix_string VALUES (?, ?, ?, ?)",
                             [(rid, pid(r.param), r.norm, r.exact) for r in rows.string])
        if rows.token:
            conn.executemany("INSERT INTO ix_token VALUES (?, ?, ?, ?, ?)",
                             [(rid, pid(r.param), r.system, r.code, r.text) for r in rows.token])
        if rows.date:
            conn.executemany("INSERT INTO ix_date VALUES (?, ?, ?, ?)",
                             [(rid, pid(r.param), r.lo, r.hi) for r in rows.date])
        if rows.number:
            conn.executemany("INSERT INTO ix_number VALUES (?, ?, ?, ?, ?)",
                             [(rid, pid(r.param), r.value, r.lo, r.hi) for r in rows.number])
        if rows.quantity:
            conn.executemany("INSERT INTO ix_quantity VALUES (?, ?, ?, ?, ?, ?, ?)",
                             [(rid, pid(r.param), r.system, r.code, r.value, r.lo, r.hi)
                              for r in rows.quantity])
        if rows.reference:
            conn.executemany(
                "INSERT INTO ix_reference VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(rid, pid(r.param), r.target_type, r.target_id, r.url, r.identifier_system,
                  r.identifier_value) for r in rows.reference])
        if rows.uri:
            conn.executemany("INSERT INTO ix_uri VALUES (?, ?, ?)",
                             [(rid, pid(r.param), r.value) for r in rows.uri])
        if rows.composite:
            conn.executemany(
                "INSERT INTO ix_composite VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(rid, pid(r.param), r.c1_system, r.c1_code, r.c2_system, r.c2_code, r.c2_lo,
                  r.c2_hi, r.c2_str, r.c3_lo, r.c3_hi) for r in rows.composite])

    def _search_ids(self, conn: sqlite3.Connection, query: SearchQuery,
                    limit: int) -> list[tuple[str, str]]:
        compiler = Compiler(self._pid)
        where = compiler.where(query, "r")
        return [(t, i) for t, i in conn.execute(
            f"SELECT r.type, r.id FROM resource r WHERE {where.text} LIMIT ?",
            [*where.params, limit])]


class SqliteUnitOfWork:
    """Reads and writes inside one `BEGIN IMMEDIATE` transaction on the writer connection.

    BEGIN (which may wait for another process's write lock), COMMIT (which may checkpoint)
    and searches run on the writer thread. Once BEGIN has succeeded, the single-row reads,
    puts and deletes of the transaction run inline on the calling thread: each is a few
    indexed statements (~0.1-0.3 ms) on a connection nobody else may touch while the store's
    write lock is held, and a thread hop per statement cost more than the statement itself
    and lengthened the time the database write lock is held (measured in
    docs/performance.md, importer section).
    """

    def __init__(self, store: SqliteStore, conn: sqlite3.Connection) -> None:
        self.store = store
        self.conn = conn
        self.inbox_dirty = False  # AuditEvents to move to the audit file after the commit

    async def read(self, type_: str, id_: str) -> StoredVersion | None:
        def run() -> StoredVersion | None:
            row = self.conn.execute(_READ_SQL, (type_, id_)).fetchone()
            if row is None:
                return None
            return StoredVersion(type_, id_, row[0], row[1], bool(row[2]), row[3], row[4])
        return run()

    async def search_ids(self, query: SearchQuery, limit: int) -> list[tuple[str, str]]:
        return await self.store._in_writer(lambda: self.store._search_ids(self.conn, query, limit))

    async def put(self, type_: str, id_: str, resource: dict[str, Any], *, method: str,
                  if_match: int | None = None) -> WriteResult:
        return self.store._put(self.conn, type_, id_, resource, method, if_match)

    async def delete(self, type_: str, id_: str, *,
                     if_match: int | None = None) -> WriteResult | None:
        return self.store._delete(self.conn, type_, id_, if_match)

    async def new_id(self) -> str:
        return str(uuid.uuid4())

    async def append_audit(self, audit: Sequence[AuditRow], outbox: Sequence[OutboxRow]) -> None:
        if audit or outbox:
            insert_rows(self.conn, audit, outbox, inbox=True)
            self.inbox_dirty = True


def _snapshot_key(sid: str, owner: str) -> str:
    """The stored id of a snapshot: the page token itself for an open server; bound to its
    owner otherwise, so only the caller whose search made it can find it again (another token
    holding the link gets "expired", exactly as for a snapshot that never existed)."""
    if not owner:
        return sid
    return "o." + hashlib.sha256(f"{sid}\x00{owner}".encode()).hexdigest()[:32]


def _chunks(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i:i + size] for i in range(0, len(items), size)]
