"""Issue 4 (a): faiss kNN accuracy of a backbone's features on PBC test, PBC train as the
memory bank, against the same architecture with random weights.

    python benchmarks/ssl_knn.py --backbone runs/dino/backbone.safetensors --manifest runs/data/pbc.csv \
        [--external runs/data/cellavision.csv --external runs/data/bionet.csv ...]

Both encoders see the same cached images (the backbone card's size and framing) through
the same stain normaliser when the backbone was trained with one; the kNN
is leukoshift's (cosine similarity, k=20, weighted vote, Wu et al. 2018) over the label
codes of the manifest (11 fine classes plus PBC's coarse NE and IG rows).

``--external`` also scores every image of other labs with the same PBC-train bank, at the
5-type level as fine-tuned models are scored there (``leukoshift.eval.metrics.score``:
the bank's fine-class votes summed per group). This asks whether the features carry
across labs before any fine-tuning can overwrite them. PBC's coarse rows leave the bank
for this, since a vote for "NE" has no fine class to land on.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import f1_score

from leukoshift.data.loaders import ImageTable, load_table
from leukoshift.eval.embed import embed_table
from leukoshift.eval.knn import knn_classify
from leukoshift.eval.metrics import score
from leukoshift.models.backbones import Encoder, create_backbone
from leukoshift.models.encoders import load_encoder
from leukoshift.taxonomy import FINE_CLASSES, LABEL_CODES


def knn_scores(
    encoder: torch.nn.Module, bank: ImageTable, query: ImageTable, k: int, external: dict[str, ImageTable]
) -> dict[str, object]:
    fb = embed_table(encoder, bank, progress=False)
    fq = embed_table(encoder, query, progress=False)
    pred, _ = knn_classify(fb, bank.labels, fq, k=k, n_classes=len(LABEL_CODES))
    truth = query.labels
    out: dict[str, object] = {
        "accuracy": float((pred == truth).mean()),
        "macro_f1": float(f1_score(truth, pred, labels=np.unique(truth), average="macro")),
    }
    fine = bank.labels < len(FINE_CLASSES)
    for name, table in external.items():
        _, votes = knn_classify(
            fb[fine], bank.labels[fine], embed_table(encoder, table, progress=False), k=k, n_classes=len(FINE_CLASSES)
        )
        s = score(votes, list(table.frame["label"]), level="group")
        out[name] = {"n": s.n, "accuracy": s.accuracy, "macro_f1": s.macro_f1}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", type=Path, required=True, help="backbone.safetensors (with card) or a checkpoint")
    parser.add_argument("--manifest", type=Path, default=Path("runs/data/pbc.csv"))
    parser.add_argument(
        "--external", type=Path, action="append", default=[], help="another lab's manifest, scored whole (repeatable)"
    )
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0, help="seed of the random-weights encoder")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    loaded = load_encoder(args.backbone)
    bank = load_table([args.manifest], loaded.image, split="train", labelled=True, progress=False)
    query = load_table([args.manifest], loaded.image, split="test", labelled=True, progress=False)
    external = {
        path.stem: load_table([path], loaded.image, split="all", labelled=True, progress=False)
        for path in args.external
    }
    torch.manual_seed(args.seed)
    name = loaded.card.get("backbone", "")
    # The reference differs in the weights alone: it takes the trained encoder's stain
    # normaliser (augment.normalize, fitted target included; Identity when there is none).
    backbone = create_backbone(name, img_size=loaded.image.size, **(loaded.card.get("timm_kwargs") or {}))
    random = Encoder(backbone, stain=loaded.encoder.stain)
    results = {
        "backbone": str(args.backbone),
        "architecture": name,
        "image": loaded.image.model_dump(mode="json"),
        "n_bank": len(bank),
        "n_query": len(query),
        "k": args.k,
        "n_external": {name: len(t) for name, t in external.items()},
        "trained": knn_scores(loaded.encoder, bank, query, args.k, external),
        "random_weights": knn_scores(random, bank, query, args.k, external),
    }
    print(json.dumps(results, indent=2))
    if args.json_out:
        args.json_out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
