"""Damaged records say so: one line naming the file (and the CSV line), never a traceback."""

from __future__ import annotations

import pytest

from arseg.cli import main


def _one_line(capsys) -> str:
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1, err
    for word in ("Traceback", "pandas", "tokenizing", "JSONDecodeError", "ScannerError"):
        assert word not in err
    return err


def _cut(path, keep: float = 0.6) -> None:
    """Cut a file in the middle of a line (a writer killed mid-row)."""
    text = path.read_text()
    cut = int(len(text) * keep)
    while text[cut - 1] == "\n":
        cut += 1
    path.write_text(text[:cut])


def test_trend_names_a_cut_metrics_csv_and_its_line(fake_run, capsys) -> None:
    csv_path = fake_run / "metrics.csv"
    _cut(csv_path)
    n_lines = len(csv_path.read_text().splitlines())
    assert main(["trend", str(fake_run)]) == 2
    err = _one_line(capsys)
    assert err == (
        f"arseg: error: {csv_path} is damaged: line {n_lines} is cut short (the file ends in "
        "the middle of it: its writer was stopped while writing)"
    )


def test_rows_of_two_writers_are_named_by_line(fake_run, tmp_path, capsys) -> None:
    csv_path = fake_run / "metrics.csv"
    lines = csv_path.read_text().splitlines(keepends=True)
    width = len(lines[0].split(","))
    # a row of another writer with its own columns, as two processes appending to one file
    # leave it ("Expected 13 fields in line 4, saw 16" in pandas)
    damaged = [*lines[:3], ",".join(["0.5"] * 16) + "\n", *lines[3:]]
    csv_path.write_text("".join(damaged))
    assert main(["trend", str(fake_run)]) == 2
    err = _one_line(capsys)
    assert err == (
        f"arseg: error: {csv_path} is damaged: line 4 has 16 fields where the header has "
        f"{width} (two processes wrote it at once, or a write was cut short)"
    )
    # two rows written into each other: the right number of fields, not numbers
    mixed = "0.20.3" + lines[3][lines[3].index(",") :]
    damaged = [*lines[:3], mixed, *lines[4:]]
    csv_path.write_text("".join(damaged))
    assert len(mixed.split(",")) == width
    assert main(["curves", str(fake_run), "-o", str(tmp_path / "c.png")]) == 2
    err = _one_line(capsys)
    assert (
        err
        == f"arseg: error: {csv_path} is damaged: line 4, column 'epoch': '0.20.3' is not a number"
    )


@pytest.mark.parametrize("content", ["", '{"best_miou": 0.4', "[1, 2]"])
def test_report_names_a_damaged_summary(fake_arms, tmp_path, capsys, content) -> None:
    ce, ar = fake_arms
    summary = ar / "seed0" / "summary.json"
    summary.write_text(content)
    out = tmp_path / "report"
    assert (
        main(["report", str(ce / "seed0"), str(ar / "seed0"), "-o", str(out), "--no-images"]) == 2
    )
    err = _one_line(capsys)
    assert err.startswith(f"arseg: error: {summary} is damaged: ")


def test_compare_names_a_damaged_evaluation_or_config(fake_arms, capsys) -> None:
    ce, ar = fake_arms
    args = ["compare", str(ce), str(ar), "--n-boot", "200"]
    metrics = ar / "seed1" / "eval" / "val" / "metrics.json"
    metrics.write_text('{"miou": 0.5, "classes": ["sky", ')
    assert main(args) == 2
    assert _one_line(capsys).startswith(
        f"arseg: error: {metrics} is damaged: it is not valid JSON (Expecting value at line 1, "
    )
    metrics.write_text("{}")
    config = ce / "seed2" / "config.yaml"
    config.write_text("seed: [2\nmodel: {}\n")
    assert main(args) == 2
    err = _one_line(capsys)
    assert err.startswith(f"arseg: error: {config} is damaged: it is not valid YAML (")
