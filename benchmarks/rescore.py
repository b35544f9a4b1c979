"""Fine-tuned checkpoints scored again on the external labs: as trained, within the labs'
label set, with AdaBN, and with both.

    python benchmarks/rescore.py runs/bench/ft_*/best.ckpt --json-out benchmarks/results/issue4/rescore.json
    python benchmarks/rescore.py runs/bench/ft_*/best.ckpt --tta --json-out .../rescore_tta.json  # 8 views an image

Every external lab at the 5-type level, as `leukoshift finetune` scores them; "within"
restricts predictions to NE, EO, BA, LY, MO (`evaluate --classes`), "adabn" re-estimates
batch-norm statistics on each lab's own images (`evaluate --adapt-bn`). Prints one
Markdown row per checkpoint and variant, macro-F1 (accuracy); the JSON also keeps each
variant's recall per type (which cells a macro-F1 gap comes from; `seed_table.py --recall`
folds it over seeds) and each image's true and predicted type, in manifest order (what
`seed_table.py --bootstrap` resamples).

With ``--reuse`` a checkpoint already in the ``--json-out`` file, scored there on the same
labs, splits and views and not rewritten since (older than the file), keeps its scores
instead of being scored again: a call for two new seeds scores their checkpoints alone,
not the thirty before them. The file still holds exactly the checkpoints of the call.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from leukoshift.data.loaders import load_table
from leukoshift.eval.adapt import predict_adapted
from leukoshift.eval.evaluate import image_config_of, load_classifier, predict_table
from leukoshift.eval.metrics import compare_codes, score
from leukoshift.taxonomy import WBC5

EXTERNAL = ("runs/data/cellavision.csv", "runs/data/bccd_crops.csv", "runs/data/bionet.csv")
#: variant -> (which predictions, label set they are restricted to)
VARIANTS: dict[str, tuple[str, tuple[str, ...] | None]] = {
    "plain": ("plain", None),
    "within": ("plain", WBC5),
    "adabn": ("adabn", None),
    "adabn+within": ("adabn", WBC5),
}


def rescore(checkpoint: Path, manifests: list[Path], tta: bool = False) -> dict[str, dict[str, dict[str, Any]]]:
    """{variant: {lab: {macro_f1, accuracy, recall: {type: recall}, true: [type], pred:
    [type]}}} for one checkpoint; a lab's recall has the types it has. ``tta``: every
    variant from probabilities averaged over each image's eight dihedral views."""
    model = load_classifier(checkpoint)
    out: dict[str, dict[str, dict[str, Any]]] = {v: {} for v in VARIANTS}
    for manifest in manifests:
        table = load_table([manifest], image_config_of(model), split="all", labelled=True, progress=False)
        truth = list(table.frame["label"])
        probs: dict[str, np.ndarray] = {
            "plain": predict_table(model, table, progress=False, tta=tta),
            "adabn": predict_adapted(model, table, tta=tta),
        }
        for variant, (which, classes) in VARIANTS.items():
            s = score(probs[which], truth, level="group", classes=classes)
            true, pred, _, _ = compare_codes(probs[which], truth, level="group", classes=classes)
            out[variant][manifest.stem] = {
                "macro_f1": s.macro_f1,
                "accuracy": s.accuracy,
                "recall": {str(code): float(row["recall"]) for code, row in s.per_class.iterrows()},
                "true": true,
                "pred": pred,
            }
    return out


def score_split(checkpoint: Path, manifest: Path, split: str = "test", tta: bool = False) -> dict[str, float]:
    """The checkpoint on a split of its own lab, at each row's finest level, as
    `leukoshift finetune` scores "val" and "test"."""
    model = load_classifier(checkpoint)
    table = load_table([manifest], image_config_of(model), split=split, labelled=True, progress=False)
    s = score(predict_table(model, table, progress=False, tta=tta), list(table.frame["label"]), level="auto")
    return {"macro_f1": s.macro_f1, "accuracy": s.accuracy}


def reusable(
    entry: dict[str, Any] | None, ckpt: Path, manifests: list[Path], splits: list[str], tta: bool, written: float
) -> bool:
    """Whether `entry`, from a rescore JSON last written at mtime `written`, already holds what
    this call would compute for `ckpt`: the same file, not rewritten since (a rerun WiSE
    average is), every variant on every lab with each image's codes, the splits asked for,
    and the same views (entries from before rescore.py recorded ``tta`` were plain)."""
    if entry is None or entry.get("checkpoint") != str(ckpt) or not ckpt.is_file():
        return False
    if ckpt.stat().st_mtime > written or entry.get("tta", False) != tta:
        return False
    labs_there = all("pred" in entry.get(variant, {}).get(m.stem, {}) for variant in VARIANTS for m in manifests)
    return labs_there and all(split in entry for split in splits)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", type=Path, nargs="+")
    parser.add_argument("--external", type=Path, action="append", default=None, help="manifest (repeatable)")
    parser.add_argument(
        "--test", type=Path, default=None, help="also score the test split of this manifest (e.g. runs/data/pbc.csv)"
    )
    parser.add_argument(
        "--val",
        type=Path,
        default=None,
        help="also score the validation split of this manifest: what seed_table.py --select val picks by",
    )
    parser.add_argument(
        "--tta",
        action="store_true",
        help="score every variant (and val/test) on probabilities averaged over each image's eight dihedral views",
    )
    parser.add_argument("--json-out", type=Path, default=None)
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="keep the scores of checkpoints already in --json-out, scored the same way and older than it",
    )
    args = parser.parse_args()
    if args.reuse and args.json_out is None:
        parser.error("--reuse reads the scores to keep from --json-out: give it")
    manifests = args.external or [Path(m) for m in EXTERNAL]
    own_splits = [(split, m) for split, m in (("val", args.val), ("test", args.test)) if m]
    previous: dict[str, Any] = {}
    written = 0.0
    if args.reuse and args.json_out.is_file():
        previous = json.loads(args.json_out.read_text())
        written = args.json_out.stat().st_mtime
    results: dict[str, Any] = {}
    kept = 0
    print("| run | variant | " + " | ".join(m.stem for m in manifests) + " |")
    print("|---|---|" + "---|" * len(manifests))
    for ckpt in args.checkpoints:
        # best.ckpt is named by its run; other checkpoints of a run (wise0.5.ckpt) by run/stem
        name = ckpt.parent.name if ckpt.stem == "best" else f"{ckpt.parent.name}/{ckpt.stem}"
        if reusable(previous.get(name), ckpt, manifests, [split for split, _ in own_splits], args.tta, written):
            results[name] = previous[name]
            kept += 1
        else:
            results[name] = {"checkpoint": str(ckpt), "tta": args.tta, **rescore(ckpt, manifests, args.tta)}
            for split, manifest in own_splits:
                results[name][split] = score_split(ckpt, manifest, split, args.tta)
        for split, manifest in own_splits:
            own = results[name][split]
            cell = f"{own['macro_f1']:.3f} ({own['accuracy']:.3f})"
            print(f"| {name} | {manifest.stem} {split} | {cell} |", flush=True)
        for variant in VARIANTS:
            cells = [
                f"{results[name][variant][m.stem]['macro_f1']:.3f} ({results[name][variant][m.stem]['accuracy']:.3f})"
                for m in manifests
            ]
            print(f"| {name} | {variant} | " + " | ".join(cells) + " |", flush=True)
    if args.reuse:
        print(f"{kept} of {len(results)} checkpoints kept from {args.json_out}, {len(results) - kept} scored")
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
