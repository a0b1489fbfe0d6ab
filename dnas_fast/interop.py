"""Move searches between the authors' DARTS code (quark0/darts ``model_search.Network``) and dnas_fast, and load
their trained evaluation networks (``model.NetworkCIFAR`` / ``NetworkImageNet``) into ours.

The DARTS space has the authors' module layout, so their ``state_dict`` keys are ours; their alphas
(``alphas_normal``, ``alphas_reduce``, each ``Tensor[14, 8]``, not part of their state_dict) become the
``darts`` strategy's ``alphas.normal`` / ``alphas.reduce``.
"""

import torch

from .ops import DARTS_OPS
from .spaces import DartsSpace
from .strategies import Strategy

ALPHA_KEYS = ("alphas_normal", "alphas_reduce")


def load_authors_state(space: DartsSpace, strategy: Strategy, state_dict: dict, alphas=None) -> None:
    """Load an authors' search-network state_dict (and alphas) into ``space`` and ``strategy``.

    alphas: ``(alphas_normal, alphas_reduce)``; or leave None when ``state_dict`` carries them under
    ``alphas_normal`` / ``alphas_reduce`` (as many forks save them).
    """
    if not isinstance(space, DartsSpace):
        raise TypeError(f"the authors' network maps onto the 'darts' space, got {type(space).__name__}")
    if list(space.config["op_names"]) != DARTS_OPS or space.config["partial_channels"] != 1:
        raise ValueError("the authors' network uses the 8 DARTS primitives without partial channels")
    state = dict(state_dict)
    if alphas is None:
        missing = [k for k in ALPHA_KEYS if k not in state]
        if missing:
            raise ValueError(f"no alphas given and the state_dict lacks {missing}")
        alphas = tuple(state.pop(k) for k in ALPHA_KEYS)
    else:
        for k in ALPHA_KEYS:
            state.pop(k, None)
    ours = space.state_dict()
    extra = sorted(set(state) - set(ours))
    missing = sorted(k for k in set(ours) - set(state) if ".aux." not in k)
    if extra or missing:
        raise ValueError(
            f"state_dict does not match this DARTS space (check C, layers, steps): "
            f"unexpected keys {extra[:5]}, missing keys {missing[:5]}"
        )
    try:
        space.load_state_dict(state, strict=False)
    except RuntimeError as err:  # same keys, other shapes: another C or op width
        raise ValueError(f"state_dict does not match this DARTS space (check C, layers, steps): {err}") from err
    with torch.no_grad():
        for group, alpha in zip(("normal", "reduce"), alphas):
            target = strategy.alphas[group]
            if tuple(alpha.shape) != tuple(target.shape):
                raise ValueError(f"alphas_{group} must have shape {list(target.shape)}, got {list(alpha.shape)}")
            target.copy_(alpha)


def export_authors_state(space: DartsSpace, strategy: Strategy) -> dict:
    """The authors' state_dict plus ``alphas_normal`` / ``alphas_reduce`` (load the alphas into their
    ``model.alphas_normal.data`` by hand: their Network does not keep them in the state_dict)."""
    state = {k: v.clone() for k, v in space.state_dict().items() if ".aux." not in k}
    for key, group in zip(ALPHA_KEYS, ("normal", "reduce")):
        state[key] = strategy.alphas[group].detach().clone()
    return state


def load_authors_eval_state(net, state_dict: dict) -> None:
    """Load an authors' evaluation checkpoint (``weights.pt`` / ``model.pt``: a ``NetworkCIFAR`` or
    ``NetworkImageNet`` state_dict) into our network of the same genotype, C, layers and auxiliary setting.

    Accepts a ``DataParallel`` ``module.`` prefix (their ImageNet script saves one), an auxiliary head our
    network does not build (dropped), and checkpoints from PyTorch < 0.4 without ``num_batches_tracked``.
    """
    state = {k.removeprefix("module."): v for k, v in state_dict.items()}
    ours = net.state_dict()
    if not any(k.startswith("auxiliary_head.") for k in ours):
        state = {k: v for k, v in state.items() if not k.startswith("auxiliary_head.")}
    extra = sorted(set(state) - set(ours))
    missing = sorted(k for k in set(ours) - set(state) if not k.endswith("num_batches_tracked"))
    if extra or missing:
        raise ValueError(
            f"state_dict does not match this evaluation network (check genotype, C, layers, auxiliary): "
            f"unexpected keys {extra[:5]}, missing keys {missing[:5]}"
        )
    try:
        net.load_state_dict(state, strict=False)
    except RuntimeError as err:  # same keys, other shapes
        raise ValueError(f"state_dict does not match this evaluation network (check C and classes): {err}") from err
