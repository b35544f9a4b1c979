"""``leukoshift evaluate`` and ``leukoshift predict``: a trained model on new images.

A checkpoint is a fine-tuning ``best.ckpt`` (or ``last.ckpt``). Its hyper-parameters
carry the resolved config, so the image size and the framing (``resize`` / ``centre`` /
``background``) used in training are applied again here: a model never sees images
prepared differently from the ones it learned on.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from leukoshift.config import ImageConfig
from leukoshift.data.cache import check_framing
from leukoshift.data.images import ImageReadError, load_rgb, prepare_image
from leukoshift.data.importers import IMAGE_EXTENSIONS
from leukoshift.data.loaders import ImageTable, load_table
from leukoshift.errors import UserError
from leukoshift.eval.embed import embed_table
from leukoshift.eval.metrics import Scores, predictions_frame, restrict_to, score


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_classifier(path: Path | str) -> Any:
    """A :class:`~leukoshift.finetune.module.ClassifierModule` from a Lightning checkpoint, in eval mode."""
    from leukoshift.finetune.module import ClassifierModule
    from leukoshift.models.checkpoints import read_checkpoint

    path = Path(path)
    raw = read_checkpoint(path)
    if "hyper_parameters" not in raw or "config" not in raw.get("hyper_parameters", {}):
        raise UserError(f"{path}: not a fine-tuning checkpoint (no hyper-parameters); pass the run's best.ckpt")
    model = ClassifierModule.load_from_checkpoint(path, map_location="cpu", weights_only=False)
    return model.eval()


def image_config_of(model: Any) -> ImageConfig:
    return model.cfg.data.image


def class_probabilities(model: Callable[[Tensor], Tensor], tta: bool = False) -> Callable[[Tensor], Tensor]:
    """``x -> model(x).softmax(1)`` in float32; with ``tta``, averaged over the eight
    dihedral views of each image (four 90-degree rotations, each also mirrored). Cells
    have no up and every recipe trains with these views, so the average asks the same
    question eight times and no longer depends on how a slide was turned; it costs eight
    forward passes. Square images only (every framing prepares them square)."""

    def plain(x: Tensor) -> Tensor:
        return model(x).float().softmax(1)

    def averaged(x: Tensor) -> Tensor:
        views = [torch.rot90(x, k, dims=(-2, -1)) for k in range(4)]
        return torch.stack([plain(v) for view in views for v in (view, view.flip(-1))]).mean(0)

    return averaged if tta else plain


def predict_table(
    model: Any,
    table: ImageTable,
    batch_size: int = 256,
    device: str | None = None,
    progress: bool = True,
    tta: bool = False,
) -> np.ndarray:
    """(N, 11) fine-class probabilities for every row of ``table`` (``tta``: averaged over
    each image's eight dihedral views, :func:`class_probabilities`)."""
    device = device or default_device()
    model = model.to(device).eval()
    return embed_table(class_probabilities(model, tta), table, batch_size=batch_size, device=device, progress=progress)


def evaluate_table(model: Any, table: ImageTable, level: str = "auto", progress: bool = False) -> Scores:
    probs = predict_table(model, table, progress=progress)
    return score(probs, list(table.frame["label"]), level=level)  # type: ignore[arg-type]


def _file_digest(path: Path) -> str:
    h = hashlib.sha1()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def run_evaluate(
    checkpoint: Path,
    manifests: Sequence[Path],
    out: Path,
    split: str = "test",
    level: str = "auto",
    batch_size: int = 256,
    classes: Sequence[str] | None = None,
    adapt_bn: bool = False,
    red_cell_px: float | None = None,
    tta: bool = False,
) -> dict[str, Any]:
    """Score ``checkpoint`` on the labelled rows of ``split`` and write everything to ``out``.

    ``classes``: the manifests' label set (e.g. the five white-cell types); predictions are
    restricted to it before scoring (:func:`~leukoshift.eval.metrics.restrict_to`), in
    ``predictions.csv`` as well. ``adapt_bn``: each source's rows are predicted by a copy
    of the model whose batch-norm statistics are re-estimated on that source's images
    (:mod:`leukoshift.eval.adapt`; labels unused). ``red_cell_px``: ruler-framed models
    frame every row at this scale (a lab the model was not given a scale for). ``tta``:
    each image's probabilities averaged over its eight dihedral views.
    """
    from leukoshift.eval.plots import confusion_png
    from leukoshift.training import write_json

    model = load_classifier(checkpoint)
    image = image_config_of(model).scaled(red_cell_px)
    check_framing(image, manifests)
    table = load_table(manifests, image, split=split, labelled=True)
    if len(table) == 0:
        raise UserError(f"no labelled rows in split {split!r} of {', '.join(map(str, manifests))} (try --split all)")
    if adapt_bn:
        from leukoshift.eval.adapt import predict_adapted

        probs = predict_adapted(model, table, batch_size=batch_size, device=default_device(), progress=True, tta=tta)
    else:
        probs = predict_table(model, table, batch_size=batch_size, tta=tta)
    if classes:
        probs = restrict_to(probs, classes)
    scores = score(probs, list(table.frame["label"]), level=level)  # type: ignore[arg-type]
    out.mkdir(parents=True, exist_ok=True)
    preds = predictions_frame(probs, list(table.frame["path"]), truth=list(table.frame["label"]), level=level)  # type: ignore[arg-type]
    preds.insert(1, "source", table.frame["source"].to_numpy())
    preds.to_csv(out / "predictions.csv", index=False)
    scores.confusion.to_csv(out / "confusion.csv")
    confusion_png(scores.confusion, out / "confusion.png")
    scores.per_class.to_csv(out / "per_class.csv")
    metrics = {
        **scores.to_dict(),
        "checkpoint": str(checkpoint),
        "checkpoint_sha1": _file_digest(checkpoint),
        "manifests": {str(m): _file_digest(Path(m)) for m in manifests},
        "split": split,
        "classes": list(classes) if classes else None,
        "adapt_bn": adapt_bn,
        "tta": tta,
        "image": image.model_dump(mode="json"),
    }
    write_json(out / "metrics.json", metrics)
    return metrics


def collect_images(paths: Sequence[Path]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Files and folders -> image files (folders walked recursively) and skipped entries."""
    files: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    for p in paths:
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                skipped.append((p, "folder holds no image files"))
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            skipped.append((p, "not found"))
    return files, skipped


def run_predict(
    checkpoint: Path,
    paths: Sequence[Path],
    out_csv: Path,
    threshold: float = 0.5,
    batch_size: int = 64,
    source: str | None = None,
    red_cell_px: float | None = None,
    tta: bool = False,
) -> pd.DataFrame:
    """Predict files and folders; unreadable files are listed and skipped, never fatal.
    ``tta``: probabilities averaged over each image's eight dihedral views.

    A ``ruler``-framed model frames the images by ``red_cell_px`` when given, else by the
    scale it was trained with for ``source`` (or its '*' entry); neither: one-line error
    before any image is read.
    """
    model = load_classifier(checkpoint)
    image = image_config_of(model).scaled(red_cell_px)
    if image.preprocess == "ruler":
        image.ruler_px(source)
    files, skipped = collect_images(paths)
    arrays, kept = [], []
    for f in files:
        try:
            arr, _ = prepare_image(load_rgb(f), image, source)
        except ImageReadError as exc:
            skipped.append((f, str(exc).split(": ", 1)[-1]))
            continue
        arrays.append(arr.transpose(2, 0, 1))
        kept.append(f)
    for f, why in skipped:
        print(f"skipped {f}: {why}")
    if not kept:
        raise UserError("no readable image among the inputs")
    device = default_device()
    model = model.to(device)
    probabilities = class_probabilities(model, tta)
    probs = []
    with torch.inference_mode():
        for i in range(0, len(arrays), batch_size):
            x = torch.from_numpy(np.stack(arrays[i : i + batch_size])).to(device).float() / 255.0
            probs.append(probabilities(x).cpu().numpy())
    frame = predictions_frame(np.concatenate(probs), [str(f) for f in kept], threshold=threshold)
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out_csv, index=False)
    low = int(frame["low_confidence"].sum())
    print(f"{len(frame)} image(s) predicted -> {out_csv}; {low} below confidence {threshold}; {len(skipped)} skipped")
    return frame
