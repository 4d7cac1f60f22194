#!/usr/bin/python3
"""simulation_scale: `fedtl simulate` with 100 sites x 5 rounds in one process, and 1,000 sites.

Runs build/fedtl simulate on bench/simulation_scale.toml REPS times and reports medians of:
  startup_ms_per_site  "sites started/connected and ready in X s" (logged by run_simulate: from starting
                       the site threads until every site has loaded the backbone, built its
                       model and cached its features and the first round could begin) / sites
  peak_rss_mb          the fedtl process's peak resident set (wait4 rusage, ru_maxrss)
plus wall time and mean round time. Then the same job at 1,000 sites x 25 labels x 2 rounds
(personalisation off, as in the issue's measurement), REPS times, reporting medians of
peak_rss_mb_1000, startup_ms_per_site_1000 and round_s_1000 (the steady round: round 2).
The backbone is made first (fedtl pretrain) when its file is missing, so pre-training never
counts towards these figures.

Usage: simulation_scale.py [--fedtl build/fedtl] [--job bench/simulation_scale.toml] [--reps 3]
Prints one JSON object.
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

try:
    import tomllib  # Python 3.11+
except ImportError:  # pragma: no cover
    tomllib = None


def backbone_path(job):
    """The job's backbone file; a relative path in a job file is relative to the file."""
    if tomllib is None:
        m = re.search(r'^\s*path\s*=\s*"([^"]+)"', open(job).read(), re.M)
        path = m.group(1) if m else None
    else:
        with open(job, "rb") as f:
            path = tomllib.load(f).get("backbone", {}).get("path")
    return os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(job)), path)) if path else None


def thousand_site_job(job, out_dir):
    """The bench job at 1,000 sites x 25 labels x 2 rounds, written beside the outputs (paths
    made absolute, as a copied job file needs)."""
    text = open(job).read()
    bb = backbone_path(job)
    text = re.sub(r"^sites = \d+", "sites = 1000", text, flags=re.M)
    text = re.sub(r"^rounds = \d+", "rounds = 2", text, flags=re.M)
    text = re.sub(r"^samples_per_site = \d+", "samples_per_site = 25", text, flags=re.M)
    text = re.sub(r'^out = .*$', 'out = "%s"' % os.path.abspath(out_dir + "_1000"), text, flags=re.M)
    text = re.sub(r'^path = .*$', 'path = "%s"' % bb, text, flags=re.M)
    text += "\n[evaluation]\npersonalize_epochs = 0\n"
    os.makedirs(out_dir + "_1000", exist_ok=True)
    path = os.path.join(out_dir + "_1000", "job.toml")
    with open(path, "w") as f:
        f.write(text)
    return path


def run_once(fedtl, job, out_dir):
    with tempfile.TemporaryFile(mode="w+") as log:
        t0 = time.perf_counter()
        # --force: every rep (and every later run of the benchmark) overwrites the last one's outputs
        p = subprocess.Popen([fedtl, "simulate", "-c", job, "--out", out_dir, "--force"], stdout=subprocess.DEVNULL,
                             stderr=log)
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        log.seek(0)
        text = log.read()
    if p.returncode != 0:
        sys.stderr.write(text[-3000:])
        raise SystemExit(f"simulation_scale: fedtl simulate exited with {p.returncode}")
    # run_simulate logs "sites started and ready in X s" (older builds) or "sites connected and
    # ready in X s": the time from starting the sites until all are ready, round 1 excluded.
    m = re.search(r"sites (?:started|connected) and ready in ([0-9.]+) s", text)
    if not m:
        raise SystemExit("simulation_scale: no 'sites ... and ready in X s' line in the log")
    with open(os.path.join(out_dir, "summary.json")) as f:
        summary = json.load(f)
    rounds = [json.loads(l) for l in open(os.path.join(out_dir, "metrics.jsonl")) if l.strip()]
    sites = int(summary["sites"])
    return {
        "startup_s": float(m.group(1)),
        "startup_ms_per_site": 1000.0 * float(m.group(1)) / sites,
        "peak_rss_mb": ru.ru_maxrss / 1024.0,  # Linux: kilobytes
        "wall_s": wall,
        "cpu_user_s": ru.ru_utime,
        "cpu_sys_s": ru.ru_stime,
        "round_s_mean": statistics.mean(r["seconds"] for r in rounds) if rounds else None,
        "round_s_last": rounds[-1]["seconds"] if rounds else None,
        "sites": sites,
        "rounds": int(summary["rounds"]),
        "federated_accuracy": summary["federated_accuracy"],
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--fedtl", default="build/fedtl")
    ap.add_argument("--job", default="bench/simulation_scale.toml")
    ap.add_argument("--out", default="runs/bench/simulation_scale")
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()

    bb = backbone_path(a.job)
    if bb and not os.path.exists(bb):
        sys.stderr.write(f"simulation_scale: pre-training the backbone {bb} first (not timed)\n")
        subprocess.run([a.fedtl, "pretrain", "-c", a.job], check=True, stdout=subprocess.DEVNULL)

    runs = [run_once(a.fedtl, a.job, a.out) for _ in range(max(1, a.reps))]
    big = [run_once(a.fedtl, thousand_site_job(a.job, a.out), a.out + "_1000") for _ in range(max(1, a.reps))]
    med = lambda k: statistics.median(r[k] for r in runs)  # noqa: E731
    out = {k: med(k) for k in ("startup_ms_per_site", "peak_rss_mb", "startup_s", "wall_s", "cpu_user_s",
                               "cpu_sys_s", "round_s_mean", "federated_accuracy")}
    out.update({"sites": runs[0]["sites"], "rounds": runs[0]["rounds"], "reps": len(runs),
                "startup_ms_per_site_all": [r["startup_ms_per_site"] for r in runs],
                "peak_rss_mb_all": [r["peak_rss_mb"] for r in runs]})
    out.update({"peak_rss_mb_1000": statistics.median(r["peak_rss_mb"] for r in big),
                "startup_ms_per_site_1000": statistics.median(r["startup_ms_per_site"] for r in big),
                "round_s_1000": statistics.median(r["round_s_last"] for r in big),
                "round_s_1000_all": [r["round_s_last"] for r in big],
                "peak_rss_mb_1000_all": [r["peak_rss_mb"] for r in big]})
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
