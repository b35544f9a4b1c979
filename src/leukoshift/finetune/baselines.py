"""Classical baselines of the published project, on the same data layer and scoring.

- ``logreg``: logistic regression on downsampled pixels (65-70 % in the publication);
- ``svm``: penultimate features of a fine-tuned backbone fed to an RBF SVM (their
  VGG16+SVM), optionally on background-filtered images (``data.image.preprocess:
  background``).

Both train on the label codes present (a coarse NE row is its own class) and spread a
coarse class's probability evenly over its members, so the 11-class scoring applies
unchanged: group sums are exact, fine argmaxes never favour an untrained split.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import joblib
import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from leukoshift.config import FinetuneConfig, config_to_dict, save_config
from leukoshift.data.loaders import ImageTable
from leukoshift.errors import UserError
from leukoshift.eval.embed import embed_table, pixel_features
from leukoshift.taxonomy import label_mask

BaselineKind = Literal["logreg", "svm"]


@dataclass
class Baseline:
    """A fitted scikit-learn pipeline over label codes, answering 11-class probabilities."""

    pipeline: Pipeline
    features: Any  # (ImageTable) -> (N, D) array

    def predict_proba(self, table: ImageTable) -> np.ndarray:
        code_probs = np.zeros((len(table), label_mask().shape[0]))
        code_probs[:, self.pipeline.classes_] = self.pipeline.predict_proba(self.features(table))
        spread = label_mask(np.float64)
        spread /= spread.sum(axis=1, keepdims=True)
        return code_probs @ spread


def pixel_featurizer(side: int) -> Any:
    return lambda table: pixel_features(table, side=side)


def encoder_featurizer(checkpoint: Path) -> Any:
    """Penultimate features of any trained artefact: best.ckpt, SSL last.ckpt or an
    exported backbone.safetensors with its card."""
    from leukoshift.eval.evaluate import default_device
    from leukoshift.models.encoders import load_encoder

    device = default_device()
    encoder = load_encoder(checkpoint).encoder.to(device)
    return lambda table: embed_table(encoder, table, device=device, progress=False)


def fit_baseline(
    kind: BaselineKind, train: ImageTable, features: Any, seed: int = 0, max_train: int | None = None
) -> Baseline:
    labels = train.labels
    rows = np.flatnonzero(labels >= 0)
    if max_train is not None and len(rows) > max_train:
        rows = np.sort(np.random.default_rng(seed).choice(rows, max_train, replace=False))
    x = features(train.subset(rows))
    y = labels[rows]
    if kind == "logreg":
        clf: Any = LogisticRegression(max_iter=2000, C=0.1, random_state=seed)
    else:
        clf = SVC(kernel="rbf", C=10.0, gamma="scale", probability=True, class_weight="balanced", random_state=seed)
    pipeline = make_pipeline(StandardScaler(), clf)
    pipeline.fit(x, y)
    return Baseline(pipeline, features)


def run_baseline(
    cfg: FinetuneConfig,
    kind: BaselineKind,
    features_from: Path | None = None,
    pixel_side: int = 32,
    max_train: int | None = None,
    progress: bool = True,
) -> Path:
    """Fit a baseline on the train split; write ``metrics.json`` like a fine-tuning run.

    ``max_train`` caps the training rows (a seeded random subsample); by default 20,000
    for logreg and 6,000 for the SVM, whose fit grows quadratically with the rows and
    whose probability calibration fits it five more times.
    """
    if max_train is None:
        max_train = 6000 if kind == "svm" else 20000
    from leukoshift.finetune.train import check_config, load_tables, score_tables
    from leukoshift.training import default_run_dir, write_json

    check_config(cfg)
    if cfg.augment.normalize != "none":
        raise UserError(
            "augment.normalize: baselines take no stain normalisation of their own "
            "(a --features-from checkpoint applies the one it was trained with)"
        )
    if kind == "svm" and features_from is None:
        raise UserError("--baseline svm needs --features-from FILE (best.ckpt or backbone.safetensors)")
    if kind == "svm" and features_from is not None and not features_from.is_file():
        raise UserError(f"--features-from {features_from}: checkpoint not found")
    out = Path(cfg.out) if cfg.out is not None else default_run_dir("baseline", kind)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    started = time.time()
    tables = load_tables(cfg, progress)
    features = pixel_featurizer(pixel_side) if kind == "logreg" else encoder_featurizer(features_from)  # type: ignore[arg-type]
    baseline = fit_baseline(kind, tables.train, features, cfg.trainer.seed, max_train)
    metrics = score_tables(baseline.predict_proba, tables, cfg.data.external_classes)
    joblib.dump(baseline.pipeline, out / "model.joblib")
    metrics.update(
        baseline=kind,
        features_from=str(features_from) if features_from else f"pixels {pixel_side}x{pixel_side}",
        train_seconds=round(time.time() - started, 1),
        n_train=len(tables.train),
        config=config_to_dict(cfg),
    )
    write_json(out / "metrics.json", metrics)
    from leukoshift.finetune.train import _print_summary

    _print_summary(out, metrics)
    return out
