"""Copies of labs' images resampled to another pixel size, with manifests, for rescoring.

Issue 4's check of one hypothesis: PBC's cells reach the model from 128 px copies (23.5 px
per red cell), the other labs' at 2.4-3.9x that, so a small PBC lymphocyte is upsampled
into its crop and looks soft while another lab's is downsampled and looks sharp, like
PBC's large promyelocytes. Shrinking each lab's images by its red-cell ratio to PBC
(`leukoshift data ruler`) gives them PBC's pixel size; `rescore.py --external` then
scores existing checkpoints on the copies. The copies are written outside the repository
(the real data must not be copied into it).

    python benchmarks/resample_labs.py runs/data/cellavision.csv=2.98 runs/data/bionet.csv=2.40 \
        runs/data/bccd_crops.csv=3.88 --out runs/resampled
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import pandas as pd
from PIL import Image

from leukoshift.data.images import load_rgb
from leukoshift.data.manifest import read_manifest, write_manifest


def resample(manifest: Path, factor: float, out: Path) -> Path:
    """Every image of ``manifest`` shrunk by ``factor`` (box filter) as PNG under ``out``."""
    m = read_manifest(manifest)
    folder = out / manifest.stem
    folder.mkdir(parents=True, exist_ok=True)
    frame = m.frame.copy()
    for i, path in enumerate(m.abs_paths):
        im = Image.fromarray(load_rgb(path))
        w, h = im.size
        im = im.resize((max(1, round(w / factor)), max(1, round(h / factor))), Image.Resampling.BOX)
        dest = folder / f"{i:05d}.png"
        im.save(dest)
        # The cache is keyed by content: new pixels need their own sha1.
        frame.loc[frame.index[i], ["path", "sha1", "width", "height"]] = [
            str(dest.resolve()),
            hashlib.sha1(dest.read_bytes()).hexdigest(),
            str(im.size[0]),
            str(im.size[1]),
        ]
    # Named like the source manifest: rescore.py and seed_table.py know labs by that name.
    target = out / manifest.name
    write_manifest(pd.DataFrame(frame), target)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("specs", nargs="+", help="MANIFEST=FACTOR: shrink that manifest's images by FACTOR")
    parser.add_argument("--out", type=Path, required=True, help="folder for the copies and their manifests")
    args = parser.parse_args()
    for spec in args.specs:
        manifest, _, factor = spec.rpartition("=")
        if not manifest or float(factor) <= 0:
            parser.error(f"{spec}: expected MANIFEST=FACTOR with FACTOR > 0")
        print(f"{manifest} / {factor} -> {resample(Path(manifest), float(factor), args.out)}")


if __name__ == "__main__":
    main()
