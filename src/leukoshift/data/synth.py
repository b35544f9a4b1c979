"""Synthetic laboratories: blood-cell images rendered from stain physics, one folder per lab.

The built-in default data set. Every image is one smear field around one cell of the 11
classes, drawn the way a microscope sees it: each structure (nucleus, cytoplasm,
granules, red cells, plasma) holds an amount of two dyes per pixel, a hematoxylin-like
basic dye (nuclei, basophilic granules) and an eosin-like acid dye (red cells, eosinophil
granules), and light passes through by the Beer-Lambert law,

    RGB = I0 * exp(-(cH * h + cE * e)),

where ``h`` and ``e`` are the dyes' optical densities per unit amount in R, G and B and
``I0`` is the lamp seen through an empty slide (Ruifrok & Johnston, Anal. Quant. Cytol.
Histol. 23 (2001) 291). A laboratory is then what real laboratories differ in
(:class:`LabStyle`): its dye batch and staining time (``h``, ``e`` and their strength),
its lamp and camera white balance (``I0``), its optics (magnification, focus blur,
vignetting) and its camera (sensor noise, JPEG quality). Cell morphology is drawn from
the same distributions in every lab, so a model that learns the cell transfers and a
model that learns the lab does not: the generator exercises domain shift, not only
classes.

Sizes are in micrometres (a red cell is about 7.5 um, a segmented neutrophil 12 um) and
the class cues follow standard haematology atlases: segmented (2-5 lobes) and band
nuclei, kidney-shaped metamyelocyte and monocyte nuclei, the round eccentric nucleus of
myelocytes and promyelocytes with azurophilic granules in the latter, orange-red
eosinophil granules, dark basophil granules that hide the nucleus, the dense round
nucleus and thin rim of small lymphocytes and erythroblasts, and anucleate platelets.

Images are written in the PBC layout (Acevedo et al., Data in Brief 30 (2020) 105474),
``<lab>/PBC_dataset_normal_DIB/<class folder>/<PREFIX>_<id>.jpg``, imported with the
project's own ``pbc`` importer, and merged into one manifest whose ``source`` column
names the lab.
"""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from leukoshift.data.importers import import_dataset
from leukoshift.data.manifest import read_manifests, write_manifest
from leukoshift.errors import UserError
from leukoshift.progress import progress_iter
from leukoshift.taxonomy import FINE_CLASSES

#: Bump whenever a change alters the rendered pixels: stamps from older versions re-render.
GENERATOR_VERSION = 1
#: Field of view across the image at magnification 1 (PBC frames a neutrophil at ~0.4).
FRAME_UM = 28.0
STAMP_NAME = "synth.json"
MANIFEST_NAME = "manifest.csv"
PBC_ROOT = "PBC_dataset_normal_DIB"

#: PBC class folder and file-name prefix of each fine class.
PBC_FOLDER: dict[str, str] = {
    "SNE": "neutrophil",
    "BNE": "neutrophil",
    "MMY": "ig",
    "MY": "ig",
    "PMY": "ig",
    "EO": "eosinophil",
    "BA": "basophil",
    "LY": "lymphocyte",
    "MO": "monocyte",
    "ERB": "erythroblast",
    "PLT": "platelet",
}
PBC_PREFIX: dict[str, str] = {c: ("PLATELET" if c == "PLT" else c) for c in FINE_CLASSES}


class SynthError(UserError):
    """Synthetic data that cannot be written as asked, one line."""


# ------------------------------------------------------------------------------ labs


@dataclass(frozen=True)
class LabStyle:
    """How one laboratory turns a stained cell into a JPEG.

    ``hematoxylin`` / ``eosin``: optical density of each dye in R, G, B (the dye batch
    decides the hue; only the direction counts). ``h_strength`` / ``e_strength``:
    staining intensity (time, dilution). ``lamp``: RGB of an empty field, 0-255 (lamp
    colour, white balance and exposure together). ``plasma``: eosin left on the
    background. ``magnification``: cell size in the frame relative to lab A. ``blur``
    (px at 64 px, scaled with the image), ``noise`` (sensor noise SD, 0-255),
    ``vignette`` (corner darkening, fraction), ``jpeg_quality``, ``rbc_density`` (red
    cells per 100 um^2 of smear).
    """

    name: str
    look: str
    hematoxylin: tuple[float, float, float]
    eosin: tuple[float, float, float]
    h_strength: float
    e_strength: float
    lamp: tuple[float, float, float]
    plasma: float
    magnification: float
    blur: float
    noise: float
    vignette: float
    jpeg_quality: int
    rbc_density: float

    def stains(self) -> np.ndarray:
        """(2, 3) optical densities of hematoxylin and eosin, rows of unit length (the
        strengths carry the amount, the vectors only the hue)."""
        m = np.asarray([self.hematoxylin, self.eosin], dtype=np.float32)
        return m / np.linalg.norm(m, axis=1, keepdims=True)


#: Eight fixed laboratories; ``render_labs(labs=n)`` uses the first ``n``. Lab A imitates
#: PBC (CellaVision, May-Grünwald-Giemsa); the others imitate the public sets' looks.
LAB_STYLES: tuple[LabStyle, ...] = (
    LabStyle(
        name="lab_a",
        look="PBC-like: cream-pink field, violet nuclei, mauve red cells, sharp, q90",
        hematoxylin=(0.53, 0.82, 0.21),
        eosin=(0.20, 0.80, 0.56),
        h_strength=1.0,
        e_strength=1.0,
        lamp=(255, 232, 208),
        plasma=0.02,
        magnification=1.0,
        blur=0.25,
        noise=1.5,
        vignette=0.03,
        jpeg_quality=90,
        rbc_density=1.15,
    ),
    LabStyle(
        name="lab_b",
        look="Bio-net-like: cyan field, blue-grey red cells, small cells, soft focus",
        hematoxylin=(0.50, 0.78, 0.38),
        eosin=(0.15, 0.80, 0.58),
        h_strength=0.95,
        e_strength=0.9,
        lamp=(160, 222, 236),
        plasma=0.02,
        magnification=0.72,
        blur=0.7,
        noise=3.0,
        vignette=0.10,
        jpeg_quality=75,
        rbc_density=1.5,
    ),
    LabStyle(
        name="lab_c",
        look="BCCD-like: pale grey-lilac field, blue-violet nuclei, tight framing, blurry",
        hematoxylin=(0.74, 0.64, 0.20),
        eosin=(0.12, 0.62, 0.42),
        h_strength=0.85,
        e_strength=0.75,
        lamp=(236, 228, 240),
        plasma=0.04,
        magnification=1.3,
        blur=1.0,
        noise=4.0,
        vignette=0.06,
        jpeg_quality=65,
        rbc_density=1.2,
    ),
    LabStyle(
        name="lab_d",
        look="Raabin-like: pink-lavender field, magenta nuclei, grey red cells",
        hematoxylin=(0.42, 0.86, 0.30),
        eosin=(0.32, 0.76, 0.52),
        h_strength=1.1,
        e_strength=1.0,
        lamp=(238, 214, 226),
        plasma=0.02,
        magnification=1.1,
        blur=0.45,
        noise=2.0,
        vignette=0.05,
        jpeg_quality=85,
        rbc_density=1.1,
    ),
    LabStyle(
        name="lab_e",
        look="yellow-green field, brown red cells (uncorrected halogen lamp)",
        hematoxylin=(0.50, 0.75, 0.43),
        eosin=(0.30, 0.62, 0.72),
        h_strength=1.0,
        e_strength=1.2,
        lamp=(216, 226, 150),
        plasma=0.02,
        magnification=0.82,
        blur=0.8,
        noise=3.0,
        vignette=0.12,
        jpeg_quality=80,
        rbc_density=1.6,
    ),
    LabStyle(
        name="lab_f",
        look="over-exposed, under-stained: washed-out pastel cells",
        hematoxylin=(0.56, 0.78, 0.28),
        eosin=(0.08, 0.74, 0.66),
        h_strength=0.6,
        e_strength=0.6,
        lamp=(252, 246, 246),
        plasma=0.01,
        magnification=1.0,
        blur=0.35,
        noise=1.0,
        vignette=0.02,
        jpeg_quality=95,
        rbc_density=1.0,
    ),
    LabStyle(
        name="lab_g",
        look="dim lamp, over-stained: dark grey-green field, near-black nuclei",
        hematoxylin=(0.60, 0.76, 0.26),
        eosin=(0.20, 0.70, 0.68),
        h_strength=1.4,
        e_strength=1.3,
        lamp=(186, 200, 192),
        plasma=0.05,
        magnification=0.92,
        blur=0.5,
        noise=5.0,
        vignette=0.15,
        jpeg_quality=70,
        rbc_density=1.3,
    ),
    LabStyle(
        name="lab_h",
        look="warm sepia field, blue nuclei, high magnification, heavy JPEG",
        hematoxylin=(0.70, 0.68, 0.22),
        eosin=(0.05, 0.60, 0.80),
        h_strength=0.95,
        e_strength=1.1,
        lamp=(248, 228, 188),
        plasma=0.03,
        magnification=1.22,
        blur=0.9,
        noise=2.5,
        vignette=0.08,
        jpeg_quality=60,
        rbc_density=1.2,
    ),
)


# ------------------------------------------------------------------------- geometry


@dataclass
class _Canvas:
    """Pixel-centre coordinates of the frame in micrometres (origin at the centre)."""

    size: int
    px_per_um: float
    x: np.ndarray
    y: np.ndarray

    @classmethod
    def make(cls, size: int, px_per_um: float) -> _Canvas:
        axis = (np.arange(size, dtype=np.float32) + 0.5 - size / 2) / px_per_um
        return cls(size, px_per_um, axis[None, :].repeat(size, 0), axis[:, None].repeat(size, 1))

    @property
    def half_um(self) -> float:
        return self.size / 2 / self.px_per_um

    def coverage(self, d: np.ndarray) -> np.ndarray:
        """Area of each pixel inside a shape given its signed distance (inside < 0): a
        one-pixel linear ramp, which anti-aliases edges at any image size."""
        return np.clip(0.5 - d * self.px_per_um, 0.0, 1.0)

    def local(self, cx: float, cy: float, angle: float) -> tuple[np.ndarray, np.ndarray]:
        """Coordinates in a frame centred at (cx, cy) and turned by ``angle``."""
        c, s = np.cos(angle), np.sin(angle)
        dx, dy = self.x - cx, self.y - cy
        return c * dx + s * dy, -s * dx + c * dy

    def splat(self, px: np.ndarray, py: np.ndarray, weight: np.ndarray, sigma_um: float) -> np.ndarray:
        """Gaussian blobs of peak ~``weight`` at points (um): bilinear splat, then one filter
        for all of them (thousands of granules cost one convolution)."""
        n = self.size
        fx = px * self.px_per_um + n / 2 - 0.5
        fy = py * self.px_per_um + n / 2 - 0.5
        x0, y0 = np.floor(fx).astype(np.int64), np.floor(fy).astype(np.int64)
        ax, ay = fx - x0, fy - y0
        sigma = max(sigma_um * self.px_per_um, 0.5)
        w = weight * (2 * np.pi * sigma**2)
        xi = np.concatenate([x0, x0 + 1, x0, x0 + 1])
        yi = np.concatenate([y0, y0, y0 + 1, y0 + 1])
        wi = np.concatenate([w * (1 - ax) * (1 - ay), w * ax * (1 - ay), w * (1 - ax) * ay, w * ax * ay])
        ok = (xi >= 0) & (xi < n) & (yi >= 0) & (yi < n)
        grid = np.bincount(yi[ok] * n + xi[ok], wi[ok], minlength=n * n).astype(np.float32)
        return ndimage.gaussian_filter(grid.reshape(n, n), sigma, mode="constant", truncate=3.0)

    def textures(self, rng: np.random.Generator, sigma_um: float, count: int) -> np.ndarray:
        """``count`` independent zero-mean, unit-SD smooth noise fields of grain
        ``sigma_um`` (chromatin, cytoplasm), filtered in one call."""
        sigma = max(sigma_um * self.px_per_um, 0.5)
        fields = ndimage.gaussian_filter(
            rng.standard_normal((count, self.size, self.size), dtype=np.float32),
            (0, sigma, sigma),
            mode="wrap",
            truncate=3.0,
        )
        return fields / (fields.std(axis=(1, 2), keepdims=True) + 1e-6)


def _sd_ellipse(u: np.ndarray, v: np.ndarray, a: float, b: float) -> np.ndarray:
    """Approximate signed distance to an ellipse (first-order, exact on the boundary)."""
    f = (u / a) ** 2 + (v / b) ** 2 - 1
    grad = 2 * np.sqrt((u / a**2) ** 2 + (v / b**2) ** 2) + 1e-6
    return f / grad


def _sd_circle(u: np.ndarray, v: np.ndarray, cu: float, cv: float, r: float) -> np.ndarray:
    return np.hypot(u - cu, v - cv) - r


def _sd_arc(u: np.ndarray, v: np.ndarray, radius: float, half_angle: float) -> np.ndarray:
    """Unsigned distance to a circular arc centred on the origin, opening towards +v."""
    ang = np.arctan2(u, -v)
    on_arc = np.abs(np.hypot(u, v) - radius)
    eu = np.sign(ang) * radius * np.sin(half_angle)
    ev = -radius * np.cos(half_angle)
    to_end = np.hypot(u - eu, v - ev)
    return np.where(np.abs(ang) <= half_angle, on_arc, to_end)


_WOBBLE_STEPS = 512


def _wobble(phi: np.ndarray, rng: np.random.Generator, amp: float) -> np.ndarray:
    """1 + a few random low harmonics of the polar angle ``phi``: an irregular outline.
    Evaluated on a table of angles and looked up (far cheaper than cosines per pixel)."""
    k = np.arange(2, 6)
    a = rng.normal(0, amp / np.sqrt(k))
    p = rng.uniform(0, 2 * np.pi, len(k))
    grid = np.linspace(-np.pi, np.pi, _WOBBLE_STEPS + 1)
    table = (1 + (a[:, None] * np.cos(k[:, None] * grid + p[:, None])).sum(0)).astype(np.float32)
    return table[((phi + np.pi) * (_WOBBLE_STEPS / (2 * np.pi))).astype(np.intp)]


def _in_disk(rng: np.random.Generator, n: int, radius: float) -> tuple[np.ndarray, np.ndarray]:
    r = radius * np.sqrt(rng.uniform(0, 1, n))
    t = rng.uniform(0, 2 * np.pi, n)
    return r * np.cos(t), r * np.sin(t)


# -------------------------------------------------------------------------- nuclei
# Each takes local cell coordinates and the cell radius R (um) and returns the nucleus'
# signed distance; shapes are fractions of R so they scale with the cell.

Nucleus = Callable[[np.ndarray, np.ndarray, float, np.random.Generator], np.ndarray]


def _lobes(n: int, lobe: float, spread: tuple[float, float], filament: float) -> Nucleus:
    """``n`` lobes strung along an arc and joined by thin chromatin filaments."""

    def shape(u: np.ndarray, v: np.ndarray, R: float, rng: np.random.Generator) -> np.ndarray:
        arc_r = R * rng.uniform(0.34, 0.46)
        half = np.deg2rad(rng.uniform(*spread))
        vv = v - arc_r * np.sin(half) / half  # centre the arc's mass on the cell
        d = _sd_arc(u, vv, arc_r, half) - filament * R
        for a in np.linspace(-half, half, n) + rng.normal(0, 0.12, n):
            rr = arc_r * rng.uniform(0.9, 1.1)
            size = lobe * R * rng.uniform(0.85, 1.12)
            d = np.minimum(
                d,
                _sd_ellipse(u - rr * np.sin(a), vv + rr * np.cos(a), size, size * rng.uniform(0.75, 1.0)),
            )
        return d

    return shape


def _segmented(u: np.ndarray, v: np.ndarray, R: float, rng: np.random.Generator) -> np.ndarray:
    n = int(rng.choice([2, 3, 4, 5], p=[0.15, 0.45, 0.3, 0.1]))
    lobe = {2: 0.34, 3: 0.3, 4: 0.26, 5: 0.23}[n]
    spread = {2: (40, 65), 3: (65, 100), 4: (85, 125), 5: (105, 140)}[n]
    return _lobes(n, lobe, spread, 0.035)(u, v, R, rng)


def _band(u: np.ndarray, v: np.ndarray, R: float, rng: np.random.Generator) -> np.ndarray:
    """Horseshoe / C band of nearly even width (thicker than a filament, no lobes)."""
    arc_r = R * rng.uniform(0.40, 0.52)
    half = np.deg2rad(rng.uniform(75, 125))
    vv = v - arc_r * np.sin(half) / half
    ang = np.arctan2(u, -vv)
    width = R * rng.uniform(0.15, 0.19) * (1 + 0.12 * np.sin(2 * ang + rng.uniform(0, 6.3)))
    return _sd_arc(u, vv, arc_r, half) - width


def _kidney(a: float, b: float, depth: tuple[float, float], notch: float, wobble: float) -> Nucleus:
    """Oval nucleus with a round indentation on one side (bean / horseshoe-to-be)."""

    def shape(u: np.ndarray, v: np.ndarray, R: float, rng: np.random.Generator) -> np.ndarray:
        aa, bb = a * R * rng.uniform(0.92, 1.08), b * R * rng.uniform(0.92, 1.08)
        vv = v + 0.08 * R
        bumps = _wobble(np.arctan2(vv, u), rng, wobble) - 1
        d = _sd_ellipse(u, vv, aa, bb) - bumps * (aa + bb) / 2
        rn = notch * R * rng.uniform(0.85, 1.15)
        centre = bb - 2 * bb * rng.uniform(*depth) + rn
        return np.maximum(d, -_sd_circle(u, vv, 0.0, centre, rn))

    return shape


def _round(a: float, b: float, shift: float) -> Nucleus:
    """Round-to-oval nucleus pushed ``shift`` R off centre (towards -v)."""

    def shape(u: np.ndarray, v: np.ndarray, R: float, rng: np.random.Generator) -> np.ndarray:
        aa, bb = a * R * rng.uniform(0.93, 1.07), b * R * rng.uniform(0.93, 1.07)
        vv = v + shift * R * rng.uniform(0.6, 1.2)
        bumps = _wobble(np.arctan2(vv, u), rng, 0.02) - 1
        return _sd_ellipse(u, vv, aa, bb) - bumps * (aa + bb) / 2

    return shape


# -------------------------------------------------------------------------- classes


@dataclass(frozen=True)
class Granules:
    """Granule population: count per um^2 of cell, blob size, dye per granule."""

    per_um2: float
    sigma_um: float
    h: float
    e: float
    over_nucleus: bool = False


@dataclass(frozen=True)
class CellLook:
    """Morphology of one class, as a haematology atlas describes it."""

    diameter: tuple[float, float]  # um, mean and SD
    nucleus: Nucleus
    nucleus_h: float  # hematoxylin in the nucleus (chromatin density)
    nucleus_e: float
    chromatin: tuple[float, float]  # texture amplitude (fraction), grain (um)
    cytoplasm: tuple[float, float]  # (h, e) of the cytoplasm
    granules: tuple[Granules, ...] = ()
    outline: float = 0.03  # irregularity of the cell outline
    nucleolus: float = 0.0  # lighter spot in the nucleus (immature cells)
    vacuoles: int = 0  # at most this many cytoplasmic vacuoles (monocytes)


LOOKS: dict[str, CellLook] = {
    "SNE": CellLook(
        diameter=(12.0, 0.8),
        nucleus=_segmented,
        nucleus_h=2.0,
        nucleus_e=0.12,
        chromatin=(0.22, 0.45),
        cytoplasm=(0.12, 0.14),
        granules=(Granules(1.2, 0.16, 0.10, 0.07),),
    ),
    "BNE": CellLook(
        diameter=(12.3, 0.8),
        nucleus=_band,
        nucleus_h=1.95,
        nucleus_e=0.12,
        chromatin=(0.2, 0.45),
        cytoplasm=(0.12, 0.14),
        granules=(Granules(1.2, 0.16, 0.10, 0.07),),
    ),
    "MMY": CellLook(
        diameter=(13.0, 1.0),
        nucleus=_kidney(0.56, 0.42, (0.22, 0.38), 0.26, 0.03),
        nucleus_h=1.75,
        nucleus_e=0.12,
        chromatin=(0.2, 0.4),
        cytoplasm=(0.14, 0.15),
        granules=(Granules(1.2, 0.17, 0.12, 0.08),),
    ),
    "MY": CellLook(
        diameter=(14.5, 1.2),
        nucleus=_round(0.52, 0.44, 0.22),
        nucleus_h=1.6,
        nucleus_e=0.12,
        chromatin=(0.16, 0.35),
        cytoplasm=(0.18, 0.15),
        # fine specific granules plus a few azurophilic ones left from the promyelocyte
        granules=(Granules(1.0, 0.18, 0.14, 0.10), Granules(0.06, 0.28, 0.5, 0.3)),
        nucleolus=0.1,
    ),
    "PMY": CellLook(
        diameter=(17.0, 1.5),
        nucleus=_round(0.58, 0.52, 0.14),
        nucleus_h=1.35,
        nucleus_e=0.14,
        chromatin=(0.12, 0.22),
        cytoplasm=(0.26, 0.06),
        granules=(Granules(0.35, 0.26, 0.75, 0.45, over_nucleus=True),),
        nucleolus=0.22,
    ),
    "EO": CellLook(
        diameter=(13.5, 1.0),
        nucleus=_lobes(2, 0.34, (48, 66), 0.04),
        nucleus_h=1.85,
        nucleus_e=0.12,
        chromatin=(0.2, 0.45),
        cytoplasm=(0.08, 0.22),
        granules=(Granules(1.0, 0.30, 0.02, 0.9),),
    ),
    "BA": CellLook(
        diameter=(11.5, 0.8),
        nucleus=_lobes(2, 0.34, (35, 70), 0.06),
        nucleus_h=1.6,
        nucleus_e=0.15,
        chromatin=(0.15, 0.4),
        cytoplasm=(0.18, 0.08),
        granules=(Granules(0.45, 0.34, 1.6, 0.08, over_nucleus=True),),
    ),
    "LY": CellLook(
        diameter=(8.6, 0.8),
        nucleus=_round(0.80, 0.78, 0.06),
        nucleus_h=2.3,
        nucleus_e=0.08,
        chromatin=(0.2, 0.6),
        cytoplasm=(0.32, 0.02),
        outline=0.02,
    ),
    "MO": CellLook(
        diameter=(16.0, 1.5),
        nucleus=_kidney(0.62, 0.48, (0.14, 0.3), 0.36, 0.07),
        nucleus_h=1.45,
        nucleus_e=0.12,
        chromatin=(0.28, 0.35),
        cytoplasm=(0.28, 0.08),
        granules=(Granules(0.3, 0.15, 0.08, 0.05),),
        outline=0.07,
        vacuoles=4,
    ),
    "ERB": CellLook(
        diameter=(9.0, 0.8),
        nucleus=_round(0.58, 0.57, 0.10),
        nucleus_h=2.8,
        nucleus_e=0.05,
        chromatin=(0.06, 0.5),
        cytoplasm=(0.22, 0.30),
        outline=0.015,
    ),
}


# --------------------------------------------------------------------------- scenes


def _wbc(
    canvas: _Canvas, look: CellLook, rng: np.random.Generator, cx: float, cy: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """One white cell (or erythroblast): dye maps (hematoxylin, eosin), coverage, radius."""
    R = max(rng.normal(*look.diameter), look.diameter[0] * 0.7) / 2
    angle = rng.uniform(0, 2 * np.pi)
    u, v = canvas.local(cx, cy, angle)
    aspect = rng.uniform(0.92, 1.0)
    phi = np.arctan2(v, u)
    cell = canvas.coverage(np.hypot(u, v / aspect) - R * _wobble(phi, rng, look.outline))

    amp, grain = look.chromatin
    chromatin, cytoplasm = canvas.textures(rng, grain, 2)
    cyt_h, cyt_e = look.cytoplasm
    cyt_tex = 1 + 0.15 * cytoplasm
    h = cell * cyt_h * cyt_tex
    e = cell * cyt_e * cyt_tex
    for _ in range(int(rng.integers(0, look.vacuoles + 1))):
        vu, vv = _in_disk(rng, 1, R * 0.8)
        hole = canvas.coverage(_sd_circle(u, v, float(vu[0]), float(vv[0]), rng.uniform(0.35, 0.8)))
        h *= 1 - 0.75 * hole
        e *= 1 - 0.75 * hole

    nucleus = canvas.coverage(look.nucleus(u, v, R, rng)) * cell
    dense = look.nucleus_h * np.clip(1 + amp * chromatin, 0.3, None)
    if look.nucleolus:
        nu, nv = _in_disk(rng, 1, R * 0.15)
        spot = canvas.coverage(_sd_circle(u, v + 0.15 * R, float(nu[0]), float(nv[0]), 0.12 * R))
        dense = dense * (1 - look.nucleolus * spot)
    h = h * (1 - nucleus) + nucleus * dense
    e = e * (1 - nucleus) + nucleus * look.nucleus_e

    c, s = np.cos(angle), np.sin(angle)
    for g in look.granules:
        n = rng.poisson(g.per_um2 * np.pi * R**2)
        gu, gv = _in_disk(rng, n, R * 0.95)
        amount = rng.uniform(0.6, 1.4, n).astype(np.float32)
        blobs = canvas.splat(cx + c * gu - s * gv, cy + s * gu + c * gv, amount, g.sigma_um) * cell
        if not g.over_nucleus:
            blobs *= 1 - 0.85 * nucleus
        h += g.h * blobs
        e += g.e * blobs
    return h, e, cell, R


def _platelets(
    canvas: _Canvas, rng: np.random.Generator, cx: float, cy: float, count: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """A small clump of anucleate platelets: pale lilac hyalomere, purple granular centre."""
    h = np.zeros((canvas.size, canvas.size), np.float32)
    e, cover = np.zeros_like(h), np.zeros_like(h)
    extent = 0.0
    for k in range(count):
        r = rng.uniform(1.4, 2.1)
        ox, oy = (0.0, 0.0) if k == 0 else tuple(rng.normal(0, 1.6, 2))
        px, py = cx + ox, cy + oy
        u, v = canvas.local(px, py, rng.uniform(0, 2 * np.pi))
        body = canvas.coverage(np.hypot(u, v / rng.uniform(0.7, 1.0)) - r * _wobble(np.arctan2(v, u), rng, 0.12))
        gu, gv = _in_disk(rng, int(rng.integers(6, 16)), r * 0.55)
        grains = canvas.splat(px + gu, py + gv, rng.uniform(0.6, 1.4, len(gu)), 0.22) * body
        h = np.maximum(h, body * 0.5) + 1.0 * grains
        e = np.maximum(e, body * 0.12) + 0.15 * grains
        cover = np.maximum(cover, body)
        extent = max(extent, float(np.hypot(ox, oy)) + r)
    return h, e, cover, extent


def _red_cells(
    canvas: _Canvas, rng: np.random.Generator, density: float, keep_out: tuple[float, float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """Biconcave discs (pale centres) scattered by dart throwing, a few cut by the frame
    edge, none over the centre object and little overlap between them."""
    h = np.zeros((canvas.size, canvas.size), np.float32)
    e = np.zeros_like(h)
    half = canvas.half_um + 4.0
    target = rng.poisson(density / 100 * (2 * half) ** 2)
    n = target * 3
    xs, ys = rng.uniform(-half, half, n), rng.uniform(-half, half, n)
    rs = rng.uniform(3.5, 4.0, n)
    kx, ky, kr = keep_out
    free = np.hypot(xs - kx, ys - ky) >= kr + 0.75 * rs
    xs, ys, rs = xs[free], ys[free], rs[free]
    too_close = (xs[:, None] - xs) ** 2 + (ys[:, None] - ys) ** 2 < (0.88 * (rs[:, None] + rs)) ** 2
    chosen: list[int] = []
    blocked = np.zeros(len(xs), dtype=bool)
    for i in range(len(xs)):
        if len(chosen) >= target:
            break
        if not blocked[i]:
            chosen.append(i)
            blocked |= too_close[i]
    if not chosen:
        return h, e
    # All discs at once, each in its own box of B x B pixels (every disc fits one):
    # q^2 = (u^2 + (v/aspect)^2) / r^2 is a quadratic form in the separable offsets dx
    # (columns) and dy (rows), so only its cross term needs a full product.
    k = len(chosen)
    f32 = np.float32
    ppu, size = canvas.px_per_um, canvas.size
    x, y, r = xs[chosen].astype(f32), ys[chosen].astype(f32), rs[chosen].astype(f32)
    t = rng.uniform(0, np.pi, k).astype(f32)
    inv_a2 = 1 / rng.uniform(0.9, 1.0, k).astype(f32) ** 2
    amount = rng.uniform(0.85, 1.15, k).astype(f32)
    c, s = np.cos(t), np.sin(t)
    qa = ((c**2 + s**2 * inv_a2) / r**2)[:, None, None]
    qb = (2 * c * s * (1 - inv_a2) / r**2)[:, None, None]
    qc = ((s**2 + c**2 * inv_a2) / r**2)[:, None, None]
    box = int(np.ceil(2 * 4.5 * ppu)) + 2
    x0 = np.floor((x + canvas.half_um) * ppu - box / 2).astype(int)
    y0 = np.floor((y + canvas.half_um) * ppu - box / 2).astype(int)
    steps = np.arange(box, dtype=f32) + 0.5
    dx = ((x0[:, None] + steps - size / 2) / ppu - x[:, None])[:, None, :]
    dy = ((y0[:, None] + steps - size / 2) / ppu - y[:, None])[:, :, None]
    q = np.sqrt(qa * dx**2 + qc * dy**2 + qb * dx * dy)
    ramp = np.clip((q - 0.1) / 0.6, 0, 1)
    profile = 0.25 + 0.75 * ramp * ramp * (3 - 2 * ramp)  # pale centre, dense rim
    edge = np.clip(0.5 - (q - 1) * (r * f32(ppu))[:, None, None], 0, 1)
    discs = edge * profile * amount[:, None, None]
    # Paste the boxes into a canvas padded by one box on every side, then cut the frame.
    padded = np.zeros((size + 2 * box, size + 2 * box), f32)
    for i in range(k):
        if -box < x0[i] < size and -box < y0[i] < size:
            padded[y0[i] + box : y0[i] + 2 * box, x0[i] + box : x0[i] + 2 * box] += discs[i]
    frame = padded[box : box + size, box : box + size]
    h += 0.17 * frame
    e += 0.30 * frame
    return h, e


def _scene(cls: str, canvas: _Canvas, rng: np.random.Generator, density: float) -> tuple[np.ndarray, np.ndarray]:
    """Dye maps of one field: the class's cell near the centre on a smear of red cells."""
    jitter = canvas.half_um * 0.18
    cx, cy = rng.uniform(-jitter, jitter, 2)
    if cls == "PLT":
        count = int(rng.choice([1, 1, 2, 3]))
        h, e, cover, radius = _platelets(canvas, rng, cx, cy, count)
    else:
        h, e, cover, radius = _wbc(canvas, LOOKS[cls], rng, cx, cy)
    rbc_h, rbc_e = _red_cells(canvas, rng, density, (cx, cy, radius))
    behind = 1 - cover
    h, e = h + behind * rbc_h, e + behind * rbc_e
    if cls != "PLT" and rng.uniform() < 0.15:
        # A stray platelet in the field, as in real smears: the class is the centre cell.
        ang = rng.uniform(0, 2 * np.pi)
        dist = radius + rng.uniform(2.5, 5)
        ph, pe, pc, _ = _platelets(canvas, rng, cx + dist * np.cos(ang), cy + dist * np.sin(ang), 1)
        h, e = h * (1 - pc) + ph, e * (1 - pc) + pe
    return h, e


def _develop(h: np.ndarray, e: np.ndarray, style: LabStyle, rng: np.random.Generator) -> np.ndarray:
    """Beer-Lambert through the lab's dyes and lamp, then its optics and camera noise."""
    size = h.shape[0]
    # Slide-to-slide variation within a lab is smaller than the variation between labs.
    hs = style.h_strength * rng.uniform(0.92, 1.08)
    es = style.e_strength * rng.uniform(0.92, 1.08)
    dye_h, dye_e = style.stains()
    od = h[..., None] * (hs * dye_h) + (e + style.plasma)[..., None] * (es * dye_e)
    axis = (np.arange(size, dtype=np.float32) + 0.5) / size - 0.5
    falloff = 1 - style.vignette * 2 * (axis[None, :] ** 2 + axis[:, None] ** 2)
    lamp = np.asarray(style.lamp, np.float32) * rng.uniform(0.97, 1.03)
    rgb = lamp * falloff[..., None] * np.exp(-od)
    if style.blur > 0:
        sigma = style.blur * size / 64
        rgb = ndimage.gaussian_filter(rgb, (sigma, sigma, 0), mode="nearest")
    rgb += style.noise * rng.standard_normal(rgb.shape, dtype=np.float32)
    return np.clip(rgb + 0.5, 0, 255).astype(np.uint8)


def render_cell(cls: str, style: LabStyle, rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """One ``size`` x ``size`` field around a cell of fine class ``cls`` as ``style``'s lab
    would photograph it: (size, size, 3) uint8 RGB, before JPEG encoding."""
    if cls not in PBC_PREFIX:
        raise SynthError(f"unknown class {cls!r}; valid: {', '.join(FINE_CLASSES)}")
    mag = style.magnification * rng.uniform(0.96, 1.04)
    canvas = _Canvas.make(size, size * mag / FRAME_UM)
    h, e = _scene(cls, canvas, rng, style.rbc_density)
    return _develop(h, e, style, rng)


def encode_jpeg(rgb: np.ndarray, quality: int) -> bytes:
    """JPEG bytes of an RGB array (PIL's encoder is deterministic for a given quality)."""
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


# ---------------------------------------------------------------------------- labs


def _stamp(labs: int, per_class: int, size: int, seed: int) -> dict[str, object]:
    return {
        "generator_version": GENERATOR_VERSION,
        "labs": labs,
        "per_class": per_class,
        "size": size,
        "seed": seed,
        "lab_names": [s.name for s in LAB_STYLES[:labs]],
        "styles": [asdict(s) for s in LAB_STYLES[:labs]],
    }


def _read_stamp(path: Path) -> dict[str, object] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _occupied(path: Path) -> bool:
    return path.is_file() or (path.is_dir() and any(path.iterdir()))


def _clear(out: Path, names: list[str]) -> None:
    """Remove what an earlier render left, refusing to touch anything it did not write
    (without a stamp, ``out/manifest.csv`` or a lab folder belongs to someone else)."""
    stamp = _read_stamp(out / STAMP_NAME)
    listed = stamp.get("lab_names") if stamp else None
    ours = {str(n) for n in listed} if isinstance(listed, list) else set()
    foreign = [n for n in names if _occupied(out / n) and n not in ours]
    if stamp is None and (out / MANIFEST_NAME).exists():
        foreign.insert(0, MANIFEST_NAME)
    if foreign:
        raise SynthError(
            f"{out / foreign[0]}: exists and was not written by the synthetic generator; choose an empty --out folder"
        )
    for name in sorted(ours):
        if (out / name).is_dir():
            shutil.rmtree(out / name)
    (out / MANIFEST_NAME).unlink(missing_ok=True)


def render_labs(
    out: Path,
    labs: int = 3,
    per_class: int = 40,
    size: int = 64,
    seed: int = 0,
    progress: bool = True,
) -> Path:
    """Render ``labs`` synthetic laboratories x 11 classes x ``per_class`` images of
    ``size`` px into ``out`` and return the merged manifest ``out/manifest.csv``.

    Image ``k`` of class ``c`` in lab ``i`` is drawn from its own random stream
    ``(seed, i, c, k)``, so the files are byte-identical for a seed and adding images or
    labs never changes the existing ones. A folder already rendered with the same
    arguments (``out/synth.json``) is returned as is.
    """
    if not 1 <= labs <= len(LAB_STYLES):
        raise SynthError(f"--labs {labs}: give 1 to {len(LAB_STYLES)}")
    if per_class < 1:
        raise SynthError(f"--per-class {per_class}: give at least 1")
    if size < 16:
        raise SynthError(f"--size {size}: give at least 16 px")
    out = Path(out)
    manifest = out / MANIFEST_NAME
    # Through JSON once, so tuples compare equal to the lists a stamp file reads back as.
    wanted = json.loads(json.dumps({**_stamp(labs, per_class, size, seed), "complete": True}))
    if manifest.is_file() and _read_stamp(out / STAMP_NAME) == wanted:
        return manifest

    styles = LAB_STYLES[:labs]
    _clear(out, [s.name for s in styles])
    out.mkdir(parents=True, exist_ok=True)
    # Written before any image, so an interrupted render is still recognised as ours.
    (out / STAMP_NAME).write_text(json.dumps({**wanted, "complete": False}, indent=1))

    jobs = [(i, c, k) for i in range(labs) for c in range(len(FINE_CLASSES)) for k in range(per_class)]
    for i, c, k in progress_iter(jobs, total=len(jobs), label="render labs", enabled=progress):
        cls, style = FINE_CLASSES[c], styles[i]
        rng = np.random.default_rng([seed, i, c, k])
        folder = out / style.name / PBC_ROOT / PBC_FOLDER[cls]
        if k == 0:
            folder.mkdir(parents=True, exist_ok=True)
        image = render_cell(cls, style, rng, size)
        (folder / f"{PBC_PREFIX[cls]}_{k + 1:06d}.jpg").write_bytes(encode_jpeg(image, style.jpeg_quality))

    lab_manifests = []
    for style in styles:
        path = out / style.name / MANIFEST_NAME
        import_dataset("pbc", out / style.name, source=style.name, out=path, seed=seed, progress=progress)
        lab_manifests.append(path)
    write_manifest(read_manifests(lab_manifests), manifest)
    (out / STAMP_NAME).write_text(json.dumps(wanted, indent=1))
    return manifest
