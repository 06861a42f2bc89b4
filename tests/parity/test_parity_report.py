"""parity/report.py writes PARITY.md with a row for every golden and every method of issue 19."""

from __future__ import annotations

from parity import fixture, report


def test_report_lists_every_golden_and_every_method(tmp_path):
    out = report.main(["--out", str(tmp_path / "PARITY.md")])
    text = out.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| method")]
    for name in fixture.golden_names():
        row = next((r for r in rows if f"| `{name}` |" in r), None)
        assert row is not None, f"golden {name} has no row"
        _, meta = fixture.load_golden(name)
        assert meta["official"]["commit"][:10] in row and ("matches" in row or "DIFFERS" in row)
    for label, _ in report.METHODS:
        assert any(r.startswith(f"| {label} ") or f" / {label} " in r or f"| {label} /" in r for r in rows), label
    assert "## Deviations kept on purpose" in text and "cached augmented views" in text


def test_a_method_without_golden_is_not_yet_measured():
    lines = report.table([])
    assert len(lines) == 2 + len(report.METHODS)
    for label, line in zip((label for label, _ in report.METHODS), lines[2:]):
        # a method with no official code says why; every other one without a golden is "not yet measured"
        assert ("no official code" if label in report.NO_OFFICIAL else "not yet measured") in line
