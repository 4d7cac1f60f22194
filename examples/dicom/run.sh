#!/usr/bin/env bash
# Four hospitals whose images are DICOM: the demo's data written as DICOM files with DCMTK
# (16-bit MONOCHROME2 with a rescale, 8-bit MONOCHROME1, 16-bit JPEG lossless) and a label
# manifest keyed by SOPInstanceUID per hospital. Two hospitals then read theirs from a real
# Orthanc (started here on loopback, with authentication), the two others from their files; a
# coordinator and four workers run the job over mutual TLS with secure aggregation. The same
# job with every hospital reading files must reach the same model_sha256: the script runs both
# and checks it.
#
# usage: examples/dicom/run.sh [ROUNDS]
#   FEDTL_EXAMPLE_OUT  outputs (default runs/dicom)
#   FEDTL_BUILD_DIR    the build to run (default build/, built first if missing)
#   FEDTL_PORT, FEDTL_ORTHANC_PORT  loopback ports (default: free ones)
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${1:-5}
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
PORT=${FEDTL_PORT:-$(free_port)}
OPORT=${FEDTL_ORTHANC_PORT:-$(free_port)}
BUILD=${FEDTL_BUILD_DIR:-$PWD/build}
BIN=$BUILD/fedtl
GEN=$BUILD/fedtl_example_dicom
ORTHANC=/usr/sbin/Orthanc
if [ ! -x "$BIN" ] || [ ! -x "$GEN" ] || [ ! -x "$ORTHANC" ]; then
  [ -z "${FEDTL_BUILD_DIR:-}" ] || { echo "no fedtl build in $FEDTL_BUILD_DIR (or Orthanc missing)" >&2; exit 1; }
  scripts/setup && scripts/build
fi
W=${FEDTL_EXAMPLE_OUT:-runs/dicom}
rm -rf "$W"
mkdir -p "$W"
W=$(cd "$W" && pwd)
SITES=(hospital-a hospital-b hospital-c hospital-d)
PACS_SITES=2  # the first two read from Orthanc in the second run

# 1. The demo job for 4 hospitals, its backbone, and its data as DICOM.
BACKBONE=$PWD/runs/backbones/fmnist_cnn_src02578.pt
sed -e "s/^sites = 8/sites = 4/" -e "s/^rounds = 30/rounds = $ROUNDS/" -e "s#^out = .*#out = \"$W/demo\"#" \
    -e "s#^path = .*#path = \"$BACKBONE\"#" -e "s/^enabled = true/enabled = false/" \
    examples/hospitals/job.toml > "$W/demo.toml"
[ -f "$BACKBONE" ] || "$BIN" pretrain --config "$W/demo.toml"
echo "== writing the demo's images as DICOM"
"$GEN" --job "$W/demo.toml" --out "$W/data"
CLASSES=$(sed 's/.*/"&"/' "$W/data/classes.txt" | paste -sd, -)

# 2. The coordinator's job: the same training settings; its only data is a DICOM test set.
awk '/^\[/{skip = ($0 ~ /^\[(data|partition|baselines)\]/)} !skip' "$W/demo.toml" |
  sed -e "s/^pretrain_if_missing = .*/pretrain_if_missing = false/" -e "s/^min_sites = .*//" \
      -e "s/^sites = 4/sites = 4\nmin_sites = 4/" > "$W/job.toml"
cat >> "$W/job.toml" <<TOML

[data]
source = "dicom"
test_dir = "$W/data/test"
classes = [$CLASSES]

[federation]
listen = "127.0.0.1:$PORT"
sites = ["hospital-a", "hospital-b", "hospital-c", "hospital-d"]
ca_cert = "$W/pki/kits/coordinator/ca.crt"
cert = "$W/pki/kits/coordinator/coordinator.crt"
key = "$W/pki/kits/coordinator/coordinator.key"
join_timeout_s = 300

[secure_aggregation]
enabled = true
threshold = 3
TOML

# 3. Provisioning: the federation CA and a kit each.
"$BIN" ca init --dir "$W/pki" --federation dicom-federation >/dev/null
"$BIN" ca issue --dir "$W/pki" --name coordinator --role coordinator >/dev/null
for s in "${SITES[@]}"; do
  "$BIN" ca issue --dir "$W/pki" --name "$s" --role worker --coordinator "127.0.0.1:$PORT" \
    --coordinator-name coordinator >/dev/null
done

# 4. A real Orthanc on loopback (authentication on, DICOM port off) holding two hospitals' files.
mkdir -p "$W/pacs"
PASSWORD=$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')
umask 077
printf '%s\n' "$PASSWORD" > "$W/pacs/password"
umask 022
cat > "$W/pacs/orthanc.json" <<JSON
{ "Name": "fedtl-example", "HttpPort": $OPORT, "DicomServerEnabled": false,
  "StorageDirectory": "$W/pacs/db", "IndexDirectory": "$W/pacs/db",
  "RemoteAccessAllowed": false, "AuthenticationEnabled": true,
  "RegisteredUsers": { "fedtl": "$PASSWORD" }, "Plugins": [], "LimitFindInstances": 0, "LimitFindResults": 0 }
JSON
"$ORTHANC" "$W/pacs/orthanc.json" > "$W/pacs/orthanc.log" 2>&1 &
ORTHANC_PID=$!
PIDS=()
cleanup() { kill "$ORTHANC_PID" "${PIDS[@]}" 2>/dev/null || true; }
trap cleanup EXIT
echo "== Orthanc on http://127.0.0.1:$OPORT: uploading hospital-a's and hospital-b's files"
python3 - "$OPORT" "$W/pacs/password" "$W/data" "$PACS_SITES" <<'PY'
import base64, glob, sys, time, urllib.request
port, pw_file, data, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
auth = "Basic " + base64.b64encode(("fedtl:" + open(pw_file).read().strip()).encode()).decode()
def call(path, body=None):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, headers={"Authorization": auth})
    if body is not None: req.add_header("Content-Type", "application/dicom")
    return urllib.request.urlopen(req, timeout=30).read()
for _ in range(100):  # up to 10 s for Orthanc to answer
    try: call("/system"); break
    except Exception: time.sleep(0.1)
else: sys.exit("Orthanc did not start (see pacs/orthanc.log)")
for k in range(n):
    files = sorted(glob.glob(f"{data}/site-{k}/*.dcm"))
    for f in files: call("/instances", open(f, "rb").read())
    print(f"  site-{k}: {len(files)} instances stored")
PY

# 5. Each hospital's site.toml; in the "orthanc" run the first two read from the PACS.
write_sites() {  # $1 = run name, $2 = how many hospitals read from Orthanc
  for i in "${!SITES[@]}"; do
    s=${SITES[$i]}
    cat > "$W/$1-$s.toml" <<TOML
[site]
name = "$s"
coordinator = "127.0.0.1:$PORT"
coordinator_name = "coordinator"
ca_cert = "$W/pki/kits/$s/ca.crt"
cert = "$W/pki/kits/$s/$s.crt"
key = "$W/pki/kits/$s/$s.key"
cache_dir = "$W/cache-$1-$s"

[policy]
min_sites = 3
TOML
    # The demo's class mix per hospital is skewed (Dirichlet 0.5): some hold no image of a class.
    local missing='missing_classes = "warn"'
    if [ "$i" -lt "$2" ]; then
      cat >> "$W/$1-$s.toml" <<TOML

[data]
source = "orthanc"
url = "http://127.0.0.1:$OPORT"
username = "fedtl"
password_file = "$W/pacs/password"
query = { PatientID = "site$i-*" }   # this hospital's patients
labels = "$W/data/site-$i/labels.csv"
$missing
TOML
    else
      cat >> "$W/$1-$s.toml" <<TOML

[data]
source = "dicom"
dir = "$W/data/site-$i"
labels = "$W/data/site-$i/labels.csv"
$missing
TOML
    fi
  done
}

run() {  # $1 = run name
  sed "s#^out = .*#out = \"$W/$1\"#" "$W/job.toml" > "$W/$1-job.toml"
  "$BIN" coordinator --config "$W/$1-job.toml" > "$W/$1-coordinator.out" 2> "$W/$1-coordinator.log" &
  local coord=$!
  PIDS=()
  for s in "${SITES[@]}"; do
    "$BIN" worker --config "$W/$1-$s.toml" 2> "$W/$1-$s.log" &
    PIDS+=($!)
  done
  local rc=0
  wait "$coord" || rc=$?
  # A coordinator that failed leaves workers retrying: stop them.
  if [ "$rc" -ne 0 ]; then kill "${PIDS[@]}" 2>/dev/null || true; fi
  for p in "${PIDS[@]}"; do wait "$p" || rc=$?; done
  PIDS=()
  if [ "$rc" -ne 0 ]; then
    echo "run '$1' failed (exit $rc); its logs: $W/$1-*.log" >&2
    tail -n 5 "$W/$1-coordinator.log" >&2
    exit 1
  fi
}

field() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])" "$1" "$2"; }

echo "== run 1: every hospital reads its DICOM files ($ROUNDS rounds, TLS, secure aggregation)"
write_sites files 0
run files
echo "== run 2: hospital-a and hospital-b read from Orthanc, the others from files"
write_sites orthanc "$PACS_SITES"
run orthanc

A=$(field "$W/files/summary.json" model_sha256)
B=$(field "$W/orthanc/summary.json" model_sha256)
ACC=$(field "$W/orthanc/summary.json" federated_accuracy)
printf 'federated accuracy %.2f%% on the DICOM test set\n' "$(python3 -c "print(100 * $ACC)")"
echo "model_sha256 from files:   $A"
echo "model_sha256 with Orthanc: $B"
if [ "$A" != "$B" ]; then
  echo "MISMATCH: the Orthanc run trained a different model" >&2
  exit 1
fi
echo "same model whether the images came from files or from Orthanc (outputs in $W)"
