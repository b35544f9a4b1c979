"""Scoring at mixed label depth: numbers against scikit-learn on hand-made cases."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
)

from leukoshift.errors import UserError
from leukoshift.eval.metrics import (
    CODE_ORDER,
    ScoringError,
    compare_codes,
    predictions_frame,
    resampled_macro_f1,
    restrict_to,
    row_levels,
    score,
)
from leukoshift.taxonomy import FINE_CLASSES, FINE_INDEX, WBC5


def one_hot(codes: list[str], confidence: float = 0.8) -> np.ndarray:
    """Probabilities with ``confidence`` on each code, the rest spread evenly."""
    probs = np.full((len(codes), len(FINE_CLASSES)), (1 - confidence) / (len(FINE_CLASSES) - 1))
    for i, code in enumerate(codes):
        probs[i, FINE_INDEX[code]] = confidence
    return probs


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_fine_truth_matches_sklearn() -> None:
    truth = ["SNE", "SNE", "BNE", "LY", "LY", "LY", "MO", "EO", "BA", "SNE"]
    pred = ["SNE", "BNE", "BNE", "LY", "MO", "LY", "MO", "EO", "EO", "PLT"]
    s = score(one_hot(pred), truth)
    assert s.level == "fine" and s.n == 10 and s.n_group == 0
    labels = ["SNE", "BNE", "EO", "BA", "LY", "MO"]  # truth classes, taxonomy order
    assert s.labels == labels
    assert s.accuracy == pytest.approx(accuracy_score(truth, pred))
    assert s.balanced_accuracy == pytest.approx(balanced_accuracy_score(truth, pred))
    assert s.macro_f1 == pytest.approx(f1_score(truth, pred, labels=labels, average="macro"))
    assert s.weighted_f1 == pytest.approx(f1_score(truth, pred, labels=labels, average="weighted"))
    p, r, f, sup = precision_recall_fscore_support(truth, pred, labels=labels, zero_division=0)
    np.testing.assert_allclose(s.per_class["precision"], p)
    np.testing.assert_allclose(s.per_class["recall"], r)
    np.testing.assert_allclose(s.per_class["f1"], f)
    np.testing.assert_array_equal(s.per_class["support"], sup)
    # PLT was predicted but is not in the truth: a confusion column, not a macro class
    assert "PLT" in s.confusion.columns and "PLT" not in s.per_class.index


def test_confusion_counts() -> None:
    truth = ["SNE", "SNE", "BNE", "LY", "LY", "LY", "MO"]
    pred = ["SNE", "BNE", "BNE", "LY", "MO", "ERB", "MO"]
    conf = score(one_hot(pred), truth).confusion
    assert list(conf.index) == ["SNE", "BNE", "LY", "MO"]
    assert list(conf.columns) == ["SNE", "BNE", "LY", "MO", "ERB"]
    cols = list(conf.columns)
    expected = confusion_matrix(truth, pred, labels=cols)[: len(conf.index)]
    np.testing.assert_array_equal(conf.to_numpy(), expected)
    assert conf.loc["LY", "ERB"] == 1 and conf.to_numpy().sum() == len(truth)


def test_coarse_truth_correct_for_either_member() -> None:
    # NE rows: argmax over the groups. SNE 0.35 + BNE 0.3 outweighs LY 0.35 at group level.
    probs = np.zeros((3, len(FINE_CLASSES)))
    probs[0, FINE_INDEX["SNE"]] = 0.9
    probs[1, FINE_INDEX["BNE"]] = 0.9
    probs[2, [FINE_INDEX["SNE"], FINE_INDEX["BNE"], FINE_INDEX["LY"]]] = [0.33, 0.32, 0.35]
    probs += (1 - probs.sum(axis=1, keepdims=True)) / len(FINE_CLASSES)
    s = score(probs, ["NE", "NE", "NE"])
    assert s.level == "group" and s.n_group == 3
    assert s.accuracy == 1.0 and s.macro_f1 == 1.0


def test_mixed_depth_each_row_at_its_level() -> None:
    truth = ["SNE", "BNE", "NE", "NE", "IG", "MY", "LY"]
    pred = ["SNE", "SNE", "BNE", "LY", "PMY", "MY", "LY"]
    s = score(one_hot(pred), truth)
    assert s.level == "mixed" and (s.n_fine, s.n_group) == (4, 3)
    # the label space holds fine and group codes together
    true_codes = ["SNE", "BNE", "NE", "NE", "IG", "MY", "LY"]
    pred_codes = ["SNE", "SNE", "NE", "LY", "IG", "MY", "LY"]
    labels = ["SNE", "BNE", "NE", "MY", "IG", "LY"]
    assert s.labels == labels
    assert s.accuracy == pytest.approx(accuracy_score(true_codes, pred_codes))
    assert s.macro_f1 == pytest.approx(f1_score(true_codes, pred_codes, labels=labels, average="macro"))
    assert s.balanced_accuracy == pytest.approx(balanced_accuracy_score(true_codes, pred_codes))


def test_five_type_truth_is_group_level_and_group_forcing() -> None:
    # A five-type lab: LY is at group depth, so SNE 0.3 + BNE 0.3 beats LY 0.4.
    probs = np.zeros((2, len(FINE_CLASSES)))
    probs[0, [FINE_INDEX["SNE"], FINE_INDEX["BNE"], FINE_INDEX["LY"]]] = [0.3, 0.3, 0.4]
    probs[1, FINE_INDEX["MO"]] = 1.0
    truth = ["LY", "NE"]
    auto = score(probs, truth)
    assert auto.level == "group" and auto.accuracy == 0.0  # row 0 -> NE, row 1 -> MO
    # without a coarse code the same LY row is fine truth and scored correct
    assert score(probs[:1], ["LY"]).accuracy == 1.0
    # forcing the group level on fine truth: collapse the truth, argmax the groups
    truth = ["SNE", "BNE", "LY", "MMY"]
    pred = ["BNE", "SNE", "ERB", "PMY"]
    forced = score(one_hot(pred), truth, level="group")
    assert forced.level == "group" and forced.labels == ["NE", "IG", "LY"]
    assert forced.accuracy == pytest.approx(0.75)
    assert forced.confusion.loc["LY", "ERB"] == 1
    assert score(one_hot(pred), truth, level="fine").accuracy == 0.0


def test_level_fine_rejects_coarse_truth_and_bad_input() -> None:
    with pytest.raises(UserError, match="coarse"):
        score(one_hot(["SNE"]), ["NE"], level="fine")
    with pytest.raises(UserError, match="shape"):
        score(np.ones((2, 8)), ["SNE", "LY"])
    with pytest.raises(UserError, match="prediction rows"):
        score(one_hot(["SNE"]), ["SNE", "LY"])
    with pytest.raises(UserError, match="empty"):
        score(one_hot(["SNE", "LY"]), ["SNE", ""])
    with pytest.raises(UserError, match="XYZ"):
        score(one_hot(["SNE"]), ["XYZ"])


def test_to_dict_is_json() -> None:
    s = score(one_hot(["SNE", "LY", "MO"]), ["SNE", "LY", "LY"])
    d = json.loads(json.dumps(s.to_dict()))
    assert d["n"] == 3 and d["level"] == "fine"
    assert d["per_class"]["LY"]["support"] == 2
    assert d["confusion"]["counts"] == s.confusion.to_numpy().tolist()


def test_row_levels_and_code_order() -> None:
    levels, overall = row_levels(["SNE", "IG", "LY"])
    assert overall == "mixed" and list(levels) == ["fine", "group", "fine"]
    assert CODE_ORDER[:3] == ("SNE", "BNE", "NE") and len(CODE_ORDER) == 13


def test_predictions_frame() -> None:
    probs = one_hot(["SNE", "LY", "MO"], confidence=0.8)
    probs[2] = one_hot(["MO"], confidence=0.4)[0]
    probs[2, FINE_INDEX["LY"]] = 0.3
    probs[2] /= probs[2].sum()
    frame = predictions_frame(probs, ["a.png", "b.png", "c.png"], truth=["NE", "LY", "LY"])
    assert list(frame["pred_1"]) == ["SNE", "LY", "MO"]
    assert frame.loc[2, "pred_2"] == "LY"
    assert (frame["prob_1"] >= frame["prob_2"]).all()
    assert (frame["prob_2"] >= frame["prob_3"]).all()
    assert list(frame["low_confidence"]) == [False, False, True]
    assert list(frame["group"]) == ["NE", "LY", "MO"]
    assert list(frame["correct"]) == [True, True, False]
    assert list(frame["level"]) == ["group"] * 3


def test_restrict_to_a_label_set_masks_and_renormalises() -> None:
    probs = np.zeros((3, len(FINE_CLASSES)))
    probs[0, [FINE_INDEX["MY"], FINE_INDEX["LY"], FINE_INDEX["SNE"]]] = [0.6, 0.3, 0.1]
    probs[1, [FINE_INDEX["PLT"], FINE_INDEX["BNE"]]] = [0.5, 0.5]
    probs[2, FINE_INDEX["ERB"]] = 1.0  # nothing on the label set: uniform over it, no NaN
    out = restrict_to(probs, ["NE", "LY"])  # NE covers SNE and BNE
    allowed = [FINE_INDEX[c] for c in ("SNE", "BNE", "LY")]
    assert np.allclose(out.sum(axis=1), 1.0)
    assert np.allclose(np.delete(out, allowed, axis=1), 0.0)
    assert out[0, FINE_INDEX["LY"]] == pytest.approx(0.75) and out[0, FINE_INDEX["SNE"]] == pytest.approx(0.25)
    assert out[1, FINE_INDEX["BNE"]] == pytest.approx(1.0)
    assert np.allclose(out[2, allowed], 1 / 3)
    with pytest.raises(UserError, match="XX"):
        restrict_to(probs, ["NE", "XX"])
    with pytest.raises(UserError, match="at least one"):
        restrict_to(probs, [])


def test_label_set_turns_out_of_set_predictions_into_in_set_ones() -> None:
    # A white-cell lab: a lymphocyte called IG (most mass on MY, LY second) and a
    # neutrophil called PLT. Restricted to the five types both become right; the truth
    # still decides the classes averaged over.
    truth = ["LY", "NE", "EO"]
    probs = np.full((3, len(FINE_CLASSES)), 0.01)
    probs[0, [FINE_INDEX["MY"], FINE_INDEX["LY"]]] = [0.5, 0.3]
    probs[1, [FINE_INDEX["PLT"], FINE_INDEX["SNE"], FINE_INDEX["BNE"]]] = [0.5, 0.2, 0.15]
    probs[2, FINE_INDEX["EO"]] = 0.9
    plain = score(probs, truth, level="group")
    within = score(probs, truth, level="group", classes=WBC5)
    assert plain.accuracy == pytest.approx(1 / 3) and within.accuracy == pytest.approx(1.0)
    assert within.labels == plain.labels == ["NE", "EO", "LY"]
    assert within.macro_f1 == pytest.approx(1.0)
    assert {"IG", "PLT"} <= set(plain.confusion.columns)
    assert set(within.confusion.columns) <= set(WBC5)


def test_resampled_macro_f1_is_score_on_each_resample() -> None:
    rng = np.random.default_rng(0)
    truth = [*rng.choice(["NE", "EO", "LY", "MO"], size=40), "BA"]  # one basophil
    pred = list(rng.choice(["SNE", "BNE", "EO", "LY", "MO", "ERB", "BA"], size=41))
    probs = one_hot(pred)
    true, got, _, _ = compare_codes(probs, truth, level="group")
    draws = rng.integers(0, len(true), size=(200, len(true)))
    draws[0] = np.arange(len(true))  # the sample itself
    draws[1] = np.zeros(len(true), dtype=int)  # one image 41 times
    resampled = resampled_macro_f1(true, got, draws)
    assert resampled[0] == pytest.approx(score(probs, truth, level="group").macro_f1)
    expected = [score(probs[d], [truth[i] for i in d], level="group").macro_f1 for d in draws]
    np.testing.assert_allclose(resampled, expected)
    # about a third of the draws miss the one basophil ((40/41)^41), and average over one class fewer
    assert sum("BA" not in {truth[i] for i in d} for d in draws) > 40
    with pytest.raises(ScoringError, match="draws must be"):
        resampled_macro_f1(true, got, np.array([[0, len(true)]]))
    with pytest.raises(ScoringError, match="40 true codes against 41"):
        resampled_macro_f1(true[:40], got, draws)
