"""Ship built image caches to a machine that does not have the images.

A remote GPU node (or a lent one with a 64 MB transfer limit) needs only the manifests
and the decoded, framed uint8 arrays, not the original files. ``pack`` writes each
manifest and its cache (for one image config) as JPEG-compressed rows; ``unpack``
restores the cache under the key ``build_cache`` looks for, so every leukoshift command
there finds it and never opens an image file.

The JPEG step is lossy (quality 85-90 at 64 px changes pixel values by a few units);
numbers from an unpacked cache are reported as such in benchmarks/RESULTS.md.

    python benchmarks/pack_cache.py pack runs/data/*.csv --size 64 --preprocess centre --out .device_payload/data
    python benchmarks/pack_cache.py unpack .device_payload/data --dest runs/data
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from leukoshift.config import ImageConfig
from leukoshift.data.cache import build_cache, cache_key
from leukoshift.data.manifest import read_manifest


def pack(manifests: list[Path], image: ImageConfig, out: Path, quality: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    total = 0
    for path in manifests:
        manifest = read_manifest(path)
        cache = build_cache(manifest, image)
        arr = cache.open()
        blobs, offsets = [], [0]
        for row in arr:
            buf = io.BytesIO()
            Image.fromarray(np.ascontiguousarray(row.transpose(1, 2, 0))).save(buf, "JPEG", quality=quality)
            blobs.append(buf.getvalue())
            offsets.append(offsets[-1] + len(blobs[-1]))
        key = cache_key(manifest, image)
        np.savez(
            out / f"{key}.jpgs.npz",
            blob=np.frombuffer(b"".join(blobs), dtype=np.uint8),
            offsets=np.array(offsets, dtype=np.int64),
        )
        shutil.copy(cache.path.with_suffix(".json"), out / f"{key}.json")
        if cache.boxes is not None:
            np.save(out / f"{key}.boxes.npy", cache.boxes)
        shutil.copy(path, out / path.name)
        size = offsets[-1]
        total += size
        print(f"{path}: {len(arr)} rows -> {key} ({size / 1e6:.1f} MB)")
    print(f"packed {total / 1e6:.1f} MB into {out}")


def unpack(packed: Path, dest: Path) -> None:
    cache_dir = dest / ".cache"
    cache_dir.mkdir(parents=True, exist_ok=True)
    for csv in sorted(packed.glob("*.csv")):
        shutil.copy(csv, dest / csv.name)
    for npz in sorted(packed.glob("*.jpgs.npz")):
        key = npz.name.removesuffix(".jpgs.npz")
        data = np.load(npz)
        blob, offsets = data["blob"].tobytes(), data["offsets"]
        meta = json.loads((packed / f"{key}.json").read_text())
        size = int(meta["size"])
        target = cache_dir / f"{key}.npy"
        out = np.lib.format.open_memmap(target, mode="w+", dtype=np.uint8, shape=(len(offsets) - 1, 3, size, size))
        for i in range(len(offsets) - 1):
            out[i] = np.asarray(Image.open(io.BytesIO(blob[offsets[i] : offsets[i + 1]])).convert("RGB")).transpose(
                2, 0, 1
            )
        out.flush()
        del out
        boxes = packed / f"{key}.boxes.npy"
        if boxes.is_file():
            shutil.copy(boxes, cache_dir / boxes.name)
        (cache_dir / f"{key}.json").write_text(json.dumps(meta))
        print(f"{key}: {len(offsets) - 1} rows restored")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="manifests + their caches -> a compact folder")
    p.add_argument("manifests", nargs="+", type=Path)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--preprocess", default="centre", choices=["resize", "centre", "background"])
    p.add_argument("--quality", type=int, default=88)
    p.add_argument("--out", type=Path, required=True)
    u = sub.add_parser("unpack", help="a packed folder -> manifests and caches in --dest")
    u.add_argument("packed", type=Path)
    u.add_argument("--dest", type=Path, required=True)
    args = parser.parse_args()
    if args.command == "pack":
        pack(args.manifests, ImageConfig(size=args.size, preprocess=args.preprocess), args.out, args.quality)
    else:
        unpack(args.packed, args.dest)


if __name__ == "__main__":
    main()
