"""`GET /chain/status`: where the audit trail is anchored and how far behind anchoring is.

A JSON document (not FHIR) for operators and monitoring, always `200` and `Cache-Control:
no-store`, whether the chain is up, down or off:

- `chain` (dev | rpc | off), `chain_id`, `rpc_url` (scheme, host and port only: no credentials
  or API keys), `contracts` (name -> address), `epoch` (count of chain resets survived, from 1),
  `writer` (this node's address);
- `reachable` (the RPC endpoint answered `eth_blockNumber` within 2 s) and `latest_block`;
- `outbox`: entries waiting for a batch, per kind (`access` = AuditEvents and reads' raw
  accesses not sealed yet, `version`, `consent`), and `outbox_total`; `unsealed`: how many of
  the accesses are raw;
- `batches_sent`: transactions sent and not yet confirmed; `last_confirmed_block`;
- `anchoring_lag_seconds`: age of the oldest entry not yet anchored (waiting, or in a sent
  batch); 0 when everything is anchored;
- `recorded_to_mined_seconds`: median and max, over the last 100 confirmed batches, of the time
  from the recording of each batch's first (oldest) entry to the block's mining;
- `error`: present when part of the answer could not be computed, saying which part.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
from fastapi import APIRouter
from fastapi.responses import Response

from app.chain.node import ChainHandle, public_url
from app.config import Settings
from app.storage.sqlite_audit import raw_path_of

log = logging.getLogger("yilian.chain")

NO_STORE = {"Cache-Control": "no-store"}
RPC_TIMEOUT = 2.0
LATENCY_BATCHES = 100
KINDS = ("access", "version", "consent")


def build_chain_router(settings: Settings, db_path: Path,
                       handle_getter: Callable[[], ChainHandle | None]) -> APIRouter:
    router = APIRouter()

    @router.get("/chain/status", include_in_schema=False)
    async def chain_status() -> Response:
        return Response(orjson.dumps(await chain_status_document(settings, db_path,
                                                                 handle_getter)),
                        media_type="application/json", headers=NO_STORE)

    return router


async def chain_status_document(settings: Settings, db_path: Path,
                                handle_getter: Callable[[], ChainHandle | None]
                                ) -> dict[str, Any]:
    errors: list[str] = []
    handle: ChainHandle | None = None
    if settings.chain != "off":
        try:
            handle = handle_getter()
        except Exception as exc:  # a broken deployment record must not break the status page
            log.warning("chain status: no chain handle: %s", exc)
            errors.append(f"chain handle: {exc}")
    doc: dict[str, Any] = {
        "chain": settings.chain,
        "chain_id": handle.chain_id if handle else None,
        "rpc_url": public_url(handle.rpc_url) if handle else (
            public_url(settings.chain_rpc) if settings.chain == "rpc" and settings.chain_rpc
            else None),
        "contracts": dict(handle.contracts) if handle else {},
        "epoch": handle.epoch if handle else None,
        "writer": handle.account.address if handle else None,
        "reachable": False,
        "latest_block": None,
    }
    rpc_url = handle.rpc_url if handle else (settings.chain_rpc if settings.chain == "rpc"
                                             else "")
    probe = asyncio.create_task(latest_block(rpc_url)) if rpc_url else None
    try:
        doc.update(await asyncio.to_thread(outbox_figures, db_path, int(time.time() * 1000)))
    except (sqlite3.Error, OSError) as exc:
        log.warning("chain status: cannot read the outbox in %s: %s", db_path, exc)
        errors.append(f"outbox: {exc}")
        doc.update(outbox_figures(None, 0))
    if probe is not None:
        block = await probe
        doc["reachable"] = block is not None
        doc["latest_block"] = block
    if errors:
        doc["error"] = "; ".join(errors)
    return doc


async def latest_block(rpc_url: str, timeout: float = RPC_TIMEOUT) -> int | None:
    """The chain's latest block number, or None when it did not answer within `timeout`."""
    body = {"jsonrpc": "2.0", "id": 1, "method": "eth_blockNumber", "params": []}
    try:
        async with asyncio.timeout(timeout), httpx.AsyncClient(timeout=timeout) as client:
            reply = (await client.post(rpc_url, json=body)).json()
        return int(reply["result"], 16)
    except (TimeoutError, httpx.HTTPError, ValueError, KeyError, TypeError):
        return None


def outbox_figures(db_path: Path | None, now_ms: int) -> dict[str, Any]:
    """Outbox depth, batches in flight, lag and latency from the store's audit tables.

    `db_path` None (or a store not created yet) gives the figures of an empty outbox.
    """
    figures: dict[str, Any] = {
        "outbox": dict.fromkeys(KINDS, 0),
        "outbox_total": 0,
        "unsealed": 0,
        "batches_sent": 0,
        "last_confirmed_block": None,
        "anchoring_lag_seconds": 0.0,
        "recorded_to_mined_seconds": {"median": None, "max": None, "batches": 0},
    }
    if db_path is None or not db_path.exists():
        return figures
    # read-write open (only reads are made): a read-only open of a WAL database fails while
    # no process holds its shared-memory file
    con = sqlite3.connect(db_path, timeout=RPC_TIMEOUT)
    try:
        if con.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = "
                       "'chain_batch'").fetchone() is None:
            return figures
        _fill(con, figures, now_ms)
    finally:
        con.close()
    _fill_raw(raw_path_of(db_path), figures, now_ms)
    return figures


def _fill_raw(raw_path: Path, figures: dict[str, Any], now_ms: int) -> None:
    """Reads' raw accesses (app/audit/sealing.py) wait for the chain too."""
    if not raw_path.exists():
        return
    con = sqlite3.connect(raw_path, timeout=RPC_TIMEOUT)
    try:
        if con.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = "
                       "'audit_raw'").fetchone() is None:
            return
        count, oldest = con.execute("SELECT COUNT(*), MIN(recorded_ms) FROM audit_raw"
                                    ).fetchone()
    finally:
        con.close()
    figures["unsealed"] = count
    figures["outbox"]["access"] += count
    figures["outbox_total"] += count
    if oldest is not None:
        figures["anchoring_lag_seconds"] = max(figures["anchoring_lag_seconds"],
                                               round(max(0, now_ms - oldest) / 1000, 3))


def _fill(con: sqlite3.Connection, figures: dict[str, Any], now_ms: int) -> None:
    outbox = figures["outbox"]
    outbox["access"] = con.execute("SELECT COUNT(*) FROM audit WHERE batch IS NULL").fetchone()[0]
    for kind, count in con.execute("SELECT kind, COUNT(*) FROM chain_outbox WHERE batch IS NULL "
                                   "GROUP BY kind"):
        outbox[kind] = count
    figures["outbox_total"] = sum(outbox.values())
    figures["batches_sent"] = con.execute(
        "SELECT COUNT(*) FROM chain_batch WHERE state = 'sent'").fetchone()[0]
    figures["last_confirmed_block"] = con.execute(
        "SELECT MAX(block) FROM chain_batch WHERE state = 'confirmed'").fetchone()[0]
    # Rows are taken in seq order, so a table's oldest waiting row is its lowest seq; rows in
    # sent batches are older still (or as old) and not anchored either.
    oldest = [
        con.execute("SELECT recorded_ms FROM audit WHERE batch IS NULL ORDER BY seq "
                    "LIMIT 1").fetchone(),
        con.execute("SELECT MIN(a.recorded_ms) FROM chain_batch b JOIN audit a "
                    "ON a.batch = b.id AND a.pos = 0 WHERE b.state = 'sent'").fetchone(),
        con.execute("SELECT MIN(o.recorded_ms) FROM chain_batch b JOIN chain_outbox o "
                    "ON o.batch = b.id AND o.pos = 0 WHERE b.state = 'sent'").fetchone(),
    ]
    oldest += [con.execute("SELECT recorded_ms FROM chain_outbox WHERE batch IS NULL AND "
                           "kind = ? ORDER BY seq LIMIT 1", (kind,)).fetchone()
               for kind in KINDS[1:]]
    times = [row[0] for row in oldest if row is not None and row[0] is not None]
    if times:
        figures["anchoring_lag_seconds"] = round(max(0, now_ms - min(times)) / 1000, 3)
    latencies = [
        (mined - recorded) / 1000
        for mined, recorded in con.execute(
            "SELECT b.mined_ms, COALESCE("
            " (SELECT a.recorded_ms FROM audit a WHERE a.batch = b.id AND a.pos = 0),"
            " (SELECT o.recorded_ms FROM chain_outbox o WHERE o.batch = b.id AND o.pos = 0))"
            " FROM chain_batch b WHERE b.state = 'confirmed' AND b.mined_ms IS NOT NULL"
            " ORDER BY b.id DESC LIMIT ?", (LATENCY_BATCHES,))
        if recorded is not None
    ]
    if latencies:
        figures["recorded_to_mined_seconds"] = {
            "median": round(statistics.median(latencies), 3),
            "max": round(max(latencies), 3),
            "batches": len(latencies),
        }
