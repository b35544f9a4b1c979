"""Run-folder helpers shared by every command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from leukoshift.training import write_json


def test_write_json_is_strict_json(tmp_path: Path) -> None:
    # The monitor's lab-mixing score is NaN when its manifests hold one lab.
    data = {"history": [{"epoch": 1, "knn_acc": 0.5, "lab_mixing": float("nan")}], "x": (np.float64("inf"), 2)}
    path = write_json(tmp_path / "m.json", data)

    def refuse(name: str) -> None:
        raise AssertionError(f"{name} written into JSON")

    back = json.loads(path.read_text(), parse_constant=refuse)
    assert back == {"history": [{"epoch": 1, "knn_acc": 0.5, "lab_mixing": None}], "x": [None, 2]}
