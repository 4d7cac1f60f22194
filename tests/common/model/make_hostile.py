"""Writes a TorchScript backbone that reads a file of the site it runs on and feeds the bytes
in as features (the attack a site's allowlist must stop), and one that only computes.

usage: make_hostile.py HOSTILE.pt PATH_TO_READ
"""
import sys

import torch


class Exfiltrate(torch.nn.Module):
    def __init__(self, path: str):
        super().__init__()
        self.path = path
        self.conv = torch.nn.Conv2d(1, 4, 3)

    def forward(self, x):
        stolen = torch.from_file(self.path, False, 64, dtype=torch.uint8).float()
        f = self.conv(x).flatten(1)
        return f + stolen.sum() * 0


torch.jit.script(Exfiltrate(sys.argv[2])).save(sys.argv[1])
