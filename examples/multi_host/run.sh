#!/usr/bin/env bash
# A coordinator and three hospital workers as separate processes on loopback, over mutual
# TLS with a fresh federation PKI, to a finished summary. The same job with `fedtl simulate`
# (job-partition data, same seed) reaches the same model_sha256; the script checks that too.
#
# usage: examples/multi_host/run.sh [ROUNDS]     (outputs in runs/multi_host/)
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${1:-5}
PORT=${FEDTL_PORT:-17443}
BIN=build/fedtl
[ -x "$BIN" ] || { scripts/setup && scripts/build; }
W=runs/multi_host
rm -rf "$W"
mkdir -p "$W"
SITES=(hospital-a hospital-b hospital-c)

# 1. Provisioning: the federation CA, a kit for the coordinator and one per hospital.
$BIN ca init --dir "$W/pki" --federation demo-federation
$BIN ca issue --dir "$W/pki" --name coordinator --role coordinator >/dev/null
for s in "${SITES[@]}"; do
  $BIN ca issue --dir "$W/pki" --name "$s" --role worker --coordinator "127.0.0.1:$PORT" \
    --coordinator-name coordinator >/dev/null
done

# 2. The job: the demo job for 3 sites, plus who may join and the coordinator's kit.
sed -e "s/^sites = 8/sites = 3\nmin_sites = 2/" -e "s/^rounds = 30/rounds = $ROUNDS/" \
    -e "s#^out = .*#out = \"$PWD/$W/coordinator\"#" \
    -e "s#^path = .*#path = \"$PWD/runs/backbones/fmnist_cnn_src02578.pt\"#" -e "s/^enabled = true/enabled = false/" \
    examples/hospitals/job.toml > "$W/job.toml"
K="$PWD/$W/pki/kits"
cat >> "$W/job.toml" <<TOML

[federation]
listen = "127.0.0.1:$PORT"
sites = ["hospital-a", "hospital-b", "hospital-c"]
ca_cert = "$K/coordinator/ca.crt"
cert = "$K/coordinator/coordinator.crt"
key = "$K/coordinator/coordinator.key"
join_timeout_s = 120

[secure_aggregation]   # on by default for coordinator jobs; said here so simulate uses it too
enabled = true
threshold = 2
TOML

# 3. Each hospital's site.toml: its kit, where the coordinator is, its data and its policy.
for i in 0 1 2; do
  s=${SITES[$i]}
  cat > "$W/$s.toml" <<TOML
[site]
name = "$s"
coordinator = "127.0.0.1:$PORT"
coordinator_name = "coordinator"
ca_cert = "$K/$s/ca.crt"
cert = "$K/$s/$s.crt"
key = "$K/$s/$s.key"
cache_dir = "$PWD/$W/site-$s"

[data]
source = "job-partition"   # this hospital's share of the demo data; real sites use "folder"
job = "$PWD/$W/job.toml"
partition_index = $i

[policy]
min_sites = 2
max_rounds = 100
TOML
done

# 4. Run: coordinator first, then the workers, each a separate process with its own log.
$BIN coordinator --config "$W/job.toml" > "$W/coordinator.out" 2> "$W/coordinator.log" &
COORD=$!
sleep 1
PIDS=()
for s in "${SITES[@]}"; do
  $BIN worker --config "$W/$s.toml" 2> "$W/$s.log" &
  PIDS+=($!)
done
wait $COORD
for p in "${PIDS[@]}"; do wait "$p"; done
echo "coordinator log: $W/coordinator.log; outputs: $W/coordinator/"
cat "$W/coordinator.out"

# 5. The same job simulated in one process must reach the same model.
$BIN simulate --config "$W/job.toml" --out "$W/simulate" > "$W/simulate.out" 2> "$W/simulate.log"
tls_sha=$(grep model_sha256 "$W/coordinator.out" | cut -d' ' -f2)
sim_sha=$(grep model_sha256 "$W/simulate.out" | cut -d' ' -f2)
if [ "$tls_sha" = "$sim_sha" ]; then
  echo "same model_sha256 as fedtl simulate: $sim_sha"
else
  echo "MISMATCH: tls $tls_sha vs simulate $sim_sha" >&2
  exit 1
fi
