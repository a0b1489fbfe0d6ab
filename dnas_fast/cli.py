"""dnas-fast: differentiable architecture search from the command line.

Commands: search (run or resume a search), train (train a found architecture from scratch), eval-child (the child
network inside a search checkpoint), derive (the architecture of a checkpoint), plot (a run's PNG plots), latency
(TF-NAS latency tables: build, measure), bench-edge (time and memory of one edge per backend). `dnas-fast COMMAND
-h` lists a command's flags."""

import argparse
import importlib
import importlib.util
import json
import sys
import time
from pathlib import Path

# Subcommands contributed by optional modules: each exposes register_cli(subparsers) and sets args.func.
PLUGIN_MODULES = ["dnas_fast.bench_edge", "dnas_fast.train"]


def _json_arg(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not valid JSON: {text!r} ({err})") from err
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def _bool_arg(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _int_or_text(text: str) -> int | str:
    """``--batch-size``: a number, else the text as given (``auto``; SearchConfig rejects others in one line)."""
    return int(text) if text.strip().lstrip("-").isdigit() else text


def _read_config_file(path: str) -> dict:
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"config file {path} is a directory; give a .json or .toml file")
    if not p.is_file():
        raise ValueError(f"config file {path} does not exist")
    text = p.read_text()
    if p.suffix == ".toml":
        import tomllib

        values = tomllib.loads(text)
    else:
        try:
            values = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"config file {path} is not valid JSON: {err}") from err
    if not isinstance(values, dict):
        raise ValueError(f"config file {path}: a search config must be a mapping of settings, not a "
                         f"{type(values).__name__}")  # fmt: skip
    return values


# flag name -> SearchConfig field (flags default to None so that only what the user typed overrides)
SEARCH_FLAGS = {
    "space": str, "space_args": _json_arg, "strategy": str, "strategy_args": _json_arg, "data": str,
    "data_root": str, "data_args": _json_arg, "epochs": int, "batch_size": _int_or_text, "train_portion": float,
    "valid_split": str, "lr": float, "lr_min": float, "momentum": float, "nesterov": _bool_arg, "weight_decay": float,
    "grad_clip": float, "seed": int, "device": str, "backend": str, "max_steps_per_epoch": int, "num_workers": int,
    "precision": str, "checkpoint_every": str, "memory_limit": str,
}  # fmt: skip


# how a run executes, not what it computes
RESUME_MAY_CHANGE = ("device", "num_workers", "checkpoint_every", "cuda_graphs", "channels_last")


def add_search_parser(sub):
    p = sub.add_parser("search", help="run (or resume) an architecture search")
    for name, kind in SEARCH_FLAGS.items():
        p.add_argument("--" + name.replace("_", "-"), dest=name, type=kind, default=None)
    p.add_argument("--deterministic", action="store_true", default=None, help="deterministic algorithms")
    p.add_argument("--channels-last", nargs="?", const=True, type=_bool_arg, default=None,
                   help="network and batches channels_last (default: on CPU)")  # fmt: skip
    p.add_argument("--scale-lr", action="store_true", default=None, help="lr x batch / the strategy's reference batch")
    p.add_argument("--cuda-graphs", action="store_true", default=None, help="capture the search step as a CUDA graph")
    p.add_argument("--config", help="JSON or TOML file with SearchConfig fields; flags override it")
    p.add_argument("--out", help="run directory (default runs/<space>-<strategy>-<time>)")
    p.add_argument("--resume", action="store_true", help="continue the search in --out from its checkpoint")
    p.add_argument("--stop-after", type=positive_int, help="run at most this many epochs now (resume later)")
    p.add_argument("--threads", type=positive_int, help="intra-op CPU threads (torch.set_num_threads)")
    p.add_argument("--latency-target", type=float, help="TF-NAS latency target (ms), passed to the strategy")
    p.add_argument("--latency-table", help="TF-NAS latency lookup table, passed to the strategy")
    p.set_defaults(func=cmd_search)


def search_config(args):
    from .search import SearchConfig, config_from_checkpoint

    names = [*SEARCH_FLAGS, "deterministic", "channels_last", "scale_lr", "cuda_graphs"]
    typed = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    for flag in ("latency_target", "latency_table"):
        if getattr(args, flag) is not None:
            typed.setdefault("strategy_args", {})[flag] = getattr(args, flag)
    if args.resume:
        config = config_from_checkpoint(Path(args.out) / "checkpoint.pt")
        clashes = {k: v for k, v in typed.items() if getattr(config, k) != v and k not in RESUME_MAY_CHANGE}
        if clashes:
            raise ValueError(f"--resume continues the stored search; these flags differ from it: {clashes}")
        for key in RESUME_MAY_CHANGE:
            if key in typed:
                setattr(config, key, typed[key])
        return config
    values = _read_config_file(args.config) if args.config else {}
    values.update(typed)
    return SearchConfig.from_dict(values)


def show_log(name: str) -> None:
    """Print the INFO (and higher) lines of logger ``name`` to stderr."""
    import logging

    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger(name)
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)


def cmd_search(args) -> int:
    import torch

    from . import distributed
    from .search import run_search

    if args.resume and not args.out:
        raise ValueError("--resume needs --out RUN_DIR")
    config = search_config(args)
    if config.cuda_graphs:
        show_log("dnas_fast.cuda_graphs")  # the capture time is an info line
    if args.threads:
        torch.set_num_threads(args.threads)
    out = args.out or f"runs/{config.space}-{config.strategy}-{time.strftime('%Y%m%d-%H%M%S')}"
    rank, world_size = distributed.init(config.device)
    try:
        derived = run_search(
            config, out, resume=args.resume, rank=rank, world_size=world_size, stop_after=args.stop_after
        )
        if rank == 0:
            from .plots import plot_run

            plot_run(out)
            print(f"run directory: {out}")
            print(derived)
    finally:
        distributed.shutdown()
    return 0


def cmd_derive(args) -> int:
    from .checkpoint import atomic_write_text, load_checkpoint
    from .search import describe, restore_search

    space, strategy = restore_search(load_checkpoint(args.checkpoint))
    text, as_json = describe(strategy.derive(space))
    out = Path(args.out) if args.out else Path(args.checkpoint).parent
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "genotype.txt", text + "\n")
    atomic_write_text(out / "genotype.json", as_json + "\n")
    print(text)
    return 0


def cmd_plot(args) -> int:
    from .plots import plot_run

    for path in plot_run(args.run_dir):
        print(path)
    return 0


def add_latency_parser(subparsers):
    from .strategies.tf_nas_latency import SAMPLED_WIDTHS

    p = subparsers.add_parser("latency", help="latency lookup tables (TF-NAS)")
    sub = p.add_subparsers(dest="latency_command", required=True)
    b = sub.add_parser("build", help="measure a latency table for the mbconv space on this device")
    b.add_argument("--space-args", default="{}", help="JSON config of the mbconv space (as for search)")
    b.add_argument("--out", required=True, help="JSON table file (created, or merged: other devices are kept)")
    b.add_argument("--device", default="cpu", help="cpu or cuda[:i] (GPU tables use batch 32, CPU batch 1)")
    b.add_argument("--widths", default=None,
                   help="comma-separated fractions of each candidate's allocated expanded width to time, or "
                        "'sampled' for " + ",".join(map(str, SAMPLED_WIDTHS)) + "; lookups then interpolate "
                        "(default: every selectable width, as the authors' table)")  # fmt: skip
    b.add_argument("--repeats", type=int, default=50, help="timed runs per entry (median)")
    b.add_argument("--warmup", type=int, default=10, help="untimed runs per entry")
    b.add_argument("--batch-size", type=int, default=None, help="override the paper's batch (32 GPU / 1 CPU)")
    b.add_argument(
        "--calibrate",
        type=int,
        default=0,
        help="random whole networks timed for a whole-network scale of the table (default 0: none)",
    )
    b.add_argument("--threads", type=int, default=None, help="torch CPU threads while measuring (part of the key)")
    b.set_defaults(func=cmd_latency_build)
    m = sub.add_parser("measure", help="measure the real latency of a derived network (a run's genotype.json)")
    m.add_argument("derived", help="genotype.json of a tf-nas run (or a bare derived config)")
    m.add_argument("--device", default="cpu")
    m.add_argument("--repeats", type=int, default=200)
    m.add_argument("--batch-size", type=int, default=None, help="override the paper's batch (32 GPU / 1 CPU)")
    m.add_argument("--threads", type=int, default=None, help="torch CPU threads while measuring")
    m.set_defaults(func=cmd_latency_measure)


def cmd_latency_measure(args) -> int:
    import torch

    from .strategies.tf_nas_latency import default_batch_size, device_name, measure_derived

    path = Path(args.derived)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    doc = json.loads(path.read_text())
    config = doc.get("config", doc)
    if "blocks" not in config:
        raise ValueError(f"{path} holds no derived mbconv network (no 'blocks')")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    ms = measure_derived(config, args.device, args.repeats, batch_size=args.batch_size)
    batch = default_batch_size(args.device) if args.batch_size is None else args.batch_size
    line = f"measured {ms:.4f} ms on {device_name(args.device)} (batch {batch})"
    if "predicted_latency_ms" in doc:
        line += f"; predicted {doc['predicted_latency_ms']:.4f} ms, target {doc['latency_target_ms']:.4f} ms"
    print(line)
    return 0


def cmd_latency_build(args) -> int:
    import torch

    from .spaces import build_space
    from .strategies.tf_nas_latency import SAMPLED_WIDTHS, build_table

    try:
        space_args = json.loads(args.space_args)
        widths = {None: None, "sampled": SAMPLED_WIDTHS}.get(args.widths)
        fractions = widths if widths or args.widths in (None, "sampled") else [float(f) for f in args.widths.split(",")]
    except ValueError as err:
        raise ValueError(f"bad --space-args or --widths: {err}") from err
    if fractions is not None and not all(0 < f <= 1 for f in fractions):
        raise ValueError(f"--widths are fractions in (0, 1], got {fractions}")
    if args.repeats < 1:
        raise ValueError(f"--repeats must be positive, got {args.repeats}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    space = build_space("mbconv", **space_args)
    table = build_table(
        space, args.device, fractions, args.repeats, args.warmup, args.batch_size, args.calibrate, log=print
    )
    table.save(args.out)
    print(f"{len(table.entries)} entries for {table.device} (batch {table.batch_size}) written to {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dnas-fast", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    add_search_parser(sub)
    p = sub.add_parser("derive", help="print and write the architecture of a search checkpoint")
    p.add_argument("checkpoint")
    p.add_argument("--out", help="folder for genotype.txt/json (default: the checkpoint's folder)")
    p.set_defaults(func=cmd_derive)
    p = sub.add_parser("plot", help="write PNG plots of a run directory")
    p.add_argument("run_dir")
    p.set_defaults(func=cmd_plot)
    add_latency_parser(sub)
    for name in PLUGIN_MODULES:
        if importlib.util.find_spec(name) is not None:
            importlib.import_module(name).register_cli(sub)
    return parser


def main(argv=None) -> int:
    from .checkpoint import CheckpointError
    from .guard import DivergedError
    from .preemption import PREEMPTED_EXIT_CODE, Preempted
    from .rundir import RunLocked

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except DivergedError as err:
        print(f"dnas-fast {args.command}: {err}", file=sys.stderr)
        return 3
    except Preempted as err:
        print(f"dnas-fast {args.command}: {err}", file=sys.stderr)
        return PREEMPTED_EXIT_CODE
    except (ValueError, FileExistsError, FileNotFoundError, CheckpointError, RunLocked) as err:
        print(f"dnas-fast {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
