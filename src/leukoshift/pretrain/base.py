"""What every self-supervised method shares: the backbone, on-device multi-crop views,
the optimiser with cosine schedules, and the export of the evaluation backbone.

A method subclasses :class:`SSLModule` and adds only its head, its loss and
:meth:`SSLModule.ssl_step` (the solo-learn layout). Views are made on the device from the
uint8 cache batch, fused per view size, so the loader does no per-image work.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import pytorch_lightning as pl
import torch
from lightly.models.utils import get_weight_decay_parameters
from lightly.utils.scheduler import cosine_schedule
from torch import nn

from leukoshift.config import PretrainConfig
from leukoshift.domain.augment import build_multicrop
from leukoshift.domain.stain import stain_normalizer
from leukoshift.models.backbones import Normalize, create_backbone, family


class LaggedScalar:
    """The newest finished value of a per-step device scalar, read without waiting.

    ``.item()`` on a CUDA tensor, or Lightning's progress bar converting a logged CUDA
    tensor, blocks the host until the device has run every queued kernel, so the next
    step cannot be queued behind the current one. Here each value is copied to pinned
    host memory asynchronously and shown once its copy has landed, a step or two late.
    """

    def __init__(self) -> None:
        self._pending: deque[tuple[torch.Tensor, torch.cuda.Event]] = deque()
        self.value = torch.tensor(float("nan"))

    def update(self, x: torch.Tensor) -> torch.Tensor:
        x = x.detach().float()
        if x.device.type != "cuda":
            self.value = x.cpu()
            return self.value
        host = torch.empty((), dtype=torch.float32, pin_memory=True)
        host.copy_(x, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self._pending.append((host, event))
        while self._pending and self._pending[0][1].query():
            self.value = self._pending.popleft()[0]
        return self.value


def warmup_cosine(step: int, total: int, warmup: int, peak: float, end: float) -> float:
    """Linear warm-up to ``peak`` over ``warmup`` steps, then cosine decay to ``end``."""
    if warmup > 0 and step < warmup:
        return peak * (step + 1) / warmup
    return cosine_schedule(step - warmup, max(1, total - warmup), peak, end)


def adamw_fused(clip_grad: float, cuda: bool) -> bool | None:
    """Fuse AdamW on the GPU only when nothing is clipped: a fused AdamW unscales inside
    its step, which Lightning's gradient clipping under mixed precision cannot follow."""
    return True if cuda and not clip_grad else None


class SSLModule(pl.LightningModule):
    """Base LightningModule for DINO / SimCLR; ``embed`` gives evaluation features."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.cfg = PretrainConfig.model_validate(config)
        self.backbone_name = self.cfg.model.backbone
        m = self.cfg.model
        self.backbone = create_backbone(
            m.backbone, img_size=self.cfg.multicrop.global_size, pretrained=m.pretrained, **m.kwargs
        )
        self.feature_dim = int(self.backbone.feature_dim)  # type: ignore[arg-type]
        # Optional stain normaliser (``augment.normalize``), fitted on pool images before
        # training (``training.fit_stain_sample``); Identity holds no state, so runs without
        # one keep their checkpoints' keys.
        self.stain = stain_normalizer(self.cfg.augment.normalize)
        self.normalize = Normalize()
        self.multicrop = build_multicrop(self.cfg.multicrop, self.cfg.augment)
        self._loss_shown = LaggedScalar()

    # ------------------------------------------------------------------ interface for methods

    def ssl_step(  # pragma: no cover - abstract
        self, views: list[torch.Tensor], sources: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The loss of one batch: ``views`` globals first, ``sources`` each image's lab index."""
        raise NotImplementedError

    def eval_backbone(self) -> nn.Module:
        """The backbone to evaluate and export (DINO: the teacher)."""
        return self.backbone

    def compile_targets(self) -> list[nn.Module]:
        """The modules ``torch.compile`` speeds up (DINO adds the teacher backbone)."""
        return [self.backbone]

    def compile_model(self, **options: Any) -> None:
        """Compile the backbone(s) in place (``nn.Module.compile``): parameter names, hence
        checkpoints and exported weights, stay those of the plain model; and the multi-crop
        augmentation's stages, which draw the same random numbers compiled or not.

        ``dynamic=False``: multi-crop has exactly two input sizes; one static graph each is
        faster than the shape-generic graph torch.compile switches to after a second size.
        """
        for module in self.compile_targets():
            module.compile(**{"dynamic": False, **options})
        # The multi-crop augmentation too: uncompiled it was 14 % of a DINO ViT-S step on an
        # H100 (benchmarks/RESULTS.md), dozens of small kernels per view size.
        self.multicrop.compile_stages(**options)

    @torch.no_grad()
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """[0, 1] images -> evaluation features."""
        return self.eval_backbone()(self.normalize(self.stain(x)))

    # ------------------------------------------------------------------ steps

    def _channels_last(self, device: torch.device | None = None) -> bool:
        # NHWC convolutions are tensor-core native on GPUs; ViTs gain nothing from it.
        return (device or self.device).type == "cuda" and family(self.backbone_name) == "cnn"

    def configure_model(self) -> None:
        # Weights in the layout the views arrive in. Done here, before the strategy moves
        # the model and wraps it for DDP, whose gradient buckets copy the parameters' layout.
        if self._trainer is None:  # loaded from a checkpoint for evaluation
            return
        if self._channels_last(self.trainer.strategy.root_device):
            self.to(memory_format=torch.channels_last)

    def make_views(self, images: torch.Tensor) -> list[torch.Tensor]:
        """uint8 (B, 3, S, S) batch on the device -> normalised views, globals first.

        One fused augmentation pass per view size; views are chunks of that pass's output.
        A stain normaliser runs on the augmented views, as the fine-tuned encoder's does, so
        pretraining sees the inputs a fine-tune from it will.
        """
        fmt = torch.channels_last if self._channels_last() else torch.contiguous_format
        mean, std = self.normalize.mean, self.normalize.std
        views: list[torch.Tensor] = []
        groups = self.multicrop.forward_groups(images)  # fresh tensors: normalised in place
        for group, stacked in zip(self.multicrop.groups, groups, strict=True):
            stacked = self.stain(stacked).sub_(mean).div_(std).contiguous(memory_format=fmt)
            views.extend(stacked.chunk(group.n))
        return views

    def on_after_batch_transfer(self, batch: dict[str, torch.Tensor], dataloader_idx: int) -> dict[str, Any]:
        if self.trainer is not None and self.trainer.training:
            batch = {**batch, "views": self.make_views(batch["image"])}
        return batch

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        self._apply_schedules()
        loss = self.ssl_step(batch["views"], batch.get("source"))
        # No host-device synchronisation per step: the logger reads this tensor only every
        # log_every_n_steps, and the progress bar (which Lightning would read every step)
        # shows a host copy that has already arrived.
        n = len(batch["views"][0])
        self.log("train/loss", loss.detach(), on_step=True, on_epoch=True, batch_size=n)
        shown = self._loss_shown.update(loss)
        self.log("loss", shown, prog_bar=True, logger=False, on_step=True, on_epoch=False)
        return loss

    # ------------------------------------------------------------------ optimisation

    @property
    def total_steps(self) -> int:
        if self._trainer is None:  # a step run by hand (tests, notebooks): schedules stay at their start
            return 1
        return max(1, int(self.trainer.estimated_stepping_batches))

    @property
    def steps_per_epoch(self) -> int:
        return max(1, math.ceil(self.total_steps / max(1, self.trainer.max_epochs or 1)))

    def peak_lr(self) -> float:
        """Linear scaling rule (Goyal et al. 2017, as in DINO): base lr per 256 images."""
        world = self._trainer.world_size if self._trainer is not None else 1
        return self.cfg.optim.lr * self.cfg.data.batch_size * world / 256.0

    def _apply_schedules(self) -> None:
        o = self.cfg.optim
        step = self.global_step
        lr = warmup_cosine(step, self.total_steps, o.warmup_epochs * self.steps_per_epoch, self.peak_lr(), o.min_lr)
        wd = cosine_schedule(step, self.total_steps, o.weight_decay, o.weight_decay_end)
        for opt in self.trainer.optimizers:
            for group in opt.param_groups:
                group["lr"] = lr
                if group.get("apply_wd", True):
                    group["weight_decay"] = wd
        # A host tensor: logging a Python float would copy it to the device, which waits.
        self.log("train/lr", torch.tensor(lr, dtype=torch.float32), on_step=True, on_epoch=False)

    def trainable_modules(self) -> list[nn.Module]:
        return [self.backbone]

    def configure_optimizers(self) -> torch.optim.Optimizer:
        o = self.cfg.optim
        decay, no_decay = get_weight_decay_parameters(self.trainable_modules())
        groups = [
            {"params": [p for p in decay if p.requires_grad], "apply_wd": True},
            {"params": [p for p in no_decay if p.requires_grad], "weight_decay": 0.0, "apply_wd": False},
        ]
        if o.name == "adamw":
            fused = adamw_fused(o.clip_grad, torch.cuda.is_available())
            return torch.optim.AdamW(groups, lr=self.peak_lr(), weight_decay=o.weight_decay, fused=fused)
        if o.name == "lars":
            from lightly.utils.lars import LARS

            return LARS(groups, lr=self.peak_lr(), momentum=0.9, weight_decay=o.weight_decay)
        return torch.optim.SGD(groups, lr=self.peak_lr(), momentum=0.9, weight_decay=o.weight_decay)
