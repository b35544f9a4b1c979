#!/usr/bin/env bash
# Issue 4 on this 2-core CPU: the published recipe's class weights (1/count per class) and
# other labs' lymphocytes. Scored plainly, PBC models from either init call most external
# lymphocytes promyelocytes (seed 0, random init: Bio-net 48 of 52, CellaVision 17 of 37),
# and PMY is PBC's rarest class (592 images), so it carries the largest weight (about twice
# LY's). This run drops the weights, nothing else, for random-init plain fine-tuning and
# for the colour-kept SSL backbone's LP-FT (+ WiSE), seeds in SEEDS (default 0 1 2), two
# single-thread fine-tunes at a time; then rescore.py as in the other sections.
# Needs the backbone of benchmarks/issue4_colour_cpu.sh. Results: benchmarks/results/issue4/.
set -euo pipefail
cd "$(dirname "$0")/.."
source benchmarks/issue4_recipe.sh
SSL=$OUT/simclr_srcbalcol18/backbone.safetensors
NW=(--set loss.class_weights=false)

for seed in ${SEEDS:-0 1 2}; do
    pair "$seed" "ft_random_nw_seed$seed" "ft_srcbalcol18_lpft_nw_seed$seed" "$SSL" "${NW[@]}"
done
mapfile -t SSL_CKPTS < <(seed_ckpts ft_srcbalcol18_lpft_nw)
$PY benchmarks/rescore.py "$OUT"/ft_random_nw_seed*/best.ckpt \
    "${SSL_CKPTS[@]}" \
    --val runs/data/pbc.csv --test runs/data/pbc.csv --json-out "$RES/rescore_noweights.json"
