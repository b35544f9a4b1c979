"""``benchmarks/seed_table.py``: rescored runs folded over seeds, as RESULTS.md's tables read."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sklearn.metrics import f1_score

from tests.pretrain.test_throughput_paths import load_benchmark

LABS = ("cellavision", "bccd_crops", "bionet")


def run(
    f1: tuple[float, float, float],
    test: float | None = None,
    eosinophils: float | None = None,
    val: float | None = None,
) -> dict[str, Any]:
    """A rescore.py entry whose every scoring has these macro-F1s (adabn ones a tenth lower)
    and, given `eosinophils`, that recall for EO on every lab (NE 1.0)."""
    out: dict[str, Any] = {}
    for scoring in ("plain", "within", "adabn", "adabn+within"):
        shift = 0.1 if scoring.startswith("adabn") else 0.0
        out[scoring] = {lab: {"macro_f1": v - shift, "accuracy": 0.5} for lab, v in zip(LABS, f1, strict=True)}
        if eosinophils is not None:
            for lab in LABS:
                out[scoring][lab]["recall"] = {"NE": 1.0, "EO": eosinophils}
    if test is not None:
        out["test"] = {"macro_f1": test, "accuracy": test}
    if val is not None:
        out["val"] = {"macro_f1": val, "accuracy": val}
    return out


def write(path: Path, runs: dict[str, Any]) -> Path:
    path.write_text(json.dumps(runs))
    return path


def test_seed_table_folds_seeds_and_names_the_labs_a_candidate_wins(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    seed_table = load_benchmark("seed_table")
    first = write(
        tmp_path / "a.json",
        {
            "ft_ssl_seed0": run((0.5, 0.3, 0.4), test=0.6),
            "ft_ssl_seed0/wise0.5": run((0.9, 0.9, 0.9)),
            "ft_ssl_seed1": run((0.7, 0.1, 0.6), test=0.8),
            "ft_random_seed0": run((0.5, 0.2, 0.6)),
            "ft_random_seed7": run((0.0, 0.0, 0.0)),  # filtered out by --seeds
            "no_seed_here": run((1.0, 1.0, 1.0)),
        },
    )
    # A run scored twice counts once, from the last file.
    second = write(tmp_path / "b.json", {"ft_random_seed1": run((0.5, 0.2, 0.6)), "ft_ssl_seed1": run((0.7, 0.1, 0.8))})
    out = tmp_path / "table.json"
    argv = [str(first), str(second), "--row", "SSL=ft_ssl", "--baseline", "random=ft_random", "--seeds", "0-1"]
    assert seed_table.main([*argv, "--json-out", str(out)]) == 0
    result = json.loads(out.read_text())
    ssl = result["within"]["SSL"]
    assert ssl["cellavision"].pop("values") == pytest.approx([0.5, 0.7])
    assert ssl["cellavision"] == pytest.approx({"mean": 0.6, "min": 0.5, "max": 0.7, "n": 2})
    assert ssl["bionet"]["mean"] == pytest.approx(0.6)  # 0.4 and the second file's 0.8
    assert result["adabn"]["random"]["bccd_crops"]["mean"] == pytest.approx(0.1)
    assert result["within"]["random"]["cellavision"]["n"] == 2  # seed 7 left out
    # "test" only for rows whose every run was scored on it: the second file's seed 1 was not.
    assert result["test"] == {}
    printed = capsys.readouterr().out.splitlines()
    assert "| within | SSL | 2 | 0.600 (0.500-0.700) | 0.200 (0.100-0.300) | 0.600 (0.400-0.800) |" in printed
    # 0.6 > 0.5 on CellaVision; 0.2 = 0.2 on BCCD is not above; Bio-net's 0.6000000000000001
    # against 0.6 is a tie at the printed precision, not a win.
    within = [line for line in printed if line.startswith("within: SSL")]
    assert len(within) == 1 and within[0].startswith("within: SSL above every baseline on cellavision (p 0.")
    assert within[0].endswith(") (1/3)")
    assert not any(line.startswith("random") or " random above" in line for line in printed)


def test_p_above_is_the_largest_one_sided_mann_whitney_p_over_the_baselines() -> None:
    seed_table = load_benchmark("seed_table")
    row = {"values": [0.6, 0.7, 0.8]}
    # Three seeds all above three: the exact one-sided p is 1 / C(6, 3) = 0.05.
    assert seed_table.p_above(row, [{"values": [0.1, 0.2, 0.3]}]) == pytest.approx(0.05)
    # Against a second baseline the row only half beats, the larger p is the one reported.
    mixed = seed_table.p_above(row, [{"values": [0.1, 0.2, 0.3]}, {"values": [0.65, 0.75, 0.5]}])
    assert 0.05 < mixed < 1.0


def test_seed_table_refuses_unknown_groups_and_malformed_rows(tmp_path: Path) -> None:
    seed_table = load_benchmark("seed_table")
    path = write(tmp_path / "a.json", {"ft_ssl_seed0": run((0.5, 0.3, 0.4))})
    with pytest.raises(SystemExit, match="no seeded runs for ft_nope"):
        seed_table.main([str(path), "--row", "x=ft_nope"])
    with pytest.raises(SystemExit):
        seed_table.main([str(path), "--row", "no-equals-sign"])
    with pytest.raises(SystemExit):
        seed_table.main([str(tmp_path / "missing.json"), "--row", "x=ft_ssl"])
    assert seed_table.parse_seeds("0-2,5") == {0, 1, 2, 5}


def test_seed_table_folds_recall_per_type_and_refuses_runs_scored_without_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    seed_table = load_benchmark("seed_table")
    path = write(
        tmp_path / "a.json",
        {
            "ft_ssl_seed0": run((0.5, 0.3, 0.4), eosinophils=0.1),
            "ft_ssl_seed1": run((0.5, 0.3, 0.4), eosinophils=0.3),
            "ft_random_seed0": run((0.5, 0.3, 0.4), eosinophils=0.8),
            "ft_old_seed0": run((0.5, 0.3, 0.4)),
        },
    )
    out = tmp_path / "table.json"
    argv = [str(path), "--row", "SSL=ft_ssl", "--baseline", "random=ft_random", "--recall", "within"]
    assert seed_table.main([*argv, "--json-out", str(out)]) == 0
    recall = json.loads(out.read_text())["recall"]["within"]
    assert recall["SSL"]["bionet"] == pytest.approx({"NE": 1.0, "EO": 0.2})
    assert recall["random"]["cellavision"]["EO"] == pytest.approx(0.8)
    printed = capsys.readouterr().out.splitlines()
    assert "| recall (within) | cellavision NE | EO | bccd_crops NE | EO | bionet NE | EO |" in printed
    assert "| SSL | 1.00 | 0.20 | 1.00 | 0.20 | 1.00 | 0.20 |" in printed
    # Runs rescored before rescore.py kept recall: a clear refusal, before any table is printed.
    with pytest.raises(SystemExit, match="ft_old: runs scored without recall per type"):
        seed_table.main([str(path), "--row", "old=ft_old", "--recall", "within"])
    assert "| scoring |" not in capsys.readouterr().out


def test_seed_table_picks_each_seeds_checkpoint_without_looking_at_the_lab_it_scores(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    seed_table = load_benchmark("seed_table")
    path = write(
        tmp_path / "a.json",
        {
            "ft_ssl_seed0": run((0.5, 0.5, 0.5), test=0.6, val=0.7, eosinophils=0.5),
            "ft_ssl_seed0/wise0.5": run((0.9, 0.1, 0.3), test=0.55, val=0.6, eosinophils=0.9),
            "ft_ssl_seed1": run((0.4, 0.4, 0.4), test=0.5, val=0.5, eosinophils=0.1),
            "ft_ssl_seed1/wise0.5": run((0.8, 0.2, 0.2), test=0.62, val=0.65, eosinophils=0.3),
            "ft_random_seed0": run((0.3, 0.3, 0.3), eosinophils=0.2),
            "ft_random_seed1": run((0.3, 0.3, 0.3), eosinophils=0.2),
        },
    )
    row = ["--row", "SSL=ft_ssl|ft_ssl/wise0.5", "--baseline", "random=ft_random"]
    out = tmp_path / "val.json"
    assert seed_table.main([str(path), *row, "--select", "val", "--recall", "plain", "--json-out", str(out)]) == 0
    result = json.loads(out.read_text())
    # val: seed 0 keeps its end (0.7 > 0.6), seed 1 its average (0.65 > 0.5), on every lab
    assert result["picks"]["SSL"]["adabn"]["bionet"] == {"0": "ft_ssl", "1": "ft_ssl/wise0.5"}
    assert result["plain"]["SSL"]["cellavision"]["values"] == pytest.approx([0.5, 0.8])
    assert result["adabn"]["SSL"]["bccd_crops"]["values"] == pytest.approx([0.4, 0.1])
    assert result["test"]["SSL"]["mean"] == pytest.approx(0.61)
    assert result["recall"]["plain"]["SSL"]["bionet"]["EO"] == pytest.approx(0.4)  # 0.5 and 0.3
    assert "picked by val: SSL: ft_ssl x1, ft_ssl/wise0.5 x1 (of 2)" in capsys.readouterr().out

    out = tmp_path / "labs.json"
    assert seed_table.main([str(path), *row, "--select", "labs", "--json-out", str(out)]) == 0
    result = json.loads(out.read_text())
    # labs: each lab's pick is the best on the two others (a tie keeps the first listed)
    assert result["within"]["SSL"]["cellavision"]["values"] == pytest.approx([0.5, 0.4])
    assert result["within"]["SSL"]["bccd_crops"]["values"] == pytest.approx([0.1, 0.2])
    assert result["within"]["SSL"]["bionet"]["values"] == pytest.approx([0.5, 0.2])
    assert result["picks"]["SSL"]["within"]["bionet"] == {"0": "ft_ssl", "1": "ft_ssl/wise0.5"}
    assert "SSL" not in result["test"]  # a pick per lab has no single PBC test score
    assert "picked by labs: SSL: ft_ssl x12, ft_ssl/wise0.5 x12 (of 24)" in capsys.readouterr().out


def test_seed_table_refuses_a_selection_it_cannot_make(tmp_path: Path) -> None:
    seed_table = load_benchmark("seed_table")
    path = write(
        tmp_path / "a.json",
        {
            "ft_ssl_seed0": run((0.5, 0.5, 0.5), val=0.7),
            "ft_ssl_seed0/wise0.5": run((0.9, 0.1, 0.3)),
            "ft_ssl_seed1": run((0.5, 0.5, 0.5), val=0.7),
            "ft_other_seed0": run((0.5, 0.5, 0.5), val=0.7),
        },
    )
    with pytest.raises(SystemExit, match="SSL: 2 candidate groups need --select"):
        seed_table.main([str(path), "--row", "SSL=ft_ssl|ft_ssl/wise0.5"])
    with pytest.raises(SystemExit, match="ft_ssl/wise0.5 has seeds \\[0\\], ft_ssl \\[0, 1\\]"):
        seed_table.main([str(path), "--row", "SSL=ft_ssl|ft_ssl/wise0.5", "--select", "labs"])
    with pytest.raises(SystemExit, match="ft_ssl/wise0.5: runs without a val score"):
        seed_table.main([str(path), "--row", "SSL=ft_ssl|ft_ssl/wise0.5", "--select", "val", "--seeds", "0"])
    with pytest.raises(SystemExit):
        seed_table.main([str(path), "--row", "SSL=ft_ssl|", "--select", "val"])


def with_images(entry: dict[str, Any], true: list[str], pred: list[str]) -> dict[str, Any]:
    """`entry` with these per-image codes on every lab and scoring, as rescore.py keeps them."""
    for scoring in entry.values():
        for lab in LABS:
            scoring[lab].update(true=true, pred=pred)
    return entry


def test_seed_table_bootstraps_the_gap_over_each_labs_images(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    seed_table = load_benchmark("seed_table")
    truth = ["NE"] * 40 + ["LY"] * 40 + ["BA"] * 2
    all_right = list(truth)
    one_basophil_missed = ["NE"] * 40 + ["LY"] * 40 + ["BA", "NE"]
    half_wrong = ["NE"] * 20 + ["LY"] * 20 + ["LY"] * 40 + ["NE"] * 2
    path = write(
        tmp_path / "a.json",
        {
            "ft_good_seed0": with_images(run((0.5, 0.5, 0.5)), truth, all_right),
            "ft_good_seed1": with_images(run((0.5, 0.5, 0.5)), truth, all_right),
            # ahead of the baseline by one basophil of one seed, the same on the other seed
            "ft_lucky_seed0": with_images(run((0.5, 0.5, 0.5)), truth, all_right),
            "ft_lucky_seed1": with_images(run((0.5, 0.5, 0.5)), truth, half_wrong),
            "ft_random_seed0": with_images(run((0.5, 0.5, 0.5)), truth, one_basophil_missed),
            "ft_random_seed1": with_images(run((0.5, 0.5, 0.5)), truth, half_wrong),
            "ft_old_seed0": run((0.5, 0.5, 0.5)),
            "ft_old_seed1": run((0.5, 0.5, 0.5)),
        },
    )
    out = tmp_path / "table.json"
    argv = [str(path), "--row", "good=ft_good", "--row", "lucky=ft_lucky", "--baseline", "random=ft_random"]
    assert seed_table.main([*argv, "--bootstrap", "500", "--json-out", str(out)]) == 0
    gaps = json.loads(out.read_text())["bootstrap"]
    assert set(gaps) == {"plain", "within", "adabn", "adabn+within"} and set(gaps["plain"]) == {"good", "lucky"}
    good, lucky = gaps["plain"]["good"]["bionet"], gaps["plain"]["lucky"]["bionet"]
    # On the lab's own images the gap is the difference of the seed means.
    f1 = {
        name: f1_score(truth, pred, labels=["NE", "BA", "LY"], average="macro")
        for name, pred in (("missed", one_basophil_missed), ("half", half_wrong))
    }
    assert good["gap"] == pytest.approx(1.0 - (f1["missed"] + f1["half"]) / 2)
    assert lucky["gap"] == pytest.approx((1.0 - f1["missed"]) / 2)
    # Right everywhere: every draw favours it.
    assert good["above"] == 1.0 and 0 < good["low"] <= good["gap"] <= good["high"]
    # Ahead by one basophil: a draw without that image is a tie, about (81/82)^82 = 37 % of them.
    assert lucky["low"] == 0.0 and 0.5 < lucky["above"] < 0.75
    assert gaps["within"]["good"] == gaps["plain"]["good"]  # the same draws for every scoring
    printed = capsys.readouterr().out
    assert "bootstrap over each lab's images (500 draws)" in printed
    assert "plain: lucky: cellavision +0.058 (+0.000 to " in printed
    with pytest.raises(SystemExit, match="old: no per-image predictions on cellavision"):
        seed_table.main([str(path), "--row", "old=ft_old", "--baseline", "random=ft_random", "--bootstrap", "10"])
    other = write(tmp_path / "b.json", {"ft_other_seed0": with_images(run((0.5, 0.5, 0.5)), truth[::-1], all_right)})
    argv = [str(path), str(other), "--row", "other=ft_other", "--baseline", "random=ft_random", "--seeds", "0"]
    with pytest.raises(SystemExit, match="scored on other cellavision images"):
        seed_table.main([*argv, "--bootstrap", "10"])
    with pytest.raises(SystemExit):
        seed_table.main([str(path), "--row", "good=ft_good", "--bootstrap", "10"])  # no baseline to measure against
