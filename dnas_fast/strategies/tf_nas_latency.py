"""Latency lookup tables for the MBConv space (TF-NAS, Hu et al., ECCV 2020, Sec. 3.4).

* ``build_table``: times every candidate op at every block shape of a space, at a few expanded widths, on the
  current device (GPU batch 32, CPU batch 1, as in the paper), after warm-up, as the median of repeats.
* ``LatencyTable``: a versioned JSON file holding one table per device name; ``latency(key, width)``
  interpolates linearly between the measured widths.
* ``SupernetLatency``: the expected latency of the supernet as a differentiable function of the op weights
  ``[E, K]`` and sink depth weights ``[S, D]`` (authors' ``MixedOP``/``MixedStage``), and the latency of a
  derived architecture (authors' ``get_lookup_latency``).
* ``measure_ms``: real latency of a module.

``dnas-fast latency build`` (make a table) and ``dnas-fast latency measure`` (time a derived network from a run's
``genotype.json``) are in ``dnas_fast.cli``.

File format (``version`` 1)::

    {"format": "dnas_fast.latency", "version": 1,
     "devices": {"<device name>": {"batch_size": 1, "repeats": 50, "torch": "...", "date": "...",
                                   "entries": {"<op>|<C_in>|<C_out>|s<stride>|<H>x<W>": {"widths": [..], "ms": [..]}},
                                   "base": {"<stem/head key>": ms}}}}
"""

import datetime
import functools
import json
import os
import statistics
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..benchmark import device_name, median_ms

FORMAT, VERSION = "dnas_fast.latency", 1
SAMPLED_WIDTHS = (0.5, 0.625, 0.75, 0.875, 1.0)  # ``--widths sampled``: fractions of the allocated width


def keep_rng(fn):
    """Run ``fn`` without touching the global RNG: building modules to time them must not change a search."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with torch.random.fork_rng(devices=[]):
            return fn(*args, **kwargs)

    return wrapper


# ---- measurement ---------------------------------------------------------------------------------------
def default_batch_size(device) -> int:
    """The paper's measuring batch: 32 on a GPU, 1 on a CPU."""
    return 32 if torch.device(device).type == "cuda" else 1


@torch.no_grad()
def measure_ms(module: nn.Module, input_shape, device="cpu", repeats=50, warmup=10) -> float:
    """Median wall time in ms of ``module(x)`` for ``x (Tensor[input_shape])``, eval mode, after ``warmup``."""
    device = torch.device(device)
    module = module.to(device).eval()
    x = torch.randn(*input_shape, device=device)
    return median_ms(lambda: module(x), device, repeats, warmup)


@keep_rng
def measure_derived(config: dict, device="cpu", repeats=200, warmup=20, batch_size=None) -> float:
    """Real median latency (ms) of the derived network ``config`` (``MBConvSpace.derive``) on ``device``."""
    from ..spaces.mbconv import MBConvNet

    batch = default_batch_size(device) if batch_size is None else batch_size
    res = config["resolution"]
    return measure_ms(MBConvNet(config), (batch, config["in_channels"], res, res), device, repeats, warmup)


# ---- keys ----------------------------------------------------------------------------------------------
def block_key(op: str, shape) -> str:
    return f"{op}|{shape.C_in}|{shape.C_out}|s{shape.stride}|{shape.H}x{shape.W}"


def base_key(config: dict) -> str:
    """The fixed parts (stem + head) of a space or derived config."""
    c = config
    last = c.get("last_channels") or c["stages"][-1][0]
    return (
        f"base|in{c['in_channels']}|stem{c['stem'][0]},{c['stem'][1]}|s{c['stem_stride']}|r{c['resolution']}"
        f"|head{last},{c['head']}|cls{c['num_classes']}"
    )


class _Base(nn.Module):
    """Stem and head run back to back (the head input is resized to the last stage's resolution)."""

    def __init__(self, config, last_channels, last_hw):
        super().__init__()
        from ..spaces.mbconv import build_head, build_stem

        self.stem = build_stem(config["in_channels"], config["stem"], config["stem_stride"], affine=True)
        self.head = build_head(last_channels, config["head"], config["num_classes"], affine=True)
        self.last = (last_channels, last_hw)

    def forward(self, x):
        self.stem(x)
        C, H = self.last
        return self.head(x.new_zeros(x.shape[0], C, H, H))


# ---- table ---------------------------------------------------------------------------------------------
class LatencyTable:
    """One device's measurements. ``entries[key] = {"widths": [...], "ms": [...]}``, ``base[key] = ms``."""

    def __init__(self, device: str, batch_size: int, entries=None, base=None, meta=None):
        self.device, self.batch_size = device, batch_size
        self.entries, self.base, self.meta = dict(entries or {}), dict(base or {}), dict(meta or {})

    def latency(self, key: str, width: float) -> float:
        """ms of op ``key`` at expanded ``width``: linear interpolation between measured widths (clamped)."""
        if key not in self.entries:
            raise ValueError(f"latency table for {self.device!r} has no entry {key!r}; rebuild it for this space")
        e = self.entries[key]
        return float(np.interp(width, e["widths"], e["ms"]))

    def base_latency(self, key: str) -> float:
        if key not in self.base:
            raise ValueError(f"latency table for {self.device!r} has no stem/head entry {key!r}; rebuild it")
        return self.base[key]

    def to_dict(self) -> dict:
        return {"batch_size": self.batch_size, **self.meta, "entries": self.entries, "base": self.base}

    @classmethod
    def from_dict(cls, device: str, d: dict) -> "LatencyTable":
        meta = {k: v for k, v in d.items() if k not in ("batch_size", "entries", "base")}
        return cls(device, d["batch_size"], d["entries"], d["base"], meta)

    def save(self, path) -> None:
        """Write (or merge into) ``path``; other devices' tables in the file are kept."""
        path = Path(path)
        doc = read_file(path) if path.exists() else {"format": FORMAT, "version": VERSION, "devices": {}}
        doc["devices"][self.device] = self.to_dict()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, path)

    @classmethod
    def load(cls, path, device: str | None = None) -> "LatencyTable":
        """The table of ``device`` (a ``device_name``; default: the only one in the file)."""
        doc = read_file(Path(path))
        devices = doc["devices"]
        if device is None:
            if len(devices) != 1:
                raise ValueError(f"{path} holds tables for {sorted(devices)}; pick one with latency_device")
            device = next(iter(devices))
        if device not in devices:
            raise ValueError(f"{path} has no latency table for device {device!r}; it has {sorted(devices)}")
        return cls.from_dict(device, devices[device])


def load_table(path, device: str, strict: bool = True) -> LatencyTable:
    """The table of ``device`` in ``path``; unless ``strict``, a file with a single other device's table is
    used with a warning (e.g. a CPU table copied from another machine)."""
    devices = read_file(Path(path))["devices"]
    if device in devices or strict or len(devices) != 1:
        return LatencyTable.load(path, device)
    other = next(iter(devices))
    warnings.warn(f"{path} has no table for {device!r}; using the one for {other!r}", stacklevel=2)
    return LatencyTable.load(path, other)


def read_file(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"latency table {path} does not exist")
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"latency table {path} is not valid JSON: {err}") from err
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("devices"), dict):
        raise ValueError(f"{path} is not a dnas_fast latency table")
    if doc.get("version") != VERSION:
        raise ValueError(f"latency table {path} has version {doc.get('version')}, this dnas_fast reads {VERSION}")
    return doc


def width_grid(max_mid: int, fractions=None) -> list[int]:
    """The expanded widths to time: every width of the elastic range ``[max_mid / 2, max_mid]`` (``None``, the
    authors' table: AberHu/TF-NAS measures each width it can select), or ``fractions`` of ``max_mid``, between
    which lookups then interpolate linearly."""
    if fractions is None:
        return list(range(max(1, max_mid // 2), max_mid + 1))
    return sorted({max(1, round(f * max_mid)) for f in fractions})


@keep_rng
def build_table(space, device="cpu", fractions=None, repeats=50, warmup=10, batch_size=None, calibrate=0, log=None):
    """Measure every (candidate, block shape) of ``space`` (an ``MBConvSpace``) at every selectable expanded
    width (or, when asked, at ``fractions x allocated width``, interpolating between them), plus its stem and
    head, on ``device``; with ``calibrate`` > 0, also time that many random derived networks whole to get the
    table's ``scale`` (default 0: no calibration, scale 1, as the authors' table)."""
    from ..ops.mbconv import build_mbconv

    batch = default_batch_size(device) if batch_size is None else batch_size
    entries = {}
    shapes = space.flat_shapes()
    for e, (shape, edge) in enumerate(zip(shapes, space.block_edges())):
        for name, op in zip(edge.op_names, edge._ops):
            key = block_key(name, shape)
            if key in entries:
                continue
            widths = width_grid(op.max_mid, fractions)
            ms = [
                measure_ms(build_mbconv(name, shape.C_in, shape.C_out, shape.stride, True, mid=w),
                           (batch, shape.C_in, shape.H, shape.W), device, repeats, warmup)
                for w in widths
            ]  # fmt: skip
            entries[key] = {"widths": widths, "ms": ms}
        if log:
            log(f"block {e + 1}/{len(shapes)} measured")
    config = space.config
    last = shapes[-1]
    last_hw = -(-last.H // last.stride)
    base_ms = measure_ms(
        _Base(config, last.C_out, last_hw), (batch, config["in_channels"], config["resolution"], config["resolution"]),
        device, repeats, warmup,
    )  # fmt: skip
    if log and (fractions is not None or calibrate):
        log(f"latency table: widths {'every' if fractions is None else fractions} (interpolated between), "
            f"calibration over {calibrate} networks")  # fmt: skip
    meta = {"repeats": repeats, "warmup": warmup, "torch": torch.__version__, "widths": fractions or "every",
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}  # fmt: skip
    table = LatencyTable(device_name(device), batch, entries, {base_key(config): base_ms}, meta)
    if calibrate:
        table.meta["scale"] = calibration_scale(table, space, device, calibrate, 4 * repeats, warmup, batch)
    return table


def calibration_scale(table, space, device, samples, repeats, warmup, batch) -> float:
    """Median of measured / LUT-summed latency over ``samples`` random derived networks of ``space``.

    A whole network runs slower than the sum of its blocks timed alone (on a 2-core CPU, batch 1, about 8%:
    allocator and cache effects); the authors add a constant "latency rectifier" for the same reason.
    """
    model = SupernetLatency(table, space)
    spec = space.arch_spec()
    gen = torch.Generator().manual_seed(0)  # the global RNG stays untouched
    E, K = len(model.shapes), len(spec["ops"].op_names)
    max_w = space.max_widths()
    ratios = []
    for _ in range(samples):
        ops = torch.randint(K, (E,), generator=gen).tolist()
        depths = [int(torch.multinomial(row.float(), 1, generator=gen)) for row in spec["depth"].allowed]
        widths = max_w // 2 + (torch.rand(max_w.shape, generator=gen) * (max_w - max_w // 2 + 1)).long()
        config = space.derived_config(ops, depths, widths)
        ratios.append(measure_derived(config, device, repeats, warmup, batch) / model.derived(ops, depths, widths))
    return statistics.median(ratios)


# ---- latency of the supernet and of derived architectures ----------------------------------------------
class SupernetLatency:
    """Latency model of one ``MBConvSpace`` from a ``LatencyTable``.

    Expected latency (authors' ``Network.forward`` with ``sampling=False``)::

        LAT = scale * (base + sum_s sum_j d[s, j] * sum_{b < j} sum_k w[e(s, b), k] * lat[e(s, b), k])
    """

    def __init__(self, table: LatencyTable, space):
        self.table = table
        self.shapes = space.flat_shapes()
        self.op_names = [edge.op_names for edge in space.block_edges()]
        self.base = table.base_latency(base_key(space.config))
        self.scale = table.meta.get("scale", 1.0)  # whole-network calibration (see ``calibration_scale``)
        spec = space.arch_spec()["depth"]
        S, D, E = spec.num_edges, len(spec.op_names), len(self.shapes)
        # prefix[s, j, e] = 1 when block e is among the first j blocks of stage s
        prefix = torch.zeros(S, D, E)
        for s, (first, last) in enumerate(zip(spec.source_of_edge, spec.node_of_edge)):
            for j in range(D):
                prefix[s, j, first : min(first + j, last)] = 1
        self.prefix = prefix
        self.stage_edges = [list(range(f, l)) for f, l in zip(spec.source_of_edge, spec.node_of_edge)]

    def op_latency(self, e: int, k: int, width: float) -> float:
        return self.table.latency(block_key(self.op_names[e][k], self.shapes[e]), width)

    def block_table(self, widths) -> torch.Tensor:
        """Tensor[E, K] float64: latency of every candidate at its width ``widths[E, K]``."""
        rows = [[self.op_latency(e, k, float(w)) for k, w in enumerate(row)] for e, row in enumerate(widths)]
        return torch.tensor(rows, dtype=torch.float64)

    def expected(self, op_weights, depth_weights, block_table) -> torch.Tensor:
        """op_weights (Tensor[E, K]), depth_weights (Tensor[S, D]), block_table (Tensor[E, K]) -> Tensor[] ms."""
        per_block = (op_weights * block_table).sum(-1)  # [E]
        prefix = self.prefix.to(per_block.device, per_block.dtype)
        return self.scale * (self.base + (depth_weights * (prefix @ per_block)).sum())

    def derived(self, ops, depths, widths) -> float:
        """ms of the architecture keeping the first ``depths[s]`` blocks of stage ``s`` with ops ``ops[e]``."""
        blocks = sum(
            self.op_latency(e, ops[e], float(widths[e][ops[e]])) for s, edges in enumerate(self.stage_edges)
            for e in edges[: depths[s]]
        )  # fmt: skip
        return self.scale * (self.base + blocks)
