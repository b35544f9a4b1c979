"""Figures for evaluation runs and reports: scatter maps, confusion, F1 heatmaps, bars.

Static figures are drawn with matplotlib's object-oriented API on the Agg canvas (no
pyplot state, no display needed, safe in worker processes). The interactive map is a
self-contained HTML page: plotly.js inlined, the cell thumbnails inlined as base64 PNGs
and shown beside the pointer on hover, so it opens offline and can be mailed around.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from PIL import Image

from leukoshift.errors import UserError

#: Categorical colours: tab10, then tab20's light halves, then a grey for the rest.
_PALETTE: list[str] = [
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
    "#aec7e8",
    "#ffbb78",
    "#98df8a",
    "#ff9896",
    "#c5b0d5",
    "#c49c94",
    "#f7b6d2",
    "#dbdb8d",
    "#9edae5",
]


class PlotError(UserError):
    """Data that cannot be drawn as asked."""


def category_colours(values: Iterable[Any]) -> dict[str, str]:
    """A stable colour per distinct value, in order of first appearance after sorting."""
    cats = sorted({str(v) for v in values})
    return {c: _PALETTE[i] if i < len(_PALETTE) else "#bbbbbb" for i, c in enumerate(cats)}


def _save(fig: Figure, out: Path | str, dpi: int = 150) -> Path:
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return path


def _check_xy(xy: np.ndarray, n: int | None = None) -> np.ndarray:
    pts = np.asarray(xy, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise PlotError(f"points must be (N, 2), got shape {pts.shape}")
    if n is not None and len(pts) != n:
        raise PlotError(f"{len(pts)} points but {n} colour values")
    return pts


def scatter_png(
    xy: np.ndarray,
    color_by: Sequence[str],
    title: str,
    out: Path | str,
    point_size: float | None = None,
) -> Path:
    """2-D map coloured by a categorical value (source, class), legend with counts."""
    values = np.asarray([str(v) for v in color_by], dtype=object)
    pts = _check_xy(xy, len(values))
    colours = category_colours(values)
    size = point_size if point_size is not None else float(np.clip(3000 / max(len(pts), 1), 1, 30))
    fig = Figure(figsize=(7.5, 6))
    ax = fig.add_subplot()
    # draw the big categories first so small ones stay visible on top
    cats = sorted(colours, key=lambda c: -int((values == c).sum()))
    for cat in cats:
        m = values == cat
        ax.scatter(
            pts[m, 0],
            pts[m, 1],
            s=size,
            c=colours[cat],
            label=f"{cat} ({int(m.sum())})",
            alpha=0.8,
            linewidths=0,
            rasterized=True,
        )
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    handles, labels = ax.get_legend_handles_labels()
    order = np.argsort([c for c in cats])
    ax.legend(
        [handles[i] for i in order],
        [labels[i] for i in order],
        loc="center left",
        bbox_to_anchor=(1.0, 0.5),
        frameon=False,
        markerscale=max(1.0, 30 / size) ** 0.5,
    )
    return _save(fig, out)


def thumbnails(images: np.ndarray, side: int = 48) -> list[str]:
    """Base64 PNG thumbnails of (N, 3, S, S) uint8 images (the cache layout), ``side`` px."""
    arr = np.asarray(images)
    if arr.ndim != 4 or arr.shape[1] != 3 or arr.dtype != np.uint8:
        raise PlotError(f"thumbnails need (N, 3, S, S) uint8 images, got {arr.shape} {arr.dtype}")
    out = []
    for img in arr:
        pil = Image.fromarray(np.ascontiguousarray(img.transpose(1, 2, 0)))
        pil = pil.resize((side, side), Image.Resampling.BILINEAR)
        buf = io.BytesIO()
        pil.save(buf, format="PNG", optimize=True)
        out.append(base64.b64encode(buf.getvalue()).decode("ascii"))
    return out


_HOVER_JS = """
(function () {
  var plot = document.getElementById('{plot_id}');
  var thumbs = %THUMBS%;
  var box = document.createElement('div');
  box.style.cssText = 'position:fixed;display:none;pointer-events:none;z-index:1000;' +
    'background:#fff;border:1px solid #888;padding:4px;font:12px sans-serif;' +
    'box-shadow:0 2px 6px rgba(0,0,0,.3)';
  var img = document.createElement('img');
  img.style.cssText = 'width:96px;height:96px;image-rendering:pixelated;display:block';
  var text = document.createElement('div');
  box.appendChild(img); box.appendChild(text); document.body.appendChild(box);
  var mouse = {x: 0, y: 0};
  plot.addEventListener('mousemove', function (e) {
    mouse.x = e.clientX; mouse.y = e.clientY;
    box.style.left = (mouse.x + 16) + 'px'; box.style.top = (mouse.y + 16) + 'px';
  });
  plot.on('plotly_hover', function (d) {
    var p = d.points[0], i = p.customdata[0];
    if (thumbs && thumbs[i]) { img.src = 'data:image/png;base64,' + thumbs[i];
      img.style.display = 'block'; } else { img.style.display = 'none'; }
    text.textContent = p.customdata[1];
    box.style.left = (mouse.x + 16) + 'px'; box.style.top = (mouse.y + 16) + 'px';
    box.style.display = 'block';
  });
  plot.on('plotly_unhover', function () { box.style.display = 'none'; });
})();
"""


def interactive_scatter_html(
    xy: np.ndarray,
    frame: pd.DataFrame,
    color_by: str | Sequence[str],
    out: Path | str,
    thumbnails: list[str] | None = None,
    title: str = "",
    hover_columns: Sequence[str] = ("source", "label", "path"),
    max_points: int = 5000,
    seed: int = 0,
) -> Path:
    """Self-contained interactive map: hover a point to see the cell and its source/class.

    ``frame`` has one row per point (columns such as ``path``, ``source``, ``label``);
    ``color_by`` names one or more of its columns, the first shown and buttons switching
    between them. ``thumbnails`` are base64 PNGs, one per row (:func:`thumbnails`). Above
    ``max_points`` a random subset is drawn and the title says so, which keeps the page a
    few MB. plotly.js is inlined (no network needed to open the page).
    """
    import plotly.graph_objects as go

    pts = _check_xy(xy, len(frame))
    columns = [color_by] if isinstance(color_by, str) else list(color_by)
    missing = [c for c in columns if c not in frame.columns]
    if not columns or missing:
        raise PlotError(f"colour column(s) {missing or columns} not in {list(frame.columns)}")
    if thumbnails is not None and len(thumbnails) != len(frame):
        raise PlotError(f"{len(thumbnails)} thumbnails for {len(frame)} points")
    rows = np.arange(len(frame))
    note = ""
    if len(rows) > max_points:
        rows = np.sort(np.random.default_rng(seed).choice(rows, size=max_points, replace=False))
        note = f" ({max_points:,} of {len(frame):,} points shown)"
    hover_cols = [c for c in hover_columns if c in frame.columns]
    text = [" | ".join(f"{c}: {frame[c].iloc[i]}" for c in hover_cols) for i in rows]
    fig = go.Figure()
    visibility: list[list[bool]] = []
    for j, column in enumerate(columns):
        values = frame[column].astype(str).to_numpy()[rows]
        colours = category_colours(values)
        start = len(fig.data)
        for cat, colour in colours.items():
            m = values == cat
            fig.add_trace(
                go.Scattergl(
                    x=pts[rows[m], 0],
                    y=pts[rows[m], 1],
                    mode="markers",
                    name=f"{cat} ({int(m.sum())})",
                    legendgroup=column,
                    marker={"color": colour, "size": 5, "opacity": 0.8},
                    # local position into the thumbnail list, then the hover text
                    customdata=[[int(r), t] for r, t in zip(rows[m], np.asarray(text)[m], strict=True)],
                    hovertemplate="%{customdata[1]}<extra></extra>",
                    visible=j == 0,
                )
            )
        visibility.append([start <= t < len(fig.data) for t in range(len(fig.data))])
    total = len(fig.data)
    buttons = [
        {
            "label": f"colour by {column}",
            "method": "update",
            "args": [{"visible": vis + [False] * (total - len(vis))}],
        }
        for column, vis in zip(columns, visibility, strict=True)
    ]
    fig.update_layout(
        title=(title or "feature map") + note,
        template="plotly_white",
        xaxis={"visible": False},
        yaxis={"visible": False, "scaleanchor": "x"},
        height=650,
        legend={"itemsizing": "constant"},
        updatemenus=[
            {
                "buttons": buttons,
                "type": "buttons",
                "direction": "right",
                "x": 0,
                "y": 1.08,
                "xanchor": "left",
            }
        ]
        if len(columns) > 1
        else [],
    )
    thumbs_js = json.dumps(thumbnails) if thumbnails is not None else "null"
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.write_html(
        path,
        include_plotlyjs=True,  # inline: the page must open without network
        full_html=True,
        post_script=_HOVER_JS.replace("%THUMBS%", thumbs_js),
        config={"displaylogo": False, "responsive": True},
    )
    return path


def confusion_png(confusion: pd.DataFrame, out: Path | str, title: str = "", normalise: bool = True) -> Path:
    """Confusion matrix (truth rows x predicted columns): colour = row share, text = count.

    Row-normalised colour shows recall per class regardless of class size; the counts
    stay readable in the cells.
    """
    counts = confusion.to_numpy(dtype=np.float64)
    if counts.ndim != 2 or counts.size == 0:
        raise PlotError("the confusion matrix is empty")
    totals = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    shown = shares if normalise else counts
    n_rows, n_cols = counts.shape
    fig = Figure(figsize=(1.2 + 0.55 * n_cols, 1.0 + 0.5 * n_rows))
    ax = fig.add_subplot()
    im = ax.imshow(shown, cmap="Blues", vmin=0, vmax=1 if normalise else None, aspect="auto")
    for i in range(n_rows):
        for j in range(n_cols):
            if counts[i, j]:
                dark = shown[i, j] > (0.55 if normalise else 0.55 * shown.max())
                ax.text(
                    j,
                    i,
                    f"{int(counts[i, j])}",
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if dark else "black",
                )
    ax.set_xticks(range(n_cols), [str(c) for c in confusion.columns], rotation=45, ha="right")
    ax.set_yticks(range(n_rows), [str(c) for c in confusion.index])
    ax.set_xlabel("predicted")
    ax.set_ylabel("truth")
    if title:
        ax.set_title(title)
    fig.colorbar(
        im,
        ax=ax,
        fraction=0.046,
        pad=0.04,
        label="share of the true class" if normalise else "count",
    )
    return _save(fig, out)


def per_class_f1_heatmap(df: pd.DataFrame, out: Path | str, title: str = "per-class F1") -> Path:
    """Heatmap of F1 in [0, 1]: rows (methods, folds) x columns (classes); NaN left blank."""
    values = df.to_numpy(dtype=np.float64)
    if values.ndim != 2 or values.size == 0:
        raise PlotError("the F1 table is empty")
    n_rows, n_cols = values.shape
    fig = Figure(figsize=(2.0 + 0.6 * n_cols, 1.0 + 0.45 * n_rows))
    ax = fig.add_subplot()
    im = ax.imshow(np.ma.masked_invalid(values), cmap="viridis", vmin=0, vmax=1, aspect="auto")
    for i in range(n_rows):
        for j in range(n_cols):
            if np.isfinite(values[i, j]):
                ax.text(
                    j,
                    i,
                    f"{values[i, j]:.2f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="black" if values[i, j] > 0.6 else "white",
                )
    ax.set_xticks(range(n_cols), [str(c) for c in df.columns], rotation=45, ha="right")
    ax.set_yticks(range(n_rows), [str(c) for c in df.index])
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="F1")
    return _save(fig, out)


def bars_in_vs_out(
    df: pd.DataFrame,
    out: Path | str,
    metric: str = "macro-F1",
    title: str = "in-domain vs held-out",
) -> Path:
    """Grouped bars per method: in-domain and held-out scores, error bars where given.

    ``df`` has one row per method (index or a ``method`` column) and columns
    ``in_domain`` and ``held_out``, optionally ``in_domain_std`` / ``held_out_std``. The
    gap between the two bars is the cost of meeting a new lab.
    """
    table = df.set_index("method") if "method" in df.columns else df
    missing = [c for c in ("in_domain", "held_out") if c not in table.columns]
    if missing:
        raise PlotError(f"bars need column(s) {', '.join(missing)}; got {list(table.columns)}")
    methods = [str(m) for m in table.index]
    x = np.arange(len(methods))
    width = 0.38
    fig = Figure(figsize=(max(4.5, 1.1 * len(methods) + 2), 4))
    ax = fig.add_subplot()
    for offset, column, colour, label in (
        (-width / 2, "in_domain", to_hex("#4c72b0"), "in-domain"),
        (width / 2, "held_out", to_hex("#dd8452"), "held-out lab"),
    ):
        values = table[column].to_numpy(dtype=np.float64)
        std_col = f"{column}_std"
        err = table[std_col].to_numpy(dtype=np.float64) if std_col in table.columns else None
        bars = ax.bar(x + offset, values, width, yerr=err, color=colour, label=label, capsize=3)
        ax.bar_label(
            bars,
            labels=[f"{v:.2f}" if np.isfinite(v) else "" for v in values],
            fontsize=7,
            padding=2,
        )
    ax.set_xticks(x, methods, rotation=20, ha="right")
    ax.set_ylim(0, 1.08)
    ax.set_ylabel(metric)
    ax.set_title(title)
    ax.legend(frameon=False, loc="upper right")
    ax.spines[["top", "right"]].set_visible(False)
    return _save(fig, out)
