#!/usr/bin/env bash
# Issue 4 on this 2-core CPU, several seeds: fine-tuning on PBC train from the 20-epoch
# SimCLR backbone (benchmarks/issue4_simclr_cpu.sh) and from random init, stain + colour
# jitter, without and with blur augmentation set from `leukoshift data appearance` (the
# blur that makes PBC as soft as the softest lab: 2.2 px at 224, 0.6 px at 64).
# Two single-threaded runs side by side (OMP_NUM_THREADS=1 each: two 2-thread jobs on 2
# cores stall). Needs `make data-shared` and runs/bench/simclr_all20.
# Results: runs/bench/<run>/metrics.json, copied to benchmarks/results/issue4/.
set -euo pipefail
cd "$(dirname "$0")/.."
source benchmarks/issue4_recipe.sh  # STAIN, BLUR, FT (its runs below add BLUR themselves)
SSL=$OUT/simclr_all20/backbone.safetensors

# finetune_pair NAME_A ARGS_A... -- NAME_B ARGS_B...: two runs side by side, one thread each.
finetune_pair() {
    local a=("$@") b=() i
    for i in "${!a[@]}"; do
        if [[ ${a[$i]} == -- ]]; then b=("${a[@]:$((i + 1))}"); a=("${a[@]:0:$i}"); break; fi
    done
    OMP_NUM_THREADS=1 "${FT[@]}" --out "$OUT/${a[0]}" "${a[@]:1}" > "$OUT/${a[0]}.log" 2>&1 &
    local pa=$!
    OMP_NUM_THREADS=1 "${FT[@]}" --out "$OUT/${b[0]}" "${b[@]:1}" > "$OUT/${b[0]}.log" 2>&1 &
    local pb=$!
    wait $pa $pb
    cp "$OUT/${a[0]}/metrics.json" "$RES/${a[0]}.metrics.json"
    cp "$OUT/${b[0]}/metrics.json" "$RES/${b[0]}.metrics.json"
}

# Without blur: seeds 1 and 2 beside the seed-0/1 runs of issue4_simclr_cpu.sh.
finetune_pair ft_simclr20_stain_seed1 --init "$SSL" --set trainer.seed=1 -- ft_random_stain_seed2 --set trainer.seed=2
# With blur, seeds 0, 1, 2.
for seed in 0 1 2; do
    finetune_pair ft_simclr20_blur_seed$seed --init "$SSL" "${BLUR[@]}" --set trainer.seed=$seed \
        -- ft_random_blur_seed$seed "${BLUR[@]}" --set trainer.seed=$seed
done
