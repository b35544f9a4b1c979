"""Fixtures for the app: a tiny checkpoint, two synthetic labs, a LOSO results folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tests.explain.conftest import make_checkpoint


@pytest.fixture(scope="session")
def app_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("app-ckpt") / "best.ckpt", "regnetx_002", 64)


@pytest.fixture(scope="session")
def app_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two synthetic labs x 11 classes x 3 images (48 px), split train/val/test."""
    from leukoshift.data.synth import render_labs

    return render_labs(tmp_path_factory.mktemp("app-synth"), labs=2, per_class=3, size=48, progress=False)


@pytest.fixture(scope="session")
def loso_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A results folder as ``benchmark loso`` writes it: results.csv, figures/, report.html."""
    folder = tmp_path_factory.mktemp("loso")
    rows = [
        ("lab_a", "supervised", 0.41, 0.90),
        ("lab_b", "supervised", 0.52, 0.88),
        ("lab_a", "dino+ft", 0.63, 0.91),
        ("lab_b", "dino+ft", 0.47, 0.92),
    ]
    pd.DataFrame(
        [
            {
                "held_out": h,
                "method": m,
                "level": "fine",
                "n": 33,
                "n_excluded": 0,
                "seeds": 1,
                "macro_f1_mean": f,
                "macro_f1_std": 0.0,
                "in_domain_macro_f1_mean": ind,
                "gap_macro_f1": ind - f,
            }
            for h, m, f, ind in rows
        ]
    ).to_csv(folder / "results.csv", index=False)
    (folder / "figures").mkdir()
    for name in ("in_vs_out", "f1_lab_a"):
        Image.fromarray(np.full((20, 30, 3), 200, np.uint8)).save(folder / "figures" / f"{name}.png")
    (folder / "report.html").write_text("<html><body>report</body></html>")
    return folder
