#!/usr/bin/env bash
# Issue 3 real-data benchmark on 2 CPU cores: PBC train -> PBC test and the three
# external labs at the 5-type level, with and without cell centring / scale augmentation,
# plus the published baselines. Needs `make data-shared` first. Results: runs/bench/*/metrics.json,
# summarised by benchmarks/summarise.py into benchmarks/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
LS=.venv/bin/leukoshift
CFG=configs/finetune_pbc_cpu.yaml
OUT=${OUT:-runs/bench}
$LS finetune -c $CFG --out $OUT/ft_resize_noscale --set data.image.preprocess=resize --set 'augment.geometry.zoom=[1,1]'
$LS finetune -c $CFG --out $OUT/ft_centre_scale
$LS finetune -c $CFG --out $OUT/ft_centre_scale_stain \
  --set augment.stain.p=0.8 --set augment.stain.sigma=0.2 --set augment.stain.bias=0.05 \
  --set augment.colour.p=0.8 --set augment.colour.saturation=0.3 --set augment.colour.hue=0.05
$LS finetune -c $CFG --baseline logreg --out $OUT/logreg_resize32 --set data.image.preprocess=resize --set data.image.size=32
$LS finetune -c $CFG --baseline logreg --out $OUT/logreg_centre32 --set data.image.size=32
$LS finetune -c $CFG --baseline svm --features-from $OUT/ft_centre_scale/best.ckpt --out $OUT/svm_centre
$LS finetune -c $CFG --baseline svm --features-from $OUT/ft_centre_scale/best.ckpt --out $OUT/svm_background --set data.image.preprocess=background
