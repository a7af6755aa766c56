"""The MongoDB-protocol server of the test suite, and what the MongoDB store's design relies on
(issue 6, docs/mongodb-options.md "What the store design must do").

FerretDB v1.24.0 (tests/mongo_server.py) through PyMongo's AsyncMongoClient: the unique-index
insert is the one concurrency primitive that holds, acknowledged writes survive `kill -9`, and
there are no multi-document transactions — so the store must gate transaction Bundles on a
probe, not on the handshake's session field.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pymongo import AsyncMongoClient
from pymongo.errors import DuplicateKeyError, OperationFailure

from tests.mongo_server import VERSION, FerretDB

# 北京协和医院 patients' MRNs (病案号): the key a conditional create relies on
MRNS = [f"BA{2026_110_000 + i}" for i in range(40)]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[FerretDB]:
    with FerretDB(tmp_path / "ferretdb") as db:
        yield db


def client(server: FerretDB) -> AsyncMongoClient[dict[str, Any]]:
    return AsyncMongoClient(server.uri, serverSelectionTimeoutMS=5000)


def test_the_server_speaks_a_wire_version_pymongo_accepts_and_is_not_a_replica_set(
        server: FerretDB) -> None:
    async def go() -> dict[str, Any]:
        async with client(server) as c:
            hello = await c.admin.command("hello")
            info = await c.admin.command("buildInfo")
            return {**hello, "buildVersion": info.get("ferretdbVersion")}

    hello = asyncio.run(go())
    assert hello["maxWireVersion"] >= 17  # MongoDB 6.0+; PyMongo 4.15 needs 8
    assert "setName" not in hello and hello.get("msg") != "isdbgrid"
    # it advertises sessions although it has no transactions (see the last test)
    assert hello.get("logicalSessionTimeoutMinutes") is not None
    assert hello["buildVersion"] == VERSION


def test_of_racing_inserts_of_one_unique_key_exactly_one_wins(server: FerretDB) -> None:
    """The store's If-Match and conditional create: insert version n+1 under a unique index."""
    async def go() -> list[int]:
        async with client(server) as c:
            versions = c.yilian.versions
            await versions.create_index([("type", 1), ("id", 1), ("v", 1)], unique=True)
            wins = []
            for round_ in range(10):
                async def contend(n: int, r: int = round_) -> bool:
                    try:
                        await versions.insert_one({"type": "Patient", "id": f"pat-{r}", "v": 2,
                                                   "writer": n})
                        return True
                    except DuplicateKeyError as exc:
                        assert exc.code == 11000
                        return False
                results = await asyncio.gather(*(contend(n) for n in range(12)))
                wins.append(sum(results))
            return wins

    assert asyncio.run(go()) == [1] * 10


def test_acknowledged_writes_survive_kill_9(server: FerretDB) -> None:
    async def write() -> int:
        async with client(server) as c:
            acked = 0
            for mrn in MRNS:
                await c.yilian.patients.insert_one({"_id": mrn, "name": "张伟"})
                acked += 1
            return acked

    async def count() -> list[str]:
        async with client(server) as c:
            return sorted([d["_id"] async for d in c.yilian.patients.find({}, {"_id": 1})])

    assert asyncio.run(write()) == len(MRNS)
    server.kill()
    server.start()
    assert asyncio.run(count()) == sorted(MRNS)


def test_a_multi_document_transaction_is_refused_and_writes_nothing(server: FerretDB) -> None:
    """What the store probes at start before it offers transaction Bundles."""
    async def go() -> tuple[bool, int]:
        async with client(server) as c:
            coll = c.yilian.bundle_probe
            refused = False
            try:
                async with c.start_session() as s, await s.start_transaction():
                    await coll.insert_one({"_id": "Patient/pat-tx"}, session=s)
                    await coll.insert_one({"_id": "Encounter/enc-tx"}, session=s)
            except OperationFailure:
                refused = True
            return refused, await coll.count_documents({})

    assert asyncio.run(go()) == (True, 0)
