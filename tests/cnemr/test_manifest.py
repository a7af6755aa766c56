"""A daily export imported as one run (`yilian import --manifest`), and how rows are shared out
among worker processes."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from app.cli import main
from app.cnemr.importer import DATA_ELEMENTS, shard_rows
from app.cnemr.manifest import load_manifest
from app.cnemr.mapping import MappingError, load_mapping
from app.config import Settings
from app.pipeline.hooks import Hooks
from app.search.query import parse_search
from app.server import build_service
from tests.cnemr.exports import write_csv
from tests.cnemr.test_importer import HOSPITAL, MAPPINGS, shouye_file

LIS_HEADER = ["ReportID", "PatientID", "Barcode", "GroupName", "ItemNo", "ItemName", "Result",
              "Units", "RefRange", "Abnormal_Flg", "TestTime", "ReportTime"]
ITEMS = [("WBC", "白细胞计数", "6.1", "10^9/L", "3.5-9.5"), ("HGB", "血红蛋白", "128", "g/L",
                                                         "130-175"),
         ("PLT", "血小板计数", "210", "10^9/L", "125-350")]


def lis_rows(reports: int) -> list[list[str]]:
    """`reports` 血常规 reports of three items each for the three patients of shouye_file."""
    patients = ("BA100231", "BA100232", "BA100233")
    return [[f"JY2026112{n:04d}", patients[n % 3], f"26112{n:05d}", "血常规", code, name, value,
             unit, ref, "", "2026-11-20 08:30", "2026-11-20 10:05"]
            for n in range(reports) for code, name, value, unit, ref in ITEMS]


def daily_export(tmp_path: Path, reports: int = 40) -> Path:
    shouye_file(tmp_path)
    write_csv(tmp_path / "lis_20261120.csv", LIS_HEADER, lis_rows(reports), "gbk")
    manifest = tmp_path / "daily.yaml"
    manifest.write_text(
        "# 每日导出\n"
        f"hospital_oid: '{HOSPITAL.oid}'\n"
        "steps:\n"
        "  - mapping: patient-shouye\n"
        "    files: [basy.csv]\n"
        "  - mapping: lab-lis.yaml\n"
        "    files: [lis_20261120.csv]\n", encoding="utf-8")
    return manifest


def counts(var: Path) -> dict[str, int]:
    async def go() -> dict[str, int]:
        service, _ = build_service(Settings(var_dir=var), Hooks())
        await service.store.start()
        try:
            out = {}
            for rtype in ("Patient", "DiagnosticReport", "Observation"):
                query, _ = parse_search((rtype,), [], service.parse_ctx)
                out[rtype] = (await service.store.search(query)).total or 0
            return out
        finally:
            await service.store.close()
    return asyncio.run(go())


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_a_manifest_imports_every_step_in_one_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        jobs: str) -> None:
    var = tmp_path / "var"
    monkeypatch.setenv("YILIAN_VAR_DIR", str(var))
    manifest = daily_export(tmp_path)
    report = tmp_path / "report.csv"
    assert main(["import", "--manifest", str(manifest), "--jobs", jobs,
                 "--report", str(report)]) == 0
    out = capsys.readouterr().out
    assert "rows read 123, imported 123, rejected 0" in out, out
    assert counts(var) == {"Patient": 3, "DiagnosticReport": 40, "Observation": 120}
    # a second run of the same export updates in place
    assert main(["import", "--manifest", str(manifest), "--jobs", jobs,
                 "--report", str(report)]) == 0
    assert counts(var) == {"Patient": 3, "DiagnosticReport": 40, "Observation": 120}


def test_rejected_rows_of_every_step_reach_one_report(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("YILIAN_VAR_DIR", str(tmp_path / "var"))
    manifest = daily_export(tmp_path, reports=3)
    rows = lis_rows(3)
    rows[4][6] = ""  # 血红蛋白 of the second report has no result: line 6 of the LIS file
    write_csv(tmp_path / "lis_20261120.csv", LIS_HEADER, rows, "gbk")
    report = tmp_path / "report.csv"
    assert main(["import", "--manifest", str(manifest), "--jobs", "2",
                 "--report", str(report)]) == 1
    assert "rows read 12, imported 11, rejected 1" in capsys.readouterr().out
    text = report.read_text(encoding="utf-8-sig")
    assert "lis_20261120.csv,6,Result," in text, text


def test_manifest_problems_are_explained_and_exit_2(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("YILIAN_VAR_DIR", str(tmp_path / "var"))
    manifest = daily_export(tmp_path)
    assert main(["import", "--manifest", str(manifest), "--mapping", "x.yaml"]) == 2
    assert "do not also give" in capsys.readouterr().err
    broken = tmp_path / "broken.yaml"
    broken.write_text("steps:\n  - mapping: patient-shouye\n    files: [nowhere.csv]\n",
                      encoding="utf-8")
    assert main(["import", "--manifest", str(broken), "--hospital-oid", HOSPITAL.oid]) == 2
    assert "no such file" in capsys.readouterr().err
    broken.write_text("steps:\n  - mapping: patient-xyz\n    files: [basy.csv]\n",
                      encoding="utf-8")
    with pytest.raises(MappingError, match="shipped mapping"):
        load_manifest(broken, DATA_ELEMENTS)
    broken.write_text("steps:\n  - mapping: patient-shouye\n    files: [basy.csv]\n",
                      encoding="utf-8")
    assert main(["import", "--manifest", str(broken)]) == 2
    assert "--hospital-oid is required" in capsys.readouterr().err
    assert main(["import", "--hospital-oid", HOSPITAL.oid]) == 2
    assert "or --manifest" in capsys.readouterr().err


def test_shards_keep_groups_whole_and_file_order() -> None:
    mapping = load_mapping(MAPPINGS / "lab-lis.yaml", DATA_ELEMENTS)
    rows = [(n + 2, mapping.apply(dict(zip(LIS_HEADER, r, strict=True))))
            for n, r in enumerate(lis_rows(10))]
    shards = shard_rows(mapping, rows, 4)
    assert [line for shard in shards for line, _ in shard] == [line for line, _ in rows]
    reports = [{row["report_id"] for _, row in shard} for shard in shards]
    assert all(not (a & b) for i, a in enumerate(reports) for b in reports[i + 1:])
    assert len(shards) == 4 and max(map(len, shards)) <= 8 + 2  # 30 rows / 4, groups of 3
    patients = load_mapping(MAPPINGS / "patient-shouye.yaml", DATA_ELEMENTS)
    assert len(shard_rows(patients, [(2, {"patient_id": "BA1"})], 4)) == 1
