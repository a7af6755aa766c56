"""A lease across processes in SQLite: at most one anchoring worker sends transactions.

Every uvicorn worker runs an Anchorer, but only the holder of the `chain_lease` row named
`anchorer` may assign outbox rows to transactions: several senders on one key would race on
nonces. The holder renews the lease about every second; a lease not renewed for `LEASE_MS` (the
process died, hung or lost its disk) may be taken by anyone. Holders are `hostname:pid:random`,
so a restarted process with a recycled pid is a new holder.

The lease alone cannot stop a holder that stalled past its expiry from acting on a stale belief,
so writers also check it inside the SQLite transaction that assigns rows (`holds`): once another
holder has taken over, the stalled one's transaction sees that and assigns nothing.
"""

from __future__ import annotations

import os
import secrets
import socket
import sqlite3
import time

LEASE_MS = 5000  # a holder silent this long is presumed dead
RENEW_S = 1.0  # how often a holder renews (and a waiting worker retries)


def new_holder() -> str:
    """A holder id unique across hosts, processes and restarts: `hostname:pid:random`."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def holds(conn: sqlite3.Connection, name: str, holder: str) -> bool:
    """True while `holder` has the unexpired lease `name` (use inside the caller's transaction)."""
    row = conn.execute("SELECT holder, expires_ms FROM chain_lease WHERE name = ?",
                       (name,)).fetchone()
    return row is not None and row[0] == holder and row[1] > now_ms()


class Lease:
    """The lease `name` in the chain_lease table, as seen by `holder`."""

    def __init__(self, conn: sqlite3.Connection, name: str, holder: str,
                 ttl_ms: int = LEASE_MS) -> None:
        self.conn = conn
        self.name = name
        self.holder = holder
        self.ttl_ms = ttl_ms

    def acquire(self) -> bool:
        """Take the lease when free, expired or already ours (then renew it); True if held."""
        now = now_ms()
        # One statement, so taking and renewing are atomic without an explicit transaction: the
        # row changes only when it is missing, ours, or expired.
        cur = self.conn.execute(
            "INSERT INTO chain_lease(name, holder, expires_ms) VALUES (?, ?, ?) "
            "ON CONFLICT(name) DO UPDATE SET holder = excluded.holder, "
            "expires_ms = excluded.expires_ms "
            "WHERE chain_lease.holder = excluded.holder OR chain_lease.expires_ms <= ?",
            (self.name, self.holder, now + self.ttl_ms, now))
        if self.conn.in_transaction:
            self.conn.commit()
        return cur.rowcount == 1

    def release(self) -> None:
        """Give the lease up (clean stop), so another worker need not wait for it to expire."""
        self.conn.execute("DELETE FROM chain_lease WHERE name = ? AND holder = ?",
                          (self.name, self.holder))
        if self.conn.in_transaction:
            self.conn.commit()

    def current(self) -> tuple[str, int] | None:
        """(holder, expires_ms) of the lease as stored, or None when nobody holds it."""
        row = self.conn.execute("SELECT holder, expires_ms FROM chain_lease WHERE name = ?",
                                (self.name,)).fetchone()
        return None if row is None else (str(row[0]), int(row[1]))
