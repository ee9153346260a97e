"""Language-modeling data: raw text, tokenized line by line or concatenated and cut into blocks.

One datamodule serves both LM tasks. ``data.grouping=block`` (pretraining) concatenates the split's lines,
each tokenized with the tokenizer's own special tokens (BERT: [CLS] line [SEP]; GPT-2: none), and cuts the
stream into blocks of exactly ``data.max_length`` tokens; the last partial block is dropped (Hugging Face's
run_clm/run_mlm ``group_texts``). ``data.grouping=line`` makes each non-blank line one example, truncated at
``data.max_length`` (counted and reported). Masked LM adds character offsets (whole-word masking needs word
boundaries) and, with ``data.next_sentence``, BERT's sentence pairs with a 50 % random second sentence.
"""

from __future__ import annotations

import random
from typing import Any

from lmlab.data.base import TextDataModule
from lmlab.data.loading import resolve_file
from lmlab.data.text import line_range
from lmlab.errors import DataError

# BertForPreTraining's next_sentence_label: 0 = B follows A in the text, 1 = B is a random sentence.
NSP_LABELS = ("is_next", "random")


class LanguageModelingDataModule(TextDataModule):
    """Shared by causal_lm and masked_lm (which only add columns); rows of the raw split are lines."""

    task_name = "language_modeling"
    encode_batch_size = None  # blocks and sentence pairs span the whole split, so encode it in one call
    with_offsets = False  # emit offset_start/offset_end per token (character offsets in its line)

    def __init__(self, data_cfg: Any, tokenizer: Any, **kwargs: Any):
        if "grouping" not in data_cfg:
            raise DataError(
                f"task={self.task_name} reads raw text, but data={data_cfg.name} is not a text data config (it has "
                "no data.grouping). Fix: data=wikitext2 or data=tinyshakespeare (with data.files.* set to your own "
                "text files if you like)."
            )
        super().__init__(data_cfg, tokenizer, **kwargs)

    # -- what a task defines ------------------------------------------------------------------------
    def columns(self, split: str) -> list[str]:
        return [self.cfg.text_column]

    def corpus_columns(self) -> list[str]:
        return [self.cfg.text_column]

    def corpus_fingerprint(self) -> str:
        """The train lines a tokenizer learns from depend on data.line_ranges.train too."""
        return f"{super().corpus_fingerprint()}|lines={line_range(self.cfg, 'train')}"

    def select_rows(self, raw: Any, split: str) -> Any:
        """The first data.limit_*_samples lines, in file order: blocks and sentence pairs need neighbours."""
        limit = self._limit(split)
        return raw.select(range(limit)) if limit is not None and limit < len(raw) else raw

    def encode(self, batch: dict[str, list[Any]], split: str) -> dict[str, list[Any]]:
        texts = [str(t) for t in batch[self.cfg.text_column] if t is not None]
        if self.cfg.grouping == "line":
            return self.encode_lines(texts, split)
        return self.encode_blocks(texts, split)

    # -- encodings ----------------------------------------------------------------------------------
    def _source(self, split: str) -> str:
        return self.sources.get(split) or str(resolve_file(self.cfg, split))

    def _tokenize(self, texts: list[str], pairs: list[str] | None = None, truncate: bool = False) -> dict[str, list]:
        """Token ids (+ character offsets as offset_start/offset_end where ``with_offsets``)."""
        enc = self.tokenizer(texts, pairs, truncation="longest_first" if truncate else False,
                             max_length=self.cfg.max_length if truncate else None,
                             return_offsets_mapping=self.with_offsets, verbose=False)
        out = {k: v for k, v in enc.items() if k != "offset_mapping"}
        if self.with_offsets:
            out["offset_start"] = [[s for s, _ in row] for row in enc["offset_mapping"]]
            out["offset_end"] = [[e for _, e in row] for row in enc["offset_mapping"]]
        return out

    def encode_lines(self, texts: list[str], split: str, pairs: list[str] | None = None) -> dict[str, list]:
        """One example per line (or line pair), truncated at data.max_length; blank lines are skipped."""
        if pairs is None:
            texts = [t.strip() for t in texts if t.strip()]
        if not texts:
            raise DataError(
                f"The {split} data {self._source(split)} has no non-blank line among the lines read (data.limit_"
                f"{split.replace('validation', 'val')}_samples={self._limit(split)}). Fix: raise that limit or set it to null."
            )
        out = self._tokenize(texts, pairs, truncate=True)
        full = self.tokenizer(texts, pairs, truncation=False, return_attention_mask=False,
                              return_token_type_ids=False, verbose=False)
        out["length"] = [len(ids) for ids in out["input_ids"]]
        out["untruncated_length"] = [len(ids) for ids in full["input_ids"]]
        return out

    def encode_blocks(self, texts: list[str], split: str) -> dict[str, list]:
        """Every line's tokens concatenated and cut into blocks of data.max_length (the rest is dropped)."""
        size = self.cfg.max_length
        encoded = self._tokenize(texts)
        stream = {key: [x for row in rows for x in row] for key, rows in encoded.items()}
        total = len(stream["input_ids"])
        if total < size:
            raise DataError(
                f"The {split} data {self._source(split)} has {total} tokens, fewer than one block of "
                f"data.max_length={size} tokens, so data.grouping=block makes no example from it. Fix: "
                f"data.max_length={total} (or less), data.grouping=line, or more text in that file."
            )
        blocks = total // size
        out = {key: [values[i * size:(i + 1) * size] for i in range(blocks)] for key, values in stream.items()}
        out["length"] = [size] * blocks
        out["untruncated_length"] = [size] * blocks  # blocks are cut, never truncated
        return out

    # -- statistics ---------------------------------------------------------------------------------
    def _build_split(self, split: str) -> tuple[Any, dict[str, Any]]:
        encoded, stats = super()._build_split(split)
        # Rows are blocks/lines/pairs while the file counts lines: keep the line counts apart, so the report
        # does not read fewer blocks than lines as a data.limit_* cut.
        lines = stats["rows_in_file"]  # of the split (its data.line_ranges part of the file)
        limit = self._limit(split)
        stats.update(lines=lines, lines_read=min(limit or lines, lines),
                     tokens=sum(encoded["length"]), grouping=self.cfg.grouping, rows_in_file=stats["rows"])
        return encoded, stats


class CausalLMDataModule(LanguageModelingDataModule):
    task_name = "causal_lm"


class MaskedLMDataModule(LanguageModelingDataModule):
    """Adds character offsets (for whole-word masking) and, with data.next_sentence, sentence pairs."""

    task_name = "masked_lm"
    with_offsets = True

    def pad_values(self) -> dict[str, int]:
        return {**super().pad_values(), "offset_start": 0, "offset_end": 0}

    def discover_labels(self, train: Any) -> list[str] | None:
        """The NSP classes when sentence pairs are on (the task then builds BertForPreTraining)."""
        return list(NSP_LABELS) if self.cfg.next_sentence else None

    def encode(self, batch: dict[str, list[Any]], split: str) -> dict[str, list[Any]]:
        if not self.cfg.next_sentence:
            return super().encode(batch, split)
        lines = [str(t).strip() for t in batch[self.cfg.text_column] if t is not None and str(t).strip()]
        firsts, seconds, labels = self.sentence_pairs(lines, split)
        out = self.encode_lines(firsts, split, pairs=seconds)
        out["next_sentence_label"] = labels
        return out

    def sentence_pairs(self, lines: list[str], split: str) -> tuple[list[str], list[str], list[int]]:
        """(A, B, label) for each line A: B is the next line (label 0) or, half of the time, a random line
        that is neither A nor its successor (label 1). Seeded by (seed, split): the same pairs every run."""
        if len(lines) < 3:
            raise DataError(
                f"The {split} data {self._source(split)} has {len(lines)} non-blank line(s); next-sentence pairs "
                "need at least 3 (a next line and a random other one). Fix: more text, or data.next_sentence=false."
            )
        rng = random.Random(f"{self.seed}:{split}")
        firsts, seconds, labels = [], [], []
        for i in range(len(lines) - 1):
            if rng.random() < 0.5:
                j, label = i + 1, 0
            else:
                j = rng.randrange(len(lines) - 2)  # then skip over i and i + 1
                j, label = (j + 2 if j >= i else j), 1
            firsts.append(lines[i])
            seconds.append(lines[j])
            labels.append(label)
        return firsts, seconds, labels
