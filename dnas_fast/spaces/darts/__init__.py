"""The DARTS family: the cell search network (``supernet.py``, with the R-DARTS presets of ``rdarts.py``), the
CIFAR and ImageNet evaluation networks (``network.py``) and the genotype codec (``genotype.py``).

Training families and their authors' settings (the rest as ``dnas_fast.train.COMMON_DEFAULTS``):

* ``cifar``: quark0/darts ``cnn/train.py`` as run for the paper (``--auxiliary --cutout``): 20 cells, C=36,
  600 epochs, batch 96, SGD 0.025 momentum 0.9 cosine to 0, wd 3e-4, auxiliary weight 0.4, drop path 0.2
  scaled linearly by epoch, cutout 16, grad clip 5.
* ``imagenet``: quark0/darts ``cnn/train_imagenet.py``: 14 cells, C=48, 250 epochs, batch 128, lr 0.1 decayed
  by 0.97 every epoch, wd 3e-5, label smoothing 0.1, auxiliary 0.4, no drop path, grad clip 5. Deviation: it
  trains with the search loader's RandomResizedCrop + flip, without the authors' ColorJitter(0.4, 0.4, 0.4, 0.2).
"""

import json

from ..family import SpaceFamily, register_family
from .genotype import NAMED_GENOTYPES, Genotype, genotype_from_json, genotype_from_string, genotype_to_json
from .network import NetworkCIFAR, NetworkImageNet
from .rdarts import DartsS1, DartsS2, DartsS3, DartsS4
from .supernet import DartsSpace


class DartsFamily(SpaceFamily):
    name = "darts"
    spaces = (DartsSpace,)  # the R-DARTS presets are DartsSpaces
    train_defaults = {
        "cifar": dict(epochs=600, batch_size=96, lr=0.025, lr_schedule="cosine", weight_decay=3e-4, auxiliary=True,
                      drop_path_prob=0.2, cutout_length=16, C=36, layers=20),
        "imagenet": dict(epochs=250, batch_size=128, lr=0.1, lr_schedule="step", weight_decay=3e-5,
                         label_smoothing=0.1, auxiliary=True, C=48, layers=14),
    }  # fmt: skip
    label = "DARTS genotype"
    text_forms = ("a Genotype(...) string", f"a known name ({', '.join(sorted(NAMED_GENOTYPES))})")

    def default_train_family(self, data: str) -> str:
        return "imagenet" if data == "imagefolder" else "cifar"

    def from_text(self, text: str) -> Genotype | None:
        if text in NAMED_GENOTYPES:
            return NAMED_GENOTYPES[text]
        if text.startswith(("Genotype(", "EdgeAllGenotype(")):
            return genotype_from_string(text)
        return None

    def from_json(self, data) -> Genotype | None:
        return genotype_from_json(json.dumps(data)) if isinstance(data, dict) and "normal" in data else None

    def to_json(self, genotype: Genotype):
        return json.loads(genotype_to_json(genotype))

    def describe(self, genotype: Genotype) -> str:
        return repr(genotype)

    def check_data(self, config, image_size: int) -> None:
        if not config.auxiliary:
            return
        # the head pools 5x5 (stride 3 / 2) the map after the second reduction, then needs a 2x2 map
        cifar = config.family == "cifar"
        side = image_size // (4 if cifar else 32)
        if (side - 5) // (3 if cifar else 2) + 1 < 2:
            raise ValueError(
                f"the auxiliary head needs images of at least {32 if cifar else 224}px, got {image_size}px: "
                f"pass --auxiliary false or data_args image_size"
            )

    def build_network(self, genotype: Genotype, config, in_channels: int, num_classes: int):
        network = NetworkCIFAR if config.family == "cifar" else NetworkImageNet
        return network(config.C, num_classes, config.layers, config.auxiliary, genotype, in_channels)


register_family(DartsFamily())

__all__ = ["DartsFamily", "DartsS1", "DartsS2", "DartsS3", "DartsS4", "DartsSpace", "Genotype", "NetworkCIFAR",
           "NetworkImageNet"]  # fmt: skip
