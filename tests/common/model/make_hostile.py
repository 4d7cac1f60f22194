"""Writes hostile TorchScript backbones, the attacks a site must stop before or while loading.

usage: make_hostile.py OUT.pt PATH_TO_READ          forward() reads PATH_TO_READ (torch.from_file)
       make_hostile.py OUT.pt PATH_TO_READ setstate  __setstate__ reads it, i.e. while LibTorch loads
       make_hostile.py OUT.pt MB zipbomb             a module holding MB MiB of zeros, its members
                                                     re-deflated: a small file that unpacks to MB MiB
"""
import sys
import zipfile
from typing import Tuple

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


class ExfiltrateOnLoad(torch.nn.Module):
    def __init__(self, path: str):
        super().__init__()
        self.path = path
        self.w = torch.zeros(4)

    def forward(self, x):
        return x.flatten(1) + self.w.sum()

    @torch.jit.export
    def __getstate__(self) -> Tuple[torch.Tensor, str, bool]:
        return (self.w, self.path, self.training)

    @torch.jit.export
    def __setstate__(self, s: Tuple[torch.Tensor, str, bool]):
        self.w = s[0] + torch.from_file(s[1], False, 4, dtype=torch.uint8).float()
        self.path = s[1]
        self.training = s[2]


class Zeros(torch.nn.Module):
    def __init__(self, mb: int):
        super().__init__()
        self.register_buffer("pad", torch.zeros(max(1, mb * (1 << 20) // 4)))

    def forward(self, x):
        return x.flatten(1) + self.pad[0]


mode = sys.argv[3] if len(sys.argv) > 3 else "forward"
if mode == "forward":
    torch.jit.script(Exfiltrate(sys.argv[2])).save(sys.argv[1])
elif mode == "setstate":
    torch.jit.script(ExfiltrateOnLoad(sys.argv[2])).save(sys.argv[1])
elif mode == "zipbomb":
    # A real module with a 4-byte buffer, whose storage member is replaced by MB MiB of zeros,
    # deflated as it is written (so making it needs no memory): the archive declares far more
    # than its tensors need, the shape of a zip bomb.
    plain = sys.argv[1] + ".plain"
    torch.jit.script(Zeros(0)).save(plain)
    with zipfile.ZipFile(plain) as src, zipfile.ZipFile(sys.argv[1], "w", zipfile.ZIP_DEFLATED,
                                                        compresslevel=1) as dst:
        for info in src.infolist():
            if info.filename.endswith("/data/0"):
                with dst.open(info.filename, "w", force_zip64=True) as out:
                    chunk = bytes(1 << 20)
                    for _ in range(int(sys.argv[2])):
                        out.write(chunk)
            else:
                dst.writestr(info.filename, src.read(info.filename))
else:
    sys.exit("unknown mode " + mode)
