"""The 11 blood-cell classes, their coarse groups, and the names each source uses for them.

Sources label at different depths: PBC gives 11 fine classes, most other labs the five
white-cell types, and some PBC rows only "IG" or "NE". A manifest row keeps the finest
code its source gives (one of :data:`LABEL_CODES`). Models always predict the 11 fine
classes; a prediction is compared with the truth at the finest level both share, which is
the coarse group whenever the truth is coarse. The same rule lets a loss train on a coarse
row: its target is the group and the group's probability is the sum of its members'.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Literal

import numpy as np

from leukoshift.errors import UserError

# fmt: off
FINE_CLASSES: tuple[str, ...] = (
    "SNE", "BNE", "MMY", "MY", "PMY", "EO", "BA", "LY", "MO", "ERB", "PLT",
)
FINE_NAMES: dict[str, str] = {
    "SNE": "segmented neutrophil",
    "BNE": "band neutrophil",
    "MMY": "metamyelocyte",
    "MY": "myelocyte",
    "PMY": "promyelocyte",
    "EO": "eosinophil",
    "BA": "basophil",
    "LY": "lymphocyte",
    "MO": "monocyte",
    "ERB": "erythroblast",
    "PLT": "platelet",
}
GROUP_OF: dict[str, str] = {
    "SNE": "NE", "BNE": "NE",
    "MMY": "IG", "MY": "IG", "PMY": "IG",
    "EO": "EO", "BA": "BA", "LY": "LY", "MO": "MO", "ERB": "ERB", "PLT": "PLT",
}
GROUPS: tuple[str, ...] = ("NE", "IG", "EO", "BA", "LY", "MO", "ERB", "PLT")
GROUP_NAMES: dict[str, str] = {
    "NE": "neutrophil", "IG": "immature granulocyte", "EO": "eosinophil", "BA": "basophil",
    "LY": "lymphocyte", "MO": "monocyte", "ERB": "erythroblast", "PLT": "platelet",
}
# fmt: on
#: Codes that only exist as a group (a row may carry them when its source is not finer).
COARSE_CODES: tuple[str, ...] = ("NE", "IG")
#: Every code a manifest row may carry, in a fixed order: label indices point into this.
LABEL_CODES: tuple[str, ...] = FINE_CLASSES + COARSE_CODES
#: The five white-cell types most external labs label (``wbc5`` in DESIGN.md).
WBC5: tuple[str, ...] = ("NE", "EO", "BA", "LY", "MO")

Level = Literal["fine", "group"]

FINE_INDEX: dict[str, int] = {c: i for i, c in enumerate(FINE_CLASSES)}
LABEL_INDEX: dict[str, int] = {c: i for i, c in enumerate(LABEL_CODES)}
GROUP_INDEX: dict[str, int] = {g: i for i, g in enumerate(GROUPS)}


class LabelError(UserError):
    """A label that is not one of the project's codes."""


def members(code: str) -> tuple[str, ...]:
    """Fine classes a label code stands for (itself when fine)."""
    if code in FINE_INDEX:
        return (code,)
    if code in COARSE_CODES:
        return tuple(c for c in FINE_CLASSES if GROUP_OF[c] == code)
    raise LabelError(f"unknown label code {code!r}; valid: {', '.join(LABEL_CODES)}")


def is_fine(code: str) -> bool:
    """True for the 11 fine codes (note LY, EO, ... are fine *and* single-member groups)."""
    if code not in LABEL_INDEX:
        raise LabelError(f"unknown label code {code!r}; valid: {', '.join(LABEL_CODES)}")
    return code in FINE_INDEX


def level_of(code: str) -> Level:
    return "fine" if is_fine(code) else "group"


def group_of(code: str) -> str:
    """Coarse group of any label code (NE for SNE, NE for NE, LY for LY)."""
    if code in GROUP_OF:
        return GROUP_OF[code]
    if code in COARSE_CODES:
        return code
    raise LabelError(f"unknown label code {code!r}; valid: {', '.join(LABEL_CODES)}")


def comparable_level(truth: str, other: str | None = None) -> Level:
    """Finest level at which two labels (or a label and an 11-class prediction) compare."""
    if other is None:
        return level_of(truth)
    return "fine" if is_fine(truth) and is_fine(other) else "group"


def at_level(code: str, level: Level) -> str:
    """A code expressed at ``level``: fine codes stay fine or become their group."""
    if level == "fine":
        if not is_fine(code):
            raise LabelError(f"{code} is a group and has no fine code")
        return code
    return group_of(code)


def label_mask(dtype: type = np.float32) -> np.ndarray:
    """(len(LABEL_CODES), 11) matrix: row ``i`` marks the fine classes label ``i`` covers.

    Summing fine probabilities with this matrix gives each label's probability, which is
    how coarse rows enter the loss and how predictions are scored at the group level.
    """
    mask: np.ndarray = np.zeros((len(LABEL_CODES), len(FINE_CLASSES)), dtype=dtype)
    for i, code in enumerate(LABEL_CODES):
        for member in members(code):
            mask[i, FINE_INDEX[member]] = 1
    return mask


def group_matrix(dtype: type = np.float32) -> np.ndarray:
    """(11, 8) matrix mapping fine probabilities to group probabilities."""
    mat: np.ndarray = np.zeros((len(FINE_CLASSES), len(GROUPS)), dtype=dtype)
    for i, code in enumerate(FINE_CLASSES):
        mat[i, GROUP_INDEX[GROUP_OF[code]]] = 1
    return mat


def group_probs(fine_probs: np.ndarray) -> np.ndarray:
    """Sum (N, 11) fine probabilities within each coarse group -> (N, 8)."""
    return np.asarray(fine_probs) @ group_matrix(np.float64)


# --------------------------------------------------------------------------------------
# Per-source aliases: the names publishers use, mapped to codes. ``None`` marks a class
# that is recorded (so the row is not lost) but lies outside the 11 classes.

# fmt: off
PBC_PREFIXES: dict[str, str] = {
    "BA": "BA", "EO": "EO", "ERB": "ERB", "MMY": "MMY", "MY": "MY", "PMY": "PMY",
    "IG": "IG", "LY": "LY", "MO": "MO", "SNE": "SNE", "BNE": "BNE",
    "NEUTROPHIL": "NE", "PLATELET": "PLT",
}

#: AML-Cytomorphology_LMU (Matek et al. 2019) folder codes.
MUNICH_CODES: dict[str, str | None] = {
    "BAS": "BA", "EBO": "ERB", "EOS": "EO", "LYT": "LY", "MMZ": "MMY", "MON": "MO",
    "MYB": "MY", "NGB": "BNE", "NGS": "SNE", "PMO": "PMY",
    # smudge cell, atypical lymphocyte, monoblast, myeloblast, bilobed promyelocyte
    "KSC": None, "LYA": None, "MOB": None, "MYO": None, "PMB": None,
}

RAABIN_NAMES: dict[str, str] = {
    "Basophil": "BA", "Eosinophil": "EO", "Lymphocyte": "LY", "Monocyte": "MO",
    "Neutrophil": "NE",
}

#: ``Class Labels of Dataset N.csv`` of the WBC segmentation data sets (Zheng et al. 2018).
WBCSEG_CODES: dict[str, str] = {"1": "NE", "2": "LY", "3": "MO", "4": "EO", "5": "BA"}

#: Folder names seen in public releases, compared case- and punctuation-insensitively.
FOLDER_NAMES: dict[str, str] = {
    "neutrophil": "NE", "neutrophils": "NE", "ne": "NE", "neu": "NE",
    "segmentedneutrophil": "SNE", "segmented": "SNE", "sne": "SNE", "seg": "SNE",
    "bandneutrophil": "BNE", "band": "BNE", "bne": "BNE",
    "metamyelocyte": "MMY", "metamyelocytes": "MMY", "mmy": "MMY",
    "myelocyte": "MY", "myelocytes": "MY", "my": "MY",
    "promyelocyte": "PMY", "promyelocytes": "PMY", "pmy": "PMY",
    "ig": "IG", "immaturegranulocyte": "IG", "immaturegranulocytes": "IG",
    "eosinophil": "EO", "eosinophils": "EO", "eo": "EO", "eos": "EO",
    "basophil": "BA", "basophils": "BA", "ba": "BA", "bas": "BA",
    "lymphocyte": "LY", "lymphocytes": "LY", "ly": "LY", "lym": "LY",
    "monocyte": "MO", "monocytes": "MO", "mo": "MO", "mon": "MO",
    "erythroblast": "ERB", "erythroblasts": "ERB", "erb": "ERB", "nrbc": "ERB",
    "platelet": "PLT", "platelets": "PLT", "plt": "PLT", "thrombocyte": "PLT",
}
# fmt: on


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def folder_label(name: str, label_map: dict[str, str | None] | None = None) -> str | None:
    """Code for a class-folder name, through a user map first, then :data:`FOLDER_NAMES`.

    Raises :class:`LabelError` for a name nobody maps; returns ``None`` for names a
    user map deliberately marks as outside the taxonomy.
    """
    if label_map is not None:
        for key, value in label_map.items():
            if key == name or _key(key) == _key(name):
                if value is not None and value not in LABEL_INDEX:
                    raise LabelError(
                        f"label map sends {name!r} to {value!r}, which is not one of {', '.join(LABEL_CODES)}"
                    )
                return value
    code = FOLDER_NAMES.get(_key(name))
    if code is None:
        raise LabelError(
            f"class folder {name!r} matches no known cell type; pass --label-map FILE.yaml "
            "mapping folder names to codes"
        )
    return code


def _as_code(value: object) -> str:
    """A label cell as text: None / NaN (what pandas gives for an empty cell) -> ""."""
    if value is None or (isinstance(value, float) and value != value):
        return ""
    return str(value)


def validate_codes(codes: Iterable[object]) -> None:
    bad = sorted({c for c in map(_as_code, codes) if c and c not in LABEL_INDEX})
    if bad:
        raise LabelError(f"unknown label code(s) {', '.join(bad)}; valid: {', '.join(LABEL_CODES)}")


def label_indices(codes: Sequence[object]) -> np.ndarray:
    """Label indices into :data:`LABEL_CODES`, -1 for unlabeled (empty / missing) rows."""
    text = [_as_code(c) for c in codes]
    validate_codes(text)
    return np.array([LABEL_INDEX[c] if c else -1 for c in text], dtype=np.int64)
