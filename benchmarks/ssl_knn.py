"""Issue 4 (a): faiss kNN accuracy of a backbone's features on PBC test, PBC train as the
memory bank, against the same architecture with random weights.

    python benchmarks/ssl_knn.py --backbone runs/dino/backbone.safetensors --manifest runs/data/pbc.csv

Both encoders see the same cached images (the backbone card's size and framing); the kNN
is leukoshift's (cosine similarity, k=20, weighted vote, Wu et al. 2018) over the label
codes of the manifest (11 fine classes plus PBC's coarse NE and IG rows).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import f1_score

from leukoshift.data.loaders import load_table
from leukoshift.eval.embed import embed_table
from leukoshift.eval.knn import knn_classify
from leukoshift.models.backbones import Encoder, create_backbone
from leukoshift.models.encoders import load_encoder


def knn_scores(encoder: torch.nn.Module, bank, query, k: int) -> dict[str, float]:  # type: ignore[no-untyped-def]
    fb = embed_table(encoder, bank, progress=False)
    fq = embed_table(encoder, query, progress=False)
    pred, _ = knn_classify(fb, bank.labels, fq, k=k, n_classes=13)
    truth = query.labels
    return {
        "accuracy": float((pred == truth).mean()),
        "macro_f1": float(f1_score(truth, pred, labels=np.unique(truth), average="macro")),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", type=Path, required=True, help="backbone.safetensors (with card) or a checkpoint")
    parser.add_argument("--manifest", type=Path, default=Path("runs/data/pbc.csv"))
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0, help="seed of the random-weights encoder")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    loaded = load_encoder(args.backbone)
    bank = load_table([args.manifest], loaded.image, split="train", labelled=True, progress=False)
    query = load_table([args.manifest], loaded.image, split="test", labelled=True, progress=False)
    torch.manual_seed(args.seed)
    name = loaded.card.get("backbone", "")
    random = Encoder(create_backbone(name, img_size=loaded.image.size, **(loaded.card.get("timm_kwargs") or {})))
    results = {
        "backbone": str(args.backbone),
        "architecture": name,
        "image": loaded.image.model_dump(mode="json"),
        "n_bank": len(bank),
        "n_query": len(query),
        "k": args.k,
        "trained": knn_scores(loaded.encoder, bank, query, args.k),
        "random_weights": knn_scores(random, bank, query, args.k),
    }
    print(json.dumps(results, indent=2))
    if args.json_out:
        args.json_out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
