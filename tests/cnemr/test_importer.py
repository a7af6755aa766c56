"""Importing hospital exports: three column styles, encodings, rejected-row report, reruns, CLI."""

from __future__ import annotations

import asyncio
from datetime import date
from pathlib import Path
from typing import Any

import orjson
import pytest

from app.cli import main
from app.cnemr.context import Hospital
from app.cnemr.importer import DATA_ELEMENTS, Importer, ImportReport
from app.cnemr.mapping import MappingError, load_mapping
from app.pipeline.hooks import Hooks
from app.samples.identity import make_id
from app.search.query import parse_search
from app.server import build_service
from tests.cnemr.exports import import_of_types, write_csv
from tests.conftest import make_settings

MAPPINGS = Path(__file__).resolve().parents[2] / "app" / "cnemr" / "mappings"
HOSPITAL = Hospital("2.16.156.10011.1.5.110000001")
ZHANG = make_id("110105", date(1962, 3, 14), 31)  # 男, 北京朝阳
OUYANG = make_id("440106", date(1988, 11, 2), 42)  # 女, 广州天河
MA = make_id("640102", date(1990, 5, 12), 2)  # 女, 银川 (回族)

# The same three patients as each export style writes them: 居民健康卡号, 职业 (GB/T 2261.4 code,
# HIS word), 现住址行政区划代码 and 联系人 (姓名, GB/T 4761 关系 as code and HIS word, 电话, 地址).
PEOPLE = [
    {"id": "BA100231", "name": "张建国", "sex": ("1", "男"), "birth": ("1962-03-14", "19620314"),
     "card": ZHANG, "eth": "01", "mar": ("20", "已婚"), "phone": "13910012345",
     "health_card": "H110105000100231", "job": ("80", "退休"), "division": "110105",
     "contact": ("王秀兰", ("1", "妻子"), "13910012346", "北京市朝阳区团结湖北里3号楼2单元501")},
    {"id": "BA100232", "name": "欧阳娜娜", "sex": ("2", "女"), "birth": ("1988-11-02", "19881102"),
     "card": OUYANG, "eth": "01", "mar": ("10", "未婚"), "phone": "13602211234",
     "health_card": "H440106000100232", "job": ("17", "职员"), "division": "440106",
     "contact": ("欧阳建华", ("5", "父亲"), "020-87654321", "广东省广州市天河区天河北路233号")},
    {"id": "BA100233", "name": "马晓梅", "sex": ("2", "女"), "birth": ("1990-05-12", "19900512"),
     "card": MA, "eth": "03", "mar": ("20", "已婚"), "phone": "13995012345",
     "health_card": "H640102000100233", "job": ("27", "农民"), "division": "640102",
     "contact": ("马建军", ("7", "哥哥"), "13995012346", "宁夏银川市兴庆区解放东街18号")},
]
OCCUPATION = "https://fhir.yilian.cn/StructureDefinition/occupation"
DIVISION = "https://fhir.yilian.cn/StructureDefinition/address-division-code"




def ws363_file(tmp: Path) -> Path:
    """WS 363 style: no 职业 column (its 职业类别代码 is GB/T 6565, see patient-ws363.yaml)."""
    return write_csv(tmp / "患者基本信息.csv",
                     ["患者ID", "姓名", "性别代码", "出生日期", "身份证件类别代码", "身份证件号码",
                      "民族", "婚姻状况代码", "电话号码", "病案号", "现住址行政区划代码",
                      "居民健康卡号", "联系人姓名", "联系人与患者的关系代码", "联系人电话号码",
                      "联系人地址"],
                     [[p["id"], p["name"], p["sex"][0], p["birth"][0], "01", p["card"], p["eth"],
                       p["mar"][0], p["phone"], p["id"], p["division"], p["health_card"],
                       p["contact"][0], p["contact"][1][0], p["contact"][2], p["contact"][3]]
                      for p in PEOPLE], "utf-8")


def shouye_file(tmp: Path) -> Path:
    """首页 style: no 行政区划代码 column."""
    return write_csv(tmp / "basy.csv",
                     ["BAH", "XM", "XB", "CSRQ", "ZJLX", "SFZH", "MZ", "HY", "DH", "JKKH", "ZY",
                      "LXRXM", "GX", "LXRDH", "LXRDZ"],
                     [[p["id"], p["name"], p["sex"][0], p["birth"][1], "01", p["card"], p["eth"],
                       p["mar"][0], p["phone"], p["health_card"], p["job"][0], p["contact"][0],
                       p["contact"][1][0], p["contact"][2], p["contact"][3]] for p in PEOPLE],
                     "gbk")


def his_file(tmp: Path) -> Path:
    """HIS style: every element, 性别, 婚姻, 职业 and 联系人关系 as words."""
    return write_csv(tmp / "xt_brjbxx.csv",
                     ["patid", "xm", "xb", "csny", "zjlx", "zjh", "mz", "hyzk", "dh", "xzzqh",
                      "jkkh", "zy", "lxr", "lxrgx", "lxrdh", "lxrdz"],
                     [[p["id"], p["name"], p["sex"][1], p["birth"][0], "01", p["card"], p["eth"],
                       p["mar"][1], p["phone"], p["division"], p["health_card"], p["job"][1],
                       p["contact"][0], p["contact"][1][1], p["contact"][2], p["contact"][3]]
                      for p in PEOPLE], "gb18030")


def run_import(tmp: Path, mapping_name: str, files: list[Path]
               ) -> tuple[ImportReport, list[dict[str, Any]]]:
    return import_of_types(tmp, mapping_name, files, HOSPITAL, "Patient")


def without_meta(resources: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k != "meta"} for r in resources]


def without_extension(patients: list[dict[str, Any]], url: str) -> list[dict[str, Any]]:
    """The patients as a style without the column behind extension `url` would give them."""
    out = []
    for patient in patients:
        copy = orjson.loads(orjson.dumps(patient))
        for holder in (copy, *copy.get("address", [])):
            holder["extension"] = [e for e in holder.get("extension", []) if e["url"] != url]
            if not holder["extension"]:
                del holder["extension"]
        copy["address"] = [a for a in copy.get("address", []) if set(a) != {"use"}]
        if not copy["address"]:
            del copy["address"]
        out.append(copy)
    return out


def test_three_export_styles_import_the_same_hospital_to_the_same_fhir(tmp_path: Path) -> None:
    results = []
    for name, make in (("patient-ws363.yaml", ws363_file), ("patient-shouye.yaml", shouye_file),
                       ("patient-his.yaml", his_file)):
        work = tmp_path / name
        work.mkdir()
        report, patients = run_import(work, name, [make(work)])
        assert report.rows_rejected == 0, report.rejections
        assert len(patients) == 3
        results.append(without_meta(patients))
    ws363, shouye, his = results
    # The HIS export has every element; each other style lacks one column, and agrees with it
    # on everything else.
    assert ws363 == without_extension(his, OCCUPATION)
    assert shouye == without_extension(his, DIVISION)
    ma = next(p for p in his if p["name"][0]["text"] == "马晓梅")
    assert {"system": "urn:oid:2.16.156.10011.1.3", "value": MA} in [
        {k: i[k] for k in ("system", "value")} for i in ma["identifier"]]
    assert {"system": "urn:oid:2.16.156.10011.1.19", "value": "H640102000100233"} in [
        {k: i[k] for k in ("system", "value")} for i in ma["identifier"]]
    assert ma["extension"][1]["valueCodeableConcept"]["coding"][0]["code"] == "27"
    assert ma["address"][0]["extension"][0]["valueCoding"]["code"] == "640102"
    for patient, person in zip(sorted(his, key=lambda p: p["identifier"][0]["value"]),
                               sorted(PEOPLE, key=lambda p: p["card"]), strict=True):
        [contact] = patient["contact"]
        assert contact["name"] == {"text": person["contact"][0]}
        assert contact["relationship"][0]["coding"][0]["code"] == person["contact"][1][0]
        assert contact["telecom"][0]["value"] == person["contact"][2]
        assert contact["address"] == {"text": person["contact"][3]}
    # 哥哥 through the HIS values table: 7 兄、弟、姐、妹, v3 sibling, as the code gives it
    assert ma["contact"][0]["relationship"][0]["coding"][1]["code"] == "SIB"


def test_rejected_rows_are_reported_with_file_line_column_and_rule(tmp_path: Path) -> None:
    bad_card = ZHANG[:-1] + ("0" if ZHANG[-1] != "0" else "1")
    path = write_csv(tmp_path / "basy.csv", ["BAH", "XM", "XB", "CSRQ", "SFZH"], [
        ["BA1", "张建国", "1", "19620314", ZHANG],
        ["BA2", "", "2", "19881102", OUYANG],          # no name: rejected
        ["BA3", "李四", "1", "19700101", bad_card],     # wrong check digit: reported
    ], "gbk")
    report, patients = run_import(tmp_path, "patient-shouye.yaml", [path])
    assert report.rows_read == 3
    assert report.rows_rejected == 1
    assert {p["name"][0]["text"] for p in patients} == {"张建国", "李四"}
    missing = next(r for r in report.rejections if r.line == 3)
    assert (missing.file, missing.column, missing.severity) == (str(path), "XM", "error")
    check = next(r for r in report.rejections if r.line == 4)
    assert check.column == "SFZH"
    assert "check" in check.rule
    assert bad_card not in check.value  # the 身份证号 is masked in the report


def test_reimporting_after_fixing_rows_converges(tmp_path: Path) -> None:
    path = ws363_file(tmp_path)
    first, patients = run_import(tmp_path, "patient-ws363.yaml", [path])
    second, again = run_import(tmp_path, "patient-ws363.yaml", [path])
    assert first.rows_rejected == second.rows_rejected == 0
    assert without_meta(patients) == without_meta(again)


def test_lis_export_imports_reports_and_observations(tmp_path: Path) -> None:
    header = ["ReportID", "PatientID", "Barcode", "GroupName", "ItemNo", "ItemName", "Result",
              "Units", "RefRange", "Abnormal_Flg", "TestTime", "ReportTime"]
    rows = [["JY20261120001", "BA100231", "2611200017", "血常规", "WBC", "白细胞计数", "11.2",
             "10^9/L", "3.5-9.5", "H", "2026-11-20 08:30", "2026-11-20 10:05"],
            ["JY20261120001", "BA100231", "2611200017", "血常规", "HGB", "血红蛋白", "135",
             "g/L", "130-175", "", "2026-11-20 08:30", "2026-11-20 10:05"],
            ["JY20261120002", "BA100231", "2611200018", "乙肝表面抗原", "HBsAg", "乙肝表面抗原",
             "阴性", "", "阴性", "N", "2026-11-20 08:30", "2026-11-20 10:05"]]
    path = write_csv(tmp_path / "lis.csv", header, rows, "gbk")

    async def go() -> tuple[ImportReport, dict[str, int]]:
        service, _ = build_service(make_settings(tmp_path), Hooks())
        await service.store.start()
        try:
            mapping = load_mapping(MAPPINGS / "lab-lis.yaml", DATA_ELEMENTS)
            report = await Importer(service, HOSPITAL).import_files(mapping, [path])
            counts = {}
            for rtype in ("DiagnosticReport", "Observation"):
                query, _ = parse_search((rtype,), [], service.parse_ctx)
                counts[rtype] = (await service.store.search(query)).total or 0
            return report, counts
        finally:
            await service.store.close()

    report, counts = asyncio.run(go())
    assert report.rows_rejected == 0, report.rejections
    assert counts == {"DiagnosticReport": 2, "Observation": 3}


def test_a_mapping_with_unknown_data_elements_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("dataset: patient\ncolumns:\n  XM: fullname\n", encoding="utf-8")
    with pytest.raises(MappingError, match="fullname"):
        load_mapping(bad, DATA_ELEMENTS)


def test_cli_imports_and_writes_the_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("YILIAN_VAR_DIR", str(tmp_path / "var"))
    path = shouye_file(tmp_path)
    report = tmp_path / "report.csv"
    code = main(["import", "--dataset", "patient", "--mapping",
                 str(MAPPINGS / "patient-shouye.yaml"), "--hospital-oid", HOSPITAL.oid,
                 "--report", str(report), str(path)])
    assert code == 0
    assert "rows read 3, imported 3, rejected 0" in capsys.readouterr().out
    assert report.read_text(encoding="utf-8-sig").startswith("file,line,column")
    assert main(["import", "--dataset", "lab", "--mapping",
                 str(MAPPINGS / "patient-shouye.yaml"), "--hospital-oid", HOSPITAL.oid,
                 str(path)]) == 2


def test_import_cn_operation_imports_over_http_and_reports_rejections(tmp_path: Path) -> None:
    import base64

    from fastapi.testclient import TestClient

    from app.server import create_app

    csv_bytes = (shouye_file(tmp_path).read_bytes()
                 + "BA9,,1,19700101,01\r\n".encode("gbk"))
    params = {"resourceType": "Parameters", "parameter": [
        {"name": "dataset", "valueCode": "patient"},
        {"name": "mapping", "valueString": "patient-shouye"},
        {"name": "hospitalOid", "valueString": HOSPITAL.oid},
        {"name": "file", "valueAttachment": {"contentType": "text/csv", "title": "basy.csv",
                                             "data": base64.b64encode(csv_bytes).decode()}}]}
    with TestClient(create_app(make_settings(tmp_path))) as client:
        r = client.post("/fhir/$import-cn", json=params,
                        headers={"Content-Type": "application/fhir+json"})
        assert r.status_code == 200, r.text
        out = {p["name"]: p for p in r.json()["parameter"]}
        assert out["rowsRead"]["valueInteger"] == 4
        assert out["rowsRejected"]["valueInteger"] == 1
        rejection = {p["name"]: p for p in out["rejection"]["part"]}
        assert rejection["file"]["valueString"] == "basy.csv"
        assert rejection["line"]["valueInteger"] == 5
        assert rejection["column"]["valueString"] == "XM"
        assert client.get("/fhir/Patient?name=zhangjianguo").json()["total"] == 1
        bad = {**params, "parameter": [*params["parameter"][:1],
                                       {"name": "mapping", "valueString": "nonexistent"},
                                       *params["parameter"][2:]]}
        assert client.post("/fhir/$import-cn", json=bad,
                           headers={"Content-Type": "application/fhir+json"}).status_code == 400
        cs = client.get("/fhir/metadata").json()
        assert {"name": "import-cn",
                "definition": "https://fhir.yilian.cn/OperationDefinition/import-cn"} in \
            cs["rest"][0]["operation"]
        assert client.get("/fhir/OperationDefinition/import-cn").status_code == 200


def test_a_blank_column_never_overwrites_what_another_column_gave_the_same_element() -> None:
    mapping = load_mapping(MAPPINGS / "billing-his.yaml", DATA_ELEMENTS)
    two = type(mapping)(mapping.dataset, {"mzfy": ("total_amount",), "zyfy": ("total_amount",)})
    assert two.apply({"mzfy": "100.00", "zyfy": ""})["total_amount"] == "100.00"
    assert two.apply({"mzfy": "", "zyfy": "2380.50"})["total_amount"] == "2380.50"
    assert two.apply({"mzfy": "", "zyfy": ""})["total_amount"] == ""
