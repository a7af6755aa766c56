"""The Yilian benchmark: `python -m bench.run` (quick) or `python -m bench.run --full`.

One run measures, each as the median of several runs with its min–max range:

1. the ceiling: a bare FastAPI endpoint served by uvicorn as the FHIR server is (wrk);
2. loading the data set through 1,000-entry transaction Bundles (cached afterwards);
3. read by id of random existing Observations and Patients, as a share of the ceiling (its
   runs take turns with those of 1, so machine noise hits both alike);
4. latency of `Observation?patient&code` and `Observation?patient&date=ge…&_sort=-date`;
5. the wall time of one 1,000-entry transaction Bundle with fresh ids;
6. sustained ingest into a fresh store (resources/s);
7. a py-spy profile of the measurement furthest from its target;

and writes `bench/results/<timestamp>.json` and `docs/performance.md` (`--full`; the quick mode
writes `bench/results/<timestamp>.md` unless given `--docs`). All load goes to 127.0.0.1; every
server started here is stopped on the way out, also on error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import http.client
import importlib.metadata
import importlib.util
import os
import platform
import random
import shutil
import sqlite3
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson

from app.config import Settings
from app.samples.hospital import HospitalGenerator, transaction_bundle
from bench.load import (
    BUNDLE_SIZE,
    Dataset,
    DatasetSpec,
    IngestError,
    bundles,
    dir_bytes,
    load_dataset,
    post_bundles,
    stale_caches,
    working_copy,
)
from bench.profile import PY_SPY_VERSION, ensure_py_spy, profiled, summarize
from bench.report import render
from bench.sections import carry_sections
from bench.server import (
    HOST,
    REPO,
    ServerProcess,
    baseline_server,
    stop_on_signals,
    yilian_server,
)
from bench.stats import Measurement, Metric
from bench.wrk import WrkResult, ensure_wrk, run_wrk, write_paths, wrk_version

BENCH = REPO / "bench"
CACHE = BENCH / ".cache"
RESULTS = BENCH / "results"
DOCS = REPO / "docs" / "performance.md"

READ_SHARE_TARGET = 0.5
SEARCH_P99_TARGET_MS = 50.0
TRANSACTION_TARGET_S = 2.0
INGEST_TARGET = 1000.0
PATH_MIX_SIZE = 4000


@dataclass(frozen=True)
class Config:
    mode: str
    patients: int
    observations_per_patient: int
    seed: int
    runs: int
    seconds: float
    warmup_seconds: float
    throughput_connections: int
    latency_connections: int
    load_connections: int
    transaction_runs: int
    ingest_runs: int
    ingest_patients: int
    ingest_observations: int
    profile_seconds: float
    load_time_limit_s: float


QUICK = Config(mode="quick", patients=100, observations_per_patient=100, seed=20261123, runs=3,
               seconds=5, warmup_seconds=2, throughput_connections=64, latency_connections=8,
               load_connections=4, transaction_runs=3, ingest_runs=3, ingest_patients=50,
               ingest_observations=100, profile_seconds=10, load_time_limit_s=1800)
FULL = replace(QUICK, mode="full", patients=1000, observations_per_patient=1000, runs=5,
               seconds=15, warmup_seconds=5, transaction_runs=5, ingest_runs=3,
               ingest_patients=50, ingest_observations=1000, profile_seconds=30,
               load_time_limit_s=4 * 3600)


# -- machine ----------------------------------------------------------------------------------

def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _git() -> str:
    def git(*args: str) -> str:
        out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                             timeout=30)
        return out.stdout.strip() if out.returncode == 0 else ""
    head = git("rev-parse", "--short", "HEAD") or "no commit yet"
    dirty = " + uncommitted changes" if git("status", "--porcelain") else ""
    return head + dirty


def load_average() -> str:
    return " / ".join(f"{x:.1f}" for x in os.getloadavg())


def machine_info(wrk: str, workers: int, load_at_start: str) -> dict[str, Any]:
    meminfo = Path("/proc/meminfo").read_text() if Path("/proc/meminfo").exists() else ""
    mem_kib = next((int(line.split()[1]) for line in meminfo.splitlines()
                    if line.startswith("MemTotal:")), 0)
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines()
                  if line.startswith("model name")), platform.processor() or "unknown")
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    http_impl = "httptools" if importlib.util.find_spec("httptools") else "h11"
    return {
        "nproc": len(os.sched_getaffinity(0)), "cpus": os.cpu_count(), "cpu_model": model,
        "memory_gib": mem_kib / 2**20, "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(), "sqlite": sqlite3.sqlite_version,
        "server_stack": f"uvicorn {_version('uvicorn')} (loop {loop}, http {http_impl}), "
                        f"FastAPI {_version('fastapi')}, {workers} worker(s)",
        "workers": workers, "wrk": wrk_version(wrk), "py_spy": PY_SPY_VERSION, "git": _git(),
        "load_average": f"{load_at_start} at start, {load_average()} at the end",
    }


# -- request mixes ----------------------------------------------------------------------------

def read_paths(manifest: dict[str, Any], rng: random.Random) -> list[str]:
    """Half random sampled Observations, half random Patients, all existing."""
    obs = manifest["observation_ids"]
    pats = [p["id"] for p in manifest["patients"]]
    half = PATH_MIX_SIZE // 2
    paths = [f"/fhir/Observation/{i}" for i in rng.sample(obs, min(half, len(obs)))]
    paths += [f"/fhir/Patient/{rng.choice(pats)}" for _ in range(half)]
    rng.shuffle(paths)
    return paths


def code_paths(manifest: dict[str, Any], rng: random.Random) -> list[str]:
    pats = [p for p in manifest["patients"] if p["codes"]]
    out = []
    for _ in range(PATH_MIX_SIZE):
        p = rng.choice(pats)
        code = quote(rng.choice(p["codes"]), safe=":/")
        out.append(f"/fhir/Observation?patient={p['id']}&code={code}")
    return out


def date_paths(manifest: dict[str, Any], rng: random.Random) -> list[str]:
    pats = [p for p in manifest["patients"] if p["first"]]
    out = []
    for _ in range(PATH_MIX_SIZE):
        p = rng.choice(pats)
        first = datetime.fromisoformat(p["first"])
        last = datetime.fromisoformat(p["last"])
        day = first + (last - first) * rng.random()
        out.append(f"/fhir/Observation?patient={p['id']}&date=ge{day:%Y-%m-%d}&_sort=-date")
    return out


# -- measurements -----------------------------------------------------------------------------

class Bench:
    def __init__(self, cfg: Config, wrk: str, stamp: str, log_dir: Path, work: Path) -> None:
        self.cfg = cfg
        self.wrk = wrk
        self.stamp = stamp
        self.log_dir = log_dir
        self.work = work
        self.problems: list[str] = []
        self.rng = random.Random(cfg.seed)

    def wrk_runs(self, port: int, paths: list[str], name: str, connections: int
                 ) -> list[WrkResult]:
        return self.interleaved_runs([(port, paths, name)], connections)[0]

    def interleaved_runs(self, targets: list[tuple[int, list[str], str]], connections: int
                         ) -> list[list[WrkResult]]:
        """`runs` wrk runs against each (port, paths, name), taking turns run by run, so that
        a noisy neighbour slows all of them alike rather than one of them."""
        log = self.log_dir / "wrk.log"
        files = [write_paths(self.work / f"{name}.paths", paths) for _, paths, name in targets]
        names = " and ".join(name for _, _, name in targets)
        print(f"  {names}: warm-up {self.cfg.warmup_seconds:.0f} s, then {self.cfg.runs} x "
              f"{self.cfg.seconds:.0f} s with {connections} connections", flush=True)
        for (port, _, _), paths_file in zip(targets, files, strict=True):
            run_wrk(self.wrk, port, paths_file, seconds=self.cfg.warmup_seconds,
                    connections=connections, log_path=log)
        results: list[list[WrkResult]] = [[] for _ in targets]
        for _ in range(self.cfg.runs):
            for n, ((port, _, name), paths_file) in enumerate(zip(targets, files, strict=True)):
                r = run_wrk(self.wrk, port, paths_file, seconds=self.cfg.seconds,
                            connections=connections, log_path=log)
                print(f"    {name}: {r.requests_per_s:,.0f} req/s  p50 {r.p50_ms:.1f} ms  "
                      f"p99 {r.p99_ms:.1f} ms  failed {r.failed}", flush=True)
                results[n].append(r)
        return results

    @staticmethod
    def failed_metric(runs: list[WrkResult]) -> Metric:
        return Metric("failed requests (non-2xx, socket errors)", "requests",
                      [float(r.failed) for r in runs], target=0, op="<=", target_text="0")

    def baseline_and_reads(self, port: int, manifest: dict[str, Any]) -> list[Measurement]:
        """1. the ceiling and 3. read by id, their runs interleaved (both servers are up; the
        one not under load is idle), so each read run has a ceiling taken moments before."""
        conns = self.cfg.throughput_connections
        base = Measurement("baseline", "Baseline ceiling: bare FastAPI endpoint",
                           "`GET /fixed` on `bench/baseline_app.py` (fixed bytes, no I/O) served "
                           "by uvicorn with the FHIR server's options (workers, loop, http, no "
                           f"access log); wrk with {conns} connections.")
        read = Measurement("read", "Read by id",
                           "`GET /fhir/Observation/<id>` and `GET /fhir/Patient/<id>`, half "
                           f"each, ids drawn per request from {PATH_MIX_SIZE:,} random existing "
                           f"ones; wrk with {conns} connections, runs taking turns with the "
                           "baseline's.")
        with baseline_server(self.log_dir / "server-baseline.log") as server:
            base_runs, read_runs = self.interleaved_runs(
                [(server.port, ["/fixed"], "baseline"),
                 (port, read_paths(manifest, self.rng), "read")], conns)
        base.metrics += [Metric("requests/s", "req/s", [r.requests_per_s for r in base_runs]),
                         Metric("p99 latency", "ms", [r.p99_ms for r in base_runs]),
                         self.failed_metric(base_runs)]
        read.metrics += [
            Metric("requests/s", "req/s", [r.requests_per_s for r in read_runs]),
            Metric("share of the baseline ceiling", "%",
                   [100 * r.requests_per_s / b.requests_per_s
                    for r, b in zip(read_runs, base_runs, strict=True) if b.requests_per_s],
                   target=100 * READ_SHARE_TARGET, op=">=",
                   target_text=f"≥ {100 * READ_SHARE_TARGET:.0f} %"),
            Metric("p50 latency", "ms", [r.p50_ms for r in read_runs]),
            Metric("p99 latency", "ms", [r.p99_ms for r in read_runs]),
            self.failed_metric(read_runs)]
        read.notes.append("Share = each read run's requests/s over the baseline run just "
                          "before it.")
        return [base, read]

    def search(self, port: int, ident: str, title: str, query: str, paths: list[str]
               ) -> Measurement:
        n_obs = self.cfg.patients * self.cfg.observations_per_patient
        m = Measurement(ident, title,
                        f"`{query}` with random patients"
                        + (" and codes each patient has" if "code" in query else
                           " and a start date inside each patient's results")
                        + f" ({PATH_MIX_SIZE:,} distinct queries), default page size; wrk "
                        f"--latency with {self.cfg.latency_connections} connections (closed loop:"
                        f" each connection sends its next request when the last is answered).")
        runs = self.wrk_runs(port, paths, ident, self.cfg.latency_connections)
        m.metrics += [
            Metric("p50 latency", "ms", [r.p50_ms for r in runs]),
            Metric("p90 latency", "ms", [r.p90_ms for r in runs]),
            Metric("p99 latency", "ms", [r.p99_ms for r in runs], target=SEARCH_P99_TARGET_MS,
                   op="<=", target_text=f"≤ {SEARCH_P99_TARGET_MS:.0f} ms at 1,000,000 "
                                        f"Observations"),
            Metric("requests/s", "req/s", [r.requests_per_s for r in runs]),
            self.failed_metric(runs)]
        if n_obs < 1_000_000:
            m.notes.append(f"This run has {n_obs:,} Observations; the target is set for "
                           "1,000,000 (`make bench`).")
        return m

    def transaction(self, port: int) -> Measurement:
        m = Measurement("transaction", "One 1,000-entry transaction Bundle",
                        "Wall time of one `POST /fhir` of a transaction Bundle of 1,000 POST "
                        "entries (a patient with encounters, diagnoses, lab results and reports; "
                        "`urn:uuid:` fullUrls, so every run creates fresh ids), sent alone on an "
                        "idle server after one unmeasured warm-up Bundle.")
        conn = http.client.HTTPConnection(HOST, port, timeout=600)
        times = []
        try:
            for rep in range(self.cfg.transaction_runs + 1):
                body = fresh_transaction(self.cfg.seed + 1 + rep)
                start = time.perf_counter()
                conn.request("POST", "/fhir", body, {"Content-Type": "application/fhir+json",
                                                     "Prefer": "return=minimal"})
                response = conn.getresponse()
                answer = response.read()
                elapsed = time.perf_counter() - start
                check_transaction_response(response.status, answer, BUNDLE_SIZE)
                if rep > 0:
                    times.append(elapsed)
                    print(f"    transaction {rep}: {elapsed:.2f} s", flush=True)
        finally:
            conn.close()
        m.metrics.append(Metric("wall time", "s", times, target=TRANSACTION_TARGET_S, op="<=",
                                target_text=f"≤ {TRANSACTION_TARGET_S:.0f} s"))
        return m

    def ingest(self, dataset: Dataset) -> Measurement:
        spec = DatasetSpec(self.cfg.ingest_patients, self.cfg.ingest_observations,
                           self.cfg.seed)
        m = Measurement("ingest", "Sustained ingest",
                        f"The population of {spec.patients:,} patients × "
                        f"{spec.observations_per_patient:,} Observations (with their Encounters, "
                        "Conditions and DiagnosticReports) sent as transaction Bundles of "
                        f"{BUNDLE_SIZE:,} PUT entries on {self.cfg.load_connections} concurrent "
                        "connections into a fresh, empty store; resources stored per second of "
                        "wall time.")
        rates = []
        for run in range(self.cfg.ingest_runs):
            var_dir = self.work / f"ingest-{run}"
            shutil.rmtree(var_dir, ignore_errors=True)
            with yilian_server(var_dir, self.log_dir / "server-ingest.log") as server:
                stats = post_bundles(server.port, bundles(spec.resources()),
                                     connections=self.cfg.load_connections,
                                     time_limit_s=self.cfg.load_time_limit_s, label="ingest")
            shutil.rmtree(var_dir, ignore_errors=True)
            print(f"    ingest {run + 1}: {stats.resources:,} resources, "
                  f"{stats.resources_per_s:,.0f}/s", flush=True)
            rates.append(stats.resources_per_s)
        target = f"≥ {INGEST_TARGET:,.0f} resources/s"
        m.metrics.append(Metric("fresh store", "resources/s", rates, target=INGEST_TARGET,
                                op=">=", target_text=target))
        load = dataset.manifest["load"]
        m.metrics.append(Metric("whole data set load (one run, growing store)", "resources/s",
                                [load["resources_per_s"]], target=INGEST_TARGET, op=">=",
                                target_text=target))
        when = ("in this run" if dataset.loaded_now
                else f"when cached ({dataset.manifest['created']})")
        m.notes.append(f"The whole data set ({load['resources']:,} resources, "
                       f"{load['bundles']:,} Bundles) was loaded {when} in "
                       f"{load['seconds']:,.0f} s on "
                       f"{load['connections']} connections; median Bundle "
                       f"{load['bundle_seconds_median']:.2f} s, slowest "
                       f"{load['bundle_seconds_max']:.2f} s.")
        return m


def fresh_transaction(seed: int, size: int = BUNDLE_SIZE) -> bytes:
    """A POST transaction of `size` clinical resources (no Organization/Practitioners, which
    the loaded store already has and the entries reference)."""
    picked: list[dict[str, Any]] = []
    for resource in HospitalGenerator(seed).population(patients=3, observations_per_patient=1000):
        if resource["resourceType"] in ("Organization", "Practitioner"):
            continue
        picked.append(resource)
        if len(picked) == size:
            break
    return orjson.dumps(transaction_bundle(picked, method="POST"))


def check_transaction_response(status: int, answer: bytes, entries: int) -> None:
    if status != 200:
        raise IngestError(f"transaction answered HTTP {status}: "
                          f"{answer[:2000].decode(errors='replace')}")
    bundle = orjson.loads(answer)
    got = bundle.get("entry", [])
    if len(got) != entries:
        raise IngestError(f"transaction-response has {len(got)} entries for {entries} sent")
    bad = [e.get("response", {}).get("status") for e in got
           if not str(e.get("response", {}).get("status", "")).startswith("201")]
    if bad:
        raise IngestError(f"{len(bad)} transaction entries did not answer 201: {bad[:5]}")


# -- profile ----------------------------------------------------------------------------------

def choose_profile_target(measurements: list[Measurement]) -> tuple[Measurement, str] | None:
    candidates = [m for m in measurements if m.id != "baseline" and m.metrics]
    if not candidates:
        return None
    worst = max(candidates, key=lambda m: m.shortfall())
    metric = max(worst.metrics, key=lambda x: x.shortfall())
    how = "over" if metric.op == "<=" else "under"
    factor = metric.shortfall()
    why = (f"the measurement furthest from its target: {metric.name} median "
           f"{metric.median:,.2f} {metric.unit} is {factor:.2f}× the target ({how} the limit "
           f"{metric.target_text})" if factor > 1 else
           f"the measurement closest to its target (all pass; {metric.name} median "
           f"{metric.median:,.2f} {metric.unit} against {metric.target_text})")
    return worst, why


def profile(bench: Bench, spy: str, target: Measurement, why: str, dataset: Dataset,
            paths: dict[str, list[str]]) -> dict[str, Any]:
    cfg = bench.cfg
    raw = bench.log_dir / f"profile-{target.id}.txt"
    seconds = cfg.profile_seconds
    info: dict[str, Any] = {"measurement": target.id, "title": target.title, "why": why,
                            "py_spy": PY_SPY_VERSION, "rate": 100, "seconds": seconds,
                            "raw": str(raw.relative_to(REPO))}
    print(f"Profiling {target.title} with py-spy for {seconds:.0f} s", flush=True)
    if target.id == "ingest":
        var_dir = bench.work / "profile-ingest"
        shutil.rmtree(var_dir, ignore_errors=True)
    else:
        var_dir = bench.work / "store"
    with yilian_server(var_dir, bench.log_dir / "server-profile.log") as server:
        workload = profiled(spy, server.pid, raw, seconds, lambda: run_profile_workload(
            bench, server, target.id, paths, seconds))
    info["workload"] = workload
    info["summary"] = summarize(raw)
    return info


def run_profile_workload(bench: Bench, server: ServerProcess, ident: str,
                         paths: dict[str, list[str]], seconds: float) -> str:
    cfg = bench.cfg
    if ident in paths:
        conns = cfg.throughput_connections if ident == "read" else cfg.latency_connections
        run_wrk(bench.wrk, server.port, write_paths(bench.work / f"profile-{ident}.paths",
                                                    paths[ident]),
                seconds=seconds, connections=conns, log_path=bench.log_dir / "wrk.log")
        return f"wrk sent the same request mix with {conns} connections"
    if ident == "transaction":
        conn = http.client.HTTPConnection(HOST, server.port, timeout=600)
        deadline = time.monotonic() + seconds
        sent = 0
        try:
            while time.monotonic() < deadline and sent < 1000:
                conn.request("POST", "/fhir", fresh_transaction(cfg.seed + 100 + sent),
                             {"Content-Type": "application/fhir+json",
                              "Prefer": "return=minimal"})
                response = conn.getresponse()
                check_transaction_response(response.status, response.read(), BUNDLE_SIZE)
                sent += 1
        finally:
            conn.close()
        return f"{sent} fresh 1,000-entry transaction Bundles were posted one after another"
    spec = DatasetSpec(cfg.ingest_patients, cfg.ingest_observations, cfg.seed)
    stats = post_bundles(server.port, bundles(spec.resources()),
                         connections=cfg.load_connections, time_limit_s=cfg.load_time_limit_s,
                         label="profile ingest")
    return (f"{stats.resources:,} resources were loaded into a fresh store on "
            f"{cfg.load_connections} connections")


# -- the run ----------------------------------------------------------------------------------


def attempt(bench: Bench, title: str, fn: Callable[[], Measurement]) -> Measurement | None:
    """Run one measurement; a failure is recorded as a problem and the run goes on."""
    print(f"== {title}", flush=True)
    try:
        return fn()
    except (RuntimeError, OSError, ValueError, KeyError, http.client.HTTPException) as exc:
        traceback.print_exc()
        bench.problems.append(f"{title}: {type(exc).__name__}: {exc}"[:3000])
        return None


def parse_args(argv: list[str] | None) -> tuple[Config, argparse.Namespace]:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true",
                        help="1,000 patients × 1,000 Observations, longer runs (make bench)")
    parser.add_argument("--reload", action="store_true",
                        help="load the data set again instead of reusing bench/.cache/")
    parser.add_argument("--patients", type=int, help="override the data set's patient count")
    parser.add_argument("--observations", type=int, help="override Observations per patient")
    parser.add_argument("--runs", type=int, help="runs per measurement")
    parser.add_argument("--seconds", type=float, help="seconds per wrk run")
    parser.add_argument("--no-profile", action="store_true", help="skip the py-spy profile")
    parser.add_argument("--docs", action="store_true",
                        help="also write docs/performance.md in quick mode")
    parser.add_argument("--keep-work", action="store_true",
                        help="keep the run's working stores under bench/.cache/work-*")
    args = parser.parse_args(argv)
    cfg = FULL if args.full else QUICK
    overrides = {k: v for k, v in (("patients", args.patients),
                                   ("observations_per_patient", args.observations),
                                   ("runs", args.runs), ("seconds", args.seconds))
                 if v is not None}
    if any(v <= 0 for v in overrides.values()):
        parser.error("--patients, --observations, --runs and --seconds must be positive")
    return replace(cfg, **overrides), args


def main(argv: list[str] | None = None) -> int:
    cfg, args = parse_args(argv)
    stop_on_signals()
    wrk = ensure_wrk()
    spy = None if args.no_profile else ensure_py_spy()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    log_dir = RESULTS / stamp
    log_dir.mkdir(parents=True, exist_ok=True)
    work = CACHE / f"work-{stamp}"
    work.mkdir(parents=True, exist_ok=True)
    workers = Settings().workers
    started = time.monotonic()
    load_at_start = load_average()
    print(f"Yilian benchmark ({cfg.mode}): {cfg.patients:,} patients × "
          f"{cfg.observations_per_patient:,} Observations; logs in {log_dir}", flush=True)
    bench = Bench(cfg, wrk, stamp, log_dir, work)
    measurements: list[Measurement] = []
    profile_info: dict[str, Any] | None = None
    try:
        spec = DatasetSpec(cfg.patients, cfg.observations_per_patient, cfg.seed)
        print("== data set", flush=True)
        dataset = load_dataset(spec, CACHE, log_dir, reload=args.reload,
                               connections=cfg.load_connections,
                               time_limit_s=cfg.load_time_limit_s)
        for path, size in stale_caches(CACHE, dataset.key):
            print(f"  note: stale cached store {path} ({size / 2**30:.2f} GiB) can be deleted",
                  flush=True)
        manifest = dataset.manifest
        paths = {"read": read_paths(manifest, bench.rng),
                 "search-code": code_paths(manifest, bench.rng),
                 "search-date": date_paths(manifest, bench.rng)}
        print(f"  copying the store ({dir_bytes(dataset.var_dir) / 2**30:.2f} GiB) to "
              f"{work / 'store'}", flush=True)
        store = working_copy(dataset, work / "store")
        with yilian_server(store, log_dir / "server.log") as server:
            port = server.port
            print("== baseline ceiling and read by id", flush=True)
            try:
                measurements += bench.baseline_and_reads(port, manifest)
            except (RuntimeError, OSError, ValueError, KeyError,
                    http.client.HTTPException) as exc:
                traceback.print_exc()
                bench.problems.append(f"baseline and read by id: {type(exc).__name__}: {exc}")
            for title, fn in (
                ("search by patient and code", lambda: bench.search(
                    port, "search-code", "Search: Observation by patient and code",
                    "Observation?patient=…&code=http://loinc.org|…", paths["search-code"])),
                ("search by patient and date", lambda: bench.search(
                    port, "search-date", "Search: Observation by patient and date, newest first",
                    "Observation?patient=…&date=ge…&_sort=-date", paths["search-date"])),
                ("transaction", lambda: bench.transaction(port)),
            ):
                result = attempt(bench, title, fn)
                if result:
                    measurements.append(result)
        ingest = attempt(bench, "sustained ingest", lambda: bench.ingest(dataset))
        if ingest:
            measurements.append(ingest)

        chosen = choose_profile_target(measurements) if spy else None
        if spy and chosen:
            target, why = chosen
            try:
                profile_info = profile(bench, spy, target, why, dataset, paths)
            except (RuntimeError, OSError, http.client.HTTPException) as exc:
                traceback.print_exc()
                profile_info = {"measurement": target.id, "title": target.title,
                                "error": f"{type(exc).__name__}: {exc}"[:2000]}

        results = {
            "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "results_file": f"bench/results/{stamp}.json",
            "elapsed_s": time.monotonic() - started,
            "config": asdict(cfg),
            "machine": machine_info(wrk, workers, load_at_start),
            "dataset": {"key": dataset.key, "patients": cfg.patients,
                        "observations_per_patient": cfg.observations_per_patient,
                        "seed": cfg.seed, "counts": manifest["counts"],
                        "resources": sum(manifest["counts"].values()),
                        "store_bytes": manifest["store_bytes"], "loaded_now": dataset.loaded_now,
                        "created": manifest["created"]},
            "measurements": [m.as_dict() for m in measurements],
            "profile": profile_info,
            "problems": bench.problems,
        }
        out = RESULTS / f"{stamp}.json"
        out.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
        doc = render(results)
        targets = [DOCS] if (cfg.mode == "full" or args.docs) else []
        for path in [RESULTS / f"{stamp}.md", *targets]:
            path.parent.mkdir(parents=True, exist_ok=True)
            # keep the sections other benchmarks wrote (importer throughput)
            path.write_text(carry_sections(path.read_text(), doc) if path.exists() else doc)
        print_summary(measurements, bench.problems)
        reports = ", ".join(str(p) for p in [RESULTS / f"{stamp}.md", *targets])
        print(f"Results: {out}; report: {reports} "
              f"({(time.monotonic() - started) / 60:.1f} min)", flush=True)
        return 1 if bench.problems else 0
    finally:
        if not args.keep_work:
            shutil.rmtree(work, ignore_errors=True)


def print_summary(measurements: list[Measurement], problems: list[str]) -> None:
    print("\n== summary", flush=True)
    for m in measurements:
        for metric in m.metrics:
            verdict = {None: "", True: "pass", False: "FAIL"}[metric.passed]
            target = f"(target {metric.target_text})" if metric.target_text else ""
            span = (f"[{min(metric.runs):,.2f}–{max(metric.runs):,.2f}]" if metric.runs
                    else "[no runs]")
            print(f"  {m.title} / {metric.name}: median {metric.median:,.2f} {metric.unit} "
                  f"{span} {target} {verdict}")
    for p in problems:
        print(f"  PROBLEM: {p}", file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
