#!/usr/bin/env bash
# Issue 3 on this 2-core CPU: what gpu_session.sh did not run. PBC train -> PBC test and,
# at the 5-type level, the three external labs: fine-tuning without cell centring and
# without scale augmentation, and the published baselines (logistic regression on 32 px
# pixels; RBF SVM on the fine-tuned model's penultimate features, with and without
# background filtering). Needs `make data-shared` and, for the SVMs, the backbone that
# gpu_session.sh exported (runs/gpu_h200/ft_centre_scale_backbone.safetensors + card).
set -euo pipefail
cd "$(dirname "$0")/.."
LS=.venv/bin/leukoshift
CFG=configs/finetune_pbc_cpu.yaml
OUT=${OUT:-runs/bench}
FEATURES=${FEATURES:-runs/gpu_h200/ft_centre_scale_backbone.safetensors}
$LS finetune -c $CFG --baseline logreg --out $OUT/logreg_resize32 --set data.image.preprocess=resize --set data.image.size=32
$LS finetune -c $CFG --baseline logreg --out $OUT/logreg_centre32 --set data.image.size=32
$LS finetune -c $CFG --baseline svm --features-from $FEATURES --out $OUT/svm_centre
$LS finetune -c $CFG --baseline svm --features-from $FEATURES --out $OUT/svm_background --set data.image.preprocess=background
$LS finetune -c $CFG --out $OUT/ft_resize_noscale --set data.image.preprocess=resize --set 'augment.geometry.zoom=[1,1]' --set trainer.progress=false \
    --set trainer.max_time=00:00:14:00
