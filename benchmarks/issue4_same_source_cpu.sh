#!/usr/bin/env bash
# Issue 4 on this 2-core CPU: SimCLR with same-source negatives and source-balanced draws,
# continued from the 20-epoch SimCLR backbone (benchmarks/issue4_simclr_cpu.sh), then kNN
# and three fine-tuning seeds with stain + colour + blur jitter, to set beside the
# random-init seeds of benchmarks/issue4_seeds_cpu.sh (same fine-tuning command).
# Needs `make data-shared` and runs/bench/simclr_all20. Results: benchmarks/results/issue4/.
# The control, the same with batch-wide negatives: NEG=batch NAME=ctrl bash <this script>.
set -euo pipefail
cd "$(dirname "$0")/.."
source benchmarks/issue4_recipe.sh
NEG=${NEG:-same_source}
NAME=${NAME:-src}
SSL=$OUT/simclr_$NAME/backbone.safetensors

# 8 epochs, a fresh schedule (warm-up, full learning rate) from the 20-epoch backbone; a
# batch of 256 holds ~11 CellaVision and ~22 images of each other small lab at 0.5.
simclr "$NAME" --set model.init="$OUT/simclr_all20/backbone.safetensors" --set simclr.negatives="$NEG" \
    --set data.source_balance=0.5 --set trainer.max_epochs=8

# Two single-threaded runs side by side (two 2-thread jobs on 2 cores stall), then one.
finetune "ft_${NAME}_blur_seed0" 0 1 --init "$SSL" & finetune "ft_${NAME}_blur_seed1" 1 1 --init "$SSL" & wait
finetune "ft_${NAME}_blur_seed2" 2 2 --init "$SSL"
