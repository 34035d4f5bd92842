#!/usr/bin/env bash
# Train the four shipped models with one protocol, same seed and patient split; resumable:
# rerun the script after an interruption and each run continues from its last complete epoch.
#
# Protocol (see checkpoints/README.md for why): `standard` trains from scratch for the preset's
# epochs; `robust`, `augmix` and `robustaugmix` start from that standard model and fine-tune for
# FINETUNE_EPOCHS (default 20) with the PGD radius ramped up over the first RAMP_EPOCHS (default 5).
# From scratch, robustaugmix ended at chance-level balanced accuracy at 64 px.
#
# Usage: [METHODS="robust augmix"] [FINETUNE_EPOCHS=20] scripts/train_shipped.sh [PRESET] [DATA_DIR ...]
# The standard run must exist before the others start; on a 2-core machine run the standard model
# first, then two invocations side by side with METHODS set and OMP_NUM_THREADS=1.
set -euo pipefail
preset="${1:-cpu}"; shift || true
data=("$@")
if [ ${#data[@]} -eq 0 ]; then data=(../shared/data/covid-chestxray ../shared/data/actualmed); fi
args=(); for d in "${data[@]}"; do args+=(--data "$d"); done
base="runs/standard-${preset}-s0/model.safetensors"
for method in ${METHODS:-standard robust augmix robustaugmix}; do
  out="runs/${method}-${preset}-s0"
  if [ -f "$out/model.safetensors" ]; then echo "$method: done already ($out)"; continue; fi
  extra=()
  if [ "$method" != standard ]; then
    if [ ! -f "$base" ]; then echo "$method needs the standard model first ($base is missing)" >&2; exit 1; fi
    extra=(--init "$base" --epochs "${FINETUNE_EPOCHS:-20}" --eps-ramp-epochs "${RAMP_EPOCHS:-5}")
  fi
  start=$(date +%s)
  python -m medrobust train --method "$method" --preset "$preset" --seed 0 "${args[@]}" --out "$out" "${extra[@]}" --no-progress
  echo "$method: $(( $(date +%s) - start )) s wall"
done
