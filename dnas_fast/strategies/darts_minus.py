"""DARTS- (Chu et al., "DARTS-: Robustly Stepping out of Performance Collapse Without Indicators", ICLR 2021).

The paper changes one thing: an auxiliary skip connection on every edge (identity; FactorizedReduce on stride-2
edges), added outside the softmax with weight beta decayed 1 -> 0 (Sec. 3.2, eq. 4; default linear decay,
Meituan-AutoML/DARTS- ``--auxiliary_skip --decay linear``). That is the base class option ``aux_skip``, so it
composes with any strategy (``{"aux_skip": "linear"}`` on ``pc-darts``); this file only registers
``darts-minus`` = DARTS with the option on by default.

Follows Meituan-AutoML/DARTS- ``src/search/train_search.py`` (the DARTS loop) and ``src/utils.py``
``DecayScheduler``: beta decays over a fixed 50 epochs (``T_max = T_stop = 50``, ``src/search/args.py``) whatever
the run's length, so a 2-epoch run goes 1 -> 0.98 (``skip_beta_epochs=50``; ``None`` decays over the run's own
epochs instead). Remaining deviation: the ``step`` schedule is ours (theirs: ``cosine``, ``slow_cosine``,
``linear``); ``slow_cosine`` is not provided.
"""

from .base import register_strategy
from .darts import Darts


@register_strategy
class DartsMinus(Darts):
    name = "darts-minus"

    def __init__(self, aux_skip: str = "linear", skip_beta: float = 1.0, **kwargs):
        if aux_skip is None:
            raise ValueError("darts-minus needs an aux_skip schedule (linear, cosine or step); use 'darts' without it")
        super().__init__(aux_skip=aux_skip, skip_beta=skip_beta, **kwargs)
