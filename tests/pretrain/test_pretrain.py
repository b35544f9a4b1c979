"""Self-supervised pretraining: losses against reference formulas, learning, checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from leukoshift.config import PretrainConfig, config_to_dict, load_config
from leukoshift.errors import UserError
from leukoshift.models.checkpoints import read_card
from leukoshift.pretrain.base import adamw_fused
from leukoshift.pretrain.dino import DINO, target_entropy
from leukoshift.pretrain.simclr import SameSourceNTXent, SimCLR
from leukoshift.pretrain.train import run_pretrain

FAST = [
    "model.backbone=regnetx_002",
    "data.image.size=32",
    "data.batch_size=32",
    "data.num_workers=0",
    "multicrop.global_size=32",
    "multicrop.local_size=16",
    "dino.out_dim=256",
    "dino.hidden_dim=128",
    "dino.bottleneck_dim=32",
    "simclr.hidden_dim=128",
    "simclr.out_dim=32",
    "optim.warmup_epochs=0",
    "trainer.progress=false",
    "trainer.log_every_n_steps=1",
]


def _cfg(manifest: Path, out: Path, *extra: str) -> PretrainConfig:
    return load_config(PretrainConfig, None, [f"data.manifests=[{manifest}]", f"out={out}", *FAST, *extra])


# ----------------------------------------------------------------------------- losses


def reference_dino_loss(
    teacher: list[torch.Tensor], student: list[torch.Tensor], center: torch.Tensor, t_temp: float, s_temp: float
) -> torch.Tensor:
    """Caron et al. 2021, eq. 3: cross-entropy between every teacher view and every other student view."""
    total, terms = torch.zeros(()), 0
    for i, t in enumerate(teacher):
        p_t = F.softmax((t - center) / t_temp, dim=-1)
        for j, s in enumerate(student):
            if i == j:
                continue
            total = total + (-(p_t * F.log_softmax(s / s_temp, dim=-1)).sum(-1)).mean()
            terms += 1
    return total / terms


def reference_nt_xent(z0: torch.Tensor, z1: torch.Tensor, temperature: float) -> torch.Tensor:
    """Chen et al. 2020: each view's positive is its pair, negatives are all other 2N-2 views."""
    z = F.normalize(torch.cat([z0, z1]), dim=1)
    sim = z @ z.T / temperature
    n = len(z0)
    sim.fill_diagonal_(float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
    return F.cross_entropy(sim, targets)


def test_dino_loss_matches_reference(synth_manifest: Path, tmp_path: Path) -> None:
    module = DINO(config_to_dict(_cfg(synth_manifest, tmp_path, "dino.warmup_teacher_temp_epochs=0")))
    crit = module.criterion
    torch.manual_seed(0)
    teacher = [torch.randn(8, 256) for _ in range(2)]
    student = [torch.randn(8, 256) for _ in range(4)]
    crit.center.copy_(torch.randn(1, 1, 256) * 0.1)
    center = crit.center.clone()
    ours = crit(teacher, student, epoch=5)
    ref = reference_dino_loss(teacher, student, center, module.cfg.dino.teacher_temp, module.cfg.dino.student_temp)
    assert torch.allclose(ours, ref, atol=1e-5)
    # and the centre moved by its momentum towards the batch mean of the teacher outputs
    batch_mean = torch.stack(teacher).mean(dim=(0, 1), keepdim=True).view(1, 1, -1)
    m = module.cfg.dino.center_momentum
    assert torch.allclose(crit.center, center * m + batch_mean * (1 - m), atol=1e-6)


def test_adamw_is_fused_only_on_gpu_without_clipping() -> None:
    # Lightning refuses to clip the gradients of a fused AdamW under bf16 (the GPU run's failure).
    assert adamw_fused(clip_grad=3.0, cuda=True) is None
    assert adamw_fused(clip_grad=0.0, cuda=True) is True
    assert adamw_fused(clip_grad=0.0, cuda=False) is None


def test_teacher_entropy_flags_uniform_collapse() -> None:
    torch.manual_seed(0)
    center = torch.zeros(1, 1, 64)
    same = torch.randn(1, 64).expand(8, 64)  # every image the same output
    collapsed = target_entropy([same, same], same.mean(0, keepdim=True).unsqueeze(0), 0.04)
    assert collapsed.item() == pytest.approx(1.0, abs=1e-4)
    distinct = torch.eye(64)[:8] * 5.0  # each image its own prototype
    healthy = target_entropy([distinct, distinct], center, 0.04)
    assert healthy.item() < 0.05
    # Random outputs at the start of training are near uniform, but not there.
    start = target_entropy([torch.randn(8, 64) * 0.1, torch.randn(8, 64) * 0.1], center, 0.04)
    assert 0.3 < start.item() < 0.97


def test_simclr_loss_matches_reference(synth_manifest: Path, tmp_path: Path) -> None:
    module = SimCLR(config_to_dict(_cfg(synth_manifest, tmp_path, "method=simclr", "simclr.temperature=0.2")))
    torch.manual_seed(0)
    z0, z1 = torch.randn(16, 32), torch.randn(16, 32)
    assert torch.allclose(module.criterion(z0, z1), reference_nt_xent(z0, z1, 0.2), atol=1e-5)


def reference_same_source_nt_xent(z0: torch.Tensor, z1: torch.Tensor, sources: list[int], t: float) -> torch.Tensor:
    """Each view's positive is its pair; its negatives are the other images' views of its own source."""
    z = F.normalize(torch.cat([z0, z1]), dim=1)
    n, terms = len(z0), []
    for i in range(2 * n):
        pair = (i + n) % (2 * n)
        keys = [j for j in range(2 * n) if j != i and (j == pair or sources[j % n] == sources[i % n])]
        logits = torch.stack([z[i] @ z[j] for j in keys]) / t
        terms.append(-torch.log_softmax(logits, 0)[keys.index(pair)])
    return torch.stack(terms).mean()


def test_same_source_negatives_match_reference(synth_manifest: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    z0, z1 = torch.randn(12, 32), torch.randn(12, 32)
    sources = [0, 0, 1, 2, 1, 0, 2, 2, 0, 1, 1, 0]
    crit = SameSourceNTXent(0.2)
    ours = crit(z0, z1, torch.tensor(sources))
    assert torch.allclose(ours, reference_same_source_nt_xent(z0, z1, sources, 0.2), atol=1e-5)
    assert not torch.allclose(ours, reference_nt_xent(z0, z1, 0.2), atol=1e-3)  # fewer negatives
    one_lab = torch.zeros(12, dtype=torch.long)  # a single source: plain NT-Xent
    assert torch.allclose(crit(z0, z1, one_lab), reference_nt_xent(z0, z1, 0.2), atol=1e-5)
    cfg = _cfg(synth_manifest, tmp_path, "method=simclr", "simclr.negatives=same_source")
    module = SimCLR(config_to_dict(cfg))
    assert isinstance(module.criterion, SameSourceNTXent)
    views = [torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)]
    assert torch.isfinite(module.ssl_step(views, torch.tensor([0, 1, 0, 1])))
    with pytest.raises(ValueError, match="source"):
        module.ssl_step(views)


# ----------------------------------------------------------------------------- training


@pytest.mark.parametrize("method", ["dino", "simclr"])
def test_a_few_cpu_steps_lower_the_loss(synth_manifest: Path, tmp_path: Path, method: str) -> None:
    """Forty steps on one batch lower the loss on fixed held-back views.

    DINO's running loss may rise early because centring raises the entropy of the
    teacher's targets; so the teacher is held fixed (momentum 1) and the trained student
    is compared with its initial weights on the same views and the same centre.
    """
    import copy

    from leukoshift.data.loaders import load_table

    extra = ["multicrop.n_local=2", "dino.momentum_teacher=1.0"] if method == "dino" else []
    cfg = _cfg(synth_manifest, tmp_path, f"method={method}", *extra)
    module = (DINO if method == "dino" else SimCLR)(config_to_dict(cfg))
    table = load_table([synth_manifest], cfg.data.image, progress=False)
    images = torch.from_numpy(table.images(range(32)))
    student = [m for m in module.trainable_modules()]
    initial = [copy.deepcopy(m.state_dict()) for m in student]
    opt = torch.optim.AdamW([p for m in student for p in m.parameters()], lr=5e-4)
    torch.manual_seed(0)
    for _ in range(40):
        loss = module.ssl_step(module.make_views(images))
        opt.zero_grad()
        loss.backward()
        opt.step()

    # Still in training mode: both students normalise the held-back views by their own
    # batch statistics, so running averages after 40 steps do not enter the comparison.
    torch.manual_seed(1)
    views = module.make_views(images)
    centre = module.criterion.center.clone() if method == "dino" else None

    def held_back_loss() -> float:
        with torch.no_grad():
            value = module.ssl_step(views).item()
        if centre is not None:
            module.criterion.center.copy_(centre)
        return value

    trained = held_back_loss()
    for m, state in zip(student, initial, strict=True):
        m.load_state_dict(state)
    assert trained < held_back_loss() - 0.05


@pytest.fixture(scope="module")
def pretrained(synth_manifest: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ssl") / "run"
    run_pretrain(
        _cfg(
            synth_manifest,
            out,
            "trainer.max_epochs=1",
            "multicrop.n_local=2",
            f"monitor.manifests=[{synth_manifest}]",
            "monitor.max_images=40",
        ),
        progress=False,
    )
    return out


def test_pretrain_run_folder_and_monitor(pretrained: Path) -> None:
    card = read_card(pretrained / "backbone.safetensors")
    assert card is not None
    assert card["kind"] == "backbone" and card["backbone"] == "regnetx_002"
    assert card["training"]["method"] == "dino" and card["training"]["n_images"] == 2 * 11 * 24
    history = json.loads((pretrained / "monitor.json").read_text())["history"]
    assert len(history) == 1 and 0.0 <= history[0]["knn_acc"] <= 1.0
    assert history[0]["lab_mixing"] >= 0.0
    assert -1.0 <= history[0]["lab_isolation"] <= 1.0
    assert (pretrained / "last.ckpt").is_file() and (pretrained / "config.yaml").is_file()


def test_exclude_source_keeps_a_lab_out_of_the_pool(synth_manifest: Path, tmp_path: Path) -> None:
    from leukoshift.pretrain.train import load_pool

    pool = load_pool(_cfg(synth_manifest, tmp_path, "data.exclude_sources=[lab_b]"), progress=False)
    assert set(pool.frame["source"]) == {"lab_a"} and len(pool) == 11 * 24


def test_same_source_simclr_run_gets_each_images_source(
    synth_manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    seen: list[torch.Tensor] = []
    real = SameSourceNTXent.forward

    def spy(self: SameSourceNTXent, out0: torch.Tensor, out1: torch.Tensor, sources: torch.Tensor) -> torch.Tensor:
        seen.append(sources.clone())
        return real(self, out0, out1, sources)

    monkeypatch.setattr(SameSourceNTXent, "forward", spy)
    extra = ["simclr.negatives=same_source", "data.source_balance=1.0", "trainer.limit_train_batches=3"]
    out = tmp_path / "run"
    run_pretrain(_cfg(synth_manifest, out, "method=simclr", "trainer.max_epochs=1", *extra), progress=False)
    assert (out / "backbone.safetensors").is_file()
    assert [len(s) for s in seen] == [32, 32, 32] and set(torch.cat(seen).tolist()) == {0, 1}
    assert "draws per epoch by source: lab_a 50%, lab_b 50%" in capsys.readouterr().out


def test_ssl_checkpoint_initialises_finetuning(pretrained: Path, synth_manifest: Path, tmp_path: Path) -> None:
    from leukoshift.config import FinetuneConfig
    from leukoshift.finetune.train import build_module, load_tables
    from leukoshift.models.encoders import load_encoder

    teacher = load_encoder(pretrained / "last.ckpt").encoder.backbone.state_dict()
    for init in (pretrained / "backbone.safetensors", pretrained / "last.ckpt"):
        cfg = load_config(
            FinetuneConfig,
            None,
            [
                f"data.manifests=[{synth_manifest}]",
                "model.backbone=regnetx_002",
                "data.image.size=32",
                f"model.init={init}",
                f"out={tmp_path}",
            ],
        )
        module = build_module(cfg, load_tables(cfg, progress=False).train)
        state = module.encoder.backbone.state_dict()
        assert all(torch.equal(state[k], teacher[k]) for k in teacher), init


def test_resume_continues_from_the_saved_step(synth_manifest: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    monitor = [f"monitor.manifests=[{synth_manifest}]", "monitor.max_images=40", "monitor.every_n_epochs=1"]
    run_pretrain(_cfg(synth_manifest, out, "trainer.max_epochs=1", "method=simclr", *monitor), progress=False)
    first = torch.load(out / "last.ckpt", map_location="cpu", weights_only=False)
    history = out / "monitor.json"
    before = json.loads(history.read_text())["history"]
    assert [h["epoch"] for h in before] == [0]
    # An entry from after the checkpoint (an interrupted epoch) is not history to keep.
    history.write_text(json.dumps({"history": [*before, {**before[0], "epoch": 5}]}))
    run_pretrain(
        _cfg(synth_manifest, out, "trainer.max_epochs=2", "method=simclr", *monitor), resume=True, progress=False
    )
    second = torch.load(out / "last.ckpt", map_location="cpu", weights_only=False)
    assert second["global_step"] == 2 * first["global_step"] > 0
    assert second["epoch"] == first["epoch"] + 1
    # The monitor's history spans both parts of the run (it used to restart at the resume).
    after = json.loads(history.read_text())["history"]
    assert [h["epoch"] for h in after] == [0, 1] and after[0] == before[0]
    card = read_card(out / "backbone.safetensors")
    assert card is not None and card["training"]["monitor"]["epoch"] == 1


@pytest.mark.parametrize("method", ["dino", "simclr"])
def test_single_process_never_calls_collectives(
    synth_manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, method: str
) -> None:
    import torch.distributed as dist

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("a collective was called in a single-process run")

    for name in ("all_reduce", "all_gather", "broadcast", "barrier", "all_gather_into_tensor"):
        monkeypatch.setattr(dist, name, forbidden)
    extra = ["multicrop.n_local=2"] if method == "dino" else []
    run_pretrain(
        _cfg(
            synth_manifest,
            tmp_path / method,
            "trainer.max_epochs=1",
            f"method={method}",
            "trainer.limit_train_batches=2",
            *extra,
        ),
        progress=False,
    )
    assert (tmp_path / method / "backbone.safetensors").is_file()


def test_bad_pretrain_configs_fail_before_work(synth_manifest: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no manifest|at least one manifest"):
        run_pretrain(load_config(PretrainConfig, None, [f"out={tmp_path}", *FAST]))
    with pytest.raises(UserError, match="SimCLR uses two global views"):
        _cfg(synth_manifest, tmp_path, "method=simclr", "multicrop.n_local=4")
    with pytest.raises(UserError, match="far below multicrop.global_size"):
        run_pretrain(_cfg(synth_manifest, tmp_path, "multicrop.global_size=224"))


def test_stain_normalised_pretraining_fits_the_pool_and_travels_to_finetuning(
    synth_manifest: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import kornia.color
    import numpy as np

    from leukoshift.config import FinetuneConfig
    from leukoshift.domain.stain import ReinhardNormalizer
    from leukoshift.finetune.train import build_module, init_stain_normalization, load_tables
    from leukoshift.models.encoders import load_encoder
    from leukoshift.pretrain.train import load_pool

    out = tmp_path / "run"
    cfg = _cfg(
        synth_manifest,
        out,
        "method=simclr",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=2",
        "augment.normalize=reinhard",
    )
    run_pretrain(cfg, progress=False)
    pool = load_pool(cfg, progress=False)
    assert len(pool) > 256
    assert "stain normalisation: reinhard fitted on 256 pool images" in capsys.readouterr().out

    # The target is the pooled LAB statistics of the seeded sample of the pool.
    picked = np.sort(np.random.default_rng(cfg.trainer.seed).choice(len(pool), 256, replace=False))
    sample = torch.from_numpy(pool.images(picked)).float() / 255
    lab = kornia.color.rgb_to_lab(sample)
    card = read_card(out / "backbone.safetensors")
    assert card is not None and card["stain_normalization"]["method"] == "reinhard"
    torch.testing.assert_close(
        torch.tensor(card["stain_normalization"]["buffers"]["mean_ref"]), lab.mean(dim=(0, 2, 3)), atol=1e-3, rtol=0
    )

    # Every view the method trains on reaches the backbone with the target's LAB mean.
    module = SimCLR.load_from_checkpoint(out / "last.ckpt", map_location="cpu", weights_only=False)
    assert isinstance(module.stain, ReinhardNormalizer)
    images = torch.from_numpy(pool.images(np.arange(16)))
    views = module.make_views(images)
    mean, std = module.normalize.mean, module.normalize.std
    view_lab = kornia.color.rgb_to_lab((views[0] * std + mean).clamp(0, 1)).mean(dim=(2, 3))
    torch.testing.assert_close(view_lab.mean(0), module.stain.mean_ref, atol=2.0, rtol=0)
    assert view_lab.std(0).max() < 2.0  # each view moved there, not only their average
    # Un-normalised views of the same images spread far wider.
    raw = kornia.color.rgb_to_lab(images.float() / 255).mean(dim=(2, 3))
    assert raw.std(0).max() > 3 * view_lab.std(0).max()

    # The exported backbone and the Lightning checkpoint both carry the fitted normaliser.
    x = images[:4].float() / 255
    with torch.no_grad():
        expected = module.eval().embed(x)
        for path in (out / "backbone.safetensors", out / "last.ckpt"):
            torch.testing.assert_close(load_encoder(path).encoder(x), expected)
            assert init_stain_normalization(path) == "reinhard"

    # A fine-tune from it without normalisation is told what the backbone was trained with.
    ft = load_config(
        FinetuneConfig,
        None,
        [
            f"data.manifests=[{synth_manifest}]",
            "model.backbone=regnetx_002",
            "data.image.size=32",
            f"model.init={out / 'backbone.safetensors'}",
        ],
    )
    build_module(ft, load_tables(ft, progress=False).train)
    assert "was trained with stain normalisation reinhard, this run uses none" in capsys.readouterr().out
