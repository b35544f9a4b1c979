"""Shared test fixtures: the real-data location, tiny image writers, an isolated cache.

Real data (``../shared/data`` beside the repository, or ``$LEUKOSHIFT_SHARED_DATA``) is
optional: mark a test ``@pytest.mark.realdata`` or ``@pytest.mark.requires_shared`` (or
ask for the ``shared_data`` fixture) and it is skipped where the folder is absent.

Helpers are fixtures (``image_writer``, ``pbc_factory``, ``pbc_tree``) and plain functions
(``from tests.conftest import write_image, make_pbc_tree, SHARED``; pytest runs with
``--import-mode=importlib``, which names this module ``tests.conftest``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LEUKOSHIFT_SHARED_DATA") or REPO.parent / "shared" / "data")
HAS_SHARED = SHARED.is_dir()
SKIP_REASON = f"real data not found at {SHARED} (set LEUKOSHIFT_SHARED_DATA)"

#: Importable form of the marker: ``from tests.conftest import requires_shared``.
requires_shared = pytest.mark.skipif(not HAS_SHARED, reason=SKIP_REASON)

WriteImage = Callable[..., Path]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "requires_shared: needs ../shared/data (skipped when absent)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if HAS_SHARED:
        return
    skip = pytest.mark.skip(reason=SKIP_REASON)
    for item in items:
        if "realdata" in item.keywords or "requires_shared" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Every image cache of the session goes to a temp folder, never into the repo."""
    folder = tmp_path_factory.mktemp("leukoshift-cache")
    old = os.environ.get("LEUKOSHIFT_CACHE")
    os.environ["LEUKOSHIFT_CACHE"] = str(folder)
    yield folder
    if old is None:
        os.environ.pop("LEUKOSHIFT_CACHE", None)
    else:
        os.environ["LEUKOSHIFT_CACHE"] = old


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real data folder; skips the test when it is absent."""
    if not HAS_SHARED:
        pytest.skip(SKIP_REASON)
    return SHARED


def tiny_rgb(seed: int, size: int = 24) -> np.ndarray:
    """A small cell-like RGB image, different for every seed: pink field, purple disc."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    cy, cx = rng.uniform(0.35, 0.65, size=2) * size
    disc = (yy - cy) ** 2 + (xx - cx) ** 2 < (size * rng.uniform(0.15, 0.3)) ** 2
    img = np.empty((size, size, 3), dtype=np.uint8)
    img[:] = (230, 190, 200)
    img[disc] = (90, 40, 130)
    noise = rng.integers(-12, 13, size=img.shape)
    return np.clip(img.astype(np.int16) + noise, 0, 255).astype(np.uint8)


def write_image(path: Path, seed: int = 0, size: int = 24, rgb: np.ndarray | None = None) -> Path:
    """Write a tiny image; the format follows the suffix (.jpg, .png, .bmp, .tiff)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = tiny_rgb(seed, size) if rgb is None else rgb
    fmt = {
        ".jpg": "JPEG",
        ".jpeg": "JPEG",
        ".png": "PNG",
        ".bmp": "BMP",
        ".tif": "TIFF",
        ".tiff": "TIFF",
    }
    kwargs = {"quality": 95} if path.suffix.lower() in (".jpg", ".jpeg") else {}
    Image.fromarray(pixels).save(path, fmt[path.suffix.lower()], **kwargs)
    return path


@pytest.fixture
def image_writer() -> WriteImage:
    """``image_writer(path, seed=0, size=24)`` writes a distinct tiny image at ``path``."""
    return write_image


@pytest.fixture
def pbc_factory() -> Callable[..., Path]:
    """``pbc_factory(root, {"BA": 3, ...}, size=24)`` writes a PBC layout, returns its folder."""
    return make_pbc_tree


def make_pbc_tree(root: Path, per_prefix: dict[str, int], size: int = 24) -> Path:
    """``root/PBC_dataset_normal_DIB/<folder>/<PREFIX>_<id>.jpg`` with distinct images."""
    folders = {
        "BA": "basophil",
        "EO": "eosinophil",
        "ERB": "erythroblast",
        "MMY": "ig",
        "MY": "ig",
        "PMY": "ig",
        "IG": "ig",
        "LY": "lymphocyte",
        "MO": "monocyte",
        "SNE": "neutrophil",
        "BNE": "neutrophil",
        "NEUTROPHIL": "neutrophil",
        "PLATELET": "platelet",
    }
    base = root / "PBC_dataset_normal_DIB"
    seed = 0
    for prefix, count in per_prefix.items():
        for _ in range(count):
            seed += 1
            write_image(base / folders[prefix] / f"{prefix}_{1000 + seed}.jpg", seed, size)
    return base


@pytest.fixture
def pbc_tree(tmp_path: Path) -> Path:
    """A tiny PBC layout: 10 images per prefix for 4 prefixes (distinct pixels)."""
    make_pbc_tree(tmp_path / "pbc", {"BA": 10, "EO": 10, "SNE": 10, "BNE": 10})
    return tmp_path / "pbc"


@pytest.fixture(scope="session")
def synth_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two synthetic labs, 11 classes x 24 images at 40 px (rendered once per session)."""
    from leukoshift.data.synth import render_labs

    out = tmp_path_factory.mktemp("synth")
    return render_labs(out, labs=2, per_class=24, size=40, seed=0, progress=False)


@pytest.fixture(scope="session")
def tiny_run(synth_manifest: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-epoch fine-tuning run folder (best.ckpt, backbone.safetensors, metrics.json)."""
    from leukoshift.config import FinetuneConfig, load_config
    from leukoshift.finetune.train import run_finetune

    out = tmp_path_factory.mktemp("tiny_run") / "run"
    cfg = load_config(
        FinetuneConfig,
        None,
        [
            f"data.manifests=[{synth_manifest}]",
            f"out={out}",
            "model.backbone=regnetx_002",
            "data.image.size=32",
            "data.batch_size=32",
            "data.num_workers=0",
            "trainer.max_epochs=1",
            "trainer.progress=false",
        ],
    )
    return run_finetune(cfg, progress=False)
