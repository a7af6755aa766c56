"""Reading hospital exports: CSV (UTF-8, GBK, GB18030), JSON Lines and Excel .xlsx, record by
record.

Every record comes with its line number in the file (for .xlsx, the Excel row number), so a
rejected row can be found again. A record that cannot be read comes as the reason instead.

Excel cells are turned into the text the hospital's export meant (ECMA-376 stores every number
as an IEEE double, and Excel keeps 15 significant digits of it):
- whole numbers stored as floats lose the '.0' (13910012345.0 → '13910012345'), and a custom
  format of zeros ('000000') gives back the leading zeros it displays;
- a whole number of 16 or more digits stored as a float (a 身份证号 or card number typed into a
  number cell) has already lost its last digits: the row is not read, with the reason;
- dates → YYYY-MM-DD, date-times → YYYY-MM-DD HH:MM:SS, empty cells → ''.
"""

from __future__ import annotations

import csv
import io
import json
import re
import zipfile
from collections.abc import Iterator
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import openpyxl
from openpyxl.utils.exceptions import InvalidFileException


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


def read_records(path: Path, encoding: str = "auto",
                 sheet: str | None = None) -> Iterator[tuple[int, Record]]:
    """(line number, record) for each data row of a .csv, .tsv, .jsonl or .xlsx file.

    `encoding` applies to text files; `sheet` names the worksheet of an .xlsx (default: the
    first worksheet) and is ignored for text files.
    """
    suffix = path.suffix.lower()
    if suffix in XLSX_SUFFIXES:
        yield from _xlsx(path, sheet)
        return
    if suffix == ".xls":
        raise SourceError(f"{path}: .xls (Excel 97-2003) workbooks cannot be read; save the "
                          "export as .xlsx or CSV")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SourceError(f"{path}: cannot read: {exc}") from None
    text = decode(raw, encoding)
    if suffix in (".csv", ".tsv", ".txt"):
        yield from _csv(text, "\t" if suffix == ".tsv" else ",")
    elif suffix in (".jsonl", ".ndjson"):
        yield from _jsonl(text, path)
    else:
        raise SourceError(f"{path}: unsupported file type {suffix!r}; use .csv, .tsv, .jsonl "
                          "or .xlsx")


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


# -- Excel (ECMA-376 SpreadsheetML, .xlsx) --------------------------------------------------------

XLSX_SUFFIXES = (".xlsx", ".xlsm")
# An encrypted (password-protected) .xlsx is not a zip but an OLE2 compound file (MS-OFFCRYPTO).
_OLE2_MAGIC = bytes.fromhex("d0cf11e0a1b11ae1")
# Excel keeps 15 significant digits of a number; a whole number from 10^15 up may have lost some.
_EXACT_LIMIT = 10 ** 15
_ZEROS = re.compile(r"0+")
_TIME_TOKEN = re.compile(r"[hs]", re.I)
_QUOTED = re.compile(r'"[^"]*"|\[[^\]]*\]|\\.')


def _xlsx(path: Path, sheet: str | None) -> Iterator[tuple[int, Record]]:
    try:
        with path.open("rb") as fh:
            magic = fh.read(8)
    except OSError as exc:
        raise SourceError(f"{path}: cannot read: {exc}") from None
    if magic == _OLE2_MAGIC:
        raise SourceError(f"{path}: the workbook is password-protected (encrypted), or is an "
                          "Excel 97-2003 .xls renamed to .xlsx; remove the password (or save it "
                          "as .xlsx) and export again")
    try:
        # data_only: the values Excel computed for formula cells, not the formulas
        book = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except (zipfile.BadZipFile, InvalidFileException, KeyError, OSError) as exc:
        raise SourceError(f"{path}: not a readable .xlsx workbook (the file is damaged or "
                          f"not Excel 2007+): {exc}") from None
    except Exception as exc:  # damaged XML parts surface as any of openpyxl's or lxml's errors
        raise SourceError(f"{path}: the workbook is damaged and cannot be read: "
                          f"{type(exc).__name__}: {exc}") from None
    try:
        sheets = book.worksheets
        if sheet is None:
            if not sheets:
                raise SourceError(f"{path}: the workbook has no worksheet")
            ws = sheets[0]
        else:
            found = [s for s in sheets if s.title.strip() == sheet.strip()]
            if not found:
                raise SourceError(
                    f"{path}: the mapping file names sheet {sheet!r}, which this workbook does "
                    f"not have; its sheets are: {', '.join(s.title for s in sheets)}")
            ws = found[0]
        # Exporters often write a wrong <dimension>; read the rows that are there instead.
        ws.reset_dimensions()
        yield from _sheet_rows(ws)
    except SourceError:
        raise
    except Exception as exc:  # a damaged sheet part surfaces as any of openpyxl's errors
        raise SourceError(f"{path}: the workbook is damaged and cannot be read: "
                          f"{type(exc).__name__}: {exc}") from None
    finally:
        book.close()


def _sheet_rows(ws: Any) -> Iterator[tuple[int, Record]]:
    header: list[str] | None = None
    for number, cells in enumerate(ws.iter_rows(), start=1):
        texts: list[str] = []
        problems: list[str] = []
        for cell in cells:
            try:
                texts.append(cell_text(cell.value, getattr(cell, "number_format", "General")))
            except ValueError as exc:
                name = header[len(texts)] if header and len(texts) < len(header) else ""
                problems.append(f"column {name or len(texts) + 1} (cell "
                                f"{getattr(cell, 'coordinate', '?')}): {exc}")
                texts.append("")
        if not any(t.strip() for t in texts) and not problems:
            continue
        if header is None:
            header = [t.strip() for t in texts]
            continue
        if problems:
            yield number, "; ".join(problems)
            continue
        # trailing empty cells are not stored in the sheet: they are blank, not missing
        texts += [""] * (len(header) - len(texts))
        yield number, dict(zip(header, texts, strict=False))


def cell_text(value: Any, number_format: str = "General") -> str:
    """The text an Excel cell stands for, as a CSV export of the same table would have it;
    ValueError when the cell has already lost information (digits beyond Excel's fifteen)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, datetime):
        if value.microsecond >= 500_000:
            value += timedelta(seconds=1)
        value = value.replace(microsecond=0)
        if value.time() == time(0) and not _has_time(number_format):
            return value.date().isoformat()
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, time):
        return value.replace(microsecond=0).strftime("%H:%M:%S")
    if isinstance(value, timedelta):
        seconds = round(value.total_seconds())
        return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
    if isinstance(value, float):
        if value.is_integer():
            if abs(value) >= _EXACT_LIMIT:
                # the value is not repeated: it is usually a personal identifier
                raise ValueError(
                    f"a {len(str(int(abs(value))))}-digit number was stored as a number, and "
                    "Excel keeps only 15 significant digits, so its last digits are lost (a "
                    "身份证号 or card number typed into a number cell). Format the column as "
                    "text (文本) in the source system and export again")
            return _padded(int(value), number_format)
        return f"{Decimal(format(value, '.15g')):f}"
    if isinstance(value, int):
        return _padded(value, number_format)
    return str(value)


def _padded(number: int, number_format: str) -> str:
    # A custom format of zeros ('000000') is how spreadsheets display codes with leading zeros.
    if number >= 0 and _ZEROS.fullmatch(number_format or ""):
        return str(number).zfill(len(number_format))
    return str(number)


def _has_time(number_format: str) -> bool:
    return bool(_TIME_TOKEN.search(_QUOTED.sub("", number_format or "")))
