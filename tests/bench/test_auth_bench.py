"""The authorization overhead benchmark's pieces (bench/auth_overhead.py, bench/wrk.py headers):
the ratio of each authorized run to the open run before it, the run order, the headers file
the Lua script sends, the forged token, and the docs/performance.md section. No timing is
asserted here; `make bench-auth` measures."""

from __future__ import annotations

import http.server
import os
import random
import shutil
import stat
import threading
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any, ClassVar

import orjson
import pytest

from app.auth.bearer import BearerError, BearerVerifier, issue_access_token
from app.auth.keys import Keyring
from app.auth.scopes import parse_scopes
from bench.auth_overhead import (
    SECTION,
    BenchError,
    Enforcement,
    auth_frames,
    check_no_failures,
    forged,
    group_cpu_seconds,
    interleave,
    is_auth_frame,
    main,
    paired_ratios,
    parse_stat_cpu,
    patient_paths,
    render,
    spread,
    system_paths,
    variant_metrics,
    write_section,
)
from bench.sections import replace_section
from bench.wrk import run_wrk, write_headers, write_paths
from tests.bench.wrk_results import run


def test_each_authorized_run_is_divided_by_the_open_run_before_it() -> None:
    bare = [run(11_000), run(10_000), run(13_000)]
    opens = [run(10_000), run(8_000), run(12_000)]
    auths = [run(9_000), run(7_600), run(9_600)]
    assert paired_ratios(opens, auths) == pytest.approx([0.9, 0.95, 0.8])
    metrics = {m.name: m for m in variant_metrics(bare, opens, auths, target=True)}
    ratio = metrics["authorized / open, same request"]
    assert ratio.median == pytest.approx(90.0)
    assert (min(ratio.runs), max(ratio.runs)) == pytest.approx((80.0, 95.0))
    assert ratio.passed is True and ratio.target_text == "≥ 85 %"
    assert metrics["authorized / open without the header"].runs == pytest.approx(
        [9_000 / 110, 76.0, 9_600 / 130])
    assert metrics["authorized / open without the header"].passed is None  # reported only
    assert metrics["open with the header / open without (sending it)"].runs == pytest.approx(
        [100 * 10 / 11, 80.0, 100 * 12 / 13])
    assert metrics["open requests/s, same request"].median == 10_000
    assert metrics["authorized requests/s"].median == 9_000
    assert metrics["failed requests (non-2xx, socket errors), all runs"].passed is True
    failing = variant_metrics(bare, opens, [run(9_000), run(7_600, status=1), run(9_600)],
                              target=True)[-1]
    assert failing.runs == [1.0] and failing.passed is False


def test_the_target_is_judged_on_the_median_ratio() -> None:
    # one good pair does not pass a run whose typical pair is slower than 85 %
    opens = [run(10_000)] * 3
    auths = [run(9_900), run(8_000), run(8_400)]
    ratio = variant_metrics(opens, opens, auths, target=True)[0]
    assert ratio.median == pytest.approx(84.0) and ratio.passed is False
    # the patient variant is reported without a target
    assert variant_metrics(opens, opens, auths, target=False)[0].passed is None


def test_mismatched_or_empty_runs_are_refused() -> None:
    with pytest.raises(ValueError, match="2 open runs for 1"):
        paired_ratios([run(1), run(1)], [run(1)])
    with pytest.raises(BenchError, match="no requests"):
        paired_ratios([run(0)], [run(5)])


def test_runs_take_turns_open_first() -> None:
    groups = [("system open", "system open + header", "system authorized"),
              ("patient open", "patient open + header", "patient authorized")]
    order = interleave(groups, 3)
    assert order[:6] == [*groups[0], *groups[1]]
    assert order == order[:6] * 3
    for n, name in enumerate(order):
        if name.endswith("authorized"):
            # the run just before sent the same request to the open server
            assert order[n - 1] == name.replace("authorized", "open + header")


def test_a_refused_request_fails_the_bench_loudly() -> None:
    check_no_failures("system authorized", [run(100), run(100)])
    with pytest.raises(BenchError, match="401 or 403") as exc:
        check_no_failures("system authorized", [run(100), run(100, status=37)])
    assert "run 2" in str(exc.value) and "'status': 37" in str(exc.value)
    with pytest.raises(BenchError):
        check_no_failures("system open", [run(100, timeout=1)])


def test_request_mixes_hit_what_the_variant_may_read() -> None:
    manifest = {"observation_ids": [f"obs-{i}" for i in range(50)],
                "patients": [{"id": f"pat-{i}"} for i in range(5)]}
    paths = system_paths(manifest, random.Random(1), size=40)
    assert len(paths) == 40
    assert sum(p.startswith("/fhir/Observation/") for p in paths) == 20
    assert sum(p.startswith("/fhir/Patient/pat-") for p in paths) == 20
    own = patient_paths("pat-1", ["o1", "o2", "o3"], random.Random(1))
    assert sorted(own) == sorted(["/fhir/Observation/o1", "/fhir/Observation/o2",
                                  "/fhir/Observation/o3"] + ["/fhir/Patient/pat-1"] * 3)
    with pytest.raises(BenchError):
        patient_paths("pat-1", [], random.Random(1))
    # the paths checked before the timed runs cover both kinds, not just the first sorted
    checked = spread(paths, 6)
    assert len(checked) == 6
    assert any("/Observation/" in p for p in checked) and any("/Patient/" in p for p in checked)
    assert spread(["/a", "/a", "/b"], 10) == ["/a", "/b"]


def test_forged_token_is_well_formed_but_fails_verification(tmp_path: Path) -> None:
    ring = Keyring(tmp_path / "keys")
    ring.ensure()
    base = "http://127.0.0.1:8080/fhir"
    token = issue_access_token(ring, issuer="http://127.0.0.1:8080/auth", audience=base,
                               client_id="bench", scope=parse_scopes("system/*.rs").scopes,
                               subject="bench")
    bad = forged(token)
    assert bad != token and len(bad) == len(token)
    assert bad.rsplit(".", 1)[0] == token.rsplit(".", 1)[0]  # same header and claims
    verifier = BearerVerifier(ring, issuer="http://127.0.0.1:8080/auth", audience=base,
                              revoked=lambda jti, gid: False, cache_size=0)
    verifier.verify(f"Bearer {token}")
    with pytest.raises(BearerError) as exc:
        verifier.verify(f"Bearer {bad}")
    assert exc.value.status == 401


def test_headers_file_is_private_and_refuses_header_injection(tmp_path: Path) -> None:
    path = write_headers(tmp_path / "h", {"Authorization": "Bearer abc.def.ghi"})
    assert path.read_text() == "Authorization: Bearer abc.def.ghi\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    for name, value in (("Authorization", "Bearer x\r\nX-Evil: 1"), ("Bad Name", "v"),
                        ("X", "a\nb")):
        with pytest.raises(ValueError):
            write_headers(tmp_path / "bad", {name: value})


class _Recorder(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: ClassVar[list[tuple[str, str | None, str | None]]] = []
    lock = threading.Lock()

    def do_GET(self) -> None:
        with self.lock:
            self.seen.append((self.path, self.headers.get("Authorization"),
                              self.headers.get("Accept")))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[tuple[int, type[_Recorder]]]:
    class Handler(_Recorder):
        seen: ClassVar[list[tuple[str, str | None, str | None]]] = []

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], Handler
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")
def test_the_lua_script_sends_the_headers_file_with_every_request(
        tmp_path: Path, recorder: tuple[int, type[_Recorder]]) -> None:
    port, handler = recorder
    paths = write_paths(tmp_path / "paths", ["/fhir/Patient/a", "/fhir/Observation/b"])
    headers = write_headers(tmp_path / "headers", {"Authorization": "Bearer tok.en.x"})
    result = run_wrk(shutil.which("wrk") or "wrk", port, paths, seconds=1, connections=1,
                     threads=1, headers_file=headers)
    assert result.requests > 0 and result.failed == 0
    assert len(handler.seen) >= result.requests
    assert {auth for _, auth, _ in handler.seen} == {"Bearer tok.en.x"}
    assert {accept for _, _, accept in handler.seen} == {"application/fhir+json"}
    assert {path for path, _, _ in handler.seen} <= {"/fhir/Patient/a", "/fhir/Observation/b"}
    # without a headers file no Authorization header goes out
    handler.seen.clear()
    run_wrk(shutil.which("wrk") or "wrk", port, paths, seconds=1, connections=1, threads=1)
    assert handler.seen and {auth for _, auth, _ in handler.seen} == {None}


def results(ratios: list[float]) -> dict[str, Any]:
    opens = [run(10_000)] * len(ratios)
    auths = [run(10_000 * r) for r in ratios]
    enforcement = Enforcement(no_token=401, forged_token=401, system_token=200,
                              patient_token=200, patient_token_other=404,
                              wrk_forged={"requests": 500, "refused": 500})
    return {
        "date": "2026-11-23 15:00 UTC", "results_file": "bench/results/auth-x.json",
        "config": {"mode": "full", "patients": 1000, "observations_per_patient": 1000,
                   "connections": 64, "runs": len(ratios), "seconds": 15.0,
                   "warmup_seconds": 5.0, "verify_per_batch": 200},
        "machine": {"server_stack": "uvicorn, 1 worker(s)", "cpus": 2, "cpu_model": "EPYC",
                    "nproc": 2, "load_average": "0.1 / 0.1 / 0.1", "python": "3.11.7",
                    "sqlite": "3.40.1", "wrk": "wrk 4.1.0", "git": "abc1234",
                    "token_alg": "RS256"},
        "patient": "pat-000001", "patient_observations": 200, "token_bytes": 716,
        "enforcement": {**asdict(enforcement), "active": enforcement.active},
        "verify": {"cold": [70.0, 75.0, 72.0], "warm": [3.0, 3.1, 2.9]},
        "variants": {"system": [m.as_dict() for m in variant_metrics(opens, opens, auths,
                                                                     target=True)],
                     "patient": [m.as_dict() for m in variant_metrics(opens, opens, auths,
                                                                      target=False)]},
        "problems": [],
    }


def test_enforcement_counts_only_when_every_probe_agrees() -> None:
    ok = Enforcement(401, 401, 200, 200, 404, {"requests": 10, "refused": 10})
    assert ok.active
    assert not Enforcement(200, 200, 200, 200, 200, {"requests": 10, "refused": 0}).active
    # wrk's forged token got through sometimes: the header is not on every request
    assert not Enforcement(401, 401, 200, 200, 404, {"requests": 10, "refused": 7}).active
    assert not Enforcement(401, 401, 403, 200, 404, {"requests": 10, "refused": 10}).active


def test_the_section_says_what_was_measured_and_how_to_reproduce() -> None:
    text = render(results([0.9, 0.95, 0.88]))
    assert text.startswith("## Authorization overhead (issue 4)")
    assert "| system | authorized / open, same request | 90 % | 88 % – 95 % | 3 | ≥ 85 % | " \
           "**pass** |" in text
    assert "| patient | authorized / open, same request | 90 % | 88 % – 95 % | 3 | – | – |" \
        in text
    assert "| system | authorized / open without the header | 90 % |" in text
    assert "**72 µs cold**" in text and "3.0 µs as a cache hit" in text
    assert "make bench-auth" in text and "python -m bench.auth_overhead --quick" in text
    assert "YILIAN_AUTH=off" in text and "YILIAN_AUTH=smart" in text
    assert "forged token (HTTP 401" in text
    assert "Measured on 2026-11-23 15:00 UTC (full mode settings, data set of 1,000" in text
    res = results([0.9, 0.95, 0.88])
    res["command"] = "python -m bench.auth_overhead --seconds 8"
    assert "15:00 UTC with `python -m bench.auth_overhead --seconds 8` (full" in render(res)
    assert "`Authorization: Bearer` + 716 bytes of token" in text
    failing = render(results([0.8, 0.84, 0.9]))
    assert "| system | authorized / open, same request | 84 % | 80 % – 90 % | 3 | ≥ 85 % | " \
           "**FAIL** |" in failing


def test_the_section_goes_into_docs_keeping_the_other_benchmarks(tmp_path: Path) -> None:
    docs = tmp_path / "performance.md"
    docs.write_text(replace_section("# Performance\n\nread: 80 %\n", "importer",
                                    "## Importer\n\n2,520 rows/s"))
    write_section(docs, render(results([0.9, 0.91, 0.92])))
    once = docs.read_text()
    assert "read: 80 %" in once and "2,520 rows/s" in once
    assert once.count(f"<!-- section:{SECTION} begin -->") == 1
    assert "| 91 % |" in once
    write_section(docs, render(results([0.86, 0.87, 0.88])))
    twice = docs.read_text()
    assert "| 87 % |" in twice and "| 91 % |" not in twice
    assert twice.count(f"<!-- section:{SECTION} begin -->") == 1
    assert "2,520 rows/s" in twice
    fresh = tmp_path / "new.md"
    write_section(fresh, render(results([0.9, 0.9, 0.9])))
    assert fresh.read_text().startswith("# Performance\n")


def test_the_profile_names_authorization_work_but_not_the_cors_wrapper() -> None:
    assert is_auth_frame("app/auth/authorizer.py:SmartAuthenticator.authenticate")
    assert is_auth_frame("app/auth/sqlite_store.py:SqliteAuthStore.is_revoked")
    assert is_auth_frame("app/fhir/interactions.py:FhirService.authorize")
    assert not is_auth_frame("app/auth/cors.py:SmartCors.__call__")  # every request, any mode
    assert not is_auth_frame("app/storage/sqlite.py:SqliteStore.read")
    summary = {"total_project": [
        {"frame": "app/auth/cors.py:SmartCors.__call__", "samples": 90, "percent": 90.0},
        {"frame": "app/fhir/rest.py:read_interaction", "samples": 60, "percent": 60.0},
        {"frame": "app/auth/authorizer.py:SmartAuthenticator.authenticate", "samples": 19,
         "percent": 19.0},
        {"frame": "app/auth/sqlite_store.py:SqliteAuthStore.is_revoked", "samples": 11,
         "percent": 11.0}]}
    assert [f["frame"] for f in auth_frames(summary)] == [
        "app/auth/authorizer.py:SmartAuthenticator.authenticate",
        "app/auth/sqlite_store.py:SqliteAuthStore.is_revoked"]
    res = results([0.7, 0.7, 0.7])
    res["profile"] = {"seconds": 15.0, "samples": 1500, "requests_per_s": 7000.0, "failed": 0,
                      "auth": auth_frames(summary), "own": [], "raw": "bench/results/x.txt"}
    text = render(res)
    assert "| 19.0 % | `app/auth/authorizer.py:SmartAuthenticator.authenticate` |" in text
    assert "1,500 samples" in text
    res["profile"] = {"error": "RuntimeError: py-spy failed"}
    assert "Profiling the authorized server failed: RuntimeError" in render(res)


def test_server_cpu_per_request_comes_from_the_process_group() -> None:
    # comm may hold spaces and parentheses; fields after it: state ppid pgrp ... utime stime
    line = ("4242 (python -m (x)) S 1 4242 4242 0 -1 4194560 100 0 0 0 "
            "250 50 0 0 20 0 3 0 100 1000 10")
    assert parse_stat_cpu(line) == (4242, 300)
    spent = group_cpu_seconds(os.getpgid(0))
    sum(i * i for i in range(300_000))  # burn some CPU in this process group
    assert group_cpu_seconds(os.getpgid(0)) >= spent > 0
    assert group_cpu_seconds(2**22 + 12345) == 0.0  # no such group
    opens = [run(10_000)] * 3
    metrics = {m.name: m for m in variant_metrics(opens, opens, opens, target=True,
                                                  same_cpu=[80.0, 90.0, 100.0],
                                                  auth_cpu=[100.0, 100.0, 100.0])}
    assert metrics["open / authorized server CPU per request"].runs == pytest.approx(
        [80.0, 90.0, 100.0])
    assert metrics["server CPU per request, authorized"].median == 100.0
    # no CPU figures (no /proc): no CPU rows rather than zeros
    names = [m.name for m in variant_metrics(opens, opens, opens, target=True,
                                             same_cpu=[0.0] * 3, auth_cpu=[0.0] * 3)]
    assert not any("CPU" in n for n in names)


def test_a_saved_run_is_rendered_again_only_if_the_server_enforced(tmp_path: Path) -> None:
    docs = tmp_path / "performance.md"
    docs.write_text("# Performance\n")
    saved = tmp_path / "auth-x.json"
    res = results([0.9, 0.91, 0.92])
    saved.write_bytes(orjson.dumps(res))
    assert main(["--render", str(saved), "--out", str(docs)]) == 0
    assert "| system | authorized / open, same request | 91 % |" in docs.read_text()
    res["enforcement"]["active"] = False
    res["variants"]["system"][0]["median"] = 99.0
    saved.write_bytes(orjson.dumps(res))
    assert main(["--render", str(saved), "--out", str(docs)]) == 1
    assert "| 91 % |" in docs.read_text()  # left as it was
