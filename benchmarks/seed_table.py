"""Rescored runs (benchmarks/rescore.py's JSON) folded over seeds into the tables of
benchmarks/RESULTS.md: mean (lowest-highest) and the number of seeds, per scoring and lab.

    python benchmarks/seed_table.py benchmarks/results/issue4/rescore_*.json \\
        --row "SimCLR same-lab, WiSE 0.5=ft_srcbal18_lpft/wise0.5" \\
        --baseline "random, LP-FT=ft_random_lpft" --seeds 0-5

A run's group is its name with ``_seed<N>`` taken out (``ft_srcbal18_lpft_seed3/wise0.5``
-> ``ft_srcbal18_lpft/wise0.5``). A run scored in more than one file counts once, from the
last file given. `--row` rows are the candidates, `--baseline` rows what they must beat:
after the table, one line per scoring and candidate names the labs where its mean is above
every baseline's (issue 4's bar: an SSL row above random init on every lab), each with the
largest one-sided Mann-Whitney p over the baselines. `--recall within` adds each row's
recall per white-cell type and lab in that scoring, mean over its seeds: which cells a
macro-F1 gap comes from.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import mannwhitneyu

LABS = ("cellavision", "bccd_crops", "bionet")
SCORINGS = ("plain", "within", "adabn", "adabn+within")
_SEED = re.compile(r"_seed(\d+)")


def parse_seeds(text: str) -> set[int]:
    """'0-2,5' -> {0, 1, 2, 5}."""
    seeds: set[int] = set()
    for part in text.split(","):
        low, _, high = part.partition("-")
        seeds.update(range(int(low), int(high or low) + 1))
    return seeds


def load_runs(paths: list[Path]) -> dict[str, dict[str, Any]]:
    runs: dict[str, dict[str, Any]] = {}
    for path in paths:
        runs.update(json.loads(path.read_text()))
    return runs


def group_runs(runs: dict[str, dict[str, Any]], seeds: set[int] | None) -> dict[str, dict[int, dict[str, Any]]]:
    """{group: {seed: run}}; runs without a seed in their name are left out."""
    groups: dict[str, dict[int, dict[str, Any]]] = {}
    for name, run in runs.items():
        match = _SEED.search(name)
        if match is None:
            continue
        seed = int(match.group(1))
        if seeds is None or seed in seeds:
            groups.setdefault(_SEED.sub("", name, count=1), {})[seed] = run
    return groups


def fold(values: list[float]) -> dict[str, Any]:
    array = np.asarray(values, dtype=float)
    return {
        "mean": float(array.mean()),
        "min": float(array.min()),
        "max": float(array.max()),
        "n": len(values),
        "values": [float(v) for v in values],
    }


def table(groups: dict[str, dict[int, dict[str, Any]]], rows: list[tuple[str, str]]) -> dict[str, Any]:
    """{scoring: {label: {lab: fold}}} plus {"test": {label: fold}} (PBC test, where scored)."""
    missing = [group for _, group in rows if group not in groups]
    if missing:
        raise SystemExit(f"error: no seeded runs for {', '.join(missing)} (groups: {', '.join(sorted(groups))})")
    out: dict[str, Any] = {}
    for scoring in SCORINGS:
        out[scoring] = {
            label: {lab: fold([run[scoring][lab]["macro_f1"] for run in groups[group].values()]) for lab in LABS}
            for label, group in rows
        }
    out["test"] = {
        label: fold([run["test"]["macro_f1"] for run in groups[group].values()])
        for label, group in rows
        if all("test" in run for run in groups[group].values())
    }
    return out


def recall_table(
    groups: dict[str, dict[int, dict[str, Any]]], rows: list[tuple[str, str]], scoring: str
) -> dict[str, dict[str, dict[str, float]]]:
    """{label: {lab: {type: mean recall over the row's seeds}}} in one scoring."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for label, group in rows:
        runs = [run[scoring] for run in groups[group].values()]
        if not all("recall" in run[lab] for run in runs for lab in LABS):
            raise SystemExit(f"error: {group}: runs scored without recall per type; rescore them with rescore.py")
        out[label] = {
            lab: {code: float(np.mean([run[lab]["recall"][code] for run in runs])) for code in runs[0][lab]["recall"]}
            for lab in LABS
        }
    return out


def recall_markdown(recall: dict[str, dict[str, dict[str, float]]], scoring: str) -> str:
    first = next(iter(recall.values()))
    header = [f"{lab} {code}" if i == 0 else code for lab in LABS for i, code in enumerate(first[lab])]
    lines = [
        f"| recall ({scoring}) | " + " | ".join(header) + " |",
        "|---|" + "---:|" * len(header),
    ]
    for label, labs in recall.items():
        cells = [f"{labs[lab][code]:.2f}" for lab in LABS for code in first[lab]]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def wins(row: dict[str, dict[str, Any]], baselines: list[dict[str, dict[str, Any]]]) -> list[str]:
    """Labs on which the row's mean is above every baseline's at the printed precision (a
    difference in the 16th digit is a tie, not a win)."""

    def mean(f: dict[str, Any]) -> float:
        return round(f["mean"], 3)

    return [lab for lab in LABS if all(mean(row[lab]) > mean(base[lab]) for base in baselines)]


def p_above(row: dict[str, Any], baselines: list[dict[str, Any]]) -> float:
    """The largest over baselines of the one-sided Mann-Whitney U p-value that the row's
    seeds score higher than the baseline's: how well a mean win is told apart from seed
    noise (six seeds against six cannot go below 0.001)."""
    return max(float(mannwhitneyu(row["values"], base["values"], alternative="greater").pvalue) for base in baselines)


def markdown(result: dict[str, Any], baselines: list[str]) -> str:
    def cell(f: dict[str, Any]) -> str:
        return f"{f['mean']:.3f} ({f['min']:.3f}-{f['max']:.3f})"

    lines = ["| scoring | init, model | seeds | " + " | ".join(LABS) + " |", "|---|---|---:|" + "---|" * len(LABS)]
    for scoring in SCORINGS:
        for label, labs in result[scoring].items():
            n = labs[LABS[0]]["n"]
            lines.append(f"| {scoring} | {label} | {n} | " + " | ".join(cell(labs[lab]) for lab in LABS) + " |")
    lines.append("")
    for scoring in SCORINGS:
        by_label = result[scoring]
        for label in by_label:
            if label in baselines or not baselines:
                continue
            base = [by_label[b] for b in baselines]
            won = wins(by_label[label], base)
            labs = ", ".join(f"{lab} (p {p_above(by_label[label][lab], [b[lab] for b in base]):.3f})" for lab in won)
            lines.append(f"{scoring}: {label} above every baseline on {labs or 'no lab'} ({len(won)}/{len(LABS)})")
    if result["test"]:
        lines.append("")
        lines.append("PBC test: " + "; ".join(f"{label} {cell(f)} (n={f['n']})" for label, f in result["test"].items()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("json", nargs="+", type=Path, help="benchmarks/rescore.py --json-out files")
    parser.add_argument("--row", action="append", required=True, help="LABEL=GROUP: a candidate row, in table order")
    parser.add_argument("--baseline", action="append", default=[], help="LABEL=GROUP: a row the candidates must beat")
    parser.add_argument("--seeds", help="seeds to keep, e.g. 0-2,5 (default: all)")
    parser.add_argument("--recall", choices=SCORINGS, help="also fold recall per type in this scoring")
    parser.add_argument("--json-out", type=Path, help="also write the folded numbers here")
    args = parser.parse_args(argv)
    rows = []
    for row in args.row + args.baseline:
        label, sep, group = row.rpartition("=")
        if not sep or not label or not group:
            parser.error(f"{row!r}: expected LABEL=GROUP")
        rows.append((label, group))
    baselines = [label for label, _ in rows[len(args.row) :]]
    for path in args.json:
        if not path.is_file():
            parser.error(f"{path}: no such file")
    seeds = parse_seeds(args.seeds) if args.seeds else None
    groups = group_runs(load_runs(args.json), seeds)
    result = table(groups, rows)
    if args.recall:
        result["recall"] = {args.recall: recall_table(groups, rows, args.recall)}
    print(markdown(result, baselines))
    if args.recall:
        print("\n" + recall_markdown(result["recall"][args.recall], args.recall))
    if args.json_out:
        args.json_out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
