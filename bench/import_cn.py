"""Importer throughput: a 100,000-row mixed hospital export through `yilian import`, end to end.

    .venv/bin/python -m bench.import_cn [--rows 100000] [--runs 3] [--jobs N]

Generates one synthetic hospital's daily exports in their native column styles (病案首页
patients in GBK, HIS 挂号 and 电子处方, LIS results), then runs the real command — reading,
mapping, validation, indexing and SQLite writes — on a fresh store per run, two ways: the whole
export as one `yilian import --manifest` run, and one `yilian import` per file as a script
calling the command four times would. Each run is preceded by a baseline taken in the same run:
reading and CSV-parsing the same files in one process (the floor for any importer). Reports
rows/s and resources/s as the median and range of the runs. Results go to the importer section
of `docs/performance.md` and `bench/results/import-<timestamp>.json`.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from app.samples.identity import make_id
from bench.sections import replace_section

ROOT = Path(__file__).resolve().parents[1]
MAPPINGS = ROOT / "app" / "cnemr" / "mappings"
DOCS = ROOT / "docs" / "performance.md"
HOSPITAL_OID = "2.16.156.10011.1.5.110000001"
SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾萧田董潘袁蔡蒋余于杜叶"
GIVEN = "伟芳娜秀英敏静丽强磊军洋勇艳杰娟涛明超秀兰霞平刚桂英建国建华志强海燕晓梅"
REGIONS = ("110105", "310104", "440106", "330106", "510107", "420102", "640102", "230103")
LAB = (("WBC", "白细胞计数", "10^9/L", "3.5-9.5", 3.0, 12.0),
       ("RBC", "红细胞计数", "10^12/L", "4.3-5.8", 3.5, 6.0),
       ("HGB", "血红蛋白", "g/L", "130-175", 100, 180),
       ("PLT", "血小板计数", "10^9/L", "125-350", 90, 400),
       ("ALT", "丙氨酸氨基转移酶", "U/L", "9-50", 5, 120),
       ("AST", "天门冬氨酸氨基转移酶", "U/L", "15-40", 8, 90),
       ("CREA", "肌酐", "umol/L", "57-97", 40, 160),
       ("UA", "尿酸", "umol/L", "208-428", 150, 600))
DIAGNOSES = (("E11.900", "2型糖尿病"), ("I10.x00x002", "原发性高血压"), ("J18.900", "肺炎"),
             ("K29.700", "胃炎"), ("J06.900", "急性上呼吸道感染"))
DRUGS = (("Y0001", "阿莫西林胶囊", "0.25g*24粒", "0.5", "g", "3"),
         ("Y0002", "二甲双胍缓释片", "0.5g*30片", "0.5", "g", "9"),
         ("Y0003", "硝苯地平控释片", "30mg*7片", "30", "mg", "9"),
         ("Y0004", "奥美拉唑肠溶胶囊", "20mg*14粒", "20", "mg", "1"))


def _write(path: Path, header: list[str], rows: list[list[str]], encoding: str) -> None:
    with path.open("w", encoding=encoding, newline="") as fh:
        out = csv.writer(fh)
        out.writerow(header)
        out.writerows(rows)


def generate(folder: Path, total: int, seed: int = 20261123) -> dict[str, Path]:
    """Four export files whose rows add up to `total`: 10% patients, 20% visits, 20%
    prescription lines, 50% LIS results."""
    rng = random.Random(seed)
    n_patients, n_visits = total // 10, total // 5
    n_lines, n_lab = total // 5, total - total // 10 - 2 * (total // 5)
    patients = []
    for i in range(n_patients):
        birth = date(1940, 1, 1) + timedelta(days=rng.randrange(0, 29000))
        sex = rng.choice((1, 2))
        card = make_id(rng.choice(REGIONS), birth, rng.randrange(1, 499) * 2 - (sex == 1))
        name = rng.choice(SURNAMES) + "".join(rng.sample(GIVEN, rng.choice((1, 2))))
        patients.append([f"BA{i:07d}", name, str(sex), birth.strftime("%Y%m%d"), "01", card,
                         "01", "20", f"1{rng.choice('3589')}{rng.randrange(10**8, 10**9)}"])
    _write(folder / "basy.csv", ["BAH", "XM", "XB", "CSRQ", "ZJLX", "SFZH", "MZ", "HY", "DH"],
           patients, "gbk")
    visits = []
    day0 = date(2026, 11, 1)
    for v in range(n_visits):
        day = day0 + timedelta(days=v % 20)
        code, name = rng.choice(DIAGNOSES)
        visits.append([f"MZ{v:06d}", day.isoformat(), f"{day.isoformat()} 09:{v % 60:02d}",
                       f"BA{rng.randrange(n_patients):07d}", rng.choice(("门诊", "急诊")),
                       "内科", "李明", code, name, "10.00"])
    _write(folder / "mz_gh.csv", ["mzh", "ghrq", "jzsj", "patid", "mjzbz", "ks", "ys",
                                  "zdicd10", "zdmc", "ghf"], visits, "utf-8")
    lines = []
    for n in range(n_lines):
        visit = visits[(n // 2) % len(visits)]
        drug = DRUGS[n % len(DRUGS)]
        lines.append([f"CF{n // 2:07d}", visit[3], visit[0], visit[2], "李明", "西药",
                      str(n % 2 + 1), drug[0], drug[1], drug[2], drug[3], drug[4], "po",
                      drug[5], "1", "盒", "7"])
    _write(folder / "xt_dzcfmx.csv", ["cfh", "patid", "mzh", "kfrq", "ysxm", "cflx", "xh",
                                      "ypCode", "ypmc", "gg", "mcjl", "mcjldw", "yfCode",
                                      "pcCode", "sl", "dw", "ts"], lines, "utf-8")
    lab = []
    for n in range(n_lab):
        code, name, unit, ref, low, high = LAB[n % len(LAB)]
        value = rng.uniform(low, high)
        lab.append([f"JY{n // len(LAB):08d}", f"BA{(n // len(LAB)) % n_patients:07d}",
                    f"{2611000000 + n // len(LAB)}", code, name, f"{value:.1f}", unit, ref,
                    "2026-11-20 08:30", "2026-11-20 10:05"])
    _write(folder / "lis.csv", ["ReportID", "PatientID", "Barcode", "ItemNo", "ItemName",
                                "Result", "Units", "RefRange", "TestTime", "ReportTime"],
           lab, "utf-8")
    return {"patient": folder / "basy.csv", "visit": folder / "mz_gh.csv",
            "prescription": folder / "xt_dzcfmx.csv", "lab": folder / "lis.csv"}


MAPPING_FILES = {"patient": "patient-shouye.yaml", "visit": "visit-his.yaml",
                 "prescription": "prescription-his.yaml", "lab": "lab-lis.yaml"}


def write_manifest(files: dict[str, Path]) -> Path:
    folder = next(iter(files.values())).parent
    steps = "".join(f"  - mapping: {MAPPINGS / MAPPING_FILES[dataset]}\n    files: [{path.name}]\n"
                    for dataset, path in files.items())
    manifest = folder / "daily.yaml"
    manifest.write_text(f"hospital_oid: '{HOSPITAL_OID}'\nsteps:\n{steps}", encoding="utf-8")
    return manifest


def _import(args: list[str], env: dict[str, str]) -> tuple[int, int, int]:
    """Run `yilian import`; (rows read, rows rejected, resources written)."""
    out = subprocess.run([sys.executable, "-m", "app.cli", "import", *args], env=env,
                         capture_output=True, text=True, timeout=3600, cwd=ROOT)
    m = re.search(r"rows read (\d+), imported (\d+), rejected (\d+); resources written "
                  r"(\d+)", out.stdout)
    if m is None:
        raise RuntimeError(f"yilian import {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}")
    return int(m.group(1)), int(m.group(3)), int(m.group(4))


def read_only_seconds(files: dict[str, Path]) -> float:
    """The baseline: read, decode and CSV-parse every file in one fresh process."""
    code = ("import csv, io, sys, time\n"
            "t = time.perf_counter()\n"
            "for p in sys.argv[1:]:\n"
            "    raw = open(p, 'rb').read()\n"
            "    try:\n        text = raw.decode('utf-8')\n"
            "    except UnicodeDecodeError:\n        text = raw.decode('gb18030')\n"
            "    sum(1 for _ in csv.DictReader(io.StringIO(text)))\n"
            "print(time.perf_counter() - t)\n")
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code, *map(str, files.values())], check=True,
                   capture_output=True)
    return time.perf_counter() - start


def run_once(files: dict[str, Path], manifest: Path, var: Path, jobs: int,
             mode: str) -> dict[str, float]:
    """One import of every file into a fresh store; returns rows, resources and seconds."""
    shutil.rmtree(var, ignore_errors=True)
    env = {**os.environ, "YILIAN_VAR_DIR": str(var)}
    baseline = read_only_seconds(files)
    common = ["--jobs", str(jobs), "--report", str(var.parent / f"report-{mode}.csv")]
    start = time.perf_counter()
    if mode == "manifest":
        rows, rejected, resources = _import(["--manifest", str(manifest), *common], env)
    else:
        rows = rejected = resources = 0
        for dataset, path in files.items():
            r, j, w = _import(["--dataset", dataset, "--mapping",
                               str(MAPPINGS / MAPPING_FILES[dataset]), "--hospital-oid",
                               HOSPITAL_OID, *common, str(path)], env)
            rows, rejected, resources = rows + r, rejected + j, resources + w
    seconds = time.perf_counter() - start
    return {"rows": rows, "rejected": rejected, "resources": resources, "seconds": seconds,
            "rows_per_s": rows / seconds, "resources_per_s": resources / seconds,
            "baseline_seconds": baseline, "ratio_to_baseline": seconds / baseline}


MODES = ("manifest", "files")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="yilian-import-bench-"))
    load_at_start = os.getloadavg()
    runs: dict[str, list[dict[str, float]]] = {mode: [] for mode in MODES}
    try:
        files = generate(work, args.rows)
        manifest = write_manifest(files)
        for _ in range(args.runs):  # interleaved, so both modes see the same machine
            for mode in MODES:
                runs[mode].append(run_once(files, manifest, work / "var", args.jobs, mode))
                print(f"{mode}: {runs[mode][-1]['rows_per_s']:,.0f} rows/s", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    result = {"when": stamp, "rows": args.rows, "jobs": args.jobs, "runs": runs,
              "nproc": os.cpu_count(), "python": platform.python_version(),
              "sqlite": sqlite3.sqlite_version, "load_at_start": load_at_start,
              "load": os.getloadavg(), "code": _git_describe()}
    results = ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / f"import-{stamp}.json").write_text(json.dumps(result, indent=2))
    doc = DOCS.read_text(encoding="utf-8") if DOCS.exists() else "# Performance\n"
    DOCS.write_text(replace_section(doc, "importer", render(result)), encoding="utf-8")
    print(render(result))
    return 0


def _git_describe() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                              capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "app", "bench"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + (" + uncommitted changes" if dirty else "")


def render(result: dict[str, Any]) -> str:
    runs: dict[str, list[dict[str, float]]] = result["runs"]

    def line(mode: str, key: str, unit: str, target: str) -> str:
        values = [r[key] for r in runs[mode]]
        med = statistics.median(values)
        verdict = ""
        if key == "rows_per_s":
            verdict = "**pass**" if med >= 2000 else "**FAIL**"
        fmt = "{:,.2f}" if key == "ratio_to_baseline" else "{:,.0f}"
        return (f"| {LABELS[mode]} | {key.replace('_per_s', '/s').replace('_', ' ')} | "
                f"{fmt.format(med)} {unit} | {fmt.format(min(values))} – "
                f"{fmt.format(max(values))} | {len(values)} | {target} | {verdict} |")

    rejected = sum(r["rejected"] for mode in runs for r in runs[mode])
    start_load = tuple(round(x, 1) for x in result["load_at_start"])
    end_load = tuple(round(x, 1) for x in result["load"])
    return "\n".join([
        "## Importer throughput (issue 3)",
        "",
        f"<!-- Generated by `python -m bench.import_cn` on {result['when']}; do not edit. -->",
        "",
        f"`yilian import` end to end (read, map, validate, index, write) of a {result['rows']:,}-"
        "row mixed export of one synthetic hospital: 10% 病案首页 patients (GBK, pinyin-initial "
        "columns), 20% HIS 挂号, 20% 电子处方 lines, 50% LIS results, each file through its "
        f"shipped mapping, into a fresh store, `--jobs {result['jobs']}`. Machine: nproc "
        f"{result['nproc']}, Python {result['python']}, SQLite {result['sqlite']}, load average "
        f"{start_load} at the start and {end_load} at the end; code {result['code']}. Rows "
        f"rejected: {rejected} (all rows are valid by construction).",
        "",
        "Two ways of running it, interleaved run by run: the whole export as one "
        "`yilian import --manifest daily.yaml` (one pool of worker processes for all four "
        "files), and one `yilian import` per file (four commands, four worker pools). The "
        "baseline, taken before each run, is reading and CSV-parsing the same files in one "
        "process; the ratio says how many times that floor the import takes.",
        "",
        "Reproduce: `make bench-import` (or `.venv/bin/python -m bench.import_cn --rows 100000 "
        "--runs 3`).",
        "",
        "| run as | metric | median | min – max | runs | target | result |",
        "| --- | --- | ---: | ---: | ---: | --- | --- |",
        *(line(mode, "rows_per_s", "rows/s", "≥ 2,000 rows/s") for mode in MODES),
        *(line(mode, "resources_per_s", "resources/s", "–") for mode in MODES),
        *(line(mode, "ratio_to_baseline", "×", "–") for mode in MODES),
        "",
    ])


LABELS = {"manifest": "one `--manifest` run", "files": "one run per file"}


if __name__ == "__main__":
    raise SystemExit(main())
