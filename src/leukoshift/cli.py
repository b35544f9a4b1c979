"""The ``leukoshift`` command line: thin typer commands, each calling one library function.

Errors a user can fix (a missing file, a bad config value, an unreadable manifest) end
the command with one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
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

console = Console()
err_console = Console(stderr=True)

ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML config file")]
SetOpt = Annotated[
    Optional[list[str]],
    typer.Option("--set", help="override a config value: dotted.key=value (repeatable)"),
]


def _not_built(name: str) -> None:
    err_console.print(f"[red]error:[/red] `leukoshift {name}` is not built yet")
    raise typer.Exit(2)


# ----------------------------------------------------------------------------- data


@data_app.command("import")
def data_import(
    fmt: Annotated[str, typer.Argument(help="pbc | munich | raabin | wbcseg | folder | unlabeled")],
    path: Annotated[Path, typer.Argument(help="folder in the publisher's layout")],
    source: Annotated[str, typer.Option("--source", "-s", help="lab name stored in the manifest")],
    out: Annotated[Path, typer.Option("--out", "-o", help="manifest CSV to write")],
    label_map: Annotated[
        Optional[Path], typer.Option(help="YAML 'folder name: CODE' for the folder format")
    ] = None,
    seed: Annotated[int, typer.Option(help="seed of the train/val/test split")] = 0,
    ratios: Annotated[str, typer.Option(help="train,val,test fractions")] = "0.8,0.1,0.1",
) -> None:
    """Import a published data set into a manifest (decodes every file once)."""
    from leukoshift.data.importers import duplicate_pairs, import_dataset, load_label_map, sidecar

    result = import_dataset(
        fmt, path, source, out, load_label_map(label_map), _parse_ratios(ratios), seed
    )
    console.print(f"{result.n_rows} images imported from {path} -> {out}")
    if result.rejected:
        console.print(f"[yellow]{len(result.rejected)} file(s) rejected[/yellow] (listed in {sidecar(out, 'rejected')}):")
        for r in result.rejected[:20]:
            console.print(f"  {r.path}: {r.reason}")
        if len(result.rejected) > 20:
            console.print(f"  ... and {len(result.rejected) - 20} more")
    if result.duplicate_groups:
        console.print(
            f"[yellow]{len(result.duplicate_groups)} group(s) of byte-identical files[/yellow] "
            f"({duplicate_pairs(result.duplicate_groups)} extra copies; kept in one split; "
            f"listed in {sidecar(out, 'duplicates')})"
        )
        for g in result.conflicts:
            rows = result.frame.loc[g]
            desc = ", ".join(f"{Path(p).name} ({lab or 'unlabeled'})" for p, lab in zip(rows["path"], rows["label"], strict=True))
            console.print(f"  [red]conflicting labels:[/red] {desc}")
    if result.outside_taxonomy:
        desc = ", ".join(f"{k} {v}" for k, v in sorted(result.outside_taxonomy.items()))
        console.print(f"{sum(result.outside_taxonomy.values())} row(s) outside the 11 classes kept unlabeled: {desc}")


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
    plot: Annotated[Optional[Path], typer.Option(help="write a bar chart of class counts per source")] = None,
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
        console.print(f"bar chart -> {plot}")


@data_app.command("split")
def data_split(
    manifest: Annotated[Path, typer.Argument(help="manifest CSV to re-split")],
    seed: int = 0,
    ratios: Annotated[str, typer.Option(help="train,val,test fractions")] = "0.8,0.1,0.1",
    out: Annotated[Optional[Path], typer.Option(help="write here instead of in place")] = None,
) -> None:
    """Seeded, stratified train/val/test per source; identical images share a split."""
    from leukoshift.data.manifest import read_manifest, write_manifest
    from leukoshift.data.splits import assign_splits

    m = read_manifest(manifest)
    m.frame["split"] = assign_splits(m.frame, _parse_ratios(ratios), seed)
    write_manifest(m, out or manifest)
    counts = m.frame.groupby(["source", "split"]).size().unstack(fill_value=0)
    console.print(counts.to_string())


@data_app.command("cache")
def data_cache(
    manifests: Annotated[list[Path], typer.Argument(help="manifest CSV(s)")],
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Decode and resize every image once into the memory-mapped cache (config: image.*)."""
    from leukoshift.config import ImageConfig, Strict, load_config
    from leukoshift.data.cache import build_cache
    from leukoshift.data.manifest import read_manifest

    class _CacheConfig(Strict):
        image: ImageConfig = ImageConfig()

    cfg = load_config(_CacheConfig, config, set_)
    for path in manifests:
        cache = build_cache(read_manifest(path), cfg.image)
        console.print(f"{path}: {cache.n} images -> {cache.path} ({len(cache.failed)} failed)")


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


@ssl_app.command("pretrain", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def ssl_pretrain() -> None:
    """Self-supervised pretraining (DINO / SimCLR) on unlabeled images."""
    _not_built("ssl pretrain")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def finetune() -> None:
    """Fine-tune a backbone on the 11 cell classes."""
    _not_built("finetune")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def evaluate() -> None:
    """Evaluate a checkpoint on a manifest."""
    _not_built("evaluate")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def predict() -> None:
    """Predict cell classes for image files or folders."""
    _not_built("predict")


@benchmark_app.command("loso", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def benchmark_loso() -> None:
    """Leave-one-source-out benchmark."""
    _not_built("benchmark loso")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def diagnose() -> None:
    """Embeddings, faiss kNN, lab mixing and UMAP of manifests."""
    _not_built("diagnose")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def explain() -> None:
    """Grad-CAM / attention maps for images."""
    _not_built("explain")


@app.command("app", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def app_cmd() -> None:
    """Start the interactive Streamlit app."""
    _not_built("app")


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="folder for everything the demo makes")] = Path("runs/demo"),
) -> None:
    """The built-in default: synthetic labs end to end (currently: the data step)."""
    from leukoshift.data.synth import render_labs

    manifest = render_labs(out / "data", labs=3, per_class=40, size=64, seed=0)
    data_summary([manifest], plot=out / "class_counts.png")
    console.print(f"demo data ready: {manifest}")


def main() -> None:
    try:
        app()
    except UserError as exc:
        err_console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
