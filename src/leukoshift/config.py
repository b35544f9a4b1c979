"""Typed experiment configs: YAML files plus ``--set dotted.key=value`` overrides.

Every section is a pydantic model that forbids unknown keys, so a typo or a bad value
fails with one line naming the field before any work starts. The resolved config is
written into the run folder (:func:`save_config`) so a run can be repeated exactly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from leukoshift.errors import UserError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

T = TypeVar("T", bound=BaseModel)


class ConfigError(UserError):
    """A config problem, already phrased as one line naming the file or field."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True, protected_namespaces=())


# ----------------------------------------------------------------------------- sections


class ImageConfig(Strict):
    """How images become fixed-size uint8 arrays in the cache (decode once)."""

    size: int = Field(64, ge=8, le=1024, description="side of the square cached image, px")
    preprocess: Literal["resize", "centre", "background"] = Field(
        "resize",
        description="resize: whole image squeezed to a square; centre: square crop around "
        "the located white cell, so a cell spans the same fraction of the image in every "
        "lab; background: centre plus surroundings blanked (the published filtering)",
    )
    centre_margin: float = Field(
        1.8, gt=0.5, le=8.0, description="crop side / located cell size for centre"
    )
    centre_min_fraction: float = Field(
        0.25, gt=0.0, le=1.0, description="smallest crop side as a fraction of the short side"
    )
    cache_dir: Path | None = Field(
        None, description="where cached arrays live; default: .cache/ beside each manifest"
    )


class DataConfig(Strict):
    manifests: list[Path] = Field(default_factory=list, description="labelled manifests (CSV)")
    unlabeled: list[Path] = Field(
        default_factory=list, description="extra manifests whose labels are ignored (SSL pool)"
    )
    exclude_sources: list[str] = Field(default_factory=list)
    external: list[Path] = Field(
        default_factory=list, description="manifests evaluated in full after training"
    )
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"
    batch_size: int = Field(64, ge=1)
    num_workers: int = Field(2, ge=0, description="loader processes; uint8 batches are cheap")
    image: ImageConfig = Field(default_factory=ImageConfig)


class ModelConfig(Strict):
    backbone: str = Field("resnet18", description="a name from leukoshift.models.BACKBONES")
    init: Path | None = Field(
        None, description="local weights: .safetensors, .pth or Lightning .ckpt"
    )
    pretrained: bool = Field(False, description="timm hub weights (needs network access)")
    kwargs: dict[str, Any] = Field(
        default_factory=dict, description="extra timm.create_model arguments, e.g. depth: 2"
    )
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


class StainAugConfig(Strict):
    """Tellez et al. 2019 HED jitter: each stain's concentration scaled and shifted."""

    p: float = Field(0.0, ge=0.0, le=1.0, description="probability per image")
    sigma: float = Field(0.05, ge=0.0, le=1.0, description="scale jitter, alpha ~ U(1-s, 1+s)")
    bias: float = Field(0.05, ge=0.0, le=1.0, description="shift jitter, beta ~ U(-b, b)")


class AugmentConfig(Strict):
    geometry: GeometryAugConfig = Field(default_factory=GeometryAugConfig)
    colour: ColourAugConfig = Field(default_factory=ColourAugConfig)
    stain: StainAugConfig = Field(default_factory=StainAugConfig)


class OptimConfig(Strict):
    name: Literal["radam", "adamw", "sgd"] = "radam"
    lr: float = Field(1e-3, gt=0.0)
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
    log_every_n_steps: int = Field(10, ge=1)
    progress: bool = True


class FinetuneConfig(Strict):
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    mode: Literal["linear", "partial", "full"] = "full"
    unfreeze_blocks: int = Field(1, ge=1, description="blocks trained in partial mode")
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)
    early_stopping_patience: int = Field(5, ge=1)
    out: Path | None = None


# ----------------------------------------------------------------------------- loading


def _format_error(err: dict[str, Any], origin: str) -> str:
    loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
    if err["type"] == "extra_forbidden":
        return f"{origin}: unknown key '{loc}'"
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
        if any(key == loc or loc.startswith(key + ".") for key, _ in pairs):
            origin = "--set"
        raise ConfigError(_format_error(err, origin)) from None


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
