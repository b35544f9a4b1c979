#!/usr/bin/env bash
# Issue 4 on this 2-core CPU: the same-lab SimCLR of benchmarks/issue4_same_source_wise_cpu.sh
# without the colour invariance. Its fine-tunes lose eosinophils on the other labs (WiSE 0.5,
# seed 0: Bio-net 8 of 117 eosinophils right, 101 called neutrophils; BCCD 0 of 88; random
# init 92 of 117), and eosinophils differ from neutrophils mostly by the colour of their
# granules, which grayscale views (p 0.2), hue 0.08 and saturation 0.3 teach the features to
# ignore (Xiao et al. 2021, "What should not be contrastive"). Here: no grayscale, hue 0.02,
# saturation 0.1; the lab-stain (HED) jitter stays. Then the LP-FT + WiSE fine-tunes
# (random-init comparison: benchmarks/issue4_srcbal_seeds_cpu.sh). A finished pretraining is
# not rerun; an interrupted one resumes from its last.ckpt. Results: benchmarks/results/issue4/.
set -euo pipefail
cd "$(dirname "$0")/.."
source benchmarks/issue4_recipe.sh
NAME=srcbalcol18
SSL=$OUT/simclr_$NAME/backbone.safetensors
W=(--set head_warmup_epochs=3)

simclr "$NAME" "${SIMCLR_COL[@]}" --set trainer.max_epochs=18

for pair in "0 1" "2 3" "4 5"; do
    for seed in $pair; do finetune "ft_${NAME}_lpft_seed$seed" "$seed" 1 --init "$SSL" "${W[@]}" & done
    wait
done
for seed in 0 1 2 3 4 5; do
    for alpha in 0.25 0.5 0.75; do $LS wise "$OUT/ft_${NAME}_lpft_seed$seed" --alpha "$alpha"; done
done
.venv/bin/python benchmarks/rescore.py "$OUT"/ft_${NAME}_lpft_seed*/{warmup,best,wise0.25,wise0.5,wise0.75}.ckpt \
    --test runs/data/pbc.csv --json-out "$RES/rescore_${NAME}_lpft_wise.json"
