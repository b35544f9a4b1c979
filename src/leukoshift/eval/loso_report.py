"""The LOSO report: one page a person understands in a minute.

Top: which method generalises best to each unseen lab (macro-F1, best per column in
bold), then the in-domain vs held-out bars (the cost of meeting a new lab), per-class F1
on held-out labs, confusion matrices of the held-out folds, how the labs' images differ
(sharpness, stain), feature diagnostics (UMAP, lab mixing) and finally the exact config
and software versions.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from leukoshift.eval.plots import bars_in_vs_out, confusion_png, per_class_f1_heatmap
from leukoshift.eval.report import Report, software_versions

if TYPE_CHECKING:
    from leukoshift.eval.loso import Loso, LosoTables


def _confusion_from_dict(conf: dict[str, Any]) -> pd.DataFrame:
    return pd.DataFrame(conf["counts"], index=conf["truth"], columns=conf["predicted"])


def write_loso_report(loso: Loso, results: list[dict[str, Any]], tables: LosoTables) -> tuple[Path, Path]:
    out = loso.out
    figs = out / "figures"
    figs.mkdir(parents=True, exist_ok=True)
    cfg = loso.cfg
    report = Report(f"Leave-one-source-out: {cfg.name}")

    pivot = tables.pivot("macro_f1")
    best = {col: pivot[col].idxmax() for col in pivot.columns}
    protocol = (
        "transductive (pretraining saw the held-out lab's images, never its labels)"
        if cfg.transductive
        else "strict (the held-out lab was never seen: not in pretraining, training or model selection)"
    )
    lines = [
        f"**Protocol:** {protocol}. Seeds: {', '.join(map(str, cfg.seeds))}. "
        f"Image: {cfg.image.size} px, framing `{cfg.image.preprocess}`."
    ]
    if cfg.test_time:
        lines.append(
            "Methods named `+label_set` are the same models with predictions restricted to the codes the "
            "held-out lab's rows carry; `+adabn`, with batch-norm statistics re-estimated on the held-out "
            "lab's images (labels unused). Neither retrains anything."
        )
    lines += [
        f"- held out **{h}**: best **{best[h]}** (macro-F1 {pivot.loc[best[h], h]:.3f})"
        for h in pivot.columns
        if h != "mean"
    ]
    lines.append(
        f"- over all held-out labs: best **{best['mean']}** (mean macro-F1 {pivot.loc[best['mean'], 'mean']:.3f})"
    )
    report.add_text("\n".join(lines))

    report.add_heading("Held-out macro-F1 (mean over seeds)")
    table = pivot.reset_index()
    report.add_table(
        table,
        highlight_max_per_column=[c for c in table.columns if c != "method"],
        caption="rows: methods; columns: the lab held out",
    )
    std = tables.summary.pivot(index="method", columns="held_out", values="macro_f1_std").reset_index()
    if len(cfg.seeds) > 1:
        report.add_table(std, caption="standard deviation over seeds")
    for metric in ("balanced_accuracy", "accuracy"):
        t = tables.pivot(metric).reset_index()
        report.add_table(
            t,
            highlight_max_per_column=[c for c in t.columns if c != "method"],
            caption=f"held-out {metric.replace('_', ' ')}",
        )
    levels = tables.summary[["held_out", "level", "n", "n_excluded"]].drop_duplicates("held_out")
    report.add_table(
        levels,
        caption="scoring level per held-out lab (finest level shared with training); "
        "rows whose class no training source has are excluded and counted",
    )

    report.add_heading("In-domain vs held-out")
    bars = (
        tables.summary.groupby("method", sort=False)
        .agg(
            in_domain=("in_domain_macro_f1_mean", "mean"),
            held_out=("macro_f1_mean", "mean"),
        )
        .reset_index()
    )
    bars_in_vs_out(
        bars, figs / "in_vs_out.png", title="macro-F1: training labs' test splits vs unseen lab (mean over folds)"
    )
    report.add_image(figs / "in_vs_out.png", "the gap between the bars is what meeting a new lab costs")
    report.add_table(
        tables.summary[["held_out", "method", "in_domain_macro_f1_mean", "macro_f1_mean", "gap_macro_f1"]],
        highlight_min_per_column=["gap_macro_f1"],
        caption="gap = in-domain − held-out macro-F1",
    )

    report.add_heading("Per-class F1 on held-out labs")
    for held in pivot.columns:
        if held == "mean":
            continue
        f1 = {}
        for r in results:
            if r["held_out"] == held:
                f1.setdefault(r["method"], []).append({c: v["f1"] for c, v in r["scores"]["per_class"].items()})
        frame = pd.DataFrame({m: pd.DataFrame(v).mean() for m, v in f1.items()}).T
        per_class_f1_heatmap(frame, figs / f"f1_{_slug(held)}.png", title=f"per-class F1, {held} held out")
        report.add_image(figs / f"f1_{_slug(held)}.png", f"{held} held out (mean over seeds)")

    report.add_heading("Confusion matrices of the held-out folds")
    report.add_text("Best method per held-out lab, first seed; rows: truth, columns: prediction (share of the row).")
    for held in pivot.columns:
        if held == "mean":
            continue
        r = next(r for r in results if r["held_out"] == held and r["method"] == best[held])
        confusion_png(
            _confusion_from_dict(r["scores"]["confusion"]),
            figs / f"confusion_{_slug(held)}.png",
            title=f"{best[held]}, {held} held out",
        )
        report.add_image(figs / f"confusion_{_slug(held)}.png", f"{best[held]} on {held}")

    appearance = _appearance(loso)
    if appearance is not None:
        report.add_heading("How the labs differ before any model")
        report.add_text(
            "Per lab, on the images as the models see them: median sharpness (std of the Laplacian over std of the "
            f"grey image), the Gaussian blur that makes {appearance.attrs['reference']} as soft (blur_px; "
            "blur_sigma_224 in `augment.colour.blur_sigma` units, which blur augmentation needs to reach to show "
            "the model that lab's optics), median stain concentrations and brightness."
        )
        report.add_table(appearance)

    diag = _diagnostics(loso, results, figs)
    if diag is not None:
        report.add_heading("Do the features mix the labs?")
        report.add_text(
            "A sample of the labelled images embedded by raw pixels and by each method's model (first held-out fold, "
            "first seed). Lab isolation is, per lab, the own-lab fraction among each image's 20 nearest neighbours "
            "rescaled so that 0 = neighbours from the labs at random and 1 = all from the own lab, averaged over labs; "
            "the lab probe is a logistic regression telling the lab from the features (lower = more lab-invariant); "
            "kNN accuracy is leave-one-out over cell groups."
        )
        report.add_table(
            diag,
            highlight_min_per_column=["lab isolation (0 mixed, 1 island)", "lab probe accuracy"],
            highlight_max_per_column=["kNN accuracy (groups)"],
        )
        for name in ("umap_pixels_source", "umap_best_source", "umap_best_class"):
            if (figs / f"{name}.png").is_file():
                report.add_image(figs / f"{name}.png", name.replace("_", " "))
        if (figs / "umap_best.html").is_file():
            report.add_html(
                figs / "umap_best.html", "interactive UMAP of the best method's features: hover a point to see the cell"
            )

    report.add_heading("Exact configuration")
    report.add_code(json.dumps(cfg.model_dump(mode="json"), indent=2), "json")
    report.add_code(json.dumps(software_versions(), indent=2), "json")
    return report.write(out)


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in name)


def _appearance(loso: Loso) -> pd.DataFrame | None:
    """Sharpness, matching blur, stain and brightness per lab (with the diagnostics)."""
    cfg = loso.cfg
    if cfg.diagnose_points <= 0:
        return None
    from leukoshift.data.loaders import load_table
    from leukoshift.domain.appearance import lab_appearance

    table = load_table(cfg.labelled, cfg.image, split="all", labelled=True, progress=False)
    return lab_appearance(table)


def _diagnostics(loso: Loso, results: list[dict[str, Any]], figs: Path) -> pd.DataFrame | None:
    """Feature diagnostics on a subsample of all labelled rows, per method (fold 1, seed 1)."""
    cfg = loso.cfg
    if cfg.diagnose_points <= 0:
        return None
    from leukoshift.data.loaders import load_table
    from leukoshift.eval.diagnose import diagnose_features, features_for
    from leukoshift.eval.loso import Task
    from leukoshift.eval.plots import interactive_scatter_html, scatter_png, thumbnails
    from leukoshift.eval.projection import umap_embed

    table = load_table(cfg.labelled, cfg.image, split="all", labelled=True, progress=False)
    if len(table) > cfg.diagnose_points:
        rows = np.sort(np.random.default_rng(0).choice(len(table), cfg.diagnose_points, replace=False))
        table = table.subset(rows)
    cache = loso.out / "embeddings"
    first = loso.held_out[0]
    seed = cfg.seeds[0]
    entries: list[tuple[str, Path | None]] = [("raw pixels", None)]
    for method, m in cfg.methods.items():
        ckpt = loso.task_dir(Task(first, method, seed)) / "best.ckpt"
        if m.kind in ("finetune", "ssl") and ckpt.is_file():
            entries.append((method, ckpt))
    rows_out = []
    feats_by: dict[str, np.ndarray] = {}
    for name, ckpt in entries:
        feats = features_for(table, ckpt, cache, progress=False)
        feats_by[name] = feats
        d = diagnose_features(feats, table, k=20)
        rows_out.append(
            {
                "features": name,
                "lab isolation (0 mixed, 1 island)": d.get("lab_mixing", {}).get("mean_isolation", np.nan),
                "lab probe accuracy": d.get("source_probe", {}).get("accuracy", np.nan),
                "kNN accuracy (groups)": d.get("knn_accuracy_group", np.nan),
                "silhouette class": (d.get("silhouette") or {}).get("class"),
                "silhouette source": (d.get("silhouette") or {}).get("source"),
            }
        )
    frame = pd.DataFrame(rows_out)
    k = min(15, len(table) - 1)
    xy = umap_embed(feats_by["raw pixels"], k=k)
    scatter_png(xy, list(table.frame["source"]), "raw pixels, coloured by lab", figs / "umap_pixels_source.png")
    learned = [e for e in entries if e[1] is not None]
    if learned:
        pivot = pd.DataFrame(results).assign(f1=lambda d: [r["macro_f1"] for r in d["scores"]])
        ranking = pivot.groupby("method")["f1"].mean()
        best = max((e[0] for e in learned), key=lambda n: ranking.get(n, -1))
        xy = umap_embed(feats_by[best], k=k)
        scatter_png(xy, list(table.frame["source"]), f"{best}: coloured by lab", figs / "umap_best_source.png")
        scatter_png(xy, list(table.frame["label"]), f"{best}: coloured by class", figs / "umap_best_class.png")
        thumbs = thumbnails(table.images(np.arange(len(table))), side=40)
        interactive_scatter_html(
            xy, table.frame, ["source", "label"], figs / "umap_best.html", thumbnails=thumbs, title=f"{best} features"
        )
    return frame
