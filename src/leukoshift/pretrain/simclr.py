"""SimCLR: contrastive learning of visual representations (Chen et al. 2020,
arXiv:2002.05709).

Two augmented views of each image are pulled together and pushed away from every other
image in the batch with the NT-Xent loss. Under DDP the negatives are gathered from all
GPUs (lightly's ``gather_distributed``), which is what makes large effective batches
work; a single process never touches collectives.
"""

from __future__ import annotations

from typing import Any

import torch
from lightly.loss import NTXentLoss
from lightly.models.modules import SimCLRProjectionHead
from torch import nn

from leukoshift.pretrain.base import SSLModule


class SimCLR(SSLModule):
    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        s = self.cfg.simclr
        self.head = SimCLRProjectionHead(self.feature_dim, s.hidden_dim, s.out_dim)
        self.criterion = NTXentLoss(temperature=s.temperature, gather_distributed=False)

    def setup(self, stage: str) -> None:
        # Gathering negatives is a collective: only switch it on when there are peers.
        world = self.trainer.world_size if self.trainer is not None else 1
        self.criterion = NTXentLoss(
            temperature=self.cfg.simclr.temperature, gather_distributed=self.cfg.simclr.gather_distributed and world > 1
        )

    def trainable_modules(self) -> list[nn.Module]:
        return [self.backbone, self.head]

    def ssl_step(self, views: list[torch.Tensor]) -> torch.Tensor:
        if len(views) < 2:
            raise ValueError("SimCLR needs two views per image (multicrop.n_global: 2, n_local: 0)")
        z = self.head(self.backbone(torch.cat(views[:2])))
        z0, z1 = z.chunk(2)
        return self.criterion(z0, z1)
