"""Pictures of what a manifest holds."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd


def plot_class_counts(table: pd.DataFrame, out: Path) -> Path:
    """Grouped bar chart: one group per class code, one bar per source.

    Sources differ in size by orders of magnitude (17,092 PBC images, 3 BCCD basophils),
    so the count axis turns logarithmic when a linear one would hide the small ones.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    n_classes, n_sources = len(table), max(1, len(table.columns))
    width = min(16.0, max(6.0, 0.45 * n_classes * (1 + 0.3 * n_sources)))
    fig, ax = plt.subplots(figsize=(width, 4.0))
    table.plot.bar(ax=ax, width=0.8, rot=0)
    counts = table.to_numpy()
    positive = counts[counts > 0]
    if positive.size and positive.max() / positive.min() > 50:
        ax.set_yscale("log")
        ax.set_ylim(bottom=0.8)
    ax.set_xlabel("class")
    ax.set_ylabel("images" + (" (log scale)" if ax.get_yscale() == "log" else ""))
    ax.set_title(f"images per class and source ({int(np.sum(counts))} in all)")
    ax.legend(title="source", fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
