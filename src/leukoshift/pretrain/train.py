"""``leukoshift ssl pretrain``: learn cell features from every image of every lab.

The pool is every row of the given manifests (labels ignored) minus the excluded
sources, so a held-out lab can be kept strictly unseen. The run folder ends with
``last.ckpt`` (resume with ``--resume``), ``logs/metrics.csv``, ``monitor.json`` and
``backbone.safetensors`` + card, which ``finetune --init`` and ``evaluate`` accept.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint

import leukoshift
from leukoshift.config import PretrainConfig, config_to_dict, save_config
from leukoshift.data.cache import check_framing
from leukoshift.data.loaders import ImageTable, load_table
from leukoshift.data.manifest import ManifestError
from leukoshift.domain.stain import normalizer_card
from leukoshift.errors import UserError
from leukoshift.models.backbones import resolve_name
from leukoshift.models.checkpoints import export_weights, load_backbone_weights
from leukoshift.pretrain.base import SSLModule
from leukoshift.pretrain.dino import DINO
from leukoshift.pretrain.monitor import KNNMonitor, subsample
from leukoshift.pretrain.simclr import SimCLR
from leukoshift.training import (
    TableDataModule,
    checkpoint_counter,
    completed_run,
    config_hash,
    default_run_dir,
    fit_stain_sample,
    make_trainer,
    resume_checkpoint,
    write_json,
)

METHODS: dict[str, type[SSLModule]] = {"dino": DINO, "simclr": SimCLR}


def check_config(cfg: PretrainConfig) -> None:
    resolve_name(cfg.model.backbone)
    if cfg.method not in METHODS:
        raise UserError(f"unknown method {cfg.method!r}; valid: {', '.join(METHODS)}")
    pool = [*cfg.data.manifests, *cfg.data.unlabeled]
    if not pool:
        raise UserError("data.manifests: give at least one manifest for the pretraining pool (--manifest M)")
    for path in [*pool, *cfg.monitor.manifests]:
        if not Path(path).is_file():
            raise UserError(f"{path}: manifest not found")
    if cfg.model.init is not None and not Path(cfg.model.init).is_file():
        raise UserError(f"model.init: {cfg.model.init}: weights file not found")
    check_framing(cfg.data.image, [*pool, *cfg.monitor.manifests])
    if cfg.data.image.size < cfg.multicrop.global_size // 2:
        raise UserError(
            f"data.image.size {cfg.data.image.size} is far below multicrop.global_size "
            f"{cfg.multicrop.global_size}: views would be upsampled blur; cache at >= the global size"
        )


def load_pool(cfg: PretrainConfig, progress: bool = True) -> ImageTable:
    pool = load_table(
        [*cfg.data.manifests, *cfg.data.unlabeled],
        cfg.data.image,
        split=None,
        exclude_sources=cfg.data.exclude_sources,
        progress=progress,
    )
    if len(pool) < cfg.data.batch_size:
        raise ManifestError(
            f"the pretraining pool has {len(pool)} images, fewer than one batch ({cfg.data.batch_size})"
        )
    return pool


def build_monitor(cfg: PretrainConfig, progress: bool = True) -> KNNMonitor | None:
    m = cfg.monitor
    if not m.manifests:
        return None
    image = cfg.data.image.model_copy(update={"size": cfg.multicrop.global_size})
    bank, query = (
        load_table(
            m.manifests, image, split=split, labelled=True, exclude_sources=cfg.data.exclude_sources, progress=progress
        )
        for split in (m.bank_split, m.query_split)
    )
    if len(bank) == 0 or len(query) == 0:
        raise ManifestError(
            f"monitor: splits {m.bank_split!r}/{m.query_split!r} of the monitor manifests hold no labelled rows"
        )
    return KNNMonitor(subsample(bank, m.max_images), subsample(query, m.max_images), m.every_n_epochs, m.k)


def earlier_history(out: Path, resume_from: Path | None) -> list[dict[str, Any]]:
    """The online monitor's entries a resumed run keeps: those of the epochs its checkpoint
    had finished (the monitor itself only knows the epochs of this process)."""
    path = out / "monitor.json"
    if resume_from is None or not path.is_file():
        return []
    finished = checkpoint_counter(resume_from, "epoch")
    return [h for h in json.loads(path.read_text()).get("history", []) if h.get("epoch", finished + 1) <= finished]


def run_pretrain(cfg: PretrainConfig, resume: bool = False, force: bool = False, progress: bool = True) -> Path:
    check_config(cfg)
    out = Path(cfg.out) if cfg.out is not None else default_run_dir("ssl", f"{cfg.method}-{cfg.model.backbone}")
    cfg = cfg.model_copy(update={"out": out})
    digest = config_hash(config_to_dict(cfg))
    done = out / "backbone.safetensors"
    if not force and not resume and completed_run(out, digest, out / "backbone.json", done):
        return out
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    pl.seed_everything(cfg.trainer.seed, workers=True, verbose=False)

    pool = load_pool(cfg, progress)
    resume_from = resume_checkpoint(out, resume)
    monitor = build_monitor(cfg, progress)
    if monitor is not None:
        monitor.path, monitor.history = out / "monitor.json", earlier_history(out, resume_from)
    module = METHODS[cfg.method](config_to_dict(cfg))
    if cfg.augment.normalize != "none":
        # Fitted on the pool as drawn, so its target is mostly the largest lab's stain; a
        # fine-tune from this backbone refits on its own training images.
        fit_stain_sample(module.stain, pool, cfg.trainer.seed, "pool images")
    if cfg.model.init is not None:
        load_backbone_weights(module.backbone, cfg.model.init)
        if isinstance(module, DINO):
            module.teacher_backbone.load_state_dict(module.backbone.state_dict())
    if cfg.trainer.compile:
        module.compile_model()
    data = TableDataModule(
        pool,
        None,
        cfg.data.batch_size,
        cfg.data.num_workers,
        cfg.trainer.seed,
        drop_last=True,
        source_balance=cfg.data.source_balance,
    )
    if draws := data.describe_draws():
        print(draws)
    checkpoint = ModelCheckpoint(
        dirpath=out, filename="last", save_last=False, every_n_epochs=1, enable_version_counter=False
    )
    callbacks: list[pl.Callback] = [checkpoint]
    if monitor is not None:
        callbacks.append(monitor)
    trainer = make_trainer(
        cfg.trainer,
        out,
        callbacks,
        monitor_val=False,
        resume_from=resume_from,
        gradient_clip_val=cfg.optim.clip_grad or None,
    )
    started = time.time()
    trainer.fit(module, datamodule=data, ckpt_path=str(resume_from) if resume_from else None)
    if not trainer.is_global_zero:
        return out
    history = monitor.history if monitor is not None else []
    write_json(out / "monitor.json", {"history": history})
    export_ssl_backbone(module, cfg, pool, digest, time.time() - started, history)
    print(f"pretraining done: {done} ({trainer.current_epoch} epochs, {time.time() - started:.0f} s)")
    return out


def export_ssl_backbone(
    module: SSLModule, cfg: PretrainConfig, pool: ImageTable, digest: str, seconds: float, history: list[dict[str, Any]]
) -> Path:
    backbone = module.eval_backbone()
    backbone = getattr(backbone, "_orig_mod", backbone)  # unwrap torch.compile
    card = {
        "kind": "backbone",
        "backbone": resolve_name(cfg.model.backbone),
        "timm_kwargs": cfg.model.kwargs,
        "image": cfg.data.image.model_dump(mode="json"),
        "input_size": cfg.multicrop.global_size,
        "normalization": {
            "mean": module.normalize.mean.flatten().tolist(),
            "std": module.normalize.std.flatten().tolist(),
        },
        "stain_normalization": normalizer_card(module.stain),
        "feature_dim": module.feature_dim,
        "classes": None,
        "training": {
            "method": cfg.method,
            "manifests": [str(m) for m in [*cfg.data.manifests, *cfg.data.unlabeled]],
            "sources": pool.source_names,
            "excluded_sources": cfg.data.exclude_sources,
            "n_images": len(pool),
            "epochs": cfg.trainer.max_epochs,
            "seconds": round(seconds, 1),
            "monitor": history[-1] if history else None,
        },
        "config_hash": digest,
        "leukoshift_version": leukoshift.__version__,
    }
    return export_weights(backbone, Path(cfg.out) / "backbone.safetensors", card)  # type: ignore[arg-type]
