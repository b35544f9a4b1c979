"""The command line: command groups, the ``data`` commands, one-line errors with exit code 2.

Commands run in-process through :func:`leukoshift.cli.main` (the console script's entry
point, which turns a UserError into one line), plus one real ``python -m leukoshift``.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from leukoshift.cli import main
from leukoshift.data.manifest import read_manifest
from tests.conftest import make_pbc_tree, write_image

GROUPS = (
    "data",
    "ssl",
    "finetune",
    "evaluate",
    "predict",
    "benchmark",
    "diagnose",
    "explain",
    "wise",
    "app",
    "demo",
)


def run(argv: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["leukoshift", *argv])
    monkeypatch.setenv("COLUMNS", "200")
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    for needle in needles:
        assert needle in lines[0]
    assert "Traceback" not in err


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    base = make_pbc_tree(tmp_path / "pbc", {"BA": 6, "EO": 6, "LY": 6})
    (base / "eosinophil" / "EO_bad.jpg").write_bytes(b"broken")
    return tmp_path / "pbc"


def test_help_lists_every_command_group(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    code, out, _ = run(["--help"], capsys, monkeypatch)
    assert code == 0
    listed = {line.strip("│ ").split(" ")[0] for line in out.splitlines() if line.startswith("│ ")}
    assert set(GROUPS) <= listed
    code, out, _ = run(["data", "--help"], capsys, monkeypatch)
    assert code == 0
    for command in ("import", "summary", "split", "cache", "synth", "appearance", "near-duplicates"):
        assert f"│ {command} " in out


def test_module_entry_point() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "leukoshift",
            "data",
            "import",
            "nope",
            "/nonexistent",
            "-s",
            "x",
            "-o",
            "m.csv",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: unknown format 'nope'; valid: pbc, munich, raabin, wbcseg, folder, unlabeled"


def test_import_summary_split_cache(
    tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # relative paths on the command line
    code, out, err = run(
        ["data", "import", "pbc", "pbc", "--source", "lab A", "--out", "runs/pbc.csv"],
        capsys,
        monkeypatch,
    )
    assert code == 0, err
    assert "18 images imported" in out and "1 file(s) rejected" in out and "EO_bad.jpg" in out
    manifest = tmp_path / "runs" / "pbc.csv"
    m = read_manifest(manifest)
    assert len(m) == 18 and all(p.is_file() for p in m.abs_paths)
    assert set(m.frame["source"]) == {"lab A"}

    write_image(tmp_path / "pool" / "a.png", 900)
    write_image(tmp_path / "pool" / "b.png", 901)
    run(
        ["data", "import", "unlabeled", "pool", "-s", "pool", "-o", "runs/pool.csv"],
        capsys,
        monkeypatch,
    )
    code, out, err = run(
        ["data", "summary", "runs/pbc.csv", "runs/pool.csv", "--plot", "runs/counts.png"],
        capsys,
        monkeypatch,
    )
    assert code == 0, err
    table = [re.split("[│┃]", line)[1:-1] for line in out.splitlines() if line[:1] in "│┃"]
    cells = {row[0].strip(): [c.strip() for c in row[1:]] for row in table}
    assert cells["class"] == ["lab A", "pool", "total"]
    assert cells["EO"] == ["6", "0", "6"] and cells["BA"] == ["6", "0", "6"]
    assert cells["(unlabeled)"] == ["0", "2", "2"] and cells["total"] == ["18", "2", "20"]
    with Image.open(tmp_path / "runs" / "counts.png") as im:
        assert im.format == "PNG" and im.size[0] > 300 and im.size[1] > 200
        assert len(np.unique(np.asarray(im.convert("RGB")).reshape(-1, 3), axis=0)) > 3  # not blank

    code, out, _ = run(
        [
            "data",
            "split",
            "runs/pbc.csv",
            "--seed",
            "7",
            "--ratios",
            "0.5,0.25,0.25",
            "--out",
            "runs/s.csv",
        ],
        capsys,
        monkeypatch,
    )
    assert code == 0
    resplit = pd.read_csv(tmp_path / "runs" / "s.csv", dtype=str, keep_default_na=False)
    # 6 images per class at 0.5/0.25/0.25: round(1.5) = 2 each for val and test.
    for _, split in resplit.groupby("label")["split"]:
        assert split.value_counts().to_dict() == {"train": 2, "val": 2, "test": 2}
    assert resplit["sha1"].tolist() == m.frame["sha1"].tolist()
    assert "lab A" in out and "train" in out
    assert all(Path(p).is_absolute() or (tmp_path / "runs" / p).is_file() for p in resplit["path"])

    code, out, err = run(["data", "cache", "runs/pbc.csv", "--set", "image.size=16"], capsys, monkeypatch)
    assert code == 0, err
    assert "18 images" in out and "(0 failed)" in out
    cache_file = Path(out.split(" -> ")[1].split(" (")[0])
    assert np.load(cache_file, mmap_mode="r").shape == (18, 3, 16, 16)


def test_data_appearance_table_hint_and_csv(
    synth_manifest: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    csv = tmp_path / "appearance.csv"
    argv = ["data", "appearance", str(synth_manifest), "--set", "image.size=40", "--reference", "lab_a"]
    code, out, err = run([*argv, "--per-source", "40", "--csv", str(csv)], capsys, monkeypatch)
    assert code == 0, err
    assert "lab appearance at 40 px" in out and "lab_b" in out
    frame = pd.read_csv(csv).set_index("source")
    assert frame.loc["lab_a", "blur_px"] == 0.0 and frame.loc["lab_b", "blur_px"] > 0.2  # synth: 0.25 vs 0.7 px
    widest = frame["blur_sigma_224"].max()
    assert f"augment.colour.blur_sigma=[0.1,{widest:.1f}]" in out
    code, _, err = run([*argv[:-1], "lab_z"], capsys, monkeypatch)
    assert_one_line_error(code, err, "--reference 'lab_z'", "lab_a, lab_b")


@pytest.mark.parametrize(
    ("argv", "needles"),
    [
        (
            ["data", "import", "pbc", "{tmp}/missing", "-s", "x", "-o", "{tmp}/m.csv"],
            ["missing: folder not found"],
        ),
        (
            ["data", "import", "pbcc", "{tmp}", "-s", "x", "-o", "{tmp}/m.csv"],
            ["unknown format 'pbcc'", "valid: pbc"],
        ),
        (
            ["data", "import", "pbc", "{tmp}/empty", "-s", "x", "-o", "{tmp}/m.csv"],
            ["empty: no image files found"],
        ),
        (
            [
                "data",
                "import",
                "pbc",
                "{tree}",
                "-s",
                "x",
                "-o",
                "{tmp}/m.csv",
                "--ratios",
                "0.5,0.5,0.5",
            ],
            ["split ratios"],
        ),
        (
            ["data", "import", "pbc", "{tree}", "-s", "x", "-o", "{tmp}/m.csv", "--ratios", "a,b"],
            ["--ratios 'a,b'"],
        ),
        (["data", "cache", "{tmp}/m.csv", "--set", "image.sise=3"], ["unknown key 'image.sise'"]),
        (["data", "cache", "{tmp}/m.csv", "--set", "image.size=abc"], ["image.size", "'abc'"]),
        (["data", "cache", "{tmp}/nope.csv"], ["nope.csv: manifest not found"]),
        (["data", "summary", "{tmp}/bad.csv"], ["bad.csv: missing column(s)"]),
        (
            [
                "data",
                "import",
                "folder",
                "{tree}",
                "-s",
                "x",
                "-o",
                "{tmp}/m.csv",
                "--label-map",
                "{tmp}/map.yaml",
            ],
            ["[x]", "NEU"],
        ),
    ],
)
def test_errors_are_one_line_with_exit_code_2(
    argv: list[str],
    needles: list[str],
    tree: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.csv").write_text("path\nx.jpg\n")
    (tmp_path / "map.yaml").write_text("'[x]': NEU\n")  # brackets must print as text
    code, _, err = run([a.format(tmp=tmp_path, tree=tree) for a in argv], capsys, monkeypatch)
    assert_one_line_error(code, err, *needles)


def test_data_near_duplicates_reports_a_turned_copy_with_another_label(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    base = make_pbc_tree(tmp_path / "pbc", {"LY": 6, "EO": 6}, size=48)
    original = np.asarray(Image.open(base / "lymphocyte" / "LY_1001.jpg"))
    write_image(base / "eosinophil" / "EO_2000.png", rgb=np.ascontiguousarray(np.rot90(original)))
    manifest = tmp_path / "pbc.csv"
    imported = ["data", "import", "pbc", str(tmp_path / "pbc"), "-s", "pbc", "-o", str(manifest)]
    code, _, err = run(imported, capsys, monkeypatch)
    assert code == 0, err
    csv = tmp_path / "near.csv"
    argv = ["data", "near-duplicates", str(manifest), "--set", "image.preprocess=resize", "--set", "image.size=48"]
    code, out, err = run([*argv, "--csv", str(csv)], capsys, monkeypatch)
    assert code == 0, err
    header = "source  images  in_groups  groups  copies  mixed_labels  across_splits"
    assert header in out and re.search(r"\n\s*pbc\s+13\s+2\s+1\s+1\s+1\s+\d\n", out), out
    assert "pbc: copies with different labels: " in out and "EO_2000.png (EO)" in out and "LY_1001.jpg (LY)" in out
    report = pd.read_csv(csv)
    assert sorted(Path(p).name for p in report["path"]) == ["EO_2000.png", "LY_1001.jpg"]
    assert report["conflict"].all() and (report["r"] > 0.99).all()
    distinct = tmp_path / "distinct" / "pbc.csv"
    code, out, err = run([*argv, "--distinct", str(distinct)], capsys, monkeypatch)
    assert code == 0, err
    assert "12 row(s), 1 copies left out" in out
    kept = read_manifest(distinct)
    names = {p.name for p in kept.abs_paths}
    # The first of the pair in the manifest's order stays (eosinophil/ sorts before lymphocyte/).
    assert len(kept) == 12 and "EO_2000.png" in names and "LY_1001.jpg" not in names
    assert all(p.is_file() for p in kept.abs_paths)
    code, _, err = run([*argv, "--threshold", "0.2"], capsys, monkeypatch)
    assert code == 2 and "threshold" in err


def test_data_ruler_measures_each_lab_and_names_the_unmeasurable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.domain.test_ruler import field

    rows = []
    for i in range(8):  # lab_x: lone red cells 24 px across; lab_y: the same cells cropped tight
        for source, rgb in (("lab_x", field(1.0, seed=i)), ("lab_y", field(1.0, seed=i)[50:110, 50:110])):
            path = write_image(tmp_path / source / f"{i}.png", rgb=rgb)
            rows.append({"path": str(path), "label": "LY", "source": source, "split": "train", "sha1": f"{source}{i}"})
    broken = tmp_path / "lab_x" / "broken.png"
    broken.write_bytes(b"not a png")
    rows.append({"path": str(broken), "label": "LY", "source": "lab_x", "split": "train", "sha1": "b"})
    manifest = tmp_path / "m.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    code, out, err = run(["data", "ruler", str(manifest)], capsys, monkeypatch)
    assert code == 0, err
    assert re.search(r"skipped: .*broken\.png", out), out
    assert re.search(r"lab_x\s+8\s+48\s+2[34]\.\d\s+1\.\d+\s+ok", out), out  # 6 lone cells per image
    assert re.search(r"lab_y\s+8\s+\d\s+-\s+-\s+not measurable", out), out
    assert re.search(r"--set image\.preprocess=ruler --set 'image\.red_cell_px=\{lab_x: 2[34]\.\d\}'", out), out
    assert "need their scale set by hand" in out
    code, _, err = run(["data", "ruler", str(manifest), "--per-source", "0"], capsys, monkeypatch)
    assert code == 2 and "per-source" in err
