"""`$import-cn`: import a hospital export of a Chinese EMR dataset over HTTP (system level).

    POST [base]/$import-cn   Parameters:
      dataset      valueCode     patient | lab | … (the datasets of app.cnemr.datasets)
      mapping      valueString   a shipped mapping name (app/cnemr/mappings/<name>.yaml) or the
                                 YAML text of the hospital's own mapping file
      hospitalOid  valueOid/valueString   the hospital's organisation OID
      file         valueAttachment (1..*)  contentType text/csv, text/tab-separated-values,
                                 application/x-ndjson or (Excel .xlsx, first worksheet or the
                                 mapping's `sheet`) application/vnd.openxmlformats-
                                 officedocument.spreadsheetml.sheet; data base64, title the file
                                 name (used in the report)

Answers a Parameters resource: rowsRead, rowsImported, rowsRejected, resourcesWritten and one
`rejection` part per problem (file, line, column, value, rule, severity, message). The same
importer as `yilian import`; the interaction passes the authorize and audit hooks like any other,
and every resource it writes is authorized as the caller's own write (c and u on its type).
"""

from __future__ import annotations

import base64
import binascii
import re
import tempfile
from pathlib import Path
from typing import Any

from app.cnemr.context import Hospital
from app.cnemr.importer import DATA_ELEMENTS, Importer, ImportReport
from app.cnemr.mapping import MappingError, load_mapping
from app.fhir.interactions import Call, FhirService, Result
from app.fhir.outcome import error
from app.pipeline.hooks import Interaction

MAPPINGS = Path(__file__).resolve().parents[2] / "cnemr" / "mappings"
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
SUFFIX = {"text/csv": ".csv", "text/tab-separated-values": ".tsv",
          "application/x-ndjson": ".jsonl", "application/fhir+ndjson": ".jsonl",
          "application/jsonl": ".jsonl", XLSX: ".xlsx"}


async def import_cn_operation(svc: FhirService, call: Call, body: bytes | None) -> Result:
    interaction = Interaction("operation", None, None, "$import-cn", call.in_bundle)
    await svc.authorize(call, interaction)
    params = svc.parse_body(body or b"", "Parameters")
    parts = params.get("parameter")
    if not isinstance(parts, list):
        raise error(400, "required", "$import-cn takes a Parameters resource with dataset, "
                    "mapping, hospitalOid and file parameters", "Parameters.parameter")
    values: dict[str, Any] = {}
    files: list[dict[str, Any]] = []
    for p in parts:
        if not isinstance(p, dict):
            continue
        name = p.get("name")
        if name == "file" and isinstance(p.get("valueAttachment"), dict):
            files.append(p["valueAttachment"])
        elif isinstance(name, str):
            values[name] = next((v for k, v in p.items() if k.startswith("value")), None)
    dataset = values.get("dataset")
    if dataset not in DATA_ELEMENTS:
        raise error(400, "value", f"dataset must be one of {', '.join(sorted(DATA_ELEMENTS))}",
                    "dataset")
    if not files:
        raise error(400, "required", "send at least one file parameter (an Attachment with "
                    "contentType and base64 data)", "file")
    try:
        hospital = Hospital(str(values.get("hospitalOid") or "").removeprefix("urn:oid:"))
    except ValueError as exc:
        raise error(400, "value", str(exc), "hospitalOid") from None
    with tempfile.TemporaryDirectory(prefix="yilian-import-") as tmp:
        folder = Path(tmp)
        mapping = _mapping(str(values.get("mapping") or ""), folder, dataset)
        paths = [_write_file(folder, i, f) for i, f in enumerate(files)]
        # Every resource is written as the caller: each entry is held to their scopes.
        report = await Importer(svc, hospital, principal=call.principal).import_files(mapping,
                                                                                      paths)
    names = {str(p): str(f.get("title") or p.name) for p, f in zip(paths, files, strict=True)}
    await svc.audit(call, interaction, 200, [])
    return Result(200, _parameters(report, names))


def _mapping(text: str, folder: Path, dataset: str) -> Any:
    if re.fullmatch(r"[a-z0-9][a-z0-9-]{0,63}", text):
        path = MAPPINGS / f"{text}.yaml"
        if not path.is_file():
            known = ", ".join(sorted(p.stem for p in MAPPINGS.glob("*.yaml")))
            raise error(400, "not-found", f"no shipped mapping {text!r}; known: {known}",
                        "mapping")
    else:
        path = folder / "mapping.yaml"
        path.write_text(text, encoding="utf-8")
    try:
        mapping = load_mapping(path, DATA_ELEMENTS)
    except MappingError as exc:
        raise error(400, "invalid", str(exc).replace(str(folder), "mapping"), "mapping") from None
    if mapping.dataset != dataset:
        raise error(400, "invalid", f"the mapping is for dataset {mapping.dataset!r}, not "
                    f"{dataset!r}", "mapping")
    return mapping


def _write_file(folder: Path, index: int, attachment: dict[str, Any]) -> Path:
    ctype = str(attachment.get("contentType") or "").split(";")[0].strip().lower()
    suffix = SUFFIX.get(ctype)
    if suffix is None:
        raise error(415, "not-supported", f"file {index}: contentType {ctype!r} is not "
                    f"supported; use one of {', '.join(sorted(SUFFIX))}", f"file[{index}]")
    try:
        data = base64.b64decode(str(attachment.get("data") or ""), validate=True)
    except (binascii.Error, ValueError):
        raise error(400, "invalid", f"file {index}: data is not base64", f"file[{index}]") \
            from None
    path = folder / f"file-{index}{suffix}"
    path.write_bytes(data)
    return path


def _parameters(report: ImportReport, names: dict[str, str]) -> dict[str, Any]:
    out: list[dict[str, Any]] = [
        {"name": "rowsRead", "valueInteger": report.rows_read},
        {"name": "rowsImported", "valueInteger": report.rows_accepted},
        {"name": "rowsRejected", "valueInteger": report.rows_rejected},
        {"name": "resourcesWritten", "valueInteger": report.resources_written},
    ]
    for r in report.rejections:
        fields = [("file", names.get(r.file, r.file)), ("column", r.column), ("value", r.value),
                  ("rule", r.rule), ("severity", r.severity), ("message", r.message)]
        part: list[dict[str, Any]] = [{"name": k, "valueString": v} for k, v in fields if v]
        if r.line:
            part.insert(1, {"name": "line", "valueInteger": r.line})
        out.append({"name": "rejection", "part": part})
    return {"resourceType": "Parameters", "parameter": out}
