"""Copy a small, class-balanced subset of PBC into an ignored folder that can travel to a GPU box.

The GPU machine cannot see ``../shared/data``; ``benchmarks/throughput.py --data`` there
reads this subset instead. Images are taken evenly spaced within each class folder (so
every class is present in proportion), checked to decode, and copied unchanged; the
folder keeps PBC's class-subfolder layout. It must stay out of git: add
``/.device_payload/`` to ``.git/info/exclude`` (the script refuses otherwise).

    python benchmarks/make_payload.py                      # 2048 images, ~12 MB
    python benchmarks/make_payload.py --n 4096 --out .device_payload/pbc_subset
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = REPO.parent / "shared" / "data" / "pbc" / "PBC_dataset_normal_DIB"


def decodes(path: Path) -> bool:
    try:
        with Image.open(path) as im:
            im.convert("RGB").load()
    except Exception:  # any unreadable file is left out: both benchmark paths need it
        return False
    return True


def ignored_by_git(path: Path) -> bool:
    result = subprocess.run(["git", "check-ignore", "-q", str(path)], cwd=REPO, capture_output=True, check=False)
    return result.returncode == 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="PBC class folders")
    p.add_argument("--out", type=Path, default=REPO / ".device_payload" / "pbc_subset")
    p.add_argument("--n", type=int, default=2048, help="images in total")
    args = p.parse_args(argv)
    if not args.source.is_dir():
        print(f"{args.source}: folder not found (the shared data live beside the repository)")
        return 2
    if not ignored_by_git(args.out):
        print(f"{args.out}: not ignored by git; add '/.device_payload/' to .git/info/exclude")
        return 2
    classes = sorted(d for d in args.source.iterdir() if d.is_dir())
    files = {c.name: sorted(f for f in c.iterdir() if f.is_file() and not f.name.startswith(".")) for c in classes}
    total = sum(len(v) for v in files.values())
    if args.out.exists():
        shutil.rmtree(args.out)
    copied = 0
    for name, members in files.items():
        share = max(1, round(args.n * len(members) / total))
        picks = np.linspace(0, len(members) - 1, min(share, len(members))).round().astype(int)
        target = args.out / name
        target.mkdir(parents=True, exist_ok=True)
        for i in np.unique(picks):
            if decodes(members[i]):
                shutil.copy2(members[i], target / members[i].name)
                copied += 1
    size = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
    print(f"{copied} images in {len(files)} classes -> {args.out} ({size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
