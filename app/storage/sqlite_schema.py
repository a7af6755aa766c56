"""Schema of the embedded store: one SQLite file in WAL mode.

- `resource`: one row per (type, id) pointing at the history row that holds its current version.
- `history`: every version ever written, with its canonical JSON; `seq` orders all writes and is
  the cursor for history paging.
- `sp`: search parameters interned to small integers (`pid`), so index rows stay compact.
- `ix_*`: one table per search-parameter type, keyed by `rid`; rows are replaced in the same
  transaction as the resource they index.
"""

from __future__ import annotations

SCHEMA_VERSION = 1

# The audit trail and the chain outbox (docs/chain.md), in a file of their own (var/audit.sqlite3,
# app/storage/sqlite_audit.py says why). An `audit` row is an AuditEvent and, while
# `batch` is NULL, its access entry waiting in the outbox; `chain_outbox` holds the other entries
# (resource-version anchors, consent decisions). `chain_batch` is one transaction sent by the
# anchoring worker: the proof of every row assigned to it (log index = first_log + pos).
# Reads' accesses before they are sealed into AuditEvents (app/audit/sealing.py), in a file of
# their own (var/audit.raw.sqlite3): a read commits here, where the anchoring worker's batches
# never hold the write lock. No index but the rowid, so recording one appends a row to one
# B-tree; AUTOINCREMENT, so a seq is never reused and a sealed range can be deleted by its bounds.
RAW_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit_raw(
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL,
    recorded_ms INTEGER NOT NULL,
    patient TEXT,
    data BLOB NOT NULL
);
"""

AUDIT_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit(
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    recorded_ms INTEGER NOT NULL,
    patient TEXT,
    action TEXT NOT NULL,
    outcome TEXT NOT NULL,
    agent TEXT,
    client TEXT,
    body BLOB NOT NULL,
    entry BLOB NOT NULL,
    batch INTEGER,
    pos INTEGER
);
CREATE INDEX IF NOT EXISTS audit_patient ON audit(patient, seq) WHERE patient IS NOT NULL;
CREATE INDEX IF NOT EXISTS audit_pending ON audit(seq) WHERE batch IS NULL;
CREATE INDEX IF NOT EXISTS audit_batch ON audit(batch, pos) WHERE batch IS NOT NULL;
CREATE TABLE IF NOT EXISTS chain_outbox(
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    origin INTEGER,
    kind TEXT NOT NULL,
    ref TEXT NOT NULL,
    payload BLOB NOT NULL,
    recorded_ms INTEGER NOT NULL,
    batch INTEGER,
    pos INTEGER
);
CREATE INDEX IF NOT EXISTS chain_outbox_pending ON chain_outbox(kind, seq) WHERE batch IS NULL;
CREATE INDEX IF NOT EXISTS chain_outbox_ref ON chain_outbox(ref);
CREATE UNIQUE INDEX IF NOT EXISTS chain_outbox_origin ON chain_outbox(origin)
    WHERE origin IS NOT NULL;
CREATE INDEX IF NOT EXISTS chain_outbox_batch ON chain_outbox(batch, pos)
    WHERE batch IS NOT NULL;
CREATE TABLE IF NOT EXISTS chain_batch(
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    chain_id INTEGER NOT NULL,
    contract TEXT NOT NULL,
    nonce INTEGER NOT NULL,
    raw_tx BLOB NOT NULL,
    tx_hash TEXT NOT NULL,
    state TEXT NOT NULL,
    entries INTEGER NOT NULL,
    block INTEGER,
    first_log INTEGER,
    created_ms INTEGER NOT NULL,
    mined_ms INTEGER
);
CREATE INDEX IF NOT EXISTS chain_batch_state ON chain_batch(state, id);
CREATE TABLE IF NOT EXISTS chain_lease(
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS chain_meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

# In the resource file: a write's AuditEvents and chain entries, committed with the write and
# moved to the audit file right after (`origin` of a moved outbox row = its inbox seq).
INBOX_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit_inbox(
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL,
    recorded_ms INTEGER NOT NULL,
    patient TEXT,
    action TEXT NOT NULL,
    outcome TEXT NOT NULL,
    agent TEXT,
    client TEXT,
    body BLOB NOT NULL,
    entry BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox_inbox(
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    ref TEXT NOT NULL,
    payload BLOB NOT NULL,
    recorded_ms INTEGER NOT NULL
);
"""

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS resource(
    rid INTEGER PRIMARY KEY,
    type TEXT NOT NULL,
    id TEXT NOT NULL,
    version INTEGER NOT NULL,
    lu_ms INTEGER NOT NULL,
    deleted INTEGER NOT NULL DEFAULT 0,
    seq INTEGER NOT NULL,
    UNIQUE(type, id)
);
CREATE INDEX IF NOT EXISTS resource_type_lu ON resource(type, lu_ms);
CREATE TABLE IF NOT EXISTS history(
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    rid INTEGER NOT NULL,
    version INTEGER NOT NULL,
    lu TEXT NOT NULL,
    lu_ms INTEGER NOT NULL,
    method TEXT NOT NULL,
    deleted INTEGER NOT NULL,
    body BLOB NOT NULL,
    UNIQUE(rid, version)
);
CREATE INDEX IF NOT EXISTS history_lu ON history(lu_ms);
CREATE TABLE IF NOT EXISTS sp(pid INTEGER PRIMARY KEY, type TEXT NOT NULL, code TEXT NOT NULL,
                              UNIQUE(type, code));
CREATE TABLE IF NOT EXISTS ix_string(rid INTEGER NOT NULL, pid INTEGER NOT NULL,
                                     norm TEXT NOT NULL, exact TEXT);
CREATE INDEX IF NOT EXISTS ix_string_v ON ix_string(pid, norm);
CREATE INDEX IF NOT EXISTS ix_string_r ON ix_string(rid, pid);
CREATE TABLE IF NOT EXISTS ix_token(rid INTEGER NOT NULL, pid INTEGER NOT NULL, system TEXT,
                                    code TEXT, text TEXT);
CREATE INDEX IF NOT EXISTS ix_token_v ON ix_token(pid, code, system);
CREATE INDEX IF NOT EXISTS ix_token_r ON ix_token(rid, pid);
CREATE TABLE IF NOT EXISTS ix_date(rid INTEGER NOT NULL, pid INTEGER NOT NULL,
                                   lo INTEGER NOT NULL, hi INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS ix_date_v ON ix_date(pid, lo);
CREATE INDEX IF NOT EXISTS ix_date_r ON ix_date(rid, pid, lo, hi);
CREATE TABLE IF NOT EXISTS ix_number(rid INTEGER NOT NULL, pid INTEGER NOT NULL,
                                     value REAL NOT NULL, lo REAL NOT NULL, hi REAL NOT NULL);
CREATE INDEX IF NOT EXISTS ix_number_v ON ix_number(pid, lo);
CREATE INDEX IF NOT EXISTS ix_number_r ON ix_number(rid, pid);
CREATE TABLE IF NOT EXISTS ix_quantity(rid INTEGER NOT NULL, pid INTEGER NOT NULL, system TEXT,
                                       code TEXT, value REAL NOT NULL, lo REAL NOT NULL,
                                       hi REAL NOT NULL);
CREATE INDEX IF NOT EXISTS ix_quantity_v ON ix_quantity(pid, code, lo);
CREATE INDEX IF NOT EXISTS ix_quantity_r ON ix_quantity(rid, pid);
CREATE TABLE IF NOT EXISTS ix_reference(rid INTEGER NOT NULL, pid INTEGER NOT NULL, ttype TEXT,
                                        tid TEXT, url TEXT, isys TEXT, ival TEXT);
CREATE INDEX IF NOT EXISTS ix_reference_v ON ix_reference(pid, tid, ttype);
CREATE INDEX IF NOT EXISTS ix_reference_u ON ix_reference(pid, url) WHERE url IS NOT NULL;
CREATE INDEX IF NOT EXISTS ix_reference_i ON ix_reference(pid, ival) WHERE ival IS NOT NULL;
CREATE INDEX IF NOT EXISTS ix_reference_r ON ix_reference(rid, pid);
CREATE TABLE IF NOT EXISTS ix_uri(rid INTEGER NOT NULL, pid INTEGER NOT NULL,
                                  value TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS ix_uri_v ON ix_uri(pid, value);
CREATE INDEX IF NOT EXISTS ix_uri_r ON ix_uri(rid, pid);
CREATE TABLE IF NOT EXISTS ix_composite(rid INTEGER NOT NULL, pid INTEGER NOT NULL,
                                        c1_system TEXT, c1_code TEXT, c2_system TEXT,
                                        c2_code TEXT, c2_lo REAL, c2_hi REAL, c2_str TEXT,
                                        c3_lo REAL, c3_hi REAL);
CREATE INDEX IF NOT EXISTS ix_composite_v ON ix_composite(pid, c1_code, c2_code);
CREATE INDEX IF NOT EXISTS ix_composite_r ON ix_composite(rid, pid);
""" + INBOX_SCHEMA

INDEX_TABLES = ("ix_string", "ix_token", "ix_date", "ix_number", "ix_quantity", "ix_reference",
                "ix_uri", "ix_composite")

SNAPSHOT_SCHEMA = """
CREATE TABLE IF NOT EXISTS snapshot(
    id TEXT PRIMARY KEY,
    created_ms INTEGER NOT NULL,
    total INTEGER NOT NULL,
    rids BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS snapshot_created ON snapshot(created_ms);
"""
