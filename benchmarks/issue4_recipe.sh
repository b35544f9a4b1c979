# Sourced by the issue-4 scripts (not run on its own): the fine-tuning command every
# issue-4 table compares, so that SSL and random-init rows differ in --init alone.
# STAIN: HED stain + colour jitter; BLUR: the blur that makes PBC as soft as the softest
# lab (`leukoshift data appearance`: 2.2 px at 224, 0.6 px at 64); 15 epochs, early
# stopping off. Expects to be sourced from the repository root.
LS=.venv/bin/leukoshift
PY=${PY:-.venv/bin/python}
OUT=${OUT:-runs/bench}
RES=benchmarks/results/issue4
mkdir -p "$RES"
# Each lab's red-cell diameter in px (`leukoshift data ruler`, results/issue4/ruler_scales.txt;
# BCCD crops show no whole red cells and take their smears'), for ruler framing.
RULER_SCALES='{pbc: 23.5, cellavision: 70.1, bionet: 56.4, bccd_crops: 91.2, bccd_smears: 91.2, raabin: 54.5}'
# Ruler framing by each image's own red cells where it shows two, its lab's scale otherwise.
RULER=(--set data.image.preprocess=ruler --set "data.image.red_cell_px=$RULER_SCALES" --set data.image.ruler_scale=image)
# The ResNet-18 fine-tunes: with FT and BLUR below, configs/finetune_r18_ruler_cpu.yaml
# (tests/test_config_files.py pins that the two agree).
R18=(--set model.backbone=resnet18)
R18_RULER=("${R18[@]}" "${RULER[@]}" --set augment.normalize=reinhard)
# The colour-kept SimCLR, as overrides of simclr_shared_cpu.yaml: negatives from the
# anchor's own lab, small labs drawn more (0.5), no grayscale, little hue and saturation
# jitter (granule colour is a cue), HED stain jitter as shipped; the scripts add the epochs.
SIMCLR_COL=(--set simclr.negatives=same_source --set data.source_balance=0.5 --set multicrop.grayscale_p=0
            --set augment.colour.hue=0.02 --set augment.colour.saturation=0.1)
# Its ResNet-18 run, 18 epochs. The scripts add the stain normalisation and, for ruler
# crops, RULER; with both, configs/simclr_r18_ruler_cpu.yaml (pinned by the same test).
SIMCLR_R18=("${R18[@]}" "${SIMCLR_COL[@]}" --set trainer.max_epochs=18)
STAIN=(--set augment.stain.p=0.8 --set augment.stain.sigma=0.2 --set augment.stain.bias=0.05
       --set augment.colour.p=0.8 --set augment.colour.saturation=0.3 --set augment.colour.hue=0.05)
BLUR=(--set augment.colour.blur_p=0.5 --set 'augment.colour.blur_sigma=[0.1,2.2]')
FT=($LS finetune -c configs/finetune_pbc_cpu.yaml --set trainer.progress=false
    --set trainer.max_time=00:01:30:00 --set early_stopping_patience=15 "${STAIN[@]}")

# finetune RUN SEED THREADS [ARGS...]: one "stain + blur" fine-tune into $OUT/RUN with
# OMP_NUM_THREADS=THREADS (two 2-thread jobs on 2 cores stall: run pairs on 1 each), its
# metrics.json kept as $RES/RUN.metrics.json. A run cut off before its metrics.json resumes
# from its last.ckpt (appending to its log); a finished one is skipped by finetune itself.
finetune() {
    local run=$1 seed=$2 threads=$3 resume=()
    shift 3
    if [ -f "$OUT/$run/last.ckpt" ] && [ ! -f "$OUT/$run/metrics.json" ]; then resume=(--resume); fi
    OMP_NUM_THREADS=$threads "${FT[@]}" "${BLUR[@]}" "$@" "${resume[@]}" --out "$OUT/$run" \
        --set trainer.seed="$seed" >> "$OUT/$run.log" 2>&1
    cp "$OUT/$run/metrics.json" "$RES/$run.metrics.json"
}

# simclr NAME [ARGS...]: configs/simclr_shared_cpu.yaml pretrained into $OUT/simclr_NAME with
# ARGS (the run's --set overrides), skipped when its backbone exists and resumed from its
# last.ckpt when an earlier try was cut off; then its online-monitor log and the frozen
# features' kNN on PBC test and the three other labs (ssl_knn.py) kept in $RES, the kNN
# not rerun while its JSON is newer than the backbone.
simclr() {
    local name=$1 run=$OUT/simclr_$1
    shift
    if [ ! -f "$run/backbone.safetensors" ]; then
        local resume=()
        if [ -f "$run/last.ckpt" ]; then resume=(--resume); fi
        $LS ssl pretrain "${resume[@]}" -c configs/simclr_shared_cpu.yaml --out "$run" --set trainer.progress=false "$@"
    fi
    cp "$run/monitor.json" "$RES/simclr_${name}_monitor.json"
    local knn=$RES/simclr_${name}_knn_external.json
    if [ ! "$knn" -nt "$run/backbone.safetensors" ]; then
        $PY benchmarks/ssl_knn.py --backbone "$run/backbone.safetensors" --external runs/data/cellavision.csv \
            --external runs/data/bccd_crops.csv --external runs/data/bionet.csv --json-out "$knn"
    fi
}

# The checkpoints compared per LP-FT run: its linear probe, its end and three WiSE averages.
# ckpts RUN...: their paths, one per line; candidates GROUP: the same as one seed_table.py
# row of several groups (pick one per seed with --select).
CANDIDATES=(warmup best wise0.25 wise0.5 wise0.75)
ckpts() { for run in "$@"; do for c in "${CANDIDATES[@]}"; do echo "$OUT/$run/$c.ckpt"; done; done; }
# seed_ckpts PREFIX: ckpts of every run $OUT/PREFIX_seed<N> there is.
seed_ckpts() { for run in "$OUT/$1"_seed*/; do ckpts "$(basename "$run")"; done; }
candidates() { local g=$1; echo "$g|$g/wise0.25|$g/wise0.5|$g/wise0.75|$g/warmup"; }

# pair SEED RANDOM_RUN SSL_RUN BACKBONE [ARGS...]: random-init fine-tuning into RANDOM_RUN and
# LP-FT from BACKBONE (3 head warm-up epochs) into SSL_RUN, both with ARGS, side by side on
# one thread each; then WiSE 0.25 / 0.5 / 0.75 of the LP-FT run.
pair() {
    local seed=$1 random=$2 ssl=$3 init=$4
    shift 4
    finetune "$random" "$seed" 1 "$@" &
    finetune "$ssl" "$seed" 1 --init "$init" --set head_warmup_epochs=3 "$@" &
    wait
    wise_all "$ssl"
}

# wise_all RUN: WiSE 0.25 / 0.5 / 0.75 of the LP-FT run $OUT/RUN (rewritten if there).
wise_all() { for alpha in 0.25 0.5 0.75; do $LS wise "$OUT/$1" --alpha "$alpha"; done; }
