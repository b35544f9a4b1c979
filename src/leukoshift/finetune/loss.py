"""Cross-entropy over 11 fine classes for labels of any depth.

A row labelled with a group (NE, IG) is trained on the group's probability, the sum of
its members' probabilities, so PBC's 11 classes and a lab's 5 white-cell types mix in one
training set. For rows whose label is a single class this is exactly PyTorch's
``cross_entropy`` with ``weight`` and ``label_smoothing`` (Szegedy et al. 2016), which the
tests check term by term.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from leukoshift.taxonomy import FINE_CLASSES, LABEL_CODES, label_mask


def class_weights(labels: Sequence[int] | np.ndarray, n_labels: int = len(LABEL_CODES)) -> np.ndarray:
    """The published rule ``(1 / count_c) * (total / 2)`` per label code present.

    Codes absent from training get the mean weight of the present fine classes: they
    still receive label-smoothing mass, and an absent class must not dominate it.
    """
    labels = np.asarray(labels)
    labels = labels[labels >= 0]
    counts = np.bincount(labels, minlength=n_labels).astype(np.float64)
    total = counts.sum()
    weights = np.zeros(n_labels)
    present = counts > 0
    weights[present] = (1.0 / counts[present]) * (total / 2.0)
    fine_present = present[: len(FINE_CLASSES)]
    fill = weights[: len(FINE_CLASSES)][fine_present].mean() if fine_present.any() else 1.0
    weights[~present] = fill
    return weights


class GroupCrossEntropy(nn.Module):
    """Weighted, label-smoothed cross-entropy whose targets may be groups of classes.

    loss_i = (1 - eps) * w[y_i] * -log(sum_{c in y_i} p_ic) + (eps / K) * sum_k w_k * -log p_ik,
    averaged with weights sum_i w[y_i], as PyTorch does. ``labels`` index
    :data:`~leukoshift.taxonomy.LABEL_CODES`; -1 rows are ignored.
    """

    def __init__(self, weights: np.ndarray | torch.Tensor | None = None, label_smoothing: float = 0.0) -> None:
        super().__init__()
        mask = torch.from_numpy(label_mask())
        self.register_buffer("log_mask", torch.log(mask), persistent=False)  # 0 or -inf
        w = torch.ones(len(LABEL_CODES)) if weights is None else torch.as_tensor(weights, dtype=torch.float32)
        self.register_buffer("weights", w.float(), persistent=False)
        self.label_smoothing = float(label_smoothing)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        keep = labels >= 0
        if not bool(keep.any()):
            return logits.sum() * 0.0  # keeps the graph; a batch of unlabeled rows adds nothing
        logits, labels = logits[keep].float(), labels[keep]
        log_p = F.log_softmax(logits, dim=1)
        target_log_p = torch.logsumexp(log_p + self.log_mask[labels], dim=1)
        w_rows = self.weights[labels]
        n_fine = logits.shape[1]
        smooth = -(log_p * self.weights[:n_fine]).sum(dim=1) / n_fine
        eps = self.label_smoothing
        per_row = (1.0 - eps) * w_rows * -target_log_p + eps * smooth
        return per_row.sum() / w_rows.sum()


def label_probs(fine_probs: torch.Tensor) -> torch.Tensor:
    """(B, 11) fine probabilities -> (B, 13) probability of every label code."""
    mask = torch.from_numpy(label_mask()).to(fine_probs)
    return fine_probs @ mask.T
