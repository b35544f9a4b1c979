"""How much the batch loader adds on top of reading the cached array.

The issue's bar: iterating 10,000 cached 64 px images through the loader must take well
under a second more than ``np.load`` of the same array. The array here is random uint8
written in the cache's own format, so the numbers measure the loader (gather, tensors,
DataLoader), not JPEG decoding, which happens once when a cache is built.

    python benchmarks/loader_speed.py                 # 10,000 x 3 x 64 x 64, batch 256
    python benchmarks/loader_speed.py --workers 2     # with loader processes

Prints one line per measurement and a summary: medians of ``--repeats`` runs after one
warm-up (page cache warm in both cases).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from leukoshift.data.loaders import ImageTable, make_loader
from leukoshift.taxonomy import LABEL_CODES


def make_table(folder: Path, n: int, size: int, seed: int = 0) -> ImageTable:
    """An ImageTable over a random cache-format array of ``n`` images."""
    rng = np.random.default_rng(seed)
    path = folder / f"bench{size}.npy"
    arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, 3, size, size))
    for start in range(0, n, 1024):
        stop = min(n, start + 1024)
        arr[start:stop] = rng.integers(0, 256, size=(stop - start, 3, size, size), dtype=np.uint8)
    arr.flush()
    del arr
    frame = pd.DataFrame(
        {
            "path": [f"img{i}.jpg" for i in range(n)],
            "label": rng.choice(LABEL_CODES, size=n),
            "source": rng.choice(["lab0", "lab1", "lab2"], size=n),
        }
    )
    return ImageTable(
        frame,
        [path],
        np.zeros(n, dtype=np.int64),
        np.arange(n, dtype=np.int64),
        ["lab0", "lab1", "lab2"],
        size,
    )


def time_read(path: Path) -> float:
    start = time.perf_counter()
    arr = np.load(path)
    _ = int(arr[-1, 0, 0, 0])  # make sure the last page was read
    return time.perf_counter() - start


def time_loader(table: ImageTable, batch_size: int, workers: int, shuffle: bool) -> float:
    loader = make_loader(table, batch_size, shuffle=shuffle, num_workers=workers, pin_memory=False)
    start = time.perf_counter()
    seen = 0
    for batch in loader:
        seen += int(batch["image"].shape[0])
    elapsed = time.perf_counter() - start
    if seen != len(table):
        raise RuntimeError(f"loader yielded {seen} images, expected {len(table)}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10_000, help="number of cached images")
    parser.add_argument("--size", type=int, default=64, help="image side, px")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-shuffle", action="store_true", help="sequential instead of shuffled")
    parser.add_argument("--dir", type=Path, default=None, help="folder for the array (default: a temp dir)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        table = make_table(Path(tmp), args.n, args.size)
        time_read(table.arrays[0])  # warm-up: page cache and imports
        time_loader(table, args.batch_size, args.workers, not args.no_shuffle)
        reads, loads = [], []
        for r in range(args.repeats):
            reads.append(time_read(table.arrays[0]))
            loads.append(time_loader(table, args.batch_size, args.workers, not args.no_shuffle))
            print(f"repeat {r}: np.load {reads[-1]:.3f} s, loader {loads[-1]:.3f} s")
    read, load = statistics.median(reads), statistics.median(loads)
    mb = args.n * 3 * args.size**2 / 1e6
    print(
        f"{args.n} images {args.size}px ({mb:.0f} MB), batch {args.batch_size}, "
        f"workers {args.workers}, shuffle {not args.no_shuffle}: "
        f"median np.load {read:.3f} s, loader {load:.3f} s, "
        f"extra {load - read:+.3f} s, ratio {load / read:.2f}x"
    )


if __name__ == "__main__":
    main()
