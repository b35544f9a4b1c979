"""``leukoshift benchmark loso``: leave-one-source-out, the question every user asks.

For each held-out source and seed, every method is run with the held-out lab kept out of
training and out of model selection (and, unless ``transductive: true``, out of
self-supervised pretraining), then scored on that lab at the finest level it shares with
training. Training rows whose bytes equal a held-out image are dropped too, so a copy of a
test image can never leak in through another source.

Each (held-out source, method, seed) writes its own folder and a ``result.json`` when it
is complete; a killed benchmark resumes by skipping complete folders. Methods are named
recipes in the config; adding one is one entry:

    methods:
      supervised: {kind: finetune}
      supervised+stain: {kind: finetune, finetune: {augment: {stain: {p: 0.8}}}}
      dino+ft: {kind: ssl, pretrain: {method: dino}}
      dino+linear: {kind: ssl, pretrain: {method: dino}, finetune: {mode: linear}}
      logreg: {kind: logreg}
      features+svm: {kind: svm, features_of: supervised}
"""

from __future__ import annotations

import copy
import fcntl
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import Field, model_validator

from leukoshift.config import (
    ConfigError,
    FinetuneConfig,
    ImageConfig,
    PretrainConfig,
    Strict,
    config_to_dict,
    save_config,
)
from leukoshift.data.cache import check_framing
from leukoshift.data.loaders import ImageTable, load_table
from leukoshift.data.manifest import read_manifests
from leukoshift.errors import UserError
from leukoshift.eval.metrics import ScoreLevel
from leukoshift.taxonomy import group_of, is_fine
from leukoshift.training import config_hash, derived_seed, write_json

MethodKind = Literal["finetune", "ssl", "logreg", "svm"]
TestTime = Literal["label_set", "adabn"]


class LosoMethod(Strict):
    kind: MethodKind = Field("finetune", description="finetune: supervised; ssl: pretrain then fine-tune; logreg; svm")
    pretrain: dict[str, Any] = Field(default_factory=dict, description="overrides of the benchmark's pretrain section")
    finetune: dict[str, Any] = Field(default_factory=dict, description="overrides of the benchmark's finetune section")
    features_of: str | None = Field(None, description="svm: the method whose fine-tuned model gives the features")
    pixel_side: int = Field(32, ge=4, le=256, description="logreg: side of the downsampled pixels")
    description: str = ""


class SlurmConfig(Strict):
    partition: str | None = None
    timeout_min: int = Field(240, ge=1)
    gpus_per_node: int = Field(1, ge=0)
    cpus_per_task: int = Field(8, ge=1)
    mem_gb: int = Field(64, ge=1)
    additional_parameters: dict[str, Any] = Field(default_factory=dict)


class LosoConfig(Strict):
    name: str = "loso"
    labelled: list[Path] = Field(
        default_factory=list, description="labelled manifests; folds come from their source column"
    )
    unlabeled: list[Path] = Field(default_factory=list, description="extra images for the pretraining pool")
    external: list[Path] = Field(default_factory=list, description="manifests always scored, never trained on")
    held_out: list[str] | None = Field(None, description="sources to hold out (default: every labelled source)")
    transductive: bool = Field(False, description="let pretraining see the held-out lab's images (never its labels)")
    seeds: list[int] = Field(default_factory=lambda: [0])
    image: ImageConfig = Field(default_factory=ImageConfig)
    finetune: dict[str, Any] = Field(default_factory=dict, description="base fine-tuning config for every method")
    pretrain: dict[str, Any] = Field(default_factory=dict, description="base pretraining config for ssl methods")
    methods: dict[str, LosoMethod] = Field(default_factory=lambda: {"supervised": LosoMethod()})
    test_time: list[TestTime] = Field(
        default_factory=list,
        description="also score every network's held-out predictions with test-time fixes, reported as "
        "extra methods '<method> +<fix>': label_set restricts predictions to the codes the held-out "
        "lab's rows carry (`evaluate --classes`), adabn re-estimates batch-norm statistics on its "
        "images (`evaluate --adapt-bn`; CNNs with batch norm), both gives '+adabn+label_set' too; "
        "adding one to a finished benchmark rescores it without retraining",
    )
    diagnose_points: int = Field(3000, ge=0, description="rows for the report's UMAP and lab-mixing (0: skip)")
    slurm: SlurmConfig = Field(default_factory=SlurmConfig)
    out: Path = Path("runs/loso")

    @model_validator(mode="after")
    def _methods_consistent(self) -> LosoConfig:
        if not self.methods:
            raise ValueError("methods: give at least one method")
        for name, m in self.methods.items():
            if m.kind == "svm":
                dep = self.methods.get(m.features_of or "")
                if dep is None or dep.kind not in ("finetune", "ssl"):
                    raise ValueError(f"methods.{name}.features_of: name a finetune or ssl method of this config")
        if not self.seeds:
            raise ValueError("seeds: give at least one seed")
        return self


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "kwargs":
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


@dataclass(frozen=True)
class Task:
    held_out: str
    method: str
    seed: int

    @property
    def key(self) -> str:
        return f"{self.held_out}/{self.method}/seed{self.seed}"


class Loso:
    """A resolved benchmark: validated configs for every task, folders, and the runner."""

    def __init__(self, cfg: LosoConfig) -> None:
        self.cfg = cfg
        self.out = Path(cfg.out)
        for path in [*cfg.labelled, *cfg.unlabeled, *cfg.external]:
            if not Path(path).is_file():
                raise UserError(f"{path}: manifest not found")
        if not cfg.labelled:
            raise UserError("labelled: give at least one labelled manifest")
        self.frame = read_manifests(cfg.labelled).frame
        sources = sorted(self.frame.loc[self.frame["label"] != "", "source"].unique())
        held = cfg.held_out if cfg.held_out is not None else sources
        unknown = sorted(set(held) - set(sources))
        if unknown:
            raise UserError(f"held_out: {', '.join(unknown)} not among the labelled sources {', '.join(sources)}")
        if len(sources) < 2:
            raise UserError(f"leave-one-source-out needs two labelled sources, found {', '.join(sources)}")
        self.held_out = list(held)
        # Dependencies (svm on another method's model) run first within each fold.
        order = sorted(cfg.methods, key=lambda n: cfg.methods[n].kind == "svm")
        self.tasks = [Task(h, m, s) for h in self.held_out for s in cfg.seeds for m in order]
        for task in self.tasks:  # every config is validated before any work starts
            self.finetune_config(task)
            if cfg.methods[task.method].kind == "ssl":
                self.pretrain_config(task)

    # ------------------------------------------------------------------ configs

    def task_dir(self, task: Task) -> Path:
        return self.out / "runs" / _safe(task.held_out) / _safe(task.method) / f"seed{task.seed}"

    def _validated(self, schema: type, data: dict[str, Any], where: str) -> Any:
        try:
            return schema.model_validate(data)
        except Exception as exc:  # pydantic ValidationError
            errors = getattr(exc, "errors", None)
            if errors is None:
                raise
            err = errors()[0]
            loc = ".".join(str(p) for p in err["loc"])
            raise ConfigError(f"{where}: {loc}: {err['msg']}") from None

    def finetune_config(self, task: Task) -> FinetuneConfig:
        method = self.cfg.methods[task.method]
        data = deep_merge(self.cfg.finetune, method.finetune)
        data = deep_merge(
            data,
            {
                "data": {
                    "manifests": [str(p) for p in self.cfg.labelled],
                    "exclude_sources": [task.held_out],
                    "external": [str(p) for p in self.cfg.external],
                    "image": {**self.cfg.image.model_dump(mode="json"), **data.get("data", {}).get("image", {})},
                },
                "trainer": {
                    "seed": derived_seed(
                        task.seed, task.method, str(data.get("model", {}).get("backbone")), task.held_out
                    )
                },
                "out": str(self.task_dir(task)),
            },
        )
        if method.kind == "ssl":
            data = deep_merge(data, {"model": {"init": str(self.pretrain_dir(task) / "backbone.safetensors")}})
        return self._validated(FinetuneConfig, data, f"methods.{task.method}.finetune")

    def pretrain_config(self, task: Task, out: Path | None = None) -> PretrainConfig:
        method = self.cfg.methods[task.method]
        data = deep_merge(self.cfg.pretrain, method.pretrain)
        finetune_model = deep_merge(self.cfg.finetune, method.finetune).get("model", {})
        framing = self.cfg.image.model_dump(
            mode="json",
            include={"preprocess", "centre_margin", "centre_min_fraction", "red_cell_px", "ruler_field", "ruler_scale"},
        )
        base = {
            "model": {
                "backbone": finetune_model.get("backbone", "resnet18"),
                "kwargs": finetune_model.get("kwargs", {}),
            },
            "data": {"image": framing},
        }
        data = deep_merge(base, data)
        data = deep_merge(
            data,
            {
                "data": {
                    "manifests": [str(p) for p in self.cfg.labelled],
                    "unlabeled": [str(p) for p in self.cfg.unlabeled],
                    "exclude_sources": [] if self.cfg.transductive else [task.held_out],
                },
                "trainer": {"seed": derived_seed(task.seed, "pretrain", task.held_out)},
            },
        )
        if out is not None:
            data["out"] = str(out)
        return self._validated(PretrainConfig, data, f"methods.{task.method}.pretrain")

    def pretrain_dir(self, task: Task) -> Path:
        """Shared by methods whose pretraining is identical (dino+ft and dino+linear)."""
        digest = config_hash(config_to_dict(self.pretrain_config(task)))
        return self.out / "pretrain" / _safe(task.held_out) / f"{digest}-seed{task.seed}"

    # ------------------------------------------------------------------ running

    def is_complete(self, task: Task) -> bool:
        result = self.task_dir(task) / "result.json"
        if not result.is_file():
            return False
        try:
            return json.loads(result.read_text()).get("config_hash") == self.task_hash(task)
        except json.JSONDecodeError:
            return False

    def task_hash(self, task: Task) -> str:
        parts: dict[str, Any] = {
            "finetune": config_to_dict(self.finetune_config(task)),
            "method": self.cfg.methods[task.method].model_dump(mode="json"),
        }
        if self.cfg.methods[task.method].kind == "ssl":
            parts["pretrain"] = config_to_dict(self.pretrain_config(task))
        return config_hash(parts)

    def run_task(self, task: Task, progress: bool = False) -> dict[str, Any]:
        folder = self.task_dir(task)
        if self.is_complete(task):
            result = self.result(task)
            if self.missing_variants(task, result):
                result["variants"] = self._score_variants(task, self.finetune_config(task))
                write_json(folder / "result.json", result)
            return result
        method = self.cfg.methods[task.method]
        folder.mkdir(parents=True, exist_ok=True)
        ft_cfg = self.finetune_config(task)
        if method.kind == "ssl":
            self._pretrain(task, progress)
        predict, in_domain = self._train(task, ft_cfg, progress)
        result = self._score_held_out(task, ft_cfg, predict)
        result.update(
            in_domain=in_domain.get("test") or in_domain.get("val"),
            external=in_domain.get("external", {}),
            config_hash=self.task_hash(task),
            task=task.key,
        )
        if self.cfg.test_time and method.kind in ("finetune", "ssl"):
            result["variants"] = self._score_variants(task, ft_cfg)
        write_json(folder / "result.json", result)
        return result

    def result(self, task: Task) -> dict[str, Any]:
        return json.loads((self.task_dir(task) / "result.json").read_text())

    def variant_names(self) -> list[str]:
        """The test-time variants ``test_time`` asks for, e.g. ``["adabn", "label_set", "adabn+label_set"]``."""
        asked = dict.fromkeys(self.cfg.test_time)
        names: list[str] = list(asked)
        if len(asked) == 2:
            names.append("adabn+label_set")
        return names

    def missing_variants(self, task: Task, result: dict[str, Any]) -> bool:
        """A complete network task whose result lacks a variant asked for since (or an
        adabn skip recorded for a model without batch norm, which is not missing)."""
        if self.cfg.methods[task.method].kind not in ("finetune", "ssl"):
            return False
        have = result.get("variants", {})
        return any(v not in have for v in self.variant_names())

    def _pretrain(self, task: Task, progress: bool) -> Path:
        from leukoshift.pretrain.train import run_pretrain

        folder = self.pretrain_dir(task)
        folder.mkdir(parents=True, exist_ok=True)
        with _locked(folder / ".lock"):  # slurm jobs of two methods may share it
            run_pretrain(self.pretrain_config(task, folder), progress=progress)
        return folder

    def _train(
        self, task: Task, ft_cfg: FinetuneConfig, progress: bool
    ) -> tuple[Callable[[ImageTable], np.ndarray], dict[str, Any]]:
        method = self.cfg.methods[task.method]
        folder = self.task_dir(task)
        if method.kind in ("finetune", "ssl"):
            from leukoshift.eval.evaluate import load_classifier, predict_table
            from leukoshift.finetune.train import run_finetune

            run_finetune(
                ft_cfg.model_copy(update={"trainer": ft_cfg.trainer.model_copy(update={"progress": progress})}),
                progress=progress,
            )
            model = load_classifier(folder / "best.ckpt")
            metrics = json.loads((folder / "metrics.json").read_text())
            return (lambda t: predict_table(model, t, progress=False)), metrics
        from leukoshift.finetune.baselines import run_baseline

        features_from = None
        if method.kind == "svm":
            features_from = self.task_dir(Task(task.held_out, method.features_of or "", task.seed)) / "best.ckpt"
        run_baseline(ft_cfg, method.kind, features_from, pixel_side=method.pixel_side, progress=progress)  # type: ignore[arg-type]
        import joblib

        from leukoshift.finetune.baselines import Baseline, encoder_featurizer, pixel_featurizer

        features = pixel_featurizer(method.pixel_side) if features_from is None else encoder_featurizer(features_from)
        baseline = Baseline(joblib.load(folder / "model.joblib"), features)
        return baseline.predict_proba, json.loads((folder / "metrics.json").read_text())

    def _held_out_table(self, task: Task, ft_cfg: FinetuneConfig) -> tuple[ImageTable, ScoreLevel, dict[str, int]]:
        """The held-out lab's rows that can be scored, the level they are scored at, and
        the rows left out (by code)."""
        train_codes = set(
            self.frame.loc[(self.frame["source"] != task.held_out) & (self.frame["label"] != ""), "label"]
        )
        table = load_table(
            self.cfg.labelled, ft_cfg.data.image, split="all", sources=[task.held_out], labelled=True, progress=False
        )
        level, keep, excluded = shared_level(list(table.frame["label"]), train_codes)
        if not keep.any():
            raise UserError(f"held-out source {task.held_out}: none of its classes occurs in the other sources")
        return table.where(keep), level, excluded

    def _score_variants(self, task: Task, ft_cfg: FinetuneConfig) -> dict[str, Any]:
        """{variant: scores} of the task's best.ckpt on its held-out lab, per ``test_time``;
        adabn on a model without batch norm is recorded as ``{"skipped": why}``."""
        from leukoshift.eval.adapt import batchnorm_layers, predict_adapted
        from leukoshift.eval.evaluate import load_classifier
        from leukoshift.eval.metrics import score

        kept, level, _ = self._held_out_table(task, ft_cfg)
        # the plain predictions of these rows, saved when the task was scored
        plain = np.load(self.task_dir(task) / "held_out_probs.npy")
        truth = list(kept.frame["label"])
        label_set = sorted(set(truth))
        model = load_classifier(self.task_dir(task) / "best.ckpt")
        out: dict[str, Any] = {}
        adapted: np.ndarray | None = None
        for name in self.variant_names():
            if "adabn" in name:
                if not batchnorm_layers(model):
                    out[name] = {"skipped": "the model has no batch-norm layers"}
                    continue
                adapted = predict_adapted(model, kept) if adapted is None else adapted
                probs = adapted
            else:
                probs = plain
            classes = label_set if "label_set" in name else None
            out[name] = {**score(probs, truth, level=level, classes=classes).to_dict(), "classes": classes}
        return out

    def _score_held_out(
        self, task: Task, ft_cfg: FinetuneConfig, predict: Callable[[ImageTable], np.ndarray]
    ) -> dict[str, Any]:
        from leukoshift.eval.metrics import score

        kept, level, excluded = self._held_out_table(task, ft_cfg)
        probs = predict(kept)
        scores = score(probs, list(kept.frame["label"]), level=level)
        np.save(self.task_dir(task) / "held_out_probs.npy", probs)
        kept.frame[["path", "label"]].to_csv(self.task_dir(task) / "held_out_rows.csv", index=False)
        return {
            "held_out": task.held_out,
            "method": task.method,
            "seed": task.seed,
            "scores": scores.to_dict(),
            "n_excluded": excluded,
            "level": level,
        }


def shared_level(
    truth: list[str], train_codes: set[str]
) -> tuple[Literal["fine", "group"], np.ndarray, dict[str, int]]:
    """The finest level a held-out source shares with training, rows kept, and rows excluded.

    Fine when every held-out label is a fine class that training also has at the fine
    level; otherwise the group level, where rows whose group no training row carries are
    left out (and counted by code).
    """
    train_fine = {c for c in train_codes if is_fine(c)}
    if all(is_fine(c) and c in train_fine for c in truth):
        return "fine", np.ones(len(truth), dtype=bool), {}
    train_groups = {group_of(c) for c in train_codes}
    keep = np.array([group_of(c) in train_groups for c in truth])
    excluded: dict[str, int] = {}
    for c, k in zip(truth, keep, strict=True):
        if not k:
            excluded[c] = excluded.get(c, 0) + 1
    return "group", keep, excluded


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_.+" else "_" for ch in name)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# ----------------------------------------------------------------------------- execution


def run_loso(
    cfg: LosoConfig,
    executor: Literal["local", "slurm"] = "local",
    progress: bool = True,
    methods: list[str] | None = None,
    report_only: bool = False,
) -> Path:
    """Run (or resume) every task, aggregate the results and write the report.

    ``methods`` restricts this invocation to some of the config's methods (e.g. one
    process per method on a shared GPU); results land in the same folders, and a later
    run over all methods finds them complete and only aggregates. ``report_only`` trains
    nothing: it aggregates the complete tasks and lists the missing ones.
    """
    from leukoshift.progress import progress_iter

    loso = Loso(cfg)
    check_framing(cfg.image, [*cfg.labelled, *cfg.unlabeled])
    if methods:
        unknown = sorted(set(methods) - set(cfg.methods))
        if unknown:
            raise UserError(f"--methods: {', '.join(unknown)} not in the config; valid: {', '.join(cfg.methods)}")
        needed = set(methods) | {cfg.methods[m].features_of for m in methods if cfg.methods[m].features_of}
        loso.tasks = [t for t in loso.tasks if t.method in needed]
    loso.out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, loso.out / "config.yaml")
    todo = [t for t in loso.tasks if not loso.is_complete(t)]
    if loso.cfg.test_time and not report_only:
        # complete, but without a test-time score asked for since: rescored, not retrained
        todo += [t for t in loso.tasks if t not in todo and loso.missing_variants(t, loso.result(t))]
    n_methods = len({t.method for t in loso.tasks})
    print(
        f"{len(loso.tasks)} runs ({len(loso.held_out)} held-out sources x {n_methods} methods x "
        f"{len(cfg.seeds)} seeds); {len(loso.tasks) - len(todo)} already complete"
    )
    if report_only:
        if todo:
            print(f"not complete (left out of the report): {', '.join(t.key for t in todo)}")
            loso.tasks = [t for t in loso.tasks if t not in todo]
        if not loso.tasks:
            raise UserError(f"{loso.out}: no complete run to report")
    elif executor == "slurm":
        _run_slurm(loso, todo)
    else:
        for task in progress_iter(todo, total=len(todo), label="loso", enabled=progress):
            print(f"--- {task.key}")
            loso.run_task(task)
    results = [loso.result(t) for t in loso.tasks]
    tables = aggregate(results)
    tables.runs.to_csv(loso.out / "runs.csv", index=False)
    tables.summary.to_csv(loso.out / "results.csv", index=False)
    write_json(loso.out / "results.json", {"summary": tables.summary.to_dict(orient="records"), "runs": results})
    from leukoshift.eval.loso_report import write_loso_report

    _, html = write_loso_report(loso, results, tables)
    print(tables.pivot("macro_f1").to_string(float_format=lambda v: f"{v:.3f}"))
    print(f"report: {html}")
    return loso.out


def _run_slurm(loso: Loso, todo: list[Task]) -> None:
    import submitit

    executor = submitit.AutoExecutor(folder=str(loso.out / "slurm"))
    s = loso.cfg.slurm
    params: dict[str, Any] = {
        "timeout_min": s.timeout_min,
        "gpus_per_node": s.gpus_per_node,
        "cpus_per_task": s.cpus_per_task,
        "mem_gb": s.mem_gb,
    }
    if s.partition:
        params["slurm_partition"] = s.partition
    if s.additional_parameters:
        params["slurm_additional_parameters"] = s.additional_parameters
    executor.update_parameters(name=f"loso-{loso.cfg.name}", **params)
    # Two waves: methods whose features come from another method's model wait for it.
    for wave in (
        [t for t in todo if loso.cfg.methods[t.method].kind != "svm"],
        [t for t in todo if loso.cfg.methods[t.method].kind == "svm"],
    ):
        if not wave:
            continue
        jobs = executor.map_array(_slurm_task, [loso.cfg.model_dump(mode="json")] * len(wave), wave)
        print(f"submitted {len(jobs)} slurm jobs ({jobs[0].job_id.split('_')[0]})")
        for job in jobs:
            job.result()


def _slurm_task(cfg: dict[str, Any], task: Task) -> str:
    Loso(LosoConfig.model_validate(cfg)).run_task(task)
    return task.key


# ----------------------------------------------------------------------------- results


@dataclass
class LosoTables:
    runs: pd.DataFrame  # one row per (held-out, method, seed)
    summary: pd.DataFrame  # one row per (held-out, method): mean and std over seeds

    def pivot(self, metric: str = "macro_f1") -> pd.DataFrame:
        """Methods x held-out sources of the mean ``metric``, with the mean over sources."""
        table = self.summary.pivot(index="method", columns="held_out", values=f"{metric}_mean")
        table["mean"] = table.mean(axis=1)
        return table


METRICS = ("macro_f1", "balanced_accuracy", "accuracy")


def aggregate(results: list[dict[str, Any]]) -> LosoTables:
    """Runs and per-(held-out, method) summaries; a result's test-time variants become
    methods of their own ('supervised +adabn'), with the in-domain score of the model
    they rescore (test-time fixes change nothing in the training lab)."""
    rows = []
    for r in results:
        ind = r.get("in_domain") or {}
        scored = [(r["method"], r["scores"])]
        scored += [(f"{r['method']} +{v}", s) for v, s in r.get("variants", {}).items() if "skipped" not in s]
        for method, s in scored:
            rows.append(
                {
                    "held_out": r["held_out"],
                    "method": method,
                    "seed": r["seed"],
                    "level": r["level"],
                    "n": s["n"],
                    "n_excluded": sum(r.get("n_excluded", {}).values()),
                    **{m: s[m] for m in METRICS},
                    **{f"in_domain_{m}": ind.get(m, np.nan) for m in METRICS},
                }
            )
    runs = pd.DataFrame(rows)
    agg: dict[str, Any] = {
        "level": ("level", "first"),
        "n": ("n", "first"),
        "n_excluded": ("n_excluded", "first"),
        "seeds": ("seed", "count"),
    }
    for m in METRICS:
        agg[f"{m}_mean"] = (m, "mean")
        agg[f"{m}_std"] = (m, lambda x: float(np.std(x, ddof=1)) if len(x) > 1 else 0.0)
        agg[f"in_domain_{m}_mean"] = (f"in_domain_{m}", "mean")
    summary = runs.groupby(["held_out", "method"], sort=False).agg(**agg).reset_index()
    summary["gap_macro_f1"] = summary["in_domain_macro_f1_mean"] - summary["macro_f1_mean"]
    return LosoTables(runs, summary)
