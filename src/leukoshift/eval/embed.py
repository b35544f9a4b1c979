"""Features for every row of an image table: a model's embeddings or downsampled pixels.

Embedding is the costly step of every diagnostic (kNN, lab mixing, UMAP), so results are
cached on disk under a key built from what they depend on: the checkpoint's bytes and
the table's rows (which cache arrays, which positions: that already encodes the
manifests' images and the image preprocessing).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from leukoshift.data.loaders import ImageTable, make_loader
from leukoshift.errors import UserError
from leukoshift.progress import progress_iter

Encoder = Callable[[Tensor], Tensor]


class EmbeddingError(UserError):
    """An encoder output or cached embedding that does not fit the table."""


@contextlib.contextmanager
def _eval_mode(encoder: Encoder | torch.nn.Module) -> Iterator[None]:
    """Put a module in eval mode for the duration and restore its mode afterwards."""
    if not isinstance(encoder, torch.nn.Module):
        yield
        return
    was_training = encoder.training
    encoder.eval()
    try:
        yield
    finally:
        encoder.train(was_training)


def embed_table(
    encoder: Encoder | torch.nn.Module,
    table: ImageTable,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    progress: bool = True,
    num_workers: int = 0,
) -> np.ndarray:
    """``encoder`` applied to every row of ``table``, in row order: (N, D) float32.

    Batches come from :func:`~leukoshift.data.loaders.make_loader` as uint8 and are turned
    into float in [0, 1] on ``device``; the encoder does its own normalisation (mean/std)
    and must already live on ``device``. A module is put in eval mode for the call and
    its mode restored afterwards. Runs under ``torch.inference_mode`` and, on CUDA, bf16
    autocast; the output is returned as float32.
    """
    dev = torch.device(device)
    n = len(table)
    if n == 0:
        raise EmbeddingError("the table to embed has no rows")
    loader = make_loader(table, batch_size, shuffle=False, num_workers=num_workers)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else contextlib.nullcontext()
    out: np.ndarray | None = None
    batches = progress_iter(loader, total=len(loader), label="embedding", enabled=progress)
    with _eval_mode(encoder), torch.inference_mode(), autocast:
        for batch in batches:
            x = batch["image"].to(dev, non_blocking=True).float().div_(255.0)
            feats = encoder(x)
            if not isinstance(feats, Tensor) or feats.ndim != 2 or feats.shape[0] != len(x):
                shape = tuple(feats.shape) if isinstance(feats, Tensor) else type(feats).__name__
                raise EmbeddingError(
                    f"the encoder must return a (batch, dim) tensor, got {shape} for a batch of {len(x)}"
                )
            if out is None:
                out = np.empty((n, feats.shape[1]), dtype=np.float32)
            out[batch["index"].numpy()] = feats.float().cpu().numpy()
    assert out is not None  # n > 0, so the loader yielded at least one batch
    return out


def pixel_features(table: ImageTable, side: int = 16, batch_size: int = 1024) -> np.ndarray:
    """Downsampled raw pixels, standardised per feature: (N, 3 * side * side) float32.

    The exploratory view of a data set without any model (the published project's UMAP of
    pixels, explained mostly by the source lab) and the input of the logistic-regression
    baseline. Area interpolation averages each block, so small shifts matter less.
    """
    if side < 1:
        raise EmbeddingError(f"pixel side must be positive, got {side}")
    n = len(table)
    if n == 0:
        raise EmbeddingError("the table has no rows")
    out = np.empty((n, 3 * side * side), dtype=np.float32)
    for start in range(0, n, batch_size):
        pos = np.arange(start, min(n, start + batch_size))
        x = torch.from_numpy(table.images(pos)).float().div_(255.0)
        small = F.interpolate(x, size=(side, side), mode="area")
        out[pos] = small.reshape(len(pos), -1).numpy()
    mean = out.mean(axis=0, keepdims=True)
    std = out.std(axis=0, keepdims=True)
    # constant pixels (e.g. a blank border in every image) would divide by zero
    out -= mean
    out /= np.maximum(std, 1e-6)
    return out


def file_digest(path: Path | str, chunk: int = 1 << 20) -> str:
    """sha1 of a file's bytes (e.g. a checkpoint), read in chunks."""
    h = hashlib.sha1()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def table_digest(table: ImageTable) -> str:
    """Identity of a table's rows: which cache array and position each row reads.

    A cache array's name already hashes its manifest's images and the image settings
    (:func:`~leukoshift.data.cache.cache_key`), so this changes whenever the pixels,
    the preprocessing or the row selection change, and not when labels do.
    """
    h = hashlib.sha1()
    h.update(json.dumps([Path(a).name for a in table.arrays]).encode())
    h.update(np.ascontiguousarray(table.part, dtype=np.int64).tobytes())
    h.update(np.ascontiguousarray(table.local, dtype=np.int64).tobytes())
    return h.hexdigest()


def embedding_key(table: ImageTable, checkpoint: Path | str | None = None, **extra: Any) -> dict[str, Any]:
    """Key parts for :func:`cached_embeddings`: checkpoint hash (or ``"pixels"``), rows,
    image size, plus anything else the features depend on (``side=16``, ``layer=...``)."""
    return {
        "checkpoint": file_digest(checkpoint) if checkpoint is not None else "pixels",
        "table": table_digest(table),
        "n": len(table),
        "size": table.size,
        **extra,
    }


def cached_embeddings(
    key_parts: dict[str, Any],
    compute: Callable[[], np.ndarray],
    cache_dir: Path | str,
) -> np.ndarray:
    """Embeddings from ``cache_dir`` when ``key_parts`` match a saved run, else ``compute()``.

    The file is ``emb-<sha1 of key_parts>.npy`` with the key beside it as JSON (so a
    person can tell what a file holds); writes go through a temporary file and a rename,
    so an interrupted run never leaves a truncated cache behind.
    """
    blob = json.dumps(key_parts, sort_keys=True, default=str)
    name = "emb-" + hashlib.sha1(blob.encode()).hexdigest()[:20]
    folder = Path(cache_dir)
    path = folder / f"{name}.npy"
    if path.is_file():
        try:
            cached = np.load(path)
        except (OSError, ValueError):
            cached = None  # unreadable leftovers are recomputed, not trusted
        if cached is not None and ("n" not in key_parts or len(cached) == key_parts["n"]):
            return cached
    feats = np.ascontiguousarray(compute(), dtype=np.float32)
    if feats.ndim != 2:
        raise EmbeddingError(f"computed embeddings must be (N, D), got shape {feats.shape}")
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{name}.{os.getpid()}.tmp.npy"
    np.save(tmp, feats)
    os.replace(tmp, path)
    (folder / f"{name}.json").write_text(json.dumps(key_parts, indent=2, sort_keys=True, default=str))
    return feats
