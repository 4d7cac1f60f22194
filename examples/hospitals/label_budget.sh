#!/usr/bin/env bash
# The label-budget study: the demo job (examples/hospitals/job.toml: 8 hospitals, Dirichlet 0.5,
# FedAdam) at several numbers of labels per site ([partition] samples_per_site), for
#   transfer      the demo as it is (pre-trained backbone, FC block and head trained)
#   finetune_all  the pre-trained backbone with everything trainable ([backbone] freeze = "none")
#   scratch       the same federated job from a randomly initialised backbone, everything
#                 trainable (the "federated_scratch" baseline of `fedtl simulate --baselines`)
#   local_only    each site alone (mean over the sites), from the --baselines run
#   centralised   all sites' labels pooled, from the --baselines run
# Accuracy is the global test set's (model.pt, the best-validation round), macro_auc the
# one-vs-rest ROC AUC from summary.json's test_metrics, seconds the run's own summary.json
# figure. local_only and centralised are trained together inside the --baselines run, which
# neither times them apart nor records their AUC: those figures are null, never estimated.
#
# Writes OUT/results.json (a list of {labels_per_site, method, accuracy, macro_auc, seconds}),
# OUT/label_budget.svg (accuracy against labels per site, a line per method) and OUT/table.md
# (printed at the end); every run's job file, outputs and log stay under OUT/b<LABELS>/.
#
# usage: examples/hospitals/label_budget.sh [options]
#   --budgets "10 25 50 150"  labels per site to run (default "10 25 50 150")
#   --rounds N                federated rounds (default: the job's, 30)
#   --baseline-epochs N       [baselines] epochs (default: the job's, 40)
#   --out DIR                 outputs (default runs/label_budget; FEDTL_EXAMPLE_OUT also sets it)
#   --bin PATH                the fedtl binary (default build/fedtl; or FEDTL_BUILD_DIR/fedtl)
#   -h, --help                this text
# Relative --out and --bin are taken from the directory the script is started in. The demo's
# backbone (runs/backbones/fmnist_cnn_src02578.pt in the repository) is pre-trained first if
# missing. Reruns overwrite OUT's runs (simulate --force).
set -euo pipefail

usage() { awk 'NR > 1 && /^#/ {sub(/^# ?/, ""); print; next} NR > 1 {exit}' "$0"; }
die() { echo "label_budget: $*" >&2; exit 2; }

BUDGETS="10 25 50 150"
ROUNDS=""
BASELINE_EPOCHS=""
OUT_ARG=${FEDTL_EXAMPLE_OUT:-}
BIN_ARG=""
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --budgets) [ $# -ge 2 ] || die "--budgets needs a value"; BUDGETS=$2; shift 2 ;;
    --rounds) [ $# -ge 2 ] || die "--rounds needs a value"; ROUNDS=$2; shift 2 ;;
    --baseline-epochs) [ $# -ge 2 ] || die "--baseline-epochs needs a value"; BASELINE_EPOCHS=$2; shift 2 ;;
    --out) [ $# -ge 2 ] || die "--out needs a value"; OUT_ARG=$2; shift 2 ;;
    --bin) [ $# -ge 2 ] || die "--bin needs a value"; BIN_ARG=$2; shift 2 ;;
    *) usage >&2; die "unknown argument '$1'" ;;
  esac
done
for b in $BUDGETS; do
  [[ "$b" =~ ^[1-9][0-9]*$ ]] || die "--budgets: '$b' is not a positive whole number"
done
[ -n "$BUDGETS" ] || die "--budgets is empty"
[ -z "$ROUNDS" ] || [[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || die "--rounds: '$ROUNDS' is not a positive whole number"
[ -z "$BASELINE_EPOCHS" ] || [[ "$BASELINE_EPOCHS" =~ ^[1-9][0-9]*$ ]] ||
  die "--baseline-epochs: '$BASELINE_EPOCHS' is not a positive whole number"

# Paths given relative to where the script was started; then work from the repository root.
abspath() { case "$1" in /*) printf '%s\n' "$1" ;; *) printf '%s\n' "$PWD/$1" ;; esac; }
[ -z "$OUT_ARG" ] || OUT_ARG=$(abspath "$OUT_ARG")
[ -z "$BIN_ARG" ] || BIN_ARG=$(abspath "$BIN_ARG")
cd "$(dirname "$0")/../.."
ROOT=$PWD
JOB=examples/hospitals/job.toml

if [ -n "$BIN_ARG" ]; then
  BIN=$BIN_ARG
  [ -x "$BIN" ] || die "no fedtl binary at $BIN"
elif [ -n "${FEDTL_BUILD_DIR:-}" ]; then
  BIN=$FEDTL_BUILD_DIR/fedtl
  [ -x "$BIN" ] || die "no fedtl build in $FEDTL_BUILD_DIR"
else
  BIN=$ROOT/build/fedtl
  [ -x "$BIN" ] || { scripts/setup && scripts/build; }
fi
OUT=${OUT_ARG:-$ROOT/runs/label_budget}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
BACKBONE=$ROOT/runs/backbones/fmnist_cnn_src02578.pt
ROUNDS_ARGS=()
[ -z "$ROUNDS" ] || ROUNDS_ARGS=(--rounds "$ROUNDS")

# The demo job at LABELS per site, written to FILE with absolute paths (job-file paths are read
# relative to the job file's folder). $1 = LABELS, $2 = run name (its out dir), $3 = FILE,
# $4 = baselines (true/false), $5 = backbone.freeze ("" = the demo's).
write_job() {
  local freeze_expr='s/^$//'
  [ -z "$5" ] || freeze_expr="/^\[backbone\]/,/^\[/ s/^freeze = .*/freeze = \"$5\"/"
  local epochs_expr='s/^$//'
  [ -z "$BASELINE_EPOCHS" ] || epochs_expr="/^\[baselines\]/,/^\[/ s/^epochs = .*/epochs = $BASELINE_EPOCHS/"
  sed -e "/^\[job\]/,/^\[/ s#^out = .*#out = \"$OUT/b$1/$2\"#" \
      -e "/^\[backbone\]/,/^\[/ s#^path = .*#path = \"$BACKBONE\"#" \
      -e "/^\[partition\]/,/^\[/ s/^samples_per_site = .*/samples_per_site = $1/" \
      -e "/^\[baselines\]/,/^\[/ s/^enabled = .*/enabled = $4/" \
      -e "$freeze_expr" -e "$epochs_expr" \
      "$JOB" > "$3"
  grep -q "^samples_per_site = $1\$" "$3" || die "could not set samples_per_site in $3"
}

# One `fedtl simulate`; its stdout and log beside its job file. $1 = LABELS, $2 = run name,
# further arguments go to simulate.
simulate() {
  local labels=$1 name=$2 dir=$OUT/b$1
  shift 2
  if ! "$BIN" simulate --config "$dir/$name.toml" "${ROUNDS_ARGS[@]}" --force "$@" \
       > "$dir/$name.out" 2> "$dir/$name.log"; then
    echo "label_budget: $labels labels/site: $name failed; the end of $dir/$name.log:" >&2
    tail -n 5 "$dir/$name.log" >&2
    exit 1
  fi
}

# Prints "ACCURACY% in SECONDS s" for a summary.json; $2/$3 = the keys (default the run's own).
report() {
  python3 - "$@" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
acc = s[sys.argv[2]] if len(sys.argv) > 2 else s["federated_accuracy"]
sec = s[sys.argv[3]] if len(sys.argv) > 3 else s["seconds"]
print(f"{100 * acc:.2f}% in {sec:.1f} s")
PY
}

if [ ! -f "$BACKBONE" ]; then
  echo "label_budget: pre-training the demo backbone ($BACKBONE)" >&2
  mkdir -p "$(dirname "$BACKBONE")"
  write_job 150 pretrain "$OUT/pretrain.toml" false ""
  "$BIN" pretrain --config "$OUT/pretrain.toml" > "$OUT/pretrain.out" 2> "$OUT/pretrain.log" ||
    { tail -n 5 "$OUT/pretrain.log" >&2; exit 1; }
fi

for b in $BUDGETS; do
  dir=$OUT/b$b
  mkdir -p "$dir"
  write_job "$b" transfer "$dir/transfer.toml" false ""
  write_job "$b" finetune_all "$dir/finetune_all.toml" false none
  write_job "$b" baselines "$dir/baselines.toml" true ""

  echo "label_budget: $b labels/site: transfer ..." >&2
  simulate "$b" transfer
  echo "label_budget: $b labels/site: transfer $(report "$dir/transfer/summary.json")" >&2

  echo "label_budget: $b labels/site: finetune_all ..." >&2
  simulate "$b" finetune_all
  echo "label_budget: $b labels/site: finetune_all $(report "$dir/finetune_all/summary.json")" >&2

  echo "label_budget: $b labels/site: scratch, local_only, centralised (simulate --baselines) ..." >&2
  simulate "$b" baselines --baselines
  echo "label_budget: $b labels/site: scratch $(report "$dir/baselines/summary.json" \
       federated_scratch_accuracy federated_scratch_seconds)" >&2
done

# results.json, table.md and label_budget.svg from the runs' summary.json files.
python3 - "$OUT" $BUDGETS <<'PY'
import json, math, os, sys
from xml.sax.saxutils import escape

out, budgets = sys.argv[1], [int(b) for b in sys.argv[2:]]
METHODS = ["transfer", "finetune_all", "scratch", "local_only", "centralised"]

def load(*parts):
    with open(os.path.join(out, *parts)) as f:
        return json.load(f)

def auc(summary):
    return (summary.get("test_metrics") or {}).get("macro_auc")

rows, info = [], None
for b in budgets:
    t = load(f"b{b}", "transfer", "summary.json")
    f = load(f"b{b}", "finetune_all", "summary.json")
    bl = load(f"b{b}", "baselines", "summary.json")
    fs = load(f"b{b}", "baselines", "federated_scratch", "summary.json")
    for s, name in ((t, "transfer"), (f, "finetune_all"), (bl, "baselines")):
        per_site = s.get("per_site") or []
        if any(p.get("samples") != b for p in per_site):
            print(f"label_budget: warning: the {name} run at {b} labels/site has sites holding another number of "
                  f"labels: {[p.get('samples') for p in per_site]}", file=sys.stderr)
    if bl["model_sha256"] != t["model_sha256"]:
        print(f"label_budget: warning: at {b} labels/site the --baselines run's federated model differs from the "
              f"transfer run's ({bl['model_sha256'][:8]} vs {t['model_sha256'][:8]}); transfer's figures are "
              "the transfer run's", file=sys.stderr)
    figures = {
        "transfer": (t["federated_accuracy"], auc(t), t["seconds"]),
        "finetune_all": (f["federated_accuracy"], auc(f), f["seconds"]),
        "scratch": (bl["federated_scratch_accuracy"], auc(fs), bl["federated_scratch_seconds"]),
        "local_only": (bl["local_only_mean_accuracy"], None, None),
        "centralised": (bl["centralized_accuracy"], None, None),
    }
    for m in METHODS:
        acc, a, sec = figures[m]
        rows.append({"labels_per_site": b, "method": m, "accuracy": acc, "macro_auc": a, "seconds": sec})
    if info is None:
        support = sum(c.get("support", 0) for c in (t.get("test_metrics") or {}).get("per_class", {}).values())
        info = {"rounds": t["rounds"], "sites": t["sites"], "seed": t["seed"], "strategy": t["strategy"],
                "test_images": support, "baseline_epochs": bl.get("baseline_epochs")}

with open(os.path.join(out, "results.json"), "w") as fh:
    json.dump(rows, fh, indent=2)
    fh.write("\n")

def cell(r):
    if r["accuracy"] is None:
        return "–"
    sec = "–" if r["seconds"] is None else f"{r['seconds']:.1f} s"
    return f"{100 * r['accuracy']:.2f}% ({sec})"

by = {(r["labels_per_site"], r["method"]): r for r in rows}
lines = ["| labels per site | " + " | ".join(METHODS) + " |", "|---" * (len(METHODS) + 1) + "|"]
for b in budgets:
    lines.append(f"| {b} | " + " | ".join(cell(by[(b, m)]) for m in METHODS) + " |")
lines.append("")
lines.append(f"Global test accuracy ({info['test_images']:,} images; `model.pt`, the best-validation round) and, in "
             f"brackets, the run's seconds; {info['sites']} sites, {info['strategy']}, {info['rounds']} rounds, seed "
             f"{info['seed']}. local_only is the mean over the sites of each site's model trained alone, centralised "
             f"pools every site's labels (both {info['baseline_epochs']} epochs, inside the `--baselines` run, which "
             "does not time them apart: –).")
with open(os.path.join(out, "table.md"), "w") as fh:
    fh.write("\n".join(lines) + "\n")

# The plot: accuracy (%) against labels per site on a log axis, a polyline and markers per method.
W, H, L, R, T, B = 760, 460, 70, 180, 50, 60
colors = {"transfer": "#1f77b4", "finetune_all": "#9467bd", "scratch": "#d62728", "local_only": "#7f7f7f",
          "centralised": "#2ca02c"}
accs = [100 * r["accuracy"] for r in rows if r["accuracy"] is not None]
y0 = max(0.0, math.floor((min(accs) - 2) / 10) * 10)
y1 = min(100.0, math.ceil((max(accs) + 2) / 10) * 10)
if y1 <= y0:
    y0, y1 = max(0.0, y0 - 10), min(100.0, y1 + 10)
lx0, lx1 = math.log(min(budgets)), math.log(max(budgets))
if lx1 - lx0 < 1e-9:
    lx0, lx1 = lx0 - 0.5, lx1 + 0.5
pad = 0.05 * (lx1 - lx0)
lx0, lx1 = lx0 - pad, lx1 + pad
def px(b): return L + (math.log(b) - lx0) / (lx1 - lx0) * (W - L - R)
def py(a): return H - B - (a - y0) / (y1 - y0) * (H - T - B)

title = f"Label budget: global test accuracy ({info['sites']} sites, {info['rounds']} rounds)"
svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
       'font-family="sans-serif" font-size="12">',
       f'<rect x="0" y="0" width="{W}" height="{H}" fill="white"/>',
       f'<text x="{(L + W - R) / 2:.1f}" y="24" text-anchor="middle" font-size="15">{escape(title)}</text>']
step = 5 if y1 - y0 <= 30 else 10
y = y0
while y <= y1 + 1e-9:
    svg.append(f'<line x1="{L}" y1="{py(y):.1f}" x2="{W - R}" y2="{py(y):.1f}" stroke="#e0e0e0"/>')
    svg.append(f'<text x="{L - 6}" y="{py(y) + 4:.1f}" text-anchor="end">{y:g}</text>')
    y += step
for b in budgets:
    svg.append(f'<line x1="{px(b):.1f}" y1="{T}" x2="{px(b):.1f}" y2="{H - B}" stroke="#f0f0f0"/>')
    svg.append(f'<text x="{px(b):.1f}" y="{H - B + 18}" text-anchor="middle">{b}</text>')
svg.append(f'<line x1="{L}" y1="{H - B}" x2="{W - R}" y2="{H - B}" stroke="black"/>')
svg.append(f'<line x1="{L}" y1="{T}" x2="{L}" y2="{H - B}" stroke="black"/>')
svg.append(f'<text x="{(L + W - R) / 2:.1f}" y="{H - 18}" text-anchor="middle">labels per site (log scale)</text>')
svg.append(f'<text x="18" y="{(T + H - B) / 2:.1f}" text-anchor="middle" '
           f'transform="rotate(-90 18 {(T + H - B) / 2:.1f})">global test accuracy (%)</text>')
for i, m in enumerate(METHODS):
    pts = [(px(b), py(100 * by[(b, m)]["accuracy"])) for b in budgets if by[(b, m)]["accuracy"] is not None]
    c = colors[m]
    dash = ' stroke-dasharray="6 4"' if m in ("local_only", "centralised") else ""  # not federated
    svg.append(f'<polyline data-method="{m}" fill="none" stroke="{c}" stroke-width="2"{dash} points="'
               + " ".join(f"{x:.1f},{y:.1f}" for x, y in pts) + '"/>')
    for x, y in pts:
        svg.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="{c}"/>')
    ly = T + 10 + 22 * i
    svg.append(f'<line x1="{W - R + 16}" y1="{ly}" x2="{W - R + 40}" y2="{ly}" stroke="{c}" stroke-width="2"{dash}/>')
    svg.append(f'<text x="{W - R + 46}" y="{ly + 4}">{escape(m)}</text>')
svg.append("</svg>")
with open(os.path.join(out, "label_budget.svg"), "w") as fh:
    fh.write("\n".join(svg) + "\n")
PY

echo "label_budget: wrote $OUT/results.json, $OUT/label_budget.svg and $OUT/table.md" >&2
cat "$OUT/table.md"
