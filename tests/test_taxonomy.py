"""The 11 classes, their coarse groups, label masks and the per-source alias tables."""

from __future__ import annotations

import numpy as np
import pytest

from leukoshift.taxonomy import (
    COARSE_CODES,
    FINE_CLASSES,
    GROUP_OF,
    GROUPS,
    LABEL_CODES,
    MUNICH_CODES,
    PBC_PREFIXES,
    RAABIN_NAMES,
    WBC5,
    WBCSEG_CODES,
    LabelError,
    at_level,
    comparable_level,
    folder_label,
    group_of,
    group_probs,
    label_indices,
    label_mask,
    members,
    validate_codes,
)

# DESIGN.md's table, written out independently of the module under test.
DESIGN = {
    "SNE": "NE", "BNE": "NE", "MMY": "IG", "MY": "IG", "PMY": "IG", "EO": "EO",
    "BA": "BA", "LY": "LY", "MO": "MO", "ERB": "ERB", "PLT": "PLT",
}  # fmt: skip


def test_classes_and_groups_follow_design() -> None:
    assert tuple(DESIGN) == FINE_CLASSES
    assert GROUP_OF == DESIGN
    assert set(GROUPS) == set(DESIGN.values()) and len(GROUPS) == 8
    assert (*FINE_CLASSES, "NE", "IG") == LABEL_CODES and COARSE_CODES == ("NE", "IG")
    assert set(WBC5) == {"NE", "EO", "BA", "LY", "MO"}


def test_members_and_levels() -> None:
    assert members("NE") == ("SNE", "BNE") and members("IG") == ("MMY", "MY", "PMY")
    assert members("LY") == ("LY",)
    assert group_of("BNE") == "NE" and group_of("NE") == "NE" and group_of("ERB") == "ERB"
    assert comparable_level("SNE", "BNE") == "fine"
    assert comparable_level("NE", "SNE") == "group" and comparable_level("IG") == "group"
    assert comparable_level("LY") == "fine"
    assert at_level("PMY", "group") == "IG" and at_level("PMY", "fine") == "PMY"
    with pytest.raises(LabelError, match="NE is a group"):
        at_level("NE", "fine")
    with pytest.raises(LabelError, match="unknown label code 'NEU'"):
        members("NEU")


def test_label_mask_and_group_probs() -> None:
    mask = label_mask()
    assert mask.shape == (13, 11)
    np.testing.assert_array_equal(mask[:11], np.eye(11))
    assert [FINE_CLASSES[j] for j in np.flatnonzero(mask[LABEL_CODES.index("NE")])] == [
        "SNE",
        "BNE",
    ]
    assert [FINE_CLASSES[j] for j in np.flatnonzero(mask[LABEL_CODES.index("IG")])] == [
        "MMY",
        "MY",
        "PMY",
    ]
    probs = np.random.default_rng(0).dirichlet(np.ones(11), size=5)
    groups = group_probs(probs)
    assert groups.shape == (5, 8)
    np.testing.assert_allclose(groups.sum(1), 1.0)
    np.testing.assert_allclose(groups[:, GROUPS.index("NE")], probs[:, 0] + probs[:, 1])
    np.testing.assert_allclose(groups[:, GROUPS.index("IG")], probs[:, 2:5].sum(1))


def test_source_alias_tables() -> None:
    assert set(PBC_PREFIXES) == {
        "BA", "EO", "ERB", "MMY", "MY", "PMY", "IG", "LY", "MO", "SNE", "BNE",
        "NEUTROPHIL", "PLATELET",
    }  # fmt: skip
    assert PBC_PREFIXES["NEUTROPHIL"] == "NE" and PBC_PREFIXES["PLATELET"] == "PLT"
    assert PBC_PREFIXES["IG"] == "IG"
    inside = {k: v for k, v in MUNICH_CODES.items() if v is not None}
    assert inside == {
        "BAS": "BA", "EBO": "ERB", "EOS": "EO", "LYT": "LY", "MMZ": "MMY", "MON": "MO",
        "MYB": "MY", "NGB": "BNE", "NGS": "SNE", "PMO": "PMY",
    }  # fmt: skip
    assert {k for k, v in MUNICH_CODES.items() if v is None} == {"KSC", "LYA", "MOB", "MYO", "PMB"}
    assert RAABIN_NAMES == {
        "Basophil": "BA",
        "Eosinophil": "EO",
        "Lymphocyte": "LY",
        "Monocyte": "MO",
        "Neutrophil": "NE",
    }
    assert WBCSEG_CODES == {"1": "NE", "2": "LY", "3": "MO", "4": "EO", "5": "BA"}
    for table in (PBC_PREFIXES, RAABIN_NAMES, WBCSEG_CODES, inside):
        validate_codes(table.values())


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("NEUTROPHIL", "NE"), ("Neutrophil", "NE"), ("neutrophils", "NE"),
        ("Band Neutrophil", "BNE"), ("segmented_neutrophil", "SNE"), ("EOSINOPHIL", "EO"),
        ("Basophil", "BA"), ("LYMPHOCYTE", "LY"), ("MONOCYTE", "MO"), ("ig", "IG"),
        ("erythroblast", "ERB"), ("platelet", "PLT"),
    ],
)  # fmt: skip
def test_folder_names(name: str, code: str) -> None:
    assert folder_label(name) == code


def test_folder_label_map_wins_and_is_checked() -> None:
    assert folder_label("Neutrophil", {"neutrophil": "SNE"}) == "SNE"  # user map first
    assert folder_label("Smudge cells", {"smudge cells": None}) is None  # outside the 11
    assert folder_label("Mystery", {"Mystery": "MO"}) == "MO"
    with pytest.raises(LabelError, match="pass --label-map"):
        folder_label("Mystery")
    with pytest.raises(LabelError, match="'Mystery' to 'MON'"):
        folder_label("Mystery", {"Mystery": "MON"})


def test_label_indices() -> None:
    got = label_indices(["SNE", "", "IG", "PLT", None, float("nan")])
    assert got.tolist() == [0, -1, LABEL_CODES.index("IG"), 10, -1, -1]
    assert got.dtype == np.int64
    with pytest.raises(LabelError, match="unknown label code\\(s\\) LYMPH, NEU; valid: SNE"):
        label_indices(["LY", "NEU", "LYMPH"])
