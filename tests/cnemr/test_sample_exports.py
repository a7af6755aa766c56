"""The shipped sample export (app/samples/exports/): each awkward case does what README.md says.

Every file is imported with its shipped mapping through the real Importer and FhirService into
a fresh SQLite store; then a corrected copy (the rejected and doubtful values fixed as a hospital
IT person would) is imported over it and must converge: no problem left, and the same resources
as a clean import of the corrected copy alone.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import pytest

from app.cnemr.context import (
    Hospital,
    encounter_resource_id,
    lab_observation_resource_id,
    outpatient_visit_key,
    patient_resource_id,
)
from app.cnemr.importer import DATA_ELEMENTS, ImportReport, Rejection
from app.cnemr.manifest import load_manifest
from app.cnemr.mapping import load_mapping
from app.cnemr.values import mask_id
from app.samples.exports import build
from app.samples.exports.build import (
    CHEN,
    EXPORTS,
    HOSPITAL_OID,
    LI,
    LIU,
    SUN,
    ZHANG,
    ZHAO,
    ZHOU,
    Export,
)
from tests.cnemr.exports import MAPPINGS, import_export, without_version

HOSPITAL = Hospital(HOSPITAL_OID)
ID_CARD = "urn:oid:2.16.156.10011.1.3"
BY_DATASET = {load_mapping(MAPPINGS / e.mapping, DATA_ELEMENTS).dataset: e for e in EXPORTS}
Stored = dict[tuple[str, str], dict[str, Any]]

# The rows each file must reject (severity error), by line; every other row is imported.
REJECTED_LINES = {
    "patient": {12},              # no 姓名
    "lab": {17},                  # an item without a result
    "visit": {8},                 # no 门急诊标志
    "prescription": {8},          # no 开方医生
    "homepage": {3},              # no 住院次数
    "billing": {9, 10},           # a 金额 with three decimals rejects its whole settlement
    "staff": set(),
}

# What a hospital IT person changes after reading the report: (line, column) → value, and
# lines deleted.
FIXES: dict[str, dict[tuple[int, str], str]] = {
    "patient": {(5, "zjh"): LI, (6, "zjh"): ZHAO, (7, "xb"): "女", (8, "csny"): "1979-06-20",
                (12, "xm"): "韩梅", (13, "csny"): "1993-02-13"},
    "lab": {(17, "jg"): "5.6"},
    "visit": {(8, "mjzbz"): "门诊"},
    "prescription": {(8, "ysxm"): "刘红"},
    "homepage": {(3, "zycs"): "1"},
    "billing": {(10, "je"): "27.15"},
    "staff": {},
}
DELETED_LINES = {"lab": {15}}  # the duplicate 尿比重 row the LIS join wrote twice


def sample(dataset: str) -> Path:
    return build.HERE / BY_DATASET[dataset].file_name


def run(tmp: Path, dataset: str, path: Path | None = None) -> tuple[ImportReport, Stored]:
    tmp.mkdir(parents=True, exist_ok=True)
    return import_export(tmp, BY_DATASET[dataset].mapping, [path or sample(dataset)], HOSPITAL)


def of_type(stored: Stored, rtype: str) -> list[dict[str, Any]]:
    return [r for (t, _), r in stored.items() if t == rtype]


def at(report: ImportReport, line: int, column: str) -> Rejection:
    return next(r for r in report.rejections if (r.line, r.column) == (line, column))


def id_cards(patient: dict[str, Any]) -> list[str]:
    return [i["value"] for i in patient.get("identifier", []) if i["system"] == ID_CARD]


def empty_elements(value: Any, path: str = "") -> list[str]:
    """Paths of empty strings, lists and objects: FHIR forbids them, and a blank source cell
    must give no element rather than an empty one."""
    if value in ("", [], {}) or value is None:
        return [path]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in empty_elements(v, f"{path}.{k}")]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in empty_elements(v, f"{path}[{i}]")]
    return []


def corrected_copy(dataset: str, folder: Path) -> Path:
    """The sample file with FIXES applied, in the file's own encoding."""
    export = BY_DATASET[dataset]
    text = sample(dataset).read_bytes().decode(export.encoding)
    rows = list(csv.reader(io.StringIO(text, newline="")))
    header = rows[0]
    for (line, column), value in FIXES[dataset].items():
        rows[line - 1][header.index(column)] = value
    rows = [row for number, row in enumerate(rows, start=1)
            if number not in DELETED_LINES.get(dataset, set())]
    buf = io.StringIO(newline="")
    csv.writer(buf, lineterminator="\r\n").writerows(rows)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / export.file_name
    path.write_bytes(buf.getvalue().encode(export.encoding))
    return path


# -- the files -------------------------------------------------------------------------------


def test_the_shipped_files_are_exactly_what_build_writes(tmp_path: Path) -> None:
    written = build.build(tmp_path)
    assert sorted(p.name for p in written) == sorted(
        p.name for p in build.HERE.iterdir() if p.suffix in (".csv", ".yaml"))
    for path in written:
        assert (build.HERE / path.name).read_bytes() == path.read_bytes(), (
            f"{path.name} differs from what build.py writes: run "
            "`python -m app.samples.exports.build`")


def test_every_dataset_has_a_sample_and_the_readme_names_each_file() -> None:
    assert set(REJECTED_LINES) <= set(BY_DATASET)
    readme = (build.HERE / "README.md").read_text(encoding="utf-8")
    for export in EXPORTS:
        assert export.file_name in readme
        assert f"--mapping app/cnemr/mappings/{export.mapping}" in readme


def test_the_manifest_imports_every_sample_patients_first() -> None:
    loaded = load_manifest(build.HERE / "manifest.yaml", DATA_ELEMENTS)
    assert loaded.hospital_oid == HOSPITAL_OID
    assert loaded.steps[0][1] == (sample("patient"),)
    assert sorted(p.name for _, paths in loaded.steps for p in paths) == sorted(
        e.file_name for e in EXPORTS)
    assert {m.dataset for m, _ in loaded.steps} == set(BY_DATASET)


def test_encodings_are_what_hospital_systems_write() -> None:
    patient = sample("patient").read_bytes()
    with pytest.raises(UnicodeDecodeError):
        patient.decode("utf-8")
    assert "欧阳娜娜" in patient.decode("gbk")
    homepage = sample("homepage").read_bytes()
    assert "王䶮" in homepage.decode("gb18030")
    with pytest.raises(UnicodeDecodeError):
        homepage.decode("gbk")  # 䶮 (CJK Extension A) has no GBK code
    assert sample("lab").read_bytes().startswith(b"\xef\xbb\xbf")  # UTF-8 with BOM, as Excel


def test_the_report_lists_every_rejected_row(tmp_path: Path) -> None:
    for dataset, lines in REJECTED_LINES.items():
        report, _ = run(tmp_path / dataset, dataset)
        assert report.rows_rejected == len(lines), (dataset, report.rejections)
        assert {r.line for r in report.rejections if r.severity == "error"} == lines, dataset
        assert all(r.file == str(sample(dataset)) and r.rule and r.message
                   for r in report.rejections)
        out = tmp_path / f"{dataset}-report.csv"
        report.write_csv(out)
        listed = list(csv.DictReader(io.StringIO(out.read_text(encoding="utf-8-sig"))))
        assert {int(r["line"]) for r in listed if r["severity"] == "error"} == lines


# -- 患者基本信息 (GBK) -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def patients(tmp_path_factory: pytest.TempPathFactory) -> tuple[ImportReport, Stored]:
    return run(tmp_path_factory.mktemp("patient"), "patient")


def patient(stored: Stored, patid: str) -> dict[str, Any]:
    return stored[("Patient", patient_resource_id(HOSPITAL, patid))]


def test_a_gbk_file_is_detected_and_read(patients: tuple[ImportReport, Stored]) -> None:
    report, stored = patients
    assert report.rows_read == 13
    assert {"张建国", "欧阳娜娜", "马晓梅", "李秀英", "陈静"} <= {
        p["name"][0]["text"] for p in of_type(stored, "Patient")}


def test_a_legacy_15_digit_id_is_upgraded_to_18(patients: tuple[ImportReport, Stored]) -> None:
    report, stored = patients
    assert id_cards(patient(stored, "100234")) == [LI]
    note = at(report, 5, "zjh")
    assert (note.rule, note.severity) == ("gb11643-legacy-15", "warning")


def test_a_wrong_check_digit_is_left_out_and_reported(
        patients: tuple[ImportReport, Stored]) -> None:
    report, stored = patients
    zhao = patient(stored, "100235")
    assert id_cards(zhao) == []
    assert zhao["name"][0]["text"] == "赵志强"  # the rest of the row is imported
    problem = at(report, 6, "zjh")
    assert problem.file == str(sample("patient"))
    assert problem.value == mask_id(build.wrong_check(ZHAO))  # masked, not in clear
    assert (problem.rule, problem.severity) == ("gb11643-check-digit", "warning")
    assert "check character" in problem.message


def test_a_sex_or_birth_date_the_id_contradicts_is_reported_and_both_are_kept(
        patients: tuple[ImportReport, Stored]) -> None:
    report, stored = patients
    sun = patient(stored, "100236")
    assert (sun["gender"], id_cards(sun)) == ("male", [SUN])  # recorded 男, ID says 女
    assert at(report, 7, "xb").rule == "id-sex-mismatch"
    zhou = patient(stored, "100237")
    assert (zhou["birthDate"], id_cards(zhou)) == ("1979-06-02", [ZHOU])  # ID says 06-20
    assert at(report, 8, "csny").rule == "id-birth-mismatch"
    assert {at(report, 7, "xb").severity, at(report, 8, "csny").severity} == {"warning"}


def test_exact_duplicate_rows_give_one_resource(patients: tuple[ImportReport, Stored]) -> None:
    _, stored = patients
    zhang = [p for p in of_type(stored, "Patient") if ZHANG in id_cards(p)]
    assert len(zhang) == 1
    # 13 rows: one duplicate, one rejected
    assert len(of_type(stored, "Patient")) == 11


def test_blank_optional_fields_give_no_empty_elements(
        patients: tuple[ImportReport, Stored]) -> None:
    _, stored = patients
    wu = without_version(patient(stored, "100238"))
    assert not {"birthDate", "telecom", "address", "maritalStatus"} & set(wu)
    assert id_cards(wu) == []
    for resource in stored.values():
        assert empty_elements(resource) == [], resource["id"]


def test_full_width_digits_and_every_date_form_are_read(
        patients: tuple[ImportReport, Stored]) -> None:
    report, stored = patients
    assert [t["value"] for t in patient(stored, "100239")["telecom"]] == ["13801380001"]
    assert id_cards(patient(stored, "100243")) == [LIU]
    assert id_cards(patient(stored, "100239")) == [CHEN]
    births = {patid: patient(stored, patid)["birthDate"]
              for patid in ("100231", "100232", "100233", "100239")}
    assert births == {"100231": "1962-03-14", "100232": "1988-11-02",  # YYYY-MM-DD, YYYYMMDD
                      "100233": "1990-05-12", "100239": "1985-03-08"}  # YYYY/MM/DD, 年月日
    assert "birthDate" not in patient(stored, "100242")  # 1993-02-30 left out
    assert (at(report, 13, "csny").rule, at(report, 13, "csny").severity) == (
        "date-calendar", "warning")


# -- the other datasets ------------------------------------------------------------------------


def test_a_reused_outpatient_number_gives_two_encounters(tmp_path: Path) -> None:
    report, stored = run(tmp_path, "visit")
    encounters = {r["id"]: r for r in of_type(stored, "Encounter")}
    first = encounter_resource_id(HOSPITAL, outpatient_visit_key("0087", "2026-11-20"))
    second = encounter_resource_id(HOSPITAL, outpatient_visit_key("0087", "2026-11-21"))
    assert encounters[first]["subject"]["reference"] == "Patient/" + patient_resource_id(
        HOSPITAL, "100231")
    assert encounters[second]["subject"]["reference"] == "Patient/" + patient_resource_id(
        HOSPITAL, "100233")
    # 7 rows: 0087 twice on two days, 0031 exported twice (one Encounter), 0108 rejected
    assert len(encounters) == 5
    assert encounters[first]["period"]["start"] == "2026-11-20T08:31:00+08:00"  # YYYY/MM/DD HH:MM
    fee = next(c for c in of_type(stored, "ChargeItem")
               if c["context"]["reference"] == "Encounter/" + encounter_resource_id(
                   HOSPITAL, outpatient_visit_key("0031", "2026-11-20")))  # 2026年11月20日
    assert fee["priceOverride"] == {"value": 10, "currency": "CNY"}  # full-width １０.００
    unseen = encounters[encounter_resource_id(HOSPITAL, outpatient_visit_key("0012",
                                                                             "2026-11-20"))]
    assert "participant" not in unseen and "diagnosis" not in unseen
    assert at(report, 8, "mjzbz").severity == "error"


def test_qualitative_lab_results_stay_text_and_comparisons_keep_their_comparator(
        tmp_path: Path) -> None:
    report, stored = run(tmp_path, "lab")

    def obs(report_id: str, item: str) -> dict[str, Any]:
        return stored[("Observation", lab_observation_resource_id(HOSPITAL, report_id, item))]

    assert obs("JY20261120003", "HBSAG")["valueString"] == "阴性"
    assert obs("JY20261120004", "PRO")["valueString"] == "+"
    crp = obs("JY20261120006", "HSCRP")["valueQuantity"]
    assert (crp["comparator"], crp["value"], crp["code"]) == ("<", 0.5, "mg/L")
    assert obs("JY20261120001", "WBC")["interpretation"][0]["coding"][0]["code"] == "H"  # ↑
    # the duplicate 尿比重 row is one Observation; the blank 尿素 result is not imported
    assert (at(report, 15, "xmdm").rule, at(report, 15, "xmdm").severity) == (
        "duplicate-item", "warning")
    assert ("Observation", lab_observation_resource_id(HOSPITAL, "JY20261120005", "UREA")) \
        not in stored
    assert len(of_type(stored, "Observation")) == 14
    assert len(of_type(stored, "DiagnosticReport")) == 6


def test_full_width_doses_are_read_and_a_prescription_without_doctor_is_rejected(
        tmp_path: Path) -> None:
    report, stored = run(tmp_path, "prescription")
    herbs = [m for m in of_type(stored, "MedicationRequest")
             if m["groupIdentifier"]["value"] == "CF202611210007"]
    doses = sorted(m["dosageInstruction"][0]["doseAndRate"][0]["doseQuantity"]["value"]
                   for m in herbs)
    assert doses == [10, 15, 30]  # typed as full-width ３０, １５, １０
    assert len(of_type(stored, "MedicationRequest")) == 6
    assert (at(report, 8, "ysxm").rule, at(report, 8, "ysxm").severity) == ("required", "error")


def test_a_gb18030_rare_character_name_arrives_intact(tmp_path: Path) -> None:
    report, stored = run(tmp_path, "homepage")
    wang = patient(stored, "100241")
    assert wang["name"][0]["text"] == "王䶮"
    assert wang["birthDate"] == "1949-12-25"  # 1949年12月25日
    assert len(of_type(stored, "Encounter")) == 1  # 邓建华's 首页 lacks 住院次数
    assert at(report, 3, "zycs").severity == "error"


def test_an_amount_with_three_decimals_rejects_its_settlement(tmp_path: Path) -> None:
    report, stored = run(tmp_path, "billing")
    problem = at(report, 10, "je")
    assert (problem.value, problem.rule, problem.severity) == (
        "27.150", "amount-two-decimals", "error")
    assert at(report, 9, "jsid").rule == "settlement-rejected"
    assert {i["identifier"][0]["value"] for i in of_type(stored, "Invoice")} == {
        "0012611200153", "0012611210021"}  # 发票号 of the two settlements imported


def test_the_staff_export_imports_cleanly(tmp_path: Path) -> None:
    report, stored = run(tmp_path, "staff")
    assert report.rejections == []
    assert len(of_type(stored, "Practitioner")) == 5
    assert {o["name"] for o in of_type(stored, "Organization")} >= {
        build.HOSPITAL_NAME, "心血管内科", "急诊科"}


# -- fixing the rejected rows converges --------------------------------------------------------


@pytest.mark.parametrize("dataset", sorted(REJECTED_LINES))
def test_rerunning_after_fixing_the_rejected_rows_converges(tmp_path: Path,
                                                           dataset: str) -> None:
    first, _ = run(tmp_path / "store", dataset)
    fixed = corrected_copy(dataset, tmp_path / "fixed")
    second, converged = run(tmp_path / "store", dataset, fixed)
    assert second.rejections == [] and second.rows_rejected == 0, second.rejections
    assert second.rows_read == first.rows_read - len(DELETED_LINES.get(dataset, ()))
    # the store holds exactly what a clean import of the corrected file gives: the first run
    # left no duplicate and no stale resource behind
    _, clean = run(tmp_path / "clean", dataset, fixed)
    assert converged.keys() == clean.keys()
    assert {k: without_version(v) for k, v in converged.items()} == {
        k: without_version(v) for k, v in clean.items()}
    again, rerun = run(tmp_path / "store", dataset, fixed)
    assert again.rejections == [] and rerun.keys() == converged.keys()


def test_fixes_touch_only_lines_the_report_names(tmp_path: Path) -> None:
    for dataset, fixes in FIXES.items():
        report, _ = run(tmp_path / dataset, dataset)
        reported = {(r.line, r.column) for r in report.rejections}
        assert set(fixes) <= reported, dataset
        assert DELETED_LINES.get(dataset, set()) <= {line for line, _ in reported}


def test_export_rows_match_their_header() -> None:
    for export in EXPORTS:
        assert isinstance(export, Export)
        assert all(len(row) == len(export.header) for row in export.rows), export.file_name
