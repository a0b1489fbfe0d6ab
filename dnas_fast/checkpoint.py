"""Atomic, self-describing search checkpoints."""

import os
import pickle
import random
import re
import tempfile

import numpy as np
import torch

FORMAT = "dnas_fast.search/1"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, or does not belong to the run that loads it."""


TMP_PREFIX = ".tmp-"  # atomic writes' temporary files; rundir.remove_orphans deletes those a kill left


def file_mode() -> int:
    """The mode of every file a run writes: what ``open()`` would give under the process's umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _atomic_write(path, write) -> None:
    """``write(file)`` to a temporary file in the same folder, fsync, then rename: a crash leaves the old file."""
    path = os.fspath(path)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=os.path.splitext(path)[1], dir=os.path.dirname(
        os.path.abspath(path)))  # fmt: skip
    try:
        os.fchmod(fd, file_mode())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_torch_save(obj, path) -> None:
    _atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_text(path, text: str) -> None:
    _atomic_write(path, lambda f: f.write(text.encode()))


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


try:  # numpy >= 2
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy 1.x
    from numpy.core.multiarray import _reconstruct

# The only non-tensor, non-builtin types a checkpoint holds: numpy's RNG state (an ndarray of uint32 keys).
SAFE_GLOBALS = [np.ndarray, np.dtype, type(np.dtype(np.uint32)), _reconstruct]


def safe_load(path):
    """``torch.load`` that runs no code from the file: ``weights_only=True`` with :data:`SAFE_GLOBALS` allowed;
    a file that needs anything more is refused with a :class:`CheckpointError` (a shared checkpoint could
    otherwise execute arbitrary code on ``dnas-fast derive`` or ``--resume``)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"(?:GLOBAL|global) ([\w.]+)", str(err))
        what = f"type {found.group(1)}" if found else "a type"
        raise CheckpointError(
            f"refusing to load {path}: it needs {what}, outside the checkpoint allow-list (loading it could run code)"
        ) from None
    except Exception as err:  # torch raises many types for truncated / foreign files
        raise CheckpointError(f"checkpoint {path} is corrupt or not a dnas_fast checkpoint: {err}") from err


def load_checkpoint(path) -> dict:
    """Load and sanity-check a search checkpoint; raises CheckpointError with the reason."""
    path = os.fspath(path)
    ckpt = safe_load(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a dnas_fast search checkpoint (expected format {FORMAT})")
    return ckpt
