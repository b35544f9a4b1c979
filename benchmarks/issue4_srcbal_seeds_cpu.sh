#!/usr/bin/env bash
# Issue 4 on this 2-core CPU: more seeds of the closest comparison so far (RESULTS.md,
# "Same-lab negatives and lab-balanced draws from the first epoch"): LP-FT from the
# same-lab SimCLR backbone (benchmarks/issue4_same_source_wise_cpu.sh; seeds 0-1 there,
# 2-5 here), random init with the same command (seeds 0-2 in
# benchmarks/issue4_wise_cpu.sh, 3-5 here) and random init with plain fine-tuning (seeds
# 0-2 in benchmarks/issue4_balanced_cpu.sh as ft_random_blur_seed*_rerun, 3-5 here), so
# that each row has six seeds. Two workers, one thread each, interleaved so that a cut-off
# run leaves balanced rows. Results: benchmarks/results/issue4/.
set -euo pipefail
cd "$(dirname "$0")/.."
source benchmarks/issue4_recipe.sh
SSL=$OUT/simclr_srcbal18/backbone.safetensors
W=(--set head_warmup_epochs=3)
test -f "$SSL" || { echo "missing $SSL: run benchmarks/issue4_same_source_wise_cpu.sh first" >&2; exit 1; }

ssl() { finetune "ft_srcbal18_lpft_seed$1" "$1" 1 --init "$SSL" "${W[@]}"; }
random_lpft() { finetune "ft_random_lpft_seed$1" "$1" 1 "${W[@]}"; }
random_plain() { finetune "ft_random_blur_seed${1}_rerun" "$1" 1; }

(ssl 2; random_lpft 3; ssl 4; random_plain 4; random_lpft 5) &
(ssl 3; random_plain 3; random_lpft 4; ssl 5; random_plain 5) &
wait
for seed in 2 3 4 5; do
    for alpha in 0.25 0.5 0.75; do $LS wise "$OUT/ft_srcbal18_lpft_seed$seed" --alpha "$alpha"; done
done
.venv/bin/python benchmarks/rescore.py "$OUT"/ft_srcbal18_lpft_seed{2,3,4,5}/{best,wise0.25,wise0.5,wise0.75}.ckpt \
    "$OUT"/ft_random_lpft_seed{3,4,5}/best.ckpt "$OUT"/ft_random_blur_seed{3,4,5}_rerun/best.ckpt \
    --test runs/data/pbc.csv --json-out "$RES/rescore_srcbal18_seeds.json"
