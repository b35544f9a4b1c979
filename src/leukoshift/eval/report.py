"""Reports people read: one ``report.md`` and one self-contained ``report.html``.

A :class:`Report` is a list of blocks (headings, markdown text, tables, images, HTML
fragments, code) rendered twice: Markdown for the repository (figures copied beside it
and linked relatively) and HTML for a browser (figures inlined as base64, CSS inline,
interactive pages embedded through ``<iframe srcdoc>``), so the HTML file alone carries
the whole result and opens without network.
"""

from __future__ import annotations

import base64
import html
import importlib.metadata
import mimetypes
import platform
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from markdown_it import MarkdownIt

from leukoshift.errors import UserError


class ReportError(UserError):
    """A report block that cannot be rendered (missing file, unknown column)."""


@dataclass
class _Block:
    kind: str
    data: dict[str, Any]


_CSS = """
body { font: 15px/1.5 -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif;
       color: #222; max-width: 1100px; margin: 2em auto; padding: 0 1.5em; }
h1 { border-bottom: 2px solid #ddd; padding-bottom: .3em; }
h2 { border-bottom: 1px solid #eee; padding-bottom: .2em; margin-top: 2em; }
table.data { border-collapse: collapse; margin: 1em 0; font-size: 13px; }
table.data th, table.data td { border: 1px solid #ddd; padding: 4px 9px; text-align: right; }
table.data th { background: #f4f4f4; }
table.data td.text, table.data th.rowname { text-align: left; }
table.data td.best { font-weight: bold; background: #e3f3e3; }
figure { margin: 1.2em 0; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption, .caption { color: #555; font-size: 13px; margin-top: .3em; }
pre { background: #f6f8fa; padding: .8em; overflow-x: auto; font-size: 12.5px; }
code { background: #f6f8fa; padding: 0 .2em; }
iframe.embed { width: 100%; border: 1px solid #eee; }
"""


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool | np.bool_)


def _best_mask(df: pd.DataFrame, columns: Sequence[str] | None, largest: bool) -> np.ndarray:
    """True where a cell holds the best value of its column (all ties marked)."""
    mask = np.zeros(df.shape, dtype=bool)
    for column in columns or ():
        if column not in df.columns:
            raise ReportError(f"cannot mark the best of column {column!r}: not in {list(df.columns)}")
        values = pd.to_numeric(df[column], errors="coerce").to_numpy(dtype=np.float64)
        if not np.isfinite(values).any():
            continue
        best = np.nanmax(values) if largest else np.nanmin(values)
        mask[:, df.columns.get_loc(column)] = np.isclose(values, best, rtol=0, atol=1e-12)
    return mask


def _format(value: Any, float_format: str) -> str:
    if value is None or (isinstance(value, float | np.floating) and np.isnan(value)):
        return "–"
    if _is_number(value) and isinstance(value, float | np.floating):
        return float_format.format(value)
    return str(value)


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


@dataclass
class Report:
    """Ordered report blocks; :meth:`write` renders ``report.md`` and ``report.html``."""

    title: str
    blocks: list[_Block] = field(default_factory=list)

    def add_heading(self, text: str, level: int = 2) -> Report:
        if not 1 <= level <= 6:
            raise ReportError(f"heading level must be 1..6, got {level}")
        self.blocks.append(_Block("heading", {"text": text, "level": level}))
        return self

    def add_text(self, markdown: str) -> Report:
        """A Markdown paragraph (CommonMark plus tables), rendered to HTML as well."""
        self.blocks.append(_Block("text", {"markdown": markdown}))
        return self

    def add_table(
        self,
        df: pd.DataFrame,
        highlight_max_per_column: list[str] | None = None,
        highlight_min_per_column: list[str] | None = None,
        caption: str | None = None,
        float_format: str = "{:.3f}",
        index: bool = False,
    ) -> Report:
        """A table; the best value of each listed column is bold (MD) / ``td.best`` (HTML).

        Use ``highlight_min_per_column`` where lower is better (a gap, an error, a
        lab-mixing ratio). ``index=True`` shows the frame's index as the first column.
        """
        frame = df.reset_index() if index else df.reset_index(drop=True)
        best = _best_mask(frame, highlight_max_per_column, largest=True) | _best_mask(
            frame, highlight_min_per_column, largest=False
        )
        self.blocks.append(
            _Block(
                "table",
                {"frame": frame.copy(), "best": best, "caption": caption, "fmt": float_format},
            )
        )
        return self

    def add_image(self, png_path: Path | str, caption: str = "") -> Report:
        path = Path(png_path)
        if not path.is_file():
            raise ReportError(f"report image {path} does not exist")
        self.blocks.append(_Block("image", {"path": path, "caption": caption}))
        return self

    def add_html(self, fragment_or_file: str | Path, caption: str = "", height: int = 700) -> Report:
        """Embed HTML: a file path (copied beside report.md, linked from it) or a string.

        A whole page (``<html>`` or ``<!DOCTYPE``), e.g. an interactive map, is embedded
        in an ``<iframe srcdoc>`` so its scripts and styles stay inside it; a fragment is
        inserted as it is.
        """
        path: Path | None = None
        if isinstance(fragment_or_file, Path) or (
            "<" not in fragment_or_file and Path(fragment_or_file).suffix in (".html", ".htm")
        ):
            path = Path(fragment_or_file)
            if not path.is_file():
                raise ReportError(f"report HTML file {path} does not exist")
            content = path.read_text(encoding="utf-8")
        else:
            content = str(fragment_or_file)
        self.blocks.append(_Block("html", {"content": content, "path": path, "caption": caption, "height": height}))
        return self

    def add_code(self, text: str, lang: str = "") -> Report:
        """Verbatim text: the resolved config, software versions, the command that ran."""
        self.blocks.append(_Block("code", {"text": text, "lang": lang}))
        return self

    # ---------------------------------------------------------------------------------

    def write(self, out_dir: Path | str) -> tuple[Path, Path]:
        """Write ``report.md`` (with figures copied under ``figures/``) and ``report.html``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        md_path = out / "report.md"
        html_path = out / "report.html"
        md_path.write_text(self._markdown(out), encoding="utf-8")
        html_path.write_text(self._html(), encoding="utf-8")
        return md_path, html_path

    def _relative_copy(self, path: Path, out: Path) -> str:
        """A path to ``path`` relative to ``out``, copying it under figures/ if outside."""
        resolved = path.resolve()
        try:
            return resolved.relative_to(out.resolve()).as_posix()
        except ValueError:
            target = out / "figures" / path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.resolve() != resolved:
                shutil.copyfile(path, target)
            return target.relative_to(out).as_posix()

    def _markdown(self, out: Path) -> str:
        parts = [f"# {self.title}"]
        for block in self.blocks:
            d = block.data
            if block.kind == "heading":
                parts.append("#" * d["level"] + " " + d["text"])
            elif block.kind == "text":
                parts.append(d["markdown"].strip())
            elif block.kind == "table":
                parts.append(_table_md(d["frame"], d["best"], d["fmt"], d["caption"]))
            elif block.kind == "image":
                rel = self._relative_copy(d["path"], out)
                line = f"![{d['caption']}]({rel})"
                parts.append(line + (f"\n\n*{d['caption']}*" if d["caption"] else ""))
            elif block.kind == "html":
                if d["path"] is not None:
                    rel = self._relative_copy(d["path"], out)
                    parts.append(f"[{d['caption'] or d['path'].name}]({rel}) (open in a browser)")
                else:
                    parts.append(d["content"])
            elif block.kind == "code":
                fence = "````" if "```" in d["text"] else "```"
                parts.append(f"{fence}{d['lang']}\n{d['text'].rstrip()}\n{fence}")
        return "\n\n".join(parts) + "\n"

    def _html(self) -> str:
        md = MarkdownIt("commonmark", {"html": True}).enable("table")
        body = [f"<h1>{html.escape(self.title)}</h1>"]
        for block in self.blocks:
            d = block.data
            if block.kind == "heading":
                body.append(f"<h{d['level']}>{html.escape(d['text'])}</h{d['level']}>")
            elif block.kind == "text":
                body.append(md.render(d["markdown"]))
            elif block.kind == "table":
                body.append(_table_html(d["frame"], d["best"], d["fmt"], d["caption"]))
            elif block.kind == "image":
                body.append(_image_html(d["path"], d["caption"]))
            elif block.kind == "html":
                body.append(_embed_html(d["content"], d["caption"], d["height"]))
            elif block.kind == "code":
                cls = f' class="language-{html.escape(d["lang"])}"' if d["lang"] else ""
                body.append(f"<pre><code{cls}>{html.escape(d['text'].rstrip())}</code></pre>")
        return (
            '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f"<title>{html.escape(self.title)}</title>\n<style>{_CSS}</style>\n</head>\n"
            "<body>\n" + "\n".join(body) + "\n</body>\n</html>\n"
        )


def _table_md(frame: pd.DataFrame, best: np.ndarray, fmt: str, caption: str | None) -> str:
    header = "| " + " | ".join(_md_cell(str(c)) for c in frame.columns) + " |"
    align = "|" + "|".join("---:" if pd.api.types.is_numeric_dtype(frame[c]) else ":---" for c in frame.columns) + "|"
    rows = []
    for i in range(len(frame)):
        cells = []
        for j in range(frame.shape[1]):
            text = _md_cell(_format(frame.iat[i, j], fmt))
            cells.append(f"**{text}**" if best[i, j] else text)
        rows.append("| " + " | ".join(cells) + " |")
    table = "\n".join([header, align, *rows])
    note = " (best per column in bold)" if best.any() else ""
    return table + (f"\n\n*{caption}*{note}" if caption else "")


def _table_html(frame: pd.DataFrame, best: np.ndarray, fmt: str, caption: str | None) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    rows = []
    for i in range(len(frame)):
        cells = []
        for j in range(frame.shape[1]):
            value = frame.iat[i, j]
            classes = [] if _is_number(value) else ["text"]
            if best[i, j]:
                classes.append("best")
            cls = f' class="{" ".join(classes)}"' if classes else ""
            cells.append(f"<td{cls}>{html.escape(_format(value, fmt))}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    note = " (best per column highlighted)" if best.any() else ""
    cap = f'<caption class="caption">{html.escape(caption)}{note}</caption>' if caption else ""
    return f'<table class="data">{cap}<thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _image_html(path: Path, caption: str) -> str:
    mime = mimetypes.guess_type(path.name)[0] or "image/png"
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="data:{mime};base64,{data}" alt="{html.escape(caption)}">{cap}</figure>'


def _embed_html(content: str, caption: str, height: int) -> str:
    cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
    if re.search(r"<!doctype|<html", content[:2000], flags=re.IGNORECASE):
        doc = html.escape(content, quote=True)
        frame = f'<iframe class="embed" style="height:{height}px" srcdoc="{doc}"></iframe>'
        return f"<figure>{frame}{cap}</figure>"
    return f"<figure>{content}{cap}</figure>"


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def software_versions() -> dict[str, str | None]:
    """Versions a result depends on, and the accelerator it ran on (``None``: absent).

    Read from package metadata where possible, so heavy packages (umap, numba) are not
    imported just to be named.
    """
    import torch

    versions: dict[str, str | None] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "leukoshift": _version("leukoshift"),
        "torch": torch.__version__,
        "torchvision": _version("torchvision"),
        "timm": _version("timm"),
        "lightly": _version("lightly"),
        "kornia": _version("kornia"),
        "pytorch-lightning": _version("pytorch-lightning") or _version("lightning"),
        "faiss": _version("faiss-cpu") or _version("faiss-gpu") or _version("faiss"),
        "umap-learn": _version("umap-learn"),
        "scikit-learn": _version("scikit-learn"),
        "numpy": _version("numpy"),
        "pandas": _version("pandas"),
        "cuda": torch.version.cuda,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
    }
    return versions
