#!/usr/bin/env bash
# Issue 4 on this 2-core CPU: LP-FT and WiSE-FT from the balanced SimCLR backbone of
# benchmarks/issue4_balanced_cpu.sh (run that first), against random init with the same
# command. Each fine-tune is the "stain + blur" recipe with a 3-epoch head warm-up
# (head_warmup_epochs=3: warmup.ckpt keeps the probe); `leukoshift wise` then averages
# each run's best.ckpt with its warmup.ckpt at alpha 0.5 (the paper's default, fixed
# before looking) and, for the sensitivity only, 0.25 and 0.75. benchmarks/rescore.py
# scores all of them on PBC test and on the external labs four ways (plain, label set,
# AdaBN, both). Results: benchmarks/results/issue4/.
set -euo pipefail
cd "$(dirname "$0")/.."
source benchmarks/issue4_recipe.sh
SSL=$OUT/simclr_bal18/backbone.safetensors
W=(--set head_warmup_epochs=3)

# Pairs side by side, one thread each.
for seed in 0 1 2; do
    finetune "ft_bal18_lpft_seed$seed" "$seed" 1 --init "$SSL" "${W[@]}" &
    finetune "ft_random_lpft_seed$seed" "$seed" 1 "${W[@]}" &
    wait
done
for run in "$OUT"/ft_{bal18,random}_lpft_seed*/; do
    for alpha in 0.25 0.5 0.75; do $LS wise "$run" --alpha "$alpha"; done
done
.venv/bin/python benchmarks/rescore.py "$OUT"/ft_{bal18,random}_lpft_seed*/{best,wise0.25,wise0.5,wise0.75}.ckpt \
    --test runs/data/pbc.csv --json-out "$RES/rescore_lpft_wise.json"
