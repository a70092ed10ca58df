"""Multiply-accumulates of a network for one (1, 1, size, size) grey input: convolutions and linear layers."""
from __future__ import annotations

import torch
import torch.nn as nn


def count_macs(net: nn.Module, size: int) -> int:
    total = 0

    def hook(module: nn.Module, inputs, output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            per_output = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
            total += output.numel() // output.shape[0] * per_output
        elif isinstance(module, nn.Linear):
            total += module.in_features * module.out_features

    handles = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = net.training
    net.eval()
    with torch.no_grad():
        net(torch.zeros(1, 1, size, size))
    net.train(was_training)
    for handle in handles:
        handle.remove()
    return total
