"""Fine-tuning end to end on synthetic labs: learning, run folder, resume, init, errors."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from leukoshift.config import ConfigError, FinetuneConfig, load_config
from leukoshift.errors import UserError
from leukoshift.eval.evaluate import load_classifier
from leukoshift.finetune.baselines import run_baseline
from leukoshift.finetune.module import ClassifierModule
from leukoshift.finetune.train import run_finetune
from leukoshift.models.checkpoints import read_card

FAST = [
    "model.backbone=regnetx_002",
    "data.image.size=32",
    "data.batch_size=16",
    "data.num_workers=0",
    "optim.name=adamw",
    "optim.lr=0.003",
    "trainer.progress=false",
    "trainer.log_every_n_steps=1",
]


def _cfg(manifest: Path, out: Path, *extra: str) -> FinetuneConfig:
    return load_config(FinetuneConfig, None, [f"data.manifests=[{manifest}]", f"out={out}", *FAST, *extra])


NO_GEOMETRY = [
    "augment.geometry.flips=false",
    "augment.geometry.rot90=false",
    "augment.geometry.rotation=0",
    "augment.geometry.shear=0",
    "augment.geometry.crop_scale=[1,1]",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two epochs on lab_a (100 images per class), scored on lab_a's val/test and on lab_b.

    Small batches and no geometric augmentation make two epochs enough to learn: the
    test is about the training loop, the recipe's augmentation is tested elsewhere.
    """
    from leukoshift.data.synth import render_labs

    base = tmp_path_factory.mktemp("ft")
    manifest = render_labs(base / "data", labs=2, per_class=100, size=40, seed=1, progress=False)
    lab_b = manifest.parent / "lab_b" / "manifest.csv"
    cfg = _cfg(
        manifest,
        base / "run",
        "trainer.max_epochs=2",
        "data.batch_size=8",
        "optim.lr=0.002",
        "data.exclude_sources=[lab_b]",
        f"data.external=[{lab_b}]",
        "data.external_classes=[NE,EO,BA,LY,MO]",
        "loss.label_smoothing=0",
        *NO_GEOMETRY,
    )
    return run_finetune(cfg, progress=False)


def test_two_epochs_beat_chance_and_fill_the_run_folder(trained: Path) -> None:
    metrics = json.loads((trained / "metrics.json").read_text())
    chance = 1 / 11
    assert metrics["val"]["level"] == "fine" and metrics["test"]["n"] == 110
    assert metrics["test"]["macro_f1"] > 1.5 * chance, metrics["test"]["macro_f1"]
    assert metrics["external"]["manifest"]["level"] == "group"
    # scored again within the white-cell label set: same rows, no prediction outside it
    within = metrics["external_within"]["manifest"]
    assert within["classes"] == ["NE", "EO", "BA", "LY", "MO"] and within["n"] == metrics["external"]["manifest"]["n"]
    outside = [i for i, c in enumerate(within["confusion"]["predicted"]) if c not in within["classes"]]
    assert outside and not np.asarray(within["confusion"]["counts"])[:, outside].any()
    for name in ("best.ckpt", "last.ckpt", "config.yaml", "backbone.safetensors", "backbone.json", "logs/metrics.csv"):
        assert (trained / name).is_file(), name
    card = read_card(trained / "backbone.safetensors")
    assert card is not None and card["backbone"] == "regnetx_002" and card["image"]["size"] == 32
    assert card["training"]["sources"] == ["lab_a"]
    epochs = (trained / "logs" / "metrics.csv").read_text().count("\n")
    assert epochs > 2  # per-epoch (and per-step) rows were logged


def test_finished_run_is_skipped_and_checkpoint_predicts(trained: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = load_config(FinetuneConfig, trained / "config.yaml")
    before = (trained / "metrics.json").stat().st_mtime
    run_finetune(cfg, progress=False)
    assert "already complete" in capsys.readouterr().out
    assert (trained / "metrics.json").stat().st_mtime == before
    model = load_classifier(trained / "best.ckpt")
    assert model.cfg.data.image.size == 32
    x = torch.rand(3, 3, 32, 32)
    assert torch.allclose(model(x).softmax(1).sum(1), torch.ones(3), atol=1e-5)


def test_init_from_an_exported_backbone_restores_its_weights(
    trained: Path, synth_manifest: Path, tmp_path: Path
) -> None:
    from leukoshift.finetune.train import build_module, load_tables

    cfg = _cfg(synth_manifest, tmp_path / "b", f"model.init={trained / 'backbone.safetensors'}")
    module = build_module(cfg, load_tables(cfg, progress=False).train)
    source = load_classifier(trained / "best.ckpt").encoder.backbone.state_dict()
    for key, value in module.encoder.backbone.state_dict().items():
        assert torch.equal(value, source[key]), key


def test_resume_continues_from_last_checkpoint(synth_manifest: Path, tmp_path: Path) -> None:
    import pandas as pd

    out = tmp_path / "run"
    run_finetune(_cfg(synth_manifest, out, "trainer.max_epochs=1"), progress=False)
    first = torch.load(out / "last.ckpt", map_location="cpu", weights_only=False)
    log = out / "logs" / "metrics.csv"
    before = pd.read_csv(log)
    # A row logged after the checkpoint (an interrupted epoch) is not history to keep.
    with open(log, "a") as f:
        f.write(",".join("999999" if c == "step" else "" for c in before.columns) + "\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no "previous log files will be deleted"
        warnings.filterwarnings("ignore", message=".*(does not have many workers|exists and is not empty).*")
        run_finetune(_cfg(synth_manifest, out, "trainer.max_epochs=2"), resume=True, progress=False)
    second = torch.load(out / "last.ckpt", map_location="cpu", weights_only=False)
    assert second["epoch"] > first["epoch"]
    assert second["global_step"] == 2 * first["global_step"]
    # The metrics log keeps the first epoch's rows (Lightning alone would delete them).
    after = pd.read_csv(log)
    assert after["step"].max() < 999999
    pd.testing.assert_frame_equal(after.iloc[: len(before)][before.columns], before)
    assert sorted(after["epoch"].dropna().unique()) == [0, 1]
    assert after["val/macro_f1"].notna().sum() == 2


@pytest.mark.parametrize(
    ("mode", "trainable"), [("linear", {"head"}), ("partial", {"head", "encoder"}), ("full", {"head", "encoder"})]
)
def test_modes_freeze_what_they_say(synth_manifest: Path, tmp_path: Path, mode: str, trainable: set[str]) -> None:
    from leukoshift.config import config_to_dict

    cfg = _cfg(synth_manifest, tmp_path, f"mode={mode}", "unfreeze_blocks=1")
    module = ClassifierModule(config_to_dict(cfg))
    module.apply_mode()
    names = {n.split(".")[0] for n, p in module.named_parameters() if p.requires_grad}
    assert names == trainable
    backbone = module.encoder.backbone
    n_train = sum(p.numel() for p in backbone.parameters() if p.requires_grad)
    total = sum(p.numel() for p in backbone.parameters())
    if mode == "partial":
        assert 0 < n_train < total
        # frozen blocks keep batch-norm statistics in training mode too
        module.train()
        assert not backbone.stem.training and backbone.s4.training
    elif mode == "full":
        assert n_train == total


def test_coarse_only_source_trains_through_groups(tmp_path: Path, synth_manifest: Path) -> None:
    """A lab labelled with NE (no SNE/BNE) mixes with a fine-labelled lab in one run."""
    import pandas as pd

    frame = pd.read_csv(synth_manifest, dtype=str, keep_default_na=False)
    coarse = frame["source"] == "lab_b"
    frame.loc[coarse & frame["label"].isin(["SNE", "BNE"]), "label"] = "NE"
    frame.loc[coarse & frame["label"].isin(["MMY", "MY", "PMY"]), "label"] = "IG"
    frame["path"] = [str(synth_manifest.parent / p) for p in frame["path"]]
    mixed = tmp_path / "mixed.csv"
    frame.to_csv(mixed, index=False)
    out = tmp_path / "run"
    run_finetune(_cfg(mixed, out, "trainer.max_epochs=1"), progress=False)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["val"]["level"] == "mixed"
    assert metrics["val"]["n_group"] > 0 and metrics["val"]["n_fine"] > 0


def test_logreg_baseline_learns_in_lab(synth_manifest: Path, tmp_path: Path) -> None:
    cfg = _cfg(synth_manifest, tmp_path / "lr", "data.exclude_sources=[lab_b]")
    run_baseline(cfg, "logreg", pixel_side=16, progress=False)
    metrics = json.loads((tmp_path / "lr" / "metrics.json").read_text())
    assert metrics["test"]["macro_f1"] > 0.4


def test_bad_configs_fail_before_any_work(synth_manifest: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="unknown backbone 'resnet9'"):
        run_finetune(_cfg(synth_manifest, tmp_path, "model.backbone=resnet9"))
    with pytest.raises(UserError, match="missing.csv: manifest not found"):
        run_finetune(_cfg(tmp_path / "missing.csv", tmp_path))
    with pytest.raises(UserError, match="model.init: .*weights file not found"):
        run_finetune(_cfg(synth_manifest, tmp_path, f"model.init={tmp_path / 'none.pth'}"))
    with pytest.raises(ConfigError, match="mode"):
        _cfg(synth_manifest, tmp_path, "mode=sideways")
    with pytest.raises(ConfigError, match="unknown key 'optim.lrr'"):
        _cfg(synth_manifest, tmp_path, "optim.lrr=1")
    assert not (tmp_path / "config.yaml").exists()


@pytest.mark.parametrize("mode", ["linear", "full"])
def test_backbone_learning_rate_is_a_fraction_of_the_heads(synth_manifest: Path, tmp_path: Path, mode: str) -> None:
    from leukoshift.config import config_to_dict

    cfg = _cfg(synth_manifest, tmp_path, f"mode={mode}", "optim.backbone_lr_scale=0.1")
    module = ClassifierModule(config_to_dict(cfg))
    module.apply_mode()
    optimizer = module.configure_optimizers()["optimizer"]
    groups = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    trainable = [p for p in module.parameters() if p.requires_grad]
    # Every trainable parameter is optimised exactly once, frozen ones not at all.
    assert sorted(groups) == sorted(id(p) for p in trainable)
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(trainable)
    assert [groups[id(p)] for p in module.head.parameters()] == pytest.approx([0.003, 0.003])
    backbone_lrs = [groups[id(p)] for p in module.encoder.parameters() if p.requires_grad]
    assert backbone_lrs == ([] if mode == "linear" else pytest.approx([0.0003] * len(backbone_lrs)))
    # The plateau schedule lowers both groups by its factor: the ratio holds.
    scheduler = module.configure_optimizers()["lr_scheduler"]["scheduler"]
    optimizer = scheduler.optimizer
    for _ in range(cfg.optim.plateau_patience + 2):
        scheduler.step(0.5)
    lrs = [g["lr"] for g in optimizer.param_groups]
    assert lrs[-1] == pytest.approx(0.003 * cfg.optim.plateau_factor)
    if mode == "full":
        assert lrs[0] / lrs[-1] == pytest.approx(0.1)


def test_backbone_learning_rate_scale_is_checked(synth_manifest: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="backbone_lr_scale"):
        _cfg(synth_manifest, tmp_path, "optim.backbone_lr_scale=0")


def test_head_warmup_trains_the_head_alone_then_the_backbone(synth_manifest: Path, tmp_path: Path) -> None:
    import pytorch_lightning as pl

    from leukoshift.finetune.train import build_module, load_tables
    from leukoshift.training import TableDataModule

    cfg = _cfg(synth_manifest, tmp_path, "trainer.max_epochs=2", "head_warmup_epochs=1")
    tables = load_tables(cfg, progress=False)
    module = build_module(cfg, tables.train)
    start = {k: v.clone() for k, v in module.state_dict().items()}
    ends: list[dict[str, torch.Tensor]] = []

    class Snapshot(pl.Callback):
        def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            ends.append({k: v.clone() for k, v in pl_module.state_dict().items()})

    trainer = pl.Trainer(
        max_epochs=2,
        limit_train_batches=3,
        limit_val_batches=1,
        accelerator="cpu",
        callbacks=[Snapshot()],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, datamodule=TableDataModule(tables.train, tables.val, 16, 0, 0))
    warmed, tuned = ends
    backbone = [k for k in start if k.startswith("encoder.")]
    head = [k for k in start if k.startswith("head.")]
    # Warm-up epoch: the head learns; backbone weights AND batch-norm statistics stay put.
    assert all(torch.equal(warmed[k], start[k]) for k in backbone)
    assert not all(torch.equal(warmed[k], start[k]) for k in head)
    # The next epoch fine-tunes the backbone, statistics included.
    moved = {k for k in backbone if not torch.equal(tuned[k], warmed[k])}
    assert any(k.endswith("conv.weight") for k in moved) and any(k.endswith("running_mean") for k in moved)


def test_head_warmup_is_checked(synth_manifest: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"head_warmup_epochs \(3\) must be below trainer.max_epochs \(3\)"):
        _cfg(synth_manifest, tmp_path, "trainer.max_epochs=3", "head_warmup_epochs=3")
    with pytest.raises(ConfigError, match="head_warmup_epochs: mode=linear"):
        _cfg(synth_manifest, tmp_path, "mode=linear", "head_warmup_epochs=1")


@pytest.mark.parametrize(
    ("settings", "gpus", "strategy"),
    [
        (["trainer.devices=1"], 0, "auto"),
        (["trainer.devices=2", "trainer.strategy=ddp"], 0, "ddp_find_unused_parameters_true"),
        (["trainer.devices=[0,1]"], 2, "ddp_find_unused_parameters_true"),
        (["trainer.devices=auto"], 8, "ddp_find_unused_parameters_true"),
        (["trainer.devices=auto"], 1, "auto"),
        (["trainer.num_nodes=2", "trainer.devices=1"], 1, "ddp_find_unused_parameters_true"),
        (["trainer.devices=2", "trainer.strategy=fsdp"], 2, "fsdp"),  # the user's choice stands
    ],
)
def test_head_warmup_under_ddp_expects_unused_parameters(
    synth_manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, settings: list[str], gpus: int, strategy: str
) -> None:
    from leukoshift.finetune.train import trainer_config

    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    cfg = _cfg(synth_manifest, tmp_path, "trainer.max_epochs=3", "head_warmup_epochs=1", *settings)
    assert trainer_config(cfg).strategy == strategy
    plain = _cfg(synth_manifest, tmp_path, "trainer.max_epochs=3", *settings)
    assert trainer_config(plain) == plain.trainer  # no warm-up: nothing changes


def test_stain_normalisation_is_fitted_on_training_images_and_travels_with_the_model(
    synth_manifest: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import kornia.color

    from leukoshift.domain.stain import ReinhardNormalizer
    from leukoshift.finetune.train import load_tables
    from leukoshift.models.encoders import load_encoder

    cfg = _cfg(
        synth_manifest,
        tmp_path / "run",
        "augment.normalize=reinhard",
        "trainer.max_epochs=1",
        "data.exclude_sources=[lab_b]",
    )
    out = run_finetune(cfg, progress=False)
    train = load_tables(cfg, progress=False).train
    assert len(train) <= 256  # so the fit saw every training image
    assert f"stain normalisation: reinhard fitted on {len(train)} training images" in capsys.readouterr().out
    images = torch.from_numpy(train.images(np.arange(len(train)))).float() / 255
    lab = kornia.color.rgb_to_lab(images)

    model = load_classifier(out / "best.ckpt")
    stain = model.encoder.stain
    assert isinstance(stain, ReinhardNormalizer)
    torch.testing.assert_close(stain.mean_ref, lab.mean(dim=(0, 2, 3)), atol=1e-3, rtol=0)

    # Another lab's colours (the same cells moved to other LAB statistics) reach the
    # backbone as the training lab's: the logits hardly move, while without the normaliser
    # they do.
    x = images[:8]
    other = ReinhardNormalizer().fit(images * torch.tensor([0.85, 0.75, 0.95]).view(1, 3, 1, 1))
    recoloured = other(x)
    with torch.no_grad():
        shift = (model(recoloured) - model(x)).abs().max()
        model.encoder.stain = torch.nn.Identity()
        unnormalised_shift = (model(recoloured) - model(x)).abs().max()
        model.encoder.stain = stain
    assert shift < 0.2 * unnormalised_shift, (shift, unnormalised_shift)

    # The exported backbone's card carries the fitted normaliser.
    card = read_card(out / "backbone.safetensors")
    assert card is not None and card["stain_normalization"]["method"] == "reinhard"
    exported = load_encoder(out / "backbone.safetensors").encoder
    with torch.no_grad():
        torch.testing.assert_close(exported(x), model.encoder(x))


def test_baselines_take_no_stain_normalisation(synth_manifest: Path, tmp_path: Path) -> None:
    from leukoshift.finetune.train import build_module, load_tables

    cfg = _cfg(synth_manifest, tmp_path / "lr", "augment.normalize=macenko")
    with pytest.raises(UserError, match="augment.normalize: baselines take no stain normalisation"):
        run_baseline(cfg, "logreg", pixel_side=16, progress=False)
    module = build_module(cfg, load_tables(cfg, progress=False).train)
    assert bool(module.encoder.stain.is_fitted)
