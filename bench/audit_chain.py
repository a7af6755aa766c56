"""Audited reads anchored on the dev chain: `python -m bench.audit_chain` (`make bench-audit`),
`--quick` to check the harness in about two minutes.

Issue 5's targets, measured in one run on this machine:

(a) audited reads reach at least 80 % of the throughput of the same reads with auditing off;
(b) at least 5,000 audited accesses per second anchored on the dev chain;
(c) p99 from access to on-chain at most 2 s.

One run:

1. takes the benchmark data set of `bench.load` (cached in `bench/.cache/`). A data set this
   harness loads is loaded by a server with `YILIAN_AUDIT=off` and `YILIAN_CHAIN=off`, so the
   load leaves no backlog of AuditEvents or version anchors; a cached store that has one (loaded
   by another benchmark with auditing on) is drained before anything is timed, and the size of
   that backlog is reported;
2. makes two private copies of the store and starts two Yilian servers on them, both with
   `YILIAN_AUTH=off` and the default worker count: **off** with `YILIAN_AUDIT=off` and
   `YILIAN_CHAIN=off` (no AuditEvent at all, the baseline of (a)), and **on** with auditing on
   and `YILIAN_CHAIN=dev` (`yilian serve` starts anvil under the copy's var/chain, deploys the
   contracts, and its anchoring worker sends the AuditEvents to AuditLog in batches);
3. runs wrk with random existing Observation and Patient reads (the read mix of `bench.run`)
   against each server in turn, round after round (off, on, off, on, ...): each audited run is
   divided by the unaudited run just before it (a). After each audited run it waits until every
   AuditEvent of the run is in a confirmed batch (and `/chain/status`, where the server serves
   it, shows an empty outbox), then reads the audited server's SQLite file (read-only) for the
   run's rows — the AuditEvents between the highest `audit.seq` before and after the run:
   anchored entries per second = rows / (last `chain_batch.mined_ms` − first
   `audit.recorded_ms`) (b); each row's `mined_ms − recorded_ms`, its time from access to
   on-chain (c); how many were confirmed while the reads ran, the backlog at the end of the run
   and how fast it drained; and from the batches' receipts the gas per entry and batch sizes;
4. runs the audited server once more (three times in the full mode) paced at 5,000 requests/s
   by a generated wrk Lua script (`delay()` against a monotonic clock), so that (c) is judged at
   the target load rather than at saturation, where the backlog grows by construction;
5. measures anchoring alone: audited reads on the audited store with `YILIAN_CHAIN=off` leave a
   backlog, which the server with the dev chain then anchors with no reads competing — the
   anchoring worker's and anvil's own rate on this machine.

Any non-2xx answer in a timed run fails the run loudly. Results go to
`bench/results/audit-<timestamp>.{json,md}`; `--docs` (or the full mode) also writes the
`audit-chain` section of docs/performance.md.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import math
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson

from app.storage.sqlite_audit import raw_path_of
from bench import sections
from bench.args import add_common, size_overrides
from bench.auth_overhead import BenchError, check_paths, group_cpu_seconds, system_paths
from bench.load import DatasetSpec, dir_bytes, load_dataset, working_copy
from bench.profile import ensure_py_spy, profiled, summarize
from bench.report import _num
from bench.server import HOST, REPO, ServerProcess, stop_on_signals, yilian_server
from bench.stats import Metric
from bench.wrk import SCRIPT, WrkResult, ensure_wrk, run_wrk, write_paths

CACHE = REPO / "bench" / ".cache"
RESULTS = REPO / "bench" / "results"
DOCS = REPO / "docs" / "performance.md"
SECTION = "audit-chain"
RATIO_TARGET = 0.80
ANCHORED_TARGET = 5000.0  # entries/s
LATENCY_TARGET_MS = 2000.0  # p99, access to on-chain
GAS_TARGET = 3000.0  # per entry in a batch
WRK_THREADS = 2
# Where the dataset loads: no audit trail and no chain, so the load leaves nothing to anchor.
LOAD_ENV = {"YILIAN_AUDIT": "off", "YILIAN_CHAIN": "off"}
OFF_ENV = {"YILIAN_AUTH": "off", "YILIAN_AUDIT": "off", "YILIAN_CHAIN": "off"}
ON_ENV = {"YILIAN_AUTH": "off", "YILIAN_AUDIT": "on", "YILIAN_CHAIN": "dev"}
OFF, ON, PACED = "audit off", "audit on", "audit on, paced"
WrkRun = Callable[[], WrkResult]  # one wrk run, ready to start


@dataclass(frozen=True)
class AuditConfig:
    mode: str
    patients: int
    observations_per_patient: int
    seed: int
    runs: int  # rounds of (off, on)
    seconds: float
    warmup_seconds: float
    connections: int
    paced_rate: float  # requests/s of the paced runs
    paced_runs: int
    paced_connections: int
    drain_timeout_s: float  # how long an audited run's backlog may take to reach the chain
    backlog_seconds: float  # audited reads with the chain off, then drained (0: not measured)
    load_connections: int = 4
    load_time_limit_s: float = 3600


FULL = AuditConfig(mode="full", patients=1000, observations_per_patient=100, seed=20261123,
                   runs=5, seconds=10, warmup_seconds=3, connections=64, paced_rate=5000,
                   paced_runs=3, paced_connections=64, drain_timeout_s=300,
                   backlog_seconds=20)
QUICK = replace(FULL, mode="quick", patients=100, observations_per_patient=100, runs=2,
                seconds=2, warmup_seconds=1, paced_runs=1, drain_timeout_s=120,
                backlog_seconds=3, load_time_limit_s=900)


# -- pure pieces (unit-tested in tests/bench/test_audit_bench.py) -------------------------------

def throughput_ratios(off_runs: Sequence[WrkResult], on_runs: Sequence[WrkResult]
                      ) -> list[float]:
    """Each audited run's requests/s over the unaudited run just before it (same index)."""
    if len(off_runs) != len(on_runs):
        raise ValueError(f"{len(off_runs)} unaudited runs for {len(on_runs)} audited runs")
    ratios = []
    for off, on in zip(off_runs, on_runs, strict=True):
        if off.requests_per_s <= 0:
            raise BenchError("an unaudited run completed no requests; nothing to compare with")
        ratios.append(on.requests_per_s / off.requests_per_s)
    return ratios


def run_order(runs: int) -> list[str]:
    """Rounds of (unaudited, audited): every audited run follows the run it is divided by."""
    return [name for _ in range(runs) for name in (OFF, ON)]


def check_no_failures(name: str, runs: Sequence[WrkResult]) -> None:
    bad = [(n, r.errors) for n, r in enumerate(runs, 1) if r.failed]
    if bad:
        detail = "; ".join(f"run {n}: {errors}" for n, errors in bad)
        raise BenchError(f"{name}: requests failed ({detail}); an audited read that is not "
                         "answered 200 is a broken server or harness, not a slow one: see "
                         "wrk.log and the server logs")


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank `q`-th percentile (0 < q <= 100): the smallest value with at least q %
    of the values at or below it; NaN for no values."""
    if not 0 < q <= 100:
        raise ValueError(f"percentile {q} is not in (0, 100]")
    if not values:
        return float("nan")
    ordered = sorted(values)
    return float(ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1])


@dataclass(frozen=True)
class RunWindow:
    """One timed run against the audited server: its AuditEvents are the rows with
    `seq_before < audit.seq <= seq_after`, its reads ran from `started_ms` to `ended_ms`."""

    name: str
    seq_before: int
    seq_after: int
    started_ms: int
    ended_ms: int
    requests: int

    @property
    def rows(self) -> int:
        return self.seq_after - self.seq_before


# (audit.seq, audit.recorded_ms, chain_batch.mined_ms when its batch is confirmed, else None)
AuditTiming = tuple[int, int, int | None]


def run_rows(rows: Sequence[AuditTiming], window: RunWindow) -> list[AuditTiming]:
    """The rows of the run: those written between the two seq marks, nothing before or after."""
    return [r for r in rows if window.seq_before < r[0] <= window.seq_after]


def anchoring_figures(rows: Sequence[AuditTiming], window: RunWindow) -> dict[str, Any]:
    """(b) and (c) for one run, from the run's rows (see `run_rows`).

    - `anchored_per_s`: confirmed rows / (last mined_ms − first recorded_ms), the run's access
      rate as the chain absorbed it, backlog included;
    - `during_run_per_s`: rows confirmed while the reads ran, per second of the run;
    - `backlog_at_end`, `drain_s`, `drain_per_s`: rows not yet confirmed when the reads stopped,
      how long until the last was, and that drain's rate;
    - `latency_ms`: p50, p90, p99 and max of mined_ms − recorded_ms over the confirmed rows.
    """
    mine = run_rows(rows, window)
    confirmed = [(rec, mined) for _, rec, mined in mine if mined is not None]
    seconds = max(window.ended_ms - window.started_ms, 1) / 1000
    out: dict[str, Any] = {
        "name": window.name, "rows": len(mine), "requests": window.requests,
        "confirmed": len(confirmed), "unconfirmed": len(mine) - len(confirmed),
        "seconds": seconds, "first_recorded_ms": None, "last_mined_ms": None,
        "anchored_per_s": 0.0, "confirmed_during_run": 0, "during_run_per_s": 0.0,
        "backlog_at_end": len(mine), "drain_s": None, "drain_per_s": None,
        "latency_ms": {"p50": None, "p90": None, "p99": None, "max": None},
    }
    if not confirmed:
        return out
    first = min(rec for rec, _ in confirmed)
    last = max(mined for _, mined in confirmed)
    during = sum(1 for _, mined in confirmed if mined <= window.ended_ms)
    backlog = len(mine) - during
    latencies = [float(mined - rec) for rec, mined in confirmed]
    drain_s = max(last - window.ended_ms, 0) / 1000 if backlog else 0.0
    out.update(
        first_recorded_ms=first, last_mined_ms=last,
        anchored_per_s=len(confirmed) / (max(last - first, 1) / 1000),
        confirmed_during_run=during, during_run_per_s=during / seconds,
        backlog_at_end=backlog, drain_s=drain_s,
        drain_per_s=(backlog / drain_s) if backlog and drain_s > 0 else None,
        latency_ms={"p50": percentile(latencies, 50), "p90": percentile(latencies, 90),
                    "p99": percentile(latencies, 99), "max": max(latencies)})
    return out


def batch_figures(batches: Sequence[tuple[int, int | None]]) -> dict[str, Any]:
    """Batch sizes and gas of a run's confirmed batches: (entries, gasUsed or None when the
    receipt was not available). `gas_per_entry` is per batch; `gas_total_per_entry` is
    Σ gasUsed / Σ entries over the batches with a receipt (what an entry costs on average)."""
    sizes = [float(n) for n, _ in batches]
    priced = [(n, g) for n, g in batches if g is not None and n > 0]
    entries = sum(n for n, _ in priced)
    return {"batches": len(batches), "entries": int(sum(sizes)), "sizes": sizes,
            "gas": [[n, g] for n, g in priced],
            "gas_per_entry": [g / n for n, g in priced],
            "gas_total_per_entry": (sum(g for _, g in priced) / entries) if entries else None}


def gas_fit(pairs: Sequence[Sequence[float]]) -> tuple[float, float] | None:
    """Least-squares line gasUsed = fixed + per_entry × entries over (entries, gasUsed) pairs:
    what a transaction costs whatever it carries, and what each entry adds. None without two
    different batch sizes."""
    n = len(pairs)
    if n < 2:
        return None
    mx = sum(p[0] for p in pairs) / n
    my = sum(p[1] for p in pairs) / n
    sxx = sum((p[0] - mx) ** 2 for p in pairs)
    if sxx == 0:
        return None
    slope = sum((p[0] - mx) * (p[1] - my) for p in pairs) / sxx
    return my - slope * mx, slope


def drain_rate(batches: Sequence[tuple[int, int, int]]) -> dict[str, Any]:
    """How fast a backlog reached the chain with no reads competing, from its batches
    (entries, created_ms, mined_ms): entries / (last mined − first created)."""
    if not batches:
        return {"entries": 0, "batches": 0, "seconds": None, "per_s": None}
    entries = sum(b[0] for b in batches)
    seconds = max(max(b[2] for b in batches) - min(b[1] for b in batches), 1) / 1000
    return {"entries": entries, "batches": len(batches), "seconds": seconds,
            "per_s": entries / seconds}


PACING = """
-- Pacing (generated by bench/audit_chain.py): this thread sends {rate:g} requests/s
-- ({total:g}/s over {threads} threads). Each request takes the next slot of the thread's
-- schedule, {interval:.6f} ms apart, on CLOCK_MONOTONIC through LuaJIT's FFI. A thread that falls
-- behind (the server or the machine stalled it) catches up on at most the last {catch_up:g} ms of
-- slots, so a stall neither lowers the average rate much nor releases an unbounded burst.
local ffi = require("ffi")
ffi.cdef[[
typedef struct {{ long tv_sec; long tv_nsec; }} yilian_timespec;
int clock_gettime(int clock_id, yilian_timespec *tp);
]]
local yilian_ts = ffi.new("yilian_timespec")
local slot_interval_ms = {interval:.6f}
local catch_up_ms = {catch_up:g}
local next_slot_ms = nil

local function monotonic_ms()
   ffi.C.clock_gettime(1, yilian_ts)
   return tonumber(yilian_ts.tv_sec) * 1000 + tonumber(yilian_ts.tv_nsec) / 1e6
end

function delay()
   local now = monotonic_ms()
   if next_slot_ms == nil then next_slot_ms = now end
   if next_slot_ms < now - catch_up_ms then next_slot_ms = now - catch_up_ms end
   local wait = next_slot_ms - now
   next_slot_ms = next_slot_ms + slot_interval_ms
   if wait < 0 then return 0 end
   return math.floor(wait)
end
"""


def paced_script(rate_per_s: float, threads: int, base: str | None = None,
                 catch_up_ms: float = 250.0) -> str:
    """The wrk Lua script of `bench/lua/random_paths.lua` (paths, headers, BENCH_JSON) with a
    `delay()` that paces each of `threads` threads to `rate_per_s / threads` requests/s."""
    if rate_per_s <= 0 or threads < 1 or catch_up_ms < 0:
        raise ValueError(f"cannot pace {threads} threads to {rate_per_s} requests/s "
                         f"catching up {catch_up_ms} ms")
    per_thread = rate_per_s / threads
    text = SCRIPT.read_text() if base is None else base
    if "function delay" in text:
        raise ValueError("the base script already has a delay() function")
    return text.rstrip("\n") + "\n" + PACING.format(rate=per_thread, total=rate_per_s,
                                                    threads=threads,
                                                    interval=1000.0 / per_thread,
                                                    catch_up=catch_up_ms)


@contextlib.contextmanager
def environment(values: Mapping[str, str]) -> Iterator[None]:
    """`values` in os.environ for the block (the servers `bench.load` starts inherit it)."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


# -- wrk with a script of our own ------------------------------------------------------------

# -- the audited server's store and chain ------------------------------------------------------

class AuditStore:
    """Read-only view of a running server's SQLite file (WAL: reads never block its writer)."""

    def __init__(self, var_dir: Path) -> None:
        self.path = var_dir / "audit.sqlite3"
        self.var_dir = var_dir
        self.con = sqlite3.connect(self.path.resolve().as_uri() + "?mode=ro", uri=True,
                                   timeout=30, isolation_level=None)
        self.raw_path = raw_path_of(self.path)
        self._raw: sqlite3.Connection | None = None

    def close(self) -> None:
        self.con.close()
        if self._raw is not None:
            self._raw.close()

    def unsealed(self) -> int:
        """Reads' raw accesses not sealed into AuditEvents yet (the raw file)."""
        if self._raw is None:
            if not self.raw_path.exists():
                return 0
            self._raw = sqlite3.connect(self.raw_path.resolve().as_uri() + "?mode=ro", uri=True,
                                        timeout=30, isolation_level=None)
        return int(self._raw.execute("SELECT COUNT(*) FROM audit_raw").fetchone()[0])

    def max_seq(self) -> int:
        row = self.con.execute("SELECT COALESCE(MAX(seq), 0) FROM audit").fetchone()
        return int(row[0])

    def pending(self) -> dict[str, int]:
        """Entries not yet on chain: raw accesses, AuditEvents and other outbox rows waiting for
        a batch, and the entries of batches sent but not confirmed."""
        waiting = self.con.execute("SELECT COUNT(*) FROM audit WHERE batch IS NULL").fetchone()[0]
        raw = self.unsealed()
        other = self.con.execute("SELECT COUNT(*) FROM chain_outbox WHERE batch IS NULL"
                                 ).fetchone()[0]
        sent = self.con.execute("SELECT COALESCE(SUM(entries), 0) FROM chain_batch "
                                "WHERE state = 'sent'").fetchone()[0]
        return {"raw": raw, "audit": int(waiting), "outbox": int(other), "sent": int(sent),
                "total": raw + int(waiting) + int(other) + int(sent)}

    def timings(self, window: RunWindow) -> list[AuditTiming]:
        return [(int(seq), int(rec), None if mined is None else int(mined))
                for seq, rec, mined in self.con.execute(
                    "SELECT a.seq, a.recorded_ms, CASE WHEN b.state = 'confirmed' "
                    "THEN b.mined_ms END FROM audit a LEFT JOIN chain_batch b ON b.id = a.batch "
                    "WHERE a.seq > ? AND a.seq <= ? ORDER BY a.seq",
                    (window.seq_before, window.seq_after))]

    def batches(self, window: RunWindow) -> list[tuple[int, str, int]]:
        """(id, tx_hash, entries) of the confirmed batches holding the run's rows."""
        return [(int(i), str(h), int(n)) for i, h, n in self.con.execute(
            "SELECT id, tx_hash, entries FROM chain_batch WHERE state = 'confirmed' AND id IN "
            "(SELECT DISTINCT batch FROM audit WHERE seq > ? AND seq <= ? AND batch IS NOT "
            "NULL) ORDER BY id", (window.seq_before, window.seq_after))]

    def rpc_url(self) -> str | None:
        try:
            record = orjson.loads((self.var_dir / "chain" / "deployment.json").read_bytes())
        except (OSError, ValueError):
            return None
        url = record.get("rpc_url")
        return str(url) if url else None


def gas_used(rpc_url: str, tx_hashes: Sequence[str], chunk: int = 100) -> dict[str, int]:
    """gasUsed of each transaction from its receipt (JSON-RPC batches)."""
    found: dict[str, int] = {}
    with httpx.Client(timeout=30) as client:
        for start in range(0, len(tx_hashes), chunk):
            part = tx_hashes[start:start + chunk]
            body = [{"jsonrpc": "2.0", "id": n, "method": "eth_getTransactionReceipt",
                     "params": [h]} for n, h in enumerate(part)]
            replies = client.post(rpc_url, json=body).json()
            for reply in replies if isinstance(replies, list) else []:
                receipt = reply.get("result")
                if receipt and receipt.get("gasUsed"):
                    found[part[int(reply["id"])]] = int(receipt["gasUsed"], 16)
    return found


def chain_status(port: int) -> dict[str, Any] | None:
    """`GET /chain/status` of the server, None where it does not serve it."""
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        conn.request("GET", "/chain/status")
        response = conn.getresponse()
        body = response.read()
    except OSError:
        return None
    finally:
        conn.close()
    if response.status != 200:
        return None
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return doc if isinstance(doc, dict) else None


def wait_anchored(store: AuditStore, server: ServerProcess, timeout_s: float,
                  poll_s: float = 0.2) -> dict[str, Any]:
    """Wait until nothing waits for the chain: every AuditEvent and outbox row in a confirmed
    batch and, where the server serves it, `/chain/status` showing an empty outbox."""
    start = time.monotonic()
    while True:
        pending = store.pending()
        status = chain_status(server.port)
        status_empty = status is None or (status.get("outbox_total") == 0
                                          and status.get("batches_sent") == 0)
        if pending["total"] == 0 and status_empty:
            return {"waited_s": time.monotonic() - start, "chain_status": status}
        if time.monotonic() - start > timeout_s:
            raise BenchError(
                f"the audited server did not anchor its backlog within {timeout_s:.0f} s "
                f"(still waiting: {pending}; /chain/status: {status}); last lines of "
                f"{server.log_path}:\n{server.log_tail()}")
        time.sleep(poll_s)


def measure_capacity(var_dir: Path, log_dir: Path, wrk: str, paths_file: Path,
                     cfg: AuditConfig, wrk_log: Path) -> dict[str, Any]:
    """Anchoring alone: audited reads on the store with `YILIAN_CHAIN=off` pile their
    AuditEvents up unanchored; then the audited server with the dev chain starts on the same
    store and anchors that backlog with no reads competing for the CPUs (`drain_rate` of the
    batches made after the restart)."""
    with yilian_server(var_dir, log_dir / "server-backlog.log",
                       extra_env={**ON_ENV, "YILIAN_CHAIN": "off"}) as srv:
        reads = run_wrk(wrk, srv.port, paths_file, seconds=cfg.backlog_seconds,
                        connections=cfg.connections, threads=WRK_THREADS, log_path=wrk_log)
    check_no_failures("audit on, chain off (backlog)", [reads])
    # no server runs now: a plain connection (a read-only open of a WAL file needs its -shm)
    con = sqlite3.connect(var_dir / "audit.sqlite3", timeout=30)
    try:
        last_batch = con.execute("SELECT COALESCE(MAX(id), 0) FROM chain_batch").fetchone()[0]
        backlog = con.execute("SELECT COUNT(*) FROM audit WHERE batch IS NULL").fetchone()[0]
    finally:
        con.close()
    # with no chain the server's housekeeping sealed the reads each second; the last second's
    # are still raw, and the anchoring worker seals them first
    raw = sqlite3.connect(raw_path_of(var_dir / "audit.sqlite3"), timeout=30)
    try:
        backlog += raw.execute("SELECT COUNT(*) FROM audit_raw").fetchone()[0]
    finally:
        raw.close()
    with yilian_server(var_dir, log_dir / "server-drain.log", extra_env=ON_ENV) as srv:
        store = AuditStore(var_dir)
        try:
            waited = wait_anchored(store, srv, cfg.drain_timeout_s)
            made = [(int(n), int(c), int(m)) for n, c, m in store.con.execute(
                "SELECT entries, created_ms, mined_ms FROM chain_batch WHERE id > ? AND "
                "kind = 'access' AND state = 'confirmed'", (last_batch,))]
        finally:
            store.close()
    rate = drain_rate(made)
    print(f"    backlog of {backlog:,} AuditEvents ({reads.requests_per_s:,.0f} audited reads/s "
          f"with the chain off) anchored at {rate['per_s'] or 0:,.0f}/s in "
          f"{rate['batches']} batches", flush=True)
    return {**rate, "backlog": int(backlog), "reads_per_s": reads.requests_per_s,
            "waited_s": waited["waited_s"]}


def is_audit_frame(frame: str) -> bool:
    """A profile frame (`path:function`) of the audit trail's work: building and hashing
    AuditEvents (app/audit/), storing them and raw accesses (the audit trail's file, the store's
    audit and access methods), anchoring (app/chain/)."""
    if frame.startswith(("app/audit/", "app/chain/", "app/storage/sqlite_audit.py")):
        return True
    name = frame.split(":", 1)[-1].lower()
    return frame.startswith("app/storage/") and ("audit" in name or "access" in name)


def profile_audited(spy: str, server: ServerProcess, fn: WrkRun, seconds: float,
                    log_dir: Path) -> dict[str, Any]:
    """py-spy on the audited server during one more saturated run: the share of its samples in
    audit-trail code (by total time) and the busiest functions overall (by own time)."""
    raw = log_dir / "profile-audited.txt"
    result = profiled(spy, server.pid, raw, seconds, fn)
    summary = summarize(raw, top=80)
    return {"seconds": seconds, "samples": summary["samples"],
            "requests_per_s": result.requests_per_s, "failed": result.failed,
            "audit": [f for f in summary["total_project"] if is_audit_frame(f["frame"])][:10],
            "own": summary["own"][:10], "packages": summary["own_by_package"][:10],
            "raw": str(raw.relative_to(REPO))}


def render_profile(prof: dict[str, Any] | None) -> list[str]:
    if not prof:
        return []
    if prof.get("error"):
        return ["", f"Profiling the audited server failed: {prof['error']}"]
    lines = ["", f"Where the audited server's time goes: py-spy sampled it at 100 Hz during one "
             f"more {prof['seconds']:.0f} s saturated run ({prof['samples']:,} samples, "
             f"{prof['requests_per_s']:,.0f} req/s under the profiler; raw stacks: "
             f"`{prof['raw']}`). Audit-trail code by total time (the function and what it "
             "calls), then own time by package:", "",
             "| share of samples | function |", "| ---: | --- |"]
    lines += [f"| {f['percent']:.1f} % | `{f['frame']}` |" for f in prof["audit"]]
    if not prof["audit"]:
        lines.append("| – | (no audit-trail frame was sampled) |")
    lines += ["", "| own time | package |", "| ---: | --- |"]
    lines += [f"| {f['percent']:.1f} % | `{f['frame']}` |" for f in prof["packages"]]
    return lines


# -- the run -----------------------------------------------------------------------------------

@dataclass
class Timed:
    result: WrkResult
    cpu_us_per_request: float


def timed(server: ServerProcess, fn: WrkRun) -> Timed:
    """Run `fn()` (a wrk run) and the server's process group CPU time per request."""
    before = group_cpu_seconds(server.pid)
    result = fn()
    used = group_cpu_seconds(server.pid) - before
    return Timed(result, 1e6 * used / result.requests if result.requests else 0.0)


def audited_run(store: AuditStore, server: ServerProcess, name: str, fn: WrkRun,
                cfg: AuditConfig, wrk_results: list[WrkResult], cpu: list[float],
                anchoring: list[dict[str, Any]], batches: list[dict[str, Any]]) -> None:
    """One timed run against the audited server, then its anchoring figures."""
    seq_before = store.max_seq()
    started = int(time.time() * 1000)
    t = timed(server, fn)
    ended = int(time.time() * 1000)
    # the run's reads are sealed into AuditEvents (seqs) as they are anchored: its window of
    # seqs closes once nothing waits any more (no other request reaches the server meanwhile)
    wait = wait_anchored(store, server, cfg.drain_timeout_s)
    seq_after = store.max_seq()
    window = RunWindow(name, seq_before, seq_after, started, ended, t.result.requests)
    figures = anchoring_figures(store.timings(window), window)
    figures["waited_s"] = wait["waited_s"]
    figures["chain_status"] = wait["chain_status"]
    found = store.batches(window)
    rpc = store.rpc_url()
    gas: dict[str, int] = {}
    if rpc is not None and found:
        with contextlib.suppress(httpx.HTTPError, ValueError):
            gas = gas_used(rpc, [h for _, h, _ in found])
    bf = batch_figures([(n, gas.get(h)) for _, h, n in found])
    lat = figures["latency_ms"]
    r = t.result
    print(f"    {name}: {r.requests_per_s:,.0f} req/s  p99 {r.p99_ms:.1f} ms  failed "
          f"{r.failed}  server+chain CPU {t.cpu_us_per_request:,.0f} µs/request | "
          f"{figures['rows']:,} AuditEvents, anchored {figures['anchored_per_s']:,.0f}/s, "
          f"{figures['during_run_per_s']:,.0f}/s during the run, backlog "
          f"{figures['backlog_at_end']:,} drained in {figures['drain_s'] or 0:.1f} s; access "
          f"to chain p50 {_ms(lat['p50'])} p99 {_ms(lat['p99'])} max {_ms(lat['max'])}; "
          f"{bf['batches']} batches", flush=True)
    wrk_results.append(r)
    cpu.append(t.cpu_us_per_request)
    anchoring.append(figures)
    batches.append(bf)


def _ms(x: float | None) -> str:
    return "–" if x is None else f"{x:,.0f} ms"


def _value(x: float | None, unit: str) -> str:
    """`bench.report._num`, with counts of entries as whole numbers."""
    if unit == "entries" and x is not None and not math.isnan(x):
        return f"{x:,.0f}"
    return _num(x, unit)


def metrics(runs: dict[str, list[WrkResult]], cpu: dict[str, list[float]],
            anchoring: dict[str, list[dict[str, Any]]],
            batches: dict[str, list[dict[str, Any]]],
            capacity: dict[str, Any] | None = None) -> dict[str, list[Metric]]:
    """The table rows: throughput (a), anchoring (b), access-to-chain latency (c), chain cost.
    `capacity`: the backlog drain of `measure_capacity` (`drain_rate`), if measured."""
    off, on, paced = runs[OFF], runs[ON], runs.get(PACED, [])
    sat, pac = anchoring[ON], anchoring.get(PACED, [])

    def lat(figs: list[dict[str, Any]], key: str) -> list[float]:
        return [f["latency_ms"][key] for f in figs if f["latency_ms"][key] is not None]

    def opt(figs: list[dict[str, Any]], key: str) -> list[float]:
        return [float(f[key]) for f in figs if f[key] is not None]

    throughput = [
        Metric("audited / unaudited reads", "%", [100 * r for r in throughput_ratios(off, on)],
               target=100 * RATIO_TARGET, op=">=", target_text=f"≥ {100 * RATIO_TARGET:.0f} %"),
        Metric("unaudited requests/s", "req/s", [r.requests_per_s for r in off]),
        Metric("audited requests/s", "req/s", [r.requests_per_s for r in on]),
        Metric("unaudited p99 response time", "ms", [r.p99_ms for r in off]),
        Metric("audited p99 response time", "ms", [r.p99_ms for r in on]),
    ]
    if all(cpu[OFF]) and all(cpu[ON]) and cpu[OFF]:
        throughput += [
            Metric("server CPU per request, unaudited", "µs", cpu[OFF]),
            Metric("server + anvil CPU per request, audited", "µs", cpu[ON]),
        ]
    throughput.append(Metric(
        "failed requests (non-2xx, socket errors), all runs", "requests",
        [float(sum(r.failed for r in (*off, *on, *paced)))], target=0, op="<=",
        target_text="0"))
    anchored = [
        Metric("anchored entries/s (rows / (last mined − first recorded))", "/s",
               [f["anchored_per_s"] for f in sat], target=ANCHORED_TARGET, op=">=",
               target_text=f"≥ {ANCHORED_TARGET:,.0f} /s"),
        Metric("confirmed while the reads ran, per s", "/s", [f["during_run_per_s"] for f in sat]),
        Metric("AuditEvents per run", "entries", [float(f["rows"]) for f in sat]),
        Metric("backlog when the reads stopped", "entries",
               [float(f["backlog_at_end"]) for f in sat]),
        Metric("backlog drain time", "s", opt(sat, "drain_s")),
        Metric("backlog drain rate", "/s", opt(sat, "drain_per_s")),
    ]
    if pac:
        anchored += [
            Metric("paced: requests/s achieved", "req/s", [r.requests_per_s for r in paced]),
            Metric("paced: anchored entries/s", "/s", [f["anchored_per_s"] for f in pac]),
            Metric("paced: confirmed while the reads ran, per s", "/s",
                   [f["during_run_per_s"] for f in pac]),
        ]
    latency: list[Metric] = []
    for label, figs, judged in (("paced", pac, True), ("saturated", sat, False)):
        if not figs:
            continue
        latency += [
            Metric(f"{label}: p50 access → on chain", "ms", lat(figs, "p50")),
            Metric(f"{label}: p90 access → on chain", "ms", lat(figs, "p90")),
            Metric(f"{label}: p99 access → on chain", "ms", lat(figs, "p99"),
                   target=LATENCY_TARGET_MS if judged else None, op="<=" if judged else None,
                   target_text=f"≤ {LATENCY_TARGET_MS:,.0f} ms" if judged else None),
            Metric(f"{label}: max access → on chain", "ms", lat(figs, "max")),
        ]
    unconfirmed = sum(f["unconfirmed"] for f in (*sat, *pac))
    latency.append(Metric("AuditEvents of the runs never confirmed", "entries",
                          [float(unconfirmed)], target=0, op="<=", target_text="0"))
    every = [b for group in batches.values() for b in group]
    per_run = [b["gas_total_per_entry"] for b in every if b["gas_total_per_entry"] is not None]
    fit = gas_fit([pair for b in every for pair in b["gas"]])
    chain = [
        Metric("gas per entry, Σ gasUsed / Σ entries of each run's batches", "gas", per_run,
               target=GAS_TARGET, op="<=", target_text=f"≤ {GAS_TARGET:,.0f}"),
        Metric("gas per entry, each batch", "gas", [g for b in every for g in b["gas_per_entry"]]),
        *([Metric("gas each entry adds (least-squares fit over the batches)", "gas", [fit[1]]),
           Metric("gas of a batch whatever its size (same fit)", "gas", [fit[0]])]
          if fit is not None else []),
        Metric("entries per batch", "entries", [x for b in every for x in b["sizes"]]),
        Metric("batches per run", "entries", [float(b["batches"]) for b in every]),
    ]
    if capacity is not None and capacity.get("per_s"):
        anchored.append(Metric(
            f"anchoring alone: backlog of {capacity['entries']:,} drained, no reads", "/s",
            [capacity["per_s"]]))
    return {"throughput": throughput, "anchoring": anchored, "latency": latency, "chain": chain}


def render(results: dict[str, Any]) -> str:
    cfg = results["config"]
    m = results["machine"]
    s = results["settings"]
    backlog = results.get("initial_backlog") or {}
    lines = [
        "## Audit trail on chain (issue 5)",
        "",
        f"<!-- Generated by `python -m bench.audit_chain` from `{results['results_file']}`; "
        "do not edit. -->",
        "",
        f"Measured on {results['date']}"
        + (f" with `{results['command']}`" if results.get("command") else "")
        + f" ({cfg['mode']} mode settings, data set of {cfg['patients']:,} patients × "
        f"{cfg['observations_per_patient']:,} Observations, loaded with `YILIAN_AUDIT=off` so "
        "the load leaves nothing to anchor). Two Yilian servers on two copies of the same "
        "store, both `YILIAN_AUTH=off`, default settings otherwise "
        f"({m['server_stack']}): **unaudited** with `YILIAN_AUDIT=off` and `YILIAN_CHAIN=off` "
        "(no AuditEvent at all), **audited** with auditing on and `YILIAN_CHAIN=dev` (anvil "
        "started by `yilian serve` under the copy's `var/chain/`, instant mining; anchoring "
        f"batches of up to {s['anchor_batch_size']:,} entries, a round every "
        f"{s['anchor_interval_ms']} ms, {s['chain_confirmations']} confirmation(s)). Every read "
        "on the audited server stores its raw access durably before it is answered; the "
        "anchoring worker (`yilian anchor`) seals raw accesses into AuditEvents as it fills "
        "each batch, sends the entries to AuditLog and writes the proof back. wrk "
        f"{cfg['connections']} connections, `GET /fhir/Observation/<id>` and `GET "
        "/fhir/Patient/<id>` half each, ids drawn per request from random existing ones; "
        f"{cfg['runs']} rounds of {cfg['seconds']:.0f} s runs (unaudited, then audited) after a "
        f"{cfg['warmup_seconds']:.0f} s warm-up. After each audited run the bench waits until "
        "every AuditEvent of the run is in a confirmed batch, then reads the run's rows from the "
        "audited server's SQLite file. Machine: "
        f"{m['cpus']} × {m['cpu_model']} (nproc {m['nproc']}), load average {m['load_average']}; "
        f"Python {m['python']}, SQLite {m['sqlite']}, {m['wrk']}, anvil {results['anvil']}; "
        f"code {m['git']}.",
        "",
        "- **(a)** each audited run's requests/s over the unaudited run just before it.",
        "- **(b)** per audited run: AuditEvents of the run / (last `chain_batch.mined_ms` − first "
        "`audit.recorded_ms`), i.e. how fast the chain absorbed the run's accesses including the "
        "backlog left when the reads stopped; also how many were confirmed while the reads ran "
        "and how fast the backlog drained. `mined_ms` is when the anchoring worker saw the batch "
        "confirmed and wrote the proof back, not the block's timestamp: the figures include the "
        "worker's polling.",
        ("- **(c)** per AuditEvent: `mined_ms − recorded_ms`, judged on "
         f"{cfg['paced_runs']} paced run(s) of {cfg['seconds']:.0f} s at "
         f"{cfg['paced_rate']:,.0f} requests/s (the target load; a wrk Lua `delay()` on a "
         f"monotonic clock, {cfg['paced_connections']} connections), and reported for the "
         "saturated runs above, where a backlog builds by construction whenever reads outpace "
         "anchoring." if cfg["paced_runs"] else
         "- **(c)** per AuditEvent: `mined_ms − recorded_ms`, reported for the saturated runs "
         "only: this run made no paced run at the target load, so (c) is not judged."),
        "- gas per entry: `gasUsed` of the batches' receipts over their entries, per run (the "
        "target) and per batch; a least-squares line over the batches splits it into what each "
        "entry adds and what a transaction costs whatever it carries.",
    ]
    cap = results.get("capacity")
    if cap and cap.get("per_s"):
        lines.append(
            f"- **anchoring alone**: {cfg['backlog_seconds']:.0f} s of audited reads on the same "
            f"store with `YILIAN_CHAIN=off` left {cap['backlog']:,} AuditEvents unanchored "
            f"({cap['reads_per_s']:,.0f} reads/s); the audited server with the dev chain then "
            f"anchored them in {cap['batches']} batches, with no reads competing: entries / "
            "(last mined − first batch written). What the anchoring worker and anvil sustain on "
            "this machine when the reads do not share the CPUs with them.")
    if backlog.get("total"):
        lines += ["", f"The cached store came with {backlog['total']:,} entries not on chain "
                  f"({backlog}); they were anchored before anything was timed "
                  f"({results.get('initial_drain_s', 0):.1f} s)."]
    for title, key in (("Throughput (a)", "throughput"), ("Anchoring (b)", "anchoring"),
                       ("Access to on-chain (c)", "latency"), ("Chain cost", "chain")):
        lines += ["", f"{title}:", "", "| metric | median | min – max | runs | target | result |",
                  "| --- | ---: | ---: | ---: | --- | --- |"]
        for x in results["metrics"][key]:
            unit = x["unit"]
            span = (f"{_value(x['min'], unit)} – {_value(x['max'], unit)}" if x["runs"]
                    else "–")
            verdict = {None: "–", True: "**pass**", False: "**FAIL**"}[x["passed"]]
            lines.append(f"| {x['name']} | {_value(x['median'], unit)} | {span} | "
                         f"{len(x['runs'])} | {x['target_text'] or '–'} | {verdict} |")
    lines += [
        "",
        "`runs` counts audited runs, or batches for the chain cost rows. The latency rows give "
        "the median over runs of each run's percentile (over all its AuditEvents).",
        "",
        "Reproduce: `make bench-audit` (1,000 patients × 100 Observations, cached in "
        "`bench/.cache/` after the first load) or `.venv/bin/python -m bench.audit_chain "
        "--quick` (100 × 100, 2 s runs, a couple of minutes; writes only `bench/results/` "
        "unless `--docs`). wrk and the pinned anvil (`npm ci`) are needed.",
    ]
    lines += render_profile(results.get("profile"))
    if results.get("problems"):
        lines += ["", "Problems:", "", *[f"- {p}" for p in results["problems"]]]
    return "\n".join(lines) + "\n"


def write_section(docs: Path, section: str) -> None:
    """Set the `audit-chain` section of docs/performance.md, keeping every other section."""
    sections.write_section(docs, SECTION, section)


def anvil_version() -> str:
    from app.chain.devchain import anvil_binary

    try:
        out = subprocess.run([str(anvil_binary()), "--version"], capture_output=True, text=True,
                             timeout=30)
    except (OSError, subprocess.SubprocessError, RuntimeError) as exc:
        return f"unknown ({type(exc).__name__})"
    text = out.stdout.strip().splitlines()
    return text[0].removeprefix("anvil Version: ").strip() if text else "unknown"



def parse_args(argv: list[str] | None) -> tuple[AuditConfig, argparse.Namespace]:
    parser = argparse.ArgumentParser(prog="python -m bench.audit_chain", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common(parser, kind="audit", docs=DOCS,
               quick="100 × 100 data set, 2 rounds of 2 s runs: checks the harness",
               runs="rounds of (unaudited, audited) runs (≥ 2)")
    parser.add_argument("--paced-rate", type=float, help="requests/s of the paced runs")
    parser.add_argument("--paced-runs", type=int, help="paced runs (0: none)")
    parser.add_argument("--backlog-seconds", type=float,
                        help="seconds of audited reads with the chain off whose backlog is then "
                             "drained (anchoring alone; 0: skip)")
    parser.add_argument("--profile", action="store_true",
                        help="also profile the audited server with py-spy during one more "
                             "saturated run")
    args = parser.parse_args(argv)
    cfg = QUICK if args.quick else FULL
    overrides = size_overrides(
        parser, args, min_runs=2, why="a median and a range need two rounds",
        extra=(("paced_rate", "--paced-rate", args.paced_rate),))
    if args.backlog_seconds is not None:
        if args.backlog_seconds < 0:
            parser.error("--backlog-seconds must be 0 or more")
        overrides["backlog_seconds"] = args.backlog_seconds
    if args.paced_runs is not None:
        if args.paced_runs < 0:
            parser.error("--paced-runs must be 0 or more")
        overrides["paced_runs"] = args.paced_runs
    return replace(cfg, **overrides), args


def main(argv: list[str] | None = None) -> int:
    cfg, args = parse_args(argv)
    if args.render is not None:
        return rerender(args.render, args.out)
    stop_on_signals()
    from app.config import Settings
    from bench.run import load_average, machine_info

    wrk = ensure_wrk()
    spy = ensure_py_spy() if args.profile else None
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    log_dir = RESULTS / f"audit-{stamp}"
    log_dir.mkdir(parents=True, exist_ok=True)
    wrk_log = log_dir / "wrk.log"
    work = CACHE / f"audit-work-{stamp}"
    work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    load_at_start = load_average()
    rng = random.Random(cfg.seed)
    problems: list[str] = []
    settings = Settings()
    print(f"Audit trail on chain ({cfg.mode}): {cfg.patients:,} patients × "
          f"{cfg.observations_per_patient:,} Observations; logs in {log_dir}", flush=True)
    store: AuditStore | None = None
    try:
        spec = DatasetSpec(cfg.patients, cfg.observations_per_patient, cfg.seed)
        with environment(LOAD_ENV):
            dataset = load_dataset(spec, CACHE, log_dir, reload=False,
                                   connections=cfg.load_connections,
                                   time_limit_s=cfg.load_time_limit_s)
        manifest = dataset.manifest
        print(f"  copying the store ({dir_bytes(dataset.var_dir) / 2**30:.2f} GiB) twice",
              flush=True)
        stores = {name: working_copy(dataset, work / name) for name in ("off", "on")}
        paths_file = write_paths(work / "reads.paths", system_paths(manifest, rng))
        paced_file = work / "paced.lua"
        paced_file.write_text(paced_script(cfg.paced_rate, WRK_THREADS))
        runs: dict[str, list[WrkResult]] = {OFF: [], ON: [], PACED: []}
        cpu: dict[str, list[float]] = {OFF: [], ON: [], PACED: []}
        anchoring: dict[str, list[dict[str, Any]]] = {ON: [], PACED: []}
        batches: dict[str, list[dict[str, Any]]] = {ON: [], PACED: []}
        with yilian_server(stores["off"], log_dir / "server-off.log",
                           extra_env=OFF_ENV) as off_srv, \
                yilian_server(stores["on"], log_dir / "server-on.log",
                              extra_env=ON_ENV) as on_srv:
            store = AuditStore(stores["on"])
            off_store = AuditStore(stores["off"])
            off_seq = off_store.max_seq()
            initial = store.pending()
            print(f"== anchoring what the cached store brought ({initial['total']:,} entries)",
                  flush=True)
            initial_drain = wait_anchored(store, on_srv, cfg.drain_timeout_s)
            reads = paths_file.read_text().split()
            seq = store.max_seq()
            check_paths(off_srv.port, reads, None, "unaudited")
            check_paths(on_srv.port, reads, None, "audited")
            if store.max_seq() == seq and store.unsealed() == 0:
                raise BenchError("the audited server stored no AuditEvent for the reads checked "
                                 "before the timed runs: auditing is not on")

            def plain(port: int, seconds: float) -> WrkRun:
                return lambda: run_wrk(wrk, port, paths_file, seconds=seconds,
                                       connections=cfg.connections, threads=WRK_THREADS,
                                       log_path=wrk_log)

            print(f"== warm-up {cfg.warmup_seconds:.0f} s each", flush=True)
            plain(off_srv.port, cfg.warmup_seconds)()
            plain(on_srv.port, cfg.warmup_seconds)()
            wait_anchored(store, on_srv, cfg.drain_timeout_s)
            print(f"== interleaved runs: {cfg.runs} rounds of (unaudited, audited), "
                  f"{cfg.seconds:.0f} s each, {cfg.connections} connections", flush=True)
            for name in run_order(cfg.runs):
                if name == OFF:
                    t = timed(off_srv, plain(off_srv.port, cfg.seconds))
                    r = t.result
                    print(f"    {name}: {r.requests_per_s:,.0f} req/s  p99 {r.p99_ms:.1f} ms  "
                          f"failed {r.failed}  server CPU {t.cpu_us_per_request:,.0f} "
                          "µs/request", flush=True)
                    runs[OFF].append(r)
                    cpu[OFF].append(t.cpu_us_per_request)
                else:
                    audited_run(store, on_srv, name, plain(on_srv.port, cfg.seconds), cfg,
                                runs[ON], cpu[ON], anchoring[ON], batches[ON])
            if cfg.paced_runs:
                print(f"== paced runs: {cfg.paced_runs} × {cfg.seconds:.0f} s at "
                      f"{cfg.paced_rate:,.0f} requests/s, {cfg.paced_connections} connections",
                      flush=True)
            for _ in range(cfg.paced_runs):
                audited_run(store, on_srv, PACED, lambda: run_wrk(
                    wrk, on_srv.port, paths_file, seconds=cfg.seconds,
                    connections=cfg.paced_connections, log_path=wrk_log, script=paced_file),
                    cfg, runs[PACED], cpu[PACED], anchoring[PACED], batches[PACED])
            profile: dict[str, Any] | None = None
            if spy is not None:
                print(f"== profile of the audited server ({cfg.seconds:.0f} s)", flush=True)
                try:
                    profile = profile_audited(spy, on_srv, plain(on_srv.port, cfg.seconds),
                                              cfg.seconds, log_dir)
                except (RuntimeError, OSError) as exc:
                    profile = {"error": f"{type(exc).__name__}: {exc}"[:1000]}
                wait_anchored(store, on_srv, cfg.drain_timeout_s)
            off_rows = off_store.max_seq() - off_seq + off_store.unsealed()
            off_store.close()
            final_status = chain_status(on_srv.port)
            store.close()
            store = None
        for name, rs in runs.items():
            check_no_failures(name, rs)
        capacity: dict[str, Any] | None = None
        if cfg.backlog_seconds > 0:
            print(f"== anchoring alone: {cfg.backlog_seconds:.0f} s of audited reads with the "
                  "chain off, then the dev chain anchors the backlog", flush=True)
            capacity = measure_capacity(stores["on"], log_dir, wrk, paths_file, cfg, wrk_log)
        if off_rows:
            problems.append(f"the unaudited server (YILIAN_AUDIT=off) stored {off_rows:,} "
                            "AuditEvents: the baseline of (a) was audited")
        for figs in (*anchoring[ON], *anchoring[PACED]):
            if figs["rows"] < figs["requests"]:
                problems.append(f"{figs['name']}: {figs['rows']:,} AuditEvents for "
                                f"{figs['requests']:,} answered reads: not every read was "
                                "audited")
        if cfg.paced_runs:
            achieved = [r.requests_per_s for r in runs[PACED]]
            if min(achieved) < 0.9 * cfg.paced_rate:
                problems.append(f"a paced run reached only {min(achieved):,.0f} of "
                                f"{cfg.paced_rate:,.0f} requests/s: (c) was measured below "
                                "the target load")
        table = metrics(runs, cpu, anchoring, batches, capacity)
        machine = machine_info(wrk, settings.workers, load_at_start)
        results: dict[str, Any] = {
            "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "results_file": f"bench/results/audit-{stamp}.json",
            "command": " ".join(["python -m bench.audit_chain",
                                 *(sys.argv[1:] if argv is None else argv)]).strip(),
            "elapsed_s": time.monotonic() - started,
            "config": asdict(cfg), "machine": machine, "dataset": dataset.key,
            "anvil": anvil_version(),
            "settings": {"workers": settings.workers,
                         "anchor_batch_size": settings.anchor_batch_size,
                         "anchor_interval_ms": settings.anchor_interval_ms,
                         "chain_confirmations": settings.chain_confirmations},
            "initial_backlog": initial, "initial_drain_s": initial_drain["waited_s"],
            "runs": {name: [r.as_dict() for r in rs] for name, rs in runs.items()},
            "server_cpu_us_per_request": cpu,
            "anchoring": anchoring,
            "batches": batches,
            "chain_status": final_status,
            "capacity": capacity,
            "profile": profile,
            "metrics": {k: [x.as_dict() for x in v] for k, v in table.items()},
            "problems": problems,
        }
        out = RESULTS / f"audit-{stamp}.json"
        out.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
        section = render(results)
        (RESULTS / f"audit-{stamp}.md").write_text(section)
        print("\n" + section, flush=True)
        wants_docs = (cfg.mode == "full" or args.docs) and not args.no_docs
        if wants_docs:
            write_section(DOCS, section)
            print(f"wrote the {SECTION} section of {DOCS}", flush=True)
        print(f"Results: {out} ({(time.monotonic() - started) / 60:.1f} min)", flush=True)
        return 1 if problems else 0
    except BenchError as exc:
        print(f"BENCH FAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        if store is not None:
            store.close()
        if not args.keep_work:
            shutil.rmtree(work, ignore_errors=True)


def rerender(results_json: Path, out: Path) -> int:
    """Write the section of a saved run again (after a change to `render`), never measuring."""
    results = orjson.loads(results_json.read_bytes())
    write_section(out, render(results))
    print(f"wrote the {SECTION} section of {out} from {results_json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
