"""Reading the records of a run or a study, with one line naming a damaged file.

A ``metrics.csv`` with a row cut short or rows of two writers, an empty or half-written
``summary.json``, ``metrics.json``, study state or spec, a ``config.yaml`` that is not YAML:
each is reported as :class:`DamagedRecordError`, one line that names the file (and the line of
the CSV), never a JSON or YAML traceback. The standard library and PyYAML only (no torch, no
Lightning): the engine writes the records and checks them here, ``arseg study`` and
:mod:`arseg.analysis.records` (which adds the pandas reader of ``metrics.csv``) read them here.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from arseg.rundir import EVAL_METRICS, RunDir

__all__ = [
    "DamagedRecordError",
    "RunError",
    "check_metrics_csv",
    "damaged_records",
    "read_eval_metrics",
    "read_json",
    "read_text",
    "read_yaml",
]


class RunError(ValueError):
    """A path is not a run directory, or lacks a file that a command needs."""


class DamagedRecordError(RunError):
    """A record file that cannot be parsed; the message names it (and the line)."""


def read_json(path: str | Path, *, mapping: bool = False) -> Any:
    """The JSON in ``path``; ``mapping``: it must be an object.

    Raises:
        DamagedRecordError: empty, not JSON, or (``mapping``) not an object; unreadable.
    """
    text = read_text(path)
    if not text.strip():
        raise DamagedRecordError(f"{path} is damaged: it is empty")
    try:
        data = json.loads(text)
    except ValueError as err:
        where = (
            f" ({err.msg} at line {err.lineno}, column {err.colno})"
            if isinstance(err, json.JSONDecodeError)
            else ""
        )
        raise DamagedRecordError(f"{path} is damaged: it is not valid JSON{where}") from None
    if mapping and not isinstance(data, dict):
        raise DamagedRecordError(
            f"{path} is damaged: it holds a JSON {type(data).__name__}, not an object"
        )
    return data


def read_eval_metrics(eval_dir: str | Path) -> dict[str, Any] | None:
    """The ``metrics.json`` of an evaluation folder; None where it has none yet.

    Raises:
        DamagedRecordError: it exists and cannot be parsed.
    """
    path = Path(eval_dir) / EVAL_METRICS
    return read_json(path, mapping=True) if path.is_file() else None


def read_yaml(path: str | Path) -> Any:
    """The YAML in ``path`` (``None`` when empty).

    Raises:
        DamagedRecordError: not YAML, or unreadable.
    """
    import yaml

    text = read_text(path)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        problem = getattr(err, "problem", None) or type(err).__name__
        where = f" ({problem} at line {mark.line + 1})" if mark is not None else f" ({problem})"
        raise DamagedRecordError(f"{path} is damaged: it is not valid YAML{where}") from None


def check_metrics_csv(
    path: str | Path, text: str | None = None, *, cut_last_ok: bool = False
) -> list[list[str]]:
    """Check a ``metrics.csv`` (header, one row per line, as many fields as the header, numbers).

    Args:
        text: the file's content (read from ``path`` when None; ``path`` then names it).
        cut_last_ok: a last line without its line end (a writer killed in mid-row) is dropped
            instead of refused, and an empty file is no damage (a resume rewrites both).

    Returns:
        The rows, header first.

    Raises:
        DamagedRecordError: the first problem, with its line number.
    """
    if text is None:
        text = read_text(path)
    if not text.strip():
        if cut_last_ok:  # killed before its first row reached the disk
            return []
        raise DamagedRecordError(f"{path} is damaged: it is empty")
    lines = text.splitlines(keepends=True)
    cut = not lines[-1].endswith(("\n", "\r"))
    if cut and cut_last_ok:
        lines.pop()
        cut = False
    reader = csv.reader(lines)
    rows: list[list[str]] = []
    header: list[str] = []
    for row in reader:
        line = reader.line_num
        if not row:
            continue
        if not header:
            header = row
            rows.append(row)
            continue
        if cut and line == len(lines):
            raise DamagedRecordError(
                f"{path} is damaged: line {line} is cut short (the file ends in the middle of it: "
                "its writer was stopped while writing)"
            )
        if len(row) != len(header):
            raise DamagedRecordError(
                f"{path} is damaged: line {line} has {len(row)} fields where the header has "
                f"{len(header)} (two processes wrote it at once, or a write was cut short)"
            )
        for name, cell in zip(header, row):
            if cell:
                try:
                    float(cell)
                except ValueError:
                    raise DamagedRecordError(
                        f"{path} is damaged: line {line}, column {name!r}: {cell!r} is not a number"
                    ) from None
        rows.append(row)
    if cut and not cut_last_ok and len(rows) == 1 and len(lines) == 1:
        raise DamagedRecordError(f"{path} is damaged: line 1 (the header) is cut short")
    return rows


def damaged_records(run_dir: str | Path) -> list[str]:
    """One line for every record of a run directory that exists and cannot be parsed:
    ``config.yaml``, ``metrics.csv``, ``summary.json``, ``provenance.json`` and every
    ``eval/**/metrics.json``. Empty when all can be read."""
    run = RunDir(run_dir)
    checks = [
        (run.config, read_yaml),
        (run.metrics_csv, check_metrics_csv),
        (run.summary, read_json),
        (run.provenance, read_json),
    ]
    if run.eval_root.is_dir():
        checks += [(p, read_json) for p in sorted(run.eval_root.rglob(EVAL_METRICS))]
    problems = []
    for path, read in checks:
        if not path.is_file():
            continue
        try:
            read(path)
        except RunError as err:
            problems.append(str(err))
    return problems


def read_text(path: str | Path) -> str:
    """The text of a record (DamagedRecordError: not text; RunError: unreadable)."""
    try:
        return Path(path).read_text()
    except UnicodeDecodeError:
        raise DamagedRecordError(f"{path} is damaged: it is not text") from None
    except OSError as err:
        raise RunError(f"cannot read {path}: {err.strerror or err}") from None
