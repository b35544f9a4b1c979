#!/usr/bin/env bash
# Issue 4 on this 2-core CPU: Bio-net counted once per cell. `leukoshift data near-duplicates`
# found 102 of Bio-net's 361 files to be turned or shifted copies of another (RESULTS.md,
# "Data: copies inside the labs"), so its scores weigh some cells twice or more. This writes
# Bio-net without the copies (runs/data/distinct/bionet.csv: same stem, so every script keys
# it "bionet") and scores the six-seed checkpoints of benchmarks/issue4_select_cpu.sh again
# on CellaVision, BCCD and that Bio-net; then seed_table.py as before: the fixed rows of the
# colour-kept section, and the picks by PBC validation and by the other labs.
# Nothing is trained. Results: benchmarks/results/issue4/.
set -euo pipefail
cd "$(dirname "$0")/.."
source benchmarks/issue4_recipe.sh

$LS data near-duplicates runs/data/bionet.csv --set image.size=64 --set image.preprocess=centre \
    --distinct runs/data/distinct/bionet.csv
EXTERNAL=(--external runs/data/cellavision.csv --external runs/data/bccd_crops.csv
          --external runs/data/distinct/bionet.csv)
mapfile -t SSL_CKPTS < <(ckpts ft_srcbalcol18_lpft_seed{0,1,2,3,4,5})
mapfile -t RANDOM_CKPTS < <(ckpts ft_random_lpft_seed{0,1,2,3,4,5})
OMP_NUM_THREADS=1 $PY benchmarks/rescore.py "${SSL_CKPTS[@]}" "${EXTERNAL[@]}" --val runs/data/pbc.csv \
    --json-out "$RES/rescore_distinct_ssl.json" > "$OUT/rescore_distinct_ssl.log" &
OMP_NUM_THREADS=1 $PY benchmarks/rescore.py "${RANDOM_CKPTS[@]}" "$OUT"/ft_random_blur_seed{0,1,2,3,4,5}_rerun/best.ckpt \
    "${EXTERNAL[@]}" --val runs/data/pbc.csv --json-out "$RES/rescore_distinct_random.json" \
    > "$OUT/rescore_distinct_random.log" &
wait

JSON=("$RES"/rescore_distinct_{ssl,random}.json)
BASE=(--baseline "random, LP-FT=ft_random_lpft" --baseline "random, plain fine-tuning=ft_random_blur_rerun")
$PY benchmarks/seed_table.py "${JSON[@]}" --seeds 0-5 --row "SimCLR colour kept, LP-FT=ft_srcbalcol18_lpft" \
    --row "SimCLR colour kept, WiSE 0.5=ft_srcbalcol18_lpft/wise0.5" "${BASE[@]}" --recall within \
    --json-out "$RES/seed_table_distinct.json"
for select in val labs; do
    $PY benchmarks/seed_table.py "${JSON[@]}" --seeds 0-5 --select "$select" \
        --row "SimCLR colour kept, LP-FT=$(candidates ft_srcbalcol18_lpft)" \
        --baseline "random, LP-FT=$(candidates ft_random_lpft)" \
        --baseline "random, plain fine-tuning=ft_random_blur_rerun" \
        --recall within --json-out "$RES/seed_table_distinct_select_$select.json"
done
