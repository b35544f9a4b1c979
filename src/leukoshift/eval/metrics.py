"""Scoring 11-class predictions against labels of mixed depth.

Models always output probabilities over the 11 fine classes
(:data:`~leukoshift.taxonomy.FINE_CLASSES`); the truth may be fine (``SNE``, ``LY``, ...)
or coarse (``NE``, ``IG``), because sources label at different depths.

The rule
--------
Each row is compared at the finest level its truth has:

* fine truth (``SNE``, ``BNE``, ``LY``, ...) against the argmax over the 11 fine
  probabilities;
* coarse truth (``NE``, ``IG``) against the argmax over the 8 group probabilities
  (:func:`~leukoshift.taxonomy.group_probs`, fine probabilities summed within a group), so
  ``NE`` is scored correct when most probability lies on ``SNE`` + ``BNE`` together.

Single-member codes (``EO``, ``BA``, ``LY``, ``MO``, ``ERB``, ``PLT``) are both a fine class
and a group, so a row alone cannot say its depth; the truth as a whole decides it
(``level="auto"``):

* no coarse code in the truth -> every row at the fine level (``level == "fine"``);
* coarse codes and no strictly fine code (SNE, BNE, MMY, MY, PMY) -> the truth is at the
  group depth (e.g. a lab labelling the five white-cell types) and every row is scored
  at the group level (``level == "group"``);
* coarse codes and strictly fine codes (e.g. PBC with a few rows only labelled ``IG``)
  -> each row at its own level, truth and prediction codes in one label space
  (``SNE``, ``BNE``, ``NE``, ``MMY``, ...), and ``level == "mixed"``.

``level="group"`` forces the group level for every row: the truth collapsed to its
group and the prediction the argmax of the 8 group probabilities. This is how external
labs are "scored at the 5-type level": predicting ``IG``, ``ERB`` or ``PLT`` for a
neutrophil counts as an error. ``level="fine"`` demands fine truth everywhere.

Averages
--------
Macro-F1 and balanced accuracy average over the classes present in the truth
(labels = the truth's classes, in taxonomy order), and per-class precision, recall and F1
are reported for those classes. Predictions into classes absent from the truth (a
neutrophil called ``ERB`` in a lab without erythroblasts) lower the recall of the true
class, and so the averages, but do not add a zero-F1 class of their own to the macro
average; they appear as extra columns of the confusion matrix.

A lab's label set
-----------------
A lab that labels only white cells has no immature granulocytes, erythroblasts or
platelets to find, and its users know it. ``classes`` (e.g. the five white-cell types,
:data:`~leukoshift.taxonomy.WBC5`) restricts the predictions to the fine classes those
codes cover (:func:`restrict_to`: the others' probabilities set to zero, the rest
renormalised) before the argmax. It is declared, not read from the truth: the truth
decides only which classes the averages run over, as always. Scores with and without it
answer different questions (is the model right among the classes this lab uses, or at
all) and are reported side by side, never mixed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

from leukoshift.errors import UserError
from leukoshift.taxonomy import (
    COARSE_CODES,
    FINE_CLASSES,
    GROUP_OF,
    GROUPS,
    LABEL_INDEX,
    group_of,
    group_probs,
    label_mask,
    validate_codes,
)

ScoreLevel = Literal["auto", "fine", "group"]
RowLevel = Literal["fine", "group"]

#: Order of every code in one label space: each group's members, then the group itself
#: when it is coarse (SNE, BNE, NE, MMY, MY, PMY, IG, EO, ...).
CODE_ORDER: tuple[str, ...] = tuple(
    code
    for group in GROUPS
    for code in (
        *(c for c in FINE_CLASSES if GROUP_OF[c] == group),
        *((group,) if group in COARSE_CODES else ()),
    )
)
_RANK = {code: i for i, code in enumerate(CODE_ORDER)}
#: Fine codes that are not also a group: their presence marks a truth as fine-grained.
STRICTLY_FINE: tuple[str, ...] = tuple(c for c in FINE_CLASSES if c not in GROUPS)


class ScoringError(UserError):
    """Predictions and truth that cannot be scored together."""


def ordered(codes: Sequence[str] | set[str]) -> list[str]:
    """Distinct codes in taxonomy order (:data:`CODE_ORDER`)."""
    return sorted(set(codes), key=_RANK.__getitem__)


def _check_probs(fine_probs: np.ndarray, n: int | None = None) -> np.ndarray:
    probs = np.asarray(fine_probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] != len(FINE_CLASSES):
        raise ScoringError(
            f"predictions must be (N, {len(FINE_CLASSES)}) fine-class probabilities, got shape {probs.shape}"
        )
    if n is not None and probs.shape[0] != n:
        raise ScoringError(f"{probs.shape[0]} prediction rows for {n} truth labels")
    if not np.isfinite(probs).all():
        raise ScoringError("predictions contain NaN or infinite values")
    return probs


def _check_truth(truth: Sequence[str]) -> list[str]:
    codes = [str(t) if t is not None and not pd.isna(t) else "" for t in truth]
    missing = sum(1 for c in codes if not c)
    if missing:
        raise ScoringError(f"{missing} of {len(codes)} truth labels are empty; select labelled rows before scoring")
    validate_codes(codes)
    return codes


def row_levels(truth: Sequence[str], level: ScoreLevel = "auto") -> tuple[np.ndarray, str]:
    """Level each row is scored at, and the level of the whole set.

    Returns ``(levels, overall)``: ``levels`` an array of ``"fine"`` / ``"group"`` per row,
    ``overall`` one of ``"fine"``, ``"group"``, ``"mixed"`` (see the module docstring).
    """
    codes = list(truth)
    present = set(codes)
    coarse = present & set(COARSE_CODES)
    if level == "fine":
        if coarse:
            raise ScoringError(
                f"level 'fine' asked for but the truth has coarse label(s) "
                f"{', '.join(ordered(coarse))}; use level 'auto' or 'group'"
            )
        overall = "fine"
    elif level == "group":
        overall = "group"
    elif level == "auto":
        if not coarse:
            overall = "fine"
        elif present & set(STRICTLY_FINE):
            overall = "mixed"
        else:
            overall = "group"
    else:
        raise ScoringError(f"unknown scoring level {level!r}; valid: auto, fine, group")
    if overall == "mixed":
        levels = np.array(["group" if c in COARSE_CODES else "fine" for c in codes], dtype=object)
    else:
        levels = np.full(len(codes), overall, dtype=object)
    return levels, overall


def restrict_to(fine_probs: np.ndarray, classes: Sequence[str]) -> np.ndarray:
    """(N, 11) probabilities restricted to the fine classes ``classes`` cover, renormalised.

    ``classes`` are label codes (``NE`` stands for SNE and BNE); rows that put no
    probability on any of them become uniform over them rather than dividing by zero.
    """
    codes = [str(c) for c in classes]
    if not codes:
        raise ScoringError("classes: give at least one label code")
    validate_codes(codes)
    allowed = label_mask(bool)[[LABEL_INDEX[c] for c in codes]].any(axis=0)
    probs = _check_probs(fine_probs) * allowed
    total = probs.sum(axis=1, keepdims=True)
    uniform = np.broadcast_to(allowed / allowed.sum(), probs.shape)
    return np.where(total > 0, probs / np.where(total > 0, total, 1.0), uniform)


def compare_codes(
    fine_probs: np.ndarray,
    truth: Sequence[str],
    level: ScoreLevel = "auto",
    classes: Sequence[str] | None = None,
) -> tuple[list[str], list[str], np.ndarray, str]:
    """Truth and predicted codes, each row at its scoring level.

    Returns ``(true_codes, pred_codes, row_levels, overall_level)``; ``true_codes`` is the
    truth collapsed to its group where the row is scored at the group level. ``classes``
    restricts the predictions to a lab's label set (:func:`restrict_to`).
    """
    codes = _check_truth(truth)
    probs = _check_probs(fine_probs, len(codes))
    if classes is not None:
        probs = restrict_to(probs, classes)
    levels, overall = row_levels(codes, level)
    fine_pred = np.asarray(FINE_CLASSES, dtype=object)[probs.argmax(axis=1)]
    group_pred = np.asarray(GROUPS, dtype=object)[group_probs(probs).argmax(axis=1)]
    at_group = levels == "group"
    pred = np.where(at_group, group_pred, fine_pred)
    true = [group_of(c) if g else c for c, g in zip(codes, at_group, strict=True)]
    return true, [str(p) for p in pred], levels, overall


@dataclass
class Scores:
    """Classification scores of one prediction set against one truth.

    ``level`` is ``"fine"``, ``"group"`` or ``"mixed"`` (rows at their own level);
    ``n_fine`` / ``n_group`` count the rows scored at each level.
    """

    n: int
    level: str
    n_fine: int
    n_group: int
    accuracy: float
    balanced_accuracy: float
    macro_f1: float
    weighted_f1: float
    labels: list[str]  # the truth's classes, over which averages are taken
    per_class: pd.DataFrame  # index: labels; columns precision, recall, f1, support
    confusion: pd.DataFrame  # index: truth codes; columns: truth and predicted codes

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready numbers (plain floats and ints, no NaN)."""
        per_class = {
            str(code): {
                "precision": float(row.precision),
                "recall": float(row.recall),
                "f1": float(row.f1),
                "support": int(row.support),
            }
            for code, row in self.per_class.iterrows()
        }
        return {
            "n": self.n,
            "level": self.level,
            "n_fine": self.n_fine,
            "n_group": self.n_group,
            "accuracy": self.accuracy,
            "balanced_accuracy": self.balanced_accuracy,
            "macro_f1": self.macro_f1,
            "weighted_f1": self.weighted_f1,
            "labels": list(self.labels),
            "per_class": per_class,
            "confusion": {
                "truth": [str(c) for c in self.confusion.index],
                "predicted": [str(c) for c in self.confusion.columns],
                "counts": self.confusion.to_numpy().astype(int).tolist(),
            },
        }


def confusion_frame(true: Sequence[str], pred: Sequence[str]) -> pd.DataFrame:
    """Counts with one row per truth code and one column per truth or predicted code."""
    rows = ordered(true)
    cols = ordered(set(true) | set(pred))
    r = {c: i for i, c in enumerate(rows)}
    k = {c: i for i, c in enumerate(cols)}
    counts = np.zeros((len(rows), len(cols)), dtype=np.int64)
    np.add.at(counts, ([r[t] for t in true], [k[p] for p in pred]), 1)
    frame = pd.DataFrame(counts, index=pd.Index(rows, name="truth"), columns=cols)
    frame.columns.name = "predicted"
    return frame


def score(
    fine_probs: np.ndarray,
    truth: Sequence[str],
    level: ScoreLevel = "auto",
    classes: Sequence[str] | None = None,
) -> Scores:
    """Accuracy, balanced accuracy, macro/weighted F1, per-class scores and confusion.

    ``fine_probs`` is (N, 11) over :data:`~leukoshift.taxonomy.FINE_CLASSES` (softmax
    outputs; only their order within a row and their group sums matter); ``truth`` holds N
    label codes; ``classes``, a lab's declared label set, restricts the predictions to it.
    See the module docstring for the level rule and what the averages cover.
    """
    true, pred, levels, overall = compare_codes(fine_probs, truth, level, classes)
    if not true:
        raise ScoringError("nothing to score: the truth is empty")
    labels = ordered(true)
    precision, recall, f1, support = precision_recall_fscore_support(true, pred, labels=labels, zero_division=0)
    per_class = pd.DataFrame(
        {"precision": precision, "recall": recall, "f1": f1, "support": support},
        index=pd.Index(labels, name="class"),
    )
    n_group = int((levels == "group").sum())
    return Scores(
        n=len(true),
        level=overall,
        n_fine=len(true) - n_group,
        n_group=n_group,
        accuracy=float(accuracy_score(true, pred)),
        # mean recall over the truth's classes: sklearn's balanced accuracy
        balanced_accuracy=float(np.mean(recall)),
        macro_f1=float(f1_score(true, pred, labels=labels, average="macro", zero_division=0)),
        weighted_f1=float(f1_score(true, pred, labels=labels, average="weighted", zero_division=0)),
        labels=labels,
        per_class=per_class,
        confusion=confusion_frame(true, pred),
    )


def resampled_macro_f1(true: Sequence[str], pred: Sequence[str], draws: np.ndarray) -> np.ndarray:
    """Macro-F1 of each resample of one prediction set, as :func:`score` computes it.

    ``true`` and ``pred`` are the codes :func:`compare_codes` returns; ``draws`` is (B, N)
    indices into them, one resample per row (a bootstrap over images). Each resample
    averages over the classes present in its own truth, as :func:`score` would on those
    rows. Vectorised over resamples: a paired bootstrap of a 100-image lab over thousands
    of draws and a dozen runs takes a second, where one sklearn call per draw takes minutes.
    """
    if len(true) != len(pred):
        raise ScoringError(f"{len(true)} true codes against {len(pred)} predictions")
    draws = np.asarray(draws)
    if draws.ndim != 2 or (draws.size and (draws.min() < 0 or draws.max() >= len(true))):
        raise ScoringError(f"draws must be (B, N) indices below {len(true)}, got shape {draws.shape}")
    codes = ordered(set(true) | set(pred))
    index = {code: i for i, code in enumerate(codes)}
    t = np.asarray([index[c] for c in true])[draws]
    p = np.asarray([index[c] for c in pred])[draws]
    f1 = np.zeros((draws.shape[0], len(codes)))
    present = np.zeros_like(f1, dtype=bool)
    for k in range(len(codes)):
        support = (t == k).sum(axis=1)
        predicted = (p == k).sum(axis=1)
        hits = ((t == k) & (p == k)).sum(axis=1)
        # F1 = 2 TP / (support + predicted); zero where the class is neither true nor predicted
        f1[:, k] = np.divide(2 * hits, support + predicted, out=np.zeros(len(t)), where=support + predicted > 0)
        present[:, k] = support > 0
    return (f1 * present).sum(axis=1) / present.sum(axis=1)


def predictions_frame(
    fine_probs: np.ndarray,
    paths: Sequence[str],
    truth: Sequence[str] | None = None,
    top: int = 3,
    threshold: float = 0.5,
    level: ScoreLevel = "auto",
) -> pd.DataFrame:
    """One row per image: top-``top`` classes and probabilities, group, confidence flag.

    Columns: ``path``, ``pred_1``, ``prob_1``, ... ``pred_top``, ``prob_top``, ``group``
    (argmax of the group probabilities) and ``group_prob``, ``low_confidence`` (highest
    fine probability below ``threshold``). With ``truth``: ``truth``, ``level`` (the row's
    scoring level), ``pred`` (the prediction at that level) and ``correct``.
    """
    probs = _check_probs(fine_probs, len(paths))
    if not 1 <= top <= len(FINE_CLASSES):
        raise ScoringError(f"top must be between 1 and {len(FINE_CLASSES)}, got {top}")
    order = np.argsort(-probs, axis=1, kind="stable")[:, :top]
    names = np.asarray(FINE_CLASSES, dtype=object)
    frame = pd.DataFrame({"path": [str(p) for p in paths]})
    for j in range(top):
        frame[f"pred_{j + 1}"] = names[order[:, j]].astype(str)
        frame[f"prob_{j + 1}"] = np.take_along_axis(probs, order[:, j : j + 1], axis=1)[:, 0]
    gp = group_probs(probs)
    frame["group"] = np.asarray(GROUPS, dtype=object)[gp.argmax(axis=1)].astype(str)
    frame["group_prob"] = gp.max(axis=1)
    frame["low_confidence"] = probs.max(axis=1) < threshold
    if truth is not None:
        true, pred, levels, _ = compare_codes(probs, truth, level)
        frame["truth"] = list(truth)
        frame["level"] = levels.astype(str)
        frame["pred"] = pred
        frame["correct"] = np.asarray(true, dtype=object) == np.asarray(pred, dtype=object)
    return frame
