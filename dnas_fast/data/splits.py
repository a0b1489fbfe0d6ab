"""Deterministic splits, per-epoch shuffles and shards: everything random here is a function of its keys."""

import math

import numpy as np
import torch

# Streams keep the seeds of unrelated random draws apart.
SPLIT, SHUFFLE, AUGMENT = 0, 1, 2


def derive_seed(*keys: int) -> int:
    """A 63-bit seed that depends only on the non-negative ints ``keys`` (NumPy's SeedSequence mixes them)."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, np.uint64)[0] >> np.uint64(1))


def generator(*keys: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded from ``keys``; the global RNG is never touched."""
    return torch.Generator().manual_seed(derive_seed(*keys))


def seeded_pool(n: int, seed: int, limit: int | None = None) -> torch.Tensor:
    """The examples a search may use: a seeded permutation of ``range(n)`` cut to ``limit``. Tensor[min(n, limit)]."""
    return torch.randperm(n, generator=generator(SPLIT, seed))[:limit]


def split_indices(n: int, train_portion: float, seed: int, limit: int | None = None):
    """DARTS search split of a training set of ``n`` examples (quark0/darts train_search.py).

    ``floor(train_portion * len(pool))`` examples of the seeded pool go to the weights (train), the rest to the
    architecture (valid). Returns two disjoint ``Tensor[n_i]`` int64.
    """
    pool = seeded_pool(n, seed, limit)
    cut = math.floor(train_portion * len(pool))
    return pool[:cut], pool[cut:]


class Split:
    """Base of a search split: owns ``indices`` and serves this rank's shard of each epoch's shuffle.

    The shuffle of epoch ``e`` is the same on every rank (seeded by ``seed, e, stream``), so the
    ``world_size`` shards ``perm[rank::world_size]`` (remainder dropped) are disjoint and equally long.
    Subclasses implement ``_batches(order, epoch, first_batch)``, seeding augmentation from ``(seed, epoch, rank)``.
    """

    def __init__(self, indices, batch_size: int, seed: int, stream: int, rank: int, world_size: int, what: str):
        self.indices = torch.as_tensor(indices, dtype=torch.int64)
        self.batch_size, self.seed, self.stream = batch_size, seed, stream
        self.rank, self.world_size = rank, world_size
        self.shard_size = len(self.indices) // world_size
        if batch_size > self.shard_size:
            raise ValueError(
                f"batch_size={batch_size} is larger than the {what} split ({len(self.indices)} examples, "
                f"{self.shard_size} per rank with world_size={world_size}); lower batch_size or use more examples"
            )
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select epoch ``epoch``; iteration then starts at batch ``start_batch`` (resume inside an epoch)."""
        if epoch < 0 or not 0 <= start_batch <= len(self):
            raise ValueError(f"need epoch >= 0 and 0 <= start_batch <= {len(self)}, got {epoch}, {start_batch}")
        self.epoch, self.start_batch = epoch, start_batch

    def __len__(self) -> int:
        return math.ceil(self.shard_size / self.batch_size)

    def shard(self, epoch: int) -> torch.Tensor:
        """This rank's example indices for ``epoch``, in visiting order: ``Tensor[shard_size]`` int64."""
        perm = torch.randperm(len(self.indices), generator=generator(SHUFFLE, self.seed, epoch, self.stream))
        return self.indices[perm[self.rank : self.shard_size * self.world_size : self.world_size]]

    def __iter__(self):
        return ((self.finish(x), y) for x, y in self.raw_batches())

    def to_device(self, device, memory_format=torch.contiguous_format):
        """This epoch's batches on ``device``, finished there (:class:`~.prefetch.DeviceBatches`: on CUDA the
        next batch is copied and normalised on a side stream while the current step runs)."""
        from .prefetch import DeviceBatches

        return DeviceBatches(self.raw_batches(), self.finish, torch.device(device), memory_format)

    def raw_batches(self):
        """This epoch's batches as they leave the loader (``finish`` turns ``x`` into network input)."""
        order = self.shard(self.epoch)[self.start_batch * self.batch_size :]
        return self._batches(order, self.epoch, self.start_batch)

    def finish(self, x: torch.Tensor, memory_format=torch.contiguous_format) -> torch.Tensor:
        """Raw batch -> ``Tensor[B, C, S, S]`` float32 normalised in ``memory_format``, on x's device."""
        return x.contiguous(memory_format=memory_format)

    def _batches(self, order: torch.Tensor, epoch: int, first_batch: int):
        raise NotImplementedError
