"""The run folder's I/O: atomic writes, formula-safe CSVs, and checkpoints that cannot run code."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pandas as pd
import pytest
import torch

from debias import RunError
from debias.files import atomic_write, write_csv
from debias.runfolder import load_checkpoint, save_checkpoint


class _Payload:
    """Unpickling this runs os.system: what a malicious checkpoint would carry."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.marker}",))


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    state = {"epoch": 3, "model": {"w": torch.arange(4.0)}, "classes": ["a", "b"]}
    save_checkpoint(tmp_path / "c.pt", state)
    loaded = load_checkpoint(tmp_path / "c.pt")
    assert loaded["epoch"] == 3 and torch.equal(loaded["model"]["w"], torch.arange(4.0))


def test_pickle_payload_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    with open(tmp_path / "evil.pt", "wb") as fh:
        pickle.dump({"model": _Payload(marker)}, fh)
    with pytest.raises(RunError, match=r"refused to load"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()


def test_truncated_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "c.pt", {"w": torch.zeros(1000)})
    data = (tmp_path / "c.pt").read_bytes()
    (tmp_path / "c.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(RunError, match=r"c.pt: damaged or cut short"):
        load_checkpoint(tmp_path / "c.pt")


def test_poisoned_torch_checkpoint_is_refused_without_torchs_advice(tmp_path: Path) -> None:
    # A real torch.save zip whose pickle names a callable: torch refuses it and goes on to
    # suggest weights_only=False, which a user must never be told here.
    marker = tmp_path / "ran"
    torch.save({"model": _Payload(marker)}, tmp_path / "evil.pt")
    with pytest.raises(RunError) as caught:
        load_checkpoint(tmp_path / "evil.pt")
    message = str(caught.value)
    assert "refused to load" in message and "GLOBAL" in message
    assert "weights_only" not in message and "\n" not in message
    assert not marker.exists()


def test_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "f.txt"
    target.write_text("old")

    def fail(fh) -> None:  # type: ignore[no-untyped-def]
        fh.write(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, fail)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_csv_cells_cannot_become_formulas(tmp_path: Path) -> None:
    write_csv(
        tmp_path / "x.csv", pd.DataFrame({"path": ["=cmd|' /C calc'!A0", "ok.png"], "n": [1, 2]})
    )
    frame = pd.read_csv(tmp_path / "x.csv")
    assert frame["path"].tolist() == ["'=cmd|' /C calc'!A0", "ok.png"]
    assert frame["n"].tolist() == [1, 2]
