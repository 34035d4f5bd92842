#!/usr/bin/env bash
# Shortcut audit of the shipped models on their test patients (no attacks): source x label table,
# lungs-blanked / border-blanked balanced accuracy and AUROC, Grad-CAM mass in the central field.
# Writes checkpoints/results/NAME.audit.json and adds the audit to NAME.json; then regenerate the docs with
# python scripts/update_results_docs.py.
# Usage: [DEST=checkpoints] scripts/audit_shipped.sh [PRESET] [DATA_DIR ...]
set -euo pipefail
source "$(dirname "$0")/shipped_args.sh"
dest="${DEST:-checkpoints}"
models=(); for method in standard robust augmix robustaugmix; do models+=("$dest/${method}.safetensors"); done
MEDROBUST_CPU_BF16=0 python -m medrobust audit "${models[@]}" "${args[@]}" --out "$dest/results" --no-progress
