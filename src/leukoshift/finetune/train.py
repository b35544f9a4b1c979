"""``leukoshift finetune``: train the classifier, pick the best epoch, score it, export it.

A run folder ends with ``config.yaml`` (resolved), ``best.ckpt`` and ``last.ckpt``
(and ``warmup.ckpt``, the model as a head warm-up left it, when there was one),
``logs/metrics.csv`` (per epoch), ``backbone.safetensors`` + card, and ``metrics.json``
for the best checkpoint on the validation and test splits and every external manifest.
A finished run is skipped when started again with the same config unless ``force``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint

import leukoshift
from leukoshift.config import FinetuneConfig, TrainerConfig, config_to_dict, save_config
from leukoshift.data.cache import check_framing
from leukoshift.data.loaders import ImageTable, load_table
from leukoshift.data.manifest import ManifestError
from leukoshift.domain.stain import normalizer_card
from leukoshift.errors import UserError
from leukoshift.finetune.loss import class_weights
from leukoshift.finetune.module import ClassifierModule
from leukoshift.models.backbones import resolve_name
from leukoshift.models.checkpoints import export_weights, load_backbone_weights, read_card, read_checkpoint
from leukoshift.taxonomy import FINE_CLASSES, LABEL_CODES
from leukoshift.training import (
    TableDataModule,
    checkpoint_counter,
    completed_run,
    config_hash,
    default_run_dir,
    fit_stain_sample,
    make_trainer,
    resume_checkpoint,
    several_processes,
    write_json,
)


@dataclass
class FinetuneTables:
    train: ImageTable
    val: ImageTable
    test: ImageTable | None
    external: dict[str, ImageTable]


def check_config(cfg: FinetuneConfig) -> None:
    """Everything that can be checked before any image is read or any model built."""
    resolve_name(cfg.model.backbone)
    if not cfg.data.manifests:
        raise UserError("data.manifests: give at least one labelled manifest (--manifest M)")
    for path in [*cfg.data.manifests, *cfg.data.external]:
        if not Path(path).is_file():
            raise UserError(f"{path}: manifest not found")
    if cfg.model.init is not None and not Path(cfg.model.init).is_file():
        raise UserError(f"model.init: {cfg.model.init}: weights file not found")
    check_framing(cfg.data.image, [*cfg.data.manifests, *cfg.data.external])


def load_tables(cfg: FinetuneConfig, progress: bool = True) -> FinetuneTables:
    d = cfg.data

    def table(split: str) -> ImageTable:
        return load_table(
            d.manifests, d.image, split=split, exclude_sources=d.exclude_sources, labelled=True, progress=progress
        )

    train, val = table(d.train_split), table(d.val_split)
    if len(train) == 0:
        raise ManifestError(f"no labelled rows in split {d.train_split!r} of {', '.join(map(str, d.manifests))}")
    if len(val) == 0:
        raise ManifestError(f"no labelled rows in split {d.val_split!r}: model selection needs a validation split")
    test = table(d.test_split)
    external = {
        Path(m).stem: load_table([m], d.image, split="all", labelled=True, progress=progress) for m in d.external
    }
    return FinetuneTables(train, val, test if len(test) else None, external)


def build_module(cfg: FinetuneConfig, train: ImageTable) -> ClassifierModule:
    weights = class_weights(train.labels)
    summary = {
        "n_train": len(train),
        "label_counts": {
            LABEL_CODES[i]: int((train.labels == i).sum()) for i in range(len(LABEL_CODES)) if (train.labels == i).any()
        },
        "sources": train.source_names,
    }
    module = ClassifierModule(config_to_dict(cfg), weights.tolist(), train.source_names, summary)
    if cfg.augment.normalize != "none":
        fit_stain_sample(module.encoder.stain, train, cfg.trainer.seed, "training images")
    if cfg.model.init is not None:
        load_backbone_weights(module.encoder.backbone, cfg.model.init)
        trained_with = init_stain_normalization(Path(cfg.model.init))
        if trained_with != cfg.augment.normalize:
            print(
                f"note: {cfg.model.init} was trained with stain normalisation {trained_with}, "
                f"this run uses {cfg.augment.normalize} (augment.normalize)"
            )
    module.apply_mode()
    return module


def init_stain_normalization(path: Path) -> str:
    """The stain normalisation (``augment.normalize``) initial weights were trained with:
    from an exported backbone's card or a Lightning checkpoint's config; ``"none"`` for
    weights from elsewhere."""
    if path.suffix == ".safetensors":
        return ((read_card(path) or {}).get("stain_normalization") or {}).get("method", "none")
    if path.suffix != ".ckpt":
        return "none"
    config = (read_checkpoint(path).get("hyper_parameters") or {}).get("config") or {}
    return (config.get("augment") or {}).get("normalize", "none")


def trainer_config(cfg: FinetuneConfig) -> TrainerConfig:
    """The trainer settings, with DDP told to expect parameters without gradients when a
    head warm-up leaves the backbone out of the first epochs' backward pass (its reducer
    would otherwise wait for their gradients and fail at the second step)."""
    t = cfg.trainer
    if cfg.head_warmup_epochs and t.strategy in ("auto", "ddp") and several_processes(t):
        return t.model_copy(update={"strategy": "ddp_find_unused_parameters_true"})
    return t


class SaveWarmupEnd(pl.Callback):
    """Writes ``warmup.ckpt`` when the head warm-up (``head_warmup_epochs``) ends: the
    linear-probe end point of LP-FT, which weight-space ensembling (``finetune.wise``)
    interpolates with the fine-tuned model."""

    def __init__(self, path: Path, epochs: int) -> None:
        self.path, self.epochs = path, epochs

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch == self.epochs - 1:
            trainer.save_checkpoint(self.path)


def run_finetune(cfg: FinetuneConfig, resume: bool = False, force: bool = False, progress: bool = True) -> Path:
    check_config(cfg)
    out = Path(cfg.out) if cfg.out is not None else default_run_dir("finetune", cfg.model.backbone)
    cfg = cfg.model_copy(update={"out": out})
    digest = config_hash(config_to_dict(cfg))
    done = out / "metrics.json"
    if not force and not resume and completed_run(out, digest, done):
        return out
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    pl.seed_everything(cfg.trainer.seed, workers=True, verbose=False)

    tables = load_tables(cfg, progress)
    module = build_module(cfg, tables.train)
    data = TableDataModule(
        tables.train,
        tables.val,
        cfg.data.batch_size,
        cfg.data.num_workers,
        cfg.trainer.seed,
        source_balance=cfg.data.source_balance,
    )
    if draws := data.describe_draws():
        print(draws)
    checkpoint = ModelCheckpoint(
        dirpath=out, filename="best", monitor="val/macro_f1", mode="max", save_last=True, enable_version_counter=False
    )
    stopper = EarlyStopping(monitor="val/macro_f1", mode="max", patience=cfg.early_stopping_patience)
    callbacks: list[pl.Callback] = [checkpoint, stopper]
    if cfg.head_warmup_epochs:
        callbacks.append(SaveWarmupEnd(out / "warmup.ckpt", cfg.head_warmup_epochs))
    resume_from = resume_checkpoint(out, resume)
    trainer = make_trainer(trainer_config(cfg), out, callbacks, resume_from=resume_from)
    if cfg.trainer.compile:
        module.encoder = torch.compile(module.encoder)  # type: ignore[assignment]
    started = time.time()
    trainer.fit(module, datamodule=data, ckpt_path=str(resume_from) if resume_from else None)
    if not trainer.is_global_zero:
        return out
    best_path = Path(checkpoint.best_model_path or out / "last.ckpt")
    best = ClassifierModule.load_from_checkpoint(best_path, map_location="cpu", weights_only=False)
    metrics = score_run(best, tables)
    export_classifier(best, out, cfg, tables.train)
    if cfg.wise_alpha is not None:
        metrics["wise"] = wise_run(cfg, out, best_path, tables)
    metrics.update(
        best_checkpoint=str(best_path),
        best_epoch=_epoch_of(best_path),
        epochs_run=trainer.current_epoch,
        train_seconds=round(time.time() - started, 1),
        config_hash=digest,
        n_train=len(tables.train),
    )
    write_json(done, metrics)
    _print_summary(out, metrics)
    return out


def wise_run(cfg: FinetuneConfig, out: Path, best_path: Path, tables: FinetuneTables) -> dict[str, Any]:
    """``wise.ckpt`` (``finetune.wise``) written and scored as ``best.ckpt`` is."""
    from leukoshift.eval.evaluate import default_device
    from leukoshift.finetune.wise import write_wise

    assert cfg.wise_alpha is not None
    warmup = out / "warmup.ckpt"
    if not warmup.is_file():
        raise UserError(
            f"{warmup}: missing (a run resumed from before its head warm-up ended?); cannot build wise.ckpt"
        )
    model, path = write_wise(
        warmup, best_path, cfg.wise_alpha, tables.train, out / "wise.ckpt", cfg.trainer.seed, default_device()
    )
    return {"alpha": cfg.wise_alpha, "checkpoint": str(path), **score_run(model, tables)}


def _epoch_of(path: Path) -> int | None:
    try:
        return checkpoint_counter(path, "epoch")
    except (OSError, KeyError, RuntimeError):
        return None


def score_run(model: ClassifierModule, tables: FinetuneTables) -> dict[str, Any]:
    from leukoshift.eval.evaluate import predict_table

    return score_tables(lambda t: predict_table(model, t, progress=False), tables, model.cfg.data.external_classes)


def score_tables(
    predict: Callable[[ImageTable], np.ndarray],
    tables: FinetuneTables,
    external_classes: Sequence[str] = (),
) -> dict[str, Any]:
    """Scores of one model: validation and test at each row's finest level; external
    labs at the group level (their 5 white-cell types), as DESIGN.md scores them, and
    again with predictions restricted to ``external_classes`` (``external_within``) when
    those are given."""
    from leukoshift.eval.metrics import score

    def run(probs: np.ndarray, table: ImageTable, level: str, classes: Sequence[str] | None = None) -> dict[str, Any]:
        return score(probs, list(table.frame["label"]), level=level, classes=classes).to_dict()  # type: ignore[arg-type]

    out: dict[str, Any] = {"val": run(predict(tables.val), tables.val, "auto")}
    if tables.test is not None:
        out["test"] = run(predict(tables.test), tables.test, "auto")
    external = {name: (predict(t), t) for name, t in tables.external.items()}
    out["external"] = {name: run(p, t, "group") for name, (p, t) in external.items()}
    if external_classes:
        out["external_within"] = {
            name: {**run(p, t, "group", external_classes), "classes": list(external_classes)}
            for name, (p, t) in external.items()
        }
    return out


def export_classifier(model: ClassifierModule, out: Path, cfg: FinetuneConfig, train: ImageTable) -> None:
    """``backbone.safetensors`` (for ``--init`` elsewhere) and a card describing it."""
    card: dict[str, Any] = {
        "kind": "backbone",
        "backbone": resolve_name(cfg.model.backbone),
        "timm_kwargs": cfg.model.kwargs,
        "image": cfg.data.image.model_dump(mode="json"),
        "normalization": {
            "mean": model.encoder.normalize.mean.flatten().tolist(),
            "std": model.encoder.normalize.std.flatten().tolist(),
        },
        "stain_normalization": normalizer_card(model.encoder.stain),
        "feature_dim": model.encoder.feature_dim,
        "classes": list(FINE_CLASSES),
        "training": {
            "method": f"supervised fine-tuning ({cfg.mode})",
            "manifests": [str(m) for m in cfg.data.manifests],
            "sources": train.source_names,
            "n_train": len(train),
            "init": str(cfg.model.init)
            if cfg.model.init
            else ("timm pretrained" if cfg.model.pretrained else "random"),
        },
        "leukoshift_version": leukoshift.__version__,
    }
    export_weights(model.encoder.backbone, out / "backbone.safetensors", card)


def _print_summary(out: Path, metrics: dict[str, Any]) -> None:
    rows = [("val", metrics["val"])]
    if "test" in metrics:
        rows.append(("test", metrics["test"]))
    rows += [(f"external {k}", v) for k, v in metrics["external"].items()]
    rows += [(f"external {k} (label set)", v) for k, v in metrics.get("external_within", {}).items()]
    if "wise" in metrics:
        wise = metrics["wise"]
        a = wise["alpha"]
        rows += [(f"WiSE {a:g}: {name}", wise[name]) for name in ("val", "test") if name in wise]
        rows += [(f"WiSE {a:g}: external {k}", v) for k, v in wise["external"].items()]
        rows += [(f"WiSE {a:g}: external {k} (label set)", v) for k, v in wise.get("external_within", {}).items()]
    best = metrics.get("best_epoch")
    print(f"run folder: {out}" + (f" (best epoch {best})" if best is not None else ""))
    width = max(len(name) for name, _ in rows)
    for name, m in rows:
        print(
            f"  {name:<{width}} n={m['n']:<6} level={m['level']:<6} macro-F1 {m['macro_f1']:.3f}  "
            f"acc {m['accuracy']:.3f}  bal-acc {m['balanced_accuracy']:.3f}"
        )
