"""Evaluation networks: the discrete architecture a search derived, built to be trained from scratch. Each lives
with its search space's family (``spaces/<family>/network.py``) and is re-exported here; this module holds what
every network shares: counting parameters and multiply-accumulates."""

import torch
from torch import nn

from .spaces.darts.network import (
    AuxiliaryHeadCIFAR,
    AuxiliaryHeadImageNet,
    EvalCell,
    NetworkCIFAR,
    NetworkImageNet,
)
from .spaces.mbconv.network import MBConvEvalNet
from .spaces.nb201.network import InferCell, NB201Network


def count_parameters_mb(model: nn.Module) -> float:
    """Parameters in millions without the auxiliary head (quark0/darts ``utils.count_parameters_in_MB``)."""
    return sum(p.numel() for name, p in model.named_parameters() if "auxiliary" not in name) / 1e6


def count_flops(model: nn.Module, input_shape) -> dict:
    """Multiply-accumulates (convs and linears) in millions per image, and parameters in millions."""
    macs = []

    def hook(m, inp, out):
        if isinstance(m, nn.Conv2d):
            macs.append(out.numel() / out.shape[0] * m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1])
        elif isinstance(m, nn.Linear):
            macs.append(m.in_features * m.out_features)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:  # the global RNG stays untouched: counting must not change a run's draws
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            model.eval()(torch.zeros(*input_shape, device=next(model.parameters()).device))
    finally:
        for h in handles:
            h.remove()
    return {"mflops": sum(macs) / 1e6, "mparams": sum(p.numel() for p in model.parameters()) / 1e6}


def count_macs_m(model: nn.Module, input_shape) -> float:
    """Multiply-accumulates of one inference forward (conv and linear layers), in millions per image; the
    auxiliary head does not run in eval mode, so it is not counted (as the authors' mult-adds)."""
    was_training = model.training
    try:
        return count_flops(model, input_shape)["mflops"]
    finally:
        model.train(was_training)


__all__ = [
    "AuxiliaryHeadCIFAR", "AuxiliaryHeadImageNet", "EvalCell", "InferCell", "MBConvEvalNet", "NB201Network",
    "NetworkCIFAR", "NetworkImageNet", "count_flops", "count_macs_m", "count_parameters_mb",
]  # fmt: skip
