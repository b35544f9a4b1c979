"""Config loading: YAML + ``--set`` overrides, validated, one-line errors naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from leukoshift.config import (
    ConfigError,
    FinetuneConfig,
    ImageConfig,
    Strict,
    load_config,
    parse_overrides,
    save_config,
)


def write(tmp_path: Path, text: str, name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def error_of(*args: object) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(*args)  # type: ignore[arg-type]
    message = str(info.value)
    assert "\n" not in message
    return message


def test_defaults_file_then_overrides(tmp_path: Path) -> None:
    assert load_config(FinetuneConfig) == FinetuneConfig()
    cfg_file = write(
        tmp_path,
        "data:\n  batch_size: 32\n  image: {size: 48}\nmodel:\n  backbone: vit_tiny\n"
        "  kwargs: {depth: 2, drop_path_rate: 0.1}\noptim: {lr: 0.01}\n",
    )
    cfg = load_config(
        FinetuneConfig,
        cfg_file,
        [
            "model.kwargs.depth=4",
            "data.image.preprocess=centre",
            "optim.lr=1e-4",
            "trainer.devices=[0, 1]",
        ],
    )
    assert cfg.data.batch_size == 32 and cfg.data.image.size == 48
    assert cfg.data.image.preprocess == "centre"
    # Free-form kwargs merge key by key: the file's drop_path_rate survives the override.
    assert cfg.model.kwargs == {"depth": 4, "drop_path_rate": 0.1}
    assert cfg.optim.lr == pytest.approx(1e-4)
    assert cfg.trainer.devices == [0, 1]
    assert load_config(FinetuneConfig, None, ["model.kwargs.depth=2"]).model.kwargs == {"depth": 2}
    # defaults < file < overrides
    layered = load_config(
        FinetuneConfig,
        cfg_file,
        ["data.batch_size=8"],
        defaults={"data.batch_size": 4, "mode": "linear"},
    )
    assert layered.data.batch_size == 8 and layered.mode == "linear"


def test_unknown_keys_name_the_dotted_field(tmp_path: Path) -> None:
    cfg_file = write(tmp_path, "data:\n  image:\n    sise: 3\n")
    assert error_of(FinetuneConfig, cfg_file) == f"{cfg_file}: unknown key 'data.image.sise'"
    assert error_of(FinetuneConfig, None, ["data.bach_size=3"]) == "--set: unknown key 'data.bach_size'"
    assert error_of(FinetuneConfig, None, ["nosection.x=1"]) == "--set: unknown key 'nosection.x'"


def test_bad_values_name_the_field_and_value(tmp_path: Path) -> None:
    msg = error_of(FinetuneConfig, None, ["data.batch_size=abc"])
    assert msg.startswith("--set: data.batch_size: Input should be a valid integer") and "'abc'" in msg
    assert error_of(FinetuneConfig, None, ["data.batch_size=0"]) == (
        "--set: data.batch_size: Input should be greater than or equal to 1 (got 0)"
    )
    assert error_of(FinetuneConfig, None, ["optim.lr=-1"]).startswith("--set: optim.lr: Input should be greater than 0")
    assert "optim.name" in error_of(FinetuneConfig, None, ["optim.name=adam"])
    assert error_of(FinetuneConfig, None, ["augment.geometry.crop_scale=[1.0, 0.5]"]) == (
        "--set: augment.geometry.crop_scale: needs 0 < low <= high, got [1.0, 0.5]"
    )
    assert error_of(FinetuneConfig, None, ["data.batch_size.x=1"]).startswith("--set: data.batch_size:")
    assert error_of(FinetuneConfig, None, ["model.kwargs=5"]).startswith("--set: model.kwargs:")
    cfg_file = write(tmp_path, "data:\n  image:\n    size: 4\n")
    assert error_of(FinetuneConfig, cfg_file).startswith(f"{cfg_file}: data.image.size: Input should be greater")
    # A valid file with a bad override blames the override.
    ok_file = write(tmp_path, "data: {batch_size: 8}\n", "ok.yaml")
    assert error_of(FinetuneConfig, ok_file, ["data.image.size=2000"]).startswith("--set: data.image.size:")


def test_file_problems(tmp_path: Path) -> None:
    broken = write(tmp_path, "data:\n  batch_size: 32\n   image: [\n")
    assert error_of(FinetuneConfig, broken) == f"{broken}: line 3 is not valid YAML"
    listing = write(tmp_path, "- a\n- b\n", "list.yaml")
    assert error_of(FinetuneConfig, listing) == f"{listing}: top level must be a mapping of sections"
    assert error_of(FinetuneConfig, tmp_path / "none.yaml") == f"{tmp_path / 'none.yaml'}: config file not found"
    assert load_config(ImageConfig, write(tmp_path, "", "empty.yaml")) == ImageConfig()


def test_override_syntax() -> None:
    assert parse_overrides(["a.b=1", "c=[1, 2]", "d=x=y", "e=", "f=[unclosed"]) == [
        ("a.b", 1),
        ("c", [1, 2]),
        ("d", "x=y"),
        ("e", None),
        ("f", "[unclosed"),
    ]
    for bad in ("novalue", "=3"):
        with pytest.raises(ConfigError, match=r"expected dotted\.key=value"):
            parse_overrides([bad])
    with pytest.raises(ConfigError, match="'batch_size' is a value, not a section"):
        load_config(FinetuneConfig, None, ["data.batch_size=3", "data.batch_size.x=1"])


def test_saved_config_loads_back_identically(tmp_path: Path) -> None:
    cfg = load_config(
        FinetuneConfig,
        None,
        ["model.kwargs.depth=2", "data.image.cache_dir=/tmp/x y", "mode=partial"],
    )
    save_config(cfg, tmp_path / "run" / "config.yaml")
    assert load_config(FinetuneConfig, tmp_path / "run" / "config.yaml") == cfg


def test_custom_sections_are_strict_too() -> None:
    class Small(Strict):
        image: ImageConfig = ImageConfig()

    assert load_config(Small, None, ["image.size=32"]).image.size == 32
    assert error_of(Small, None, ["image.sizes=32"]) == "--set: unknown key 'image.sizes'"


def test_ruler_scales_parse_from_set_and_bad_ones_name_the_field() -> None:
    cfg = load_config(
        FinetuneConfig,
        None,
        ["data.image.preprocess=ruler", "data.image.red_cell_px={pbc: 23.5, cellavision: 70}"],
    )
    assert cfg.data.image.red_cell_px == {"pbc": 23.5, "cellavision": 70.0}
    assert cfg.data.image.ruler_px("cellavision") == 70.0 and cfg.data.image.ruler_field == 3.0
    message = error_of(FinetuneConfig, None, ["data.image.red_cell_px={pbc: -2}"])
    assert "data.image.red_cell_px" in message and "'pbc'" in message
    assert "data.image.ruler_field" in error_of(FinetuneConfig, None, ["data.image.ruler_field=0.5"])
    with pytest.raises(ConfigError, match=r"no entry for source 'bionet' \(has: cellavision, pbc\)"):
        cfg.data.image.ruler_px("bionet")
    with pytest.raises(ConfigError, match=r"source '\(unknown\)'"):
        cfg.data.image.ruler_px(None)
    assert ImageConfig(red_cell_px={"*": 40}).ruler_px("anything") == 40.0
