"""``leukoshift explain``: where in a cell image does the classifier look?

Methods (``--method``):

- ``gradcam``: Grad-CAM (Selvaraju et al. 2017, "Grad-CAM: visual explanations from deep
  networks via gradient-based localization", ICCV), through the pytorch-grad-cam package,
  on the layer the backbone registry names (the last convolutional stage of a CNN; for a
  ViT the last block's ``norm1``, tokens reshaped to the patch grid);
- ``gradcam++``: Grad-CAM++ (Chattopadhay et al. 2018, WACV), same layer;
- ``rollout``: attention rollout (Abnar & Zuidema 2020, "Quantifying attention flow in
  transformers", ACL): head-averaged attention plus the residual identity, multiplied
  through the blocks; it shows what the CLS token draws on and is the same for every
  class by construction;
- ``grad-rollout``: the class-specific rollout of Chefer, Gur & Wolf 2021 ("Generic
  attention-model explainability for interpreting bi-modal and encoder-decoder
  transformers", ICCV): each block's attention weighted by its gradient for the target,
  positive part averaged over heads, accumulated as ``R <- R + A R``;
- ``attention``: the last block's CLS-token attention averaged over heads (the maps
  Dosovitskiy et al. 2021 and Caron et al. 2021 show).

timm runs attention through ``F.scaled_dot_product_attention`` and never materialises the
weights. :class:`AttentionRecorder` recomputes them inside forward hooks from each block's
own ``qkv`` projection and norms, and takes the gradient with respect to them from the
gradient of the per-head output ``O = A V`` (``dL/dA = dL/dO V^T``); hooks return nothing,
so the model's outputs stay bit-for-bit the same as without them.

Images are framed exactly as in training (:func:`~leukoshift.data.images.prepare_image`
with the checkpoint's image settings); the figure shows the same framing at a larger
display size. Every map is returned at the model input's spatial size, scaled to [0, 1].
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image
from torch import Tensor, nn

from leukoshift.config import ImageConfig
from leukoshift.data.images import ImageReadError, frame_image, load_rgb, resize_square
from leukoshift.errors import UserError
from leukoshift.models.backbones import cam_target_layer, family
from leukoshift.taxonomy import FINE_CLASSES, FINE_INDEX, FINE_NAMES

if TYPE_CHECKING:
    from timm.layers import Attention

    from leukoshift.finetune.module import ClassifierModule

#: Methods by backbone family (the first is the default).
METHODS: dict[str, tuple[str, ...]] = {
    "cnn": ("gradcam", "gradcam++"),
    "vit": ("rollout", "grad-rollout", "attention", "gradcam", "gradcam++"),
}
ALL_METHODS: tuple[str, ...] = ("gradcam", "gradcam++", "rollout", "grad-rollout", "attention")
#: Methods whose map does not depend on the class explained.
CLASS_AGNOSTIC: frozenset[str] = frozenset({"rollout", "attention"})
METHOD_NAMES: dict[str, str] = {
    "gradcam": "Grad-CAM",
    "gradcam++": "Grad-CAM++",
    "rollout": "attention rollout",
    "grad-rollout": "gradient-weighted rollout",
    "attention": "last-block CLS attention",
}
#: Side of the framed image shown in figures (the model input is often 64-128 px).
DISPLAY_SIZE = 256


class ExplainError(UserError):
    """An explanation that cannot be made as asked (method, target, model)."""


# ----------------------------------------------------------------------------- arguments


def default_method(backbone_name: str) -> str:
    return METHODS[family(backbone_name)][0]


def check_method(method: str | None, backbone_name: str) -> str:
    """The method to use for ``backbone_name``: ``method`` validated, or the default."""
    if method is None:
        return default_method(backbone_name)
    fam = family(backbone_name)
    if method not in ALL_METHODS:
        raise ExplainError(f"--method {method!r}: valid: {', '.join(ALL_METHODS)}")
    if method not in METHODS[fam]:
        raise ExplainError(
            f"--method {method} needs a vision transformer; {backbone_name} is a CNN (valid: {', '.join(METHODS[fam])})"
        )
    return method


def parse_target(code: str | None) -> int | None:
    """A fine class code (``SNE`` ... ``PLT``, any case) -> its index; None -> None."""
    if code is None:
        return None
    key = code.strip().upper()
    if key not in FINE_INDEX:
        raise ExplainError(f"--target {code!r}: not a class code; valid: {', '.join(FINE_CLASSES)}")
    return FINE_INDEX[key]


# ----------------------------------------------------------------------------- attention


def _attention_modules(model: nn.Module) -> list[Attention]:
    from timm.layers import Attention

    return [m for m in model.modules() if isinstance(m, Attention)]


def _attention_weights(attn: Attention, x: Tensor) -> tuple[Tensor, Tensor]:
    """Softmax attention ``(B, heads, N, N)`` and values ``(B, heads, N, head_dim)`` of a
    timm ``Attention`` block for its input ``x``, as its unfused branch computes them."""
    b, n, _ = x.shape
    heads, dim = attn.num_heads, attn.head_dim
    qkv = attn.qkv(x).reshape(b, n, 3, heads, dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    scores = (q * attn.scale) @ k.transpose(-2, -1)
    return scores.softmax(dim=-1), v


@dataclass
class AttentionRecorder:
    """Context manager recording every timm attention block's weights during a forward.

    ``attentions[i]`` is block ``i``'s ``(B, heads, N, N)`` softmax attention (detached).
    With ``gradients=True`` each block's per-head output ``O = A V`` is kept in the graph
    as well, and :meth:`attention_gradients` returns ``dscore/dA`` for a scalar ``score``
    computed from that forward pass.
    """

    model: nn.Module
    gradients: bool = False
    attentions: list[Tensor] = field(default_factory=list, init=False)
    _values: list[Tensor] = field(default_factory=list, init=False)
    _outputs: list[Tensor] = field(default_factory=list, init=False)
    _handles: list[Any] = field(default_factory=list, init=False)

    def __enter__(self) -> AttentionRecorder:
        blocks = _attention_modules(self.model)
        if not blocks:
            raise ExplainError("the model has no timm attention blocks: attention maps need a ViT")
        for attn in blocks:
            self._handles.append(attn.register_forward_hook(self._record, with_kwargs=True))
            if self.gradients:
                # the input of ``norm`` (Identity unless scale_norm) is O = A V, per head
                norm = getattr(attn, "norm", None)
                target: nn.Module = norm if isinstance(norm, nn.Module) else attn.proj
                self._handles.append(target.register_forward_pre_hook(self._keep_output))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def clear(self) -> None:
        self.attentions.clear()
        self._values.clear()
        self._outputs.clear()

    def _record(self, module: Attention, args: tuple[Tensor, ...], kwargs: dict[str, Any], output: Tensor) -> None:
        x = args[0] if args else kwargs["x"]
        if args[1:] or kwargs.get("attn_mask") is not None or kwargs.get("is_causal"):
            raise ExplainError("attention maps of masked or causal attention are not supported")
        with torch.no_grad():
            weights, values = _attention_weights(module, x.detach())
        self.attentions.append(weights)
        self._values.append(values)

    def _keep_output(self, module: nn.Module, args: tuple[Tensor, ...]) -> None:
        self._outputs.append(args[0])

    def attention_gradients(self, score: Tensor) -> list[Tensor]:
        """``d score / d A`` per block, ``(B, heads, N, N)``, for the recorded forward pass."""
        if not self.gradients or len(self._outputs) != len(self.attentions):
            raise ExplainError("record with gradients=True to take attention gradients")
        grads = torch.autograd.grad(score, self._outputs, allow_unused=False)
        out = []
        for g, v in zip(grads, self._values, strict=True):
            b, n, _ = g.shape
            g = g.reshape(b, n, v.shape[1], v.shape[3]).permute(0, 2, 1, 3)
            out.append(g @ v.transpose(-2, -1))  # O = A V  =>  dL/dA = dL/dO V^T
        return out


def attention_rollout(attentions: Sequence[Tensor]) -> Tensor:
    """Abnar & Zuidema (2020) rollout: ``(B, N, N)`` flow from every token to the input tokens.

    Each block's attention is averaged over heads, the residual connection added as
    ``0.5 A + 0.5 I``, rows renormalised, and the blocks multiplied in order
    (``R_l = A_l R_{l-1}``).
    """
    n = attentions[0].shape[-1]
    eye = torch.eye(n, dtype=attentions[0].dtype, device=attentions[0].device)
    rollout = eye.expand(attentions[0].shape[0], n, n)
    for a in attentions:
        a = 0.5 * a.mean(dim=1) + 0.5 * eye
        a = a / a.sum(dim=-1, keepdim=True)
        rollout = a @ rollout
    return rollout


def gradient_rollout(attentions: Sequence[Tensor], gradients: Sequence[Tensor]) -> Tensor:
    """Chefer, Gur & Wolf (2021) relevancy ``(B, N, N)``.

    ``R_0 = I`` and, block by block, ``R <- R + mean_h[(dA * A)^+] R``: attention weighted by
    its gradient for the target, negative evidence clipped, averaged over heads.
    """
    n = attentions[0].shape[-1]
    eye = torch.eye(n, dtype=attentions[0].dtype, device=attentions[0].device)
    relevance = eye.expand(attentions[0].shape[0], n, n).clone()
    for a, g in zip(attentions, gradients, strict=True):
        weighted = (g * a).clamp(min=0).mean(dim=1)
        relevance = relevance + weighted @ relevance
    return relevance


def _prefix_tokens(backbone: Any) -> int:
    return int(getattr(backbone, "num_prefix_tokens", 1))


def _patch_grid(backbone: Any, height: int, width: int, n_patches: int) -> tuple[int, int]:
    patch = backbone.patch_embed.patch_size
    grid = (math.ceil(height / patch[0]), math.ceil(width / patch[1]))
    if grid[0] * grid[1] != n_patches:
        raise ExplainError(f"{n_patches} patch tokens do not form the {grid} grid of a {height}x{width} input")
    return grid


def _token_map(cls_row: Tensor, backbone: Any, size: tuple[int, int]) -> Tensor:
    """``(B, N)`` relevance of every token for the CLS token -> ``(B, H, W)`` patch map."""
    patches = cls_row[:, _prefix_tokens(backbone) :]
    gh, gw = _patch_grid(backbone, size[0], size[1], patches.shape[1])
    grid = patches.reshape(-1, 1, gh, gw)
    return F.interpolate(grid, size=size, mode="bilinear", align_corners=False)[:, 0]


def _scale(maps: Tensor | np.ndarray) -> np.ndarray:
    """Each map to [0, 1] (min-max, as pytorch-grad-cam scales its maps); flat maps -> 0."""
    arr = maps.detach().cpu().numpy() if isinstance(maps, Tensor) else np.asarray(maps)
    arr = arr.astype(np.float32)
    lo = arr.min(axis=(1, 2), keepdims=True)
    span = arr.max(axis=(1, 2), keepdims=True) - lo
    return np.where(span > 0, (arr - lo) / np.where(span > 0, span, 1), 0).astype(np.float32)


# ----------------------------------------------------------------------------- maps


def _vit_reshape(backbone: Any, size: tuple[int, int]) -> Callable[[Tensor], Tensor]:
    """Tokens (B, N, C) of a ViT layer -> (B, C, gh, gw), the layout Grad-CAM expects."""

    def reshape(tokens: Tensor) -> Tensor:
        patches = tokens[:, _prefix_tokens(backbone) :]
        gh, gw = _patch_grid(backbone, size[0], size[1], patches.shape[1])
        return patches.reshape(tokens.shape[0], gh, gw, tokens.shape[2]).permute(0, 3, 1, 2)

    return reshape


def _gradcam(model: ClassifierModule, x: Tensor, targets: Sequence[int], plus_plus: bool) -> np.ndarray:
    from pytorch_grad_cam import GradCAM, GradCAMPlusPlus
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    backbone = model.encoder.backbone
    name = model.backbone_name
    layer = cam_target_layer(name, backbone)
    reshape = _vit_reshape(backbone, (x.shape[2], x.shape[3])) if family(name) == "vit" else None
    cam_class = GradCAMPlusPlus if plus_plus else GradCAM
    with cam_class(model=model, target_layers=[layer], reshape_transform=reshape) as cam:
        maps = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(t)) for t in targets])
    # pytorch-grad-cam accumulates parameter gradients; an explanation must leave none behind
    model.zero_grad(set_to_none=True)
    return np.asarray(maps, dtype=np.float32)


def _attention_map(model: ClassifierModule, x: Tensor, targets: Sequence[int], method: str) -> np.ndarray:
    backbone = model.encoder.backbone
    size = (x.shape[2], x.shape[3])
    gradients = method == "grad-rollout"
    with AttentionRecorder(backbone, gradients=gradients) as rec, torch.set_grad_enabled(gradients):
        logits = model(x)
        if method == "rollout":
            relevance = attention_rollout(rec.attentions)[:, 0]
        elif method == "attention":
            relevance = rec.attentions[-1].mean(dim=1)[:, 0]
        else:
            index = torch.as_tensor(list(targets), device=logits.device)
            score = logits.gather(1, index[:, None]).sum()
            grads = rec.attention_gradients(score)
            relevance = gradient_rollout(rec.attentions, grads)[:, 0]
    return _token_map(relevance.detach(), backbone, size).cpu().numpy()


def explain_tensor(model: ClassifierModule, x: Tensor, method: str, targets: Sequence[int]) -> np.ndarray:
    """``(B, H, W)`` float32 maps in [0, 1] for [0, 1] images ``x`` (B, 3, H, W).

    ``model`` is a :class:`~leukoshift.finetune.module.ClassifierModule` (``encoder``,
    ``backbone_name``); ``targets`` are fine-class indices, one per image (ignored by the
    class-agnostic ``rollout`` and ``attention``).
    """
    name = model.backbone_name
    method = check_method(method, name)
    if len(targets) != len(x):
        raise ExplainError(f"{len(targets)} targets for {len(x)} images")
    model.eval()
    if method in ("gradcam", "gradcam++"):
        # the input carries the graph even when a checkpoint froze the backbone
        maps = _gradcam(model, x.detach().clone().requires_grad_(True), targets, method == "gradcam++")
    else:
        x = x.detach().clone().requires_grad_(method == "grad-rollout")
        maps = _attention_map(model, x, targets, method)
    return _scale(maps)


# ----------------------------------------------------------------------------- images


@dataclass
class Explanation:
    """One image explained: its framing, the class probabilities and the map."""

    name: str
    framed: np.ndarray  # (S, S, 3) uint8, the model input
    display: np.ndarray  # (D, D, 3) uint8, the same framing at display resolution
    heatmap: np.ndarray  # (S, S) float32 in [0, 1]
    probs: np.ndarray  # (11,) fine-class probabilities
    method: str
    target: str | None  # fine class explained; None for a class-agnostic map

    @property
    def predicted(self) -> str:
        return FINE_CLASSES[int(np.argmax(self.probs))]

    @property
    def confidence(self) -> float:
        return float(np.max(self.probs))

    def overlay(self, weight: float = 0.5) -> np.ndarray:
        """The map as a jet colour overlay on the display image, (D, D, 3) uint8."""
        from pytorch_grad_cam.utils.image import show_cam_on_image

        side = self.display.shape[0]
        heat = np.asarray(Image.fromarray(self.heatmap).resize((side, side), Image.Resampling.BILINEAR))
        return show_cam_on_image(
            self.display.astype(np.float32) / 255.0,
            np.clip(heat, 0, 1),
            use_rgb=True,
            image_weight=weight,
        )

    def explained(self) -> str:
        what = METHOD_NAMES[self.method]
        if self.target is None:
            return f"{what} (class-agnostic)"
        return f"{what} for {self.target} ({FINE_NAMES[self.target]})"

    def title(self) -> str:
        return f"{FINE_NAMES[self.predicted]} ({self.predicted}) {self.confidence:.1%}"


class Explainer:
    """A classifier ready to explain raw RGB images, framed as it was trained."""

    def __init__(
        self, model: ClassifierModule, method: str | None = None, device: str = "cpu", red_cell_px: float | None = None
    ) -> None:
        self.model = model.to(device).eval()
        self.device = device
        self.backbone_name: str = model.backbone_name
        # ruler framing: red_cell_px frames every image at that scale (a lab not trained on)
        self.image: ImageConfig = model.cfg.data.image.scaled(red_cell_px)
        self.method = check_method(method, self.backbone_name)
        self.methods = METHODS[family(self.backbone_name)]
        self._display_size = max(DISPLAY_SIZE, self.image.size)

    @classmethod
    def from_checkpoint(
        cls, path: Path | str, method: str | None = None, red_cell_px: float | None = None
    ) -> Explainer:
        from leukoshift.eval.evaluate import default_device, load_classifier

        return cls(load_classifier(path), method, default_device(), red_cell_px)

    def frame(self, rgb: np.ndarray, source: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Raw RGB -> (model input, the same framing at display size), both uint8;
        ``source``: the image's lab, for ruler framing."""
        crop, _ = frame_image(rgb, self.image, source)  # framed once, resized twice
        return resize_square(crop, self.image.size), resize_square(crop, self._display_size)

    def _tensor(self, framed: Sequence[np.ndarray]) -> Tensor:
        batch = np.stack([f.transpose(2, 0, 1) for f in framed])
        return torch.from_numpy(batch).to(self.device).float().div_(255.0)

    def probabilities(self, framed: Sequence[np.ndarray]) -> np.ndarray:
        """(B, 11) probabilities for framed uint8 images."""
        with torch.no_grad():
            return self.model(self._tensor(framed)).float().softmax(1).cpu().numpy()

    def features(self, framed: Sequence[np.ndarray]) -> np.ndarray:
        """(B, D) encoder features for framed uint8 images (the kNN / UMAP space)."""
        with torch.no_grad():
            return self.model.encoder(self._tensor(framed)).float().cpu().numpy()

    def explain(
        self,
        rgbs: Sequence[np.ndarray],
        names: Sequence[str],
        target: str | None = None,
        method: str | None = None,
        batch_size: int = 16,
        source: str | None = None,
    ) -> list[Explanation]:
        """Explain raw RGB images of one lab (``source``: for ruler framing); ``target`` a
        class code (default: each image's prediction)."""
        method = check_method(method or self.method, self.backbone_name)
        fixed = parse_target(target)
        out: list[Explanation] = []
        for start in range(0, len(rgbs), batch_size):
            chunk = rgbs[start : start + batch_size]
            framed, display = zip(*(self.frame(r, source) for r in chunk), strict=True)
            probs = self.probabilities(framed)
            targets = [fixed if fixed is not None else int(p.argmax()) for p in probs]
            maps = explain_tensor(self.model, self._tensor(framed), method, targets)
            for j in range(len(framed)):
                out.append(
                    Explanation(
                        name=str(names[start + j]),
                        framed=framed[j],
                        display=display[j],
                        heatmap=maps[j],
                        probs=probs[j],
                        method=method,
                        target=None if method in CLASS_AGNOSTIC else FINE_CLASSES[targets[j]],
                    )
                )
        return out


# ----------------------------------------------------------------------------- figures


def _save(fig: Figure, path: Path, dpi: int = 110) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return path


def explanation_png(exp: Explanation, out: Path) -> Path:
    """Input and overlay side by side, titled with the prediction and what is explained."""
    fig = Figure(figsize=(6.4, 3.7), layout="constrained")
    fig.suptitle(f"{exp.title()}\n{exp.explained()}", fontsize=10)
    for ax, img, label in zip(
        fig.subplots(1, 2),
        (exp.display, exp.overlay()),
        (exp.name, METHOD_NAMES[exp.method]),
        strict=True,
    ):
        ax.imshow(img)
        ax.set_xlabel(label, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    return _save(fig, out)


def contact_sheet(explanations: Sequence[Explanation], out: Path, columns: int = 6, title: str = "") -> Path:
    """A grid of overlays, each captioned with its file name and prediction."""
    if not explanations:
        raise ExplainError("a contact sheet needs at least one explanation")
    cols = min(columns, len(explanations))
    rows = math.ceil(len(explanations) / cols)
    fig = Figure(figsize=(2.1 * cols, 2.35 * rows + 0.4), layout="constrained")
    if title:
        fig.suptitle(title, fontsize=10)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax in axes:
        ax.axis("off")
    for ax, exp in zip(axes, explanations, strict=False):
        ax.imshow(exp.overlay())
        name = exp.name if len(exp.name) <= 24 else "…" + exp.name[-23:]
        ax.set_title(f"{name}\n{exp.predicted} {exp.confidence:.0%}", fontsize=7)
    return _save(fig, out, dpi=90)


# ----------------------------------------------------------------------------- command


@dataclass
class ExplainResult:
    table: pd.DataFrame  # one row per explained image
    sheets: list[Path]
    skipped: list[tuple[Path, str]]


def _inputs(
    paths: Sequence[Path],
) -> tuple[list[tuple[Path, Path, Path | None]], list[tuple[Path, str]]]:
    """(file, output stem relative to the out folder, folder it came from) per image."""
    from leukoshift.eval.evaluate import collect_images

    found: list[tuple[Path, Path, Path | None]] = []
    skipped: list[tuple[Path, str]] = []
    used: set[Path] = set()
    for p in paths:
        files, missing = collect_images([p])
        skipped.extend(missing)
        for f in files:
            rel = Path(p.name) / f.relative_to(p).with_suffix("") if p.is_dir() else Path(f.stem)
            stem, n = rel, 1
            while stem in used:  # same file name from two inputs
                n += 1
                stem = rel.with_name(f"{rel.name}_{n}")
            used.add(stem)
            found.append((f, stem, p if p.is_dir() else None))
    return found, skipped


def run_explain(
    checkpoint: Path,
    paths: Sequence[Path],
    out: Path,
    target: str | None = None,
    method: str | None = None,
    batch_size: int = 16,
    sheet_size: int = 48,
    source: str | None = None,
    red_cell_px: float | None = None,
) -> ExplainResult:
    """Explain files and folders; unreadable inputs are listed and skipped, never fatal.

    Writes ``<out>/<name>.png`` per image (folders keep their layout under
    ``<out>/<folder name>/``), ``<out>/contact_<folder>[_<page>].png`` per folder input
    (``sheet_size`` images a page) and ``<out>/explanations.csv``.
    """
    if not Path(checkpoint).is_file():
        raise UserError(f"--checkpoint {checkpoint}: file not found")
    parse_target(target)  # a bad code fails before the model loads
    explainer = Explainer.from_checkpoint(checkpoint, method, red_cell_px)
    if explainer.image.preprocess == "ruler":
        explainer.image.ruler_px(source)  # a scale to frame by, before any image is read
    inputs, skipped = _inputs(paths)
    rows: list[dict[str, Any]] = []
    by_folder: dict[Path, list[Explanation]] = {}
    for start in range(0, len(inputs), batch_size):
        chunk, rgbs = [], []
        for item in inputs[start : start + batch_size]:
            try:
                rgbs.append(load_rgb(item[0]))
            except ImageReadError as exc:
                skipped.append((item[0], str(exc).split(": ", 1)[-1]))
                continue
            chunk.append(item)
        if not chunk:
            continue
        names = [str(f.relative_to(folder)) if folder else f.name for f, _, folder in chunk]
        for (f, stem, folder), exp in zip(
            chunk, explainer.explain(rgbs, names, target, batch_size=batch_size, source=source), strict=True
        ):
            png = explanation_png(exp, out / stem.with_suffix(".png"))
            if folder is not None:
                by_folder.setdefault(folder, []).append(exp)
            rows.append(
                {
                    "path": str(f),
                    "png": str(png),
                    "predicted": exp.predicted,
                    "probability": round(exp.confidence, 4),
                    "target": exp.target or "",
                    "method": exp.method,
                }
            )
    for f, why in skipped:
        print(f"skipped {f}: {why}")
    if not rows:
        raise UserError("no readable image among the inputs")
    sheets = []
    for folder, exps in by_folder.items():
        pages = [exps[i : i + sheet_size] for i in range(0, len(exps), sheet_size)]
        for i, page in enumerate(pages):
            suffix = f"_{i + 1:02d}" if len(pages) > 1 else ""
            title = f"{folder.name}: {METHOD_NAMES[page[0].method]}" + (
                f", page {i + 1} of {len(pages)}" if suffix else ""
            )
            sheets.append(contact_sheet(page, out / f"contact_{folder.name}{suffix}.png", title=title))
    table = pd.DataFrame(rows)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "explanations.csv", index=False)
    print(
        f"{len(table)} image(s) explained with {METHOD_NAMES[table['method'].iloc[0]]} -> {out}; {len(skipped)} skipped"
    )
    return ExplainResult(table, sheets, skipped)
