"""Pretraining throughput: leukoshift's device data path against the reference pipeline.

Our path decodes every image once into a memory-mapped uint8 cache (leukoshift's
``build_cache``; built before timing, as a user builds it once), loads uint8 batches with
pinned memory, copies them to the device without blocking and makes every multi-crop
view there in one fused pass per view size (``MultiCropAugment``). The reference path is
lightly's: an ImageFolder whose workers decode JPEGs with PIL and run ``DINOTransform``
(or ``SimCLRTransform``) per image, then float views are copied to the device. Both read
the same images with the same crop sizes, batch size and worker count, and feed the same
model (leukoshift's DINO / SimCLR LightningModules: timm backbone, lightly heads and
losses) through the same Lightning trainer; only the views' origin differs.

Measured in ONE run on one machine, as medians over ``--repeats`` timed windows of
``--steps`` batches after ``--warmup`` batches (device synchronised at each window edge):

1. data only: augmented views per second (uint8 cache -> device -> views, against
   JPEG -> PIL DINOTransform in workers -> device);
2. a full DINO training step: images per second;
3. the same for SimCLR;
4. with ``--compile``: our DINO and SimCLR steps again with the backbones and the
   augmentation compiled (``--compile dino`` with ``data``: the data path compiled too);
5. with ``phases`` in ``--only``: where our DINO step's time goes (loading, augmentation,
   teacher forward, student forward and loss, backward, clipping and optimiser, teacher
   update), each part timed on the device by events around the module's own calls;
   with ``--compile dino`` too, the same for the compiled step.

    python benchmarks/throughput.py --help
    python benchmarks/throughput.py --backbone vit_tiny --model-kwargs depth=2 \\
        --global-size 64 --local-size 32 --batch-size 64 --workers 2 --threads 1 \\
        --data ../shared/data/pbc/PBC_dataset_normal_DIB --max-images 512

Prints a table with ratios (ours / reference) and writes every window with
``--json-out``; the JSON is rewritten after each measurement, so a run cut short keeps
what it measured. The reference's augmentations are lightly's defaults for DINO / SimCLR
at our crop sizes and scales; ours do more per view (HED stain jitter, free rotation,
shear and zoom on top of crops, flips, colour, grayscale, blur and solarisation).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}


# ----------------------------------------------------------------------------- arguments


def _names(text: str) -> list[str]:
    """A comma-separated option as a list of names, blanks dropped, order kept."""
    return [s.strip() for s in text.split(",") if s.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--backbone", default="vit_tiny", help="a leukoshift backbone name")
    p.add_argument(
        "--model-kwargs",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="extra timm arguments, e.g. depth=2",
    )
    p.add_argument("--global-size", type=int, default=64, help="global view side, px")
    p.add_argument("--local-size", type=int, default=32, help="local view side, px")
    p.add_argument("--n-local", type=int, default=6, help="DINO local views (2 global views)")
    p.add_argument("--batch-size", type=int, default=64, help="images per step")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers, both paths")
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="batches per timed window (default: max(5, workers)); a window should span at "
        "least one batch from every worker, since the reference's workers deliver in bursts",
    )
    p.add_argument("--warmup", type=int, default=3, help="untimed batches first")
    p.add_argument("--repeats", type=int, default=5, help="timed windows (median reported)")
    p.add_argument(
        "--data",
        type=Path,
        default=None,
        help="folder of images, flat or in class subfolders; default: synthetic JPEGs",
    )
    p.add_argument("--max-images", type=int, default=1024, help="images used (evenly spaced)")
    p.add_argument(
        "--cache-size",
        type=int,
        default=None,
        help="side of the cached images (default: the global size)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads of the main process (default: 1 on a CPU, as each reference "
        "worker; torch's default on a GPU). On a shared CPU several OpenMP threads stall "
        "whenever another process holds a core",
    )
    p.add_argument(
        "--only",
        default="data,dino,simclr",
        help="comma-separated subset of data, dino, simclr, phases (the DINO step's parts)",
    )
    p.add_argument(
        "--paths",
        default="ours,reference",
        help="which training steps to time: ours, reference or both (e.g. --paths ours for a "
        "second batch size on the same machine, the reference already measured)",
    )
    p.add_argument(
        "--compile",
        nargs="?",
        const="dino,simclr",
        default="",
        help="also time our steps with compiled backbones (all methods, or a list: --compile dino)",
    )
    p.add_argument(
        "--budget",
        type=float,
        default=None,
        help="seconds: measurements not started by then are skipped (results so far are kept)",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="PretrainConfig overrides for both paths, e.g. dino.out_dim=1024",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json-out", type=Path, default=None)
    args = p.parse_args(argv)
    args.only = set(_names(args.only))
    args.compile = set(_names(args.compile))
    args.paths = _names(args.paths)
    unknown = (
        (args.only - {"data", "dino", "simclr", "phases"})
        | (args.compile - {"dino", "simclr"})
        | (set(args.paths) - {"ours", "reference"})
    )
    if unknown:
        p.error(f"--only/--compile/--paths: unknown {', '.join(sorted(unknown))}")
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device here")
    if args.data is not None and not args.data.is_dir():
        p.error(f"--data {args.data}: folder not found")
    args.cache_size = args.cache_size or args.global_size
    args.steps = args.steps or max(5, args.workers)
    if args.threads is None and args.device == "cpu":
        args.threads = 1
    return args


def epoch_length(args: argparse.Namespace, n_images: int) -> int:
    """Rows per epoch so that no epoch ends inside a measurement.

    A new epoch restarts the loaders' prefetching; the reference's first batch then takes
    a worker's whole batch time (seconds), which a production epoch of many thousands of
    images amortises but a few-batch benchmark epoch would not. Both paths repeat the
    same images in one long shuffled epoch instead.
    """
    batches = args.warmup + args.steps * args.repeats + 4 * max(1, args.workers) + 1
    return max(n_images, batches * args.batch_size)


def parse_pairs(pairs: list[str]) -> dict[str, Any]:
    import yaml

    out: dict[str, Any] = {}
    for item in pairs:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"expected KEY=VALUE, got {item!r}")
        out[key] = yaml.safe_load(value)
    return out


# ----------------------------------------------------------------------------- images


def write_synthetic(folder: Path, n: int, size: int = 128, seed: int = 0) -> None:
    """Smooth colour fields with a dark round 'cell': JPEGs that decode like real crops."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        coarse = rng.uniform(150, 240, size=(4, 4, 3)).astype(np.uint8)
        smooth = Image.fromarray(coarse).resize((size, size), Image.BICUBIC)
        img = np.asarray(smooth, dtype=np.float32)
        cy, cx = rng.uniform(0.35, 0.65, 2)
        r = rng.uniform(0.12, 0.25)
        cell = ((yy - cy) ** 2 + (xx - cx) ** 2) < r**2
        img[cell] *= rng.uniform(0.3, 0.7, size=3)
        img += rng.normal(0, 6, size=img.shape)
        out = Image.fromarray(img.clip(0, 255).astype(np.uint8))
        out.save(folder / f"img_{i:05d}.jpg", quality=90)


def select_images(root: Path, max_images: int) -> list[tuple[str, Path]]:
    """(class folder, file) pairs, evenly spaced over the sorted tree (all classes seen)."""
    files = [
        p
        for p in sorted(root.rglob("*"))
        if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file()
    ]
    if not files:
        raise SystemExit(f"{root}: no image files")
    if len(files) > max_images:
        files = [files[i] for i in np.linspace(0, len(files) - 1, max_images).round().astype(int)]
    out = []
    for path in files:
        rel = path.relative_to(root)
        out.append((rel.parts[0] if len(rel.parts) > 1 else "all", path))
    return out


def build_tree(args: argparse.Namespace, tmp: Path) -> tuple[Path, Any]:
    """One folder of images (class subfolders) both paths read, and our cache table.

    The tree is built from symlinks; the leukoshift import drops undecodable files, and
    they are removed from the tree too, so both paths see exactly the same images.
    """
    from leukoshift.config import ImageConfig
    from leukoshift.data.importers import import_dataset
    from leukoshift.data.loaders import load_table

    source = args.data
    if source is None:
        source = tmp / "synthetic"
        write_synthetic(source / "cells", args.max_images, seed=args.seed)
    tree = tmp / "images"
    for i, (cls, path) in enumerate(select_images(source, args.max_images)):
        link = tree / cls / f"{i:06d}{path.suffix.lower()}"
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(path.resolve())
    manifest = tmp / "pool.csv"
    result = import_dataset("unlabeled", tree, "bench", manifest, workers=os.cpu_count() or 2, progress=False)
    for rejected in result.rejected:
        Path(rejected.path).unlink(missing_ok=True)
    image = ImageConfig(size=args.cache_size, cache_dir=tmp / "cache")
    table = load_table([manifest], image, progress=False)
    return tree, table


def long_epoch(table: Any, args: argparse.Namespace) -> Any:
    """The table's rows repeated to :func:`epoch_length` (the cache is not copied)."""
    return table.subset(np.resize(np.arange(len(table)), epoch_length(args, len(table))))


# ----------------------------------------------------------------------------- configs


def pretrain_config(args: argparse.Namespace, method: str, compile_: bool = False) -> Any:
    from leukoshift.config import PretrainConfig, load_config

    sets = [
        f"method={method}",
        f"model.backbone={args.backbone}",
        f"data.image.size={args.cache_size}",
        f"data.batch_size={args.batch_size}",
        f"data.num_workers={args.workers}",
        f"multicrop.global_size={args.global_size}",
        f"multicrop.local_size={args.local_size}",
        "trainer.progress=false",
        f"trainer.seed={args.seed}",
        f"trainer.compile={str(compile_).lower()}",
        "trainer.accelerator=" + ("gpu" if args.device.startswith("cuda") else "cpu"),
        "optim.warmup_epochs=0",
    ]
    if method == "dino":
        sets.append(f"multicrop.n_local={args.n_local}")
    cfg = load_config(PretrainConfig, None, [*sets, *args.overrides])
    kwargs = parse_pairs(args.model_kwargs)
    if kwargs:
        cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"kwargs": kwargs})})
    return cfg


def reference_transform(cfg: Any, method: str) -> Any:
    from lightly.transforms import DINOTransform, SimCLRTransform

    mc = cfg.multicrop
    if method == "simclr":
        return SimCLRTransform(input_size=mc.global_size)
    return DINOTransform(
        global_crop_size=mc.global_size,
        global_crop_scale=mc.global_scale,
        local_crop_size=mc.local_size,
        local_crop_scale=mc.local_scale,
        n_local_views=mc.n_local,
    )


def reference_loader(tree: Path, transform: Any, args: argparse.Namespace) -> Any:
    """lightly's recipe: ImageFolder + per-image PIL transform in DataLoader workers.

    Pinned memory as ours; PyTorch's default prefetch depth (its float views are 12x the
    bytes of our uint8 batches, so deeper queues would cost many GB of shared memory
    without raising the steady rate).
    """
    from torch.utils.data import DataLoader, Subset
    from torchvision.datasets import ImageFolder

    folder = ImageFolder(str(tree), transform=transform)
    rows = np.resize(np.arange(len(folder)), epoch_length(args, len(folder)))
    return DataLoader(
        Subset(folder, rows.tolist()),
        batch_size=args.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=args.workers,
        pin_memory=args.device.startswith("cuda"),
        persistent_workers=args.workers > 0,
    )


# ----------------------------------------------------------------------------- timing


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def cycle(loader: Any) -> Iterator[Any]:
    while True:
        yield from loader


def timed_windows(step: Callable[[], None], args: argparse.Namespace) -> list[float]:
    """Seconds per window of ``args.steps`` calls, after ``args.warmup`` untimed calls."""
    for _ in range(args.warmup):
        step()
    synchronize(args.device)
    windows = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        for _ in range(args.steps):
            step()
        synchronize(args.device)
        windows.append(time.perf_counter() - start)
    return windows


class WindowTimer:
    """A Lightning callback timing windows of training batches (made lazily: pl import)."""

    @staticmethod
    def make(args: argparse.Namespace) -> Any:
        import pytorch_lightning as pl

        class _Timer(pl.Callback):
            def __init__(self) -> None:
                self.windows: list[float] = []
                self.batches = 0
                self.start = 0.0

            def on_train_batch_end(self, trainer: Any, *rest: Any) -> None:
                self.batches += 1
                done = self.batches - args.warmup
                if done >= 0 and done % args.steps == 0:
                    synchronize(args.device)
                    now = time.perf_counter()
                    if done > 0:
                        self.windows.append(now - self.start)
                    self.start = now

        return _Timer()


def rate(windows: list[float], per_step: int, steps: int) -> float:
    return per_step * steps / statistics.median(windows)


# ----------------------------------------------------------------------------- measurements


def our_batches(table: Any, args: argparse.Namespace, device: torch.device) -> Iterator[Any]:
    """Endless uint8 batches from the cache, as the trainer's loader serves them."""
    from leukoshift.data.loaders import make_loader

    loader = make_loader(
        long_epoch(table, args),
        args.batch_size,
        shuffle=True,
        num_workers=args.workers,
        drop_last=True,
        seed=args.seed,
        pin_memory=device.type == "cuda",
    )
    return cycle(loader)


def bench_data(args: argparse.Namespace, tree: Path, table: Any, compile_: bool = False) -> dict[str, Any]:
    """Views per second: uint8 cache -> device -> views, against PIL DINOTransform.
    ``compile_``: ours only, with the augmentation's stages compiled (as ``--compile``)."""
    from leukoshift.config import config_to_dict
    from leukoshift.pretrain.dino import DINO

    cfg = pretrain_config(args, "dino")
    n_views = cfg.multicrop.n_global + cfg.multicrop.n_local
    per_step = args.batch_size * n_views
    device = torch.device(args.device)
    module = DINO(config_to_dict(cfg)).to(device)  # make_views: the module's own path
    if compile_:
        module.multicrop.compile_stages()
    batches = our_batches(table, args, device)

    def ours() -> None:
        images = next(batches)["image"].to(device, non_blocking=True)
        module.make_views(images)

    with torch.no_grad():
        ours_windows = timed_windows(ours, args)
    if compile_:
        return {"unit": "views/s", "ours": rate(ours_windows, per_step, args.steps), "windows_s": ours_windows}

    ref_batches = cycle(reference_loader(tree, reference_transform(cfg, "dino"), args))

    def reference() -> None:
        views, _ = next(ref_batches)
        [v.to(device, non_blocking=True) for v in views]

    ref_windows = timed_windows(reference, args)
    return {
        "unit": "views/s",
        "ours": rate(ours_windows, per_step, args.steps),
        "reference": rate(ref_windows, per_step, args.steps),
        "windows_s": {"ours": ours_windows, "reference": ref_windows},
    }


def reference_module(method: str) -> type:
    """The method's LightningModule, fed lightly's ready-made (normalised) views instead."""
    from leukoshift.pretrain.dino import DINO
    from leukoshift.pretrain.simclr import SimCLR

    base = DINO if method == "dino" else SimCLR

    class Reference(base):  # type: ignore[misc, valid-type]
        def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> dict[str, Any]:
            views, _ = batch
            fmt = torch.channels_last if self._channels_last() else torch.contiguous_format
            return {"views": [v.contiguous(memory_format=fmt) for v in views]}

    return Reference


def bench_step(
    args: argparse.Namespace, tree: Path, table: Any, method: str, path: str, compile_: bool = False
) -> dict[str, Any]:
    """Images per second through ``trainer.fit`` (production trainer settings)."""
    import pytorch_lightning as pl

    from leukoshift.config import config_to_dict
    from leukoshift.pretrain.dino import DINO
    from leukoshift.pretrain.simclr import SimCLR
    from leukoshift.training import TableDataModule, make_trainer

    cfg = pretrain_config(args, method, compile_)
    pl.seed_everything(args.seed, verbose=False)
    cls = (DINO if method == "dino" else SimCLR) if path == "ours" else reference_module(method)
    module = cls(config_to_dict(cfg))
    if compile_:
        module.compile_model()
    timer = WindowTimer.make(args)
    total = args.warmup + args.steps * args.repeats
    tcfg = cfg.trainer.model_copy(update={"max_epochs": 10_000, "devices": 1})
    with tempfile.TemporaryDirectory() as out:
        trainer = make_trainer(
            tcfg,
            Path(out),
            [timer],
            monitor_val=False,
            max_steps=total,
            gradient_clip_val=cfg.optim.clip_grad or None,
            enable_checkpointing=False,
        )
        if path == "ours":
            data = TableDataModule(
                long_epoch(table, args),
                None,
                args.batch_size,
                args.workers,
                args.seed,
                drop_last=True,
            )
            trainer.fit(module, datamodule=data)
        else:
            loader = reference_loader(tree, reference_transform(cfg, method), args)
            trainer.fit(module, train_dataloaders=loader)
    metrics = trainer.callback_metrics
    loss = metrics.get("train/loss_epoch", metrics.get("train/loss_step"))
    result = {
        "unit": "images/s",
        "images_per_s": rate(timer.windows, args.batch_size, args.steps),
        "windows_s": timer.windows,
        "precision": str(trainer.precision),
        "last_loss": None if loss is None else float(loss),
    }
    del trainer, module
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()
    return result


class PhaseClock:
    """Marks on the device's stream (CUDA events), or host clock marks on a CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.marks: list[Any] = []

    def mark(self) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())

    def spans_ms(self) -> list[float]:
        """Milliseconds between consecutive marks (waits for the device once, at the end)."""
        if self.cuda:
            torch.cuda.synchronize()
            return [a.elapsed_time(b) for a, b in zip(self.marks, self.marks[1:], strict=False)]
        return [1000 * (b - a) for a, b in zip(self.marks, self.marks[1:], strict=False)]


PHASES = (
    "augment",
    "teacher forward",
    "student forward + loss",
    "backward",
    "clip + optimiser",
    "teacher update (EMA)",
    "next batch: load and copy (device idle)",
)


def bench_phases(args: argparse.Namespace, table: Any, compile_: bool = False) -> dict[str, Any]:
    """Where our DINO step's time goes, part by part, on the device's own clock.

    The parts are the module's own calls in the order ``DINO.ssl_step`` makes them, under
    the trainer's precision (bf16 autocast on a GPU), without Lightning around them. A
    device waiting for the host between steps shows as idle time, not as any part.
    ``compile_``: backbones and augmentation compiled, as ``--compile`` trains them.
    """
    from lightly.models.utils import update_momentum

    from leukoshift.config import config_to_dict
    from leukoshift.pretrain.dino import DINO

    cfg = pretrain_config(args, "dino")
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    module = DINO(config_to_dict(cfg)).to(device).train()
    if compile_:
        module.compile_model()
    optimizer = module.configure_optimizers()
    params = [p for m in module.trainable_modules() for p in m.parameters() if p.requires_grad]
    momentum = cfg.dino.momentum_teacher
    n_global = cfg.multicrop.n_global
    batches = our_batches(table, args, device)
    clock = PhaseClock(device)
    n_steps = args.warmup + args.steps * args.repeats
    for _ in range(n_steps):
        images = next(batches)["image"].to(device, non_blocking=True)
        clock.mark()
        with torch.no_grad():
            views = module.make_views(images)
        clock.mark()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            with torch.no_grad():
                teacher_out = module._forward_views(module.teacher_backbone, module.teacher_head, views[:n_global])
            clock.mark()
            student_out = module._forward_views(module.backbone, module.student_head, views)
            loss = module.criterion(teacher_out, student_out, epoch=0)
        clock.mark()
        loss.backward()
        clock.mark()
        if cfg.optim.clip_grad:
            torch.nn.utils.clip_grad_norm_(params, cfg.optim.clip_grad)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        clock.mark()
        update_momentum(module.backbone, module.teacher_backbone, m=momentum)
        update_momentum(module.student_head, module.teacher_head, m=momentum)
        clock.mark()
    spans = clock.spans_ms()
    per_step = len(PHASES) - 1  # marks per step; the idle span joins a step to the next
    step_spans = [spans[i * (per_step + 1) : i * (per_step + 1) + per_step + 1] for i in range(n_steps)]
    timed = step_spans[args.warmup :]
    # The last step has no following batch, hence no idle span.
    medians = {name: statistics.median(s[k] for s in timed if k < len(s)) for k, name in enumerate(PHASES)}
    step_ms = statistics.median(sum(s[: per_step + 1]) for s in timed[:-1]) if len(timed) > 1 else None
    result: dict[str, Any] = {
        "unit": "ms per step (median)",
        "phases_ms": medians,
        "step_ms": step_ms,
        "images_per_s": args.batch_size / step_ms * 1000 if step_ms else None,
        "last_loss": float(loss.detach()),
    }
    del module, optimizer
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


# ----------------------------------------------------------------------------- report


def environment(args: argparse.Namespace) -> dict[str, Any]:
    import importlib.metadata as md

    versions = {}
    names = ("torch", "torchvision", "timm", "lightly", "kornia", "pytorch-lightning", "pillow")
    for name in names:
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = None
    device = (
        torch.cuda.get_device_name(torch.device(args.device))
        if args.device.startswith("cuda")
        else f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} logical cores)"
    )
    shm = Path("/dev/shm")
    return {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu_count": os.cpu_count(),
        # Worker batches travel through shared memory: the reference's float views need GBs.
        "dev_shm_gb": round(shutil.disk_usage(shm).total / 1e9, 1) if shm.is_dir() else None,
        "device": device,
        "python": sys.version.split()[0],
        "versions": versions,
        "torch_threads": torch.get_num_threads(),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }


def ratio_row(label: str, ours: float, reference: float | None) -> tuple[str, str, str, str]:
    """One table row: our rate, the reference's (when it was measured) and their ratio."""
    if not reference:
        return (label, f"{ours:,.0f}", "-", "-")
    return (label, f"{ours:,.0f}", f"{reference:,.0f}", f"{ours / reference:.2f}x")


def table_rows(results: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    rows = []
    data = results.get("data")
    if isinstance(data, dict) and "ours" in data:
        rows.append(ratio_row("data: multi-crop views/s", data["ours"], data["reference"]))
        compiled = results.get("data/ours-compiled")
        if isinstance(compiled, dict) and "ours" in compiled:
            rows.append(ratio_row("data: multi-crop views/s, ours compiled", compiled["ours"], data["reference"]))
    for method in ("dino", "simclr"):
        name = "DINO" if method == "dino" else "SimCLR"
        ref = results.get(f"{method}/reference")
        ref_rate = ref.get("images_per_s") if isinstance(ref, dict) else None
        for key, label in (
            (f"{method}/ours", f"{name} step images/s"),
            (f"{method}/ours-compiled", f"{name} step, ours compiled"),
        ):
            ours = results.get(key)
            if isinstance(ours, dict) and "images_per_s" in ours:
                rows.append(ratio_row(label, ours["images_per_s"], ref_rate))
    return rows


def print_table(results: dict[str, Any]) -> None:
    rows = [("measurement", "ours", "reference", "ratio"), *table_rows(results)]
    print("\n| " + " | ".join(rows[0]) + " |\n|---|---:|---:|---:|")
    for row in rows[1:]:
        print("| " + " | ".join(row) + " |")
    for key, what in (("dino/phases", ""), ("dino/phases-compiled", ", compiled")):
        phases = results.get(key)
        if not (isinstance(phases, dict) and "phases_ms" in phases):
            continue
        rate = phases["images_per_s"] or 0
        print(f"\nOur DINO step by part{what} (median ms; {rate:,.0f} images/s without Lightning):")
        total = sum(phases["phases_ms"].values())
        for name, ms in phases["phases_ms"].items():
            print(f"  {name:<40} {ms:8.2f} ms  {100 * ms / total:5.1f} %")
    failed = {k: v["error"] for k, v in results.items() if isinstance(v, dict) and "error" in v}
    for key, err in failed.items():
        print(f"{key}: FAILED: {err}")


def quiet_lightning() -> None:
    """Keep the output to the measurements: Lightning's banners and hints repeat per fit."""
    import logging
    import warnings

    import pytorch_lightning  # noqa: F401  (creates its loggers)

    for name in list(logging.root.manager.loggerDict):
        if name.startswith(("pytorch_lightning", "lightning")):
            logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module=r"pytorch_lightning.*|lightning_fabric.*")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet_lightning()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    if args.device.startswith("cuda:"):
        torch.cuda.set_device(torch.device(args.device))
    env = environment(args)
    print(
        f"{env['date']}  {env['device']}  torch {env['versions']['torch']}  "
        f"threads {env['torch_threads']}  cpus {env['cpu_count']}  /dev/shm {env['dev_shm_gb']} GB"
    )
    report: dict[str, Any] = {"environment": env, "args": {k: str(v) for k, v in vars(args).items()}}
    results: dict[str, Any] = report.setdefault("results", {})

    def save() -> None:
        if args.json_out is not None:
            args.json_out.parent.mkdir(parents=True, exist_ok=True)
            args.json_out.write_text(json.dumps(report, indent=2, default=str))

    began = time.perf_counter()

    def run(key: str, fn: Callable[[], dict[str, Any]]) -> None:
        started = time.perf_counter()
        if args.budget is not None and started - began > args.budget:
            results[key] = {"skipped": f"--budget {args.budget:.0f} s spent"}
            print(f"{key}: skipped (budget)", flush=True)
            save()
            return
        try:
            results[key] = fn()
        except Exception as exc:  # one failed measurement must not lose the others
            traceback.print_exc()
            results[key] = {"error": f"{type(exc).__name__}: {exc}"}
        results[key]["wall_s"] = round(time.perf_counter() - started, 1)
        shown = {k: v for k, v in results[key].items() if k != "windows_s"}
        print(f"{key}: {shown}", flush=True)
        save()

    with tempfile.TemporaryDirectory(prefix="leukoshift-throughput-") as tmp:
        started = time.perf_counter()
        tree, table = build_tree(args, Path(tmp))
        report["images"] = len(table)
        took = time.perf_counter() - started
        print(f"{len(table)} images, cache {args.cache_size} px built in {took:.1f} s (untimed)")
        if "data" in args.only:
            run("data", lambda: bench_data(args, tree, table))
        for method in ("dino", "simclr"):
            if method in args.only:
                for path in args.paths:
                    run(
                        f"{method}/{path}",
                        lambda m=method, p=path: bench_step(args, tree, table, m, p),
                    )
            if method == "dino" and "phases" in args.only:
                run("dino/phases", lambda: bench_phases(args, table))
        # Compiled steps last: after torch.compile has run in this process, the reference's
        # forked DataLoader workers died with "CUDA error: initialization error" (H100, torch
        # 2.11), so a reference measured after it fails.
        # The training steps first: under --budget, the compiled data path is the one to drop.
        for method in ("dino", "simclr"):
            if method in args.only and method in args.compile and "ours" in args.paths:
                run(
                    f"{method}/ours-compiled",
                    lambda m=method: bench_step(args, tree, table, m, "ours", True),
                )
        if "phases" in args.only and "dino" in args.compile:
            run("dino/phases-compiled", lambda: bench_phases(args, table, compile_=True))
        if "data" in args.only and "dino" in args.compile:
            run("data/ours-compiled", lambda: bench_data(args, tree, table, compile_=True))
    print_table(results)
    save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
