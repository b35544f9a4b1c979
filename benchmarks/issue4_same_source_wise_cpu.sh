#!/usr/bin/env bash
# Issue 4 on this 2-core CPU: SimCLR from random weights with same-lab negatives and
# lab-balanced draws from the first epoch (the continuation of
# benchmarks/issue4_same_source_cpu.sh had moved Bio-net's frozen-feature kNN from 0.05 to
# 0.40), then the LP-FT + WiSE-FT fine-tunes of benchmarks/issue4_wise_cpu.sh from it
# (whose random-init runs are the comparison), rescored four ways.
# Needs `make data-shared`. Results: benchmarks/results/issue4/.
set -euo pipefail
cd "$(dirname "$0")/.."
source benchmarks/issue4_recipe.sh
NAME=srcbal18
SSL=$OUT/simclr_$NAME/backbone.safetensors
W=(--set head_warmup_epochs=3)

simclr "$NAME" --set simclr.negatives=same_source --set data.source_balance=0.5 --set trainer.max_epochs=18

# Two single-threaded runs side by side (two 2-thread jobs on 2 cores stall), then one.
finetune "ft_${NAME}_lpft_seed0" 0 1 --init "$SSL" "${W[@]}" & finetune "ft_${NAME}_lpft_seed1" 1 1 --init "$SSL" "${W[@]}" & wait
finetune "ft_${NAME}_lpft_seed2" 2 2 --init "$SSL" "${W[@]}"
for run in "$OUT"/ft_${NAME}_lpft_seed*/; do
    for alpha in 0.25 0.5 0.75; do $LS wise "$run" --alpha "$alpha"; done
done
.venv/bin/python benchmarks/rescore.py "$OUT"/ft_${NAME}_lpft_seed*/{best,wise0.25,wise0.5,wise0.75}.ckpt \
    --test runs/data/pbc.csv --json-out "$RES/rescore_${NAME}_lpft_wise.json"
