"""Split invariants: seeded, stratified, duplicates together, stable when sources are added."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from leukoshift.data.splits import assign_splits, leave_one_source_out
from leukoshift.errors import UserError


def make_frame(counts: dict[tuple[str, str], int], seed: int = 0, dup_every: int = 0) -> pd.DataFrame:
    """Rows per (source, label); every ``dup_every``-th row repeats the previous sha1."""
    rng = np.random.default_rng(seed)
    rows = []
    for (source, label), n in counts.items():
        for k in range(n):
            sha = f"{source}-{label}-{k}-{rng.integers(1 << 40)}"
            if dup_every and k and k % dup_every == 0:
                sha = rows[-1]["sha1"]
            rows.append({"path": f"{source}/{label}/{k}.jpg", "source": source, "label": label, "sha1": sha})
    return pd.DataFrame(rows)


COUNTS = {("a", "LY"): 200, ("a", "EO"): 100, ("a", ""): 50, ("b", "LY"): 120, ("b", "NE"): 30}


def test_seeded_and_deterministic() -> None:
    frame = make_frame(COUNTS)
    first = assign_splits(frame, seed=3)
    assert first.equals(assign_splits(frame.copy(), seed=3))
    assert not first.equals(assign_splits(frame, seed=4))
    assert first.index.equals(frame.index)


def test_ratios_hold_in_every_stratum() -> None:
    frame = make_frame(COUNTS)
    splits = assign_splits(frame, (0.8, 0.1, 0.1), seed=0)
    for (source, label), n in COUNTS.items():
        got = splits[(frame["source"] == source) & (frame["label"] == label)].value_counts()
        assert got["test"] == round(n * 0.1) and got["val"] == round(n * 0.1)
        assert got["train"] == n - 2 * round(n * 0.1)
    other = assign_splits(frame, (0.6, 0.2, 0.2), seed=0)
    assert (other == "test").sum() == sum(round(n * 0.2) for n in COUNTS.values())


def test_tiny_strata_go_to_training_first() -> None:
    frame = make_frame({("a", "BA"): 1, ("a", "MO"): 4, ("a", "LY"): 5})
    splits = assign_splits(frame)
    assert splits[frame["label"] == "BA"].tolist() == ["train"]
    assert splits[frame["label"] == "MO"].tolist().count("train") == 4
    assert splits[frame["label"] == "LY"].value_counts().to_dict() == {
        "train": 3,
        "val": 1,
        "test": 1,
    }


def test_duplicates_share_a_split_even_across_labels_and_sources() -> None:
    frame = make_frame(COUNTS, dup_every=3)
    # Cross-label and cross-source copies too.
    frame.loc[5, "sha1"] = frame.loc[210, "sha1"]  # a/LY = a/EO
    frame.loc[400, "sha1"] = frame.loc[7, "sha1"]  # b/LY = a/LY
    for seed in range(5):
        splits = assign_splits(frame, seed=seed)
        per_sha = splits.groupby(frame["sha1"]).nunique()
        assert per_sha.max() == 1
        assert (splits != "train").any()


def test_row_order_does_not_matter() -> None:
    frame = make_frame(COUNTS)
    shuffled = frame.sample(frac=1.0, random_state=1)
    a = assign_splits(frame, seed=2)
    b = assign_splits(shuffled, seed=2)
    assert a.equals(b.loc[a.index])


def test_adding_a_source_or_class_keeps_old_rows() -> None:
    old = make_frame({("a", "LY"): 200, ("a", "EO"): 100}, seed=0)
    before = assign_splits(old, seed=0)
    grown = pd.concat([old, make_frame({("b", "LY"): 80, ("a", "MO"): 40}, seed=1)], ignore_index=True)
    after = assign_splits(grown, seed=0)
    assert after.iloc[: len(old)].tolist() == before.tolist()


def test_adding_one_image_moves_at_most_a_boundary_one() -> None:
    old = make_frame({("a", "LY"): 99})
    grown = pd.concat([old, make_frame({("a", "LY"): 1}, seed=9)], ignore_index=True)
    moved = (assign_splits(grown).iloc[:99].to_numpy() != assign_splits(old).to_numpy()).sum()
    assert moved <= 2


def test_missing_cells_and_bad_ratios() -> None:
    frame = make_frame({("a", "LY"): 20})
    frame.loc[:4, "label"] = np.nan  # pandas gives NaN for empty cells of frames built in code
    frame.loc[5, "sha1"] = np.nan
    splits = assign_splits(frame)
    assert splits.isin(["train", "val", "test"]).all()
    for ratios in ((0.5, 0.5, 0.5), (0.8, 0.2), (1.1, -0.05, -0.05)):
        with pytest.raises(UserError, match="split ratios"):
            assign_splits(frame, ratios)


def test_leave_one_source_out_never_trains_on_a_held_out_image() -> None:
    frame = make_frame({("a", "LY"): 30, ("b", "LY"): 20, ("c", "EO"): 10})
    frame.loc[3, "sha1"] = frame.loc[35, "sha1"]  # a copy of a b image inside a
    frame.loc[52, "sha1"] = frame.loc[8, "sha1"]  # a copy of an a image inside c
    folds = leave_one_source_out(frame)
    assert [f.held_out for f in folds] == ["a", "b", "c"]
    for fold in folds:
        held = frame.loc[fold.held_out_rows]
        train = frame.loc[fold.train]
        assert set(held["source"]) == {fold.held_out}
        assert fold.held_out not in set(train["source"])
        assert not set(held["sha1"]) & set(train["sha1"])
        assert len(fold.train) + len(fold.held_out_rows) + fold.leaked == len(frame)
    # Holding out a removes its copies in b and c; holding out b or c removes one a row.
    assert {f.held_out: f.leaked for f in folds} == {"a": 2, "b": 1, "c": 1}
    with pytest.raises(UserError, match="held-out source 'z' has no rows"):
        leave_one_source_out(frame, ["z"])
