"""``leukoshift demo``: the whole pipeline on built-in synthetic labs, in minutes on a CPU.

Three synthetic labs that differ in stain, optics and framing are rendered; then the
leave-one-source-out benchmark of ``configs/loso_demo.yaml`` runs every method
(supervised, with stain augmentation, DINO + fine-tuning, logistic regression) with each
lab held out in turn, and writes the report whose path is printed at the end.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from leukoshift.config import load_config
from leukoshift.data.synth import render_labs
from leukoshift.eval.loso import LosoConfig, run_loso


def demo_config_path() -> Path:
    return Path(str(resources.files("leukoshift") / "configs" / "loso_demo.yaml"))


def run_demo(out: Path = Path("runs/demo"), overrides: list[str] | None = None, progress: bool = True) -> Path:
    manifest = render_labs(out / "data", labs=3, per_class=40, size=64, seed=0, progress=progress)
    cfg = load_config(
        LosoConfig,
        demo_config_path(),
        [f"labelled=[{manifest}]", f"out={out / 'loso'}", *(overrides or [])],
    )
    return run_loso(cfg, progress=progress) / "report.html"
