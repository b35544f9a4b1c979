"""The Streamlit script of ``leukoshift app``: layout and caching around :mod:`.views`.

Run it through ``leukoshift app --checkpoint CKPT [--manifest M ...] [--results DIR]``;
options arrive after ``--`` on the command line or in ``$LEUKOSHIFT_APP_ARGS``.
Three views, picked in the sidebar (only the open one runs):

- Predict: uploads or examples from the manifests -> class probabilities, the explanation
  overlay and the k most similar training images with their class and lab;
- Data: class counts per source and the UMAP of the manifests' embeddings;
- LOSO: a ``benchmark loso`` results folder, its table and figures.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pandas as pd
import streamlit as st

from leukoshift.app import views
from leukoshift.app.launch import MAX_UPLOAD_MB, AppSettings, settings_from
from leukoshift.errors import UserError
from leukoshift.eval.explain import METHOD_NAMES, Explainer
from leukoshift.taxonomy import FINE_CLASSES, FINE_NAMES

# ----------------------------------------------------------------------------- cached state


@st.cache_resource(show_spinner="Loading the model…")
def get_explainer(checkpoint: str) -> Explainer:
    return Explainer.from_checkpoint(checkpoint)


@st.cache_resource
def model_lock(checkpoint: str) -> threading.Lock:
    # sessions share one model; explanation hooks must not interleave between them
    return threading.Lock()


@st.cache_resource(show_spinner="Embedding the manifests' images (once per checkpoint)…")
def get_gallery(checkpoint: str, manifests: tuple[str, ...]) -> views.Gallery:
    return views.build_gallery(get_explainer(checkpoint), Path(checkpoint), [Path(m) for m in manifests])


@st.cache_data(show_spinner="Counting classes…")
def get_counts(manifests: tuple[str, ...]) -> pd.DataFrame:
    return views.class_counts([Path(m) for m in manifests])


@st.cache_data(show_spinner="Computing the UMAP on the faiss kNN graph…")
def get_umap(checkpoint: str, manifests: tuple[str, ...], max_points: int) -> pd.DataFrame:
    return views.umap_points(get_gallery(checkpoint, manifests), max_points=max_points)


@st.cache_data(show_spinner="Drawing the map…")
def get_umap_html(checkpoint: str, manifests: tuple[str, ...], max_points: int, colour_by: str) -> str:
    points = get_umap(checkpoint, manifests, max_points)
    return views.umap_html(get_gallery(checkpoint, manifests), points, colour_by)


# ----------------------------------------------------------------------------- views


def show_html(html: str, height: int) -> None:
    """A self-contained page (with its own scripts) in an iframe: ``st.iframe`` where this
    Streamlit has it (1.50+), the components API before."""
    if hasattr(st, "iframe"):
        st.iframe(html, height=height)
    else:
        import streamlit.components.v1 as components

        components.html(html, height=height)


def gallery_or_none(settings: AppSettings) -> views.Gallery | None:
    if not settings.manifests:
        return None
    try:
        return get_gallery(str(settings.checkpoint), tuple(map(str, settings.manifests)))
    except UserError as exc:
        st.error(f"Neighbours and examples are off: {exc}")
        return None


def show_result(result: views.Result, explainer: Explainer, gallery: views.Gallery | None) -> None:
    exp = result.explanation
    st.subheader(exp.name)
    for note in result.notes:
        st.warning(note)
    st.markdown(f"**Prediction: {FINE_NAMES[exp.predicted]} ({exp.predicted})**, probability {exp.confidence:.1%}")
    left, right = st.columns([1, 1])
    with left:
        st.image(
            [exp.display, exp.overlay()],
            caption=["input, framed as in training", exp.explained()],
            width=240,
        )
    with right:
        st.plotly_chart(views.probability_figure(exp.probs), key=f"probs-{exp.name}-{id(result)}")
    if result.neighbours is not None and gallery is not None and len(result.neighbours):
        st.markdown(
            f"**{len(result.neighbours)} most similar training images** (cosine similarity of the encoder's features)"
        )
        cols = st.columns(len(result.neighbours))
        for col, row in zip(cols, result.neighbours.itertuples(), strict=True):
            caption = f"{row.label or '?'} {row.label_name} · {row.source} · {row.similarity:.3f}"
            col.image(
                views.neighbour_image(gallery, explainer, int(row.row)),
                caption=caption,
                width="stretch",
            )
    st.divider()


def predict_view(settings: AppSettings) -> None:
    st.header("Predict")
    explainer = get_explainer(str(settings.checkpoint))
    gallery = gallery_or_none(settings)
    with st.sidebar:
        method = st.selectbox("Explanation", list(explainer.methods), format_func=lambda m: METHOD_NAMES[m])
        target = st.selectbox(
            "Class explained",
            ["predicted", *FINE_CLASSES],
            format_func=lambda c: "the predicted class" if c == "predicted" else f"{c} {FINE_NAMES[c]}",
        )
        k = st.slider("Similar training images", 1, 16, settings.k, disabled=gallery is None)
        upload_source = None
        if explainer.image.preprocess == "ruler":
            # ruler framing needs the uploads' scale: the red-cell size of a lab the model knows
            upload_source = st.selectbox(
                "Lab of the uploaded images (its red-cell size sets the framing)",
                sorted(explainer.image.red_cell_px),
                format_func=lambda s: f"{s} ({explainer.image.red_cell_px[s]:g} px per red cell)",
            )
    st.caption(
        f"Model: {explainer.backbone_name}, {explainer.image.size} px, "
        f"framing `{explainer.image.preprocess}`. "
        "Images are framed exactly as in training before the model sees them."
    )
    files = st.file_uploader(
        "Cell images (JPEG, PNG, BMP, TIFF; several at once)",
        accept_multiple_files=True,
        max_upload_size=MAX_UPLOAD_MB,
    )
    picked: list[str] = []
    choices = views.examples(gallery) if gallery is not None else None
    if choices is not None:
        picked = st.multiselect("…or examples from the manifests", list(choices["choice"]))

    items: list[tuple[str, object, list[str], str | None, str | None]] = []  # name, rgb, notes, exclude, lab
    for f in files or []:
        upload = views.read_upload(f.name, f.getvalue())
        if upload.error is not None:
            st.error(upload.error)
            continue
        items.append((upload.name, upload.rgb, upload.notes, None, upload_source))
    if choices is not None:
        for choice in picked:
            row = choices[choices["choice"] == choice].iloc[0]
            upload = views.read_upload(Path(row["path"]).name, Path(row["path"]).read_bytes())
            if upload.error is not None:
                st.error(upload.error)
                continue
            items.append((choice, upload.rgb, upload.notes, str(row["path"]), str(row["source"])))
    if not items:
        st.info("Upload cell images or pick examples to see predictions, explanations and similar training images.")
        return
    results: list[views.Result | None] = [None] * len(items)
    with st.spinner("Predicting and explaining…"), model_lock(str(settings.checkpoint)):
        # Ruler framing frames each image at its lab's scale: one call per lab. Other
        # framings ignore the lab, so all images go in one call (one feature batch).
        ruler = explainer.image.preprocess == "ruler"
        labs = [item[4] if ruler else None for item in items]
        for lab in dict.fromkeys(labs):
            idx = [i for i, x in enumerate(labs) if x == lab]
            part = views.analyse(
                explainer,
                [(items[i][0], items[i][1]) for i in idx],  # type: ignore[misc]
                gallery=gallery,
                k=k,
                target=None if target == "predicted" else target,
                method=method,
                exclude=[items[i][3] for i in idx],
                source=lab,
            )
            for i, result in zip(idx, part, strict=True):
                results[i] = result
    for result, (_, _, notes, _, _) in zip(results, items, strict=True):
        assert result is not None
        result.notes = notes
        show_result(result, explainer, gallery)


def data_view(settings: AppSettings) -> None:
    st.header("Data")
    if not settings.manifests:
        st.info("Start the app with `--manifest M` (repeatable) to see the data.")
        return
    manifests = tuple(map(str, settings.manifests))
    counts = get_counts(manifests)
    st.plotly_chart(views.class_counts_figure(counts), key="counts")
    with st.expander("counts as a table"):
        st.dataframe(counts.pivot(index="label", columns="source", values="count").fillna(0).astype(int))
    gallery = gallery_or_none(settings)
    if gallery is None:
        return
    colour_by = st.radio(
        "Colour the map by",
        ["source", "label"],
        format_func={"source": "source (lab)", "label": "class"}.get,
        horizontal=True,
    )
    points = get_umap(str(settings.checkpoint), manifests, settings.max_points)
    st.markdown(
        f"**UMAP of {len(points)} images** embedded by the checkpoint's encoder "
        "(faiss kNN graph, as in "
        "`leukoshift diagnose`). Hover a point to see the cell; the buttons switch the colouring."
    )
    show_html(
        get_umap_html(str(settings.checkpoint), manifests, settings.max_points, colour_by),
        height=760,
    )


def loso_view(settings: AppSettings) -> None:
    st.header("Leave-one-source-out results")
    default = str(settings.results) if settings.results is not None else ""
    path = st.text_input("Results folder (written by `leukoshift benchmark loso`)", value=default)
    if not path:
        st.info("Enter the folder of a LOSO benchmark run (it holds results.csv, figures/ and report.html).")
        return
    try:
        loso = views.read_loso_folder(path)
    except UserError as exc:
        st.error(str(exc))
        return
    if loso.pivot is not None:
        st.markdown(
            "**Held-out macro-F1** (mean over seeds; rows: methods, columns: the lab held out; "
            "best per column highlighted)"
        )
        st.dataframe(loso.pivot.style.highlight_max(axis=0, color="#c7e9c0").format("{:.3f}"))
    st.markdown(f"**All results** ({len(loso.summary)} rows of results.csv)")
    st.dataframe(loso.summary, hide_index=True)
    if loso.report is not None:
        st.download_button(
            "Download report.html",
            loso.report.read_bytes(),
            file_name="report.html",
            mime="text/html",
        )
    for fig in loso.figures:
        st.image(str(fig), caption=fig.stem.replace("_", " "))


VIEWS = {"Predict": predict_view, "Data": data_view, "LOSO": loso_view}


def main() -> None:
    st.set_page_config(page_title="leukoshift", page_icon="🔬", layout="wide")
    try:
        settings = settings_from(sys.argv[1:])
    except UserError as exc:
        st.error(str(exc))
        st.stop()
    st.sidebar.title("leukoshift")
    view = st.sidebar.radio("View", list(VIEWS))
    try:
        VIEWS[view](settings)
    except UserError as exc:
        st.error(str(exc))


main()
