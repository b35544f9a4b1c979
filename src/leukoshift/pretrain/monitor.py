"""Online monitor: is the representation getting better, and are the labs mixing?

Every N epochs the evaluation backbone embeds a labelled bank (train split) and query
set (validation split), then logs faiss kNN accuracy (weighted vote, Wu et al. 2018) and
the lab-mixing ratio (own-source fraction among neighbours / chance; 1 = fully mixed)
and the lab isolation averaged over labs (0 = mixed, 1 = every lab an island).
Both run on rank 0 only and touch no collectives.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch

from leukoshift.data.loaders import ImageTable
from leukoshift.eval.embed import embed_table
from leukoshift.training import write_json


def subsample(table: ImageTable, max_rows: int, seed: int = 0) -> ImageTable:
    if len(table) <= max_rows:
        return table
    rows = np.sort(np.random.default_rng(seed).choice(len(table), max_rows, replace=False))
    return table.subset(rows)


class KNNMonitor(pl.Callback):
    """``history``: one entry per measurement (a resumed run starts it with the entries
    before its checkpoint); written to ``path``, if set, after each measurement, so an
    interrupted run keeps what it measured."""

    def __init__(self, bank: ImageTable, query: ImageTable, every_n_epochs: int = 1, k: int = 20) -> None:
        self.bank, self.query = bank, query
        self.every_n_epochs, self.k = every_n_epochs, k
        self.path: Path | None = None
        self.history: list[dict[str, float]] = []

    def measure(self, pl_module: pl.LightningModule) -> dict[str, float]:
        # faiss and scikit-learn load only when the monitor runs, not with every import of
        # the pretraining code (benchmarks and GPU boxes may not have them).
        from leukoshift.eval.knn import knn_accuracy, lab_mixing

        device = pl_module.device
        encoder = pl_module.embed  # type: ignore[attr-defined]
        bank = embed_table(encoder, self.bank, device=device, progress=False)
        query = embed_table(encoder, self.query, device=device, progress=False)
        # Group-level classes: rows of mixed depth (SNE vs NE) stay comparable.
        from leukoshift.taxonomy import GROUP_INDEX, LABEL_CODES, group_of

        def groups(t: ImageTable) -> np.ndarray:
            return np.array([GROUP_INDEX[group_of(LABEL_CODES[i])] for i in t.labels])

        acc = knn_accuracy(bank, groups(self.bank), query, groups(self.query), k=self.k)
        feats = np.concatenate([bank, query])
        sources = np.concatenate([self.bank.sources, self.query.sources])
        mixing = lab_mixing(feats, sources, k=10) if len(np.unique(sources)) > 1 else None
        return {
            "knn_acc": acc,
            "lab_mixing": mixing.overall_ratio if mixing else float("nan"),
            "lab_isolation": mixing.mean_isolation if mixing else float("nan"),
        }

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch
        last = epoch + 1 == trainer.max_epochs
        if not trainer.is_global_zero or ((epoch + 1) % self.every_n_epochs and not last):
            return
        with torch.no_grad():
            result = self.measure(pl_module)
        self.history.append({"epoch": epoch, **result})
        if self.path is not None:
            write_json(self.path, {"history": self.history})
        # rank_zero_only: other ranks never log these, so no sync is requested.
        pl_module.log("monitor/knn_acc", result["knn_acc"], rank_zero_only=True)
        line = f"epoch {epoch}: kNN accuracy {result['knn_acc']:.3f}"
        if not np.isnan(result["lab_mixing"]):  # NaN: the monitor manifests hold one lab
            pl_module.log("monitor/lab_mixing", result["lab_mixing"], rank_zero_only=True)
            pl_module.log("monitor/lab_isolation", result["lab_isolation"], rank_zero_only=True)
            line += (
                f", lab mixing (own/chance) {result['lab_mixing']:.2f}, "
                f"lab isolation {result['lab_isolation']:.2f} (0 mixed, 1 island)"
            )
        print(line)
