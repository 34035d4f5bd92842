#!/usr/bin/env bash
# Patient-level K-fold cross-validation of the four methods with the shipped protocol, resumable:
# `standard` from scratch on each fold; `robust`, `augmix` and `robustaugmix` fine-tune from the
# SAME fold's standard model (never another fold's: it trained on this fold's test patients, and
# `train` refuses such an --init) for FINETUNE_EPOCHS (20) at FINETUNE_LR (0.001), eps ramp RAMP_EPOCHS (5).
# Rerun after a kill: finished folds are skipped, an interrupted fold resumes after its last epoch.
#
# Usage: [METHODS="standard robust"] [FOLDS=5] scripts/train_cv.sh [PRESET] [DATA_DIR ...]
# Then: python -m medrobust evaluate runs/cv-<method>-<preset>-s0 ...   (pooled out-of-fold)
set -euo pipefail
source "$(dirname "$0")/shipped_args.sh"
folds="${FOLDS:-5}"
base="runs/cv-standard-${preset}-s0"
for method in ${METHODS:-standard robust augmix robustaugmix}; do
  extra=()
  if [ "$method" != standard ]; then
    extra=(--init-cv "$base" --epochs "${FINETUNE_EPOCHS:-20}" --lr "${FINETUNE_LR:-0.001}"
           --eps-ramp-epochs "${RAMP_EPOCHS:-5}")
  fi
  start=$(date +%s)
  python -m medrobust cv --method "$method" --preset "$preset" --seed 0 --folds "$folds" "${args[@]}" \
    --out "runs/cv-${method}-${preset}-s0" "${extra[@]}" --no-progress
  echo "$method: all $folds folds in $(( $(date +%s) - start )) s wall"
done
