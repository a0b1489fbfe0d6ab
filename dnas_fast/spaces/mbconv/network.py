"""The MBConv family's evaluation network: the TF-NAS derived network (``MBConvNet``) with the dropout before
the classifier of AberHu/TF-NAS ``models/model_eval.py``. Deviation: TF-NAS's drop-connect inside blocks is not
built."""

import torch.nn.functional as F

from .supernet import MBConvNet


class MBConvEvalNet(MBConvNet):
    """The TF-NAS derived network with dropout ``dropout`` before the classifier (authors: 0.2)."""

    def __init__(self, config: dict, dropout: float = 0.0):
        super().__init__(config)
        self.dropout = dropout

    def forward(self, x):
        h = self.head[:-1](self.blocks(self.stem(x)))
        return self.head[-1](F.dropout(h, self.dropout, self.training))
