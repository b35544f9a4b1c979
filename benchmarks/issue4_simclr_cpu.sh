#!/usr/bin/env bash
# Issue 4 on this 2-core CPU: SimCLR on every image of ../shared/data, then (a) faiss kNN on
# PBC test (PBC train as the bank) against random weights, and (b) fine-tuning on PBC train
# from the SSL backbone and from random init, both with stain augmentation, the same
# 14-minute budget each, scored on PBC test and, at the 5-type level, the external labs.
# Needs `make data-shared`. Results: $OUT/*/metrics.json, benchmarks/results/issue4/.
set -euo pipefail
cd "$(dirname "$0")/.."
LS=.venv/bin/leukoshift
OUT=${OUT:-runs/bench}
RES=benchmarks/results/issue4
FT_TIME=${FT_TIME:-00:00:14:00}
mkdir -p "$RES"
STAIN=(--set augment.stain.p=0.8 --set augment.stain.sigma=0.2 --set augment.stain.bias=0.05
       --set augment.colour.p=0.8 --set augment.colour.saturation=0.3 --set augment.colour.hue=0.05)
FT=($LS finetune -c configs/finetune_pbc_cpu.yaml --set trainer.progress=false --set trainer.max_time=$FT_TIME)
$LS ssl pretrain -c configs/simclr_shared_cpu.yaml --out $OUT/simclr_all --set trainer.progress=false
cp $OUT/simclr_all/monitor.json $RES/simclr_all_monitor.json
.venv/bin/python benchmarks/ssl_knn.py --backbone $OUT/simclr_all/backbone.safetensors --json-out $RES/simclr_knn.json
"${FT[@]}" --init $OUT/simclr_all/backbone.safetensors --out $OUT/ft_simclr_stain "${STAIN[@]}"
"${FT[@]}" --out $OUT/ft_random_stain "${STAIN[@]}"
# The SSL fine-tune early-stopped at epoch 9; the same for all 15 epochs, as random init ran:
"${FT[@]}" --init $OUT/simclr_all/backbone.safetensors --out $OUT/ft_simclr_stain_15ep "${STAIN[@]}" \
    --set trainer.max_time=00:00:40:00 --set early_stopping_patience=15
for run in ft_simclr_stain ft_random_stain ft_simclr_stain_15ep; do cp $OUT/$run/metrics.json $RES/$run.metrics.json; done
# Two ways to keep the SSL features (RESULTS.md, issue 4): a backbone learning rate a tenth
# of the head's, and a frozen backbone (linear probe), both from the same SimCLR backbone.
"${FT[@]}" --init $OUT/simclr_all/backbone.safetensors --out $OUT/ft_simclr_stain_lr01 "${STAIN[@]}" \
    --set trainer.max_time=00:00:40:00 --set early_stopping_patience=15 --set optim.backbone_lr_scale=0.1
"${FT[@]}" --init $OUT/simclr_all/backbone.safetensors --out $OUT/ft_simclr_stain_linear "${STAIN[@]}" \
    --set trainer.max_time=00:00:40:00 --set early_stopping_patience=15 --set mode=linear
for run in ft_simclr_stain_lr01 ft_simclr_stain_linear; do cp $OUT/$run/metrics.json $RES/$run.metrics.json; done
# Twelve more SimCLR epochs (a warm restart of a 20-epoch cosine schedule from the 8-epoch
# run's checkpoint), kNN, then three single-threaded fine-tunes side by side: from it, from
# it with a 3-epoch head warm-up (LP-FT), and random init with a second seed.
cp -r $OUT/simclr_all $OUT/simclr_all20
$LS ssl pretrain -c configs/simclr_shared_cpu.yaml --out $OUT/simclr_all20 --set trainer.progress=false \
    --set trainer.max_epochs=20 --resume
cp $OUT/simclr_all20/monitor.json $RES/simclr_all20_monitor.json
.venv/bin/python benchmarks/ssl_knn.py --backbone $OUT/simclr_all20/backbone.safetensors --json-out $RES/simclr20_knn.json
LONG=(--set trainer.max_time=00:01:30:00 --set early_stopping_patience=15)
OMP_NUM_THREADS=1 "${FT[@]}" --init $OUT/simclr_all20/backbone.safetensors --out $OUT/ft_simclr20_stain "${STAIN[@]}" "${LONG[@]}" &
OMP_NUM_THREADS=1 "${FT[@]}" --init $OUT/simclr_all20/backbone.safetensors --out $OUT/ft_simclr20_stain_lpft "${STAIN[@]}" \
    "${LONG[@]}" --set head_warmup_epochs=3 &
OMP_NUM_THREADS=1 "${FT[@]}" --out $OUT/ft_random_stain_seed1 "${STAIN[@]}" "${LONG[@]}" --set trainer.seed=1 &
wait
for run in ft_simclr20_stain ft_simclr20_stain_lpft ft_random_stain_seed1; do cp $OUT/$run/metrics.json $RES/$run.metrics.json; done
