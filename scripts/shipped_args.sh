# Sourced by train_shipped.sh and evaluate_shipped.sh so both read the same preset and data folders.
# Sets: preset (first argument, default cpu) and args (one --data per remaining argument; with none, the
# two shared folders the shipped set was trained on).
preset="${1:-cpu}"; shift || true
data=("$@")
if [ ${#data[@]} -eq 0 ]; then data=(../shared/data/covid-chestxray ../shared/data/actualmed); fi
args=(); for d in "${data[@]}"; do args+=(--data "$d"); done
