"""The group-aware loss is PyTorch's cross-entropy for single classes and trains groups."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from leukoshift.finetune.loss import GroupCrossEntropy, class_weights
from leukoshift.taxonomy import FINE_CLASSES, LABEL_INDEX


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
@pytest.mark.parametrize("weighted", [False, True])
def test_equals_torch_cross_entropy_for_fine_labels(smoothing: float, weighted: bool) -> None:
    torch.manual_seed(0)
    logits = torch.randn(16, 11)
    labels = torch.randint(0, 11, (16,))
    w13 = torch.rand(13) + 0.5 if weighted else None
    ours = GroupCrossEntropy(w13, smoothing)(logits, labels)
    ref = F.cross_entropy(logits, labels, weight=None if w13 is None else w13[:11], label_smoothing=smoothing)
    assert torch.allclose(ours, ref, atol=1e-6)


def test_group_label_is_minus_log_of_summed_member_probability() -> None:
    logits = torch.randn(4, 11)
    ne = LABEL_INDEX["NE"]
    loss = GroupCrossEntropy()(logits, torch.full((4,), ne))
    p = logits.softmax(1)
    expected = -torch.log(p[:, FINE_CLASSES.index("SNE")] + p[:, FINE_CLASSES.index("BNE")]).mean()
    assert torch.allclose(loss, expected, atol=1e-6)


def test_unlabeled_rows_are_ignored() -> None:
    logits = torch.randn(4, 11, requires_grad=True)
    labels = torch.tensor([0, -1, 3, -1])
    crit = GroupCrossEntropy()
    assert torch.allclose(crit(logits, labels), crit(logits[[0, 2]], labels[[0, 2]]))
    zero = crit(logits, torch.full((4,), -1))
    zero.backward()
    assert zero.item() == 0.0


def test_a_five_type_source_trains_through_groups() -> None:
    """Only NE/LY/MO/EO/BA labels: the model learns to put group mass right."""
    torch.manual_seed(0)
    codes = ["NE", "LY", "MO", "EO", "BA"]
    centres = torch.randn(5, 8) * 3
    y = torch.randint(0, 5, (256,))
    x = centres[y] + torch.randn(256, 8) * 0.5
    labels = torch.tensor([LABEL_INDEX[codes[i]] for i in y])
    head = torch.nn.Linear(8, 11)
    opt = torch.optim.Adam(head.parameters(), lr=0.05)
    crit = GroupCrossEntropy(class_weights(labels.numpy()), 0.1)
    first = None
    for _ in range(150):
        loss = crit(head(x), labels)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first
    from leukoshift.taxonomy import group_probs

    groups = group_probs(head(x).softmax(1).detach().numpy()).argmax(1)
    want = np.array([["NE", "IG", "EO", "BA", "LY", "MO", "ERB", "PLT"].index(codes[i]) for i in y])
    assert (groups == want).mean() > 0.95


def test_class_weights_follow_the_published_rule() -> None:
    labels = np.array([0] * 30 + [1] * 10 + [LABEL_INDEX["NE"]] * 20)
    w = class_weights(labels)
    assert w[0] == pytest.approx(60 / 2 / 30)
    assert w[1] == pytest.approx(60 / 2 / 10)
    assert w[LABEL_INDEX["NE"]] == pytest.approx(60 / 2 / 20)
    # absent codes get the mean of present fine weights
    assert w[5] == pytest.approx((w[0] + w[1]) / 2)
