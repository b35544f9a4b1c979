"""What every Lightning run here shares: precision choice, data module, run folders, seeds."""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import json
import logging
import math
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch

from leukoshift.config import TrainerConfig
from leukoshift.data.loaders import ImageTable, make_loader, source_balance_weights, source_shares
from leukoshift.domain.stain import normalizer_name

# Lightning notes that our hook runs although a data module is used: that is the design
# (augmentation belongs to the model, the data module only serves uint8 batches).
warnings.filterwarnings("ignore", message=".*overridden `on_after_batch_transfer`.*")
warnings.filterwarnings("ignore", message=".*LeafSpec.*")
# Pretraining has no validation step; one data module serves both kinds of run.
warnings.filterwarnings("ignore", message=".*`val_dataloader` but have no `validation_step`.*")


class _NoAdvert(logging.Filter):
    """Drops Lightning's "try litlogger" tip, printed by every run (an info log, not a warning)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


for _name in ("pytorch_lightning.utilities.rank_zero", "lightning_fabric.utilities.rank_zero"):
    logging.getLogger(_name).addFilter(_NoAdvert())


def resolve_precision(precision: str) -> str:
    """``auto``: bf16 autocast where the GPU supports it (Ampere and newer), else fp32."""
    if precision != "auto":
        return "32-true" if precision == "32" else precision
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


def resolve_workers(value: int | str) -> int:
    if value != "auto":
        return int(value)
    if not torch.cuda.is_available():
        return 0
    return max(1, min(8, (os.cpu_count() or 2) // max(1, torch.cuda.device_count()) - 1))


#: Images a stain normaliser is fitted on: its target is their pooled pixels (Macenko's
#: stain vectors, Reinhard's LAB statistics), which a few hundred cells pin down.
STAIN_FIT_IMAGES = 256


def fit_stain_sample(normalizer: torch.nn.Module, table: ImageTable, seed: int, what: str) -> None:
    """Fit a stain normaliser (``augment.normalize``) on a seeded sample of ``table``'s
    images; ``what`` names them in the line printed."""
    rng = np.random.default_rng(seed)
    picked = np.sort(rng.choice(len(table), min(STAIN_FIT_IMAGES, len(table)), replace=False))
    normalizer.fit(torch.from_numpy(table.images(picked)))  # type: ignore[operator]
    print(f"stain normalisation: {normalizer_name(normalizer)} fitted on {len(picked)} {what}")


def derived_seed(base: int, *parts: str) -> int:
    """A seed from (base, method, backbone, held-out source, ...): runs differ, reruns repeat."""
    digest = hashlib.sha1("\0".join([str(base), *parts]).encode()).digest()
    return int.from_bytes(digest[:4], "little")


def default_run_dir(kind: str, name: str) -> Path:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / kind / f"{name}-{stamp}"


class TableDataModule(pl.LightningDataModule):
    """Loaders over cached tables, sharded by the trainer's rank (no sampler replacement)."""

    def __init__(
        self,
        train: ImageTable | None,
        val: ImageTable | None,
        batch_size: int,
        num_workers: int | str,
        seed: int,
        drop_last: bool = False,
        source_balance: float = 0.0,
    ) -> None:
        super().__init__()
        self.train_table, self.val_table = train, val
        self.batch_size, self.seed, self.drop_last = batch_size, seed, drop_last
        self.source_balance = source_balance
        self.num_workers = resolve_workers(num_workers)

    def _rank(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def train_dataloader(self) -> Any:
        assert self.train_table is not None
        rank, world = self._rank()
        return make_loader(
            self.train_table,
            self.batch_size,
            shuffle=True,
            num_workers=self.num_workers,
            drop_last=self.drop_last and len(self.train_table) >= self.batch_size * world,
            seed=self.seed,
            rank=rank,
            world_size=world,
            weights=source_balance_weights(self.train_table.sources, self.source_balance),
        )

    def describe_draws(self) -> str | None:
        """One line naming each source's share of an epoch, when ``source_balance`` is set."""
        if not self.source_balance or self.train_table is None:
            return None
        shares = source_shares(self.train_table, self.source_balance)
        return "draws per epoch by source: " + ", ".join(f"{k} {v:.0%}" for k, v in shares.items())

    def val_dataloader(self) -> Any:
        if self.val_table is None or len(self.val_table) == 0:
            return []
        rank, world = self._rank()
        return make_loader(
            self.val_table, self.batch_size, shuffle=False, num_workers=self.num_workers, rank=rank, world_size=world
        )


def resume_checkpoint(out: Path, resume: bool) -> Path | None:
    """The checkpoint a ``--resume`` run continues from: the folder's ``last.ckpt``, if any."""
    last = out / "last.ckpt"
    return last if resume and last.is_file() else None


def checkpoint_counter(path: Path, key: str) -> int:
    """A Lightning checkpoint's ``epoch`` or ``global_step``, read memory-mapped (the
    weights are not loaded)."""
    return int(torch.load(path, map_location="cpu", mmap=True, weights_only=False)[key])


def kept_log_rows(out: Path, resume_from: Path | None) -> tuple[list[str], list[dict[str, str]]]:
    """The ``logs/metrics.csv`` header and rows a resumed run keeps: those logged before
    its checkpoint's step (later rows belong to work the checkpoint does not hold)."""
    metrics = out / "logs" / "metrics.csv"
    if resume_from is None or not metrics.is_file():
        return [], []
    step = checkpoint_counter(resume_from, "global_step")
    with open(metrics, newline="") as f:
        reader = csv.DictReader(f)
        rows = [r for r in reader if r.get("step", "").isdigit() and int(r["step"]) < step]
        return list(reader.fieldnames or []), rows


def run_logger(out: Path, resume_from: Path | None) -> Any:
    """CSV metrics in ``out/logs/metrics.csv``, kept across ``--resume``.

    Lightning's CSVLogger deletes an existing metrics.csv when it starts writing, so a
    resumed run would silently lose the history of every epoch before the interruption.
    Here the rows up to the checkpoint are written back under their own header first.
    """
    from pytorch_lightning.loggers import CSVLogger
    from pytorch_lightning.loggers.csv_logs import ExperimentWriter

    header, rows = kept_log_rows(out, resume_from)

    class _ResumingCSVLogger(CSVLogger):
        @property
        def experiment(self) -> Any:
            fresh = self._experiment is None
            with warnings.catch_warnings():
                if rows:  # its "previous log files will be deleted" is undone just below
                    warnings.filterwarnings("ignore", message=".*Previous log files.*")
                writer = super().experiment  # a new writer removes the old file
            if fresh and rows and isinstance(writer, ExperimentWriter):
                with open(writer.metrics_file_path, "w", newline="") as f:
                    out_csv = csv.DictWriter(f, fieldnames=header)
                    out_csv.writeheader()
                    out_csv.writerows(rows)
                # Lightning appends under its (sorted) key list: start it from this header.
                writer.metrics_keys = list(header)
            return writer

    return _ResumingCSVLogger(str(out), name="logs", version="")


def several_processes(cfg: TrainerConfig) -> bool:
    """Whether the run is data-parallel over several processes, as Lightning will decide
    from ``devices`` and ``num_nodes`` ("auto" and -1: every visible GPU)."""
    if cfg.num_nodes > 1:
        return True
    devices = cfg.devices
    if isinstance(devices, str) and "," in devices:  # GPU ids, "0,1"
        devices = [d for d in devices.split(",") if d.strip()]
    if isinstance(devices, list):
        return len(devices) > 1
    if str(devices) in ("auto", "-1"):
        return cfg.accelerator in ("auto", "gpu", "cuda") and torch.cuda.device_count() > 1
    try:
        return int(devices) > 1
    except ValueError:  # not a count: Lightning names the bad value when the trainer is built
        return False


def make_trainer(
    cfg: TrainerConfig,
    out: Path,
    callbacks: list[pl.Callback],
    monitor_val: bool = True,
    resume_from: Path | None = None,
    **extra: Any,
) -> pl.Trainer:
    """The Lightning trainer every run uses; ``resume_from``: the checkpoint ``fit`` resumes."""
    if torch.cuda.is_available():
        # TF32 for whatever float32 matrix work is left outside bf16 autocast.
        torch.set_float32_matmul_precision("high")
    return pl.Trainer(
        default_root_dir=str(out),
        max_epochs=cfg.max_epochs,
        accelerator=cfg.accelerator,
        devices=cfg.devices,
        num_nodes=cfg.num_nodes,
        strategy=cfg.strategy,
        precision=resolve_precision(cfg.precision),  # type: ignore[arg-type]
        callbacks=callbacks,
        logger=run_logger(out, resume_from),
        log_every_n_steps=cfg.log_every_n_steps,
        enable_progress_bar=cfg.progress,
        enable_model_summary=False,
        use_distributed_sampler=False,
        limit_train_batches=cfg.limit_train_batches,
        max_time=cfg.max_time,
        num_sanity_val_steps=0 if not monitor_val else 2,
        limit_val_batches=None if monitor_val else 0,
        # Inputs have fixed sizes (cached images, fixed crops): let cuDNN pick its fastest
        # convolution algorithms once instead of using heuristics.
        benchmark=extra.pop("benchmark", True),
        **extra,
    )


def _finite(value: Any) -> Any:
    """NaN and infinities as null: strict JSON readers (jq, browsers) reject Python's NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def write_json(path: Path, data: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_finite(data), indent=2, default=str))
    return path


def config_hash(data: dict[str, Any]) -> str:
    return hashlib.sha1(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:12]


def completed_run(out: Path, digest: str, record: Path, *outputs: Path) -> bool:
    """True (and says so) when ``out`` already holds a finished run of the same config:
    ``record`` is the JSON carrying its ``config_hash``, ``outputs`` must exist beside it."""
    if not record.is_file() or not all(p.is_file() for p in outputs):
        return False
    if json.loads(record.read_text()).get("config_hash") != digest:
        return False
    print(f"{out}: already complete (same config); pass --force to train again")
    return True
