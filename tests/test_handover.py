"""Batches handed from loader worker processes to the trainer's process through reused slots."""

from __future__ import annotations

import multiprocessing
import time

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, IterableDataset

from restore import data
from restore.handover import Batches, SlotStream

BATCHES = 12


class GrowingBatches(IterableDataset):
    """Collated batches that grow every fourth batch, past what a slot made for the first holds."""

    def __iter__(self):
        for n in range(BATCHES):
            width = 4 + 6 * (n // 4)
            examples = [{"pixels": np.full((3, width), n * 10 + i, np.uint8),
                         "tokens": np.arange(width, dtype=np.float16) + n,
                         "present": np.bool_(i % 2)} for i in range(2)]
            yield data.collate(examples, position=np.array([n, width], np.int64))


def worker_batches(slots: int) -> Batches:
    loader = DataLoader(SlotStream(GrowingBatches(), slots), batch_size=None, num_workers=1,
                        prefetch_factor=data.PREFETCH, multiprocessing_context=multiprocessing.get_context("forkserver"))
    return Batches(loader)


def test_batches_from_a_worker_arrive_whole_and_stay_valid_when_kept():
    # All twelve are kept: more than the worker's slots, so a batch that still pointed into its
    # slot would have been overwritten by then; the growing sizes make the worker replace slots.
    received = list(worker_batches(slots=data.PREFETCH + 1))
    expected = list(GrowingBatches())
    assert len(received) == BATCHES
    for got, want in zip(received, expected):
        assert list(got) == list(want)
        for name in want:
            assert got[name].dtype == want[name].dtype and torch.equal(got[name], want[name]), name


def test_a_batch_overwritten_before_the_trainer_copied_it_is_refused():
    # One slot for four batches asked ahead: while this process sleeps, the worker writes the
    # next batches into the slot the waiting one is in.
    with pytest.raises(RuntimeError, match="reused slot 0"):
        for _ in worker_batches(slots=1):
            time.sleep(0.3)


def test_without_workers_batches_pass_as_they_are():
    loader = DataLoader(SlotStream(GrowingBatches(), slots=2), batch_size=None, num_workers=0)
    for got, want in zip(Batches(loader), GrowingBatches()):
        assert all(torch.equal(got[name], want[name]) for name in want)
