#!/usr/bin/env bash
# The demo's privacy/utility table: federated accuracy of the hospitals job at epsilon = inf,
# 8, 3 and 1 (delta 1e-5, all 8 sites every round, central DP-FedAvg), for a fixed number of
# rounds. The noise multiplier for each epsilon comes from fedtl's RDP accountant
# (`fedtl privacy noise`). Writes runs/privacy/table.md and prints it.
#
# usage: examples/hospitals/privacy_utility.sh [ROUNDS]    (default 30)
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${1:-30}
BIN=build/fedtl
[ -x "$BIN" ] || { scripts/setup && scripts/build; }
OUT=$PWD/runs/privacy  # absolute: paths in a job file are relative to the file
mkdir -p "$OUT"
TABLE="$OUT/table.md"
{
  echo "| epsilon (delta 1e-5) | noise multiplier | federated accuracy | rounds |"
  echo "|---|---|---|---|"
} > "$TABLE"
for eps in inf 8 3 1; do
  job="$OUT/job_$eps.toml"
  sed -e "s#^out = .*#out = \"$OUT/eps_$eps\"#" \
      -e "s#^path = .*#path = \"$PWD/runs/backbones/fmnist_cnn_src02578.pt\"#" -e "s/^enabled = true/enabled = false/" \
    examples/hospitals/job.toml > "$job"
  sigma="-"
  if [ "$eps" != inf ]; then
    sigma=$($BIN privacy noise --target-epsilon "$eps" --sampling-rate 1 --steps "$ROUNDS" --delta 1e-5 |
            awk '/noise_multiplier/ {print $2}')
    printf '\n[privacy]\nmode = "central"\nnoise_multiplier = %s\nclip_norm = 1.0\ndelta = 1e-5\n' "$sigma" >> "$job"
  fi
  echo "privacy_utility: epsilon $eps (sigma $sigma)" >&2
  $BIN simulate --config "$job" --rounds "$ROUNDS" --force > "$OUT/eps_$eps.out" 2> "$OUT/eps_$eps.log"
  acc=$(awk '/federated_accuracy/ {printf "%.2f%%", 100 * $2}' "$OUT/eps_$eps.out")
  echo "| $eps | $sigma | $acc | $ROUNDS |" >> "$TABLE"
done
cat "$TABLE"
