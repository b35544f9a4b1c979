"""Test-time batch-norm adaptation (AdaBN, Li et al. 2016) for a lab the model never saw.

A CNN's batch-norm layers normalise with the mean and variance of the training lab's
activations. Another lab's stain and optics shift those statistics, and every layer
after the first passes the shift on. AdaBN re-estimates the statistics on the new lab's
own images (labels unused, weights untouched) before predicting them: the cheapest
domain adaptation there is, and a standard DomainBed-style baseline.

Statistics are estimated per source, never across labs: a manifest holding two labs
gets two adapted copies of the model. The estimate weighs every batch of a lab equally
(``momentum=None``) instead of favouring the last ones as a running average would; with
one batch holding the whole lab it is the lab's exact mean and variance. Models without
batch norm (ViT: LayerNorm) have nothing to adapt, which is an error, not a silent no-op.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from leukoshift.data.loaders import ImageTable
from leukoshift.errors import UserError
from leukoshift.eval.embed import embed_table
from leukoshift.eval.evaluate import class_probabilities
from leukoshift.taxonomy import FINE_CLASSES


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def adapt_batchnorm(
    model: nn.Module, table: ImageTable, batch_size: int = 256, device: str = "cpu", progress: bool = False
) -> nn.Module:
    """A copy of ``model`` whose batch-norm statistics are those of ``table``'s images."""
    adapted = copy.deepcopy(model).to(device).eval()
    layers = batchnorm_layers(adapted)
    if not layers:
        raise UserError("--adapt-bn: the model has no batch-norm layers (ViTs use LayerNorm); nothing to adapt")
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # equal-weight average over the batches
        layer.train()  # only these: dropout and the rest stay in eval mode

    def forward(x: torch.Tensor) -> torch.Tensor:
        return adapted(x).float()

    # A plain function, so embed_table leaves the layers' modes alone.
    embed_table(forward, table, batch_size=batch_size, device=device, progress=progress)
    return adapted.eval()


def predict_adapted(
    model: nn.Module,
    table: ImageTable,
    batch_size: int = 256,
    device: str = "cpu",
    progress: bool = False,
    tta: bool = False,
) -> np.ndarray:
    """(N, 11) probabilities, each source's rows predicted by a copy adapted to that source
    (``tta``: averaged over each image's eight dihedral views; the statistics are
    estimated on the images as they are)."""
    probs = np.zeros((len(table), len(FINE_CLASSES)), dtype=np.float32)
    sources = table.frame["source"].to_numpy()
    for source in dict.fromkeys(sources):
        rows = np.flatnonzero(sources == source)
        part = table.subset(rows)
        adapted = adapt_batchnorm(model, part, batch_size, device, progress)
        out = embed_table(
            class_probabilities(adapted, tta), part, batch_size=batch_size, device=device, progress=progress
        )
        probs[rows] = out
    return probs
