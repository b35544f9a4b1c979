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
macro-F1 gap comes from. `--bootstrap N` asks the other question a small lab raises (100
CellaVision images, three basophils): would the gap survive other images of the same
lab? It resamples each lab's images N times, the same draws for every run (a paired
bootstrap; rescore.py keeps each image's true and predicted type), and reports per
scoring and lab the candidate's mean over seeds minus the best baseline's, its 95 %
interval and the share of draws where it is above. Seed noise is the Mann-Whitney p's.

A row may name several groups, ``LABEL=GROUP|GROUP|...`` (a run's checkpoints: LP-FT's
end, its WiSE averages, its linear probe), and `--select` says which one each seed
reports, without looking at the lab it is scored on:

- ``val``: the one with the best macro-F1 on the training lab's validation split
  (rescore.py --val; DomainBed's training-domain validation), the same pick for every lab;
- ``labs``: per scoring and lab, the one with the best mean macro-F1 over the *other*
  external labs in that scoring (leave-one-lab-out validation).

The picks are printed and kept in the JSON.
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

from leukoshift.eval.metrics import resampled_macro_f1

LABS = ("cellavision", "bccd_crops", "bionet")
SCORINGS = ("plain", "within", "adabn", "adabn+within")
SELECTIONS = ("val", "labs")
_SEED = re.compile(r"_seed(\d+)")

#: {group: {seed: run}}
Groups = dict[str, dict[int, dict[str, Any]]]
#: (label, candidate groups)
Row = tuple[str, tuple[str, ...]]


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


def group_runs(runs: dict[str, dict[str, Any]], seeds: set[int] | None) -> Groups:
    """{group: {seed: run}}; runs without a seed in their name are left out."""
    groups: Groups = {}
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


def check_rows(groups: Groups, rows: list[Row], select: str | None) -> None:
    """Every candidate group exists with the same seeds as its row's others, a row of
    several candidates has a selection rule, and ``val`` has the scores it picks by."""
    missing = [group for _, candidates in rows for group in candidates if group not in groups]
    if missing:
        raise SystemExit(f"error: no seeded runs for {', '.join(missing)} (groups: {', '.join(sorted(groups))})")
    for label, candidates in rows:
        if len(candidates) > 1 and select is None:
            raise SystemExit(f"error: {label}: {len(candidates)} candidate groups need --select val|labs")
        seeds = set(groups[candidates[0]])
        for group in candidates[1:]:
            if set(groups[group]) != seeds:
                raise SystemExit(
                    f"error: {label}: {group} has seeds {sorted(groups[group])}, {candidates[0]} {sorted(seeds)}"
                )
        if len(candidates) > 1 and select == "val":
            unscored = [g for g in candidates if not all("val" in run for run in groups[g].values())]
            if unscored:
                raise SystemExit(f"error: {', '.join(unscored)}: runs without a val score; rescore them with --val")


def pick(groups: Groups, candidates: tuple[str, ...], select: str | None, scoring: str, lab: str) -> dict[int, str]:
    """{seed: the candidate group that seed reports on `lab` in `scoring`}; the first
    listed wins a tie."""

    def merit(group: str, seed: int) -> float:
        run = groups[group][seed]
        if select == "val":
            return float(run["val"]["macro_f1"])
        return float(np.mean([run[scoring][other]["macro_f1"] for other in LABS if other != lab]))

    seeds = sorted(groups[candidates[0]])
    if len(candidates) == 1:
        return dict.fromkeys(seeds, candidates[0])
    return {seed: max(candidates, key=lambda group: merit(group, seed)) for seed in seeds}


def table(groups: Groups, rows: list[Row], select: str | None = None) -> dict[str, Any]:
    """{scoring: {label: {lab: fold}}}, {"test": {label: fold}} (PBC test, where scored and
    the pick does not depend on the lab) and {"picks": {label: {scoring: {lab: {seed: group}}}}}."""
    check_rows(groups, rows, select)
    out: dict[str, Any] = {scoring: {} for scoring in SCORINGS}
    out["picks"] = {}
    for label, candidates in rows:
        picks = {s: {lab: pick(groups, candidates, select, s, lab) for lab in LABS} for s in SCORINGS}
        out["picks"][label] = picks
        for scoring in SCORINGS:
            out[scoring][label] = {
                lab: fold([groups[g][seed][scoring][lab]["macro_f1"] for seed, g in picks[scoring][lab].items()])
                for lab in LABS
            }
    out["test"] = {}
    for label, candidates in rows:
        if len(candidates) > 1 and select != "val":
            continue
        chosen = out["picks"][label][SCORINGS[0]][LABS[0]]
        runs = [groups[g][seed] for seed, g in chosen.items()]
        if all("test" in run for run in runs):
            out["test"][label] = fold([run["test"]["macro_f1"] for run in runs])
    return out


def recall_table(
    groups: Groups, rows: list[Row], scoring: str, picks: dict[str, Any]
) -> dict[str, dict[str, dict[str, float]]]:
    """{label: {lab: {type: mean recall over the row's seeds}}} in one scoring, each seed
    from its pick."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for label, _ in rows:
        chosen = {lab: picks[label][scoring][lab].items() for lab in LABS}
        unscored = sorted(
            {g for lab in LABS for seed, g in chosen[lab] if "recall" not in groups[g][seed][scoring][lab]}
        )
        if unscored:
            raise SystemExit(
                f"error: {', '.join(unscored)}: runs scored without recall per type; rescore them with rescore.py"
            )
        by_lab = {lab: [groups[g][seed][scoring][lab] for seed, g in chosen[lab]] for lab in LABS}
        out[label] = {
            lab: {code: float(np.mean([e["recall"][code] for e in entries])) for code in entries[0]["recall"]}
            for lab, entries in by_lab.items()
        }
    return out


def picks_markdown(picks: dict[str, Any], rows: list[Row], select: str) -> str:
    """One line per row of several candidates: how often each was picked, over its seeds
    (``labs``: over seeds, scorings and labs)."""
    lines = []
    for label, candidates in rows:
        if len(candidates) == 1:
            continue
        by_scoring = picks[label]
        if select == "val":  # the same pick for every scoring and lab
            chosen = list(by_scoring[SCORINGS[0]][LABS[0]].values())
        else:
            chosen = [g for by_lab in by_scoring.values() for seeds in by_lab.values() for g in seeds.values()]
        counts = ", ".join(f"{g} x{chosen.count(g)}" for g in candidates if g in chosen)
        lines.append(f"picked by {select}: {label}: {counts} (of {len(chosen)})")
    return "\n".join(lines)


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


def bootstrap(
    groups: Groups, rows: list[Row], baselines: list[str], picks: dict[str, Any], n: int, seed: int = 0
) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """{scoring: {label: {lab: {gap, low, high, above}}}} for each candidate row against the
    baselines: over `n` resamples of each lab's images (the same draws for every run and
    scoring), the row's mean macro-F1 over its seeds minus the highest baseline mean;
    ``gap`` on the lab's own images, ``low``/``high`` the 2.5 and 97.5 percentiles,
    ``above`` the share of draws with a positive gap."""
    rng = np.random.default_rng(seed)
    labels = {label for label, _ in rows}
    out: dict[str, dict[str, dict[str, dict[str, float]]]] = {s: {} for s in SCORINGS}
    for lab in LABS:
        entries = {
            (scoring, label, run_seed): groups[g][run_seed][scoring][lab]
            for scoring in SCORINGS
            for label in labels
            for run_seed, g in picks[label][scoring][lab].items()
        }
        unscored = sorted({label for (_, label, _), e in entries.items() if "pred" not in e})
        if unscored:
            raise SystemExit(
                f"error: {', '.join(unscored)}: no per-image predictions on {lab}; rescore them with rescore.py"
            )
        truth = next(iter(entries.values()))["true"]
        differing = sorted({label for (_, label, _), e in entries.items() if e["true"] != truth})
        if differing:
            raise SystemExit(f"error: {', '.join(differing)}: scored on other {lab} images than the first row")
        draws = np.vstack([np.arange(len(truth)), rng.integers(0, len(truth), size=(n, len(truth)))])
        f1 = {key: resampled_macro_f1(truth, e["pred"], draws) for key, e in entries.items()}
        for scoring in SCORINGS:
            mean = {
                label: np.mean([v for (s, lb, _), v in f1.items() if s == scoring and lb == label], axis=0)
                for label in labels
            }
            best_baseline = np.max([mean[b] for b in baselines], axis=0)
            for label, _ in rows:
                if label in baselines:
                    continue
                gap = mean[label] - best_baseline
                out[scoring].setdefault(label, {})[lab] = {
                    "gap": float(gap[0]),
                    "low": float(np.percentile(gap[1:], 2.5)),
                    "high": float(np.percentile(gap[1:], 97.5)),
                    "above": float(np.mean(gap[1:] > 0)),
                }
    return out


def bootstrap_markdown(gaps: dict[str, dict[str, dict[str, dict[str, float]]]], n: int) -> str:
    lines = [f"bootstrap over each lab's images ({n} draws): candidate minus the best baseline, mean over seeds"]
    for scoring, by_label in gaps.items():
        for label, by_lab in by_label.items():
            cells = "; ".join(
                f"{lab} {g['gap']:+.3f} ({g['low']:+.3f} to {g['high']:+.3f}, above in {g['above']:.0%})"
                for lab, g in by_lab.items()
            )
            lines.append(f"{scoring}: {label}: {cells}")
    return "\n".join(lines)


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
    parser.add_argument(
        "--row", action="append", required=True, help="LABEL=GROUP[|GROUP...]: a candidate row, in table order"
    )
    parser.add_argument("--baseline", action="append", default=[], help="LABEL=GROUP[|GROUP...]: a row to beat")
    parser.add_argument("--seeds", help="seeds to keep, e.g. 0-2,5 (default: all)")
    parser.add_argument("--select", choices=SELECTIONS, help="which group of a several-group row each seed reports")
    parser.add_argument("--recall", choices=SCORINGS, help="also fold recall per type in this scoring")
    parser.add_argument(
        "--bootstrap",
        type=int,
        metavar="N",
        help="also resample each lab's images N times (e.g. 2000): the gap's 95 %% interval over images",
    )
    parser.add_argument("--json-out", type=Path, help="also write the folded numbers here")
    args = parser.parse_args(argv)
    rows: list[Row] = []
    for row in args.row + args.baseline:
        label, sep, groups_text = row.rpartition("=")
        candidates = tuple(groups_text.split("|"))
        if not sep or not label or not all(candidates):
            parser.error(f"{row!r}: expected LABEL=GROUP or LABEL=GROUP|GROUP...")
        rows.append((label, candidates))
    baselines = [label for label, _ in rows[len(args.row) :]]
    for path in args.json:
        if not path.is_file():
            parser.error(f"{path}: no such file")
    seeds = parse_seeds(args.seeds) if args.seeds else None
    groups = group_runs(load_runs(args.json), seeds)
    result = table(groups, rows, args.select)
    if args.recall:
        result["recall"] = {args.recall: recall_table(groups, rows, args.recall, result["picks"])}
    print(markdown(result, baselines))
    if args.select:
        print("\n" + picks_markdown(result["picks"], rows, args.select))
    if args.recall:
        print("\n" + recall_markdown(result["recall"][args.recall], args.recall))
    if args.bootstrap:
        if not baselines:
            parser.error("--bootstrap needs a --baseline to measure the gap to")
        result["bootstrap"] = bootstrap(groups, rows, baselines, result["picks"], args.bootstrap)
        print("\n" + bootstrap_markdown(result["bootstrap"], args.bootstrap))
    if args.json_out:
        args.json_out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
