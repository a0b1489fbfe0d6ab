"""Batches to the device ahead of the step: on CUDA the copy of batch ``b + 1`` (from pinned memory) and its
normalisation run on a side stream while the default stream computes step ``b``; on the CPU a plain map."""

import torch


class DeviceBatches:
    """Iterate ``(finish(x, memory_format) on device, y on device)`` over ``raw`` ``(x, y)`` CPU batches.

    Example::

        for x, y in DeviceBatches(split.raw_batches(), split.finish, torch.device("cuda")):
            ...  # x is already normalised on the GPU; the next batch is on its way
    """

    def __init__(self, raw, finish, device: torch.device, memory_format=torch.contiguous_format):
        self.raw, self.finish, self.device, self.memory_format = iter(raw), finish, device, memory_format
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self.next = self._load()

    def _load(self):
        try:
            x, y = next(self.raw)
        except StopIteration:
            return None
        if self.stream is None:
            return self._prepare(x, y)
        with torch.cuda.stream(self.stream):
            return self._prepare(x, y)

    def _prepare(self, x, y):
        x = x.to(self.device, non_blocking=True)
        y = y.to(self.device, non_blocking=True)
        return self.finish(x, self.memory_format), y

    def __iter__(self):
        return self

    def __next__(self):
        if self.next is None:
            raise StopIteration
        x, y = self.next
        if self.stream is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_stream(self.stream)
            x.record_stream(current)  # the allocator must not recycle them while the step still reads them
            y.record_stream(current)
        self.next = self._load()
        return x, y
