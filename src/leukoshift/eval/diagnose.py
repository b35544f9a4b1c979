"""``leukoshift diagnose``: do a model's features group cells by type or by lab?

For every row of the given manifests: embeddings (cached per checkpoint + manifest), or
downsampled raw pixels without a checkpoint (the exploratory view the published project
showed, where the lab explained most of the picture). Then, all on one faiss index:

- kNN classification accuracy, leave-one-out, at the group level (comparable across labs);
- lab mixing: own-source fraction among each image's k neighbours against chance;
- a "which lab is this?" logistic-regression probe (lower = more lab-invariant);
- silhouettes by class and by source;
- UMAP on the faiss kNN graph, as PNGs coloured by source and by class and as one
  self-contained interactive HTML whose points show the cell image on hover.

Everything lands in ``out`` with ``diagnostics.json`` and a ``report.md`` / ``report.html``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from leukoshift.config import ImageConfig
from leukoshift.data.loaders import ImageTable, load_table
from leukoshift.domain.appearance import lab_appearance
from leukoshift.errors import UserError
from leukoshift.eval.embed import cached_embeddings, embed_table, embedding_key, pixel_features
from leukoshift.eval.knn import knn_accuracy, knn_graph, lab_mixing, silhouettes, source_probe
from leukoshift.eval.plots import interactive_scatter_html, scatter_png, thumbnails
from leukoshift.eval.projection import umap_embed
from leukoshift.eval.report import Report, software_versions
from leukoshift.taxonomy import GROUP_INDEX, LABEL_CODES, group_of
from leukoshift.training import write_json


def group_labels(table: ImageTable) -> np.ndarray:
    """Group index per row (-1 unlabeled): the level every lab's labels share."""
    return np.array([GROUP_INDEX[group_of(LABEL_CODES[i])] if i >= 0 else -1 for i in table.labels])


def features_for(
    table: ImageTable,
    checkpoint: Path | None,
    cache_dir: Path,
    pixel_side: int = 16,
    device: str | None = None,
    progress: bool = True,
) -> np.ndarray:
    """Embeddings of every row, computed once per (checkpoint, rows, image size)."""
    if checkpoint is None:
        key = embedding_key(table, None, side=pixel_side)
        return cached_embeddings(key, lambda: pixel_features(table, side=pixel_side), cache_dir)
    from leukoshift.eval.evaluate import default_device
    from leukoshift.models.encoders import load_encoder

    def compute() -> np.ndarray:
        loaded = load_encoder(checkpoint)
        dev = device or default_device()
        return embed_table(loaded.encoder.to(dev), table, device=dev, progress=progress)

    return cached_embeddings(embedding_key(table, checkpoint), compute, cache_dir)


def image_config_for(checkpoint: Path | None, size: int | None) -> ImageConfig:
    if checkpoint is None:
        return ImageConfig(size=size or 64)
    from leukoshift.models.encoders import load_encoder

    image = load_encoder(checkpoint).image
    return image.model_copy(update={"size": size}) if size else image


def diagnose_features(feats: np.ndarray, table: ImageTable, k: int = 20, seed: int = 0) -> dict[str, Any]:
    """All feature-space numbers for one table (no pictures)."""
    groups = group_labels(table)
    sources = table.sources
    labelled = groups >= 0
    out: dict[str, Any] = {"n": len(table), "n_labelled": int(labelled.sum()), "sources": table.source_names}
    if labelled.sum() > k:
        out["knn_accuracy_group"] = knn_accuracy(
            feats[labelled], groups[labelled], feats[labelled], groups[labelled], k=k, exclude_self=True
        )
    if len(table.source_names) > 1:
        mixing = lab_mixing(feats, sources, k=k, names=table.source_names)
        out["lab_mixing"] = mixing.to_dict()
        probe = source_probe(feats, sources, seed=seed)
        out["source_probe"] = {"accuracy": probe.accuracy, "chance": probe.chance}
    out["silhouette"] = silhouettes(feats, groups, sources, seed=seed)
    return out


def run_diagnose(
    manifests: Sequence[Path],
    out: Path,
    checkpoint: Path | None = None,
    split: str = "all",
    size: int | None = None,
    k: int = 20,
    max_points: int = 5000,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    if checkpoint is not None and not checkpoint.is_file():
        raise UserError(f"--checkpoint {checkpoint}: file not found")
    image = image_config_for(checkpoint, size)
    table = load_table(manifests, image, split=split, progress=progress)
    if len(table) < 3:
        raise UserError(f"diagnose needs at least 3 images, the manifests hold {len(table)} in split {split!r}")
    out.mkdir(parents=True, exist_ok=True)
    feats = features_for(table, checkpoint, out / "embeddings", device=None, progress=progress)
    numbers = diagnose_features(feats, table, k=k, seed=seed)
    appearance = lab_appearance(table, seed=seed)
    numbers["appearance"] = {"reference": appearance.attrs["reference"], "per_source": appearance.to_dict("records")}
    numbers.update(
        checkpoint=str(checkpoint) if checkpoint else "raw pixels", image=image.model_dump(mode="json"), split=split
    )

    # UMAP on a subsample keeps big sets readable and fast; the numbers above use all rows.
    rows = np.arange(len(table))
    if len(rows) > max_points:
        rows = np.sort(np.random.default_rng(seed).choice(rows, max_points, replace=False))
    sub = table.subset(rows)
    graph = knn_graph(feats[rows], min(15, len(rows) - 1))
    xy = umap_embed(feats[rows], k=min(15, len(rows) - 1), seed=seed, graph=graph)
    frame = sub.frame.assign(label=sub.frame["label"].replace("", "(unlabeled)"))
    np.save(out / "umap.npy", xy)
    pd.DataFrame(
        {"path": frame["path"], "source": frame["source"], "label": frame["label"], "x": xy[:, 0], "y": xy[:, 1]}
    ).to_csv(out / "umap.csv", index=False)
    scatter_png(xy, list(frame["source"]), "UMAP coloured by source (lab)", out / "umap_source.png")
    scatter_png(xy, list(frame["label"]), "UMAP coloured by class", out / "umap_class.png")
    thumbs = thumbnails(sub.images(np.arange(len(sub))), side=48)
    interactive_scatter_html(
        xy, frame, ["source", "label"], out / "umap.html", thumbnails=thumbs, title="UMAP of features"
    )
    write_json(out / "diagnostics.json", numbers)
    write_diagnose_report(numbers, out)
    return numbers


def mixing_table(numbers: dict[str, Any]) -> pd.DataFrame | None:
    mixing = numbers.get("lab_mixing")
    if not mixing:
        return None
    return pd.DataFrame(mixing["per_source"]).rename(
        columns={"own": "own-source fraction", "chance": "chance", "ratio": "own / chance", "isolation": "isolation"}
    )


def write_diagnose_report(numbers: dict[str, Any], out: Path) -> tuple[Path, Path]:
    report = Report(f"Diagnostics: {numbers['checkpoint']}")
    report.add_text(_headline(numbers))
    table = mixing_table(numbers)
    if table is not None:
        report.add_heading("Lab mixing")
        report.add_text(
            "Own-source fraction among each image's nearest neighbours against the fraction a "
            "random neighbour would give. A ratio of 1 means the labs are mixed; the maximum "
            "(N / n_source) means each lab is an island. Isolation rescales the same numbers to "
            "0 (mixed) .. 1 (island) so labs of different sizes compare."
        )
        report.add_table(table, caption="per source")
    report.add_heading("Lab appearance")
    report.add_text(
        "What differs between the labs before any model: median sharpness (std of the "
        f"Laplacian over std of the grey image), the Gaussian blur (blur_px) that makes "
        f"{numbers['appearance']['reference']} as soft as each lab, and median stain "
        "concentrations (colour deconvolution) and brightness. Fine-tuning covers a lab's optics "
        "when `augment.colour.blur_p` > 0 and the upper end of `augment.colour.blur_sigma` "
        "reaches the lab's blur_sigma_224."
    )
    report.add_table(
        pd.DataFrame(numbers["appearance"]["per_source"]), caption="per source, on the images as the model sees them"
    )
    report.add_heading("UMAP")
    report.add_image(out / "umap_source.png", "coloured by source (lab)")
    report.add_image(out / "umap_class.png", "coloured by class")
    report.add_html(out / "umap.html", "interactive: hover a point to see the cell; buttons switch the colouring")
    report.add_heading("Exact settings")
    import json

    report.add_code(
        json.dumps({k: v for k, v in numbers.items() if k not in ("lab_mixing", "appearance")}, indent=2, default=str),
        "json",
    )
    report.add_code(json.dumps(software_versions(), indent=2), "json")
    return report.write(out)


def _headline(numbers: dict[str, Any]) -> str:
    parts = [f"**{numbers['n']} images** from {len(numbers['sources'])} source(s) ({', '.join(numbers['sources'])})."]
    if "knn_accuracy_group" in numbers:
        parts.append(f"Leave-one-out kNN accuracy over cell groups: **{numbers['knn_accuracy_group']:.3f}**.")
    if "lab_mixing" in numbers:
        m = numbers["lab_mixing"]
        parts.append(
            f"Lab isolation, averaged over labs: **{m['mean_isolation']:.2f}** (0: neighbours from the labs at "
            f"random, 1: every neighbour from the image's own lab). Size-weighted, {m['overall_own']:.2f} of "
            f"neighbours share the image's lab against {m['overall_chance']:.2f} by chance (ratio "
            f"{m['overall_ratio']:.2f}, 1 = mixed), a number the largest lab dominates."
        )
        p = numbers["source_probe"]
        parts.append(
            f"A linear probe tells the lab with accuracy **{p['accuracy']:.3f}** "
            f"(majority rate {p['chance']:.3f}); lower is more lab-invariant."
        )
    s = numbers.get("silhouette") or {}
    if s:

        def fmt(v: float | None) -> str:
            return "n/a" if v is None else f"{v:.3f}"

        parts.append(f"Silhouette by class {fmt(s.get('class'))}, by source {fmt(s.get('source'))}.")
    return " ".join(parts)
