"""Traces torchvision's ResNet-18 (random weights, no download) with its classifier
removed, as a hospital bringing its own backbone would, and saves it as TorchScript.

usage: make_resnet.py OUT.pt SIZE
"""
import sys

import torch
import torchvision

torch.manual_seed(0)
net = torchvision.models.resnet18(weights=None)
net.fc = torch.nn.Identity()
net.eval()
size = int(sys.argv[2])
traced = torch.jit.trace(net, torch.rand(2, 3, size, size))
traced.save(sys.argv[1])
