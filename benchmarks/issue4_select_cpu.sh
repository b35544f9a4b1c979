#!/usr/bin/env bash
# Issue 4 on this 2-core CPU: which checkpoint of each fine-tune to report, chosen without the
# lab it is scored on. The six-seed sections compared five checkpoints per LP-FT run (its
# end, WiSE 0.25 / 0.5 / 0.75, its linear probe) and led with the one that read best on the
# external labs. Here every seed's checkpoint is picked by a rule that never sees the lab
# scored: PBC validation macro-F1 (DomainBed's training-domain validation) or the mean over
# the other two external labs (leave-one-lab-out), for the SSL and random-init LP-FT runs
# alike; random plain fine-tuning has one checkpoint (its best by PBC validation already).
# Uses the fine-tunes of benchmarks/issue4_colour_cpu.sh, issue4_same_source_wise_cpu.sh and
# issue4_srcbal_seeds_cpu.sh (runs/bench); nothing is trained. Results: benchmarks/results/issue4/.
set -euo pipefail
cd "$(dirname "$0")/.."
source benchmarks/issue4_recipe.sh

# Random-init LP-FT seeds 3-5 had no WiSE averages yet (the earlier tables compared LP-FT's end).
for seed in 3 4 5; do
    for alpha in 0.25 0.5 0.75; do $LS wise "$OUT/ft_random_lpft_seed$seed" --alpha "$alpha"; done
done
# Every candidate scored again, now with PBC validation as well; two single-thread jobs.
mapfile -t SSL_CKPTS < <(ckpts ft_srcbal{col,}18_lpft_seed{0,1,2,3,4,5})
mapfile -t RANDOM_CKPTS < <(ckpts ft_random_lpft_seed{0,1,2,3,4,5})
OMP_NUM_THREADS=1 $PY benchmarks/rescore.py "${SSL_CKPTS[@]}" --val runs/data/pbc.csv --test runs/data/pbc.csv \
    --json-out "$RES/rescore_select_ssl.json" > "$OUT/rescore_select_ssl.log" &
OMP_NUM_THREADS=1 $PY benchmarks/rescore.py "${RANDOM_CKPTS[@]}" "$OUT"/ft_random_blur_seed{0,1,2,3,4,5}_rerun/best.ckpt \
    --val runs/data/pbc.csv --test runs/data/pbc.csv --json-out "$RES/rescore_select_random.json" \
    > "$OUT/rescore_select_random.log" &
wait

for select in val labs; do
    $PY benchmarks/seed_table.py "$RES"/rescore_select_{ssl,random}.json --seeds 0-5 --select "$select" \
        --row "SimCLR colour kept, LP-FT=$(candidates ft_srcbalcol18_lpft)" \
        --row "SimCLR colour-blind, LP-FT=$(candidates ft_srcbal18_lpft)" \
        --baseline "random, LP-FT=$(candidates ft_random_lpft)" \
        --baseline "random, plain fine-tuning=ft_random_blur_rerun" \
        --recall within --json-out "$RES/seed_table_select_$select.json"
done
