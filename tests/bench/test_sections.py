"""docs/performance.md holds the numbers of several benchmarks: each rewrites its own section and
keeps the others'."""

from __future__ import annotations

from bench.sections import carry_sections, replace_section


def test_a_section_is_appended_then_replaced_in_place() -> None:
    doc = "# Performance\n\nread: 80 %\n"
    once = replace_section(doc, "importer", "## Importer\n\n1,906 rows/s")
    assert once.startswith(doc.rstrip("\n"))
    twice = replace_section(once, "importer", "## Importer\n\n2,520 rows/s")
    assert "2,520 rows/s" in twice and "1,906" not in twice
    assert twice.count("<!-- section:importer begin -->") == 1


def test_regenerating_the_report_keeps_the_other_benchmarks_sections() -> None:
    old = replace_section("# Performance\n\nold numbers\n", "importer", "2,520 rows/s")
    new = carry_sections(old, "# Performance\n\nnew numbers\n")
    assert "new numbers" in new and "old numbers" not in new
    assert "2,520 rows/s" in new
    # a section the new report writes itself is not duplicated
    assert carry_sections(old, old) == old
