"""Batches handed from loader worker processes to the trainer's process through reused slots."""

from __future__ import annotations

import multiprocessing
import time

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from restore import data
from restore.handover import Batches, SlotStream
from tests.test_data import batch_digest, stream_config, take, write_shards

BATCHES = 12


def growing_batch(n: int) -> dict[str, torch.Tensor]:
    """Batch ``n``: every fourth batch far larger than the ones before (past a slot's headroom)."""
    width = 4 + 200 * (n // 4)
    examples = [{"pixels": np.full((3, width), n * 10 + i, np.uint8),
                 "tokens": np.arange(width, dtype=np.float16) + n,
                 "present": np.bool_(i % 2)} for i in range(2)]
    return data.collate(examples, position=np.array([n, width], np.int64))


class GrowingBatches(IterableDataset):
    def __iter__(self):
        return map(growing_batch, range(BATCHES))


class FailingWorker(IterableDataset):
    """Endless batches, except that worker 0 fails at its third."""

    def __iter__(self):
        worker = get_worker_info().id
        for n in range(10**6):
            if worker == 0 and n == 3:
                raise ValueError("worker 0 fails at its batch 3")
            yield growing_batch(n % 4)


class Counting(Batches):
    """Batches that count the slot buffers their workers sent."""

    sent = 0

    def receive(self, item):
        self.sent += item.buffer is not None
        return super().receive(item)


def worker_batches(dataset: IterableDataset, slots: int, workers: int = 1) -> Counting:
    loader = DataLoader(SlotStream(dataset, slots), batch_size=None, num_workers=workers,
                        prefetch_factor=data.PREFETCH, multiprocessing_context=multiprocessing.get_context("forkserver"))
    return Counting(loader)


def assert_same(received, expected):
    assert len(received) == len(expected)
    for got, want in zip(received, expected, strict=True):
        assert list(got) == list(want)
        for name in want:
            assert got[name].dtype == want[name].dtype and torch.equal(got[name], want[name]), name


def test_batches_from_a_worker_arrive_whole_and_stay_valid_when_kept():
    # All twelve are kept: more than the worker's slots, so a batch that still pointed into its
    # slot would have been overwritten by then. Every fourth batch outgrows its slot.
    batches = worker_batches(GrowingBatches(), slots=data.PREFETCH + 1)
    received = list(batches)
    assert_same(received, list(GrowingBatches()))
    assert batches.sent > data.PREFETCH + 1  # slots were replaced by larger ones


def test_a_worker_asked_further_ahead_than_its_slots_waits_for_the_trainer():
    # Two slots for four batches asked ahead, and a trainer slower than its worker: the worker
    # must wait for each slot to be copied out before it writes the next batch into it.
    received = []
    for batch in worker_batches(GrowingBatches(), slots=2):
        time.sleep(0.1)
        received.append(batch)
    assert_same(received, list(GrowingBatches()))


def test_a_failing_worker_s_own_error_reaches_the_trainer():
    # The DataLoader gives a failed worker's share of requests to the others, more than their
    # slots: they wait for the trainer, which meets the failure in its turn.
    batches = worker_batches(FailingWorker(), slots=data.PREFETCH + 1, workers=2)
    with pytest.raises(ValueError, match="worker 0 fails at its batch 3"):
        for _ in range(40):
            next(batches)
            time.sleep(0.05)


def test_without_workers_batches_pass_as_they_are():
    loader = DataLoader(SlotStream(GrowingBatches(), slots=2), batch_size=None, num_workers=0)
    assert_same(list(Batches(loader)), list(GrowingBatches()))


def test_the_training_stream_through_a_worker_is_the_stream_read_in_process(tmp_path):
    # Three rounds of the worker's slots, kept together, against the same stream without workers.
    config = stream_config(data.resolve(str(write_shards(tmp_path / "set", shards=2, per_shard=4))).urls)
    count = 3 * (data.PREFETCH + 1)
    in_process = take(data.train_loader(config, 0, 1, 0, (data.Position(),)), count)
    assert batch_digest(take(data.train_loader(config, 0, 1, 1, (data.Position(),)), count)) == batch_digest(in_process)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned memory needs a GPU")
def test_batches_for_a_gpu_are_copied_into_pinned_memory():
    batches = Batches(DataLoader(SlotStream(GrowingBatches(), slots=2), batch_size=None, num_workers=1,
                                 prefetch_factor=data.PREFETCH), pin_memory=True)
    received = list(batches)
    assert all(t.is_pinned() for b in received for t in b.values())
    assert_same(received, list(GrowingBatches()))
