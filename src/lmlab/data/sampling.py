"""Samplers and collation shared by every task."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import Sampler


class LengthGroupedSampler(Sampler[int]):
    """Shuffled order in which runs of ``batch_size`` consecutive indices have similar lengths.

    Shuffles, cuts the permutation into mega-batches of ``mega * batch_size``, sorts each by length and
    shuffles the batches; padding per batch drops to almost nothing. The order depends only on (seed,
    epoch), so a resumed run sees the same batches as an uninterrupted one. ``group=False`` gives a plain
    seeded shuffle.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int, group: bool = True, mega: int = 50):
        self.lengths = torch.as_tensor(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.group = group
        self.mega = mega
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at each epoch start."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def order(self) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 10_007 + self.epoch)
        perm = torch.randperm(len(self.lengths), generator=g)
        if not self.group:
            return perm.tolist()
        step = self.mega * self.batch_size
        batches: list[torch.Tensor] = []
        for start in range(0, len(perm), step):
            chunk = perm[start : start + step]
            chunk = chunk[torch.argsort(self.lengths[chunk], descending=True, stable=True)]
            batches.extend(chunk.split(self.batch_size))
        # Full batches in random order; a short remainder batch (if any) goes last.
        full = [b for b in batches if len(b) == self.batch_size]
        rest = [b for b in batches if len(b) != self.batch_size]
        shuffled = [full[i] for i in torch.randperm(len(full), generator=g).tolist()]
        return torch.cat(shuffled + rest).tolist() if batches else []

    def __iter__(self) -> Iterator[int]:
        return iter(self.order())


def by_length(lengths: Sequence[int]) -> list[int]:
    """Indices longest first: evaluation batches with little padding (metrics do not depend on order)."""
    return torch.argsort(torch.as_tensor(lengths), descending=True, stable=True).tolist()


class PadCollator:
    """Pads each batch to its own longest sequence (dynamic padding) and stacks it into tensors.

    Keys in ``pad_values`` are padded per sequence; any other key must be a scalar per example.
    """

    def __init__(self, pad_values: dict[str, int], padding_side: str = "right"):
        self.pad_values = pad_values
        self.left = padding_side == "left"

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch: dict[str, torch.Tensor] = {}
        for key in rows[0]:
            values = [row[key] for row in rows]
            if key not in self.pad_values:
                batch[key] = torch.tensor(values)
                continue
            width = max(len(v) for v in values)
            out = torch.full((len(values), width), self.pad_values[key], dtype=torch.long)  # (batch, seq)
            for i, v in enumerate(values):
                if v:
                    if self.left:
                        out[i, width - len(v):] = torch.tensor(v)
                    else:
                        out[i, : len(v)] = torch.tensor(v)
            batch[key] = out
        return batch
