#!/usr/bin/env bash
# Issue 4 on this 2-core CPU: the colour-kept SimCLR of benchmarks/issue4_colour_cpu.sh
# pretrained on ruler crops (each image at its own red-cell scale where it shows two, its
# lab's otherwise) instead of nucleus-framed ones. The per-image ruler rows of
# benchmarks/issue4_ruler_cpu.sh fine-tune a backbone that never saw a cell at its size on
# the slide; here pretraining and fine-tuning frame alike. Then LP-FT + WiSE from it, two
# single-thread seeds at a time, compared with the random-init runs of
# `SCALE=image benchmarks/issue4_ruler_cpu.sh` (same framing and seeds). A finished
# pretraining is not rerun and an interrupted one resumes from its last.ckpt (about 2.3 min
# an epoch alone on this CPU). Seeds in SEEDS (default 0-5); EPOCHS (default 18) sets the
# pretraining's length, and its run names (EPOCHS=6: near the 18-epoch online kNN's
# peak). Results: benchmarks/results/issue4/.
set -euo pipefail
cd "$(dirname "$0")/.."
source benchmarks/issue4_recipe.sh
EPOCHS=${EPOCHS:-18}
NAME=rulerimgcol$EPOCHS
SSL=$OUT/simclr_$NAME/backbone.safetensors

simclr "$NAME" "${SIMCLR_COL[@]}" --set trainer.max_epochs="$EPOCHS" "${RULER[@]}"

set -- ${SEEDS:-0 1 2 3 4 5}
while [ $# -gt 0 ]; do
    for seed in "${@:1:2}"; do
        finetune "ft_${NAME}_lpft_seed$seed" "$seed" 1 --init "$SSL" --set head_warmup_epochs=3 "${RULER[@]}" &
    done
    wait
    for seed in "${@:1:2}"; do wise_all "ft_${NAME}_lpft_seed$seed"; done
    shift $(($# < 2 ? $# : 2))
done
mapfile -t SSL_CKPTS < <(seed_ckpts "ft_${NAME}_lpft")
$PY benchmarks/rescore.py "${SSL_CKPTS[@]}" --val runs/data/pbc.csv --test runs/data/pbc.csv \
    --json-out "$RES/rescore_${NAME}.json"
# Compared on the seeds the SSL runs have, so every row's mean is over the same seeds.
SSL_SEEDS=$(for run in "$OUT/ft_${NAME}_lpft"_seed*/; do run=${run%/}; echo "${run##*_seed}"; done | paste -sd,)
$PY benchmarks/seed_table.py "$RES/rescore_${NAME}.json" "$RES/rescore_rulerimg.json" --seeds "$SSL_SEEDS" \
    --row "ruler per image, SimCLR on ruler crops $EPOCHS ep, LP-FT=ft_${NAME}_lpft" \
    --row "ruler per image, SimCLR on ruler crops $EPOCHS ep, WiSE 0.5=ft_${NAME}_lpft/wise0.5" \
    --row "ruler per image, SimCLR on centre crops, LP-FT=ft_srcbalcol18_lpft_rulerimg" \
    --baseline "ruler per image, random plain=ft_random_rulerimg" --recall plain \
    --json-out "$RES/seed_table_${NAME}.json"
