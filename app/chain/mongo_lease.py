"""The anchoring lease on a MongoDB-protocol database (issue 6): epochs, not compare-and-swap.

The SQLite lease (app/chain/lease.py) changes one row with a conditional upsert. On MongoDB that
would need an atomic conditional update, which FerretDB does not have (docs/mongodb-options.md:
racing conditional updates all "win", the last one silently), and TTL indexes, which it lacks
too. So the lease is a sequence of *epoch* documents, `{_id: "<name>/<epoch>"}`, and the unique
`_id` is the only arbiter:

- taking the lease inserts the next epoch's document; of racing takers exactly one insert
  succeeds, the others get a duplicate key;
- it may be taken when there is no epoch yet, when the latest one expired (its holder stopped
  renewing: the process died or hung), or when its holder released it;
- only the holder writes its own epoch document (renewal, release), so no two writers ever race
  on one document;
- the latest epoch is the lease: a holder that stalled past its expiry finds a higher epoch on
  its next renewal and has lost it. `holds` is the fencing check before each batch.
"""

from __future__ import annotations

from typing import Any

from pymongo import DESCENDING
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError

from app.chain.lease import LEASE_MS, now_ms

KEEP_EPOCHS = 16  # older epoch documents are deleted as the lease changes hands


class MongoLease:
    """The lease `name` in `collection`, as seen by `holder`."""

    def __init__(self, collection: AsyncCollection[dict[str, Any]], name: str, holder: str,
                 ttl_ms: int = LEASE_MS) -> None:
        self.collection = collection
        self.name = name
        self.holder = holder
        self.ttl_ms = ttl_ms

    async def ensure_indexes(self) -> None:
        await self.collection.create_index([("name", 1), ("epoch", DESCENDING)])

    async def latest(self) -> dict[str, Any] | None:
        """The latest epoch document of this lease (None before the first)."""
        found: dict[str, Any] | None = await self.collection.find_one(
            {"name": self.name}, sort=[("epoch", DESCENDING)])
        return found

    async def acquire(self) -> bool:
        """Renew the lease when ours, take it when free or expired; True while held."""
        latest = await self.latest()
        now = now_ms()
        if latest is not None and latest["holder"] == self.holder and latest["expires_ms"] > now:
            await self.collection.update_one(
                {"_id": latest["_id"], "holder": self.holder},
                {"$set": {"expires_ms": now + self.ttl_ms}})
            return await self.holds()  # fencing: no taker slipped in meanwhile
        if latest is not None and latest["expires_ms"] > now:
            return False  # another holder's, alive
        epoch = 1 if latest is None else int(latest["epoch"]) + 1
        try:
            await self.collection.insert_one({
                "_id": f"{self.name}/{epoch:012d}", "name": self.name, "epoch": epoch,
                "holder": self.holder, "expires_ms": now + self.ttl_ms, "taken_ms": now})
        except DuplicateKeyError:
            return False  # another taker won this epoch
        if epoch > KEEP_EPOCHS:
            await self.collection.delete_many({"name": self.name,
                                               "epoch": {"$lte": epoch - KEEP_EPOCHS}})
        return True

    async def holds(self) -> bool:
        """True while the latest epoch is ours and unexpired (check before acting on it)."""
        latest = await self.latest()
        return latest is not None and latest["holder"] == self.holder and \
            latest["expires_ms"] > now_ms()

    async def release(self) -> None:
        """Give the lease up (clean stop): our epoch expires now, so the next taker need not
        wait for it."""
        latest = await self.latest()
        if latest is not None and latest["holder"] == self.holder:
            await self.collection.update_one({"_id": latest["_id"], "holder": self.holder},
                                             {"$set": {"expires_ms": 0}})

    async def current(self) -> tuple[str, int] | None:
        """(holder, expires_ms) of the lease as stored, or None when nobody holds it."""
        latest = await self.latest()
        if latest is None or latest["expires_ms"] <= now_ms():
            return None
        return str(latest["holder"]), int(latest["expires_ms"])
