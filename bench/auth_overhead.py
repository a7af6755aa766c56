"""Authorization overhead: `python -m bench.auth_overhead` (`make bench-auth`), `--quick` to check
the harness in a minute.

Issue 4's target: a read by id with a verified SMART access token reaches at least 85 % of the
throughput of the same read with authorization switched off, measured in one run.

One run:

1. takes the benchmark data set of `bench.run` (loaded once, cached in `bench/.cache/`) and makes
   two private copies of its store;
2. starts two Yilian servers on them: one with `YILIAN_AUTH=off` (open), one with
   `YILIAN_AUTH=smart` (authorized), each with the default settings;
3. mints a `system/*.rs` token and a `patient/*.rs` token (patient in context) for the smart
   server with `yilian tokens mint` on its var dir, and checks the smart server really enforces:
   no token and a forged token must get 401, the real tokens 200 — wrk itself sends the forged
   token for a second, so the Lua script is known to put the header on the wire;
4. measures the cold verify cost of one token (signature and claims, no cache) and of a cache hit
   with `BearerVerifier` on the smart server's keys;
5. runs wrk on the same paths against each server in turn, round after round: open without a
   token, open with the same `Authorization` header (ignored there), authorized — for the
   system variant (random existing Observations and Patients, half each, as in `bench.run`)
   and the patient variant (that patient's own Observations and Patient resource). Each
   authorized run is divided by the open run just before it, which sent the very same request
   (the target), and by the open run without a header (everything a token costs, also the
   load generator's work of sending it, which on a small machine shares the server's CPUs);
6. with `--profile` (default in the full mode), samples the smart server with py-spy during one
   more authorized system run and reports the share of its time spent in authorization code.

Any non-2xx answer in a timed run fails the run loudly: a 401 or 403 means the bench is wrong,
not that authorization is slow. Results go to `bench/results/auth-<timestamp>.{json,md}`; the
full mode (or `--docs`) also writes the `auth-overhead` section of docs/performance.md, but only
when the smart server was seen enforcing tokens, so the document never holds numbers of a server
that did not check them.
"""

from __future__ import annotations

import argparse
import http.client
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson

from bench import sections
from bench.args import add_common, size_overrides
from bench.load import DatasetSpec, dir_bytes, load_dataset, working_copy
from bench.profile import ensure_py_spy, profiled, summarize
from bench.report import _num
from bench.server import HOST, REPO, ServerProcess, stop_on_signals, yilian_server
from bench.stats import Metric
from bench.wrk import WrkResult, ensure_wrk, run_wrk, write_headers, write_paths

CACHE = REPO / "bench" / ".cache"
RESULTS = REPO / "bench" / "results"
DOCS = REPO / "docs" / "performance.md"
SECTION = "auth-overhead"
OVERHEAD_TARGET = 0.85
PATH_MIX_SIZE = 4000
CLIENT_ID = "bench-auth"
SYSTEM_SCOPE = "system/*.rs"
PATIENT_SCOPE = "patient/*.rs"


class BenchError(RuntimeError):
    """The harness, not the server, is wrong (refused requests, a server that does not enforce)."""


@dataclass(frozen=True)
class AuthConfig:
    mode: str
    patients: int
    observations_per_patient: int
    seed: int
    runs: int  # rounds of (open, open with the header, authorized) per variant
    seconds: float
    warmup_seconds: float
    connections: int
    verify_batches: int
    verify_per_batch: int
    profile_seconds: float
    load_connections: int = 4
    load_time_limit_s: float = 4 * 3600


FULL = AuthConfig(mode="full", patients=1000, observations_per_patient=1000, seed=20261123,
                  runs=5, seconds=15, warmup_seconds=5, connections=64, verify_batches=5,
                  verify_per_batch=200, profile_seconds=15)
QUICK = replace(FULL, mode="quick", patients=100, observations_per_patient=100, runs=3,
                seconds=2, warmup_seconds=1, verify_batches=3, verify_per_batch=50,
                profile_seconds=5, load_time_limit_s=1800)


# -- pure pieces (unit-tested in tests/bench/test_auth_bench.py) -------------------------------

def paired_ratios(open_runs: list[WrkResult], auth_runs: list[WrkResult]) -> list[float]:
    """Each authorized run's requests/s over the open run just before it (same index)."""
    if len(open_runs) != len(auth_runs):
        raise ValueError(f"{len(open_runs)} open runs for {len(auth_runs)} authorized runs")
    ratios = []
    for o, a in zip(open_runs, auth_runs, strict=True):
        if o.requests_per_s <= 0:
            raise BenchError("an open run completed no requests; nothing to compare with")
        ratios.append(a.requests_per_s / o.requests_per_s)
    return ratios


def refused(result: WrkResult) -> int:
    """Requests of a run that were answered 4xx/5xx or never answered (wrk counts status > 399,
    connect, read, write and timeout errors)."""
    return result.failed


def check_no_failures(name: str, runs: list[WrkResult]) -> None:
    bad = [(n, r.errors) for n, r in enumerate(runs, 1) if refused(r)]
    if bad:
        detail = "; ".join(f"run {n}: {errors}" for n, errors in bad)
        raise BenchError(f"{name}: requests failed ({detail}). In an authorized run a 401 or "
                         "403 means the token or the harness is wrong, not that authorization "
                         "is slow; see wrk.log and the server log")


def interleave(groups: Sequence[tuple[str, ...]], runs: int) -> list[str]:
    """The run order: for each round, each group's runs in order (open ones first)."""
    return [name for _ in range(runs) for group in groups for name in group]


def system_paths(manifest: dict[str, Any], rng: random.Random,
                 size: int = PATH_MIX_SIZE) -> list[str]:
    """Half random sampled Observations, half random Patients (the mix of `bench.run`)."""
    obs = manifest["observation_ids"]
    pats = [p["id"] for p in manifest["patients"]]
    half = size // 2
    paths = [f"/fhir/Observation/{i}" for i in rng.sample(obs, min(half, len(obs)))]
    paths += [f"/fhir/Patient/{rng.choice(pats)}" for _ in range(half)]
    rng.shuffle(paths)
    return paths


def patient_paths(patient: str, observation_ids: list[str], rng: random.Random) -> list[str]:
    """The patient's own Observations and, as often, its Patient resource."""
    if not observation_ids:
        raise BenchError(f"Patient/{patient} has no Observations to read")
    paths = [f"/fhir/Observation/{i}" for i in observation_ids]
    paths += [f"/fhir/Patient/{patient}"] * len(observation_ids)
    rng.shuffle(paths)
    return paths


def spread(paths: list[str], n: int) -> list[str]:
    """At most `n` of the distinct `paths`, evenly spaced in sorted order (every kind of path
    is represented, not only the first in the alphabet)."""
    distinct = sorted(set(paths))
    if len(distinct) <= n:
        return distinct
    return [distinct[i * len(distinct) // n] for i in range(n)]


def forged(token: str) -> str:
    """The token with its signature damaged (still well-formed base64url)."""
    head, sig = token.rsplit(".", 1)
    i = len(sig) // 2
    return f"{head}.{sig[:i]}{'A' if sig[i] != 'A' else 'B'}{sig[i + 1:]}"


# -- talking to the servers --------------------------------------------------------------------

def get(port: int, path: str, token: str | None = None) -> tuple[int, bytes]:
    headers = {"Accept": "application/fhir+json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    conn = http.client.HTTPConnection(HOST, port, timeout=30)
    try:
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def mint(server: ServerProcess, scope: str, *, patient: str | None = None) -> str:
    """`yilian tokens mint` on the server's var dir and base URL (its environment)."""
    argv = [sys.executable, "-m", "app.cli", "tokens", "mint", "--client-id", CLIENT_ID,
            "--scope", scope, "--lifetime", "3600"]
    if patient is not None:
        argv += ["--patient", patient, "--fhir-user", f"Patient/{patient}"]
    out = subprocess.run(argv, cwd=REPO, env={**os.environ, **server.env}, capture_output=True,
                         text=True, timeout=120)
    if out.returncode != 0:
        raise BenchError(f"yilian tokens mint failed (exit {out.returncode}): {out.stderr}")
    return out.stdout.strip()


def patient_observations(port: int, patient: str, limit: int = 200) -> list[str]:
    status, body = get(port, f"/fhir/Observation?patient={quote(patient)}&_count={limit}"
                             "&_elements=id")
    if status != 200:
        raise BenchError(f"Observation?patient={patient} answered HTTP {status}")
    bundle = orjson.loads(body)
    return [e["resource"]["id"] for e in bundle.get("entry", [])
            if e.get("resource", {}).get("resourceType") == "Observation"][:limit]


def check_paths(port: int, paths: list[str], token: str | None, name: str,
                sample: int = 100) -> None:
    """Every path of an even sample of the distinct ones answers 200: the timed runs must not
    be refusals."""
    for path in spread(paths, sample):
        status, body = get(port, path, token)
        if status != 200:
            raise BenchError(f"{name}: GET {path} answered HTTP {status} before the timed runs: "
                             f"{body[:300].decode(errors='replace')}")


@dataclass
class Enforcement:
    """What the smart server answered to no token, a forged token and the real tokens."""

    no_token: int
    forged_token: int
    system_token: int
    patient_token: int
    patient_token_other: int | None  # another patient's resource with the patient token
    wrk_forged: dict[str, Any] = field(default_factory=dict)

    @property
    def active(self) -> bool:
        return (self.no_token == 401 and self.forged_token == 401 and self.system_token == 200
                and self.patient_token == 200
                and bool(self.wrk_forged.get("requests"))
                and self.wrk_forged.get("refused") == self.wrk_forged.get("requests"))


def probe_enforcement(wrk: str, smart: ServerProcess, path: str, tokens: dict[str, str],
                      own_path: str, other_path: str | None, work: Path,
                      log: Path) -> Enforcement:
    bad = forged(tokens["system"])
    found = Enforcement(
        no_token=get(smart.port, path)[0], forged_token=get(smart.port, path, bad)[0],
        system_token=get(smart.port, path, tokens["system"])[0],
        patient_token=get(smart.port, own_path, tokens["patient"])[0],
        patient_token_other=(get(smart.port, other_path, tokens["patient"])[0]
                             if other_path else None))
    # The same forged token sent by wrk through the Lua headers file: every answer must be a
    # refusal, which proves the header goes out with each request and the server reads it.
    result = run_wrk(wrk, smart.port, write_paths(work / "probe.paths", [path]), seconds=1,
                     connections=2, threads=1, log_path=log,
                     headers_file=write_headers(work / "forged.headers",
                                                {"Authorization": f"Bearer {bad}"}))
    found.wrk_forged = {"requests": result.requests, "refused": result.errors.get("status", 0)}
    return found


def cold_verify(smart: ServerProcess, token: str, batches: int, per_batch: int
                ) -> tuple[list[float], list[float]]:
    """Microseconds per `BearerVerifier.verify` of one token on the smart server's keys, issuer
    and audience: without a cache (signature and claims every time), and as a cache hit. One
    value per batch (its mean)."""
    from app.auth.bearer import BearerVerifier
    from app.auth.keys import Keyring
    from app.auth.routes_token import AuthUrls
    from app.config import Settings

    settings = Settings(var_dir=Path(smart.env["YILIAN_VAR_DIR"]),
                        base_url=smart.env["YILIAN_BASE_URL"])
    urls = AuthUrls.from_base_url(settings.base_url)
    keyring = Keyring(settings.keys_dir, settings.token_alg)
    header = f"Bearer {token}"

    def timed(verifier: BearerVerifier) -> list[float]:
        verifier.verify(header)  # loads the keys, warms the code paths
        out = []
        for _ in range(batches):
            start = time.perf_counter()
            for _ in range(per_batch):
                verifier.verify(header)
            out.append((time.perf_counter() - start) / per_batch * 1e6)
        return out

    def never_revoked(jti: str, gid: str | None) -> bool:
        return False

    cold = timed(BearerVerifier(keyring, issuer=urls.issuer, audience=urls.fhir_base,
                                revoked=never_revoked, cache_size=0))
    warm = timed(BearerVerifier(keyring, issuer=urls.issuer, audience=urls.fhir_base,
                                revoked=never_revoked))
    return cold, warm


def is_auth_frame(frame: str) -> bool:
    """A profile frame (`path:function`) of authorization work: the authenticator, verifier,
    revocation check and authorizer under app/auth/, and the service's authorize step. Not the
    CORS middleware (app/auth/cors.py), which wraps every request whatever the mode."""
    if frame.startswith("app/auth/"):
        return not frame.startswith("app/auth/cors.py")
    return frame.endswith(":FhirService.authorize")


def auth_frames(summary: dict[str, Any], top: int = 8) -> list[dict[str, Any]]:
    """The authorization frames of a `bench.profile.summarize` result, by total time."""
    return [f for f in summary["total_project"] if is_auth_frame(f["frame"])][:top]


def profile_authorized(spy: str, wrk: str, smart: ServerProcess, target: Target,
                       cfg: AuthConfig, log_dir: Path, wrk_log: Path) -> dict[str, Any]:
    raw = log_dir / "profile-smart.txt"
    result = profiled(spy, smart.pid, raw, cfg.profile_seconds, lambda: run_wrk(
        wrk, target.port, target.paths_file, seconds=cfg.profile_seconds,
        connections=cfg.connections, log_path=wrk_log, headers_file=target.headers_file))
    summary = summarize(raw, top=80)
    return {"seconds": cfg.profile_seconds, "samples": summary["samples"],
            "requests_per_s": result.requests_per_s, "failed": result.failed,
            "auth": auth_frames(summary), "own": summary["own"][:8],
            "raw": str(raw.relative_to(REPO))}


def render_profile(prof: dict[str, Any] | None) -> list[str]:
    if not prof:
        return []
    if prof.get("error"):
        return ["", f"Profiling the authorized server failed: {prof['error']}"]
    lines = ["", f"Where the authorized server's time goes: py-spy sampled it at 100 Hz during "
             f"one more {prof['seconds']:.0f} s system run ({prof['samples']:,} samples, "
             f"{prof['requests_per_s']:,.0f} req/s under the profiler). Authorization code by "
             f"total time (the function and what it calls; raw stacks: `{prof['raw']}`):", "",
             "| share of samples | function |", "| ---: | --- |"]
    lines += [f"| {f['percent']:.1f} % | `{f['frame']}` |" for f in prof["auth"]]
    if not prof["auth"]:
        lines.append("| – | (no authorization frame was sampled) |")
    return lines


# -- the run -----------------------------------------------------------------------------------

@dataclass
class Target:
    name: str
    port: int
    paths_file: Path
    headers_file: Path | None
    pgid: int | None = None  # the server's process group, for its CPU time


def parse_stat_cpu(stat: str) -> tuple[int, int]:
    """(process group, utime + stime in clock ticks) from a /proc/<pid>/stat line."""
    fields = stat.rsplit(")", 1)[1].split()  # after `pid (comm)`; comm may hold spaces
    return int(fields[2]), int(fields[11]) + int(fields[12])


def group_cpu_seconds(pgid: int) -> float:
    """User + system CPU seconds used so far by the live processes of a process group (the
    server and its uvicorn workers); 0.0 where /proc is not available."""
    ticks = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            group, used = parse_stat_cpu(stat.read_text())
        except (OSError, ValueError, IndexError):
            continue  # the process ended meanwhile
        if group == pgid:
            ticks += used
    return ticks / os.sysconf("SC_CLK_TCK")


def timed_runs(cfg: AuthConfig, wrk: str, targets: dict[str, Target],
               groups: Sequence[tuple[str, ...]], log: Path
               ) -> tuple[dict[str, list[WrkResult]], dict[str, list[float]]]:
    """The interleaved runs; also each run's server CPU time per request, in µs."""
    for t in targets.values():
        run_wrk(wrk, t.port, t.paths_file, seconds=cfg.warmup_seconds,
                connections=cfg.connections, log_path=log, headers_file=t.headers_file)
    results: dict[str, list[WrkResult]] = {name: [] for name in targets}
    cpu: dict[str, list[float]] = {name: [] for name in targets}
    for name in interleave(groups, cfg.runs):
        t = targets[name]
        before = group_cpu_seconds(t.pgid) if t.pgid else 0.0
        r = run_wrk(wrk, t.port, t.paths_file, seconds=cfg.seconds, connections=cfg.connections,
                    log_path=log, headers_file=t.headers_file)
        used = (group_cpu_seconds(t.pgid) - before) if t.pgid else 0.0
        per_request = 1e6 * used / r.requests if r.requests else 0.0
        print(f"    {name}: {r.requests_per_s:,.0f} req/s  p50 {r.p50_ms:.1f} ms  "
              f"p99 {r.p99_ms:.1f} ms  server CPU {per_request:,.0f} µs/request  "
              f"failed {r.failed}", flush=True)
        results[name].append(r)
        cpu[name].append(per_request)
    return results, cpu


def variant_metrics(bare: list[WrkResult], same: list[WrkResult], auth: list[WrkResult], *,
                    target: bool, same_cpu: list[float] | None = None,
                    auth_cpu: list[float] | None = None) -> list[Metric]:
    """`bare`: open server, no header; `same`: open server, the authorized runs' very request
    (header ignored); `auth`: the smart server. Run n of each belongs to round n. `same_cpu`
    and `auth_cpu`: the server CPU µs per request of those runs."""
    def pct(den: list[WrkResult], num: list[WrkResult]) -> list[float]:
        return [100 * r for r in paired_ratios(den, num)]

    cpu: list[Metric] = []
    if same_cpu and auth_cpu and all(same_cpu) and all(auth_cpu):
        cpu = [
            Metric("server CPU per request, open (same request)", "µs", same_cpu),
            Metric("server CPU per request, authorized", "µs", auth_cpu),
            # less sensitive to other load on the machine than requests/s: what the ratio
            # would be for a server that is CPU-bound on its own cores
            Metric("open / authorized server CPU per request", "%",
                   [100 * o / a for o, a in zip(same_cpu, auth_cpu, strict=True)]),
        ]
    return [
        Metric("authorized / open, same request", "%", pct(same, auth),
               target=100 * OVERHEAD_TARGET if target else None, op=">=" if target else None,
               target_text=f"≥ {100 * OVERHEAD_TARGET:.0f} %" if target else None),
        Metric("authorized / open without the header", "%", pct(bare, auth)),
        Metric("open with the header / open without (sending it)", "%", pct(bare, same)),
        Metric("open requests/s, no header", "req/s", [r.requests_per_s for r in bare]),
        Metric("open requests/s, same request", "req/s", [r.requests_per_s for r in same]),
        Metric("authorized requests/s", "req/s", [r.requests_per_s for r in auth]),
        Metric("open p99 latency, same request", "ms", [r.p99_ms for r in same]),
        Metric("authorized p99 latency", "ms", [r.p99_ms for r in auth]),
        *cpu,
        # one value, the total: a median over runs would pass a run that had failures
        Metric("failed requests (non-2xx, socket errors), all runs", "requests",
               [float(sum(r.failed for r in (*bare, *same, *auth)))],
               target=0, op="<=", target_text="0"),
    ]


def render(results: dict[str, Any]) -> str:
    cfg = results["config"]
    m = results["machine"]
    enf = results["enforcement"]
    variants = results["variants"]
    lines = [
        "## Authorization overhead (issue 4)",
        "",
        f"<!-- Generated by `python -m bench.auth_overhead` from `{results['results_file']}`; "
        "do not edit. -->",
        "",
        f"Measured on {results['date']}"
        + (f" with `{results['command']}`" if results.get("command") else "")
        + f" ({cfg['mode']} mode settings, data set of {cfg['patients']:,} patients × "
        f"{cfg['observations_per_patient']:,} Observations). Two Yilian servers on two copies of "
        "the same store, one with `YILIAN_AUTH=off` (open), one with `YILIAN_AUTH=smart` "
        "(authorized), default settings "
        f"({m['server_stack']}). wrk with {cfg['connections']} connections, "
        f"{cfg['runs']} rounds of {cfg['seconds']:.0f} s runs after a "
        f"{cfg['warmup_seconds']:.0f} s warm-up; each round runs, in turn, the open server "
        "without a token, the open server with the same `Authorization` header as the "
        "authorized run (it ignores it), and the authorized server. **Authorized / open, same "
        "request** divides each authorized run by the open run just before it, which sent "
        "byte for byte the same requests: what verifying and enforcing the token costs the "
        "server (the target). **Authorized / open without the header** also counts sending the "
        f"header (`Authorization: Bearer` + {results.get('token_bytes', 0):,} bytes of token), "
        "which here includes wrk's own work on the same CPUs as the server; "
        "the third ratio is that sending cost alone. Machine: "
        f"{m['cpus']} × {m['cpu_model']} (nproc {m['nproc']}), load average {m['load_average']}; "
        f"Python {m['python']}, SQLite {m['sqlite']}, {m['wrk']}; code {m['git']}.",
        "",
        *([f"- **system**: `{SYSTEM_SCOPE}` token (a backend service); `GET "
           "/fhir/Observation/<id>` and `GET /fhir/Patient/<id>`, half each, ids drawn per "
           f"request from {PATH_MIX_SIZE:,} random existing ones (the read mix of `bench.run`). "
           "The target applies to this variant."] if "system" in variants else []),
        *([f"- **patient**: `{PATIENT_SCOPE}` token with `Patient/{results['patient']}` in "
           f"context (a patient app); that patient's own Observations "
           f"({results['patient_observations']} of them) and its Patient resource, half each, "
           "so every read also passes the compartment check. Reported, no target."]
          if "patient" in variants else []),
        "",
        "Before the timed runs the smart server must refuse a request without a token "
        f"(got HTTP {enf['no_token']}) and with a forged token (HTTP {enf['forged_token']}; wrk "
        f"sent it {enf['wrk_forged'].get('requests', 0):,} times through the same Lua headers "
        f"file, {enf['wrk_forged'].get('refused', 0):,} refused), and accept the real tokens "
        f"(HTTP {enf['system_token']} and {enf['patient_token']}"
        + (f"; the patient token reading another patient: HTTP {enf['patient_token_other']}"
           if enf.get("patient_token_other") is not None else "")
        + "). Any non-2xx answer in a timed run fails the benchmark.",
        "",
        "| variant | metric | median | min – max | runs | target | result |",
        "| --- | --- | ---: | ---: | ---: | --- | --- |",
    ]
    for name, metrics in variants.items():
        for x in metrics:
            span = (f"{_num(x['min'], x['unit'])} – {_num(x['max'], x['unit'])}" if x["runs"]
                    else "–")
            verdict = {None: "–", True: "**pass**", False: "**FAIL**"}[x["passed"]]
            lines.append(f"| {name} | {x['name']} | {_num(x['median'], x['unit'])} | {span} | "
                         f"{len(x['runs'])} | {x['target_text'] or '–'} | {verdict} |")
    cold, warm = results["verify"]["cold"], results["verify"]["warm"]
    lines += [
        "",
        "Server CPU per request: the user + system CPU time of the server's process group "
        "(from /proc) during a run over the requests wrk completed in it. A server bound by its "
        "own CPU serves requests at a rate inversely proportional to it, so the CPU ratio "
        "estimates the throughput ratio while moving much less than requests/s when other "
        "work shares the machine (it is reported, the target is judged on requests/s).",
        "",
        f"Verifying one token (`BearerVerifier.verify`, {results['machine']['token_alg']} on the "
        "smart server's keys, in the benchmark process): "
        f"**{statistics.median(cold):,.0f} µs cold** (signature, claims and scope parsing; no "
        f"cache; range {min(cold):,.0f} – {max(cold):,.0f} µs over {len(cold)} batches of "
        f"{cfg['verify_per_batch']}), {statistics.median(warm):,.1f} µs as a cache hit; both "
        "without the revocation lookup the server also makes on every request. Each "
        "server process verifies a token's signature once and then answers from its cache of "
        "verified tokens (an entry lives until the token expires or 60 s, whichever is sooner), "
        "so a client reusing its token pays the cold cost about once a minute per worker; a "
        "client sending a new token with every request would pay it every time.",
        "",
        "Reproduce: `make bench-auth` (full data set, cached in `bench/.cache/` after the first "
        "load) or `.venv/bin/python -m bench.auth_overhead --quick` (100 × 100, a minute; "
        "writes only `bench/results/`). Tokens come from `yilian tokens mint --client-id "
        f"{CLIENT_ID} --scope \"{SYSTEM_SCOPE}\"` on the smart server's var dir.",
    ]
    lines += render_profile(results.get("profile"))
    if results.get("problems"):
        lines += ["", "Problems:", "", *[f"- {p}" for p in results["problems"]]]
    return "\n".join(lines) + "\n"



def parse_args(argv: list[str] | None) -> tuple[AuthConfig, argparse.Namespace]:
    parser = argparse.ArgumentParser(prog="python -m bench.auth_overhead", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common(parser, kind="auth", docs=DOCS,
               quick="100 × 100 data set, 3 rounds of 2 s runs: checks the harness",
               runs="rounds of (open, open + header, authorized) runs per variant (≥ 3)")
    parser.add_argument("--variant", choices=("both", "system", "patient"), default="both",
                        help="measure only one variant (default both; the target is system's)")
    parser.add_argument("--profile", action=argparse.BooleanOptionalAction,
                        help="profile the authorized server with py-spy after the timed runs "
                             "(default: on in the full mode, off with --quick)")
    args = parser.parse_args(argv)
    cfg = QUICK if args.quick else FULL
    overrides = size_overrides(parser, args, min_runs=3,
                               why="rounds of open and authorized runs")
    return replace(cfg, **overrides), args


def main(argv: list[str] | None = None) -> int:
    cfg, args = parse_args(argv)
    if args.render is not None:
        return rerender(args.render, args.out)
    stop_on_signals()
    from app.config import Settings
    from bench.run import load_average, machine_info

    wrk = ensure_wrk()
    want_profile = args.profile if args.profile is not None else cfg.mode == "full"
    spy = ensure_py_spy() if want_profile else None
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    log_dir = RESULTS / f"auth-{stamp}"
    log_dir.mkdir(parents=True, exist_ok=True)
    wrk_log = log_dir / "wrk.log"
    work = CACHE / f"auth-work-{stamp}"
    work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    variants_run = ("system", "patient") if args.variant == "both" else (args.variant,)
    load_at_start = load_average()
    rng = random.Random(cfg.seed)
    problems: list[str] = []
    print(f"Authorization overhead ({cfg.mode}): {cfg.patients:,} patients × "
          f"{cfg.observations_per_patient:,} Observations; logs in {log_dir}", flush=True)
    try:
        spec = DatasetSpec(cfg.patients, cfg.observations_per_patient, cfg.seed)
        dataset = load_dataset(spec, CACHE, log_dir, reload=False,
                               connections=cfg.load_connections,
                               time_limit_s=cfg.load_time_limit_s)
        manifest = dataset.manifest
        print(f"  copying the store ({dir_bytes(dataset.var_dir) / 2**30:.2f} GiB) twice",
              flush=True)
        stores = {name: working_copy(dataset, work / name) for name in ("open", "smart")}
        with yilian_server(stores["open"], log_dir / "server-open.log",
                           extra_env={"YILIAN_AUTH": "off"}) as open_srv, \
                yilian_server(stores["smart"], log_dir / "server-smart.log",
                              extra_env={"YILIAN_AUTH": "smart"}) as smart_srv:
            patients = [p["id"] for p in manifest["patients"]]
            patient = patients[0]
            own_obs = patient_observations(open_srv.port, patient)
            other_obs = (patient_observations(open_srv.port, patients[1], limit=1)
                         if len(patients) > 1 else [])
            tokens = {"system": mint(smart_srv, SYSTEM_SCOPE),
                      "patient": mint(smart_srv, PATIENT_SCOPE, patient=patient)}
            paths = {"system": system_paths(manifest, rng),
                     "patient": patient_paths(patient, own_obs, rng)}
            print("== does the smart server enforce tokens?", flush=True)
            enforcement = probe_enforcement(
                wrk, smart_srv, paths["system"][0], tokens, f"/fhir/Observation/{own_obs[0]}",
                f"/fhir/Observation/{other_obs[0]}" if other_obs else None, work, wrk_log)
            print(f"  no token: HTTP {enforcement.no_token}; forged token: HTTP "
                  f"{enforcement.forged_token} (wrk: {enforcement.wrk_forged}); system token: "
                  f"HTTP {enforcement.system_token}; patient token: HTTP "
                  f"{enforcement.patient_token}, on another patient: HTTP "
                  f"{enforcement.patient_token_other}", flush=True)
            if not enforcement.active:
                problems.append(
                    "the YILIAN_AUTH=smart server does not enforce tokens (no token or a forged "
                    "token was not answered 401, or a real token was refused): these numbers do "
                    "not measure token verification")
                print(f"  WARNING: {problems[-1]}", flush=True)
            if enforcement.patient_token_other == 200:
                problems.append(f"the {PATIENT_SCOPE} token for Patient/{patient} read another "
                                "patient's Observation (HTTP 200)")
                print(f"  WARNING: {problems[-1]}", flush=True)
            for name in variants_run:
                check_paths(open_srv.port, paths[name], None, f"open {name}")
                check_paths(smart_srv.port, paths[name], tokens[name], f"authorized {name}")
            print("== cold verify cost", flush=True)
            cold, warm = cold_verify(smart_srv, tokens["system"], cfg.verify_batches,
                                     cfg.verify_per_batch)
            print(f"  cold {statistics.median(cold):,.0f} µs, cache hit "
                  f"{statistics.median(warm):,.1f} µs", flush=True)
            targets: dict[str, Target] = {}
            for name in variants_run:
                paths_file = write_paths(work / f"{name}.paths", paths[name])
                header = write_headers(work / f"{name}.headers",
                                       {"Authorization": f"Bearer {tokens[name]}"})
                for label, srv, headers_file in (
                        (f"{name} open", open_srv, None),
                        (f"{name} open + header", open_srv, header),
                        (f"{name} authorized", smart_srv, header)):
                    targets[label] = Target(label, srv.port, paths_file, headers_file, srv.pid)
            print(f"== interleaved runs: {cfg.runs} rounds of (open, open + header, "
                  f"authorized) per variant, {cfg.seconds:.0f} s each, {cfg.connections} "
                  "connections", flush=True)
            groups = [(f"{n} open", f"{n} open + header", f"{n} authorized")
                      for n in variants_run]
            runs, cpu = timed_runs(cfg, wrk, targets, groups, wrk_log)
            profile: dict[str, Any] | None = None
            if spy is not None:
                print(f"== profile of the authorized server ({cfg.profile_seconds:.0f} s)",
                      flush=True)
                try:
                    profile = profile_authorized(spy, wrk, smart_srv,
                                                 targets[f"{variants_run[0]} authorized"],
                                                 cfg, log_dir,
                                                 wrk_log)
                except (RuntimeError, OSError) as exc:
                    profile = {"error": f"{type(exc).__name__}: {exc}"[:1000]}
        for name in targets:
            check_no_failures(name, runs[name])
        variants = {name: [x.as_dict() for x in variant_metrics(
            runs[f"{name} open"], runs[f"{name} open + header"], runs[f"{name} authorized"],
            target=name == "system", same_cpu=cpu[f"{name} open + header"],
            auth_cpu=cpu[f"{name} authorized"])] for name in variants_run}
        machine = machine_info(wrk, Settings().workers, load_at_start)
        machine["token_alg"] = Settings().token_alg
        results: dict[str, Any] = {
            "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "results_file": f"bench/results/auth-{stamp}.json",
            "command": " ".join(["python -m bench.auth_overhead",
                                 *(sys.argv[1:] if argv is None else argv)]).strip(),
            "elapsed_s": time.monotonic() - started,
            "config": asdict(cfg), "machine": machine, "dataset": dataset.key,
            "patient": patient, "patient_observations": len(own_obs),
            "token_bytes": len(tokens["system"]),
            "enforcement": {**asdict(enforcement), "active": enforcement.active},
            "verify": {"cold": cold, "warm": warm},
            "variants": variants,
            "runs": {name: [r.as_dict() for r in rs] for name, rs in runs.items()},
            "server_cpu_us_per_request": cpu,
            "profile": profile,
            "problems": problems,
        }
        out = RESULTS / f"auth-{stamp}.json"
        out.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
        section = render(results)
        (RESULTS / f"auth-{stamp}.md").write_text(section)
        print("\n" + section, flush=True)
        wants_docs = (cfg.mode == "full" or args.docs) and not args.no_docs
        if wants_docs and args.variant != "both":
            print(f"not writing {DOCS}: only the {args.variant} variant was measured",
                  flush=True)
            wants_docs = False
        if wants_docs and not enforcement.active:
            print(f"NOT writing {DOCS}: the smart server did not enforce tokens", file=sys.stderr)
            return 1
        if wants_docs:
            write_section(DOCS, section)
            print(f"wrote the {SECTION} section of {DOCS}", flush=True)
        print(f"Results: {out} ({(time.monotonic() - started) / 60:.1f} min)", flush=True)
        return 1 if problems else 0
    except BenchError as exc:
        print(f"BENCH FAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        if not args.keep_work:
            shutil.rmtree(work, ignore_errors=True)


def rerender(results_json: Path, out: Path) -> int:
    """Write the section of a saved run again (after a change to `render`), never measuring."""
    results = orjson.loads(results_json.read_bytes())
    if not results.get("enforcement", {}).get("active"):
        print(f"NOT writing {out}: in that run the smart server did not enforce tokens",
              file=sys.stderr)
        return 1
    write_section(out, render(results))
    print(f"wrote the {SECTION} section of {out} from {results_json}")
    return 0


def write_section(docs: Path, section: str) -> None:
    """Set the `auth-overhead` section of docs/performance.md, keeping everything else (the
    sections `bench.run` and `bench.import_cn` write)."""
    sections.write_section(docs, SECTION, section)


if __name__ == "__main__":
    raise SystemExit(main())
