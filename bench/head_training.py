#!/usr/bin/python3
"""Head training on cached features in Python PyTorch: the baseline for bench/head_training.cc.

Run with Debian's python3 (python3-torch). Same configuration as the C++ side: 5 classes,
batch 32, SGD lr 0.05, 1 thread, EPOCHS epochs per repetition, a fresh optimiser per
repetition, median of REPS repetitions. Each step does what fedtl's TransferModel::train does:
gather the shuffled batch, forward, cross-entropy, zero_grad, backward, step, and read back the
loss and the number of correct predictions.

  linear512:  nn.Linear(512, 5) on 8192 x 512 features. The features are the same bytes as the
              C++ side's (a hash of the element index), normalised with mean 0.5, std 0.25.
  demo_head:  nn.Linear(3136, 128), ReLU, nn.Linear(128, 5) on 2048 x 3136 features (random,
              non-negative like the built-in CNN's block2 outputs, fixed seed).

Prints one JSON object: {case: {samples_per_s, seconds_median, seconds_all, ...}}.
"""
import argparse
import json
import os
import statistics
import sys
import time

# One BLAS thread as well as one intra-op thread (fedtl's set_torch_threads(1) does both).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

CLASSES, BATCH, LR = 5, 32, 0.05


def hash_labels(n):
    i = torch.arange(n, dtype=torch.int64)
    return ((i * 40503 + 17) & 0xFFFF) % CLASSES


def linear512_data():
    n, d = 8192, 512
    j = torch.arange(n * d, dtype=torch.int64)
    pixels = ((j * 2654435761) & 0xFFFFFFFF) >> 24
    x = ((pixels.to(torch.float32) / 255.0) - 0.5) / 0.25
    return x.view(n, d).contiguous(), hash_labels(n), torch.nn.Linear(d, CLASSES)


def demo_head_data():
    n = 2048
    g = torch.Generator().manual_seed(7)
    x = torch.relu(torch.randn(n, 64 * 7 * 7, generator=g))
    model = torch.nn.Sequential(torch.nn.Linear(64 * 7 * 7, 128), torch.nn.ReLU(), torch.nn.Linear(128, CLASSES))
    return x, hash_labels(n), model


def train(model, x, y, epochs, seed):
    optim = torch.optim.SGD(model.parameters(), lr=LR)
    n = x.shape[0]
    g = torch.Generator().manual_seed(seed)
    steps, loss_mean = 0, 0.0
    for _ in range(epochs):
        perm = torch.randperm(n, generator=g)
        loss_sum, correct = 0.0, 0
        for s in range(0, n, BATCH):
            idx = perm[s:s + BATCH]
            xb = x.index_select(0, idx)
            yb = y.index_select(0, idx)
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            optim.zero_grad()
            loss.backward()
            optim.step()
            steps += 1
            loss_sum += loss.item() * idx.shape[0]
            correct += logits.argmax(1).eq(yb).sum().item()
        loss_mean = loss_sum / n
    return steps, loss_mean


def run_case(make, epochs, reps):
    x, y, model = make()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    train(model, x, y, epochs, 0)  # warm-up
    secs = []
    for r in range(reps):
        model.load_state_dict(start)
        t0 = time.perf_counter()
        steps, loss = train(model, x, y, epochs, r + 1)
        secs.append(time.perf_counter() - t0)
    samples = x.shape[0] * epochs
    med = statistics.median(secs)
    return {"samples_per_s": samples / med, "seconds_median": med, "seconds_all": secs,
            "samples_per_rep": samples, "n": x.shape[0], "epochs": epochs, "steps_per_rep": steps,
            "final_train_loss": loss, "torch": torch.__version__}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--case", default="all", choices=["all", "linear512", "demo_head"])
    a = ap.parse_args()
    torch.set_num_threads(1)
    out = {}
    if a.case in ("all", "linear512"):
        out["linear512"] = run_case(linear512_data, 5, max(1, a.reps))
    if a.case in ("all", "demo_head"):
        out["demo_head"] = run_case(demo_head_data, 5, max(1, a.reps))
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
