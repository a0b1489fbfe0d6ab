"""``dnas-fast`` command line: search, derive, plot (+ bench-edge, latency, train and eval-child when their
modules exist)."""

import argparse
import importlib
import importlib.util
import json
import sys
import time
from pathlib import Path

# Subcommands contributed by optional modules: each exposes register_cli(subparsers) and sets args.func.
PLUGIN_MODULES = ["dnas_fast.bench_edge", "dnas_fast.latency", "dnas_fast.train"]


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


def _int_or_text(text: str) -> int | str:
    """``--batch-size``: a number, else the text as given (``auto``; SearchConfig rejects others in one line)."""
    return int(text) if text.strip().lstrip("-").isdigit() else text


def _read_config_file(path: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"config file {path} does not exist")
    text = p.read_text()
    if p.suffix == ".toml":
        import tomllib

        return tomllib.loads(text)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"config file {path} is not valid JSON: {err}") from err


# flag name -> SearchConfig field (flags default to None so that only what the user typed overrides)
SEARCH_FLAGS = {
    "space": str, "space_args": _json_arg, "strategy": str, "strategy_args": _json_arg, "data": str,
    "data_root": str, "data_args": _json_arg, "epochs": int, "batch_size": _int_or_text, "train_portion": float,
    "lr": float, "lr_min": float, "momentum": float, "nesterov": _bool_arg, "weight_decay": float,
    "grad_clip": float, "seed": int, "device": str, "backend": str, "max_steps_per_epoch": int, "num_workers": int,
    "precision": str, "checkpoint_every": str, "memory_limit": str,
}  # fmt: skip


RESUME_MAY_CHANGE = ("device", "num_workers", "checkpoint_every")  # how a run executes, not what it computes


def add_search_parser(sub):
    p = sub.add_parser("search", help="run (or resume) an architecture search")
    for name, kind in SEARCH_FLAGS.items():
        p.add_argument("--" + name.replace("_", "-"), dest=name, type=kind, default=None)
    p.add_argument("--deterministic", action="store_true", default=None, help="deterministic algorithms")
    p.add_argument("--channels-last", action="store_true", default=None, help="network and batches channels_last")
    p.add_argument("--scale-lr", action="store_true", default=None, help="lr x batch / the strategy's reference batch")
    p.add_argument("--config", help="JSON or TOML file with SearchConfig fields; flags override it")
    p.add_argument("--out", help="run directory (default runs/<space>-<strategy>-<time>)")
    p.add_argument("--resume", action="store_true", help="continue the search in --out from its checkpoint")
    p.add_argument("--stop-after", type=int, help="run at most this many epochs now (resume later)")
    p.add_argument("--threads", type=int, help="intra-op CPU threads (torch.set_num_threads)")
    p.add_argument("--latency-target", type=float, help="TF-NAS latency target (ms), passed to the strategy")
    p.add_argument("--latency-table", help="TF-NAS latency lookup table, passed to the strategy")
    p.set_defaults(func=cmd_search)


def search_config(args):
    from .search import SearchConfig, config_from_checkpoint

    names = [*SEARCH_FLAGS, "deterministic", "channels_last", "scale_lr"]
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


def cmd_search(args) -> int:
    import torch

    from . import distributed
    from .search import run_search

    if args.resume and not args.out:
        raise ValueError("--resume needs --out RUN_DIR")
    config = search_config(args)
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
    from .search import describe
    from .spaces import build_space
    from .strategies import build_strategy

    ckpt = load_checkpoint(args.checkpoint)
    space = build_space(ckpt["space"], **ckpt["space_config"])
    strategy = build_strategy(ckpt["strategy"], **ckpt["config"]["strategy_args"])
    strategy.setup(space.arch_spec())
    strategy.load_state_dict(ckpt["strategy_state"])
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
    for name in PLUGIN_MODULES:
        if importlib.util.find_spec(name) is not None:
            importlib.import_module(name).register_cli(sub)
    return parser


def main(argv=None) -> int:
    from .checkpoint import CheckpointError
    from .guard import DivergedError
    from .preemption import PREEMPTED_EXIT_CODE, Preempted

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except DivergedError as err:
        print(f"dnas-fast {args.command}: {err}", file=sys.stderr)
        return 3
    except Preempted as err:
        print(f"dnas-fast {args.command}: {err}", file=sys.stderr)
        return PREEMPTED_EXIT_CODE
    except (ValueError, FileExistsError, FileNotFoundError, CheckpointError) as err:
        print(f"dnas-fast {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
