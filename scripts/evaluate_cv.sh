#!/usr/bin/env bash
# Pooled out-of-fold evaluation of the cross-validated methods (scripts/train_cv.sh) into
# DEST/results (default checkpoints/cv/results): every fold model on its own test patients, clean,
# the worst case of L2 PGD-20 (RESTARTS starts) and APGD-CE-20 at eps 1-5, the paper's noises and the clinical suite, patient-level bootstrap CIs.
# Usage: [METHODS="standard robust"] [RUNS=runs] [DEST=checkpoints/cv] [RESTARTS=5] scripts/evaluate_cv.sh [PRESET] [DATA_DIR ...]
set -euo pipefail
source "$(dirname "$0")/shipped_args.sh"
dest="${DEST:-checkpoints/cv}"; mkdir -p "$dest/results"
for method in ${METHODS:-standard robust augmix robustaugmix}; do
  cv="${RUNS:-runs}/cv-${method}-${preset}-s0"
  start=$(date +%s)
  python -m medrobust evaluate "$cv" "${args[@]}" --restarts "${RESTARTS:-5}" --out "$dest/results"
  echo "$method: evaluated in $(( $(date +%s) - start )) s wall"
done
python -m medrobust report "$dest/results"
