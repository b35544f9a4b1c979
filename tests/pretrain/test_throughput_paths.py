"""The fast device data path makes the same views as the pipelines it replaces.

Three comparisons: the fused multi-crop against the same augmentations as separate
Kornia modules (the fine-tuning pipeline's building blocks), our device path against
lightly's PIL ``DINOTransform`` path that ``benchmarks/throughput.py`` times it against,
and a short seeded pretraining run with and without ``--compile``.
"""

from __future__ import annotations

import csv
import functools
import importlib.util
import json
import math
from pathlib import Path
from types import ModuleType

import pytest
import torch
import torch.nn.functional as F

from leukoshift.config import (
    ColourAugConfig,
    GeometryAugConfig,
    PretrainConfig,
    StainAugConfig,
    config_to_dict,
    load_config,
)
from leukoshift.domain import augment as A
from leukoshift.pretrain.dino import DINO

REPO = Path(__file__).resolve().parents[2]


def load_benchmark(name: str = "throughput") -> ModuleType:
    path = REPO / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def kornia_multicrop(
    size: int,
    scale: tuple[float, float],
    zoom: tuple[float, float],
    geometry: GeometryAugConfig,
    colour: ColourAugConfig,
    stain: StainAugConfig,
    colour_p: float,
    grayscale_p: float,
    blur_p: float,
    solarize_p: float,
) -> A.Augment:
    """One view size as the Kornia module chain the fused pass replaces."""
    ops = A._affine(geometry.rotation, geometry.shear, zoom)
    ops.append(A._resized_crop(size, scale))
    ops += A._orientation(geometry.flips, geometry.rot90, geometry.rotation)
    ops += A._colour(colour, stain, colour_p, grayscale_p)
    ops += A._blur_solarize(size, colour.blur_sigma, blur_p, solarize_p)
    return A.Augment(ops, size)


def cell_images(n: int = 300, size: int = 48) -> torch.Tensor:
    """Bright smooth background, a dark off-centre 'cell' with a red 'nucleus' quarter."""
    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    x = 0.75 + 0.1 * torch.rand(n, 3, 1, 1, generator=g)
    x = x.expand(n, 3, size, size).clone()
    cell = ((yy - 20) ** 2 + (xx - 28) ** 2) < 11**2
    x[:, :, cell] *= 0.45
    x[:, 0, cell & (yy < 20) & (xx < 28)] = 0.9
    return x


def group_stats(views: torch.Tensor) -> dict[str, float]:
    """Geometry (dark 'cell' area, its spread) and colour statistics of a stack of views."""
    gray = views.mean(1)
    dark = (gray < 0.5).float().mean((1, 2))
    chroma = views.amax(1) - views.amin(1)
    red_minus_blue = (views[:, 0] - views[:, 2]).mean((1, 2))  # moves with hue and stain
    edges = views.diff(dim=-1).abs().mean((1, 2, 3)) + views.diff(dim=-2).abs().mean((1, 2, 3))
    return {
        "edges": float(edges.mean()),  # detail per pixel: grows with magnification
        "edges_sd": float(edges.std()),
        "cell_area": float(dark.mean()),
        "cell_area_sd": float(dark.std()),
        "mean": float(views.mean()),
        "image_mean_sd": float(views.mean((1, 2, 3)).std()),
        "contrast": float(views.std((2, 3)).mean()),
        "chroma": float(chroma.mean()),
        "hue_shift": float(red_minus_blue.mean()),
        "hue_shift_sd": float(red_minus_blue.std()),
    }


@pytest.mark.parametrize(
    ("size", "scale", "blur_p", "solarize_p"),
    [(32, (0.4, 1.0), 0.1, 0.2), (16, (0.05, 0.4), 0.5, 0.0)],
)
def test_fused_views_follow_the_kornia_pipelines_distribution(
    size: int, scale: tuple[float, float], blur_p: float, solarize_p: float
) -> None:
    """Same parameter distributions, one pass: statistics of 2000 views agree with the
    module-by-module Kornia pipeline. Means must agree within 3.5 standard errors of a
    difference of two independent samples (this catches e.g. a missing zoom or crop areas
    0.7x too small), spreads within 20 % (this catches e.g. missing stain jitter)."""
    cfg = PretrainConfig()  # DINO defaults: free rotation, shear, zoom, stain and colour jitter
    colour = ColourAugConfig(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)
    common = dict(
        zoom=cfg.multicrop.zoom,
        geometry=cfg.augment.geometry,
        colour=colour,
        stain=cfg.augment.stain,
        colour_p=0.8,
        grayscale_p=0.2,
    )
    x = cell_images(2000)
    torch.manual_seed(0)
    old = kornia_multicrop(size, scale, blur_p=blur_p, solarize_p=solarize_p, **common)(x)  # type: ignore[arg-type]
    torch.manual_seed(0)
    fused = A._ViewGroup(1, size, scale, blur_p=[blur_p], solarize_p=[solarize_p], **common)  # type: ignore[arg-type]
    new = fused(x)
    assert new.shape == old.shape == (2000, 3, size, size)
    assert new.min() >= 0 and new.max() <= 1
    a, b = group_stats(old), group_stats(new)
    se = (2 / len(x)) ** 0.5
    pairs = [("cell_area", "cell_area_sd"), ("mean", "image_mean_sd")]
    pairs.append(("hue_shift", "hue_shift_sd"))
    for mean, sd in pairs:
        assert abs(a[mean] - b[mean]) < 3.5 * a[sd] * se, (mean, a, b)
    for key in ("cell_area_sd", "image_mean_sd", "hue_shift_sd", "contrast", "chroma"):
        assert b[key] == pytest.approx(a[key], rel=0.2), (key, a, b)
    # One resampling instead of Kornia's two (affine, then crop) leaves ours a little
    # sharper (about 5 %, see the next test), never blurrier; a missing zoom-out or crops
    # 0.7x too small would show as 5-10 % less detail.
    assert 0.98 < b["edges"] / a["edges"] < 1.1, (a, b)


def texture(n: int, size: int = 48) -> torch.Tensor:
    """An isotropic smooth random texture: detail per pixel measures the magnification."""
    g = torch.Generator().manual_seed(1)
    base = torch.rand(1, 1, size // 4, size // 4, generator=g)
    tex = F.interpolate(base, size=(size, size), mode="bicubic", align_corners=False)
    return tex.clamp(0, 1).expand(n, 3, size, size).contiguous()


@pytest.mark.parametrize("warp", ["affine", "crop"])
def test_fused_geometry_matches_each_kornia_warp(warp: str) -> None:
    """Where the Kornia chain also resamples once (zoom + rotation + shear alone, or the
    random resized crop alone), the fused warp shows the same magnification: mean detail
    within 3.5 standard errors (affine) or 1.5 % (crop: Kornia's crop boxes are whole pixels
    measured between pixel centres)."""
    geometry = GeometryAugConfig(rotation=180.0, shear=10.0, flips=False, rot90=False)
    zoom, scale, size = (0.7, 1.0), (1.0, 1.0), 48
    if warp == "crop":
        geometry = geometry.model_copy(update={"rotation": 0.0, "shear": 0.0})
        zoom, scale, size = (1.0, 1.0), (0.4, 1.0), 32
    ops = A._affine(geometry.rotation, geometry.shear, zoom)
    if warp == "crop":
        ops.append(A._resized_crop(size, scale))
    x = texture(4000)
    torch.manual_seed(0)
    old = group_stats(A.Augment(ops, size)(x))
    fused = A._ViewGroup(
        1,
        size,
        scale,
        zoom=zoom,
        geometry=geometry,
        colour=ColourAugConfig(),
        stain=StainAugConfig(p=0.0),
        colour_p=0.0,
        grayscale_p=0.0,
        blur_p=[0.0],
        solarize_p=[0.0],
    )
    new = group_stats(fused(x))
    if warp == "affine":
        se = old["edges_sd"] * (2 / len(x)) ** 0.5
        assert abs(old["edges"] - new["edges"]) < 3.5 * se, (old, new)
    else:
        assert new["edges"] == pytest.approx(old["edges"], rel=0.015), (old, new)
    assert new["edges_sd"] == pytest.approx(old["edges_sd"], rel=0.1), (old, new)


def test_fused_colour_steps_equal_the_kornia_and_stain_functions() -> None:
    """Each fused colour step computes what the module it replaces computes, given the same
    parameters: Kornia's hue rotation and Gaussian blur, and the HEDJitter stain jitter."""
    import kornia

    from leukoshift.domain.stain import HEDJitter

    torch.manual_seed(0)
    x = torch.rand(6, 3, 20, 20)
    turns = torch.tensor([-0.5, -0.1, 0.0, 0.05, 0.3, 0.5])
    expected = kornia.enhance.adjust_hue(x, turns * 2 * torch.pi)
    assert torch.allclose(A._shift_hue(x, turns), expected, atol=1e-5)

    group = A._ViewGroup(
        1,
        20,
        (1.0, 1.0),
        zoom=(1.0, 1.0),
        geometry=GeometryAugConfig(),
        colour=ColourAugConfig(),
        stain=StainAugConfig(p=1.0, sigma=0.3, bias=0.1),
        colour_p=0.0,
        grayscale_p=0.0,
        blur_p=[1.0],
        solarize_p=[0.0],
    )
    u = torch.rand(6, 7)
    u[:, 6] = 0.0  # every image drawn
    alpha, beta = 1 + 0.3 * (2 * u[:, :3] - 1), 0.1 * (2 * u[:, 3:6] - 1)
    hed = HEDJitter(0.3, 0.1, p=1.0)
    want = hed.apply_transform(x, {"alpha": alpha, "beta": beta}, {})
    assert torch.allclose(group._hed(x, u), want, atol=1e-5)

    sigma = torch.rand(6) * 0.5 + 0.3
    u_sigma = (sigma - group.blur_sigma[0]) / (group.blur_sigma[1] - group.blur_sigma[0])
    k = group.kernel
    blurred = group._blur(x, u_sigma, torch.tensor([True, True, True, False, True, False]))
    for i in range(6):
        one = x[i : i + 1]
        s = float(sigma[i])
        want = kornia.filters.gaussian_blur2d(one, (k, k), (s, s), border_type="reflect")
        assert torch.allclose(blurred[i : i + 1], want if i not in (3, 5) else one, atol=1e-5), i


def test_module_views_are_the_multicrop_views_normalised() -> None:
    cfg = load_config(
        PretrainConfig,
        None,
        [
            "model.backbone=regnetx_002",
            "multicrop.global_size=32",
            "multicrop.local_size=16",
            "multicrop.n_local=3",
            "dino.out_dim=64",
            "dino.hidden_dim=32",
            "dino.bottleneck_dim=16",
        ],
    )
    module = DINO(config_to_dict(cfg))
    images = (cell_images(4, 32) * 255).to(torch.uint8)
    torch.manual_seed(3)
    views = module.make_views(images)
    torch.manual_seed(3)
    expected = [module.normalize(v) for v in module.multicrop(images)]
    assert [tuple(v.shape) for v in views] == [(4, 3, 32, 32)] * 2 + [(4, 3, 16, 16)] * 3
    assert all(torch.allclose(v, e, atol=1e-6) for v, e in zip(views, expected, strict=True))


def test_device_path_and_reference_path_make_the_same_views(tmp_path: Path) -> None:
    """What throughput.py compares: our uint8 cache -> device views against lightly's PIL
    DINOTransform views of the same JPEGs, batch by batch: the same number and sizes of
    views, the same normalisation, pixel values in the same range and of similar mean and
    spread (ours adds stain jitter and free rotation, so not identical)."""
    bench = load_benchmark()
    args = bench.parse_args(
        [
            "--device",
            "cpu",
            "--backbone",
            "regnetx_002",
            "--global-size",
            "32",
            "--local-size",
            "16",
            "--n-local",
            "3",
            "--batch-size",
            "48",
            "--workers",
            "0",
            "--max-images",
            "48",
            "--set",
            "dino.out_dim=64",
            "dino.hidden_dim=32",
            "dino.bottleneck_dim=16",
        ]
    )
    tree, table = bench.build_tree(args, tmp_path)
    assert len(table) == 48 == sum(1 for p in tree.rglob("*.jpg"))
    cfg = bench.pretrain_config(args, "dino")
    module = DINO(config_to_dict(cfg))
    torch.manual_seed(0)
    ours = module.make_views(torch.from_numpy(table.images(range(48))))
    loader = bench.reference_loader(tree, bench.reference_transform(cfg, "dino"), args)
    ref, _ = next(iter(loader))
    assert [tuple(v.shape) for v in ours] == [tuple(v.shape) for v in ref]
    assert [v.shape[-1] for v in ours] == [32, 32, 16, 16, 16]
    mean, std = module.normalize.mean, module.normalize.std
    low, high = (0 - mean) / std, (1 - mean) / std  # [0, 1] after ImageNet normalisation
    for views in (ours, ref):
        for v in views:
            assert v.dtype == torch.float32
            assert (v >= low - 1e-4).all() and (v <= high + 1e-4).all()
    pixels = lambda vs: torch.cat([(v * std + mean).flatten() for v in vs])  # noqa: E731
    a, b = pixels(ours), pixels(ref)
    assert abs(float(a.mean() - b.mean())) < 0.08, (a.mean(), b.mean())
    assert float(a.std()) == pytest.approx(float(b.std()), rel=0.3)


def test_benchmark_runs_end_to_end_and_writes_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # --compile dino times the compiled step part by part; aot_eager traces the graphs
    # inductor would get, without its minutes of C++ compilation on this CPU.
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    bench = load_benchmark()
    out = tmp_path / "t.json"
    code = bench.main(
        [
            "--device",
            "cpu",
            "--backbone",
            "regnetx_002",
            "--global-size",
            "16",
            "--local-size",
            "8",
            "--n-local",
            "2",
            "--batch-size",
            "8",
            "--workers",
            "0",
            "--max-images",
            "16",
            "--steps",
            "1",
            "--warmup",
            "1",
            "--repeats",
            "2",
            "--only",
            "data,simclr,phases",
            "--compile",
            "dino",
            "--set",
            "simclr.hidden_dim=32",
            "simclr.out_dim=16",
            "dino.hidden_dim=32",
            "dino.bottleneck_dim=16",
            "dino.out_dim=64",
            "--json-out",
            str(out),
        ]
    )
    assert code == 0
    report = json.loads(out.read_text())
    results = report["results"]
    assert report["images"] == 16 and report["environment"]["device"].startswith("CPU")
    assert results["data"]["ours"] > 0 and results["data"]["reference"] > 0
    assert len(results["data"]["windows_s"]["ours"]) == 2
    assert results["data/ours-compiled"]["ours"] > 0 and len(results["data/ours-compiled"]["windows_s"]) == 2
    for path in ("ours", "reference"):
        assert results[f"simclr/{path}"]["images_per_s"] > 0, results[f"simclr/{path}"]
    assert "dino/ours" not in results
    assert "dino/ours-compiled" not in results  # --compile names what --only measures
    for key in ("dino/phases", "dino/phases-compiled"):
        phases = results[key]
        assert list(phases["phases_ms"]) == list(bench.PHASES)
        assert all(ms >= 0 for ms in phases["phases_ms"].values())
        # The parts of a step add up to it (the idle span included), and it is a real step.
        assert phases["step_ms"] >= max(phases["phases_ms"].values()) > 0
        assert phases["images_per_s"] == pytest.approx(8 / phases["step_ms"] * 1000)
        assert 0 < phases["last_loss"] < 2 * math.log(64)


def _losses(run: Path) -> list[float]:
    with open(run / "logs" / "metrics.csv") as f:
        return [float(r["train/loss_step"]) for r in csv.DictReader(f) if r.get("train/loss_step")]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["dino", "simclr"])
def test_compile_leaves_the_loss_curve_unchanged(
    synth_manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, method: str
) -> None:
    """``--compile`` (trainer.compile) changes speed, not learning: the same seeded run gives
    the same per-step losses (up to the fused kernels' rounding), and the same parameter
    names in the checkpoint. The DINO teacher moves fast here (momentum 0.5), so a compiled
    teacher that kept stale weights would show; augmentation stages that drew other random
    numbers would too. Slow: inductor compiles C++ on a CPU."""
    from leukoshift.pretrain.base import SSLModule
    from leukoshift.pretrain.train import run_pretrain

    def run(compile_: bool) -> Path:
        out = tmp_path / f"compile-{compile_}"
        cfg = load_config(
            PretrainConfig,
            None,
            [
                f"data.manifests=[{synth_manifest}]",
                f"out={out}",
                f"method={method}",
                "model.backbone=vit_tiny",
                "model.kwargs={depth: 1}",
                "data.image.size=32",
                "data.batch_size=16",
                "data.num_workers=0",
                "multicrop.global_size=32",
                "multicrop.local_size=16",
                *(["multicrop.n_local=2"] if method == "dino" else []),
                "dino.out_dim=128",
                "dino.hidden_dim=64",
                "dino.bottleneck_dim=32",
                "simclr.hidden_dim=64",
                "simclr.out_dim=32",
                "optim.warmup_epochs=0",
                "dino.momentum_teacher=0.5",
                "dino.momentum_teacher_end=0.5",
                "optim.lr=0.01",
                "trainer.max_epochs=1",
                "trainer.limit_train_batches=4",
                "trainer.log_every_n_steps=1",
                "trainer.progress=false",
                f"trainer.compile={str(compile_).lower()}",
            ],
        )
        return run_pretrain(cfg, progress=False)

    compiled_targets: list[list[bool]] = []
    compile_model = SSLModule.compile_model

    def spy(self: SSLModule, **options: object) -> None:
        compile_model(self, **options)
        compiled_targets.append([m._compiled_call_impl is not None for m in self.compile_targets()])
        compiled_targets.append([bool(group._compiled) for group in self.multicrop.groups])

    monkeypatch.setattr(SSLModule, "compile_model", spy)
    plain = run(False)
    assert compiled_targets == []
    compiled = run(True)
    assert compiled_targets == [[True] * (2 if method == "dino" else 1), [True] * (2 if method == "dino" else 1)]
    a, b = _losses(plain), _losses(compiled)
    assert len(a) == len(b) == 4
    assert a == pytest.approx(b, rel=2e-3, abs=2e-3), (a, b)

    def keys(run: Path) -> set[str]:
        ckpt = torch.load(run / "last.ckpt", map_location="cpu", weights_only=False)
        return set(ckpt["state_dict"])

    assert keys(compiled) == keys(plain)


def test_augment_compile_benchmark_times_both_modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    bench = load_benchmark("augment_compile")
    out = tmp_path / "a.json"
    args = ["--batch-size", "4", "--image-size", "16", "--global-size", "16", "--local-size", "8"]
    more = ["--n-local", "2", "--steps", "1", "--windows", "3", "--profile", "2", "--top", "3"]
    assert bench.main([*args, *more, "--json-out", str(out)]) == 0
    report = json.loads(out.read_text())
    for rows in report["profile"].values():  # the costliest operations first, per batch
        assert len(rows) == 3 and rows[0]["ms_per_batch"] >= rows[-1]["ms_per_batch"] > 0
        assert all(r["calls_per_batch"] > 0 and r["op"] for r in rows)
    assert set(report["profile"]) == {"eager", "compiled"}
    assert set(report["views_per_s"]) == {"eager", "compiled"}
    assert all(len(w) == 3 and min(w) > 0 for w in report["windows"].values())
    assert report["views_per_s"]["eager"] == pytest.approx(sorted(report["windows"]["eager"])[1])
