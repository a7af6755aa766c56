"""The audit-on-chain benchmark's pieces (bench/audit_chain.py): the ratio of each audited run to
the unaudited run before it, nearest-rank percentiles, which AuditEvents belong to a run and what
they say about anchoring and latency, gas per entry, the paced wrk Lua script (run by a real wrk
against a local HTTP server), the queries on a real SQLite store with the audit schema, and the
docs/performance.md section. No timing of Yilian is asserted here; `make bench-audit` measures."""

from __future__ import annotations

import http.server
import os
import shutil
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any, ClassVar

import orjson
import pytest

from app.chain.devchain import DevChain, rpc
from app.storage.sqlite_schema import AUDIT_SCHEMA, RAW_SCHEMA
from bench.audit_chain import (
    OFF,
    ON,
    PACED,
    SECTION,
    AuditStore,
    AuditTiming,
    BenchError,
    RunWindow,
    anchoring_figures,
    batch_figures,
    check_no_failures,
    drain_rate,
    environment,
    gas_fit,
    gas_used,
    is_audit_frame,
    main,
    metrics,
    paced_script,
    percentile,
    render,
    render_profile,
    run_order,
    run_rows,
    throughput_ratios,
    write_section,
)
from bench.sections import replace_section
from bench.wrk import SCRIPT, run_wrk, write_paths
from tests.bench.wrk_results import run


def test_each_audited_run_is_divided_by_the_unaudited_run_before_it() -> None:
    assert throughput_ratios([run(10_000), run(8_000), run(12_000)],
                             [run(9_000), run(6_000), run(9_600)]) == pytest.approx(
        [0.9, 0.75, 0.8])
    order = run_order(3)
    assert order == [OFF, ON] * 3
    for n, name in enumerate(order):
        if name == ON:
            assert order[n - 1] == OFF
    with pytest.raises(ValueError, match="2 unaudited runs for 1"):
        throughput_ratios([run(1), run(1)], [run(1)])
    with pytest.raises(BenchError, match="no requests"):
        throughput_ratios([run(0)], [run(5)])


def test_a_failed_request_fails_the_bench_loudly() -> None:
    check_no_failures(ON, [run(100), run(100)])
    with pytest.raises(BenchError, match="run 2") as exc:
        check_no_failures(ON, [run(100), run(100, status=3)])
    assert "'status': 3" in str(exc.value)
    with pytest.raises(BenchError):
        check_no_failures(OFF, [run(100, timeout=1)])


def test_percentiles_are_nearest_rank() -> None:
    hundred = [float(x) for x in range(100, 0, -1)]  # unsorted on purpose
    assert percentile(hundred, 50) == 50
    assert percentile(hundred, 99) == 99
    assert percentile(hundred, 100) == 100
    assert percentile([4.0, 1.0, 3.0, 2.0], 50) == 2  # never interpolated
    assert percentile([7.0], 99) == 7
    # p99 of 10 values is the largest: one slow access in ten is not hidden
    assert percentile([100.0] * 9 + [2500.0], 99) == 2500
    assert percentile([], 99) != percentile([], 99)  # NaN
    for q in (0, -1, 101):
        with pytest.raises(ValueError):
            percentile([1.0], q)


def window(**kw: Any) -> RunWindow:
    base: dict[str, Any] = {"name": ON, "seq_before": 100, "seq_after": 110,
                            "started_ms": 1_000_000, "ended_ms": 1_001_000, "requests": 9}
    return RunWindow(**{**base, **kw})


def test_a_run_counts_only_the_audit_rows_written_between_its_seq_marks() -> None:
    rows: list[AuditTiming] = [(seq, 999_000 + seq, 999_500 + seq)
                               for seq in range(95, 100)]  # the run before
    rows += [(seq, 1_000_000 + (seq - 101) * 100, None) for seq in range(101, 111)]
    rows += [(seq, 1_002_000, None) for seq in range(111, 114)]  # after (not the run's)
    mine = run_rows(rows, window())
    assert [r[0] for r in mine] == list(range(101, 111))
    assert window().rows == 10
    assert run_rows(rows, window(seq_before=110)) == []


def test_anchoring_figures_of_a_run_with_a_backlog_at_its_end() -> None:
    w = window()
    # ten accesses 100 ms apart from the run's start; batches seen confirmed at +500 ms (three
    # rows), +950 ms (three) and after the reads stopped, +1,400 ms (four)
    mined = [1_000_500] * 3 + [1_000_950] * 3 + [1_001_400] * 4
    rows = [(101 + i, 1_000_000 + 100 * i, mined[i]) for i in range(10)]
    rows.append((99, 990_000, 995_000))  # an earlier run's row is ignored
    f = anchoring_figures(rows, w)
    assert f["rows"] == 10 and f["confirmed"] == 10 and f["unconfirmed"] == 0
    assert f["first_recorded_ms"] == 1_000_000 and f["last_mined_ms"] == 1_001_400
    assert f["anchored_per_s"] == pytest.approx(10 / 1.4)
    assert f["confirmed_during_run"] == 6 and f["during_run_per_s"] == pytest.approx(6.0)
    assert f["backlog_at_end"] == 4
    assert f["drain_s"] == pytest.approx(0.4) and f["drain_per_s"] == pytest.approx(10.0)
    latencies = sorted(m - (1_000_000 + 100 * i) for i, m in enumerate(mined))
    assert f["latency_ms"]["p50"] == latencies[4]
    assert f["latency_ms"]["p99"] == f["latency_ms"]["max"] == max(latencies) == 1_400 - 600
    assert f["requests"] == 9


def test_unconfirmed_rows_are_counted_not_timed() -> None:
    rows = [(101, 1_000_000, 1_000_300), (102, 1_000_100, None)]
    f = anchoring_figures(rows, window())
    assert (f["confirmed"], f["unconfirmed"]) == (1, 1)
    assert f["latency_ms"]["max"] == 300
    assert f["drain_s"] == 0.0 and f["drain_per_s"] is None  # the confirmed one came in time
    nothing = anchoring_figures([(101, 1_000_000, None)], window())
    assert nothing["anchored_per_s"] == 0.0 and nothing["latency_ms"]["p99"] is None
    assert nothing["backlog_at_end"] == 1


def test_gas_per_entry_and_the_cost_of_a_transaction() -> None:
    # gasUsed = 30,000 + 2,600 per entry; one receipt missing
    batches: list[tuple[int, int | None]] = [(1000, 2_630_000), (100, 290_000), (10, 56_000),
                                             (500, None)]
    f = batch_figures(batches)
    assert f["batches"] == 4 and f["entries"] == 1610 and f["sizes"] == [1000, 100, 10, 500]
    assert f["gas_per_entry"] == pytest.approx([2630, 2900, 5600])
    assert f["gas_total_per_entry"] == pytest.approx((2_630_000 + 290_000 + 56_000) / 1110)
    fixed, per_entry = gas_fit(f["gas"]) or (0.0, 0.0)
    assert fixed == pytest.approx(30_000) and per_entry == pytest.approx(2_600)
    assert gas_fit([[100, 290_000]]) is None and gas_fit([[5, 1], [5, 2]]) is None
    assert batch_figures([])["gas_total_per_entry"] is None


def test_gas_comes_from_the_receipts_on_the_chain() -> None:
    with DevChain() as chain:
        accounts = rpc(chain.url, "eth_accounts")
        assert isinstance(accounts, list)
        hashes = [str(rpc(chain.url, "eth_sendTransaction", [
            {"from": accounts[0], "to": accounts[1], "value": hex(10**15 * (n + 1))}]))
            for n in range(3)]
        unknown = "0x" + "ab" * 32
        gas = gas_used(chain.url, [*hashes, unknown], chunk=2)
    assert gas == dict.fromkeys(hashes, 21_000)  # a plain transfer; no receipt for `unknown`


def test_the_drain_rate_runs_from_the_first_batch_written_to_the_last_mined() -> None:
    r = drain_rate([(1000, 10_000, 10_400), (1000, 10_200, 10_700), (500, 10_500, 11_000)])
    assert r["entries"] == 2500 and r["batches"] == 3
    assert r["seconds"] == pytest.approx(1.0) and r["per_s"] == pytest.approx(2500)
    assert drain_rate([])["per_s"] is None


def test_the_paced_script_schedules_each_thread_at_its_share_of_the_rate() -> None:
    text = paced_script(5000, 2)
    assert text.startswith(SCRIPT.read_text().rstrip("\n"))  # paths, headers and BENCH_JSON
    assert "function delay()" in text
    assert "local slot_interval_ms = 0.400000" in text  # 2,500 requests/s per thread
    assert "sends 2500 requests/s" in text and "(5000/s over 2 threads)" in text
    assert "local catch_up_ms = 250\n" in text  # a stalled thread catches up 250 ms at most
    assert "local catch_up_ms = 0\n" in paced_script(300, 1, catch_up_ms=0)
    assert "local slot_interval_ms = 3.333333" in paced_script(300, 1)
    for rate, threads, catch_up in ((0, 2, 250), (-5, 2, 250), (100, 0, 250), (100, 1, -1)):
        with pytest.raises(ValueError):
            paced_script(rate, threads, catch_up_ms=catch_up)
    with pytest.raises(ValueError, match="already has a delay"):
        paced_script(100, 1, base="function delay() return 0 end")


class _Counter(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out at once, not 40 ms apart
    seen: ClassVar[list[str]] = []
    lock = threading.Lock()

    def do_GET(self) -> None:
        with self.lock:
            self.seen.append(self.path)
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def counter() -> Iterator[tuple[int, type[_Counter]]]:
    class Handler(_Counter):
        seen: ClassVar[list[str]] = []

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], Handler
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")
def test_the_paced_script_holds_wrk_to_the_rate(tmp_path: Path,
                                                counter: tuple[int, type[_Counter]]) -> None:
    port, handler = counter
    paths = write_paths(tmp_path / "paths", ["/fhir/Patient/pat-1", "/fhir/Observation/obs-1"])
    script = tmp_path / "paced.lua"
    script.write_text(paced_script(200, 2))
    result = run_wrk(shutil.which("wrk") or "wrk", port, paths, seconds=2, connections=16,
                     threads=2, script=script)
    assert result.failed == 0
    # 16 connections would send thousands of requests/s to a server answering in under a
    # millisecond: the cap is the pacing (the first request of each connection is not
    # delayed). The floor is loose because wrk's duration also counts its threads' start-up,
    # which on a busy machine takes a noticeable share of a short run.
    assert result.requests_per_s <= 1.1 * 200 + 16 / result.seconds
    assert result.requests_per_s >= 0.6 * 200
    assert set(handler.seen) <= {"/fhir/Patient/pat-1", "/fhir/Observation/obs-1"}


def make_store(var_dir: Path) -> sqlite3.Connection:
    """A store with the server's audit schema, in WAL mode, with two confirmed batches (one of
    an earlier run), a sent one and a waiting row; held open like a running server."""
    var_dir.mkdir(parents=True)
    con = sqlite3.connect(var_dir / "audit.sqlite3", isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.executescript(AUDIT_SCHEMA)
    batch = ("INSERT INTO chain_batch(id, kind, epoch, chain_id, contract, nonce, raw_tx, "
             "tx_hash, state, entries, block, first_log, created_ms, mined_ms) VALUES "
             "(?, 'access', 1, 31337, '0xaCBB9EE4d059CD7A35eb7967836B24De3853eDfd', ?, x'00', ?, "
             "?, ?, ?, 0, ?, ?)")
    con.execute(batch, (1, 0, "0x" + "11" * 32, "confirmed", 2, 5, 1_000, 1_200))
    con.execute(batch, (2, 1, "0x" + "22" * 32, "confirmed", 2, 6, 2_000, 2_300))
    con.execute(batch, (3, 2, "0x" + "33" * 32, "sent", 1, None, 2_400, None))
    audit = ("INSERT INTO audit(seq, id, recorded_ms, patient, action, outcome, agent, client, "
             "body, entry, batch, pos) VALUES (?, ?, ?, 'pat-110101', 'R', '0', NULL, NULL, "
             "x'7b7d', zeroblob(65), ?, ?)")
    for seq, rec, b, pos in ((1, 900, 1, 0), (2, 950, 1, 1),  # the earlier run
                             (3, 1_900, 2, 0), (4, 1_950, 2, 1), (5, 2_100, 3, 0),
                             (6, 2_200, None, None)):
        con.execute(audit, (seq, f"ae-{seq}", rec, b, pos))
    return con


def test_the_store_queries_select_the_runs_rows_and_batches(tmp_path: Path) -> None:
    writer = make_store(tmp_path / "on")
    try:
        store = AuditStore(tmp_path / "on")
        try:
            assert store.max_seq() == 6
            assert store.pending() == {"raw": 0, "audit": 1, "outbox": 0, "sent": 1, "total": 2}
            with closing(sqlite3.connect(tmp_path / "on" / "audit.raw.sqlite3")) as raw:
                raw.executescript(RAW_SCHEMA)
                raw.execute("INSERT INTO audit_raw(id, recorded_ms, patient, data) "
                            "VALUES ('ae-7', 2300, 'pat-110101', x'5b5d')")
                raw.commit()
            assert store.pending() == {"raw": 1, "audit": 1, "outbox": 0, "sent": 1, "total": 3}
            w = window(seq_before=2, seq_after=6, started_ms=1_800, ended_ms=2_250)
            assert store.timings(w) == [(3, 1_900, 2_300), (4, 1_950, 2_300), (5, 2_100, None),
                                        (6, 2_200, None)]
            assert store.batches(w) == [(2, "0x" + "22" * 32, 2)]  # confirmed ones only
            f = anchoring_figures(store.timings(w), w)
            assert (f["confirmed"], f["unconfirmed"]) == (2, 2)
            assert f["latency_ms"]["max"] == 400
            assert store.rpc_url() is None
            (tmp_path / "on" / "chain").mkdir()
            (tmp_path / "on" / "chain" / "deployment.json").write_bytes(
                orjson.dumps({"rpc_url": "http://127.0.0.1:42011"}))
            assert store.rpc_url() == "http://127.0.0.1:42011"
            with pytest.raises(sqlite3.OperationalError):  # read-only: never writes the store
                store.con.execute("DELETE FROM audit")
        finally:
            store.close()
    finally:
        writer.close()


def test_the_data_set_loads_with_auditing_and_the_chain_off_and_the_environment_returns(
) -> None:
    os.environ.pop("YILIAN_AUDIT", None)
    os.environ["YILIAN_CHAIN"] = "dev"
    try:
        with environment({"YILIAN_AUDIT": "off", "YILIAN_CHAIN": "off"}):
            assert os.environ["YILIAN_AUDIT"] == "off" and os.environ["YILIAN_CHAIN"] == "off"
        assert "YILIAN_AUDIT" not in os.environ and os.environ["YILIAN_CHAIN"] == "dev"
    finally:
        os.environ.pop("YILIAN_CHAIN", None)


def figures(p99: float, rows: int = 50_000, unconfirmed: int = 0) -> dict[str, Any]:
    return {"name": ON, "rows": rows, "requests": rows - 10, "confirmed": rows - unconfirmed,
            "unconfirmed": unconfirmed, "seconds": 10.0, "anchored_per_s": rows / 10.5,
            "confirmed_during_run": rows - 2000, "during_run_per_s": (rows - 2000) / 10,
            "backlog_at_end": 2000, "drain_s": 0.5, "drain_per_s": 4000.0,
            "latency_ms": {"p50": 300.0, "p90": 500.0, "p99": p99, "max": p99 + 100}}


def results(ratios: list[float], paced_p99: float = 900.0) -> dict[str, Any]:
    off = [run(10_000)] * len(ratios)
    on = [run(10_000 * r) for r in ratios]
    anchoring = {ON: [figures(1500.0) for _ in ratios], PACED: [figures(paced_p99)]}
    batch = batch_figures([(1000, 2_630_000), (500, 1_330_000)])
    batches = {ON: [batch for _ in ratios], PACED: [batch]}
    capacity = {**drain_rate([(1000, 0, 150), (1000, 100, 300)]), "backlog": 2000,
                "reads_per_s": 3000.0, "waited_s": 0.5}
    table = metrics({OFF: off, ON: on, PACED: [run(5_000)]},
                    {OFF: [100.0] * len(ratios), ON: [120.0] * len(ratios), PACED: [130.0]},
                    anchoring, batches, capacity)
    return {
        "date": "2026-11-23 18:00 UTC", "results_file": "bench/results/audit-x.json",
        "command": "python -m bench.audit_chain",
        "config": {"mode": "full", "patients": 1000, "observations_per_patient": 100,
                   "connections": 64, "runs": len(ratios), "seconds": 10.0,
                   "warmup_seconds": 3.0, "paced_rate": 5000.0, "paced_runs": 1,
                   "paced_connections": 64, "backlog_seconds": 20.0},
        "machine": {"server_stack": "uvicorn, 1 worker(s)", "cpus": 2, "cpu_model": "EPYC",
                    "nproc": 2, "load_average": "0.1 / 0.1 / 0.1", "python": "3.11.7",
                    "sqlite": "3.40.1", "wrk": "wrk 4.1.0", "git": "abc1234"},
        "anvil": "1.7.1", "dataset": "hospital-p1000-o100",
        "settings": {"workers": 1, "anchor_batch_size": 1000, "anchor_interval_ms": 200,
                     "chain_confirmations": 1},
        "initial_backlog": {"audit": 0, "outbox": 0, "sent": 0, "total": 0},
        "capacity": capacity,
        "metrics": {k: [x.as_dict() for x in v] for k, v in table.items()},
        "problems": [],
    }


def test_the_section_judges_each_target_and_says_how_to_reproduce() -> None:
    text = render(results([0.9, 0.85, 0.82]))
    assert text.startswith("## Audit trail on chain (issue 5)")
    assert "| audited / unaudited reads | 85 % | 82 % – 90 % | 3 | ≥ 80 % | **pass** |" in text
    assert ("| anchored entries/s (rows / (last mined − first recorded)) | 4,762 /s | "
            "4,762 /s – 4,762 /s | 3 | ≥ 5,000 /s | **FAIL** |") in text
    assert "| paced: p99 access → on chain | 900 ms |" in text and "≤ 2,000 ms | **pass** |" \
        in text
    assert "| saturated: p99 access → on chain | 1,500 ms | 1,500 ms – 1,500 ms | 3 | – | – |" \
        in text  # reported, not judged: saturation builds a backlog by construction
    assert "| gas per entry, Σ gasUsed / Σ entries of each run's batches | 2,640 gas |" in text
    assert "| gas each entry adds (least-squares fit over the batches) | 2,600 gas |" in text
    assert "| anchoring alone: backlog of 2,000 drained, no reads | 6,667 /s |" in text
    assert "| entries per batch | 750 | 500 – 1,000 | 8 | – | – |" in text
    assert "make bench-audit" in text and "python -m bench.audit_chain --quick" in text
    assert "`YILIAN_AUDIT=off`" in text and "`YILIAN_CHAIN=dev`" in text
    assert "loaded with `YILIAN_AUDIT=off`" in text
    assert "| paced: p99 access → on chain | 2,500 ms | 2,500 ms – 2,500 ms | 1 | ≤ 2,000 ms | " \
        "**FAIL** |" in render(results([0.9, 0.9], paced_p99=2500.0))


def test_the_section_goes_into_docs_keeping_the_other_benchmarks(tmp_path: Path) -> None:
    docs = tmp_path / "performance.md"
    docs.write_text(replace_section("# Performance\n\nread: 80 %\n", "auth-overhead",
                                    "## Authorization overhead\n\n95 %"))
    write_section(docs, render(results([0.9, 0.91, 0.92])))
    once = docs.read_text()
    assert "read: 80 %" in once and "## Authorization overhead" in once
    assert once.count(f"<!-- section:{SECTION} begin -->") == 1 and "| 91 % |" in once
    saved = tmp_path / "audit-x.json"
    saved.write_bytes(orjson.dumps(results([0.81, 0.82, 0.83])))
    assert main(["--render", str(saved), "--out", str(docs)]) == 0
    twice = docs.read_text()
    assert "| 82 % |" in twice and "| 91 % |" not in twice
    assert twice.count(f"<!-- section:{SECTION} begin -->") == 1
    assert "## Authorization overhead" in twice


def test_the_profile_names_the_audit_trails_work() -> None:
    assert is_audit_frame("app/audit/auditor.py:ChainAuditor.record")
    assert is_audit_frame("app/audit/hashing.py:canonical_json")
    assert is_audit_frame("app/chain/anchorer.py:Anchorer._send_new")
    assert is_audit_frame("app/storage/sqlite.py:SqliteStore.append_audit")
    assert is_audit_frame("app/storage/sqlite.py:_insert_audit")
    assert is_audit_frame("app/storage/sqlite.py:SqliteStore.append_access")
    assert is_audit_frame("app/storage/sqlite_audit.py:_try_commit")
    assert not is_audit_frame("app/storage/sqlite.py:SqliteStore.read")
    assert not is_audit_frame("app/fhir/rest.py:read_interaction")
    prof = {"seconds": 10.0, "samples": 1000, "requests_per_s": 2400.0, "failed": 0,
            "audit": [{"frame": "app/audit/auditor.py:ChainAuditor.record", "samples": 310,
                       "percent": 31.0}],
            "own": [], "packages": [{"frame": "app/audit", "samples": 200, "percent": 20.0}],
            "raw": "bench/results/audit-x/profile-audited.txt"}
    text = "\n".join(render_profile(prof))
    assert "| 31.0 % | `app/audit/auditor.py:ChainAuditor.record` |" in text
    assert "| 20.0 % | `app/audit` |" in text and "1,000 samples" in text
    assert "failed: RuntimeError" in "\n".join(render_profile({"error": "RuntimeError: x"}))
    assert render_profile(None) == []
