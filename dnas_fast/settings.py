"""One validation of every setting, wherever it comes from (CLI, a TOML/JSON config, a checkpoint's stored config,
the Python API): a config dataclass field's type comes from its annotation and its range from its ``setting``
rule; ``--space-args`` / ``--strategy-args`` / ``--data-args`` are checked against the signature of what they build.
Every failure is one ``ValueError`` line naming the setting, the value and what is allowed.

Example::

    @dataclass
    class Config:
        epochs: int | None = setting(None, at_least(1))

    check_fields(Config(epochs=0))  # ValueError: epochs must be >= 1, got 0
"""

import dataclasses
import inspect
import math
import os
import types
import typing
from collections.abc import Callable

# Nodes (values, counting every reference) a JSON-like setting may hold: a stored config is read from a file,
# and a self-sharing nest of lists expands exponentially in ``dataclasses.asdict`` and ``json.dumps``.
MAX_SETTING_NODES = 10_000
MAX_SETTING_DEPTH = 32


def setting(default=None, check: Callable | None = None, *, factory=None):
    """A dataclass field with a range rule ``check(name, value)``, applied when the value is not None."""
    metadata = {"check": check} if check else {}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def from_mapping(cls, values, what: str):
    """``cls(**values)``, validated: ``values`` must be a mapping of ``cls``'s field names (``what`` names the
    config in errors: ``search``, ``train``)."""
    if not isinstance(values, dict):
        raise ValueError(f"a {what} config must be a mapping of settings, got {type(values).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown {what} setting(s) {unknown}; known: {sorted(known)}")
    config = cls(**values)
    config.validate()
    return config


def at_least(low, *, above=False):
    def check(name, value):
        if value < low or (above and value == low):
            raise ValueError(f"{name} must be {'>' if above else '>='} {low}, got {value!r}")

    return check


def below(high, low=0):
    """``low <= value < high``."""

    def check(name, value):
        if not low <= value < high:
            raise ValueError(f"{name} must lie in [{low}, {high}), got {value!r}")

    return check


def one_of(choices):
    def check(name, value):
        if value not in choices:
            raise ValueError(f"{name} must be one of {sorted(choices)}, got {value!r}")

    return check


def device_rule(name, value):
    """``auto`` or a name ``torch.device`` parses (``cpu``, ``cuda``, ``cuda:1``)."""
    import torch

    if value != "auto":
        try:
            torch.device(value)
        except RuntimeError as err:
            raise ValueError(f"{name} must be auto, cpu, cuda or cuda:N, got {value!r}") from err


def device_memory_bytes(device) -> int:
    """All the memory of ``device`` (a torch.device): the GPU's, or the machine's RAM."""
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_fits(what: str, nbytes: int, device) -> None:
    """Refuse, before allocating, what could not fit in all of ``device``'s memory (a size typed or read wrong)."""
    total = device_memory_bytes(device)
    if nbytes > total:
        raise ValueError(f"{what} needs {nbytes / 2**30:,.1f} GiB, more than all {total / 2**30:,.1f} GiB of "
                         f"{device.type} memory: refused before allocating")  # fmt: skip


def check_module_fits(make: Callable, device) -> None:
    """Build the module ``make()`` on the meta device (no memory) and :func:`check_fits` its weights, their
    gradients and the optimizer's momentum on ``device``."""
    import torch

    with torch.device("meta"):
        tensors = [*make().state_dict().values()]
    check_fits("its weights, gradients and momentum", 3 * sum(t.nbytes for t in tensors), device)


_TYPE_WORDS = {int: "an integer", float: "a finite number", str: "a string", bool: "true or false",
               type(None): "unset (None)", dict: "a mapping", list: "a list", tuple: "a list"}  # fmt: skip


def _type_name(hint) -> str:
    args = typing.get_args(hint)
    if args and (isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union):
        return " or ".join(_type_name(a) for a in args)
    hint = typing.get_origin(hint) or hint
    return _TYPE_WORDS.get(hint, getattr(hint, "__name__", str(hint)))


def conforms(value, hint) -> bool:
    """Whether ``value`` is of type ``hint`` (a class or a union of them); bool is not an int, an int is a float,
    a float must be finite."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return any(conforms(value, h) for h in typing.get_args(hint))
    hint = typing.get_origin(hint) or hint
    if hint is type(None):
        return value is None
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if hint in (list, tuple):
        return isinstance(value, list | tuple)
    return isinstance(value, hint)


def check_json_like(name: str, value) -> None:
    """``value`` is made of dicts with str keys, lists, str, finite numbers, bools and None, with at most
    ``MAX_SETTING_NODES`` nodes (every reference counted) nested at most ``MAX_SETTING_DEPTH`` deep."""
    stack, seen = [(value, 0)], 0
    while stack:
        item, depth = stack.pop()
        seen += 1
        if seen > MAX_SETTING_NODES or depth > MAX_SETTING_DEPTH:
            raise ValueError(
                f"{name} is too large or too deeply nested (more than {MAX_SETTING_NODES} values or "
                f"{MAX_SETTING_DEPTH} levels): refused"
            )
        if isinstance(item, dict):
            if not all(isinstance(k, str) for k in item):
                raise ValueError(f"{name}: mapping keys must be strings, got {list(item)[:5]!r}")
            stack += [(v, depth + 1) for v in item.values()]
        elif isinstance(item, list | tuple):
            stack += [(v, depth + 1) for v in item]
        elif isinstance(item, float) and not math.isfinite(item):
            raise ValueError(f"{name} holds a non-finite number {item!r}")
        elif item is not None and not isinstance(item, str | int | float | bool):
            raise ValueError(f"{name} holds a {type(item).__name__}, not a JSON value")


def check_fields(config) -> None:
    """Type (from the annotations) and range (the fields' ``setting`` rules) of every field of a dataclass."""
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if not conforms(value, hints[f.name]):
            raise ValueError(f"{f.name} must be {_type_name(hints[f.name])}, got {value!r}")
        if isinstance(value, dict | list):
            check_json_like(f.name, value)
        check = f.metadata.get("check")
        if check is not None and value is not None:
            check(f.name, value)


def _expected(parameter: inspect.Parameter):
    """(type, low) an argument must have: from its annotation, else from its default's type; a number keeps its
    default's sign (a non-negative size, count or rate stays >= 0). (None, None): anything goes."""
    if parameter.annotation is not inspect.Parameter.empty and not isinstance(parameter.annotation, str):
        return parameter.annotation, None
    default = parameter.default
    if default is None or default is inspect.Parameter.empty:
        return None, None
    if isinstance(default, bool):
        return bool, None
    if isinstance(default, int):
        return int, 0 if default >= 0 else None
    if isinstance(default, float):
        return float, 0 if default >= 0 else None
    return (list if isinstance(default, tuple) else type(default)), None


def parameters_of(fn: Callable) -> dict[str, inspect.Parameter]:
    """The keyword parameters ``fn`` accepts; for a class, those of every ``__init__`` up its MRO while each
    passes ``**kwargs`` on (a subclass's parameter shadows its base's)."""
    if not isinstance(fn, type):
        return {
            n: p for n, p in inspect.signature(fn).parameters.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        }
    params: dict[str, inspect.Parameter] = {}
    for cls in fn.__mro__:
        if "__init__" not in vars(cls):
            continue
        signature = list(inspect.signature(vars(cls)["__init__"]).parameters.values())[1:]  # without self
        for p in signature:
            if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                params.setdefault(p.name, p)
        if not any(p.kind is p.VAR_KEYWORD for p in signature):
            break
    return params


def check_call_args(flag: str, what: str, fn: Callable, args: dict, reserved=(), sizes: bool = False) -> None:
    """``args`` fit ``fn``'s keyword parameters: known names, none of ``reserved`` (set elsewhere), types from
    annotations or defaults, signs of numbers as the defaults' (``sizes``: an integer with a positive default, a
    space's width, depth or node count, must be >= 1). The error names ``what`` and ``flag``
    (``space 'darts' cannot be built with --space-args {...}: C must be >= 1, got -4``)."""

    def refuse(reason):
        raise ValueError(f"{what} cannot be built with {flag} {args}: {reason}")

    check_json_like(flag, args)
    params = {n: p for n, p in parameters_of(fn).items() if n not in reserved}
    taken = sorted(set(args) & set(reserved))
    if taken:
        refuse(f"{taken} are set by other settings")
    unknown = sorted(set(args) - set(params))
    if unknown:
        refuse(f"unknown {unknown}; known: {sorted(params)}")
    for name, value in args.items():
        hint, low = _expected(params[name])
        if sizes and hint is int and isinstance(params[name].default, int) and params[name].default >= 1:
            low = 1
        if hint is not None and not conforms(value, hint):
            refuse(f"{name} must be {_type_name(hint)}, got {value!r}")
        if low is not None and value < low:
            refuse(f"{name} must be >= {low}, got {value!r}")


__all__ = [
    "at_least", "below", "check_call_args", "check_fields", "check_fits", "check_json_like", "check_module_fits",
    "device_rule", "from_mapping", "one_of", "setting",
]  # fmt: skip
