#!/usr/bin/env bash
# Train the four shipped models with one protocol, same seed and patient split; resumable:
# rerun the script after an interruption and each run continues from its last complete epoch.
# Usage: [METHODS="standard robust"] scripts/train_shipped.sh [PRESET] [DATA_DIR ...]
set -euo pipefail
preset="${1:-cpu-small}"; shift || true
data=("$@")
if [ ${#data[@]} -eq 0 ]; then data=(../shared/data/covid-chestxray ../shared/data/actualmed); fi
args=(); for d in "${data[@]}"; do args+=(--data "$d"); done
for method in ${METHODS:-standard robust robustaugmix augmix}; do
  out="runs/${method}-${preset}-s0"
  if [ -f "$out/model.safetensors" ]; then echo "$method: done already ($out)"; continue; fi
  start=$(date +%s)
  python -m medrobust train --method "$method" --preset "$preset" --seed 0 "${args[@]}" --out "$out" --no-progress
  echo "$method: $(( $(date +%s) - start )) s wall"
done
