#!/usr/bin/env bash
# Issue 4 on this 2-core CPU: SimCLR from random weights with draws balanced by lab from the
# first epoch (data.source_balance=0.5; the earlier runs balanced only a continuation of
# an unbalanced 20-epoch run), then kNN on PBC test and the external labs, and three
# fine-tuning seeds with the "stain + blur" recipe of benchmarks/issue4_seeds_cpu.sh (the
# random-init seeds there are the comparison) and three random-init seeds rerun so that
# both inits have checkpoints to score again: within the labs' label set and with AdaBN
# (benchmarks/rescore.py). Needs `make data-shared`. Results: benchmarks/results/issue4/.
set -euo pipefail
cd "$(dirname "$0")/.."
source benchmarks/issue4_recipe.sh
EPOCHS=${EPOCHS:-18}
NAME=bal${EPOCHS}
SSL=$OUT/simclr_$NAME/backbone.safetensors

simclr "$NAME" --set data.source_balance=0.5 --set trainer.max_epochs="$EPOCHS"

# Pairs side by side, one thread each.
finetune "ft_${NAME}_blur_seed0" 0 1 --init "$SSL" & finetune "ft_${NAME}_blur_seed1" 1 1 --init "$SSL" & wait
finetune "ft_${NAME}_blur_seed2" 2 1 --init "$SSL" & finetune ft_random_blur_seed0_rerun 0 1 & wait
finetune ft_random_blur_seed1_rerun 1 1 & finetune ft_random_blur_seed2_rerun 2 1 & wait
.venv/bin/python benchmarks/rescore.py "$OUT"/ft_${NAME}_blur_seed*/best.ckpt "$OUT"/ft_random_blur_seed*_rerun/best.ckpt \
    --json-out "$RES/rescore_${NAME}_random.json"
