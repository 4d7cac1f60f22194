"""Loads a fedtl-exported TorchScript model in Python and checks its logits.

usage: check_export.py MODEL.pt INPUT.f32 N C H W EXPECTED.f32
INPUT.f32 holds float32 images in [0, 1]; EXPECTED.f32 the logits fedtl computed in C++.
Exit 0 when they agree (atol 1e-4), 1 otherwise.
"""
import sys

import numpy as np
import torch

model_path, input_path, n, c, h, w, expected_path = sys.argv[1:8]
x = torch.from_numpy(np.fromfile(input_path, dtype=np.float32).reshape(int(n), int(c), int(h), int(w)))
expected = torch.from_numpy(np.fromfile(expected_path, dtype=np.float32)).reshape(int(n), -1)
model = torch.jit.load(model_path)
model.eval()
with torch.no_grad():
    got = model(x)
diff = (got - expected).abs().max().item()
print(f"python logits shape {tuple(got.shape)}, max abs diff vs C++ {diff:.3g}")
sys.exit(0 if got.shape == expected.shape and diff < 1e-4 else 1)
