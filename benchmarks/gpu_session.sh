#!/usr/bin/env bash
# Everything that needs a GPU, in one lease of one H100/H200 (a 15-minute budget):
#   1. in parallel on the same GPU (small CNN, 64 px: each run uses a fraction of it):
#      issue 3: PBC fine-tuning with cell centring + scale augmentation, +/- stain jitter
#      issue 4: DINO on every image of ../shared/data, then fine-tuning from it
#      issue 5: leave-one-source-out (cellavision, bccd_crops, bionet held out), one
#               process per (held-out lab, method)
#   2. issue 7: throughput of our device data path vs lightly's PIL pipeline (alone on the GPU)
#   3. aggregation and packing of the results into $OUT
# The CPU-sized configs are used unchanged (they are what a 2-core machine runs in hours).
#
# Carried to the machine (git-ignored): .whl/ (lightly, kornia, pydantic wheels, cp312),
# .device_payload/pbc_subset (python benchmarks/make_payload.py --n 1024) and
# .device_payload/data (python benchmarks/pack_cache.py pack runs/data/*.csv --size 64
# --preprocess centre --out .device_payload/data): the centred 64 px caches as JPEG.
#
# SMOKE=1 runs the same script on this CPU with tiny settings (a dry run).
set -u -o pipefail
OUT=${OUT:-/tmp/leukoshift-gpu}
SMOKE=${SMOKE:-0}
DEADLINE=${DEADLINE:-360}   # seconds from the start by which training processes are stopped
START=$(date +%s)
mkdir -p "$OUT"
exec > >(tee "$OUT/session.log") 2>&1
log() { echo "[$(( $(date +%s) - START ))s] $*"; }

export PYTHONUNBUFFERED=1
# A dozen processes share the machine: CPU-side math gets two threads each, not all cores.
export OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 OPENBLAS_NUM_THREADS=2
if [ "$SMOKE" = 1 ]; then
  PY=${PY:-.venv/bin/python}
  DEVICE=cpu
  TINY=(--set trainer.max_epochs=1 --set trainer.limit_train_batches=2)
  LOSO_TINY=(--set finetune.trainer.max_epochs=1 --set finetune.trainer.limit_train_batches=2
             --set pretrain.trainer.max_epochs=1 --set pretrain.trainer.limit_train_batches=2)
  THROUGHPUT=(--device cpu --backbone vit_tiny --model-kwargs depth=2 --global-size 64 --local-size 32
              --n-local 2 --batch-size 16 --workers 1 --steps 2 --warmup 1 --repeats 2 --max-images 64)
  SSL_EPOCHS=1
  SSL_TIME=00:01:00:00
else
  PY=python3
  DEVICE=cuda
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD/src
  THROUGHPUT=(--device cuda --backbone vit_small --global-size 224 --local-size 96 --n-local 6
              --batch-size 256 --workers 14 --steps 14 --warmup 4 --repeats 5 --max-images 1024 --budget ${TP_BUDGET:-110})
  SSL_EPOCHS=20
  # Safety nets inside the deadline: a run that is slower than planned stops gracefully
  # (Lightning's max_time) and still writes its checkpoint, export and metrics.
  FT_TIME=${FT_TIME:-00:00:02:00}
  SSL_TIME=${SSL_TIME:-00:00:03:00}
  TINY=(--set trainer.max_time=$FT_TIME)
  LOSO_TINY=(--set finetune.trainer.max_time=$FT_TIME --set pretrain.trainer.max_time=$SSL_TIME)
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
fi
LS=("$PY" -m leukoshift)
log "imports"
"$PY" -c "import torch, lightly.loss, kornia, pydantic, leukoshift.cli, leukoshift.eval.loso, leukoshift.pretrain.train; \
print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" || exit 1

log "unpack the caches"
"$PY" benchmarks/pack_cache.py unpack .device_payload/data --dest runs/data | tail -2 || exit 1

# ------------------------------------------------------------------ 1. training in parallel
R=runs/gpu
mkdir -p "$R/logs"
COMMON=(--set data.num_workers=0 --set trainer.progress=false "${TINY[@]}")
LOSO_COMMON=(--set finetune.data.num_workers=0 --set finetune.trainer.progress=false
             --set pretrain.data.num_workers=0 --set pretrain.trainer.progress=false
             --set diagnose_points=0 --set out=$R/loso --set pretrain.trainer.max_epochs=$SSL_EPOCHS
             "${LOSO_TINY[@]}")
STAIN=(--set augment.stain.p=0.8 --set augment.stain.sigma=0.2 --set augment.stain.bias=0.05
       --set augment.colour.p=0.8 --set augment.colour.saturation=0.3 --set augment.colour.hue=0.05)
FT=("${LS[@]}" finetune -c configs/finetune_pbc_cpu.yaml)
pids=()
bg() {  # name, then the command; its log and exit status land in $R/logs
  local name=$1; shift
  ( "$@" > "$R/logs/$name.log" 2>&1; echo "$name exit $?" >> "$R/logs/status" ) &
  pids+=($!)
}
log "training"
ONLY_SSL=${ONLY_SSL:-0}   # 1: only the self-supervised runs (a rerun after they failed)
[ "$ONLY_SSL" = 1 ] || bg ft_centre_scale "${FT[@]}" --out $R/ft_centre_scale "${COMMON[@]}"
[ "$ONLY_SSL" = 1 ] || bg ft_centre_scale_stain "${FT[@]}" --out $R/ft_centre_scale_stain "${COMMON[@]}" "${STAIN[@]}"
bg dino_all bash -c "$(printf '%q ' "${LS[@]}") ssl pretrain -c configs/dino_shared_cpu.yaml --out $R/dino_all \
  $(printf '%q ' "${COMMON[@]}") --set trainer.max_epochs=$SSL_EPOCHS --set trainer.max_time=$SSL_TIME \
  --set 'monitor.manifests=[]' \
  && $(printf '%q ' "${FT[@]}") --init $R/dino_all/backbone.safetensors --out $R/ft_dino_stain \
  $(printf '%q ' "${COMMON[@]}" "${STAIN[@]}")"
for fold in cellavision bccd_crops bionet; do
  all_methods="supervised,features+svm supervised+stain dino+ft logreg"
  [ "$ONLY_SSL" = 1 ] && all_methods="dino+ft"
  for methods in $all_methods; do
    bg "loso_${fold}_${methods//[,+]/_}" "${LS[@]}" benchmark loso -c configs/loso_shared_cpu.yaml \
        --set "held_out=[$fold]" --methods "$methods" "${LOSO_COMMON[@]}"
  done
done
# Stop whatever is still running at the deadline, so the results that exist come back.
running() { local n=0 p; for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && n=$((n + 1)); done; echo $n; }
while [ "$(running)" -gt 0 ] && [ $(( $(date +%s) - START )) -lt "$DEADLINE" ]; do sleep 5; done
if [ "$(running)" -gt 0 ]; then
  log "deadline: stopping $(running) process(es)"
  pkill -TERM -f "leukoshift (finetune|ssl|benchmark)" 2>/dev/null; sleep 5
  pkill -KILL -f "leukoshift (finetune|ssl|benchmark)" 2>/dev/null
fi
wait "${pids[@]}" 2>/dev/null
log "training done"; cat "$R/logs/status"

# ------------------------------------------------------------------ 2. throughput, alone on the GPU now
log "throughput"
timeout ${TP_TIMEOUT:-160} "$PY" benchmarks/throughput.py "${THROUGHPUT[@]}" --data .device_payload/pbc_subset \
    --json-out "$OUT/throughput_gpu.json" > "$OUT/throughput_gpu.log" 2>&1
log "throughput exit $?"; tail -12 "$OUT/throughput_gpu.log"

# ------------------------------------------------------------------ 3. results
"${LS[@]}" benchmark loso -c configs/loso_shared_cpu.yaml --report-only "${LOSO_COMMON[@]}" > "$R/logs/loso_report.log" 2>&1
tail -15 "$R/logs/loso_report.log"
"$PY" - <<'PY'
# A classifier checkpoint without optimiser state (for the app and explain on real data).
import torch, pathlib
src = pathlib.Path("runs/gpu/ft_dino_stain/best.ckpt")
if src.is_file():
    ckpt = torch.load(src, map_location="cpu", weights_only=False)
    for key in ("optimizer_states", "lr_schedulers", "callbacks", "loops"):
        ckpt.pop(key, None)
    torch.save(ckpt, "runs/gpu/ft_dino_stain_weights.ckpt")
PY
for run in dino_all ft_centre_scale; do
  [ -f $R/$run/backbone.safetensors ] && cp $R/$run/backbone.safetensors "$OUT/${run}_backbone.safetensors"
done
[ -f $R/ft_dino_stain_weights.ckpt ] && cp $R/ft_dino_stain_weights.ckpt "$OUT/ft_dino_stain_weights.ckpt"
tar czf "$OUT/results.tgz" --exclude='*.ckpt' --exclude='*.safetensors' --exclude='*.npy' --exclude='*.joblib' runs/gpu
ls -la "$OUT"
log "done"
