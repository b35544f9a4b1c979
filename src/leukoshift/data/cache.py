"""Decode once: a manifest at one image size becomes one memory-mapped uint8 array.

JPEG decoding and per-sample PIL work starve a GPU; here every image is decoded,
framed (:func:`prepare_image`) and resized exactly once, into ``(N, 3, S, S)`` uint8,
and every later run reads that array. The file name is a hash of the manifest's images
(path and sha1, in order) and the preprocessing, so a changed manifest or setting gets a
new cache and an unchanged one is reused.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from leukoshift.config import ConfigError, ImageConfig
from leukoshift.data.images import ImageReadError, load_rgb, prepare_image
from leukoshift.data.manifest import Manifest, read_manifest
from leukoshift.domain.centre import LOCATOR_VERSION
from leukoshift.progress import progress_iter

CACHE_VERSION = 1


def default_cache_dir(manifest: Manifest) -> Path:
    env = os.environ.get("LEUKOSHIFT_CACHE")
    if env:
        return Path(env)
    base = manifest.file.parent if manifest.file is not None else Path.cwd()
    return base / ".cache"


def cache_key(manifest: Manifest, cfg: ImageConfig) -> str:
    settings: dict[str, object] = {
        "v": CACHE_VERSION,
        "size": cfg.size,
        "preprocess": cfg.preprocess,
    }
    if cfg.preprocess != "resize":
        settings.update(margin=cfg.centre_margin, min_fraction=cfg.centre_min_fraction, locator=LOCATOR_VERSION)
    if cfg.preprocess == "ruler":
        # Only the scales of this manifest's sources: measuring another lab keeps this cache.
        scales = {s: cfg.ruler_px(s) for s in manifest.sources}
        settings.update(field=cfg.ruler_field, red_cell_px=scales)
        if cfg.ruler_scale != "lab":  # absent for the first (lab) mode: its caches stay valid
            settings["scale"] = cfg.ruler_scale
    h = hashlib.sha1(manifest.digest().encode())
    h.update(json.dumps(settings, sort_keys=True).encode())
    return f"{cfg.preprocess}{cfg.size}-{h.hexdigest()[:16]}"


def check_framing(cfg: ImageConfig, manifests: Sequence[Path | str]) -> None:
    """Fail before any image is read when ``ruler`` framing lacks a manifest's lab scale."""
    if cfg.preprocess != "ruler":
        return
    for path in manifests:
        for source in read_manifest(path).sources:
            try:
                cfg.ruler_px(source)
            except ConfigError as exc:
                raise ConfigError(f"{path}: {exc}") from None


@dataclass(frozen=True)
class CachedArray:
    """A built cache: the array path, located boxes (centre modes) and failed rows."""

    path: Path
    n: int
    size: int
    boxes: np.ndarray | None  # (N, 5): x0, y0, x1, y1, found
    failed: tuple[int, ...]

    def open(self) -> np.ndarray:
        return np.load(self.path, mmap_mode="r")


def _meta_path(path: Path) -> Path:
    return path.with_suffix(".json")


def _load_existing(path: Path, n: int) -> CachedArray | None:
    meta_path = _meta_path(path)
    if not (path.is_file() and meta_path.is_file()):
        return None
    try:
        meta = json.loads(meta_path.read_text())
        boxes_path = path.with_suffix(".boxes.npy")
        boxes = np.load(boxes_path) if boxes_path.is_file() else None
        arr = np.load(path, mmap_mode="r")
    except (ValueError, OSError, json.JSONDecodeError):
        return None
    if arr.shape[0] != n or meta.get("n") != n:
        return None
    if meta.get("preprocess") != "resize" and boxes is None:
        return None  # a centring cache without its boxes is incomplete
    return CachedArray(path, n, int(meta["size"]), boxes, tuple(meta.get("failed", ())))


def _fill(
    tmp: Path, manifest: Manifest, cfg: ImageConfig, workers: int | None, progress: bool
) -> tuple[list[int], np.ndarray | None]:
    """Decode every row into a new array file; returns the failed rows and located boxes."""
    n = len(manifest)
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, 3, cfg.size, cfg.size))
    boxes = np.zeros((n, 5), dtype=np.int32) if cfg.preprocess != "resize" else None
    failed: list[int] = []

    sources = manifest.frame["source"].astype(str).tolist()

    def work(i_path: tuple[int, Path]) -> tuple[int, np.ndarray | str, object]:
        i, p = i_path
        try:
            img, box = prepare_image(load_rgb(p), cfg, sources[i])
        except ImageReadError as exc:
            return i, str(exc), None
        return i, img, box

    paths = list(enumerate(manifest.abs_paths))
    label = f"cache {manifest.file.name if manifest.file else 'images'} @ {cfg.size}px {cfg.preprocess}"
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        for i, img, box in progress_iter(pool.map(work, paths), total=n, label=label, enabled=progress):
            if isinstance(img, str):
                failed.append(i)
                print(f"skipped: {img}")
                continue
            out[i] = img.transpose(2, 0, 1)
            if boxes is not None and box is not None:
                boxes[i] = (box.x0, box.y0, box.x1, box.y1, int(box.found))  # type: ignore[attr-defined]
    out.flush()
    del out
    return failed, boxes


def build_cache(
    manifest: Manifest,
    cfg: ImageConfig,
    cache_dir: Path | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> CachedArray:
    """Return the cache of ``manifest`` at ``cfg``, building it if it does not exist yet.

    Rows that fail to decode are zero images listed in ``failed`` (and printed): the
    row order always matches the manifest, and callers drop failed rows explicitly.
    """
    cache_dir = Path(cache_dir or cfg.cache_dir or default_cache_dir(manifest))
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"{cache_key(manifest, cfg)}.npy"
    n = len(manifest)
    existing = _load_existing(path, n)
    if existing is not None:
        return existing

    # Everything is written under temporary names and renamed into place, the metadata
    # last: a reader (another DDP rank, a second run) sees a complete cache or none.
    tag = f".tmp{os.getpid()}"
    tmp = path.with_name(f"{path.stem}{tag}.npy")
    boxes_path = path.with_suffix(".boxes.npy")
    tmp_boxes = path.with_name(f"{path.stem}.boxes{tag}.npy")
    tmp_meta = path.with_name(f"{path.stem}{tag}.json")
    try:
        failed, boxes = _fill(tmp, manifest, cfg, workers, progress)
        if boxes is not None:
            np.save(tmp_boxes, boxes)
            os.replace(tmp_boxes, boxes_path)
        os.replace(tmp, path)
        meta = {
            "n": n,
            "size": cfg.size,
            "preprocess": cfg.preprocess,
            "failed": failed,
            "manifest": str(manifest.file) if manifest.file else None,
        }
        tmp_meta.write_text(json.dumps(meta))
        os.replace(tmp_meta, _meta_path(path))
    finally:
        for leftover in (tmp, tmp_boxes, tmp_meta):
            leftover.unlink(missing_ok=True)
    return CachedArray(path, n, cfg.size, boxes, tuple(failed))
