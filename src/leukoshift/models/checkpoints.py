"""Loading weights from any file a user has, and exporting trained backbones.

Accepted: ``.safetensors``, ``.pth`` / ``.pt`` / ``.bin`` (a state dict, or one under
``state_dict`` / ``model`` / ``teacher`` / ``student``), and Lightning ``.ckpt`` files
from this project (SSL or fine-tuning runs). Key prefixes (``backbone.``,
``teacher_backbone.``, ``module.`` ...) are found by matching against the model, and the
report says exactly which keys were missing, unexpected or of another shape.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from leukoshift.errors import UserError

#: Prefixes tried when matching a checkpoint to a backbone, best first: an SSL run's
#: teacher (DINO's evaluation model) beats its student.
PREFIXES: tuple[str, ...] = (
    "",
    "teacher_backbone.",
    "backbone.",
    "encoder.backbone.",
    "model.backbone.",
    "student_backbone.",
    "module.",
    "model.",
    "encoder.",
)


@dataclass
class LoadReport:
    path: Path
    prefix: str
    loaded: int
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    resized: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = [f"{self.path.name}: {self.loaded} tensors loaded"]
        if self.prefix:
            parts.append(f"prefix '{self.prefix}'")
        if self.resized:
            parts.append(f"resized: {', '.join(self.resized)}")
        for name, keys in (
            ("missing", self.missing),
            ("unexpected", self.unexpected),
            ("shape mismatch", self.mismatched),
        ):
            if keys:
                shown = ", ".join(keys[:6]) + (f" (+{len(keys) - 6} more)" if len(keys) > 6 else "")
                parts.append(f"{name} {len(keys)}: {shown}")
        return "; ".join(parts)


def read_checkpoint(path: Path | str) -> dict[str, Any]:
    """The raw checkpoint object (a dict), whatever the file type."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found")
    if path.suffix == ".safetensors":
        try:
            return {"state_dict": load_file(str(path))}
        except Exception as exc:  # safetensors raises its own error types
            raise UserError(f"{path}: not a readable safetensors file ({exc})") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        # Lightning checkpoints may hold pickled objects (e.g. callback state); a local
        # file the user points at is trusted like any Python code they run.
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                obj = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:
            raise UserError(f"{path}: not a readable PyTorch checkpoint ({str(exc).splitlines()[0]})") from None
    if not isinstance(obj, dict):
        raise UserError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")
    return obj


def state_dict_of(obj: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Unwrap the usual containers down to a name -> tensor mapping."""
    for key in ("state_dict", "model", "teacher", "student", "model_state_dict"):
        inner = obj.get(key)
        if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
            return inner
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    raise UserError("checkpoint holds no state dict (looked for state_dict, model, teacher, student)")


def _best_prefix(state: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> str:
    scores = {}
    for prefix in PREFIXES:
        n = sum(1 for k in state if k.startswith(prefix) and k[len(prefix) :] in target)
        scores[prefix] = n
    best = max(PREFIXES, key=lambda p: (scores[p], -PREFIXES.index(p)))
    return best


def load_backbone_weights(model: nn.Module, path: Path | str, verbose: bool = True) -> LoadReport:
    """Load what matches into ``model`` (non-strict) and report the rest.

    A ViT's positional embedding of another grid size is resampled (timm's
    ``resample_abs_pos_embed``), so weights trained at 224 px load at 64 px.
    Fails when nothing matches: that is never what a user wants.
    """
    path = Path(path)
    state = state_dict_of(read_checkpoint(path))
    target = model.state_dict()
    prefix = _best_prefix(state, target)
    picked = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    report = LoadReport(path, prefix, 0)
    usable: dict[str, torch.Tensor] = {}
    for key, value in picked.items():
        if key not in target:
            report.unexpected.append(key)
            continue
        if value.shape != target[key].shape:
            if key == "pos_embed" and value.ndim == 3:
                value = _resample_pos_embed(model, value)
                report.resized.append(key)
            else:
                report.mismatched.append(f"{key} {tuple(value.shape)}->{tuple(target[key].shape)}")
                continue
        usable[key] = value
    report.missing = [k for k in target if k not in usable]
    report.loaded = len(usable)
    if not usable:
        raise UserError(
            f"{path}: no tensor matches this backbone ({len(state)} tensors in the file; "
            "is it for another architecture?)"
        )
    model.load_state_dict(usable, strict=False)
    if verbose:
        print(f"init {report.summary()}")
    return report


def _resample_pos_embed(model: nn.Module, value: torch.Tensor) -> torch.Tensor:
    from timm.layers import resample_abs_pos_embed

    prefix_tokens = 0 if getattr(model, "no_embed_class", False) else getattr(model, "num_prefix_tokens", 1)
    grid = model.patch_embed.grid_size  # type: ignore[union-attr]
    return resample_abs_pos_embed(value, new_size=list(grid), num_prefix_tokens=prefix_tokens)


def card_path(weights: Path) -> Path:
    return weights.with_suffix(".json")


def export_weights(module: nn.Module, out: Path, card: dict[str, Any]) -> Path:
    """Save ``module``'s tensors as safetensors plus a JSON card beside it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    save_file(
        tensors, str(out), metadata={"leukoshift": json.dumps({k: card[k] for k in ("kind", "backbone") if k in card})}
    )
    card_path(out).write_text(json.dumps(card, indent=2, default=str))
    return out


def read_card(weights: Path) -> dict[str, Any] | None:
    path = card_path(weights)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        raise UserError(f"{path}: model card is not valid JSON") from None
