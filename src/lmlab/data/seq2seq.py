"""Seq2seq data (translation, summarization): a source text and a target text per row.

Rows come from line-aligned files (data.format=parallel, see data/parallel.py) or from JSONL/JSON/CSV/TSV
with data.source_column / data.target_column. Sources are encoded up to data.max_length tokens (after
data.source_prefix), targets up to data.max_target_length; both sides' truncations are counted and reported.
Validation/test batches also carry the raw target texts, the references BLEU and ROUGE are computed against.

Empty pairs (a blank source or target) are skipped, counted and reported by default (data.skip_empty): one
blank line in a 29k-line corpus should not stop a run, and a pair with an empty side teaches nothing
(an empty reference also leaves BLEU undefined for that sentence). data.skip_empty=false makes them an
error naming the file and lines. `lmlab predict` keeps every input line, empty or not, so its output has
one line per input line.
"""

from __future__ import annotations

import logging
from typing import Any

from lmlab.data.base import TextDataModule, file_fingerprint
from lmlab.data.loading import column_values, resolve_file
from lmlab.data.sampling import PadCollator
from lmlab.errors import DataError

log = logging.getLogger(__name__)

REFERENCE_KEY = "target_text"  # batch key of the raw reference texts (validation/test)
LABEL_PAD = -100  # ignored by the cross-entropy loss of every transformers seq2seq model


class ReferenceCollator:
    """PadCollator for the token columns; the reference texts pass through as a list of strings."""

    def __init__(self, pad: PadCollator):
        self.pad = pad

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        if REFERENCE_KEY not in rows[0]:
            return self.pad(rows)
        batch: dict[str, Any] = self.pad([{k: v for k, v in row.items() if k != REFERENCE_KEY} for row in rows])
        batch[REFERENCE_KEY] = [row[REFERENCE_KEY] for row in rows]
        return batch


class Seq2SeqDataModule(TextDataModule):
    task_name = "seq2seq"

    def __init__(self, data_cfg: Any, tokenizer: Any, **kwargs: Any):
        if "source_column" not in data_cfg:
            raise DataError(
                f"task=seq2seq reads source/target pairs, but data={data_cfg.name} is not a seq2seq data config "
                "(no data.source_column / data.target_column). Fix: data=multi30k (with data.root / data.files "
                "pointing at your own line-aligned files, or data.format=jsonl)."
            )
        super().__init__(data_cfg, tokenizer, **kwargs)
        self.empty_rows: dict[str, list[int]] = {}  # split -> 0-based rows with an empty side (skipped)

    def has_targets(self, split: str) -> bool:
        return split != "predict"

    def columns(self, split: str) -> list[str]:
        cols = [self.cfg.source_column]
        if self.has_targets(split):
            cols.append(self.cfg.target_column)
        return cols

    def corpus_columns(self) -> list[str]:
        """A tokenizer trained for a seq2seq model learns both languages/sides: one shared vocabulary."""
        return [self.cfg.source_column, self.cfg.target_column]

    def source_fingerprint(self, split: str) -> str:
        """Parallel splits are two files; both contents go into the cache keys."""
        path = resolve_file(self.cfg, split)
        if self.cfg.format != "parallel" or path is None:
            return super().source_fingerprint(split)
        from lmlab.data.parallel import parallel_files

        return "|".join(file_fingerprint(p) if p.is_file() else f"missing:{p}"
                        for p in parallel_files(path, self.cfg, split))

    def check_split(self, ds: Any, split: str, source: str) -> None:
        if not self.has_targets(split):
            return
        sides = list(zip(*(column_values(ds, c) for c in self.columns(split)), strict=True))
        empty = [i for i, pair in enumerate(sides) if any(v is None or not str(v).strip() for v in pair)]
        if not empty:
            return
        lines = ", ".join(str(i + 1) for i in empty[:10]) + (" ..." if len(empty) > 10 else "")
        if len(empty) == len(sides):
            raise DataError(
                f"Every one of the {len(sides)} {split} pairs in {source} has an empty source or target. Fix: check "
                "data.source_column / data.target_column (or the suffixes) and the files' contents."
            )
        if not self.cfg.skip_empty:
            raise DataError(
                f"The {split} data {source} has {len(empty)} pair(s) with an empty source or target (rows {lines}). "
                "Fix: remove or fill those lines (in both files of a parallel pair, to keep them aligned), or "
                "data.skip_empty=true to skip them."
            )
        self.empty_rows[split] = empty

    def select_rows(self, raw: Any, split: str) -> Any:
        """Drop the empty pairs found by check_split, then apply data.limit_*_samples."""
        skip = set(self.empty_rows.get(split, []))
        if skip:
            raw = raw.select([i for i in range(len(raw)) if i not in skip])
        return super().select_rows(raw, split)

    def encode(self, batch: dict[str, list[Any]], split: str) -> dict[str, list[Any]]:
        prefix = self.cfg.source_prefix
        sources = [prefix + ("" if s is None else str(s)) for s in batch[self.cfg.source_column]]
        enc = self.tokenizer(sources, truncation=True, max_length=self.cfg.max_length)
        out: dict[str, list[Any]] = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
                                     "length": [len(ids) for ids in enc["input_ids"]],
                                     "untruncated_length": self._untruncated_lengths(sources)}
        if self.has_targets(split):
            targets = [str(t) for t in batch[self.cfg.target_column]]
            out["labels"] = self.tokenizer(text_target=targets, truncation=True,
                                           max_length=self.cfg.max_target_length)["input_ids"]
            out["untruncated_target_length"] = self._untruncated_lengths(targets, target=True)
            if split != "train":
                out[REFERENCE_KEY] = targets  # BLEU/ROUGE score against the text as written in the file
        return out

    def _untruncated_lengths(self, texts: list[str], target: bool = False) -> list[int]:
        """Token counts without truncation, only to report how many texts the length limits cut."""
        kwargs = {"text_target": texts} if target else {"text": texts}
        full = self.tokenizer(**kwargs, truncation=False, return_attention_mask=False, verbose=False)
        return [len(ids) for ids in full["input_ids"]]

    def pad_values(self) -> dict[str, int]:
        return {**super().pad_values(), "labels": LABEL_PAD}

    def collator(self) -> ReferenceCollator:
        return ReferenceCollator(super().collator())

    # -- counting what was skipped or cut -----------------------------------------------------------
    def _build_split(self, split: str) -> tuple[Any, dict[str, Any]]:
        encoded, stats = super()._build_split(split)
        stats["empty_skipped"] = len(self.empty_rows.get(split, []))
        if "untruncated_target_length" in encoded.column_names:
            limit = self.cfg.max_target_length
            stats["truncated_targets"] = sum(1 for n in encoded["untruncated_target_length"] if n > limit)
            encoded = encoded.remove_columns(["untruncated_target_length"])
        return encoded, stats

    def _report(self, split: str) -> None:
        super()._report(split)
        s = self.stats[split]
        if s.get("empty_skipped"):
            log.warning(
                "data %s: skipped %d pair(s) of %s with an empty source or target (data.skip_empty=true); "
                "%d pairs remain.", split, s["empty_skipped"], s["source"], s["rows"])
        if s.get("truncated_targets"):
            log.warning(
                "data %s: %d of %d targets in %s are longer than data.max_target_length=%d tokens and were "
                "truncated. Raise data.max_target_length to keep them whole.", split, s["truncated_targets"],
                s["rows"], s["source"], self.cfg.max_target_length)
