"""Training batches handed from DataLoader workers to the trainer through shared memory they reuse.

A DataLoader worker returns a tensor by moving its storage into a new shared-memory file and
sending the file's descriptor over a new authenticated socket connection; the trainer's process
maps the file and faults its pages in. For a batch of eight 64² crops (0.46 MB, one storage) that
cost the worker about 0.2 ms of CPU a sample (of 1.8) and the trainer's process 0.18, on every
batch (bench/RESULTS.md). Here each worker makes a few shared buffers (*slots*) once and copies
every batch into the next slot in turn. What goes through the DataLoader is a small ``Handed``
message: the slot, the batch's layout, and the slot's buffer only the first time (or when a larger
batch needs a larger buffer). ``Batches``, in the trainer's process, copies each batch out of its
slot into memory of its own (pinned, for a GPU), so batches stay valid however long they are kept.

A slot's header holds two batch numbers: the one the worker wrote into it and the last one the
trainer copied out. Before it reuses a slot, a worker waits until the batch it wrote there before
has been copied out. With ``prefetch_factor + 1`` slots it never has to: the DataLoader keeps
``prefetch_factor`` requests outstanding per worker and sends a worker a new one only while handing
over one of that worker's batches, so when a worker is asked for its batch ``n`` the trainer has
copied out batch ``n - prefetch_factor - 1``, the one in ``n``'s slot. The wait covers what breaks
that count: when one worker fails or ends, the DataLoader sends its share of requests to the
others. The trainer copies batches in the order it asks for them, and a worker only waits for an
earlier batch of its own, so the wait always ends.

The header's numbers order the two processes' accesses on x86 (stores are seen in program order);
elsewhere normal operation is still ordered by the DataLoader's own queue system calls.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

# A slot's header: int64 [the batch written into it, the last batch copied out of it]; its batch
# starts after it, at a multiple of any element size, as inside a collated batch.
HEADER = 64
WRITTEN, COPIED = 0, 1
# Room a new or grown slot leaves above the batch that needed it: batches differ in size by the
# length of their texts, and each regrowth sends a new buffer.
HEADROOM = 1.25
# How often a worker that must wait for the trainer looks at a slot again.
POLL_S = 0.001

Layout = tuple[tuple[str, torch.dtype, tuple[int, ...], int, int], ...]  # name, dtype, shape, start, bytes


@dataclass(frozen=True)
class Handed:
    """One batch, in slot ``slot`` of worker ``worker``: what the DataLoader carries instead of it."""

    worker: int
    slot: int
    number: int  # the worker's count of batches, also written in the slot's header
    size: int  # bytes of the batch, after the slot's header
    layout: Layout
    buffer: Tensor | None  # the slot's shared buffer, the first time the slot (or a grown one) is used


def layout_of(batch: dict[str, Tensor]) -> tuple[Tensor, Layout]:
    """The one uint8 buffer all tensors of ``batch`` view (as ``restore.data.collate`` makes them),
    and where each of them lies in it."""
    storage = next(iter(batch.values())).untyped_storage()
    layout = []
    for name, tensor in batch.items():
        if tensor.untyped_storage().data_ptr() != storage.data_ptr() or not tensor.is_contiguous():
            raise ValueError(f"batch tensor {name!r} is not a contiguous view of the batch's one buffer")
        layout.append((name, tensor.dtype, tuple(tensor.shape), tensor.storage_offset() * tensor.element_size(),
                       tensor.numel() * tensor.element_size()))
    return torch.empty(0, dtype=torch.uint8).set_(storage), tuple(layout)


def _header(buffer: np.ndarray) -> np.ndarray:
    return buffer[:16].view(np.int64)


class SlotStream(IterableDataset):
    """``dataset``'s batches, as ``Handed`` messages when iterated in a DataLoader worker."""

    def __init__(self, dataset: IterableDataset, slots: int):
        super().__init__()
        self.dataset, self.slots = dataset, slots

    def __iter__(self) -> Iterator[Handed | dict[str, Tensor]]:
        info = get_worker_info()
        if info is None:
            yield from self.dataset  # in the trainer's own process there is nothing to hand over
            return
        buffers: list[Tensor | None] = [None] * self.slots
        for number, batch in enumerate(self.dataset):
            source, layout = layout_of(batch)
            slot, size = number % self.slots, source.numel()
            sent = None
            if buffers[slot] is None or buffers[slot].numel() < HEADER + size:
                sent = buffers[slot] = torch.empty(HEADER + math.ceil(size * HEADROOM),
                                                   dtype=torch.uint8).share_memory_()
                _header(buffers[slot].numpy())[:] = -1
            target = buffers[slot].numpy()
            header = _header(target)
            # A grown slot is a new buffer: the batch left in the old one is the trainer's to copy.
            while header[WRITTEN] >= 0 and header[COPIED] < header[WRITTEN]:
                time.sleep(POLL_S)
            np.copyto(target[HEADER:HEADER + size], source.numpy())
            header[WRITTEN] = number
            yield Handed(info.id, slot, number, size, layout, sent)


class Batches:
    """The batches of a DataLoader over a ``SlotStream``, each copied out of its slot into memory
    of this process (pinned when ``pin_memory``). Batches of a loader without workers pass as
    they are."""

    def __init__(self, loader: DataLoader, pin_memory: bool = False):
        self._batches = iter(loader)
        self._pin = pin_memory
        self._slots: dict[tuple[int, int], np.ndarray] = {}

    def __iter__(self) -> Batches:
        return self

    def __next__(self) -> dict[str, Tensor]:
        item = next(self._batches)
        return self.receive(item) if isinstance(item, Handed) else item

    def receive(self, item: Handed) -> dict[str, Tensor]:
        """The batch ``item`` names, copied out of its slot (which its worker may then reuse)."""
        if item.buffer is not None:
            self._slots[item.worker, item.slot] = item.buffer.numpy()
        slot = self._slots[item.worker, item.slot]
        out = torch.empty(item.size, dtype=torch.uint8, pin_memory=self._pin)
        # numpy's copy, not torch's: torch copies half a megabyte on its intra-op threads, and
        # their spin-wait afterwards takes the core a loader worker needs.
        np.copyto(out.numpy(), slot[HEADER:HEADER + item.size])
        _header(slot)[COPIED] = item.number
        return {name: out[start:start + nbytes].view(dtype).view(shape)
                for name, dtype, shape, start, nbytes in item.layout}

    @property
    def worker_pids(self) -> list[int]:
        """Process ids of the DataLoader's workers (none without workers)."""
        # The DataLoader's iterator offers no public handle on its worker processes.
        return [w.pid for w in getattr(self._batches, "_workers", [])]
