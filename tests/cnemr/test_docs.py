"""docs/cnemr-mapping.md is generated from the dataset registry, mapper docstrings and mapping
files (app.cnemr.docs), and must be current."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.cnemr import documents, lab, patient
from app.cnemr.datasets import DATASETS
from app.cnemr.docs import (
    BEGIN,
    DOC,
    END,
    MAPPINGS,
    bullets,
    current_generated,
    dataset_docstring,
    generated_markdown,
    mapper_module,
    paragraphs,
    produced_resources,
    replace_generated,
)
from app.definitions.registry import load_registry

RESOURCE_TYPES = load_registry().resource_types


@pytest.fixture(scope="module")
def generated() -> str:
    return generated_markdown(RESOURCE_TYPES)


def test_the_mapping_documentation_is_current(generated: str) -> None:
    assert current_generated(DOC.read_text(encoding="utf-8")) == generated, (
        "docs/cnemr-mapping.md is stale: regenerate with `python -m app.cnemr.docs`")


def test_every_dataset_and_every_shipped_mapping_file_is_documented(generated: str) -> None:
    for name in DATASETS:
        assert f"\n### `{name}`\n" in generated
    for path in MAPPINGS.glob("*.yaml"):
        assert f"\n#### `{path.name}`" in generated


def test_every_data_element_of_every_dataset_is_listed(generated: str) -> None:
    sections = generated.split("\n### `")[1:]
    for section in sections:
        name = section.split("`", 1)[0]
        table = section.split("\n#### ", 1)[0]
        for element in DATASETS[name].elements:
            assert f"`{element}`" in table, (name, element)


def test_a_mapping_table_lists_each_column_and_its_value_translations(generated: str) -> None:
    section = generated.split("#### `patient-his.yaml`", 1)[1].split("\n#### ", 1)[0]
    assert "| `patid` | `patient_id`, `medical_record_no` |  |" in section
    assert "| `xb` | `gender_code` | 男 → 1, 女 → 2, 未知 → 0 |" in section


def test_the_mapper_module_is_found_through_the_per_row_wrapper() -> None:
    assert mapper_module(DATASETS["patient"]) is patient
    assert mapper_module(DATASETS["lab"]) is lab
    assert mapper_module(DATASETS["document"]) is documents


def test_produced_resources_come_from_the_docstring() -> None:
    summary, text = dataset_docstring(DATASETS["lab"])
    assert produced_resources(summary, text, RESOURCE_TYPES) == [
        "ServiceRequest", "Specimen", "DiagnosticReport", "Observation"]
    summary, text = dataset_docstring(DATASETS["billing"])
    assert produced_resources(summary, text, RESOURCE_TYPES) == [
        "ChargeItem", "Account", "Invoice", "Coverage", "Claim", "ClaimResponse"]


def test_a_module_with_two_datasets_documents_each_from_its_own_section() -> None:
    _, record = dataset_docstring(DATASETS["outpatient_record"])
    _, document = dataset_docstring(DATASETS["document"])
    assert "`chief_complaint`" in record and "`chief_complaint`" not in document
    assert "`document_type`" in document and "`document_type`" not in record


def test_bullets_describe_the_elements_their_lead_names() -> None:
    doc = """Rows are dicts keyed by these data elements:

- `report_id` (required): 检验报告单号 → DiagnosticReport.identifier; with `item_code`
  each Observation id.
- `item_code`: 检验项目代码 → code.
- `procedure_code_1..3`, `surgeon_1..3`: 手术及操作.
Rules: a line that is not part of a bullet.
  indented text after it belongs to no bullet: `unit`

Line level: `amount` (required) 金额 and `quantity` 数量.
"""
    elements = {"report_id", "item_code", "procedure_code_1", "procedure_code_2",
                "procedure_code_3", "surgeon_1", "surgeon_2", "surgeon_3", "unit", "amount",
                "quantity"}
    found = {b.elements: b.text for b in bullets(doc, elements)}
    assert list(found) == [("report_id",), ("item_code",),
                           ("procedure_code_1", "procedure_code_2", "procedure_code_3",
                            "surgeon_1", "surgeon_2", "surgeon_3")]
    assert found[("report_id",)].endswith("with `item_code` each Observation id.")
    assert [b.elements for b in paragraphs(doc, elements)] == [("amount", "quantity")]


def test_the_generated_section_is_replaced_between_the_marks(tmp_path: Path) -> None:
    document = f"# title\n\nwritten by hand\n\n{BEGIN}old\n{END}\n\nafter\n"
    updated = replace_generated(document, "new\n")
    assert updated == f"# title\n\nwritten by hand\n\n{BEGIN}new\n{END}\n\nafter\n"
    assert current_generated(updated) == "new\n"
    with pytest.raises(ValueError, match="GENERATED"):
        replace_generated("# no marks\n", "new\n")
