"""The MBConv family (TF-NAS): the search network and the derived ``MBConvNet`` (``supernet.py``), the
evaluation network with dropout (``network.py``); an architecture is the derived network's config (JSON).

Training family ``mbconv``: AberHu/TF-NAS ``train_eval.py``: 250 epochs, batch 512, lr 0.2 cosine with 5 linear
warm-up epochs (only for batches above 256, as theirs), wd 1e-5, label smoothing 0.1, dropout 0.2, grad clip 5.
Deviation: TF-NAS's drop-connect (0.2) is not built.
"""

import json

from ..family import SpaceFamily, register_family
from .network import MBConvEvalNet
from .supernet import TFNAS_STAGES, BlockShape, MBConvNet, MBConvSpace, block_shapes, build_head, build_stem


class MBConvFamily(SpaceFamily):
    name = "mbconv"
    spaces = (MBConvSpace,)
    train_defaults = {
        "mbconv": dict(epochs=250, batch_size=512, lr=0.2, lr_schedule="cosine", weight_decay=1e-5, warmup_epochs=5,
                       label_smoothing=0.1, dropout=0.2, C=0, layers=0),
    }  # fmt: skip
    sized = False  # the derived config sets every width
    label = "TF-NAS network"

    def from_json(self, data) -> dict | None:
        if isinstance(data, dict) and isinstance(data.get("config"), dict) and "blocks" in data["config"]:
            return data["config"]  # a TF-NAS genotype.json (TFNASArch.to_json)
        return data if isinstance(data, dict) and "blocks" in data else None

    def describe(self, config: dict) -> str:
        return json.dumps(config)

    def adjust_defaults(self, train_family: str, values: dict, sources: dict) -> None:
        if sources["warmup_epochs"] == "authors" and values["batch_size"] <= 256:
            values["warmup_epochs"] = 0  # TF-NAS warms up only batches above 256

    def build_network(self, config: dict, train_config, in_channels: int, num_classes: int):
        return MBConvEvalNet({**config, "in_channels": in_channels, "num_classes": num_classes}, train_config.dropout)


register_family(MBConvFamily())

__all__ = ["TFNAS_STAGES", "BlockShape", "MBConvEvalNet", "MBConvFamily", "MBConvNet", "MBConvSpace",
           "block_shapes", "build_head", "build_stem"]  # fmt: skip
