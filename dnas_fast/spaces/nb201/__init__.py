"""The NAS-Bench-201 family: the search network (``supernet.py``), ``TinyNetwork`` for training
(``network.py``) and arch strings (``genotype.py``).

Training family ``nb201``: the NAS-Bench-201 paper's training setup (Dong & Yang, ICLR 2020, Sec. 2.4): C=16,
N=5, 200 epochs, batch 256, SGD 0.1 nesterov cosine to 0, wd 5e-4, no clipping.
"""

from ..family import SpaceFamily, register_family
from .genotype import nb201_arch_string, parse_nb201_arch_string
from .network import NB201Network
from .supernet import NB201Space, ResNetBasicBlock, SearchCell


class NB201Family(SpaceFamily):
    name = "nb201"
    spaces = (NB201Space,)
    train_defaults = {
        "nb201": dict(epochs=200, batch_size=256, lr=0.1, lr_schedule="cosine", nesterov=True, weight_decay=5e-4,
                      grad_clip=0.0, C=16, layers=5),
    }  # fmt: skip
    label = "NAS-Bench-201 arch string"
    text_forms = ("an NB201 arch string (|op~0|+...)",)

    def from_text(self, text: str) -> str | None:
        if not text.startswith("|"):
            return None
        parse_nb201_arch_string(text)
        return text

    def from_json(self, data) -> str | None:
        return self.from_text(data) if isinstance(data, str) else None

    def build_network(self, arch: str, config, in_channels: int, num_classes: int):
        return NB201Network(parse_nb201_arch_string(arch), config.C, config.layers, num_classes, in_channels)


register_family(NB201Family())

__all__ = ["NB201Family", "NB201Network", "NB201Space", "ResNetBasicBlock", "SearchCell", "nb201_arch_string",
           "parse_nb201_arch_string"]  # fmt: skip
