"""The Streamlit app driven by ``AppTest`` (upload, prediction, every view) and its logic.

The app reads its options from ``$LEUKOSHIFT_APP_ARGS`` here, since ``AppTest`` runs the
script without a command line.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from leukoshift.app import views
from leukoshift.app.launch import ARGS_ENV, SCRIPT, AppSettings, settings_from, streamlit_command
from leukoshift.data.manifest import read_manifest
from leukoshift.errors import UserError
from leukoshift.eval.explain import Explainer
from leukoshift.taxonomy import FINE_NAMES
from tests.conftest import tiny_rgb

AppTest = pytest.importorskip("streamlit.testing.v1").AppTest


def _png(arr: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode=mode).save(buf, "PNG")
    return buf.getvalue()


def _uploads() -> dict[str, bytes]:
    rgb = tiny_rgb(5, 48)
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 128, np.uint8)])
    deep = io.BytesIO()
    tifffile.imwrite(deep, (rgb.astype(np.uint16) * 257))  # 16-bit RGB, the full range
    huge = io.BytesIO()
    Image.new("1", (9000, 9000)).save(huge, "PNG")  # 81 MP, a few kB on disk
    return {
        "cell.png": _png(rgb),
        "notes.txt": b"this is not an image",
        "gray.png": _png(rgb[..., 1]),
        "rgba.png": _png(rgba),
        "deep.tif": deep.getvalue(),
        "huge.png": huge.getvalue(),
    }


@pytest.fixture
def app(app_checkpoint: Path, app_manifest: Path, loso_folder: Path, monkeypatch: pytest.MonkeyPatch) -> AppTest:
    monkeypatch.setenv(
        ARGS_ENV,
        f"--checkpoint '{app_checkpoint}' --manifest '{app_manifest}' --results '{loso_folder}' --k 4",
    )
    at = AppTest.from_file(str(SCRIPT), default_timeout=180)
    at.run()
    assert not at.exception, at.exception
    return at


def _texts(elements: object) -> list[str]:
    return [str(e.value) for e in elements]  # type: ignore[attr-defined]


def test_upload_predict_explain_and_bad_files(app: AppTest, app_checkpoint: Path) -> None:
    assert app.sidebar.radio[0].value == "Predict"
    uploads = _uploads()
    app.file_uploader[0].set_value([(name, data, "application/octet-stream") for name, data in uploads.items()]).run()
    assert not app.exception, app.exception

    errors = " | ".join(_texts(app.error))
    assert "notes.txt: not an image" in errors
    assert "huge.png: 9000 x 9000 px" in errors and "larger than the app accepts" in errors
    assert [s.value for s in app.subheader] == ["cell.png", "gray.png", "rgba.png", "deep.tif"]
    warnings = _texts(app.warning)
    assert sum("grayscale" in w for w in warnings) == 1
    assert any("transparency composited on white" in w for w in warnings)
    assert any("16-bit image scaled to 8 bit" in w for w in warnings)

    # the app shows what the model says for the bytes it was given
    explainer = Explainer.from_checkpoint(app_checkpoint)
    (expected,) = explainer.explain([views.read_upload("cell.png", uploads["cell.png"]).rgb], ["cell.png"])
    predictions = [m for m in _texts(app.markdown) if m.startswith("**Prediction:")]
    assert len(predictions) == 4
    code = expected.predicted
    assert predictions[0] == f"**Prediction: {FINE_NAMES[code]} ({code})**, probability {expected.confidence:.1%}"
    assert len(app.get("plotly_chart")) == 4
    images = app.get("image")
    assert images[0].captions == [
        "input, framed as in training",
        f"Grad-CAM for {code} ({FINE_NAMES[code]})",
    ]
    neighbour_captions = [c for img in images[1:5] for c in img.captions]
    assert len(neighbour_captions) == 4 and all(" · lab_" in c for c in neighbour_captions)

    # explaining another class changes the overlay's caption, not the prediction
    app.sidebar.selectbox[1].set_value("EO").run()
    assert app.get("image")[0].captions[1] == "Grad-CAM for EO (eosinophil)"
    assert next(m for m in _texts(app.markdown) if m.startswith("**Prediction:")) == predictions[0]


def test_examples_data_and_loso_views(app: AppTest, app_manifest: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # an example from the manifest: its own file is not among its neighbours
    choice = app.multiselect[0].options[0]
    app.multiselect[0].select(choice).run()
    assert not app.exception, app.exception
    assert [s.value for s in app.subheader] == [choice]
    captions = [c for img in app.get("image")[1:] for c in img.captions]
    assert len(captions) == 4

    # the UMAP itself is tested in tests/eval; a linear map keeps numba compilation out of this test
    monkeypatch.setattr("leukoshift.eval.projection.umap_embed", lambda feats, **kw: feats[:, :2].copy())
    app.sidebar.radio[0].set_value("Data").run()
    assert not app.exception, app.exception
    n = len(read_manifest(app_manifest))
    assert any(m.startswith(f"**UMAP of {n} images**") for m in _texts(app.markdown))
    counts = app.dataframe[0].value
    assert counts.to_numpy().sum() == n and list(counts.columns) == ["lab_a", "lab_b"]
    assert len(app.get("iframe")) == 1 and len(app.get("plotly_chart")) == 1

    app.sidebar.radio[0].set_value("LOSO").run()
    assert not app.exception, app.exception
    pivot = app.dataframe[0].value
    assert pivot.loc["dino+ft", "lab_a"] == pytest.approx(0.63)
    assert pivot.loc["supervised", "mean"] == pytest.approx((0.41 + 0.52) / 2)
    assert len(app.dataframe[1].value) == 4
    assert [img.captions[0] for img in app.get("image")] == ["f1 lab a", "in vs out"]
    app.text_input[0].input("/nonexistent/loso").run()
    assert [e.value for e in app.error] == ["/nonexistent/loso: folder not found"]


def test_ruler_framed_model_asks_for_the_uploads_lab(
    app_manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.explain.conftest import make_checkpoint

    scales = {"lab_a": 12.9, "lab_b": 9.3}  # the synthetic labs' red cells at 48 px
    ckpt = make_checkpoint(tmp_path / "best.ckpt", "regnetx_002", 64, preprocess="ruler", red_cell_px=scales)
    monkeypatch.setenv(ARGS_ENV, f"--checkpoint '{ckpt}' --manifest '{app_manifest}' --k 2")
    at = AppTest.from_file(str(SCRIPT), default_timeout=180)
    at.run()
    assert not at.exception, at.exception
    lab = next(box for box in at.sidebar.selectbox if box.label.startswith("Lab of the uploaded images"))
    assert list(lab.options) == ["lab_a (12.9 px per red cell)", "lab_b (9.3 px per red cell)"]
    lab.set_value("lab_b")
    # an upload framed at lab_b's scale, beside a manifest example framed at its own lab's
    choice = at.multiselect[0].options[0]
    at.multiselect[0].select(choice)
    at.file_uploader[0].set_value([("cell.png", _uploads()["cell.png"], "image/png")]).run()
    assert not at.exception, at.exception
    assert [s.value for s in at.subheader] == ["cell.png", choice]
    rgb = views.read_upload("cell.png", _uploads()["cell.png"]).rgb
    (expected,) = Explainer.from_checkpoint(ckpt).explain([rgb], ["cell.png"], source="lab_b")
    shown = next(m for m in _texts(at.markdown) if m.startswith("**Prediction:"))
    assert f"probability {expected.confidence:.1%}" in shown


# ----------------------------------------------------------------------------- logic


def test_read_upload_converts_and_explains_what_it_did() -> None:
    rgb = tiny_rgb(1, 32)
    ok = views.read_upload("a.png", _png(rgb))
    assert ok.error is None and ok.notes == [] and np.array_equal(ok.rgb, rgb)
    alpha = np.dstack([rgb, np.zeros(rgb.shape[:2], np.uint8)])  # fully transparent
    clear = views.read_upload("b.png", _png(alpha))
    assert clear.notes == ["transparency composited on white"] and (clear.rgb == 255).all()
    for name, pixels, layout in [
        (
            "planar.tif",
            np.stack([rgb[..., i] for i in range(3)]).astype(np.uint16) * 257,
            {"planarconfig": "separate"},
        ),
        ("12bit.tif", rgb.astype(np.uint16) * 16, {}),  # a 12-bit camera in a 16-bit file
    ]:
        buf = io.BytesIO()
        tifffile.imwrite(buf, pixels, photometric="rgb", **layout)
        deep = views.read_upload(name, buf.getvalue())
        assert deep.error is None and deep.notes == ["16-bit image scaled to 8 bit"]
        assert deep.rgb is not None and np.abs(deep.rgb.astype(int) - rgb).max() <= 1
    assert views.read_upload("d.png", b"").error == "d.png: the file is empty"
    assert "too small" in (views.read_upload("e.png", _png(rgb[:4, :4])).error or "")
    truncated = views.read_upload("f.png", _png(rgb)[:60])
    assert truncated.error is not None and truncated.error.startswith("f.png: ")


def test_neighbours_are_the_nearest_training_images(app_checkpoint: Path, app_manifest: Path, tmp_path: Path) -> None:
    explainer = Explainer.from_checkpoint(app_checkpoint)
    gallery = views.build_gallery(explainer, app_checkpoint, [app_manifest], cache_dir=tmp_path)
    assert set(gallery.frame["split"].iloc[gallery.bank]) == {"train"}
    query = explainer.features([explainer.frame(tiny_rgb(7, 48))[0]])
    near = views.neighbours(gallery, query, k=5)
    bank = gallery.feats[gallery.bank]
    cos = (bank / np.linalg.norm(bank, axis=1, keepdims=True)) @ (query[0] / np.linalg.norm(query[0]))
    top = gallery.bank[np.argsort(-cos)[:5]]
    np.testing.assert_array_equal(near["row"], top)
    np.testing.assert_allclose(near["similarity"], np.sort(cos)[::-1][:5], rtol=1e-4)
    assert (near["label_name"] == [FINE_NAMES[c] for c in near["label"]]).all()
    # a picked example is excluded from its own neighbours
    own = gallery.frame["path"].iloc[gallery.bank[0]]
    rgb = views.read_upload("x.jpg", Path(own).read_bytes()).rgb
    feats = explainer.features([explainer.frame(rgb)[0]])
    assert own not in set(views.neighbours(gallery, feats, k=5, exclude=own)["path"])
    assert len(views.neighbours(gallery, feats, k=5, exclude=own)) == 5


def test_loso_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"no results\.csv here"):
        views.read_loso_folder(tmp_path)


def test_settings_and_streamlit_command(app_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ARGS_ENV, raising=False)
    s = settings_from(["--checkpoint", "c.ckpt", "--manifest", "a.csv", "--manifest", "b.csv"], {})
    assert s == AppSettings(Path("c.ckpt"), (Path("a.csv"), Path("b.csv")))
    assert settings_from(["ignored"], {ARGS_ENV: "--checkpoint 'x y.ckpt' --k 3"}).checkpoint == Path("x y.ckpt")
    with pytest.raises(UserError, match="app options: the following arguments are required: --checkpoint"):
        settings_from(["-q"], {})
    cmd = streamlit_command(AppSettings(app_checkpoint, results=tmp_path), port=8765)
    assert cmd[:5] == [sys.executable, "-m", "streamlit", "run", str(SCRIPT)]
    assert cmd[cmd.index("--server.port") + 1] == "8765" and cmd[cmd.index("--server.headless") + 1] == "true"
    assert cmd[cmd.index("--browser.gatherUsageStats") + 1] == "false"
    after = cmd[cmd.index("--") + 1 :]
    assert settings_from(after, {}) == AppSettings(app_checkpoint.resolve(), results=tmp_path.resolve())


def test_app_command(
    app_checkpoint: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from leukoshift.cli import main

    launched: list[list[str]] = []
    monkeypatch.setattr("subprocess.call", lambda cmd: launched.append(cmd) or 0)
    monkeypatch.setenv("COLUMNS", "200")

    def run(*argv: str) -> int:
        monkeypatch.setattr(sys, "argv", ["leukoshift", "app", *argv])
        try:
            main()
        except SystemExit as exc:
            return int(exc.code or 0)
        return 0

    assert run("--checkpoint", str(app_checkpoint), "--port", "9123") == 0
    assert launched[0][launched[0].index("--server.port") + 1] == "9123"
    assert run("--checkpoint", str(tmp_path / "none.ckpt")) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: --checkpoint {tmp_path / 'none.ckpt'}: file not found"
    assert len(launched) == 1
