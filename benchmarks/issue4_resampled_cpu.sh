#!/usr/bin/env bash
# Issue 4 on this 2-core CPU: are other labs' lymphocytes called promyelocytes because their
# images are sharper per cell than PBC's? PBC reaches the model as 128 px copies (23.5 px per
# red cell), the other labs at 2.4-3.9x that (`leukoshift data ruler`), so a small PBC
# lymphocyte is upsampled into its centred crop while another lab's is downsampled. Here the
# other labs' images are shrunk to PBC's pixel size (benchmarks/resample_labs.py, factors
# = red-cell ratios) and existing checkpoints are rescored on them, nothing retrained:
# random-init plain fine-tuning and LP-FT, and the colour-kept SSL LP-FT and its WiSE 0.5
# (seeds 0-5; benchmarks/issue4_colour_cpu.sh). Results: benchmarks/results/issue4/.
set -euo pipefail
cd "$(dirname "$0")/.."
source benchmarks/issue4_recipe.sh
$PY benchmarks/resample_labs.py runs/data/cellavision.csv=2.98 runs/data/bionet.csv=2.40 \
    runs/data/bccd_crops.csv=3.88 --out runs/resampled
OMP_NUM_THREADS=1 $PY benchmarks/rescore.py "$OUT"/ft_random_blur_seed{0,1,2,3,4,5}_rerun/best.ckpt \
    "$OUT"/ft_random_lpft_seed{0,1,2,3,4,5}/best.ckpt "$OUT"/ft_srcbalcol18_lpft_seed{0,1,2,3,4,5}/{best,wise0.5}.ckpt \
    --external runs/resampled/cellavision.csv --external runs/resampled/bccd_crops.csv \
    --external runs/resampled/bionet.csv --json-out "$RES/rescore_resampled.json"
