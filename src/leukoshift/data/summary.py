"""Pictures of what a manifest holds."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402


def plot_class_counts(table: pd.DataFrame, out: Path) -> Path:
    """Grouped bar chart: one group per class code, one bar per source."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.7 * len(table) * max(1, len(table.columns)) ** 0.5), 4.0))
    table.plot.bar(ax=ax, width=0.8)
    ax.set_xlabel("class")
    ax.set_ylabel("images")
    ax.set_title("images per class and source")
    ax.legend(title="source", fontsize="small")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
