"""Report rendering (Markdown + self-contained HTML) and the figures it embeds."""

from __future__ import annotations

import base64
import io
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from leukoshift.errors import UserError
from leukoshift.eval.plots import (
    bars_in_vs_out,
    confusion_png,
    interactive_scatter_html,
    per_class_f1_heatmap,
    scatter_png,
    thumbnails,
)
from leukoshift.eval.report import Report, software_versions


class _Resources(HTMLParser):
    """Collects what a browser would fetch: src/srcset/data attributes, <link href>,
    url() and @import in CSS, recursing into <iframe srcdoc> pages. Script bodies are
    not markup (plotly.js holds link strings such as its logo's), so they are skipped."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._in_style = tag == "style"
        for name, value in attrs:
            value = value or ""
            if name in ("src", "srcset", "data") or (tag == "link" and name == "href"):
                self.found.append(value)
            elif name == "style":
                self.handle_data_css(value)
            elif name == "srcdoc":
                inner = _Resources()
                inner.feed(value)  # the parser has already unescaped the attribute
                self.found.extend(inner.found)

    def handle_endtag(self, tag: str) -> None:
        if tag == "style":
            self._in_style = False

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self.handle_data_css(data)

    def handle_data_css(self, css: str) -> None:
        self.found.extend(re.findall(r"url\(\s*['\"]?([^'\")]*)", css))
        self.found.extend(re.findall(r"@import\s+[^;]*", css))


def external_resources(page: str) -> list[str]:
    parser = _Resources()
    parser.feed(page)
    return [r for r in parser.found if re.match(r"\s*(https?:)?//|@import", r, re.IGNORECASE)]


def test_resource_checker_sees_external_urls() -> None:
    page = (
        '<img src="https://x.org/a.png"><link rel="stylesheet" href="//cdn/x.css">'
        "<style>body { background: url('http://x/bg.png') }</style>"
        '<iframe srcdoc="&lt;script src=&quot;https://cdn/x.js&quot;&gt;&lt;/script&gt;">'
        '</iframe><img src="data:image/png;base64,AAAA"><a href="https://ok.org">link</a>'
    )
    assert len(external_resources(page)) == 4


@pytest.fixture
def loso_table() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "method": ["supervised", "dino+ft", "logreg"],
            "macro_f1": [0.61, 0.83, 0.42],
            "accuracy": [0.70, 0.85, 0.85],
            "gap": [0.30, 0.08, 0.20],
        }
    )


def test_report_renders_table_image_and_code(tmp_path: Path, loso_table: pd.DataFrame) -> None:
    rng = np.random.default_rng(0)
    png = scatter_png(rng.normal(size=(30, 2)), ["a", "b", "c"] * 10, "map", tmp_path / "in" / "m.png")
    report = (
        Report("LOSO benchmark")
        .add_heading("Results")
        .add_text("Held-out lab **macro-F1**, mean over seeds.")
        .add_table(
            loso_table,
            highlight_max_per_column=["macro_f1", "accuracy"],
            highlight_min_per_column=["gap"],
            caption="held-out",
        )
        .add_image(png, caption="UMAP by source")
        .add_code("seed: 0\nmethods: [dino+ft]", lang="yaml")
    )
    md_path, html_path = report.write(tmp_path / "out")
    md = md_path.read_text()
    page = html_path.read_text()

    # best per column: bold in Markdown (ties all marked), td.best in HTML
    assert "| dino+ft | **0.830** | **0.850** | **0.080** |" in md
    assert "| logreg | 0.420 | **0.850** | 0.200 |" in md
    assert "| supervised | 0.610 | 0.700 | 0.300 |" in md
    best_cells = re.findall(r'<td class="best">([^<]*)</td>', page)
    assert sorted(best_cells) == ["0.080", "0.830", "0.850", "0.850"]

    # Markdown links the figure relatively (copied beside it); HTML inlines it
    assert "](figures/m.png)" in md and (tmp_path / "out" / "figures" / "m.png").is_file()
    assert "data:image/png;base64," in page and "m.png" not in page
    assert "<strong>macro-F1</strong>" in page
    assert '<code class="language-yaml">seed: 0' in page and "```yaml\nseed: 0" in md
    assert external_resources(page) == []


def test_interactive_map_embeds_thumbnails_offline(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(12, 3, 16, 16), dtype=np.uint8)
    thumbs = thumbnails(images, side=8)
    assert Image.open(io.BytesIO(base64.b64decode(thumbs[0]))).size == (8, 8)
    frame = pd.DataFrame(
        {
            "path": [f"c{i}.png" for i in range(12)],
            "source": ["pbc", "bccd"] * 6,
            "label": ["SNE", "LY", "MO"] * 4,
        }
    )
    out = interactive_scatter_html(
        rng.normal(size=(12, 2)),
        frame,
        ["source", "label"],
        tmp_path / "umap.html",
        thumbnails=thumbs,
        title="UMAP",
    )
    page = out.read_text()
    assert thumbs[5] in page and "plotly_hover" in page
    assert "colour by source" in page and "colour by label" in page
    assert external_resources(page) == []
    _, html_path = Report("diagnose").add_html(out, caption="interactive map").write(tmp_path / "r")
    report_page = html_path.read_text()
    assert "<iframe" in report_page and "srcdoc=" in report_page and thumbs[5] in report_page
    assert external_resources(report_page) == []
    # subsampling above max_points is announced in the title
    small = interactive_scatter_html(rng.normal(size=(12, 2)), frame, "source", tmp_path / "s.html", max_points=5)
    assert "5 of 12 points shown" in small.read_text()


def test_static_figures(tmp_path: Path) -> None:
    confusion = pd.DataFrame([[8, 2, 0], [1, 5, 3]], index=["NE", "LY"], columns=["NE", "LY", "ERB"])
    f1 = pd.DataFrame({"NE": [0.9, np.nan], "LY": [0.5, 0.7]}, index=["supervised", "dino+ft"])
    bars = pd.DataFrame(
        {
            "method": ["supervised", "dino+ft"],
            "in_domain": [0.9, 0.92],
            "held_out": [0.3, 0.6],
            "held_out_std": [0.05, 0.02],
        }
    )
    for path in (
        confusion_png(confusion, tmp_path / "confusion.png"),
        per_class_f1_heatmap(f1, tmp_path / "f1.png"),
        bars_in_vs_out(bars, tmp_path / "bars.png"),
    ):
        with Image.open(path) as img:
            assert img.format == "PNG" and min(img.size) > 100
    with pytest.raises(UserError, match="held_out"):
        bars_in_vs_out(bars.drop(columns="held_out"), tmp_path / "x.png")


def test_report_errors_and_versions(tmp_path: Path, loso_table: pd.DataFrame) -> None:
    with pytest.raises(UserError, match=r"missing\.png"):
        Report("r").add_image(tmp_path / "missing.png")
    with pytest.raises(UserError, match="nope"):
        Report("r").add_table(loso_table, highlight_max_per_column=["nope"])
    versions = software_versions()
    assert versions["python"] and versions["torch"] and versions["faiss"]
    assert versions["device"] is not None
