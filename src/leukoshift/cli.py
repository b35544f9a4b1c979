"""The ``leukoshift`` command line: thin typer commands, each calling one library function.

Errors a user can fix (a missing file, a bad config value, an unreadable manifest) end
the command with one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from leukoshift.errors import UserError

app = typer.Typer(
    help="White-blood-cell classification across laboratories: data, SSL pretraining, "
    "fine-tuning, leave-one-source-out benchmarks, diagnostics and explanations.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Import, split, summarise, cache and synthesise data.", no_args_is_help=True)
ssl_app = typer.Typer(help="Self-supervised pretraining (DINO, SimCLR).", no_args_is_help=True)
benchmark_app = typer.Typer(help="Leave-one-source-out benchmarks.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(ssl_app, name="ssl")
app.add_typer(benchmark_app, name="benchmark")

# soft_wrap: long paths stay on one line (greppable logs), tables still fit the terminal.
console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML config file")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="override a config value: dotted.key=value (repeatable)"),
]

# Ruler-framed models (image.preprocess=ruler) frame each image by its lab's red-cell size.
SourceOpt = Annotated[str | None, typer.Option(help="ruler-framed models: the images' lab, one the model knows")]
RedCellOpt = Annotated[
    float | None,
    typer.Option(min=1.0, help="ruler-framed models: the images' red-cell diameter, px (`leukoshift data ruler`)"),
]
TtaOpt = Annotated[
    bool,
    typer.Option(
        "--tta",
        help="average each image's probabilities over its eight 90-degree rotations and mirror images "
        "(8x the compute; cells have no up)",
    ),
]


# ----------------------------------------------------------------------------- data


@data_app.command("import")
def data_import(
    fmt: Annotated[str, typer.Argument(help="pbc | munich | raabin | wbcseg | folder | unlabeled")],
    path: Annotated[Path, typer.Argument(help="folder in the publisher's layout")],
    source: Annotated[str, typer.Option("--source", "-s", help="lab name stored in the manifest")],
    out: Annotated[Path, typer.Option("--out", "-o", help="manifest CSV to write")],
    label_map: Annotated[Path | None, typer.Option(help="YAML 'folder name: CODE' for the folder format")] = None,
    seed: Annotated[int, typer.Option(help="seed of the train/val/test split")] = 0,
    ratios: Annotated[str, typer.Option(help="train,val,test fractions")] = "0.8,0.1,0.1",
) -> None:
    """Import a published data set into a manifest (decodes every file once)."""
    from leukoshift.data.importers import duplicate_pairs, import_dataset, load_label_map, sidecar

    result = import_dataset(fmt, path, source, out, load_label_map(label_map), _parse_ratios(ratios), seed)
    console.print(f"{result.n_rows} images imported from {path} -> {out}", markup=False)
    if result.rejected:
        console.print(
            f"[yellow]{len(result.rejected)} file(s) rejected[/yellow] "
            f"(listed in {escape(str(sidecar(out, 'rejected')))}):"
        )
        for r in result.rejected[:20]:
            console.print(f"  {r.path}: {r.reason}", markup=False)
        if len(result.rejected) > 20:
            console.print(f"  ... and {len(result.rejected) - 20} more")
    if result.duplicate_groups:
        console.print(
            f"[yellow]{len(result.duplicate_groups)} group(s) of byte-identical files[/yellow] "
            f"({duplicate_pairs(result.duplicate_groups)} extra copies; kept in one split; "
            f"listed in {escape(str(sidecar(out, 'duplicates')))})"
        )
        for g in result.conflicts:
            rows = result.frame.loc[g]
            desc = ", ".join(
                f"{Path(p).name} ({lab or 'unlabeled'})" for p, lab in zip(rows["path"], rows["label"], strict=True)
            )
            console.print(f"  [red]conflicting labels:[/red] {escape(desc)}")
    if result.outside_taxonomy:
        desc = ", ".join(f"{k} {v}" for k, v in sorted(result.outside_taxonomy.items()))
        console.print(
            f"{sum(result.outside_taxonomy.values())} row(s) outside the 11 classes kept unlabeled: {desc}",
            markup=False,
        )


def _parse_ratios(text: str) -> tuple[float, float, float]:
    try:
        parts = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise UserError(f"--ratios {text!r}: expected three numbers like 0.8,0.1,0.1") from None
    if len(parts) != 3:
        raise UserError(f"--ratios {text!r}: expected three numbers like 0.8,0.1,0.1")
    return parts  # type: ignore[return-value]


@data_app.command("summary")
def data_summary(
    manifests: Annotated[list[Path], typer.Argument(help="manifest CSV(s)")],
    plot: Annotated[Path | None, typer.Option(help="write a bar chart of class counts per source")] = None,
) -> None:
    """Class-by-source counts of one or more manifests."""
    from leukoshift.data.manifest import class_table, read_manifests
    from leukoshift.data.summary import plot_class_counts

    table = class_table(read_manifests(manifests))
    rich_table = Table(title="images per class and source")
    rich_table.add_column("class")
    for col in table.columns:
        rich_table.add_column(str(col), justify="right")
    rich_table.add_column("total", justify="right")
    for code, row in table.iterrows():
        rich_table.add_row(str(code), *(str(int(v)) for v in row), str(int(row.sum())))
    rich_table.add_row("total", *(str(int(v)) for v in table.sum()), str(int(table.values.sum())), style="bold")
    console.print(rich_table)
    if plot is not None:
        plot_class_counts(table, plot)
        console.print(f"bar chart -> {plot}", markup=False)


@data_app.command("split")
def data_split(
    manifest: Annotated[Path, typer.Argument(help="manifest CSV to re-split")],
    seed: int = 0,
    ratios: Annotated[str, typer.Option(help="train,val,test fractions")] = "0.8,0.1,0.1",
    out: Annotated[Path | None, typer.Option(help="write here instead of in place")] = None,
) -> None:
    """Seeded, stratified train/val/test per source; identical images share a split."""
    from leukoshift.data.manifest import read_manifest, write_manifest
    from leukoshift.data.splits import assign_splits

    m = read_manifest(manifest)
    m.frame["split"] = assign_splits(m.frame, _parse_ratios(ratios), seed)
    write_manifest(m, out or manifest)
    counts = m.frame.groupby(["source", "split"]).size().unstack(fill_value=0)
    console.print(counts.to_string(), markup=False)


@data_app.command("cache")
def data_cache(
    manifests: Annotated[list[Path], typer.Argument(help="manifest CSV(s)")],
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Decode and resize every image once into the memory-mapped cache (config: image.*)."""
    from leukoshift.config import ImageOnlyConfig, load_config
    from leukoshift.data.cache import build_cache
    from leukoshift.data.manifest import read_manifest

    cfg = load_config(ImageOnlyConfig, config, set_)
    for path in manifests:
        cache = build_cache(read_manifest(path), cfg.image)
        console.print(f"{path}: {cache.n} images -> {cache.path} ({len(cache.failed)} failed)", markup=False)


@data_app.command("appearance")
def data_appearance(
    manifests: Annotated[list[Path], typer.Argument(help="manifest CSV(s)")],
    config: ConfigOpt = None,
    set_: SetOpt = None,
    reference: Annotated[str | None, typer.Option(help="source to measure blur from (default: the largest)")] = None,
    per_source: Annotated[int, typer.Option(min=1, help="images sampled per source")] = 1000,
    csv: Annotated[Path | None, typer.Option(help="also write the table here")] = None,
) -> None:
    """How the labs differ before any model: sharpness, matching blur, stain, brightness."""
    from leukoshift.config import ImageOnlyConfig, load_config
    from leukoshift.data.loaders import load_table
    from leukoshift.data.manifest import read_manifests
    from leukoshift.domain.appearance import lab_appearance

    cfg = load_config(ImageOnlyConfig, config, set_)
    sources = sorted(read_manifests(manifests).frame["source"].unique())
    if reference is not None and reference not in sources:
        raise UserError(f"--reference {reference!r}: not a source of these manifests ({', '.join(sources)})")
    table = load_table(manifests, cfg.image, split="all")
    frame = lab_appearance(table, reference=reference, max_per_source=per_source)
    rich_table = Table(
        title=f"lab appearance at {cfg.image.size} px ({cfg.image.preprocess}); blur_px: the blur that makes "
        f"{frame.attrs['reference']} as soft, blur_sigma_224: the same in augment.colour.blur_sigma units"
    )
    for col in frame.columns:
        rich_table.add_column(str(col), justify="left" if col == "source" else "right")
    for row in frame.itertuples(index=False):
        rich_table.add_row(*(f"{v:.3f}" if isinstance(v, float) else str(v) for v in row))
    console.print(rich_table)
    widest = float(frame["blur_sigma_224"].max())
    if widest > 0:
        console.print(
            f"blur augmentation reaching every lab: --set augment.colour.blur_p=0.5 "
            f"--set 'augment.colour.blur_sigma=[0.1,{max(widest, 0.1):.1f}]'",
            markup=False,
        )
    if csv is not None:
        frame.to_csv(csv, index=False)
        console.print(f"table -> {csv}", markup=False)


@data_app.command("ruler")
def data_ruler(
    manifests: Annotated[list[Path], typer.Argument(help="manifest CSV(s)")],
    per_source: Annotated[int, typer.Option(min=1, help="images drawn per source")] = 200,
    seed: Annotated[int, typer.Option(help="seed of the draw")] = 0,
) -> None:
    """Each lab's red-cell diameter in px: the scale that `image.preprocess=ruler` frames
    cells by, so a cell's size in the crop is its size on the slide in every lab."""
    import pandas as pd

    from leukoshift.data.images import load_rgb
    from leukoshift.data.manifest import read_manifests
    from leukoshift.domain.ruler import lab_rulers

    frame, skipped = lab_rulers(read_manifests(manifests).frame, load_rgb, per_source, seed)
    for line in skipped:
        console.print(f"skipped: {line}", markup=False)
    shown = frame.assign(
        red_cell_px=frame["red_cell_px"].map(lambda v: "-" if pd.isna(v) else f"{v:.1f}"),
        nucleus_ratio=frame["nucleus_ratio"].map(lambda v: "-" if pd.isna(v) else f"{v:.2f}"),
    )
    console.print("red cells per lab (nucleus_ratio: median nucleus side / red-cell diameter)", markup=False)
    console.print(shown.to_string(index=False), markup=False)
    ok = frame.dropna(subset=["red_cell_px"])
    if len(ok):
        scales = ", ".join(f"{s}: {v:.1f}" for s, v in zip(ok["source"], ok["red_cell_px"], strict=True))
        console.print(
            f"--set image.preprocess=ruler --set 'image.red_cell_px={{{scales}}}'"
            "   (finetune, ssl pretrain: data.image.*)",
            markup=False,
        )
    if len(ok) < len(frame):
        console.print(
            "[yellow]labs marked not measurable need their scale set by hand "
            "(from another source of the same lab and camera, or the microscope's um per px)[/yellow]"
        )


@data_app.command("near-duplicates")
def data_near_duplicates(
    manifests: Annotated[list[Path], typer.Argument(help="manifest CSV(s)")],
    config: ConfigOpt = None,
    set_: SetOpt = None,
    threshold: Annotated[
        float, typer.Option(min=0.5, max=1.0, help="correlation at which two images count as copies")
    ] = 0.98,
    csv: Annotated[Path | None, typer.Option(help="also write every image in a group here")] = None,
    distinct: Annotated[
        Path | None,
        typer.Option(help="also write the manifests' rows without the copies (each group's first kept) here"),
    ] = None,
) -> None:
    """Copies a file hash misses: the same cell rotated, mirrored or shifted, per lab
    (compared at 32 px: image.size=64 is plenty)."""
    from leukoshift.config import ImageOnlyConfig, load_config
    from leukoshift.data.loaders import load_table
    from leukoshift.data.manifest import read_manifests, write_manifest
    from leukoshift.data.near_duplicates import later_copies, near_duplicate_report, summarise

    cfg = load_config(ImageOnlyConfig, config, set_)
    table = load_table(manifests, cfg.image, split="all")
    report = near_duplicate_report(table.images, table.frame, threshold)
    summary = summarise(report, table.frame)
    # Plain text, not a rich table: seven columns stay whole in an 80-column terminal or a log.
    console.print(f"near-duplicates at r >= {threshold} ({cfg.image.preprocess} crops, grey, 32 px)", markup=False)
    console.print(summary.to_string(index=False), markup=False)
    for (source, _), part in report[report["conflict"]].groupby(["source", "group"]):
        desc = ", ".join(f"{Path(p).name} ({lab})" for p, lab in zip(part["path"], part["label"], strict=True))
        console.print(f"  [red]{escape(str(source))}: copies with different labels:[/red] {escape(desc)}")
    for source, part in report[report["spans_splits"]].groupby("source"):
        console.print(
            f"[yellow]{source}: {part['group'].nunique()} group(s) of copies lie in more than one split[/yellow] "
            "(a copy of a test image in train inflates the test score)"
        )
    if csv is not None:
        report.to_csv(csv, index=False)
        console.print(f"{len(report)} image(s) in groups -> {csv}", markup=False)
    if distinct is not None:
        rows = read_manifests(manifests).frame
        dropped = set(later_copies(report))
        write_manifest(rows[~rows["path"].isin(dropped)], distinct)
        console.print(f"{len(rows) - len(dropped)} row(s), {len(dropped)} copies left out -> {distinct}", markup=False)


@data_app.command("synth")
def data_synth(
    out: Annotated[Path, typer.Option("--out", "-o", help="folder for the labs and manifest.csv")],
    labs: Annotated[int, typer.Option(min=1, max=8, help="number of synthetic labs")] = 3,
    per_class: Annotated[int, typer.Option(min=1, help="images per class and lab")] = 40,
    size: Annotated[int, typer.Option(min=16, max=512, help="image side, px")] = 64,
    seed: int = 0,
) -> None:
    """Render synthetic cell images from labs that differ in stain, optics and framing."""
    from leukoshift.data.synth import render_labs

    manifest = render_labs(out, labs=labs, per_class=per_class, size=size, seed=seed)
    console.print(f"synthetic labs written to {out}; manifest {manifest}")


# ----------------------------------------------------------------------------- later issues


def _flag_overrides(pairs: dict[str, object]) -> list[str]:
    """CLI flags as ``--set`` strings, so they are validated exactly like the config file."""
    import json

    return [f"{key}={json.dumps(value)}" for key, value in pairs.items() if value not in (None, [], ())]


ManifestOpt = Annotated[list[Path] | None, typer.Option("--manifest", "-m", help="manifest CSV (repeatable)")]
OutOpt = Annotated[Path | None, typer.Option("--out", "-o", help="run folder")]
ResumeOpt = Annotated[bool, typer.Option(help="continue from the run folder's last.ckpt")]
ForceOpt = Annotated[bool, typer.Option(help="train again even if the run folder is complete")]
DevicesOpt = Annotated[str | None, typer.Option(help="Lightning devices: auto, N or a list like [0,1]")]
NodesOpt = Annotated[int | None, typer.Option("--num-nodes", help="Lightning nodes (DDP)")]
StrategyOpt = Annotated[str | None, typer.Option(help="Lightning strategy, e.g. ddp")]


def _devices(value: str | None) -> object:
    if value is None:
        return None
    import yaml

    return yaml.safe_load(value)


@app.command()
def finetune(
    config: ConfigOpt = None,
    backbone: Annotated[
        str | None, typer.Option(help="backbone name (model.backbone), e.g. vit, vgg19, resnet18")
    ] = None,
    init: Annotated[Path | None, typer.Option(help="initial backbone weights: .safetensors/.pth/.ckpt")] = None,
    manifest: ManifestOpt = None,
    external: Annotated[
        list[Path] | None, typer.Option(help="manifest scored in full after training (repeatable)")
    ] = None,
    mode: Annotated[str | None, typer.Option(help="linear | partial | full")] = None,
    out: OutOpt = None,
    set_: SetOpt = None,
    resume: ResumeOpt = False,
    force: ForceOpt = False,
    devices: DevicesOpt = None,
    num_nodes: NodesOpt = None,
    strategy: StrategyOpt = None,
    baseline: Annotated[
        str | None, typer.Option(help="logreg | svm: a classical baseline instead of a network")
    ] = None,
    features_from: Annotated[
        Path | None, typer.Option(help="fine-tuned checkpoint whose features feed --baseline svm")
    ] = None,
) -> None:
    """Fine-tune a backbone on the 11 cell classes (the published recipe), or fit a baseline."""
    from leukoshift.config import FinetuneConfig, load_config

    flags = _flag_overrides(
        {
            "model.backbone": backbone,
            "model.init": str(init) if init else None,
            "data.manifests": [str(m) for m in manifest or []],
            "data.external": [str(m) for m in external or []],
            "mode": mode,
            "out": str(out) if out else None,
            "trainer.devices": _devices(devices),
            "trainer.num_nodes": num_nodes,
            "trainer.strategy": strategy,
        }
    )
    cfg = load_config(FinetuneConfig, config, [*flags, *(set_ or [])])
    if baseline is not None:
        from leukoshift.finetune.baselines import run_baseline

        if baseline not in ("logreg", "svm"):
            raise UserError(f"--baseline {baseline!r}: valid: logreg, svm")
        run_baseline(cfg, baseline, features_from)  # type: ignore[arg-type]
        return
    from leukoshift.finetune.train import run_finetune

    run_finetune(cfg, resume=resume, force=force)


@app.command()
def wise(
    run: Annotated[Path, typer.Argument(help="fine-tuning run folder with warmup.ckpt and best.ckpt")],
    alpha: Annotated[float, typer.Option(help="weight of the fine-tuned model: 0 the linear probe, 1 best.ckpt")] = 0.5,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="checkpoint to write [RUN/wise<alpha>.ckpt]")] = None,
) -> None:
    """Interpolate a run's fine-tuned weights with its head warm-up's (WiSE-FT) into a checkpoint."""
    from leukoshift.finetune.wise import wise_from_run

    path = wise_from_run(run, alpha, out)
    console.print(f"wrote {path}; score it with: leukoshift evaluate --checkpoint {path} -m MANIFEST -o DIR")


@ssl_app.command("pretrain")
def ssl_pretrain(
    config: ConfigOpt = None,
    method: Annotated[str | None, typer.Option(help="dino | simclr")] = None,
    backbone: Annotated[str | None, typer.Option(help="backbone name, e.g. vit_small, vgg16, resnet50")] = None,
    manifest: ManifestOpt = None,
    exclude_source: Annotated[
        list[str] | None, typer.Option("--exclude-source", help="keep this lab out of the pool (repeatable)")
    ] = None,
    monitor: Annotated[
        list[Path] | None, typer.Option(help="labelled manifest for the online kNN monitor (repeatable)")
    ] = None,
    init: Annotated[Path | None, typer.Option(help="start from these backbone weights")] = None,
    out: OutOpt = None,
    set_: SetOpt = None,
    resume: ResumeOpt = False,
    force: ForceOpt = False,
    devices: DevicesOpt = None,
    num_nodes: NodesOpt = None,
    strategy: StrategyOpt = None,
    compile_: Annotated[bool, typer.Option("--compile", help="torch.compile the backbone")] = False,
) -> None:
    """Self-supervised pretraining (DINO / SimCLR) on every image of the given manifests."""
    from leukoshift.config import PretrainConfig, load_config
    from leukoshift.pretrain.train import run_pretrain

    flags = _flag_overrides(
        {
            "method": method,
            "model.backbone": backbone,
            "model.init": str(init) if init else None,
            "data.manifests": [str(m) for m in manifest or []],
            "data.exclude_sources": list(exclude_source or []),
            "monitor.manifests": [str(m) for m in monitor or []],
            "out": str(out) if out else None,
            "trainer.devices": _devices(devices),
            "trainer.num_nodes": num_nodes,
            "trainer.strategy": strategy,
            "trainer.compile": True if compile_ else None,
        }
    )
    cfg = load_config(PretrainConfig, config, [*flags, *(set_ or [])])
    run_pretrain(cfg, resume=resume, force=force)


@app.command()
def evaluate(
    checkpoint: Annotated[Path, typer.Option(help="fine-tuning checkpoint (best.ckpt)")],
    manifest: Annotated[list[Path], typer.Option("--manifest", "-m", help="manifest CSV (repeatable)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="folder for metrics.json, confusion, predictions")],
    split: Annotated[str, typer.Option(help="train | val | test | all")] = "test",
    level: Annotated[str, typer.Option(help="auto (finest per row) | fine | group")] = "auto",
    classes: Annotated[
        str | None,
        typer.Option(
            help="the manifests' label set, comma-separated (e.g. NE,EO,BA,LY,MO for a lab that labels "
            "white cells only): predictions are restricted to it before scoring"
        ),
    ] = None,
    adapt_bn: Annotated[
        bool,
        typer.Option(
            "--adapt-bn",
            help="re-estimate batch-norm statistics on each source's images before predicting them "
            "(AdaBN; labels unused; CNN backbones only)",
        ),
    ] = False,
    red_cell_px: RedCellOpt = None,
    tta: TtaOpt = False,
) -> None:
    """Score a checkpoint on a manifest: metrics, confusion matrix, predictions."""
    from leukoshift.eval.evaluate import run_evaluate
    from leukoshift.taxonomy import validate_codes

    if level not in ("auto", "fine", "group"):
        raise UserError(f"--level {level!r}: valid: auto, fine, group")
    label_set = [c.strip() for c in classes.split(",") if c.strip()] if classes is not None else None
    if label_set is not None:
        if not label_set:
            raise UserError("--classes: give at least one label code, e.g. NE,EO,BA,LY,MO")
        try:
            validate_codes(label_set)
        except UserError as err:
            raise UserError(f"--classes: {err}") from None
    m = run_evaluate(
        checkpoint,
        manifest,
        out,
        split=split,
        level=level,
        classes=label_set,
        adapt_bn=adapt_bn,
        red_cell_px=red_cell_px,
        tta=tta,
    )
    console.print(
        f"n={m['n']} level={m['level']} macro-F1 {m['macro_f1']:.3f} accuracy {m['accuracy']:.3f} "
        f"balanced accuracy {m['balanced_accuracy']:.3f} -> {out}"
    )


@app.command()
def predict(
    checkpoint: Annotated[Path, typer.Option(help="fine-tuning checkpoint (best.ckpt)")],
    paths: Annotated[list[Path], typer.Argument(help="image files or folders")],
    out: Annotated[Path, typer.Option("--out", "-o", help="predictions CSV")] = Path("predictions.csv"),
    threshold: Annotated[float, typer.Option(help="flag predictions below this probability")] = 0.5,
    source: SourceOpt = None,
    red_cell_px: RedCellOpt = None,
    tta: TtaOpt = False,
) -> None:
    """Predict cell classes for image files or folders (top-3 classes and probabilities)."""
    from leukoshift.eval.evaluate import run_predict

    run_predict(checkpoint, paths, out, threshold=threshold, source=source, red_cell_px=red_cell_px, tta=tta)


@benchmark_app.command("loso")
def benchmark_loso(
    config: Annotated[Path, typer.Option("--config", "-c", help="LOSO YAML config")],
    set_: SetOpt = None,
    executor: Annotated[str, typer.Option(help="local (in order) | slurm (submitit)")] = "local",
    out: OutOpt = None,
    methods: Annotated[str | None, typer.Option(help="comma-separated subset of the config's methods")] = None,
    report_only: Annotated[
        bool, typer.Option(help="train nothing: aggregate the complete runs and write the report")
    ] = False,
) -> None:
    """Leave-one-source-out benchmark: every method, every held-out lab, every seed."""
    from leukoshift.config import load_config
    from leukoshift.eval.loso import LosoConfig, run_loso

    if executor not in ("local", "slurm"):
        raise UserError(f"--executor {executor!r}: valid: local, slurm")
    cfg = load_config(LosoConfig, config, [*_flag_overrides({"out": str(out) if out else None}), *(set_ or [])])
    subset = [m.strip() for m in methods.split(",") if m.strip()] if methods else None
    run_loso(cfg, executor=executor, methods=subset, report_only=report_only)  # type: ignore[arg-type]


@app.command()
def diagnose(
    manifest: Annotated[list[Path], typer.Option("--manifest", "-m", help="manifest CSV (repeatable)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="folder for numbers, pictures and report")],
    checkpoint: Annotated[
        Path | None, typer.Option(help="best.ckpt, SSL last.ckpt or backbone.safetensors; none: raw pixels")
    ] = None,
    split: Annotated[str, typer.Option(help="train | val | test | all")] = "all",
    size: Annotated[int | None, typer.Option(help="image size (default: the checkpoint's, or 64 for pixels)")] = None,
    k: Annotated[int, typer.Option(help="neighbours for kNN and lab mixing")] = 20,
) -> None:
    """Embeddings, faiss kNN, lab mixing, lab probe, silhouettes and UMAP of manifests."""
    from leukoshift.eval.diagnose import run_diagnose

    numbers = run_diagnose(manifest, out, checkpoint=checkpoint, split=split, size=size, k=k)
    console.print(f"diagnostics of {numbers['n']} images -> {out / 'report.html'}")
    if "lab_mixing" in numbers:
        m = numbers["lab_mixing"]
        console.print(
            f"lab isolation (mean over labs, 0 mixed .. 1 island) {m['mean_isolation']:.2f}; "
            f"lab probe accuracy {numbers['source_probe']['accuracy']:.3f}"
        )
    if "knn_accuracy_group" in numbers:
        console.print(f"kNN accuracy (groups, leave-one-out) {numbers['knn_accuracy_group']:.3f}")


_TARGET_HELP = "class to explain, a code SNE ... PLT (default: each image's prediction)"
_METHOD_HELP = (
    "gradcam | gradcam++ (any backbone); rollout | grad-rollout | attention (ViT). "
    "Default: gradcam for CNNs, rollout for ViTs"
)


@app.command()
def explain(
    checkpoint: Annotated[Path, typer.Option(help="fine-tuning checkpoint (best.ckpt)")],
    paths: Annotated[list[Path], typer.Argument(help="image files or folders")],
    out: Annotated[Path, typer.Option("--out", "-o", help="folder for PNGs and contact sheets")],
    target: Annotated[str | None, typer.Option(help=_TARGET_HELP)] = None,
    method: Annotated[str | None, typer.Option(help=_METHOD_HELP)] = None,
    source: SourceOpt = None,
    red_cell_px: RedCellOpt = None,
) -> None:
    """Grad-CAM / attention maps beside each image, with the predicted class and probability."""
    from leukoshift.eval.explain import run_explain

    run_explain(checkpoint, paths, out, target=target, method=method, source=source, red_cell_px=red_cell_px)


@app.command("app")
def app_cmd(
    checkpoint: Annotated[Path, typer.Option(help="fine-tuning checkpoint (best.ckpt)")],
    manifest: Annotated[
        list[Path] | None,
        typer.Option("--manifest", "-m", help="manifest for examples, neighbours, data view"),
    ] = None,
    results: Annotated[Path | None, typer.Option(help="LOSO results folder to show")] = None,
    port: Annotated[int, typer.Option(help="port of the web server")] = 8501,
    address: Annotated[str | None, typer.Option(help="address to listen on")] = None,
    k: Annotated[int, typer.Option(min=1, max=16, help="similar training images shown")] = 8,
    max_points: Annotated[int, typer.Option(min=10, help="images drawn in the UMAP")] = 3000,
) -> None:
    """Start the Streamlit app: predict and explain, browse the data, read LOSO results."""
    import subprocess

    from leukoshift.app.launch import AppSettings, check_settings, streamlit_command

    settings = AppSettings(checkpoint, tuple(manifest or ()), results, k, max_points)
    check_settings(settings)
    cmd = streamlit_command(settings, port=port, address=address)
    console.print(f"starting the app on port {port} (Ctrl+C stops it)", markup=False)
    code = subprocess.call(cmd)
    if code:
        raise typer.Exit(code)


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="folder for everything the demo makes")] = Path("runs/demo"),
    set_: SetOpt = None,
) -> None:
    """The built-in default: three synthetic labs, pretraining, fine-tuning, LOSO and report."""
    from leukoshift.demo import run_demo

    report = run_demo(out, overrides=set_ or [])
    console.print(f"demo complete; open the report: {report}")


def main() -> None:
    try:
        app()
    except UserError as exc:
        # Messages name files and values; brackets in them are text, not rich markup.
        err_console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False)
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
