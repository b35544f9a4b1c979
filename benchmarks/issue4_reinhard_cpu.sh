#!/usr/bin/env bash
# Issue 4 on this 2-core CPU: stain normalisation (`augment.normalize=reinhard`) added to
# the per-image ruler recipe of `SCALE=image benchmarks/issue4_ruler_cpu.sh`, for both
# inits. The normaliser is fitted on 256 PBC training images and travels in the
# checkpoint, so every other lab's cell reaches the network with PBC's LAB colour
# statistics; the HED and colour jitter of the recipe stay in the command (they run before
# the normaliser, which undoes most of them) so that the only change is the normaliser.
# Random init and LP-FT from the colour-kept SSL backbone of benchmarks/issue4_colour_cpu.sh
# (pretrained first when missing, resumed when cut off), each arm its seeds in turn on one
# thread, the two arms side by side. Seeds in SEEDS (default 0 1 2). Results:
# benchmarks/results/issue4/.
set -euo pipefail
cd "$(dirname "$0")/.."
source benchmarks/issue4_recipe.sh
SSL=$OUT/simclr_srcbalcol18/backbone.safetensors
NORM=(--set augment.normalize=reinhard)
SEEDS=${SEEDS:-0 1 2}

# Caches first: the two arms would otherwise build the same ones at once.
$LS data cache runs/data/{pbc,cellavision,bccd_crops,bionet}.csv --set image.size=64 --set image.preprocess=ruler \
    --set "image.red_cell_px=$RULER_SCALES" --set image.ruler_scale=image

random_arm() {
    for seed in $SEEDS; do finetune "ft_random_rulerimg_reinhard_seed$seed" "$seed" 1 "${RULER[@]}" "${NORM[@]}"; done
}
ssl_arm() {
    simclr srcbalcol18 "${SIMCLR_COL[@]}" --set trainer.max_epochs=18
    for seed in $SEEDS; do
        finetune "ft_srcbalcol18_lpft_rulerimg_reinhard_seed$seed" "$seed" 1 --init "$SSL" --set head_warmup_epochs=3 \
            "${RULER[@]}" "${NORM[@]}"
    done
}
random_arm &
ssl_arm
wait

$PY benchmarks/rescore.py "$OUT"/ft_random_rulerimg_reinhard_seed*/best.ckpt \
    "$OUT"/ft_srcbalcol18_lpft_rulerimg_reinhard_seed*/best.ckpt --val runs/data/pbc.csv --test runs/data/pbc.csv \
    --json-out "$RES/rescore_rulerimg_reinhard.json"
SEED_LIST=$(echo $SEEDS | tr ' ' ,)
$PY benchmarks/seed_table.py "$RES/rescore_rulerimg_reinhard.json" "$RES/rescore_rulerimg.json" --seeds "$SEED_LIST" \
    --row "ruler per image + Reinhard, SimCLR LP-FT=ft_srcbalcol18_lpft_rulerimg_reinhard" \
    --row "ruler per image, SimCLR LP-FT=ft_srcbalcol18_lpft_rulerimg" \
    --row "ruler per image, random plain=ft_random_rulerimg" \
    --baseline "ruler per image + Reinhard, random plain=ft_random_rulerimg_reinhard" --recall plain \
    --json-out "$RES/seed_table_rulerimg_reinhard.json"
