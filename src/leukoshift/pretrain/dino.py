"""DINO: self-distillation with no labels (Caron et al. 2021, arXiv:2104.14294).

A student (backbone + projection head) matches the centred, sharpened output of a
momentum teacher across multi-crop views: the teacher sees the global views, the
student all of them. lightly supplies the head, the loss (with centring and the
teacher-temperature warm-up) and the momentum update; this file wires the schedules.
"""

from __future__ import annotations

import copy
import functools
import math
from typing import Any

import torch
from lightly.loss import DINOLoss
from lightly.models.modules import DINOProjectionHead
from lightly.models.utils import deactivate_requires_grad, update_momentum
from lightly.utils.scheduler import cosine_schedule
from pytorch_lightning.utilities import rank_zero_warn
from torch import nn

from leukoshift.models.backbones import family
from leukoshift.pretrain.base import SSLModule

# Normalised entropy of the teacher's targets above which a run is collapsing to uniform.
UNIFORM_COLLAPSE = 0.97


@torch.no_grad()
def target_entropy(teacher_out: list[torch.Tensor], center: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean entropy of the teacher's centred, sharpened targets over log(out_dim), in [0, 1].

    1 means uniform targets: every image gets the same output, which centring turns into a
    flat distribution (the "uniform" collapse of Caron et al. 2021, Fig. 7); near 0 means
    one prototype wins for every image (the other collapse). Healthy runs sit well between.
    """
    logits = (torch.stack(teacher_out).float() - center) / temperature
    p = torch.softmax(logits, dim=-1)
    entropy = -(p * torch.log_softmax(logits, dim=-1)).sum(-1).mean()
    return entropy / math.log(p.shape[-1])


class DINO(SSLModule):
    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        d = self.cfg.dino
        batch_norm = family(self.backbone_name) == "cnn" and d.batch_norm_head
        head = functools.partial(
            DINOProjectionHead,
            self.feature_dim,
            d.hidden_dim,
            d.bottleneck_dim,
            d.out_dim,
            batch_norm=batch_norm,
            norm_last_layer=d.norm_last_layer,
        )
        # Only the student's output layer is frozen early on; the teacher never trains.
        self.student_head = head(freeze_last_layer=d.freeze_last_layer_epochs)
        self.teacher_backbone = copy.deepcopy(self.backbone)
        self.teacher_head = head()
        self.teacher_head.load_state_dict(self.student_head.state_dict())
        deactivate_requires_grad(self.teacher_backbone)
        deactivate_requires_grad(self.teacher_head)
        warmup_epochs = min(d.warmup_teacher_temp_epochs, self.cfg.trainer.max_epochs)
        self.criterion = DINOLoss(
            output_dim=d.out_dim,
            warmup_teacher_temp=d.warmup_teacher_temp,
            teacher_temp=d.teacher_temp,
            warmup_teacher_temp_epochs=warmup_epochs,
            student_temp=d.student_temp,
            center_momentum=d.center_momentum,
        )

    def trainable_modules(self) -> list[nn.Module]:
        return [self.backbone, self.student_head]

    def eval_backbone(self) -> nn.Module:
        return self.teacher_backbone

    def compile_targets(self) -> list[nn.Module]:
        # The teacher's forward passes (two global views) are a fifth of the step's work.
        return [self.backbone, self.teacher_backbone]

    def _forward_views(self, backbone: nn.Module, head: nn.Module, views: list[torch.Tensor]) -> list[torch.Tensor]:
        """One backbone call per view size (globals together, locals together)."""
        outputs: list[torch.Tensor] = []
        i = 0
        while i < len(views):
            j = i
            while j < len(views) and views[j].shape[-1] == views[i].shape[-1]:
                j += 1
            stacked = head(backbone(torch.cat(views[i:j])))
            outputs.extend(stacked.chunk(j - i))
            i = j
        return outputs

    def ssl_step(self, views: list[torch.Tensor], sources: torch.Tensor | None = None) -> torch.Tensor:
        d = self.cfg.dino
        momentum = cosine_schedule(self.global_step, self.total_steps, d.momentum_teacher, d.momentum_teacher_end)
        update_momentum(self.backbone, self.teacher_backbone, m=momentum)
        update_momentum(self.student_head, self.teacher_head, m=momentum)
        n_global = self.cfg.multicrop.n_global
        with torch.no_grad():
            teacher_out = self._forward_views(self.teacher_backbone, self.teacher_head, views[:n_global])
        student_out = self._forward_views(self.backbone, self.student_head, views)
        # Read before the loss moves the centre; logged per epoch, so no per-step sync.
        entropy = target_entropy(teacher_out, self.criterion.center, self.teacher_temperature())
        self.log("train/teacher_entropy", entropy, on_step=False, on_epoch=True, batch_size=len(views[0]))
        return self.criterion(teacher_out, student_out, epoch=self.current_epoch)

    def teacher_temperature(self) -> float:
        """The temperature lightly's DINOLoss uses this epoch (linear warm-up, then constant)."""
        c = self.criterion
        if self.current_epoch < c.warmup_teacher_temp_epochs:
            return float(c.teacher_temp_schedule[self.current_epoch])
        return float(c.teacher_temp)

    def on_train_epoch_end(self) -> None:
        # Epoch 0 starts near uniform by construction (random head); from then on, targets
        # that stay flat mean the student is learning to match nothing. Say so while it runs.
        entropy = self.trainer.callback_metrics.get("train/teacher_entropy")
        if entropy is None or self.current_epoch < 1 or float(entropy) < UNIFORM_COLLAPSE:
            return
        rank_zero_warn(
            f"DINO epoch {self.current_epoch}: teacher targets are near uniform (entropy {float(entropy):.3f} "
            f"of its maximum; loss ~ log(out_dim) = {math.log(self.cfg.dino.out_dim):.2f}): the run is "
            "collapsing. Lower dino.teacher_temp, lower dino.out_dim, train longer with a slower teacher "
            "(dino.momentum_teacher 0.996+), or use method=simclr for small CNN backbones.",
            category=UserWarning,
        )

    def on_after_backward(self) -> None:
        # The output layer stays fixed early on (DINO's trick against early collapse).
        self.student_head.cancel_last_layer_gradients(self.current_epoch)
