"""Reading hospital exports: CSV (UTF-8, GBK, GB18030) and JSON Lines, record by record.

Every record comes with its line number in the file, so a rejected row can be found again.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class SourceError(ValueError):
    """A file that cannot be read at all (as opposed to a bad row in it)."""


def decode(raw: bytes, encoding: str) -> str:
    """Decode an export: `auto` tries UTF-8 (with or without BOM), then GB18030 (⊇ GBK)."""
    if encoding != "auto":
        try:
            return raw.decode("utf-8-sig" if encoding == "utf-8" else encoding)
        except UnicodeDecodeError as exc:
            raise SourceError(f"the file is not valid {encoding}: {exc}") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    try:
        return raw.decode("gb18030")
    except UnicodeDecodeError as exc:
        raise SourceError(f"the file is neither UTF-8 nor GBK/GB18030: {exc}; declare its "
                          "encoding in the mapping file") from None


Record = dict[str, Any] | str  # a str is why that line could not be read as a record


def read_records(path: Path, encoding: str = "auto") -> Iterator[tuple[int, Record]]:
    """(line number, record) for each data row of a .csv, .tsv or .jsonl file."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SourceError(f"{path}: cannot read: {exc}") from None
    suffix = path.suffix.lower()
    text = decode(raw, encoding)
    if suffix in (".csv", ".tsv", ".txt"):
        yield from _csv(text, "\t" if suffix == ".tsv" else ",")
    elif suffix in (".jsonl", ".ndjson"):
        yield from _jsonl(text, path)
    else:
        raise SourceError(f"{path}: unsupported file type {suffix!r}; use .csv, .tsv or .jsonl")


def _csv(text: str, delimiter: str) -> Iterator[tuple[int, Record]]:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header: list[str] | None = None
    for row in reader:
        if header is None:
            header = [h.strip() for h in row]
            continue
        if not any(cell.strip() for cell in row):
            continue
        yield reader.line_num, dict(zip(header, row, strict=False))


def _jsonl(text: str, path: Path) -> Iterator[tuple[int, Record]]:
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            yield number, f"not JSON: {exc}"
            continue
        yield number, record if isinstance(record, dict) else "each line must be a JSON object"
