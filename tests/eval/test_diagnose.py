"""``leukoshift diagnose`` end to end on the synthetic labs (raw pixels: no model needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from leukoshift.errors import UserError
from leukoshift.eval.diagnose import run_diagnose


def test_diagnose_writes_numbers_pictures_and_the_lab_appearance(synth_manifest: Path, tmp_path: Path) -> None:
    out = tmp_path / "diag"
    numbers = run_diagnose([synth_manifest], out, size=40, max_points=200, progress=False)
    for name in ("diagnostics.json", "report.md", "report.html", "umap_source.png", "umap_class.png", "umap.html"):
        assert (out / name).is_file(), name
    assert numbers["sources"] == ["lab_a", "lab_b"]
    assert json.loads((out / "diagnostics.json").read_text())["n"] == numbers["n"] == 2 * 11 * 24
    assert 0 <= numbers["lab_mixing"]["mean_isolation"] <= 1
    # Equal-sized labs: the first is the reference; synthetic lab B has the softer optics.
    appearance = numbers["appearance"]
    assert appearance["reference"] == "lab_a"
    blur = {row["source"]: row["blur_px"] for row in appearance["per_source"]}
    assert blur["lab_a"] == 0.0 and blur["lab_b"] > 0.2
    report = (out / "report.md").read_text()
    assert "## Lab appearance" in report and "blur_sigma_224" in report and "lab_b" in report


def test_diagnose_names_a_missing_checkpoint(synth_manifest: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="nope.ckpt"):
        run_diagnose([synth_manifest], tmp_path / "d", checkpoint=tmp_path / "nope.ckpt")
