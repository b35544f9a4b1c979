"""Which white cells each checkpoint gets right on the external labs: recall per type at the
5-type level, predictions restricted to the labs' label set (RESULTS.md's "within" scoring).

    python benchmarks/class_recall.py runs/bench/ft_*_seed*/best.ckpt --json-out recall.json

Prints one line per checkpoint and, folded over seeds (run names with ``_seed<N>`` taken
out), the mean recall per lab and type: where a macro-F1 gap between two inits comes from.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from leukoshift.data.loaders import load_table
from leukoshift.eval.evaluate import image_config_of, load_classifier, predict_table
from leukoshift.eval.metrics import score
from leukoshift.taxonomy import WBC5

EXTERNAL = ("runs/data/bionet.csv", "runs/data/bccd_crops.csv", "runs/data/cellavision.csv")


def recalls(checkpoint: Path, manifests: list[Path]) -> dict[str, dict[str, float]]:
    """{lab: {type: recall}} within the label set; types a lab does not have are absent."""
    model = load_classifier(checkpoint)
    out: dict[str, dict[str, float]] = {}
    for manifest in manifests:
        table = load_table([manifest], image_config_of(model), split="all", labelled=True, progress=False)
        s = score(predict_table(model, table, progress=False), list(table.frame["label"]), level="group", classes=WBC5)
        out[manifest.stem] = {str(code): float(row["recall"]) for code, row in s.per_class.iterrows()}
    return out


def run_name(checkpoint: Path) -> str:
    """rescore.py's naming: best.ckpt by its run, other checkpoints of a run as run/stem."""
    return checkpoint.parent.name if checkpoint.stem == "best" else f"{checkpoint.parent.name}/{checkpoint.stem}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+", type=Path)
    parser.add_argument("--external", action="append", type=Path, help="lab manifests (default: EXTERNAL)")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args(argv)
    manifests = args.external or [Path(p) for p in EXTERNAL]
    for path in [*args.checkpoints, *manifests]:
        if not path.is_file():
            parser.error(f"{path}: no such file")
    runs = {}
    for checkpoint in args.checkpoints:
        name = run_name(checkpoint)
        runs[name] = recalls(checkpoint, manifests)
        print(name, json.dumps(runs[name]), flush=True)
    groups: dict[str, list[dict[str, dict[str, float]]]] = defaultdict(list)
    for name, result in runs.items():
        groups[re.sub(r"_seed\d+", "", name, count=1)].append(result)
    folded = {
        group: {
            lab: {code: float(np.mean([r[lab][code] for r in results])) for code in results[0][lab]}
            for lab in results[0]
        }
        for group, results in groups.items()
    }
    for group, labs in folded.items():
        cells = "; ".join(f"{lab} " + " ".join(f"{c} {v:.2f}" for c, v in types.items()) for lab, types in labs.items())
        print(f"{group} (n={len(groups[group])}): {cells}")
    if args.json_out:
        args.json_out.write_text(json.dumps({"runs": runs, "mean": folded}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
