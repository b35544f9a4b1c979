"""Typed experiment configs: YAML files plus ``--set dotted.key=value`` overrides.

Every section is a pydantic model that forbids unknown keys, so a typo or a bad value
fails with one line naming the field before any work starts. The resolved config is
written into the run folder (:func:`save_config`) so a run can be repeated exactly.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from leukoshift.errors import UserError

T = TypeVar("T", bound=BaseModel)


class ConfigError(UserError):
    """A config problem, already phrased as one line naming the file or field."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True, protected_namespaces=())


# ----------------------------------------------------------------------------- sections


class ImageConfig(Strict):
    """How images become fixed-size uint8 arrays in the cache (decode once)."""

    size: int = Field(64, ge=8, le=1024, description="side of the square cached image, px")
    preprocess: Literal["resize", "centre", "background", "ruler"] = Field(
        "resize",
        description="resize: whole image squeezed to a square; centre: square crop around "
        "the located white cell, so a cell spans the same fraction of the image in every "
        "lab; background: centre plus surroundings blanked (the published filtering); "
        "ruler: square crop of ruler_field red-cell diameters around the located cell, so "
        "a cell's size in the image is its size on the slide in every lab (needs red_cell_px)",
    )
    centre_margin: float = Field(1.8, gt=0.5, le=8.0, description="crop side / located cell size for centre")
    centre_min_fraction: float = Field(
        0.25, gt=0.0, le=1.0, description="smallest crop side as a fraction of the short side"
    )
    red_cell_px: dict[str, float] = Field(
        default_factory=dict,
        description="ruler: median red-cell diameter in px per source (`leukoshift data ruler` "
        "measures it); the key '*' serves images of any other source (predict, the app)",
    )
    ruler_field: float = Field(3.0, gt=1.0, le=10.0, description="ruler: crop side in red-cell diameters")
    ruler_scale: Literal["lab", "image"] = Field(
        "lab",
        description="ruler: lab: the lab's red_cell_px for every image; image: each image's own red cells "
        "set its scale where it shows at least two at a plausible size (0.6-1.7x the lab's), else the "
        "lab's (a lab may image classes at different magnifications: Bio-net does)",
    )
    cache_dir: Path | None = Field(None, description="where cached arrays live; default: .cache/ beside each manifest")

    @field_validator("red_cell_px")
    @classmethod
    def _positive_px(cls, value: dict[str, float]) -> dict[str, float]:
        bad = [k for k, v in value.items() if not v > 0]
        if bad:
            raise ValueError(f"red-cell diameters must be > 0 px (source {bad[0]!r})")
        return value

    def scaled(self, red_cell_px: float | None) -> ImageConfig:
        """This framing with every image at ``red_cell_px`` (ruler framing of images from a
        lab the config does not name); unchanged when None."""
        return self if red_cell_px is None else self.model_copy(update={"red_cell_px": {"*": red_cell_px}})

    def ruler_px(self, source: str | None) -> float:
        """The red-cell diameter (px) to frame an image of ``source`` with ('*' for others)."""
        px = self.red_cell_px.get(source or "*", self.red_cell_px.get("*"))
        if px is None:
            known = ", ".join(sorted(self.red_cell_px)) or "none"
            raise ConfigError(
                f"image.red_cell_px has no entry for source {source or '(unknown)'!r} (has: {known}); "
                "measure it with `leukoshift data ruler MANIFEST` or set '*'"
            )
        return px


class ImageOnlyConfig(Strict):
    """Config of the commands that only read images (``data cache``, ``data appearance``):
    ``image.*`` alone, e.g. ``--set image.size=96 --set image.preprocess=centre``."""

    image: ImageConfig = Field(default_factory=ImageConfig)


class DataConfig(Strict):
    manifests: list[Path] = Field(default_factory=list, description="labelled manifests (CSV)")
    unlabeled: list[Path] = Field(
        default_factory=list, description="extra manifests whose labels are ignored (SSL pool)"
    )
    exclude_sources: list[str] = Field(default_factory=list)
    external: list[Path] = Field(default_factory=list, description="manifests evaluated in full after training")
    external_classes: list[str] = Field(
        default_factory=list,
        description="label set the external labs use, e.g. [NE, EO, BA, LY, MO] for labs that label "
        "white cells only: they are scored a second time with predictions restricted to it "
        "(metrics.json `external_within`, beside the unrestricted `external`); empty: not at all",
    )
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"
    batch_size: int = Field(64, ge=1)
    source_balance: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="training draws per source in proportion to its size ** (1 - x): 0 keeps "
        "the pool's proportions, 1 draws every source equally often (a small lab's images "
        "repeat), 0.5 by the square root of its size; same epoch length, drawn with replacement",
    )
    num_workers: int | Literal["auto"] = Field(
        "auto",
        description="loader processes; auto: 0 without a GPU (cached uint8 batches are cheaper "
        "to gather in-process), up to 8 with one so reading overlaps the device step",
    )
    image: ImageConfig = Field(default_factory=ImageConfig)

    @field_validator("external_classes")
    @classmethod
    def _known_codes(cls, v: list[str]) -> list[str]:
        from leukoshift.taxonomy import validate_codes

        validate_codes(v)  # a LabelError is a ValueError: pydantic reports it on the field
        return v


class ModelConfig(Strict):
    backbone: str = Field("resnet18", description="a name from leukoshift.models.BACKBONES")
    init: Path | None = Field(None, description="local weights: .safetensors, .pth or Lightning .ckpt")
    pretrained: bool = Field(False, description="timm hub weights (needs network access)")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="extra timm.create_model arguments, e.g. depth: 2")
    drop_rate: float = Field(0.0, ge=0.0, lt=1.0, description="dropout before the head")


class GeometryAugConfig(Strict):
    flips: bool = True
    rot90: bool = True
    rotation: float = Field(180.0, ge=0.0, le=180.0, description="free rotation, degrees")
    shear: float = Field(10.0, ge=0.0, le=45.0, description="degrees")
    crop_scale: tuple[float, float] = Field((0.8, 1.0), description="random resized crop area")
    zoom: tuple[float, float] = Field(
        (1.0, 1.0), description="random zoom factor; < 1 zooms out (mirrored border), > 1 in"
    )

    @field_validator("crop_scale", "zoom")
    @classmethod
    def _ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 < v[0] <= v[1]:
            raise ValueError(f"needs 0 < low <= high, got {list(v)}")
        return v


class ColourAugConfig(Strict):
    p: float = Field(0.0, ge=0.0, le=1.0, description="probability of colour jitter")
    brightness: float = Field(0.2, ge=0.0)
    contrast: float = Field(0.2, ge=0.0)
    saturation: float = Field(0.2, ge=0.0)
    hue: float = Field(0.05, ge=0.0, le=0.5)
    grayscale_p: float = Field(0.0, ge=0.0, le=1.0)
    blur_p: float = Field(0.0, ge=0.0, le=1.0)
    solarize_p: float = Field(0.0, ge=0.0, le=1.0)
    blur_sigma: tuple[float, float] = Field(
        (0.1, 2.0),
        description="Gaussian blur sigma range in px at 224 px (DINO/SimCLR), scaled to the "
        "image size so a 64 px image is blurred as much relative to the cell",
    )

    @field_validator("blur_sigma")
    @classmethod
    def _ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 < v[0] <= v[1]:
            raise ValueError(f"needs 0 < low <= high, got {list(v)}")
        return v


class StainAugConfig(Strict):
    """Tellez et al. 2019 HED jitter: each stain's concentration scaled and shifted."""

    p: float = Field(0.0, ge=0.0, le=1.0, description="probability per image")
    sigma: float = Field(0.05, ge=0.0, le=1.0, description="scale jitter, alpha ~ U(1-s, 1+s)")
    bias: float = Field(
        0.05,
        ge=0.0,
        le=1.0,
        description="shift jitter, beta ~ U(-b, b), in skimage rgb2hed units (OD / 13.8) as "
        "in Tellez et al.: 0.05 is their 'HED-light', 0.2 'HED-strong' (very strong)",
    )


class AugmentConfig(Strict):
    geometry: GeometryAugConfig = Field(default_factory=GeometryAugConfig)
    colour: ColourAugConfig = Field(default_factory=ColourAugConfig)
    stain: StainAugConfig = Field(default_factory=StainAugConfig)
    normalize: Literal["none", "macenko", "reinhard"] = Field(
        "none",
        description="stain normalisation of every image the model sees, fitted on 256 "
        "training images (fine-tuning) or pool images (SSL pretraining) and kept in the "
        "checkpoint and exported card, so evaluation, prediction and the app normalise other "
        "labs' images to the training lab's stain; in training it runs on the augmented views "
        "and so undoes most stain and colour jitter; reinhard is the robust choice on tinted "
        "backgrounds",
    )


class MultiCropConfig(Strict):
    """Views for self-supervised pretraining (DINO multi-crop, Caron et al. 2021).

    Colour strengths, flips/rotations and stain jitter come from the ``augment`` section;
    this section sets the views and the per-view probabilities. SimCLR uses two global
    views and no local ones.
    """

    n_global: int = Field(2, ge=1, description="global views; the teacher sees only these")
    n_local: int = Field(6, ge=0, description="small local views (student only); 0 for SimCLR, 6-10 for DINO")
    global_size: int = Field(224, ge=8, le=1024, description="side of a global view, px")
    local_size: int = Field(96, ge=8, le=1024, description="side of a local view, px")
    global_scale: tuple[float, float] = Field(
        (0.4, 1.0), description="area fraction of a global crop (DINO: 0.4-1; SimCLR: 0.08-1)"
    )
    local_scale: tuple[float, float] = Field(
        (0.05, 0.4), description="area fraction of a local crop; its top should be the global crop's bottom"
    )
    zoom: tuple[float, float] = Field(
        (0.7, 1.0),
        description="random scale applied before cropping; < 1 zooms out with a mirrored "
        "border, because labs differ in magnification; (1, 1) turns it off",
    )
    colour_p: float = Field(0.8, ge=0.0, le=1.0, description="colour jitter probability")
    grayscale_p: float = Field(0.2, ge=0.0, le=1.0)
    global_blur_p: tuple[float, float] = Field(
        (1.0, 0.1), description="blur probability of global views 1 and 2 (DINO: 1.0, 0.1)"
    )
    global_solarize_p: tuple[float, float] = Field(
        (0.0, 0.2), description="solarisation probability of global views 1 and 2"
    )
    local_blur_p: float = Field(0.5, ge=0.0, le=1.0)

    @field_validator("global_scale", "local_scale", "zoom")
    @classmethod
    def _ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 < v[0] <= v[1]:
            raise ValueError(f"needs 0 < low <= high, got {list(v)}")
        return v

    @field_validator("global_blur_p", "global_solarize_p")
    @classmethod
    def _probabilities(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not all(0.0 <= p <= 1.0 for p in v):
            raise ValueError(f"probabilities must lie in [0, 1], got {list(v)}")
        return v


class OptimConfig(Strict):
    name: Literal["radam", "adamw", "sgd"] = "radam"
    lr: float = Field(1e-3, gt=0.0)
    backbone_lr_scale: float = Field(
        1.0,
        gt=0.0,
        le=1.0,
        description="backbone learning rate as a fraction of lr (the head's); 0.1 keeps "
        "pretrained (e.g. self-supervised) features from being overwritten by the first epochs",
    )
    weight_decay: float = Field(1e-4, ge=0.0)
    plateau_factor: float = Field(0.1, gt=0.0, lt=1.0, description="ReduceLROnPlateau factor")
    plateau_patience: int = Field(2, ge=0)
    min_lr: float = Field(1e-6, ge=0.0)


class LossConfig(Strict):
    label_smoothing: float = Field(0.1, ge=0.0, lt=1.0)
    class_weights: bool = Field(True, description="(1/count_c) * (total/2), the published rule")


class TrainerConfig(Strict):
    max_epochs: int = Field(10, ge=1)
    accelerator: str = "auto"
    devices: int | str | list[int] = "auto"
    num_nodes: int = Field(1, ge=1)
    strategy: str = "auto"
    precision: Literal["auto", "32", "32-true", "bf16-mixed", "16-mixed"] = Field(
        "auto", description="auto: bf16-mixed on a GPU that supports it, else 32"
    )
    seed: int = 0
    compile: bool = Field(False, description="torch.compile the backbone")
    limit_train_batches: float | int | None = None
    max_time: str | None = Field(
        None,
        pattern=r"^\d{2}:\d{2}:\d{2}:\d{2}$",
        description="DD:HH:MM:SS: stop gracefully after this long (checkpoints and exports still written); "
        "a resumed run counts the time before the interruption too (Lightning keeps it in the checkpoint)",
    )
    log_every_n_steps: int = Field(10, ge=1)
    progress: bool = True


class FinetuneConfig(Strict):
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    mode: Literal["linear", "partial", "full"] = "full"
    unfreeze_blocks: int = Field(1, ge=1, description="blocks trained in partial mode")
    head_warmup_epochs: int = Field(
        0,
        ge=0,
        description="first epochs train the head alone on the frozen backbone, then the model is "
        "fine-tuned as `mode` says (LP-FT, Kumar et al. 2022): the backbone's first gradients come "
        "from a fitted head rather than a random one, which distorts pretrained features less; "
        "meant for --init weights (e.g. 3 of 15 epochs); 0 (off) for random init",
    )
    wise_alpha: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="after training, also write wise.ckpt: the weights (1 - a) * (end of the head "
        "warm-up) + a * (best fine-tuned), batch-norm statistics re-estimated on training images "
        "(WiSE-FT, Wortsman et al. 2022), and score it beside best.ckpt (metrics.json 'wise'); "
        "0.5 is the paper's default; needs head_warmup_epochs; `leukoshift wise RUN` does the "
        "same for a finished run",
    )
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)
    early_stopping_patience: int = Field(5, ge=1)
    out: Path | None = None

    @model_validator(mode="after")
    def _warmup_leaves_fine_tuning(self) -> FinetuneConfig:
        if self.head_warmup_epochs and self.mode == "linear":
            raise ValueError("head_warmup_epochs: mode=linear trains the head alone throughout; set it to 0")
        if self.head_warmup_epochs >= self.trainer.max_epochs:
            raise ValueError(
                f"head_warmup_epochs ({self.head_warmup_epochs}) must be below trainer.max_epochs "
                f"({self.trainer.max_epochs}): the backbone would never be fine-tuned"
            )
        if self.wise_alpha is not None and not self.head_warmup_epochs:
            raise ValueError("wise_alpha: interpolates with the end of the head warm-up; set head_warmup_epochs too")
        return self


class DinoConfig(Strict):
    """DINO (Caron et al. 2021). Defaults suit a few thousand to a few hundred thousand
    cell images; the paper's ImageNet values are noted where they differ."""

    out_dim: int = Field(
        4096, ge=16, description="prototypes; ImageNet used 65536, small data sets collapse less with 1-8k"
    )
    hidden_dim: int = Field(2048, ge=16)
    bottleneck_dim: int = Field(256, ge=8)
    batch_norm_head: bool = Field(False, description="batch norm in the head (CNN backbones only)")
    norm_last_layer: bool = Field(
        True, description="weight-normalised last layer: stabler; False learns faster but may collapse"
    )
    freeze_last_layer_epochs: int = Field(1, ge=0, description="keep the output layer fixed this long")
    student_temp: float = Field(0.1, gt=0.0)
    teacher_temp: float = Field(
        0.04, gt=0.0, description="final teacher temperature; 0.04-0.07, raise only if training is stable"
    )
    warmup_teacher_temp: float = Field(0.04, gt=0.0, description="teacher temperature at epoch 0")
    warmup_teacher_temp_epochs: int = Field(
        30, ge=0, description="linear warm-up of the teacher temperature (clipped to max_epochs)"
    )
    center_momentum: float = Field(
        0.9,
        ge=0.0,
        lt=1.0,
        description="collapse guard: centring of teacher outputs; if the loss sits at log(out_dim) "
        "(uniform collapse) lower teacher_temp; if one prototype wins, raise this toward 0.99",
    )
    momentum_teacher: float = Field(
        0.996,
        ge=0.0,
        le=1.0,
        description="teacher EMA at the start (cosine to momentum_teacher_end); 0.996 for batch "
        "256-1024, 0.9995 for small batches (the teacher must move slower when steps are noisy)",
    )
    momentum_teacher_end: float = Field(1.0, ge=0.0, le=1.0)


class SimclrConfig(Strict):
    """SimCLR (Chen et al. 2020)."""

    hidden_dim: int = Field(2048, ge=16)
    out_dim: int = Field(128, ge=8)
    temperature: float = Field(0.1, gt=0.0, description="NT-Xent temperature; 0.1 for large batches, 0.5 small")
    gather_distributed: bool = Field(True, description="negatives from every GPU under DDP")
    negatives: Literal["batch", "same_source"] = Field(
        "batch",
        description="batch: every other image in the batch (SimCLR); same_source: only images "
        "of the anchor's own lab, so stain, focus or framing cannot tell two images apart and "
        "the encoder gains nothing by keeping them (in-domain negatives, Kim et al. 2021); "
        "pair it with data.source_balance so that small labs have negatives in every batch",
    )


class SSLOptimConfig(Strict):
    name: Literal["adamw", "sgd", "lars"] = "adamw"
    lr: float = Field(
        5e-4, gt=0.0, description="base learning rate per 256 images; the peak is lr * batch * GPUs / 256 (DINO's rule)"
    )
    min_lr: float = Field(1e-6, ge=0.0)
    warmup_epochs: int = Field(10, ge=0, description="linear warm-up (clipped by the run length)")
    weight_decay: float = Field(0.04, ge=0.0, description="start of the cosine weight-decay schedule")
    weight_decay_end: float = Field(0.4, ge=0.0, description="end of the cosine weight-decay schedule")
    clip_grad: float = Field(3.0, ge=0.0, description="gradient-norm clipping; 0 switches it off")


class MonitorConfig(Strict):
    manifests: list[Path] = Field(
        default_factory=list, description="labelled manifests for the online kNN monitor (none: off)"
    )
    bank_split: str = "train"
    query_split: str = "val"
    every_n_epochs: int = Field(1, ge=1)
    k: int = Field(20, ge=1)
    max_images: int = Field(2000, ge=10, description="subsample bank and queries for speed")


class PretrainConfig(Strict):
    method: Literal["dino", "simclr"] = "dino"
    data: DataConfig = Field(default_factory=lambda: DataConfig(image=ImageConfig(size=128), batch_size=128))
    model: ModelConfig = Field(default_factory=lambda: ModelConfig(backbone="vit_small"))
    multicrop: MultiCropConfig = Field(default_factory=MultiCropConfig)
    augment: AugmentConfig = Field(
        default_factory=lambda: AugmentConfig(stain=StainAugConfig(p=0.8, sigma=0.2, bias=0.05))
    )
    dino: DinoConfig = Field(default_factory=DinoConfig)
    simclr: SimclrConfig = Field(default_factory=SimclrConfig)
    optim: SSLOptimConfig = Field(default_factory=SSLOptimConfig)
    trainer: TrainerConfig = Field(default_factory=lambda: TrainerConfig(max_epochs=100))
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)
    out: Path | None = None

    @model_validator(mode="after")
    def _views_fit_method(self) -> PretrainConfig:
        if self.method == "simclr":
            # SimCLR's recipe (Chen et al. 2020) where the user left DINO's defaults: two
            # views, crops of 8-100 % of the image, blur at p=0.5 on both, no solarisation.
            simclr_views = {
                "n_local": 0,
                "global_scale": (0.08, 1.0),
                "global_blur_p": (0.5, 0.5),
                "global_solarize_p": (0.0, 0.0),
            }
            unset = {k: v for k, v in simclr_views.items() if k not in self.multicrop.model_fields_set}
            self.multicrop = self.multicrop.model_copy(update=unset)
            if self.multicrop.n_local:
                raise ValueError("multicrop.n_local: SimCLR uses two global views; set it to 0")
            if self.multicrop.n_global != 2:
                raise ValueError("multicrop.n_global: SimCLR needs exactly 2 views")
        elif self.multicrop.n_global + self.multicrop.n_local < 2:
            raise ValueError("multicrop: DINO needs at least two views in total")
        return self


# ----------------------------------------------------------------------------- loading


def _format_error(err: Mapping[str, Any], origin: str, key: str | None = None) -> str:
    loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
    if err["type"] == "extra_forbidden":
        # Name the whole key the user typed (``nosection.x``), not just its unknown head.
        return f"{origin}: unknown key '{key or loc}'"
    if err["type"] == "value_error":
        # A validator's own message already shows the value.
        return f"{origin}: {loc}: {err['ctx']['error']}"
    value = err.get("input")
    shown = "" if isinstance(value, dict) else f" (got {value!r})"
    return f"{origin}: {loc}: {err['msg']}{shown}"


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {key}: '{part}' is a value, not a section")
        node = child
    node[parts[-1]] = value


def parse_overrides(overrides: list[str] | None) -> list[tuple[str, Any]]:
    """``a.b=value`` strings -> (key, YAML-parsed value) pairs."""
    pairs = []
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected dotted.key=value")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        pairs.append((key.strip(), value))
    return pairs


def read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}:{where} is not valid YAML") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    return data


def load_config(
    schema: type[T],
    path: Path | None = None,
    overrides: list[str] | None = None,
    defaults: dict[str, Any] | None = None,
) -> T:
    """Build ``schema`` from optional ``defaults``, then the YAML file, then overrides.

    Relative paths in the file stay as written; commands resolve them against the
    working directory, like every other CLI path.
    """
    data: dict[str, Any] = {}
    for key, value in (defaults or {}).items():
        _set_dotted(data, key, value)
    if path is not None:
        for key, value in _flatten(read_yaml(path)):
            _set_dotted(data, key, value)
    origin = str(path) if path is not None else "config"
    pairs = parse_overrides(overrides)
    for key, value in pairs:
        _set_dotted(data, key, value)
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        # The last --set that touched the failing field is to blame, else the file.
        culprit = next(
            (key for key, _ in reversed(pairs) if key == loc or loc.startswith(key + ".") or key.startswith(loc + ".")),
            None,
        )
        if culprit is not None:
            origin = "--set"
        longer = culprit if culprit is not None and len(culprit) > len(loc) else None
        raise ConfigError(_format_error(err, origin, longer)) from None


def _flatten(data: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Nested mapping -> dotted pairs, keeping free-form dicts (e.g. model.kwargs) whole."""
    out: list[tuple[str, Any]] = []
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value and key not in _FREEFORM_KEYS:
            out.extend(_flatten(value, dotted + "."))
        else:
            out.append((dotted, value))
    return out


#: Mapping-valued fields that are values, not sections.
_FREEFORM_KEYS = {"kwargs", "label_map"}


def config_to_dict(cfg: BaseModel) -> dict[str, Any]:
    return cfg.model_dump(mode="json")


def save_config(cfg: BaseModel, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
