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
LS=.venv/bin/leukoshift
OUT=${OUT:-runs/bench}
RES=benchmarks/results/issue4
EPOCHS=${EPOCHS:-18}
NAME=bal${EPOCHS}
SSL=$OUT/simclr_$NAME/backbone.safetensors
mkdir -p "$RES"

$LS ssl pretrain -c configs/simclr_shared_cpu.yaml --out "$OUT/simclr_$NAME" \
    --set data.source_balance=0.5 --set trainer.max_epochs="$EPOCHS" --set trainer.progress=false
cp "$OUT/simclr_$NAME/monitor.json" "$RES/simclr_${NAME}_monitor.json"
.venv/bin/python benchmarks/ssl_knn.py --backbone "$SSL" --external runs/data/cellavision.csv \
    --external runs/data/bccd_crops.csv --external runs/data/bionet.csv --json-out "$RES/simclr_${NAME}_knn_external.json"

STAIN=(--set augment.stain.p=0.8 --set augment.stain.sigma=0.2 --set augment.stain.bias=0.05
       --set augment.colour.p=0.8 --set augment.colour.saturation=0.3 --set augment.colour.hue=0.05)
BLUR=(--set augment.colour.blur_p=0.5 --set 'augment.colour.blur_sigma=[0.1,2.2]')
FT=($LS finetune -c configs/finetune_pbc_cpu.yaml --set trainer.progress=false
    --set trainer.max_time=00:01:30:00 --set early_stopping_patience=15 "${STAIN[@]}" "${BLUR[@]}")
finetune() {  # finetune RUN SEED [--init BACKBONE]: one torch thread, two runs side by side
    local run=$1 seed=$2
    shift 2
    OMP_NUM_THREADS=1 "${FT[@]}" "$@" --out "$OUT/$run" --set trainer.seed="$seed" > "$OUT/$run.log" 2>&1
    cp "$OUT/$run/metrics.json" "$RES/$run.metrics.json"
}
finetune "ft_${NAME}_blur_seed0" 0 --init "$SSL" & finetune "ft_${NAME}_blur_seed1" 1 --init "$SSL" & wait
finetune "ft_${NAME}_blur_seed2" 2 --init "$SSL" & finetune ft_random_blur_seed0_rerun 0 & wait
finetune ft_random_blur_seed1_rerun 1 & finetune ft_random_blur_seed2_rerun 2 & wait
.venv/bin/python benchmarks/rescore.py "$OUT"/ft_${NAME}_blur_seed*/best.ckpt "$OUT"/ft_random_blur_seed*_rerun/best.ckpt \
    --json-out "$RES/rescore_${NAME}_random.json"
