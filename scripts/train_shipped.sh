#!/usr/bin/env bash
# Train the four models of a shipped set with one protocol, same seed and patient split; resumable:
# rerun the script after an interruption and each run continues from its last complete epoch.
#
# Two protocols (checkpoints/README.md says what each gave):
# * FINETUNE=0: all four from scratch for the preset's epochs (class weights, 15-epoch eps ramp).
#   The earlier 64 px set (checkpoints/attempts/64px-scratch): `FINETUNE=0 scripts/train_shipped.sh cpu-small`.
# * FINETUNE=1 (default): `standard` from scratch; `robust`, `augmix` and `robustaugmix` start from
#   that standard model and fine-tune for FINETUNE_EPOCHS (default 20) at FINETUNE_LR (default 0.001)
#   with the PGD radius ramped up over the first RAMP_EPOCHS (default 5). Fine-tuning at the
#   from-scratch lr 0.01 collapsed to one class within 3 epochs at 128 px. The shipped 128 px set:
#   `scripts/train_shipped.sh cpu`.
#
# Usage: [METHODS="robust augmix"] [FINETUNE=0|1] scripts/train_shipped.sh [PRESET] [DATA_DIR ...]
# With FINETUNE=1 the standard run must exist before the others start; on a 2-core machine train it
# first, then run two invocations side by side with METHODS set and OMP_NUM_THREADS=1.
set -euo pipefail
source "$(dirname "$0")/shipped_args.sh"
base="runs/standard-${preset}-s0/model.safetensors"
for method in ${METHODS:-standard robust augmix robustaugmix}; do
  out="runs/${method}-${preset}-s0"
  if [ -f "$out/model.safetensors" ]; then echo "$method: done already ($out)"; continue; fi
  extra=()
  if [ "$method" != standard ] && [ "${FINETUNE:-1}" = 1 ]; then
    if [ ! -f "$base" ]; then echo "$method needs the standard model first ($base is missing)" >&2; exit 1; fi
    extra=(--init "$base" --epochs "${FINETUNE_EPOCHS:-20}" --lr "${FINETUNE_LR:-0.001}"
           --eps-ramp-epochs "${RAMP_EPOCHS:-5}")
  fi
  start=$(date +%s)
  python -m medrobust train --method "$method" --preset "$preset" --seed 0 "${args[@]}" --out "$out" "${extra[@]}" --no-progress
  echo "$method: $(( $(date +%s) - start )) s wall"
done
