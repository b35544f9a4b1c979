"""What the app shows, computed without Streamlit: uploads, predictions, neighbours, data, LOSO.

The Streamlit script (:mod:`leukoshift.app.main`) only lays these out and caches them.
Everything a user can get wrong (a file that is not an image, an image too large, a
results folder without results) comes back as a message, never as an exception.
"""

from __future__ import annotations

import io
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from leukoshift.data.images import load_rgb
from leukoshift.data.loaders import ImageTable, load_table
from leukoshift.errors import UserError
from leukoshift.eval.explain import Explainer, Explanation
from leukoshift.taxonomy import FINE_CLASSES, FINE_NAMES, LABEL_CODES, group_of

#: Uploads larger than this (decoded pixels) are refused: a whole slide scan is not a cell.
MAX_PIXELS = 50_000_000
MAX_BYTES = 64 * 2**20
MIN_SIDE = 8

_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
_DEEP_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}


# ----------------------------------------------------------------------------- uploads


@dataclass
class Upload:
    """A decoded upload (``rgb``) with notes on how it was read, or why it was refused."""

    name: str
    rgb: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)
    error: str | None = None


def read_upload(name: str, data: bytes) -> Upload:
    """Decode any image a lab may upload to (H, W, 3) uint8, or say why it cannot be used."""
    if not data:
        return Upload(name, error=f"{name}: the file is empty")
    if len(data) > MAX_BYTES:
        return Upload(
            name,
            error=f"{name}: {len(data) / 2**20:.0f} MB is more than the app accepts ({MAX_BYTES // 2**20} MB)",
        )
    notes: list[str] = []
    mode = None
    try:
        with Image.open(io.BytesIO(data)) as im:  # reads the header only
            width, height, mode = im.width, im.height, im.mode
            transparent = mode == "P" and "transparency" in im.info
            # Pillow reads 16-bit RGB TIFFs as 8-bit RGB; only the header says what they were
            bits = getattr(im, "tag_v2", {}).get(258, (8,))
            deep = max(bits if isinstance(bits, tuple) else (bits,)) > 8
    except UnidentifiedImageError:
        width = height = 0  # maybe a TIFF only tifffile reads; load_rgb decides
        transparent = deep = False
    except Exception as exc:  # PIL raises many types for damaged headers
        return Upload(name, error=f"{name}: not a readable image ({exc})")
    if width * height > MAX_PIXELS:
        return Upload(
            name,
            error=f"{name}: {width} x {height} px ({width * height / 1e6:.0f} megapixels) "
            "is larger than the app "
            f"accepts ({MAX_PIXELS / 1e6:.0f}); crop the region around the cell first",
        )
    buffer = io.BytesIO(data)
    buffer.name = name  # load_rgb names the file in messages and picks the TIFF reader by suffix
    try:
        rgb = load_rgb(buffer)
    except UserError as exc:
        return Upload(name, error=str(exc))
    except Exception as exc:  # a decoder bug must not reach the user as a stack trace
        return Upload(name, error=f"{name}: could not be decoded ({type(exc).__name__}: {exc})")
    if rgb.shape[0] * rgb.shape[1] > MAX_PIXELS:
        return Upload(name, error=f"{name}: {rgb.shape[1]} x {rgb.shape[0]} px is larger than the app accepts")
    if min(rgb.shape[:2]) < MIN_SIDE:
        return Upload(name, error=f"{name}: {rgb.shape[1]} x {rgb.shape[0]} px is too small to hold a cell")
    if mode is None:
        notes.append("read as a multi-channel TIFF; values scaled to 8 bit by their range")
    elif mode in _DEEP_MODES:
        notes.append(f"{'32' if mode in ('I', 'F') else '16'}-bit image scaled to 8 bit")
    elif deep:
        notes.append("16-bit image scaled to 8 bit")
    if mode in _ALPHA_MODES or transparent:
        notes.append("transparency composited on white")
    if mode in _GRAY_MODES or (mode in (None, "RGB") and _is_gray(rgb)):
        notes.append(
            "grayscale image: the model learned from stained colour smears, so colour cues are "
            "missing and the prediction is less reliable"
        )
    return Upload(name, rgb=rgb, notes=notes)


def _is_gray(rgb: np.ndarray) -> bool:
    return bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())


def probability_frame(probs: np.ndarray) -> pd.DataFrame:
    """The 11 classes with names and probabilities, most probable first."""
    frame = pd.DataFrame(
        {
            "class": list(FINE_CLASSES),
            "name": [FINE_NAMES[c] for c in FINE_CLASSES],
            "probability": np.asarray(probs, dtype=float),
        }
    )
    return frame.sort_values("probability", ascending=False, kind="stable").reset_index(drop=True)


def probability_figure(probs: np.ndarray) -> Any:
    """Horizontal bars, most probable class on top, the prediction highlighted."""
    import plotly.graph_objects as go

    frame = probability_frame(probs).iloc[::-1]
    top = frame["probability"].max()
    colours = ["#d62728" if p == top else "#1f77b4" for p in frame["probability"]]
    fig = go.Figure(
        go.Bar(
            x=frame["probability"],
            y=[f"{n} ({c})" for c, n in zip(frame["class"], frame["name"], strict=True)],
            orientation="h",
            marker_color=colours,
            text=[f"{p:.1%}" for p in frame["probability"]],
            textposition="outside",
            cliponaxis=False,
        )
    )
    fig.update_layout(
        height=330,
        margin={"l": 10, "r": 40, "t": 30, "b": 10},
        xaxis={"range": [0, 1.12], "tickformat": ".0%", "title": "probability"},
        title="class probabilities",
    )
    return fig


# ----------------------------------------------------------------------------- gallery


@dataclass
class Gallery:
    """The manifests' images embedded by the checkpoint's encoder, searchable with faiss."""

    table: ImageTable
    feats: np.ndarray  # (N, D), every row of the table
    bank: np.ndarray  # table rows in the index: the train split (all rows without one)
    index: Any  # faiss.Index over feats[bank]

    @property
    def frame(self) -> pd.DataFrame:
        return self.table.frame


def build_gallery(
    explainer: Explainer, checkpoint: Path, manifests: Sequence[Path], cache_dir: Path | None = None
) -> Gallery:
    """Embed every row of ``manifests`` (cached on disk per checkpoint and rows) and index
    the training rows. Images are cached at the checkpoint's framing and size."""
    from leukoshift.data.cache import default_cache_dir
    from leukoshift.data.manifest import read_manifest
    from leukoshift.eval.embed import cached_embeddings, embed_table, embedding_key
    from leukoshift.eval.knn import build_index

    table = load_table(list(manifests), explainer.image, progress=False)
    if len(table) == 0:
        raise UserError(f"the manifests {', '.join(map(str, manifests))} hold no readable image")
    folder = cache_dir or default_cache_dir(read_manifest(manifests[0])) / "embeddings"
    feats = cached_embeddings(
        embedding_key(table, checkpoint),
        lambda: embed_table(explainer.model.encoder, table, device=explainer.device, progress=False),
        folder,
    )
    train = np.flatnonzero(table.frame["split"].astype(str).to_numpy() == "train")
    bank = train if len(train) else np.arange(len(table))
    return Gallery(table, feats, bank, build_index(feats[bank]))


def neighbours(gallery: Gallery, query: np.ndarray, k: int, exclude: str | None = None) -> pd.DataFrame:
    """The ``k`` training images most similar to ``query`` (1, D): cosine similarity, class, lab.

    ``exclude`` drops a path (an example picked from the manifests is its own best match).
    """
    from leukoshift.eval.knn import knn_search

    k_search = min(len(gallery.bank), k + (1 if exclude else 0))
    sims, idx = knn_search(gallery.index, np.asarray(query, dtype=np.float32).reshape(1, -1), k_search)
    rows = gallery.bank[idx[0][idx[0] >= 0]]
    frame = gallery.frame.iloc[rows]
    out = pd.DataFrame(
        {
            "row": rows,
            "path": frame["path"].to_numpy(),
            "label": frame["label"].fillna("").astype(str).to_numpy(),
            "source": frame["source"].astype(str).to_numpy(),
            "similarity": sims[0][idx[0] >= 0].astype(float),
        }
    )
    if exclude is not None:
        out = out[out["path"] != exclude]
    out = out.head(k).reset_index(drop=True)
    out["label_name"] = [_label_name(c) for c in out["label"]]
    return out


def _label_name(code: str) -> str:
    if not code:
        return "unlabeled"
    from leukoshift.taxonomy import GROUP_NAMES

    return FINE_NAMES.get(code) or GROUP_NAMES.get(group_of(code), code)


def neighbour_image(gallery: Gallery, explainer: Explainer, row: int) -> np.ndarray:
    """A neighbour framed like the query, at display size; the cached pixels if its file is gone."""
    try:
        return explainer.frame(load_rgb(gallery.frame["path"].iloc[row]), str(gallery.frame["source"].iloc[row]))[1]
    except (UserError, OSError):
        return np.ascontiguousarray(gallery.table.images([row])[0].transpose(1, 2, 0))


def examples(gallery: Gallery, per_group: int = 1) -> pd.DataFrame:
    """A few rows per (source, label) to try the model on: ``choice`` is what a picker shows."""
    frame = gallery.frame.assign(row=np.arange(len(gallery.frame)), label=gallery.frame["label"].fillna("").astype(str))
    picked = frame.groupby(["source", "label"], sort=True).head(per_group)
    choice = [
        f"{s} · {lab or 'unlabeled'} · {Path(p).name}"
        for s, lab, p in zip(picked["source"], picked["label"], picked["path"], strict=True)
    ]
    return picked.assign(choice=choice)[["choice", "path", "source", "label", "row"]].reset_index(drop=True)


@dataclass
class Result:
    """One image through the whole pipeline: explanation plus its nearest training images."""

    explanation: Explanation
    neighbours: pd.DataFrame | None
    notes: list[str]


def analyse(
    explainer: Explainer,
    images: Sequence[tuple[str, np.ndarray]],
    gallery: Gallery | None = None,
    k: int = 8,
    target: str | None = None,
    method: str | None = None,
    exclude: Sequence[str | None] | None = None,
    source: str | None = None,
) -> list[Result]:
    """Predict, explain and find neighbours for named RGB images (of lab ``source``: the
    scale ruler framing uses)."""
    if not images:
        return []
    names = [n for n, _ in images]
    exps = explainer.explain([rgb for _, rgb in images], names, target=target, method=method, source=source)
    feats = explainer.features([e.framed for e in exps]) if gallery is not None else None
    results = []
    for i, exp in enumerate(exps):
        near = None
        if gallery is not None and feats is not None:
            near = neighbours(gallery, feats[i], k, exclude=exclude[i] if exclude else None)
        results.append(Result(exp, near, []))
    return results


# ----------------------------------------------------------------------------- data view


def class_counts(manifests: Sequence[Path]) -> pd.DataFrame:
    """Long table ``label, source, count`` (labels in taxonomy order) of the manifests."""
    from leukoshift.data.manifest import class_table, read_manifests

    table = class_table(read_manifests(list(manifests)))
    long = table.reset_index().melt(id_vars="label", var_name="source", value_name="count")
    return long[long["count"] > 0].reset_index(drop=True)


def class_counts_figure(counts: pd.DataFrame) -> Any:
    import plotly.express as px

    order = [c for c in (*LABEL_CODES, "(unlabeled)") if c in set(counts["label"])]
    fig = px.bar(
        counts,
        x="label",
        y="count",
        color="source",
        barmode="group",
        category_orders={"label": order},
        title="images per class and source",
    )
    fig.update_layout(height=380, margin={"l": 10, "r": 10, "t": 40, "b": 10})
    return fig


def umap_points(gallery: Gallery, max_points: int = 3000, seed: int = 0) -> pd.DataFrame:
    """UMAP of the gallery's features on the faiss kNN graph (as ``diagnose`` draws it).

    Columns ``row, path, source, label, x, y``; above ``max_points`` rows a seeded random
    subset is mapped.
    """
    from leukoshift.eval.knn import knn_graph
    from leukoshift.eval.projection import umap_embed

    n = len(gallery.table)
    if n < 5:
        raise UserError(f"a UMAP needs at least 5 images; the manifests hold {n}")
    rows = np.arange(n)
    if n > max_points:
        rows = np.sort(np.random.default_rng(seed).choice(rows, max_points, replace=False))
    k = min(15, len(rows) - 1)
    feats = gallery.feats[rows]
    xy = umap_embed(feats, k=k, seed=seed, graph=knn_graph(feats, k))
    frame = gallery.frame.iloc[rows]
    return pd.DataFrame(
        {
            "row": rows,
            "path": frame["path"].to_numpy(),
            "source": frame["source"].astype(str).to_numpy(),
            "label": frame["label"].fillna("").astype(str).replace("", "(unlabeled)").to_numpy(),
            "x": xy[:, 0],
            "y": xy[:, 1],
        }
    )


def umap_html(gallery: Gallery, points: pd.DataFrame, colour_by: str = "source") -> str:
    """A self-contained interactive map (:func:`~leukoshift.eval.plots.interactive_scatter_html`):
    hover a point to see the cell."""
    from leukoshift.eval.plots import interactive_scatter_html, thumbnails

    columns = [colour_by, *(c for c in ("source", "label") if c != colour_by)]
    thumbs = thumbnails(gallery.table.images(points["row"].to_numpy()), side=64)
    with tempfile.TemporaryDirectory() as tmp:
        path = interactive_scatter_html(
            points[["x", "y"]].to_numpy(),
            points,
            columns,
            Path(tmp) / "umap.html",
            thumbnails=thumbs,
            title=f"UMAP of {len(points)} images' features",
        )
        return path.read_text()


# ----------------------------------------------------------------------------- LOSO view


@dataclass
class LosoFolder:
    """A ``benchmark loso`` results folder as the app shows it."""

    path: Path
    summary: pd.DataFrame  # results.csv: one row per held-out lab x method
    pivot: pd.DataFrame | None  # methods x held-out labs, mean macro-F1 (+ mean column)
    figures: list[Path]
    report: Path | None


def read_loso_folder(path: Path | str) -> LosoFolder:
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise UserError(f"{folder}: folder not found")
    results = folder / "results.csv"
    if not results.is_file():
        raise UserError(f"{folder}: no results.csv here; pick the folder `leukoshift benchmark loso` wrote")
    try:
        summary = pd.read_csv(results)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise UserError(f"{results}: unreadable ({exc})") from None
    pivot = None
    if {"method", "held_out", "macro_f1_mean"} <= set(summary.columns):
        pivot = summary.pivot_table(index="method", columns="held_out", values="macro_f1_mean", sort=False)
        pivot["mean"] = pivot.mean(axis=1)
    figures = sorted((folder / "figures").glob("*.png")) if (folder / "figures").is_dir() else []
    report = folder / "report.html"
    return LosoFolder(folder, summary, pivot, figures, report if report.is_file() else None)
