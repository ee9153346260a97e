"""Samplers and collation shared by every task."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Sampler


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
        self.resume_at: tuple[int, int] | None = None  # (epoch, first index): set when resuming mid-epoch

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at each epoch start."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def order(self) -> torch.Tensor:
        """This epoch's indices as one int64 tensor: 8 bytes an index, where a list of Python ints takes ~36
        (82 MB for the 2.3M blocks of a 1 GB corpus, more than once while building it)."""
        g = torch.Generator().manual_seed(self.seed * 10_007 + self.epoch)
        perm = torch.randperm(len(self.lengths), generator=g)
        if not self.group:
            return perm
        # Within each mega-batch of the permutation, longest first (ties keep their shuffled order), written into
        # one preallocated tensor: a corpus of millions of blocks costs a few int64 copies, no object per batch.
        step = self.mega * self.batch_size
        ordered = torch.empty_like(perm)
        for start in range(0, len(perm), step):
            chunk = perm[start : start + step]
            ordered[start : start + step] = chunk[torch.argsort(self.lengths[chunk], descending=True, stable=True)]
        del perm
        # Full batches in random order; a short remainder batch (if any) goes last.
        n_full = len(ordered) // self.batch_size
        full = ordered[: n_full * self.batch_size].view(n_full, self.batch_size)
        full[:] = full[torch.randperm(n_full, generator=g)]  # indexing copies first, so no row is read overwritten
        return ordered

    def __iter__(self) -> Iterator[int]:
        order = self.order()
        if self.resume_at is not None:
            epoch, start = self.resume_at
            self.resume_at = None  # only the first pass after a resume is cut short
            if epoch == self.epoch:
                order = order[start:]
        for chunk in order.split(65_536):  # Python ints for a slice at a time, not the whole epoch
            yield from chunk.tolist()


class ResumableDataLoader(DataLoader):
    """A training DataLoader that Lightning checkpoints mid-epoch.

    Lightning calls ``state_dict``/``load_state_dict`` on loaders that have them (fit loop, "combined_loader"
    in the checkpoint). The state is the epoch and how many batches were handed out; a restored loader skips
    those batches, so a run resumed from a step checkpoint sees exactly the batches an uninterrupted run
    would. With lmlab's own sampler the skip is free (indices are cut before any row is read); under another
    sampler (e.g. Lightning's distributed wrapper) the skipped batches are read and dropped.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.served = 0  # batches handed out in the current epoch (including skipped ones after a resume)
        self.skip: tuple[int, int] | None = None  # (epoch, batches) to skip on the next pass

    def _epoch(self) -> int:
        return int(getattr(self.sampler, "epoch", 0))

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self._epoch(), "batches": self.served}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.skip = (int(state["epoch"]), int(state["batches"]))

    def __iter__(self) -> Iterator[Any]:
        skip, self.skip = self.skip, None
        skip_batches = skip[1] if skip is not None and skip[0] == self._epoch() else 0
        self.served = skip_batches
        if skip_batches and isinstance(self.sampler, LengthGroupedSampler) and self.batch_size:
            # (batch_sampler is a BatchSampler over this sampler: n batches = the first n * batch_size indices)
            self.sampler.resume_at = (self.sampler.epoch, skip_batches * self.batch_size)
            skip_batches = 0
        for i, batch in enumerate(super().__iter__()):
            if i < skip_batches:
                continue
            self.served += 1
            yield batch


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
