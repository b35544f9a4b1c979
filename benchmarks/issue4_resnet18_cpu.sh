#!/usr/bin/env bash
# Issue 4 on this 2-core CPU with a ResNet-18 (11.2 M parameters) in place of regnetx_002
# (2.3 M), which underfits PBC under the stain and blur jitter of the recipe (PBC test
# macro-F1 0.62-0.68, where a from-scratch ResNet-18 of the throw-away scripts reached
# 0.83-0.89). At 64 px a ResNet-18 training step costs 1.4x regnetx_002's here.
#
# The colour-kept SimCLR of benchmarks/issue4_colour_cpu.sh (same-lab negatives,
# lab-balanced draws 0.5, 18 epochs, no grayscale, hue 0.02, saturation 0.1, HED stain
# jitter, cells centred) pretrained with a ResNet-18, then random init and LP-FT from it
# side by side, one thread each, both with per-image ruler framing. NORM=reinhard (the
# default; NORM=none leaves it out) puts Reinhard stain normalisation in front of the
# network in pretraining (fitted on pool images) and in both fine-tunes (fitted on PBC
# training images), as benchmarks/issue4_reinhard_cpu.sh did for fine-tuning alone. A
# finished pretraining is not rerun and an interrupted one resumes from its last.ckpt.
# Seeds in SEEDS (default 0 1 2). SSL_ARM=ft replaces the pairs by fine-tuning from the SSL
# backbone with no head warm-up (the random-init recipe with --init alone, two seeds side
# by side; their random-init runs must exist); SSL_ARM=ft+random runs that fine-tune and
# the random-init one of the same seed side by side (new seeds without LP-FT). Results:
# benchmarks/results/issue4/.
set -euo pipefail
cd "$(dirname "$0")/.."
source benchmarks/issue4_recipe.sh
NORM=${NORM:-reinhard}
SUFFIX=$([ "$NORM" = none ] || echo "_$NORM")
NAME=r18col18$SUFFIX
TAG=rulerimg$SUFFIX
SSL=$OUT/simclr_$NAME/backbone.safetensors
ARGS=("${R18[@]}" "${RULER[@]}" --set "augment.normalize=$NORM")

simclr "$NAME" "${SIMCLR_R18[@]}" --set "augment.normalize=$NORM"
$LS data cache runs/data/{pbc,cellavision,bccd_crops,bionet}.csv --set image.size=64 --set image.preprocess=ruler \
    --set "image.red_cell_px=$RULER_SCALES" --set image.ruler_scale=image

SEEDS=(${SEEDS:-0 1 2})
if [ "${SSL_ARM:-lpft}" = ft+random ]; then
    for seed in "${SEEDS[@]}"; do
        finetune "ft_r18_random_${TAG}_seed$seed" "$seed" 1 "${ARGS[@]}" &
        finetune "ft_${NAME}_ft_rulerimg_seed$seed" "$seed" 1 --init "$SSL" "${ARGS[@]}" &
        wait
    done
elif [ "${SSL_ARM:-lpft}" = ft ]; then
    for ((i = 0; i < ${#SEEDS[@]}; i += 2)); do
        for seed in "${SEEDS[@]:i:2}"; do
            finetune "ft_${NAME}_ft_rulerimg_seed$seed" "$seed" 1 --init "$SSL" "${ARGS[@]}" &
        done
        wait
    done
else
    for seed in "${SEEDS[@]}"; do
        pair "$seed" "ft_r18_random_${TAG}_seed$seed" "ft_${NAME}_lpft_rulerimg_seed$seed" "$SSL" "${ARGS[@]}"
    done
fi
# Every run of either arm there is, rescored (with each image's prediction, for --bootstrap)
# and folded over every seed it has, whichever SEEDS this call ran (a call for two new seeds
# must not leave a two-seed table); the plain-FT row where its runs exist. --reuse keeps the
# scores of checkpoints already in the JSON and older than it, so a call for new seeds
# scores only theirs. (The three-seed table of RESULTS.md's first ResNet-18 section is
# seed_table_r18_rulerimg_reinhard.json.)
mapfile -t SSL_CKPTS < <(seed_ckpts "ft_${NAME}_lpft_rulerimg")
PLAIN_FT=("$OUT"/ft_${NAME}_ft_rulerimg_seed*/best.ckpt)
[ -f "${PLAIN_FT[0]}" ] || PLAIN_FT=()
$PY benchmarks/rescore.py "$OUT"/ft_r18_random_${TAG}_seed*/best.ckpt "${SSL_CKPTS[@]}" "${PLAIN_FT[@]}" \
    --val runs/data/pbc.csv --test runs/data/pbc.csv --json-out "$RES/rescore_r18_${TAG}.json" --reuse
FT_ROW=()
[ ${#PLAIN_FT[@]} -eq 0 ] || FT_ROW=(--row "ResNet-18, SimCLR FT (no head warm-up)=ft_${NAME}_ft_rulerimg")
$PY benchmarks/seed_table.py "$RES/rescore_r18_${TAG}.json" \
    --row "ResNet-18, SimCLR LP-FT=ft_${NAME}_lpft_rulerimg" \
    --row "ResNet-18, SimCLR WiSE 0.5=ft_${NAME}_lpft_rulerimg/wise0.5" "${FT_ROW[@]}" \
    --baseline "ResNet-18, random plain=ft_r18_random_${TAG}" --recall plain --bootstrap 2000 \
    --json-out "$RES/seed_table_r18_${TAG}_all.json"
