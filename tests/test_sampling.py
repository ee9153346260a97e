"""Length-grouped sampling and dynamic padding: deterministic, complete, and actually less padding."""

from __future__ import annotations

import random

import torch

from lmlab.data.sampling import LengthGroupedSampler, PadCollator, by_length


def _lengths(n: int = 1000, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    return [rng.randint(3, 60) for _ in range(n)]


def _padding(order: list[int], lengths: list[int], batch: int) -> int:
    """Pad tokens spent when batches are cut from ``order`` and padded to their longest row."""
    total = 0
    for start in range(0, len(order), batch):
        rows = [lengths[i] for i in order[start : start + batch]]
        total += max(rows) * len(rows) - sum(rows)
    return total


def test_every_index_exactly_once_per_epoch():
    lengths = _lengths(1003)
    sampler = LengthGroupedSampler(lengths, batch_size=32, seed=1)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        assert sorted(sampler) == list(range(1003))


def test_order_depends_only_on_seed_and_epoch():
    lengths = _lengths()
    a, b = LengthGroupedSampler(lengths, 32, seed=5), LengthGroupedSampler(lengths, 32, seed=5)
    torch.manual_seed(123)  # the global RNG must not matter (resume restores no RNG for the sampler)
    first = list(a)
    torch.manual_seed(999)
    assert list(b) == first
    a.set_epoch(1)
    assert list(a) != first, "a new epoch reshuffles"
    assert list(LengthGroupedSampler(lengths, 32, seed=6)) != first


def test_grouping_cuts_padding_by_an_order_of_magnitude():
    lengths = _lengths(4000)
    grouped = LengthGroupedSampler(lengths, 32, seed=0)
    shuffled = LengthGroupedSampler(lengths, 32, seed=0, group=False)
    pad_grouped, pad_random = _padding(list(grouped), lengths, 32), _padding(list(shuffled), lengths, 32)
    assert pad_grouped * 10 < pad_random, (pad_grouped, pad_random)


def test_eval_order_is_longest_first_and_complete():
    lengths = [5, 9, 1, 9, 3]
    order = by_length(lengths)
    assert order == [1, 3, 0, 4, 2]


def test_pad_collator_pads_to_the_longest_row_of_each_batch():
    collate = PadCollator({"input_ids": 0, "attention_mask": 0})
    batch = collate([{"input_ids": [101, 7, 102], "attention_mask": [1, 1, 1], "labels": 1},
                     {"input_ids": [101, 102], "attention_mask": [1, 1], "labels": 0}])
    assert batch["input_ids"].tolist() == [[101, 7, 102], [101, 102, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["labels"].tolist() == [1, 0]
    left = PadCollator({"input_ids": 0}, padding_side="left")([{"input_ids": [1, 2]}, {"input_ids": [3]}])
    assert left["input_ids"].tolist() == [[1, 2], [0, 3]]
