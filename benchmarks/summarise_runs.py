"""One Markdown table row per fine-tuning / baseline run: PBC test, then each external lab.

    python benchmarks/summarise_runs.py runs/bench/*/metrics.json benchmarks/results/issue3/*.json

Reads the ``metrics.json`` that ``leukoshift finetune`` writes (split ``test`` and the
``external`` sources, scored at the level the labels share: 5 types for the external labs).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

EXTERNAL = ("cellavision", "bccd_crops", "bionet")


def row(path: Path) -> str:
    metrics = json.loads(path.read_text())
    name = path.parent.name if path.name == "metrics.json" else path.name.split(".")[0]
    test = metrics["test"]
    cells = [f"{test['macro_f1']:.3f} ({test['accuracy']:.3f})"]
    for source in EXTERNAL:
        ext = metrics.get("external", {}).get(source)
        cells.append("-" if ext is None else f"{ext['macro_f1']:.3f} ({ext['accuracy']:.3f})")
    epochs = metrics.get("epochs_run")
    seconds = metrics.get("train_seconds")
    extra = f"{epochs} ep, {seconds:.0f} s" if epochs is not None and seconds is not None else "-"
    return f"| {name} | " + " | ".join(cells) + f" | {extra} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("metrics", type=Path, nargs="+")
    args = parser.parse_args()
    print("| run | PBC test macro-F1 (acc) | " + " | ".join(EXTERNAL) + " | trained |")
    print("|---|---|---|---|---|---|")
    for path in args.metrics:
        print(row(path))


if __name__ == "__main__":
    main()
