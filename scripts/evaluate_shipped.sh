#!/usr/bin/env bash
# Export the trained runs as the shipped fp16 checkpoints and evaluate them from those files
# (clean, L2 PGD-20 at eps 1-5 with 5 restarts, three noises x 10 levels, calibration).
# Usage: [METHODS="standard robust"] [DEST=checkpoints] scripts/evaluate_shipped.sh [PRESET] [DATA_DIR ...]
# DEST (default checkpoints) lets a new set be evaluated beside the shipped one before it replaces it.
set -euo pipefail
source "$(dirname "$0")/shipped_args.sh"
dest="${DEST:-checkpoints}"; mkdir -p "$dest"
for method in ${METHODS:-standard robust augmix robustaugmix}; do
  run="runs/${method}-${preset}-s0/model.safetensors"
  if [ ! -f "$run" ]; then echo "$method: $run is missing; train it first (scripts/train_shipped.sh)" >&2; exit 1; fi
  python -m medrobust export "$run" "$dest/${method}.safetensors"
  start=$(date +%s)
  python -m medrobust evaluate "$dest/${method}.safetensors" "${args[@]}" --restarts 5 --out "$dest/results"
  echo "$method: evaluated in $(( $(date +%s) - start )) s wall"
done
python -m medrobust report "$dest/results"
