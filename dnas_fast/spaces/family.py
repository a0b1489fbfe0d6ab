"""A search space's family: one kind of architecture from search to training, in one folder
(``spaces/<name>/``) and one registry entry. The family names its supernets, builds the evaluation network of a
derived architecture, reads and writes that architecture (its genotype codec) and carries the authors' training
settings, so ``dnas-fast train`` asks the family instead of branching on names.

Example::

    family = space_family("nb201")
    arch = family.from_text("|nor_conv_3x3~0|+|skip_connect~0|none~1|+|nor_conv_1x1~0|none~1|avg_pool_3x3~2|")
    net = family.build_network(arch, config, in_channels=3, num_classes=10)  # config: a resolved TrainConfig
"""

from torch import nn

from ..registry import Registry


class SpaceFamily:
    """Subclasses set:

    * ``name``: the architecture kind a training run records (``darts``, ``nb201``, ``mbconv``).
    * ``spaces``: the supernet classes whose ``derive`` gives this kind (subclasses included).
    * ``train_defaults``: per training family (``cifar``, ``imagenet``, ...), the authors' settings that differ
      from the common SGD baseline of :mod:`dnas_fast.train` (``COMMON_DEFAULTS``); every one overridable.
    * ``sized``: the training settings ``C`` and ``layers`` size the network (so both must be >= 1).
    * ``label`` (``"DARTS genotype"``) and ``text_forms`` (``"a Genotype(...) string"``), for messages.

    and implement the codec (:meth:`from_text`, :meth:`from_json`, :meth:`to_json`, :meth:`describe`) and
    :meth:`build_network`. An architecture value is whatever the family's codec reads (a ``Genotype``, an arch
    string, a network config); nothing outside the family looks inside it.
    """

    name: str = ""
    spaces: tuple[type, ...] = ()
    train_defaults: dict[str, dict] = {}
    sized: bool = True
    label: str = ""
    text_forms: tuple[str, ...] = ()

    def default_train_family(self, data: str) -> str:
        """The training family of this kind on data set ``data`` (default: the first one)."""
        return next(iter(self.train_defaults))

    def from_text(self, text: str):
        """The architecture written in ``text`` (a command-line argument), or None if not one of this family's."""
        return None

    def from_json(self, data):
        """The architecture in parsed JSON ``data`` (a ``genotype.json``), or None if not one of this family's."""
        return None

    def to_json(self, value):
        """``value`` as JSON-ready data that :meth:`from_json` reads back."""
        return value

    def describe(self, value) -> str:
        """One line for logs."""
        return str(value)

    def adjust_defaults(self, train_family: str, values: dict, sources: dict) -> None:
        """Change the filled settings ``values`` in place where the authors' value depends on another setting
        (``sources[key]``: ``"user"`` or ``"authors"``)."""

    def check_data(self, config, image_size: int) -> None:
        """Raise ValueError if the network of ``config`` (a resolved TrainConfig) cannot take ``image_size``."""

    def build_network(self, value, config, in_channels: int, num_classes: int) -> nn.Module:
        """The evaluation network of architecture ``value`` under ``config`` (a resolved TrainConfig)."""
        raise NotImplementedError


_FAMILIES: Registry[SpaceFamily] = Registry("space family", "space families")


def register_family(family: SpaceFamily) -> SpaceFamily:
    """Register ``family`` by its name; a training family name may belong to one family only."""
    taken = {t for other in _FAMILIES for t in other.train_defaults}
    clash = sorted(taken & set(family.train_defaults))
    if clash:
        raise ValueError(f"training families {clash} of space family {family.name!r} are already registered")
    return _FAMILIES.add(family.name, family)


def space_family(name: str) -> SpaceFamily:
    """The family of architecture kind ``name``; ValueError listing the known ones."""
    return _FAMILIES[name]


def space_families() -> list[SpaceFamily]:
    return list(_FAMILIES)


def train_families() -> list[str]:
    """Every training family name, in registration order."""
    return [t for family in _FAMILIES for t in family.train_defaults]


def family_of_train(train_family: str) -> SpaceFamily:
    """The space family that trains as ``train_family``; ValueError listing the known names."""
    for family in _FAMILIES:
        if train_family in family.train_defaults:
            return family
    raise ValueError(f"unknown family {train_family!r}; known: {tuple(train_families())}")
