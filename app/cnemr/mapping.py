"""A hospital's export layout, declared in a YAML mapping file (onboarding is a file, not code).

    dataset: patient            # which mapper: a dataset of app.cnemr.datasets (patient, lab,
                                # visit, prescription, homepage, billing, staff, exam, …)
    description: 病案首页上传 (拼音首字母)
    encoding: auto              # auto (UTF-8, else GB18030 ⊇ GBK) | utf-8 | gbk | gb18030
    sheet: 病案首页             # optional, .xlsx only: the worksheet to read (default: the first)
    columns:                    # source column → data element (or a list of them)
      XM: name
      XB: gender_code
      BAH: [patient_id, medical_record_no]
    values:                     # optional: per data element, source value → standard value
      gender_code: {男: "1", 女: "2"}

The canonical data elements of each dataset are documented in its mapper module (the
`map_rows` of its entry in `app.cnemr.datasets`) and listed in docs/cnemr-mapping.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ENCODINGS = ("auto", "utf-8", "gbk", "gb18030")


class MappingError(ValueError):
    """A mapping file that cannot be used, with what to fix."""


@dataclass(frozen=True)
class ColumnMapping:
    dataset: str
    columns: dict[str, tuple[str, ...]]
    values: dict[str, dict[str, str]] = field(default_factory=dict)
    encoding: str = "auto"
    description: str = ""
    sheet: str | None = None  # the worksheet of an .xlsx export; None: the first

    def source_column(self, element: str) -> str:
        """The source column that feeds a data element (for error reports)."""
        for column, targets in self.columns.items():
            if element in targets:
                return column
        return element

    def apply(self, record: dict[str, Any]) -> dict[str, str]:
        """A source record → a row keyed by canonical data elements, values translated.

        When several columns feed one element (门诊费用金额 and 住院费用金额 → total_amount),
        the first of them in the mapping file that is not blank gives the value; a blank cell
        never overwrites a value another column gave.
        """
        row: dict[str, str] = {}
        for column, elements in self.columns.items():
            raw = record.get(column)
            if raw is None:
                continue
            text = str(raw).strip()
            for element in elements:
                if row.get(element):
                    continue
                translated = self.values.get(element, {}).get(text)
                row[element] = translated if translated is not None else text
        return row


def load_mapping(path: Path, known_elements: dict[str, frozenset[str]]) -> ColumnMapping:
    """Read and check a mapping file; `known_elements` are each dataset's data elements."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise MappingError(f"{path}: cannot read the mapping file: {exc}") from None
    if not isinstance(data, dict):
        raise MappingError(f"{path}: a mapping file is a YAML mapping with dataset and columns")
    dataset = data.get("dataset")
    if dataset not in known_elements:
        raise MappingError(f"{path}: dataset must be one of {', '.join(sorted(known_elements))}, "
                           f"got {dataset!r}")
    columns = data.get("columns")
    if not isinstance(columns, dict) or not columns:
        raise MappingError(f"{path}: columns must map source column names to data elements")
    known = known_elements[dataset]
    targets = {str(k): tuple(str(e) for e in (v if isinstance(v, list) else [v]))
               for k, v in columns.items()}
    unknown = sorted(e for t in targets.values() for e in t if e not in known)
    if unknown:
        raise MappingError(f"{path}: unknown data elements for dataset {dataset}: "
                           f"{', '.join(unknown)} (known: {', '.join(sorted(known))})")
    values = data.get("values") or {}
    if not isinstance(values, dict) or not all(isinstance(v, dict) for v in values.values()):
        raise MappingError(f"{path}: values must map a data element to a table of "
                           "source value → standard value")
    encoding = str(data.get("encoding", "auto")).lower()
    if encoding not in ENCODINGS:
        raise MappingError(f"{path}: encoding must be one of {', '.join(ENCODINGS)}")
    sheet = data.get("sheet")
    if sheet is not None and (isinstance(sheet, bool) or not isinstance(sheet, str | int)
                              or not str(sheet).strip()):
        raise MappingError(f"{path}: sheet must be the name of the worksheet to read, as Excel "
                           "shows it on the sheet tab (leave it out to read the first sheet)")
    return ColumnMapping(
        dataset=dataset,
        columns=targets,
        values={str(e): {str(k): str(v) for k, v in t.items()} for e, t in values.items()},
        encoding=encoding,
        description=str(data.get("description", "")),
        sheet=None if sheet is None else str(sheet).strip(),
    )
