"""The anchoring lease on a MongoDB-protocol server (app/chain/mongo_lease.py), against FerretDB
(tests/mongo_server.py): one holder at a time, taken over when its holder stops renewing,
released at once on a clean stop, and fenced — a holder that stalled learns it lost the lease.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest
from pymongo import AsyncMongoClient

from app.chain.mongo_lease import KEEP_EPOCHS, MongoLease
from tests.mongo_server import FerretDB

T = TypeVar("T")

# the anchoring workers of two hospital servers sharing one database
BEIJING = "his-bj-01:4121:9f3a"
TIANJIN = "his-tj-02:977:1c0e"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FerretDB]:
    with FerretDB(tmp_path_factory.mktemp("ferretdb")) as db:
        yield db


def run(server: FerretDB, body: Callable[[Any], Awaitable[T]]) -> T:
    """`body(collection)` on a fresh lease collection of its own."""
    async def go() -> T:
        async with AsyncMongoClient(server.uri, serverSelectionTimeoutMS=5000) as client:
            coll = client.yilian[f"chain_lease_{time.time_ns()}"]
            await MongoLease(coll, "anchorer", "setup").ensure_indexes()
            return await body(coll)
    return asyncio.run(go())


def test_one_holder_at_a_time_and_the_holder_renews(server: FerretDB) -> None:
    async def body(coll: Any) -> list[bool]:
        bj, tj = MongoLease(coll, "anchorer", BEIJING), MongoLease(coll, "anchorer", TIANJIN)
        return [await bj.acquire(), await tj.acquire(), await bj.acquire(), await bj.holds(),
                await tj.holds()]

    assert run(server, body) == [True, False, True, True, False]


def test_of_racing_takers_exactly_one_gets_the_lease(server: FerretDB) -> None:
    async def body(coll: Any) -> list[int]:
        wins = []
        for round_ in range(5):
            name = f"anchorer-{round_}"
            takers = [MongoLease(coll, name, f"worker-{n}") for n in range(8)]
            got = await asyncio.gather(*(t.acquire() for t in takers))
            held = [await t.holds() for t in takers]
            assert got == held
            wins.append(sum(got))
        return wins

    assert run(server, body) == [1] * 5


def test_a_holder_that_stops_renewing_is_replaced_and_then_fenced_out(server: FerretDB) -> None:
    async def body(coll: Any) -> tuple[bool, ...]:
        bj = MongoLease(coll, "anchorer", BEIJING, ttl_ms=300)
        tj = MongoLease(coll, "anchorer", TIANJIN, ttl_ms=300)
        first = await bj.acquire()
        refused = await tj.acquire()
        await asyncio.sleep(0.4)  # Beijing's worker hangs past its lease
        taken = await tj.acquire()
        # Beijing wakes up: its renewal finds a higher epoch, and it does not hold the lease
        renewed = await bj.acquire()
        return first, refused, taken, renewed, await bj.holds(), await tj.holds()

    assert run(server, body) == (True, False, True, False, False, True)


def test_a_released_lease_is_taken_at_once_and_old_epochs_are_pruned(server: FerretDB) -> None:
    async def body(coll: Any) -> tuple[bool, bool, list[int], tuple[str, int] | None]:
        bj, tj = MongoLease(coll, "anchorer", BEIJING), MongoLease(coll, "anchorer", TIANJIN)
        assert await bj.acquire()
        await bj.release()
        taken = await tj.acquire()
        still = await bj.holds()
        for _ in range(KEEP_EPOCHS + 4):  # the lease changes hands many times
            holder, taker = (tj, bj) if await tj.holds() else (bj, tj)
            await holder.release()
            assert await taker.acquire()
        epochs = sorted([d["epoch"] async for d in coll.find({"name": "anchorer"})])
        return taken, still, epochs, await bj.current() or await tj.current()

    taken, still, epochs, current = run(server, body)
    assert taken and not still
    assert len(epochs) <= KEEP_EPOCHS and epochs == list(range(epochs[0], epochs[-1] + 1))
    assert current is not None and current[0] in (BEIJING, TIANJIN)
