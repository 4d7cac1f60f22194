"""round_time_ratio: the demo job's median round time with secure aggregation / without,
measured in the same run (alternating passes). Prints {"round_time_ratio": ..., ...}.

usage: secagg_round_time.py --fedtl build/fedtl [--reps N]
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile

ap = argparse.ArgumentParser()
ap.add_argument("--fedtl", required=True)
ap.add_argument("--reps", type=int, default=2)
ap.add_argument("--rounds", type=int, default=30)
args = ap.parse_args()

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
job = open(os.path.join(root, "examples/hospitals/job.toml")).read()
# The copies live in a temp dir: their backbone path must be absolute (a relative path in a job
# file is relative to the file).
job = re.sub(r'(?m)^path = "[^"]*"', f'path = "{root}/runs/backbones/fmnist_cnn_src02578.pt"', job)
tmp = tempfile.mkdtemp(prefix="fedtl_bench_secagg_")
paths = {}
for secure in (False, True):
    p = os.path.join(tmp, f"job_{int(secure)}.toml")
    with open(p, "w") as f:
        f.write(job.replace("enabled = true", "enabled = false"))  # no baselines
        f.write(f"\n[secure_aggregation]\nenabled = {'true' if secure else 'false'}\n")
        f.write(os.environ.get("FEDTL_SECAGG_EXTRA", "").replace("\\n", "\n") + "\n")
    paths[secure] = p

rounds = {False: [], True: []}
for rep in range(args.reps):
    for secure in (False, True):
        out = os.path.join(tmp, f"out_{int(secure)}_{rep}")
        subprocess.run([args.fedtl, "simulate", "--config", paths[secure], "--rounds", str(args.rounds), "--out", out],
                       cwd=root, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        with open(os.path.join(out, "metrics.jsonl")) as f:
            # round 1 also caches the sites' features: leave it out of the steady-state median
            rounds[secure] += [json.loads(l)["seconds"] for l in f if json.loads(l)["round"] > 1]
plain, secure = statistics.median(rounds[False]), statistics.median(rounds[True])
json.dump({"round_time_ratio": secure / plain, "plain_round_s": plain, "secure_round_s": secure,
           "rounds_measured": len(rounds[True])}, sys.stdout)
print()
