#!/usr/bin/env bash
# Issue 4 on this 2-core CPU: cells framed at the same physical scale in every lab. Every
# model so far calls other labs' lymphocytes promyelocytes (plain recall <= 0.17), and
# `centre` framing sizes each crop by its nucleus, so a small lymphocyte and a large
# promyelocyte fill the crop alike. `ruler` framing crops 3 red-cell diameters around the
# cell instead, each lab's red-cell diameter measured by `leukoshift data ruler` (BCCD
# crops show no whole red cells: their lab's smears give the scale, and the crops' median
# nucleus, 150 px, matches the smears', 148 px). SCALE=lab (default) frames every image by
# its lab's scale; SCALE=image by its own red cells where it shows two (Bio-net imaged its
# eosinophils 1.4x closer than its lymphocytes). Same recipe as the nucleus-framed rows
# otherwise: random-init plain fine-tuning, and LP-FT + WiSE from the colour-kept SSL
# backbone of benchmarks/issue4_colour_cpu.sh (pretrained on nucleus-framed crops; a CNN
# takes any framing). Seeds in SEEDS (default 0 1). Results: benchmarks/results/issue4/.
set -euo pipefail
cd "$(dirname "$0")/.."
source benchmarks/issue4_recipe.sh
SSL=$OUT/simclr_srcbalcol18/backbone.safetensors
SCALE=${SCALE:-lab}
TAG=$([ "$SCALE" = lab ] && echo ruler || echo rulerimg)

$LS data ruler runs/data/{pbc,cellavision,bionet,bccd_crops,bccd_smears,raabin}.csv | tee "$RES/ruler_scales.txt"
$LS data cache runs/data/{pbc,cellavision,bccd_crops,bionet}.csv --set image.size=64 --set image.preprocess=ruler \
    --set "image.red_cell_px=$RULER_SCALES" --set "image.ruler_scale=$SCALE"
RULER=(--set data.image.preprocess=ruler --set "data.image.red_cell_px=$RULER_SCALES" --set "data.image.ruler_scale=$SCALE")
for seed in ${SEEDS:-0 1}; do
    pair "$seed" "ft_random_${TAG}_seed$seed" "ft_srcbalcol18_lpft_${TAG}_seed$seed" "$SSL" "${RULER[@]}"
done
mapfile -t SSL_CKPTS < <(seed_ckpts "ft_srcbalcol18_lpft_${TAG}")
$PY benchmarks/rescore.py "$OUT"/ft_random_${TAG}_seed*/best.ckpt \
    "${SSL_CKPTS[@]}" \
    --val runs/data/pbc.csv --test runs/data/pbc.csv --json-out "$RES/rescore_${TAG}.json"
