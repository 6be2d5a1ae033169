"""Reading a run's records (arseg.engine.records): a damaged one is one line naming the file."""

from __future__ import annotations

import pytest

from arseg.engine.records import DamagedRecordError, check_metrics_csv, read_json


def test_the_record_readers(tmp_path) -> None:
    path = tmp_path / "metrics.csv"
    path.write_text("epoch,step,train/ar\n0,0,0.5\n0,1,0.4")  # the last row cut short
    with pytest.raises(DamagedRecordError, match="line 3 is cut short"):
        check_metrics_csv(path)
    assert check_metrics_csv(path, cut_last_ok=True)[1:] == [["0", "0", "0.5"]]  # a resume
    path.write_text("epoch,step,train/ar\n0,0,0.5\n\n0,1,0.4\n")  # blank lines are no damage
    assert len(check_metrics_csv(path)) == 3
    path.write_text("")
    with pytest.raises(DamagedRecordError, match="is empty"):
        check_metrics_csv(path)
    state = tmp_path / "state.json"
    state.write_text("  \n")
    with pytest.raises(DamagedRecordError, match=r"state.json is damaged: it is empty"):
        read_json(state)
