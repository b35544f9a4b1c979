#!/usr/bin/env bash
# Issue 7 on one GPU: DINO ViT-S/16 (2 x 224 + 6 x 96 crops) and SimCLR throughput of our
# device data path against lightly's PIL pipeline, our DINO step part by part, and compiled.
#
# Runs from the repository root of a machine without network access. Needs, copied into
# the working tree beforehand (both git-ignored):
#   .whl/             wheels missing there (lightly, kornia, kornia_rs, pydantic, pydantic_core,
#                     annotated_types, typing_inspection, typing_extensions, faiss_cpu; cp312, x86-64)
#   .device_payload/  python benchmarks/make_payload.py  (2,047 PBC images, 11 MB)
# Writes $OUT/throughput_gpu.json (rewritten after every measurement) and the log.
# About 4-6 minutes on an H100: ~1 min setup and worker start-ups, ~1.5 min reference
# phases, ~1-2 min compiling; --budget skips measurements not started after BUDGET s.
# A narrower rerun, e.g. the compiled step part by part with DINO's 65,536-output head:
#   ONLY=dino,phases BUDGET=400 EXTRA="--set dino.out_dim=65536" bash benchmarks/gpu_throughput.sh
# BATCH2=512 adds our DINO step (eager and compiled, no reference) at that batch size on the
# same machine, cut off after SECOND_S seconds (default 170), into throughput_gpu_b$BATCH2.json.
set -o pipefail
ONLY=${ONLY:-data,dino,simclr,phases}
BUDGET=${BUDGET:-300}
OUT=${OUT:-/tmp/leukoshift-gpu}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, lightly.loss, kornia, pydantic, leukoshift.pretrain.train as t; \
print('imports ok: torch', torch.__version__, torch.cuda.get_device_name(), 'lightly', \
__import__('lightly').__version__, 'kornia', kornia.__version__)" || exit 1
python3 benchmarks/throughput.py --device cuda --backbone vit_small \
    --global-size 224 --local-size 96 --n-local 6 --batch-size 256 --workers 14 \
    --steps 14 --warmup 4 --repeats 5 --data .device_payload/pbc_subset --max-images 2048 \
    --only "$ONLY" --compile dino --budget "$BUDGET" ${EXTRA:-} --json-out "$OUT/throughput_gpu.json" 2>&1 \
    | tee "$OUT/throughput_gpu.log"
[ -n "${BATCH2:-}" ] || exit 0
# Fewer, larger memory blocks: a batch of 512 fills most of the memory with activations.
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
timeout "${SECOND_S:-170}" python3 benchmarks/throughput.py --device cuda --backbone vit_small \
    --global-size 224 --local-size 96 --n-local 6 --batch-size "$BATCH2" --workers 14 \
    --steps 14 --warmup 4 --repeats 5 --data .device_payload/pbc_subset --max-images 2048 \
    --only dino --paths ours --compile dino ${EXTRA:-} --json-out "$OUT/throughput_gpu_b$BATCH2.json" 2>&1 \
    | tee "$OUT/throughput_gpu_b$BATCH2.log"
