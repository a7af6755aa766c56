"""Reading exports: Excel .xlsx workbooks as a hospital's export means them (cell types, sheets,
Excel row numbers, damaged and password-protected files), through the importer and $import-cn."""

from __future__ import annotations

import base64
import zipfile
from datetime import date, datetime
from pathlib import Path
from typing import Any

import openpyxl
import pytest
from fastapi.testclient import TestClient

from app.cli import main
from app.cnemr.context import Hospital
from app.cnemr.importer import DATA_ELEMENTS, ImportReport, count_rows, read_rows
from app.cnemr.mapping import MappingError, load_mapping
from app.cnemr.sources import SourceError, cell_text, read_records
from app.samples.identity import make_id
from app.server import create_app
from tests.cnemr.exports import import_export
from tests.conftest import make_settings

HOSPITAL = Hospital("2.16.156.10011.1.5.110000001")
ZHANG = make_id("110105", date(1962, 3, 14), 31)  # 男, 北京朝阳
LIU = make_id("320106", date(1975, 8, 21), 64)  # 女, 南京鼓楼
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
HIS_HEADER = ["patid", "xm", "xb", "csny", "zjlx", "zjh", "mz", "hyzk", "dh", "jtzz"]


def write_xlsx(path: Path, sheets: dict[str, list[list[Any]]],
               formats: dict[str, str] | None = None) -> Path:
    """A workbook with one worksheet per entry, rows appended as given (None = empty cell);
    `formats` sets number formats by cell of the first sheet ('F2': '000000')."""
    book = openpyxl.Workbook()
    book.remove(book.active)
    for title, rows in sheets.items():
        ws = book.create_sheet(title)
        for row in rows:
            ws.append(row)
    for ref, fmt in (formats or {}).items():
        book.worksheets[0][ref].number_format = fmt
    book.save(path)
    return path


def his_rows() -> list[list[Any]]:
    """xt_brjbxx as an Excel export types it: numbers in number cells, dates as dates."""
    return [
        HIS_HEADER,
        [100231.0, "张建国", "男", date(1962, 3, 14), 1.0, ZHANG, 1, "已婚", 13910012345.0,
         "北京市朝阳区安贞路2号"],
        [100232, "刘淑芬", "女", datetime(1975, 8, 21), "01", LIU, None, None, None, None],
    ]


def test_xlsx_cells_become_the_text_the_export_meant(tmp_path: Path) -> None:
    path = write_xlsx(tmp_path / "xt_brjbxx.xlsx", {"患者": [
        [],                                   # blank first row: the header is the next one
        *his_rows(),
        [None] * 10,                          # a blank row in between is skipped
        [100233, "王芳", "女", "1980-02-29", "01", None, None, None, "010-65123456", None],
    ]})
    records = list(read_records(path))
    assert [line for line, _ in records] == [3, 4, 6]  # Excel row numbers
    first = records[0][1]
    assert isinstance(first, dict)
    assert first["patid"] == "100231"
    assert first["csny"] == "1962-03-14"
    assert first["zjlx"] == "1"
    assert first["dh"] == "13910012345"
    assert first["zjh"] == ZHANG
    second = records[1][1]
    assert isinstance(second, dict)
    assert (second["patid"], second["csny"], second["mz"], second["dh"]) == (
        "100232", "1975-08-21 00:00:00", "", "")  # a date-time cell keeps its time


@pytest.mark.parametrize(("value", "number_format", "text"), [
    (13910012345.0, "General", "13910012345"),
    (12.5, "General", "12.5"),
    (0.1 + 0.2, "General", "0.3"),           # Excel's 15 significant digits, not float noise
    (12.345, "0.00", "12.345"),              # the stored value, not the display rounding
    (1e-05, "General", "0.00001"),
    (123.0, "000000", "000123"),             # leading zeros a zero format displays
    (-5.0, "General", "-5"),
    (datetime(2026, 11, 20, 8, 30), "yyyy-mm-dd h:mm", "2026-11-20 08:30:00"),
    (datetime(2026, 11, 20, 0, 0), "yyyy/m/d h:mm", "2026-11-20 00:00:00"),
    (datetime(2026, 11, 20, 0, 0), "yyyy\"年\"m\"月\"d\"日\"", "2026-11-20"),
    (datetime(2026, 11, 20, 9, 59, 59, 999_700), "General", "2026-11-20 10:00:00"),
    (True, "General", "1"),
    (None, "General", ""),
    ("阴性", "@", "阴性"),
])
def test_cell_text(value: Any, number_format: str, text: str) -> None:
    assert cell_text(value, number_format) == text


def test_cell_formats_are_read_from_the_workbook(tmp_path: Path) -> None:
    # 门诊号 0087 typed as the number 87 in a '0000' cell; 挂号日期 as a date serial number
    path = write_xlsx(tmp_path / "mz_gh.xlsx", {"挂号": [["mzh", "ghrq", "ghf"],
                                                         [87, 46346.0, 10.0]]},
                      {"A2": "0000", "B2": "yyyy-mm-dd", "C2": "0.00"})
    assert list(read_records(path)) == [(2, {"mzh": "0087", "ghrq": "2026-11-20",
                                             "ghf": "10"})]


def test_an_id_number_stored_as_a_number_has_lost_digits_and_its_row_is_not_read(
        tmp_path: Path) -> None:
    rows = his_rows()
    rows[1][5] = float(ZHANG)  # Excel keeps 15 significant digits: the last three are gone
    path = write_xlsx(tmp_path / "xt_brjbxx.xlsx", {"Sheet1": rows})
    records = dict(read_records(path))
    reason = records[2]
    assert isinstance(reason, str)
    assert "column zjh" in reason and "F2" in reason and "15 significant digits" in reason
    assert ZHANG[:15] not in reason  # personal data stays out of the report
    assert isinstance(records[3], dict)

    report, stored = import_export(tmp_path, "patient-his.yaml", [path], HOSPITAL)
    assert (report.rows_read, report.rows_rejected) == (2, 1)
    rejection = report.rejections[0]
    assert (rejection.file, rejection.line, rejection.rule, rejection.severity) == (
        str(path), 2, "format", "error")
    names = {r["name"][0]["text"] for (t, _), r in stored.items() if t == "Patient"}
    assert names == {"刘淑芬"}


def test_an_xlsx_export_imports_like_its_csv(tmp_path: Path) -> None:
    path = write_xlsx(tmp_path / "xt_brjbxx.xlsx", {"Sheet1": his_rows()})
    report, stored = import_export(tmp_path, "patient-his.yaml", [path], HOSPITAL)
    assert report.rows_rejected == 0, report.rejections
    zhang = next(r for (t, _), r in stored.items()
                 if t == "Patient" and r["name"][0]["text"] == "张建国")
    assert zhang["birthDate"] == "1962-03-14"
    assert {"system": "urn:oid:2.16.156.10011.1.3", "value": ZHANG} in [
        {k: i[k] for k in ("system", "value")} for i in zhang["identifier"]]
    assert [t["value"] for t in zhang["telecom"]] == ["13910012345"]


def test_the_mapping_names_the_sheet_to_read(tmp_path: Path) -> None:
    path = write_xlsx(tmp_path / "导出.xlsx", {
        "说明": [["本文件由 HIS 于 2026-11-20 导出"]],
        "病人基本信息": his_rows()})
    mapping_file = tmp_path / "patient-xlsx.yaml"
    mapping_file.write_text(
        (Path("app/cnemr/mappings/patient-his.yaml").read_text(encoding="utf-8")
         + "sheet: 病人基本信息\n"), encoding="utf-8")
    mapping = load_mapping(mapping_file, DATA_ELEMENTS)
    assert mapping.sheet == "病人基本信息"
    records = list(read_records(path, mapping.encoding, mapping.sheet))
    assert [line for line, _ in records] == [2, 3]
    # without a sheet name, the first worksheet is read
    assert list(read_records(path)) == []
    with pytest.raises(SourceError, match=r"sheet '门诊挂号'.*说明, 病人基本信息"):
        list(read_records(path, sheet="门诊挂号"))
    # and the importer reads the sheet the mapping names
    report = ImportReport()
    assert [line for line, _ in read_rows(mapping, path, report)] == [2, 3]
    assert count_rows([path], mapping) == 2


@pytest.mark.parametrize("sheet", ["''", "[病人基本信息]", "true"])
def test_a_sheet_that_is_not_a_name_is_refused(tmp_path: Path, sheet: str) -> None:
    mapping_file = tmp_path / "bad.yaml"
    mapping_file.write_text(f"dataset: patient\nsheet: {sheet}\ncolumns:\n  xm: name\n",
                            encoding="utf-8")
    with pytest.raises(MappingError, match="sheet must be the name of the worksheet"):
        load_mapping(mapping_file, DATA_ELEMENTS)


def test_a_damaged_workbook_is_a_source_error(tmp_path: Path) -> None:
    good = write_xlsx(tmp_path / "good.xlsx", {"Sheet1": his_rows()})
    damaged = tmp_path / "damaged.xlsx"
    damaged.write_bytes(good.read_bytes()[:600])  # cut off in transfer
    with pytest.raises(SourceError, match=r"not a readable \.xlsx workbook"):
        list(read_records(damaged))
    renamed = tmp_path / "basy.xlsx"
    renamed.write_bytes("BAH,XM\nBA1,张建国\n".encode("gbk"))  # a CSV renamed to .xlsx
    with pytest.raises(SourceError, match=r"not a readable \.xlsx workbook"):
        list(read_records(renamed))


@pytest.mark.parametrize("part", ["xl/worksheets/sheet1.xml", "xl/workbook.xml",
                                  "xl/styles.xml"])
def test_a_workbook_with_a_damaged_part_is_a_source_error(tmp_path: Path, part: str) -> None:
    good = write_xlsx(tmp_path / "good.xlsx", {"Sheet1": his_rows()})
    damaged = tmp_path / "damaged.xlsx"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(damaged, "w") as out:
        for item in src.infolist():
            data = src.read(item)
            out.writestr(item, data[:len(data) // 2] if item.filename == part else data)
    with pytest.raises(SourceError, match="damaged"):
        list(read_records(damaged))


def test_a_password_protected_workbook_is_a_source_error(tmp_path: Path) -> None:
    # An encrypted .xlsx is an OLE2 compound file holding EncryptionInfo and EncryptedPackage.
    locked = tmp_path / "加密.xlsx"
    locked.write_bytes(bytes.fromhex("d0cf11e0a1b11ae1") + bytes(504))
    with pytest.raises(SourceError, match="password-protected"):
        list(read_records(locked))


def test_an_old_xls_workbook_is_a_source_error(tmp_path: Path) -> None:
    old = tmp_path / "xt_brjbxx.xls"
    old.write_bytes(bytes.fromhex("d0cf11e0a1b11ae1") + bytes(504))
    with pytest.raises(SourceError, match=r"save the export as \.xlsx or CSV"):
        list(read_records(old))


def test_a_damaged_workbook_is_reported_and_the_import_goes_on(tmp_path: Path) -> None:
    damaged = tmp_path / "damaged.xlsx"
    damaged.write_bytes(b"PK\x03\x04 not really a zip")
    good = write_xlsx(tmp_path / "good.xlsx", {"Sheet1": his_rows()})
    report, stored = import_export(tmp_path, "patient-his.yaml", [damaged, good], HOSPITAL)
    assert [(r.file, r.line, r.rule) for r in report.rejections] == [
        (str(damaged), None, "file")]
    assert sum(1 for t, _ in stored if t == "Patient") == 2


def test_import_cn_accepts_an_xlsx_attachment(tmp_path: Path) -> None:
    rows = his_rows()
    rows.append([100234, "", "女", date(1990, 5, 12), "01", None, None, None, None, None])
    data = write_xlsx(tmp_path / "xt_brjbxx.xlsx", {"Sheet1": rows}).read_bytes()
    params = {"resourceType": "Parameters", "parameter": [
        {"name": "dataset", "valueCode": "patient"},
        {"name": "mapping", "valueString": "patient-his"},
        {"name": "hospitalOid", "valueString": HOSPITAL.oid},
        {"name": "file", "valueAttachment": {"contentType": XLSX, "title": "病人基本信息.xlsx",
                                             "data": base64.b64encode(data).decode()}}]}
    with TestClient(create_app(make_settings(tmp_path))) as client:
        r = client.post("/fhir/$import-cn", json=params,
                        headers={"Content-Type": "application/fhir+json"})
        assert r.status_code == 200, r.text
        out = {p["name"]: p for p in r.json()["parameter"]}
        assert (out["rowsRead"]["valueInteger"], out["rowsRejected"]["valueInteger"]) == (3, 1)
        rejection = {p["name"]: p for p in out["rejection"]["part"]}
        assert rejection["file"]["valueString"] == "病人基本信息.xlsx"
        assert rejection["line"]["valueInteger"] == 4  # the Excel row
        assert rejection["column"]["valueString"] == "xm"
        assert client.get("/fhir/Patient?name=刘淑芬").json()["total"] == 1
        old_excel = {**params, "parameter": [*params["parameter"][:3], {
            "name": "file", "valueAttachment": {"contentType": "application/vnd.ms-excel",
                                                "data": base64.b64encode(data).decode()}}]}
        r = client.post("/fhir/$import-cn", json=old_excel,
                        headers={"Content-Type": "application/fhir+json"})
        assert r.status_code == 415
        assert XLSX in r.text


def test_yilian_import_reads_an_xlsx_export(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("YILIAN_VAR_DIR", str(tmp_path / "var"))
    path = write_xlsx(tmp_path / "病人基本信息.xlsx", {"Sheet1": his_rows()})
    code = main(["import", "--dataset", "patient", "--mapping",
                 "app/cnemr/mappings/patient-his.yaml", "--hospital-oid", HOSPITAL.oid,
                 "--jobs", "1", "--report", str(tmp_path / "report.csv"), str(path)])
    assert code == 0
    assert "rows read 2, imported 2, rejected 0" in capsys.readouterr().out
