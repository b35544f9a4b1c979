#!/usr/bin/env bash
# Issue 4 on one GPU (one short lease): SimCLR on every image of ../shared/data for far more
# epochs than the 2-core CPU allows, then (a) faiss kNN on PBC test against random weights
# and (b) fine-tuning from it and from random init with stain augmentation, side by side.
#
# Carried (git-ignored): .whl/ (wheels missing on the device, cp312: lightly, kornia, kornia_rs,
# pydantic, pydantic_core, annotated_types, typing_inspection, typing_extensions and
# faiss_cpu, which the online monitor and the kNN need; the first try lacked it) and
# .device_payload/data (python benchmarks/pack_cache.py pack runs/data/*.csv --size 64
# --preprocess centre --out .device_payload/data). Results land in $OUT.
# About 6 minutes on an H100: SimCLR stops at EPOCHS or SSL_TIME, fine-tunes at FT_TIME.
set -u -o pipefail
OUT=${OUT:-/tmp/leukoshift-gpu}
EPOCHS=${EPOCHS:-60}
SSL_TIME=${SSL_TIME:-00:00:03:00}
FT_TIME=${FT_TIME:-00:00:01:45}
mkdir -p "$OUT"
exec > >(tee "$OUT/session.log") 2>&1
START=$(date +%s)
log() { echo "[$(( $(date +%s) - START ))s] $*"; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 benchmarks/pack_cache.py unpack .device_payload/data --dest runs/data | tail -2 || exit 1
R=runs/gpu_simclr
LS=(python3 -m leukoshift)
log "SimCLR pretraining, $EPOCHS epochs at most"
"${LS[@]}" ssl pretrain -c configs/simclr_shared_cpu.yaml --out $R/simclr_all --set trainer.progress=false \
    --set trainer.max_epochs=$EPOCHS --set trainer.max_time=$SSL_TIME --set data.num_workers=8 \
    --set monitor.every_n_epochs=10 > $R.pretrain.log 2>&1
log "pretrain exit $?"; tail -5 $R.pretrain.log
cp $R/simclr_all/monitor.json $R/simclr_all/backbone.safetensors $R/simclr_all/backbone.json "$OUT/" 2>/dev/null
STAIN=(--set augment.stain.p=0.8 --set augment.stain.sigma=0.2 --set augment.stain.bias=0.05
       --set augment.colour.p=0.8 --set augment.colour.saturation=0.3 --set augment.colour.hue=0.05)
FT=("${LS[@]}" finetune -c configs/finetune_pbc_cpu.yaml --set trainer.progress=false
    --set trainer.max_time=$FT_TIME --set data.num_workers=4 "${STAIN[@]}")
log "kNN and fine-tuning, in parallel"
pids=()
python3 benchmarks/ssl_knn.py --backbone $R/simclr_all/backbone.safetensors --json-out "$OUT/simclr_knn.json" \
    > "$OUT/knn.log" 2>&1 & pids+=($!)
"${FT[@]}" --init $R/simclr_all/backbone.safetensors --out $R/ft_simclr_stain > "$OUT/ft_simclr_stain.log" 2>&1 &
pids+=($!)
"${FT[@]}" --out $R/ft_random_stain > "$OUT/ft_random_stain.log" 2>&1 & pids+=($!)
# Named pids: a bare `wait` also waits for the tee above, which only ends with the script.
wait "${pids[@]}"
log "done"
for run in ft_simclr_stain ft_random_stain; do
  cp $R/$run/metrics.json "$OUT/$run.metrics.json" 2>/dev/null; tail -12 "$OUT/$run.log"
done
tail -4 "$OUT/knn.log"
