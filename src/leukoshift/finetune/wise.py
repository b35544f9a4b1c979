"""Weight-space ensembling of a fine-tuned classifier with its linear-probe start (WiSE-FT,
Wortsman et al. 2022).

Fine-tuning moves a pretrained backbone towards what separates the training lab's
classes and away from the more general features it started with (Kumar et al. 2022).
WiSE-FT keeps some of both at no inference cost: one model whose weights are

    theta(alpha) = (1 - alpha) * theta_probe + alpha * theta_finetuned

where ``theta_probe`` is the pretrained backbone with a head fitted on its frozen features
(the end of the head warm-up, ``warmup.ckpt``) and ``theta_finetuned`` the fine-tuned model
(``best.ckpt``). Both come from the same pretrained weights, which is what makes the
straight line between them a path of good models; from random init there is no such
start, so the method belongs to pretrained (e.g. self-supervised) backbones.

Batch-norm statistics are not weights: the average of two models' running statistics is
not the statistics of the averaged model. They are re-estimated on training images after
interpolating, as for stochastic weight averaging (Izmailov et al. 2018).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from leukoshift.data.loaders import ImageTable, load_table
from leukoshift.errors import UserError
from leukoshift.eval.adapt import adapt_batchnorm, batchnorm_layers
from leukoshift.eval.evaluate import load_classifier
from leukoshift.models.checkpoints import read_checkpoint

#: training images the batch-norm statistics of the interpolated model are estimated on
BN_IMAGES = 4096


def check_alpha(alpha: float) -> None:
    if not 0.0 <= alpha <= 1.0:
        raise UserError(f"alpha: {alpha} must lie in [0, 1] (0: the linear probe, 1: the fine-tuned model)")


def interpolate_states(
    start: dict[str, torch.Tensor], end: dict[str, torch.Tensor], alpha: float
) -> dict[str, torch.Tensor]:
    """``(1 - alpha) * start + alpha * end`` for every floating-point tensor; counters
    (batch norm's ``num_batches_tracked``) are taken from ``end``."""
    check_alpha(alpha)
    if start.keys() != end.keys():
        differing = sorted(start.keys() ^ end.keys())
        raise UserError(f"the two models have different parameters (e.g. {differing[0]}): not one architecture")
    out: dict[str, torch.Tensor] = {}
    for key, b in end.items():
        a = start[key]
        if a.shape != b.shape:
            raise UserError(f"{key}: shape {tuple(a.shape)} against {tuple(b.shape)}: not one architecture")
        out[key] = torch.lerp(a, b, alpha) if b.is_floating_point() else b.clone()
    return out


def bn_sample(table: ImageTable, n: int = BN_IMAGES, seed: int = 0) -> ImageTable:
    """At most ``n`` rows of ``table``, drawn without replacement (seeded)."""
    if len(table) <= n:
        return table
    rows = np.sort(np.random.default_rng(seed).choice(len(table), size=n, replace=False))
    return table.subset(rows)


def wise_model(
    warmup: Path, finetuned: Path, alpha: float, bn_table: ImageTable | None = None, device: str = "cpu"
) -> Any:
    """The interpolated :class:`~leukoshift.finetune.module.ClassifierModule`, in eval mode,
    its batch-norm statistics estimated on ``bn_table`` (kept interpolated when ``None``)."""
    start, end = load_classifier(warmup), load_classifier(finetuned)
    if start.backbone_name != end.backbone_name:
        raise UserError(f"{warmup}: backbone {start.backbone_name}, but {finetuned} has {end.backbone_name}")
    end.load_state_dict(interpolate_states(start.state_dict(), end.state_dict(), alpha))
    if bn_table is not None and batchnorm_layers(end):
        end = adapt_batchnorm(end, bn_table, device=device)
    return end.eval()


def save_wise(model: Any, finetuned: Path, out: Path, meta: dict[str, Any]) -> Path:
    """A checkpoint every command loads as it loads ``best.ckpt`` (``evaluate``, ``predict``,
    ``explain``, the app): the fine-tuned checkpoint with the interpolated weights, its
    optimiser state dropped (it is not a point to resume training from)."""
    raw = read_checkpoint(finetuned)
    raw["state_dict"] = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    for key in ("optimizer_states", "lr_schedulers", "callbacks", "loops"):
        raw.pop(key, None)
    raw["wise"] = meta
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(raw, out)
    return out


def write_wise(
    warmup: Path, finetuned: Path, alpha: float, train: ImageTable, out: Path, seed: int = 0, device: str = "cpu"
) -> tuple[Any, Path]:
    """The interpolated model, batch-norm statistics from up to ``BN_IMAGES`` rows of
    ``train``, and the checkpoint it was saved to."""
    model = wise_model(warmup, finetuned, alpha, bn_sample(train, seed=seed), device=device)
    meta = {"alpha": alpha, "warmup": str(warmup), "finetuned": str(finetuned)}
    return model, save_wise(model, finetuned, out, meta)


def wise_from_run(run: Path, alpha: float, out: Path | None = None, progress: bool = True) -> Path:
    """``leukoshift wise RUN``: ``warmup.ckpt`` and ``best.ckpt`` of a fine-tuning run folder
    interpolated, batch-norm statistics estimated on the run's own training split."""
    check_alpha(alpha)
    warmup, best = run / "warmup.ckpt", run / "best.ckpt"
    if not best.is_file():
        raise UserError(f"{run}: no best.ckpt; give a finished fine-tuning run folder")
    if not warmup.is_file():
        raise UserError(f"{run}: no warmup.ckpt; fine-tune with --set head_warmup_epochs=N (N >= 1) to get one")
    cfg = load_classifier(best).cfg
    d = cfg.data
    train = load_table(
        d.manifests, d.image, split=d.train_split, exclude_sources=d.exclude_sources, labelled=True, progress=progress
    )
    return write_wise(warmup, best, alpha, train, out or run / f"wise{alpha:g}.ckpt", seed=cfg.trainer.seed)[1]
