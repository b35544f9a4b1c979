"""The decode-once image cache: built once, reused, rebuilt only when its inputs change."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

import leukoshift.data.cache as cache_mod
from leukoshift.config import ImageConfig
from leukoshift.data.cache import build_cache, cache_key
from leukoshift.data.images import load_rgb, prepare_image
from leukoshift.data.importers import import_dataset
from leukoshift.data.manifest import read_manifest, write_manifest
from tests.conftest import make_pbc_tree

CFG = ImageConfig(size=16)


@pytest.fixture
def manifest_path(tmp_path: Path) -> Path:
    make_pbc_tree(tmp_path / "pbc", {"BA": 4, "EO": 4, "LY": 4})
    out = tmp_path / "pbc" / "m.csv"
    import_dataset("pbc", tmp_path / "pbc", "pbc", out, progress=False, workers=1)
    return out


def forbid_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*_: object, **__: object) -> np.ndarray:
        raise AssertionError("the cache decoded an image although it should be reused")

    monkeypatch.setattr(cache_mod, "load_rgb", boom)


def test_contents_match_the_shared_preprocessing(manifest_path: Path, tmp_path: Path) -> None:
    m = read_manifest(manifest_path)
    cache = build_cache(m, CFG, cache_dir=tmp_path / "c", progress=False)
    arr = cache.open()
    assert arr.shape == (12, 3, 16, 16) and arr.dtype == np.uint8
    assert cache.failed == () and cache.boxes is None
    for i, path in enumerate(m.abs_paths):
        expected, _ = prepare_image(load_rgb(path), CFG)
        np.testing.assert_array_equal(arr[i], expected.transpose(2, 0, 1))


def test_built_once_then_reused(manifest_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = build_cache(read_manifest(manifest_path), CFG, progress=False)
    # The session fixture points LEUKOSHIFT_CACHE at a temp folder: nothing lands in the repo.
    assert first.path.parent == Path(os.environ["LEUKOSHIFT_CACHE"])
    forbid_decoding(monkeypatch)
    again = build_cache(read_manifest(manifest_path), CFG, progress=False)
    assert again.path == first.path and again.n == 12
    # Relabelling or re-splitting does not touch pixels: same cache.
    m = read_manifest(manifest_path)
    m.frame["label"] = "MO"
    m.frame["split"] = "test"
    assert build_cache(m, CFG, progress=False).path == first.path


def test_rebuilt_when_images_or_settings_change(manifest_path: Path, tmp_path: Path) -> None:
    m = read_manifest(manifest_path)
    base = cache_key(m, CFG)
    assert cache_key(m.select(np.arange(len(m)) != 3), CFG) != base  # a row removed
    reordered = m.select(np.ones(len(m), dtype=bool))
    reordered.frame["sha1"] = list(reversed(m.frame["sha1"]))
    assert cache_key(reordered, CFG) != base  # different images in the rows
    assert cache_key(m, ImageConfig(size=24)) != base
    assert cache_key(m, ImageConfig(size=16, preprocess="centre")) != base
    centre = ImageConfig(size=16, preprocess="centre")
    assert cache_key(m, centre) != cache_key(m, centre.model_copy(update={"centre_margin": 2.5}))
    # The key does not depend on the working folder or on where the manifest lives.
    moved = write_manifest(m, tmp_path / "elsewhere" / "m.csv")
    assert cache_key(read_manifest(moved), CFG) == base

    small = build_cache(m, CFG, cache_dir=tmp_path / "c", progress=False)
    big = build_cache(m, ImageConfig(size=24), cache_dir=tmp_path / "c", progress=False)
    assert small.path != big.path and big.open().shape == (12, 3, 24, 24)
    centred = build_cache(m, centre, cache_dir=tmp_path / "c", progress=False)
    assert centred.boxes is not None and centred.boxes.shape == (12, 5)
    assert (centred.boxes[:, 2] > centred.boxes[:, 0]).all()


def test_failed_rows_are_recorded_and_zero(manifest_path: Path, tmp_path: Path) -> None:
    m = read_manifest(manifest_path)
    broken = m.abs_paths[5]
    broken.write_bytes(broken.read_bytes()[:50])  # truncated after import
    cache = build_cache(m, CFG, cache_dir=tmp_path / "c", progress=False)
    assert cache.failed == (5,)
    assert not cache.open()[5].any() and cache.open()[4].any()
    meta = json.loads(cache.path.with_suffix(".json").read_text())
    assert meta["failed"] == [5] and meta["n"] == 12
    assert build_cache(m, CFG, cache_dir=tmp_path / "c", progress=False).failed == (5,)


def test_interrupted_build_leaves_nothing_behind(
    manifest_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    m = read_manifest(manifest_path)
    calls = {"n": 0}
    real = cache_mod.load_rgb

    def flaky(path: Path) -> np.ndarray:
        calls["n"] += 1
        if calls["n"] == 7:
            raise KeyboardInterrupt
        return real(path)

    monkeypatch.setattr(cache_mod, "load_rgb", flaky)
    folder = tmp_path / "c"
    with pytest.raises(KeyboardInterrupt):
        build_cache(m, CFG, cache_dir=folder, workers=1, progress=False)
    assert list(folder.iterdir()) == []
    monkeypatch.setattr(cache_mod, "load_rgb", real)
    cache = build_cache(m, CFG, cache_dir=folder, progress=False)
    assert sorted(p.name for p in folder.iterdir()) == sorted([cache.path.name, cache.path.with_suffix(".json").name])


def test_incomplete_cache_is_rebuilt(manifest_path: Path, tmp_path: Path) -> None:
    m = read_manifest(manifest_path)
    folder = tmp_path / "c"
    cache = build_cache(m, CFG, cache_dir=folder, progress=False)
    cache.path.with_suffix(".json").unlink()  # array without metadata: not trusted
    rebuilt = build_cache(m, CFG, cache_dir=folder, progress=False)
    assert rebuilt.path == cache.path and cache.path.with_suffix(".json").is_file()


def test_cache_dir_from_config(manifest_path: Path, tmp_path: Path) -> None:
    cfg = ImageConfig(size=16, cache_dir=tmp_path / "cfgcache")
    cache = build_cache(read_manifest(manifest_path), cfg, progress=False)
    assert cache.path.parent == tmp_path / "cfgcache"


def test_ruler_key_follows_this_manifests_lab_scale_only(manifest_path: Path, tmp_path: Path) -> None:
    m = read_manifest(manifest_path)  # one source: pbc
    ruler = ImageConfig(size=16, preprocess="ruler", red_cell_px={"pbc": 8.0, "bccd": 30.0})
    base = cache_key(m, ruler)
    assert cache_key(m, ruler.model_copy(update={"red_cell_px": {"pbc": 8.0, "bccd": 31.0}})) == base
    assert cache_key(m, ruler.model_copy(update={"red_cell_px": {"pbc": 9.0, "bccd": 30.0}})) != base
    assert cache_key(m, ruler.model_copy(update={"ruler_field": 4.0})) != base
    assert cache_key(m, ruler.model_copy(update={"ruler_scale": "image"})) != base
    built = build_cache(m, ruler, cache_dir=tmp_path / "c", progress=False)
    assert built.open().shape == (12, 3, 16, 16) and not built.failed


def test_ruler_without_the_labs_scale_fails_before_reading_images(manifest_path: Path, tmp_path: Path) -> None:
    from leukoshift.config import ConfigError
    from leukoshift.data.cache import check_framing

    ruler = ImageConfig(size=16, preprocess="ruler", red_cell_px={"bccd": 30.0})
    with pytest.raises(ConfigError, match=r"m\.csv: image\.red_cell_px has no entry for source 'pbc' \(has: bccd\)"):
        check_framing(ruler, [manifest_path])
    with pytest.raises(ConfigError, match="no entry for source 'pbc'"):
        build_cache(read_manifest(manifest_path), ruler, cache_dir=tmp_path / "c", progress=False)
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").iterdir())
    check_framing(ruler.model_copy(update={"red_cell_px": {"*": 9.0}}), [manifest_path])  # '*' serves any lab
    check_framing(ImageConfig(size=16, preprocess="centre"), [manifest_path])  # other framings: nothing to check
