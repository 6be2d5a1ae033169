"""Reading the records of a run or a study, with one line naming a damaged file.

The checks and readers live in :mod:`arseg.engine.records` (the engine writes the records and
reads them back); this module adds :func:`read_metrics_csv` (pandas, imported on first use), a
``metrics.csv`` as a DataFrame, never a pandas traceback.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from arseg.engine.records import (
    DamagedRecordError,
    RunError,
    check_metrics_csv,
    damaged_records,
    read_json,
    read_text,
    read_yaml,
)

__all__ = [
    "DamagedRecordError",
    "RunError",
    "check_metrics_csv",
    "damaged_records",
    "read_json",
    "read_metrics_csv",
    "read_yaml",
]


def read_metrics_csv(path: str | Path) -> Any:
    """``metrics.csv`` as a pandas DataFrame, after :func:`check_metrics_csv`."""
    import pandas as pd

    text = read_text(path)
    check_metrics_csv(path, text)
    try:
        return pd.read_csv(io.StringIO(text))
    except (ValueError, pd.errors.ParserError) as err:  # what the check above did not foresee
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DamagedRecordError(f"{path} is damaged: {first}") from None
