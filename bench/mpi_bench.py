#!/usr/bin/python3
"""mpi: fedtl's cluster mode against its in-process twin and against raw MPI.

  round_time_vs_inproc   mean round time of the demo job (examples/hospitals/job.toml, 8 sites)
                         under `mpirun -np 9 fedtl mpi` / the same under `fedtl simulate`, both
                         measured in this run, alternated, medians over --reps (target <= 1.2).
                         Round times come from metrics.jsonl ("seconds" per round); baselines are
                         switched off in a copy of the job (they do not touch round times).
  site_allreduce_vs_raw  a multi-rank site's gradient averaging throughput / raw MPI_Allreduce of
                         the same bytes (bench_mpi_allreduce under mpirun -np 3: one site of two
                         ranks), the smaller of its buffer sizes (target >= 0.9).

Usage: mpi_bench.py [--fedtl build/fedtl] [--allreduce build/bench/bench_mpi_allreduce]
                    [--job examples/hospitals/job.toml] [--reps 3] [--rounds R]
Prints one JSON object: {"mpi": {...}}. The demo backbone is pre-trained first when missing.
"""
import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def mpirun_cmd(np):
    cmd = [shutil.which("mpirun") or "mpirun", "--oversubscribe"]
    if os.geteuid() == 0:
        cmd.append("--allow-run-as-root")
    return cmd + ["-np", str(np)]


def job_copy(job, tmp):
    """The job with baselines off and its backbone path made absolute (a relative one is relative
    to the job file), so the copy runs from anywhere."""
    text = open(job).read()
    text = re.sub(r"(?m)^(\s*enabled\s*=\s*)true", r"\1false", text)
    m = re.search(r'(?m)^\s*path\s*=\s*"([^"]+)"', text)
    backbone = m.group(1) if m else None
    if backbone and not os.path.isabs(backbone):
        backbone = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(job)), backbone))
        text = text[: m.start(1)] + backbone + text[m.end(1):]
    sites = int(re.search(r"(?m)^\s*sites\s*=\s*(\d+)", text).group(1))
    path = os.path.join(tmp, "job.toml")
    open(path, "w").write(text)
    return path, backbone, sites


def run(cmd, out_dir):
    t0 = time.perf_counter()
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        sys.stderr.write(p.stderr[-4000:])
        raise SystemExit(f"mpi_bench: {' '.join(cmd)} exited with {p.returncode}")
    rounds = [json.loads(l) for l in open(os.path.join(out_dir, "metrics.jsonl")) if l.strip()]
    summary = json.load(open(os.path.join(out_dir, "summary.json")))
    secs = [r["seconds"] for r in rounds]
    return {"round_s": statistics.mean(secs), "round_s_after_first": statistics.mean(secs[1:]) if len(secs) > 1 else secs[0],
            "wall_s": wall, "sha": summary["model_sha256"]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--fedtl", default=os.path.join(ROOT, "build", "fedtl"))
    ap.add_argument("--allreduce", default=os.path.join(ROOT, "build", "bench", "bench_mpi_allreduce"))
    ap.add_argument("--job", default=os.path.join(ROOT, "examples", "hospitals", "job.toml"))
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=0, help="override the job's rounds (0: the job's)")
    a = ap.parse_args()
    res = {}
    with tempfile.TemporaryDirectory() as tmp:
        job, backbone, sites = job_copy(a.job, tmp)
        if backbone and not os.path.exists(backbone):
            subprocess.run([a.fedtl, "pretrain", "-c", job], check=True, stdout=subprocess.DEVNULL)
        extra = ["--rounds", str(a.rounds)] if a.rounds else []
        sim, mpi = [], []
        for rep in range(a.reps):
            for mode in (("sim", "mpi") if rep % 2 == 0 else ("mpi", "sim")):
                out = os.path.join(tmp, f"{mode}{rep}")
                if mode == "sim":
                    sim.append(run([a.fedtl, "simulate", "-c", job, "--out", out] + extra, out))
                else:
                    mpi.append(run(mpirun_cmd(1 + sites) + [a.fedtl, "mpi", "-c", job, "--out", out,
                                                              "--ranks-per-site", "1"] + extra, out))
        med = lambda runs, k: statistics.median(r[k] for r in runs)
        res["round_time_vs_inproc"] = med(mpi, "round_s") / med(sim, "round_s")
        res["round_time_vs_inproc_after_first_round"] = med(mpi, "round_s_after_first") / med(sim, "round_s_after_first")
        res["mpi_round_seconds"] = med(mpi, "round_s")
        res["inproc_round_seconds"] = med(sim, "round_s")
        res["mpi_wall_seconds"] = med(mpi, "wall_s")
        res["inproc_wall_seconds"] = med(sim, "wall_s")
        res["mpi_ranks"] = 1 + sites
        res["same_model_sha256"] = 1 if len({r["sha"] for r in sim + mpi}) == 1 else 0
        res["reps"] = a.reps
    p = subprocess.run(mpirun_cmd(3) + [a.allreduce, "--reps", "15"], stdout=subprocess.PIPE, text=True, check=True)
    ar = json.loads(p.stdout.strip().splitlines()[-1])
    res["site_allreduce_vs_raw"] = ar["site_allreduce_vs_raw"]
    for c in ar["cases"]:
        tag = f"{c['bytes'] / 1e6:.1f}MB"
        res[f"site_allreduce_vs_raw_{tag}"] = c["ratio"]
        res[f"raw_allreduce_ms_{tag}"] = c["raw_ms_per_call"]
        res[f"site_average_ms_{tag}"] = c["averager_ms_per_call"]
    res["cpu_cores"] = os.cpu_count()
    print(json.dumps({"mpi": res}))


if __name__ == "__main__":
    main()
