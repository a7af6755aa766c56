"""Named sections of docs/performance.md that different benchmarks write.

`bench.run` regenerates the document; `bench.import_cn` owns the importer section. Each keeps
the other's section as it was, so one file holds every measured number.
"""

from __future__ import annotations

import re
from pathlib import Path


def _markers(name: str) -> tuple[str, str]:
    return f"<!-- section:{name} begin -->", f"<!-- section:{name} end -->"


def replace_section(text: str, name: str, body: str) -> str:
    """`text` with section `name` set to `body` (appended at the end when it is new)."""
    begin, end = _markers(name)
    block = f"{begin}\n{body.strip()}\n{end}\n"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end) + r"\n?", re.S)
    if pattern.search(text):
        return pattern.sub(lambda _: block, text, count=1)
    return text.rstrip("\n") + "\n\n" + block


def carry_sections(old: str, new: str) -> str:
    """`new` plus every named section of `old` that `new` does not have."""
    for match in re.finditer(r"<!-- section:([\w.-]+) begin -->\n(.*?)<!-- section:\1 end -->",
                             old, re.S):
        name, body = match.group(1), match.group(2)
        if _markers(name)[0] not in new:
            new = replace_section(new, name, body)
    return new


def write_section(docs: Path, name: str, body: str) -> None:
    """Set section `name` of `docs` to `body`, keeping everything else (a new document when
    there is none)."""
    text = docs.read_text(encoding="utf-8") if docs.exists() else "# Performance\n"
    docs.write_text(replace_section(text, name, body), encoding="utf-8")
