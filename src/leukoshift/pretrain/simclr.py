"""SimCLR: contrastive learning of visual representations (Chen et al. 2020,
arXiv:2002.05709).

Two augmented views of each image are pulled together and pushed away from every other
image in the batch with the NT-Xent loss. Under DDP the negatives are gathered from all
GPUs (lightly's ``gather_distributed``), which is what makes large effective batches
work; a single process never touches collectives.

``simclr.negatives: same_source`` contrasts an image only with images of its own lab
(:class:`SameSourceNTXent`). In a pooled batch the cheapest way to tell two images apart
is often their lab (stain, focus, framing), which SimCLR then learns to encode; with
negatives from one lab only, that signal separates nothing (Kim et al. 2021, "Cross-domain
self-supervised learning for domain adaptation with few source labels", arXiv:2003.08264).
lightly's NTXentLoss has no such mask, so this one is written here.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from lightly.loss import NTXentLoss
from lightly.models.modules import SimCLRProjectionHead
from lightly.utils import dist
from torch import nn

from leukoshift.pretrain.base import SSLModule


class SameSourceNTXent(nn.Module):
    """NT-Xent (as lightly's ``NTXentLoss``) whose negatives for each view are only the
    views of other images from the same source; under DDP gathered from every GPU."""

    def __init__(self, temperature: float, gather_distributed: bool = False) -> None:
        super().__init__()
        self.temperature, self.gather_distributed = temperature, gather_distributed

    def forward(self, out0: torch.Tensor, out1: torch.Tensor, sources: torch.Tensor) -> torch.Tensor:
        n = len(out0)
        out0, out1 = F.normalize(out0, dim=1), F.normalize(out1, dim=1)
        if self.gather_distributed and dist.world_size() > 1:
            keys0, keys1 = torch.cat(dist.gather(out0)), torch.cat(dist.gather(out1))
            key_sources, offset = torch.cat(dist.gather(sources)), dist.rank() * n
        else:
            keys0, keys1, key_sources, offset = out0, out1, sources, 0
        total = len(keys0)
        logits = torch.cat([out0, out1]) @ torch.cat([keys0, keys1]).T / self.temperature
        other_lab = sources.repeat(2)[:, None] != key_sources.repeat(2)[None, :]
        own = torch.arange(n, device=out0.device) + offset
        itself = torch.cat([own, own + total])
        other_lab[torch.arange(2 * n, device=out0.device), itself] = True  # a view is not its own negative
        positive = torch.cat([own + total, own])
        return F.cross_entropy(logits.masked_fill(other_lab, float("-inf")), positive)


class SimCLR(SSLModule):
    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        s = self.cfg.simclr
        self.head = SimCLRProjectionHead(self.feature_dim, s.hidden_dim, s.out_dim)
        self.criterion = self._criterion(gather=False)

    def setup(self, stage: str) -> None:
        # Gathering negatives is a collective: only switch it on when there are peers.
        world = self.trainer.world_size if self.trainer is not None else 1
        gather = self.cfg.simclr.gather_distributed and world > 1
        self.criterion = self._criterion(gather)

    def _criterion(self, gather: bool) -> nn.Module:
        s = self.cfg.simclr
        if s.negatives == "same_source":
            return SameSourceNTXent(s.temperature, gather_distributed=gather)
        return NTXentLoss(temperature=s.temperature, gather_distributed=gather)

    def trainable_modules(self) -> list[nn.Module]:
        return [self.backbone, self.head]

    def ssl_step(self, views: list[torch.Tensor], sources: torch.Tensor | None = None) -> torch.Tensor:
        if len(views) < 2:
            raise ValueError("SimCLR needs two views per image (multicrop.n_global: 2, n_local: 0)")
        z = self.head(self.backbone(torch.cat(views[:2])))
        z0, z1 = z.chunk(2)
        if isinstance(self.criterion, SameSourceNTXent):
            if sources is None:
                raise ValueError("simclr.negatives=same_source needs each image's source")
            return self.criterion(z0, z1, sources)
        return self.criterion(z0, z1)
