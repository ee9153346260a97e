"""Language-modeling data: raw text, tokenized line by line or concatenated and cut into blocks.

One datamodule serves both LM tasks. ``data.grouping=block`` (pretraining) concatenates the split's lines,
each tokenized with the tokenizer's own special tokens (BERT: [CLS] line [SEP]; GPT-2: none), and cuts the
stream into blocks of exactly ``data.max_length`` tokens; the last partial block is dropped (Hugging Face's
run_clm/run_mlm ``group_texts``). ``data.grouping=line`` makes each non-blank line one example, truncated at
``data.max_length`` (counted and reported). Masked LM adds character offsets (whole-word masking needs word
boundaries) and, with ``data.next_sentence``, BERT's sentence pairs with a 50 % random second sentence.

Corpus scale (a split of gigabytes in flat memory): lines are tokenized in batches of ``LINES_PER_BATCH``
by ``datasets.map`` (``data.num_proc`` worker processes, each writing an Arrow file into the cache's work
directory), then ``cut_blocks`` streams that per-line table back batch by batch and writes the blocks to
another Arrow file, carrying each batch's unfinished block into the next. So the blocks are exactly those
of one stream cut into ``max_length`` pieces, as before this change, for any file size, batch size or
number of processes (Hugging Face's run_mlm instead drops a partial block per map batch, because its group
step is a parallel map). The cut is sequential, but it only copies Arrow buffers (0.3 s for 20 MB of text
against 25 s for the tokenizing map, measured on a loaded 2-core machine): the map is the parallel part. Token ids,
offsets and lengths are int32, attention_mask and token_type_ids int8 (constant over a block, but
causal_lm's loss and transformers' models read them, so they are kept). Next-sentence pairs draw partners
from the whole split: that path still encodes the split in one call (it is not the corpus-scale path).
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from lmlab.data.base import TextDataModule, numbers
from lmlab.data.loading import resolve_file
from lmlab.data.text import line_range
from lmlab.errors import DataError

# BertForPreTraining's next_sentence_label: 0 = B follows A in the text, 1 = B is a random sentence.
NSP_LABELS = ("is_next", "random")
LINES_PER_BATCH = 1000  # lines per tokenizer call (one map batch): bounds each process's Python objects
GROUP_ROWS = 50_000  # tokenized lines per chunk of the block cut of an in-memory split (no cache)
NUM_PROC_ROWS = 50_000  # data.num_proc=null: worker processes only for splits of at least this many lines
NUM_PROC_MAX = 8  # data.num_proc=null: at most this many (each holds a tokenizer and one batch)
SMALL_COLUMNS = ("attention_mask", "token_type_ids", "special_tokens_mask")  # 0/1 per token: int8
SCALAR_COLUMNS = ("length", "untruncated_length", "next_sentence_label")  # one value per example


def usable_cores() -> int:
    """CPU cores this process may run on (the affinity mask, not the machine's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def as_table(columns: dict[str, list]) -> Any:
    """Encoder output as a pyarrow table with small integer types (int32 ids/offsets/lengths, int8 masks)."""
    def arrow_type(key: str) -> Any:
        if key in SCALAR_COLUMNS:
            return pa.int32()
        return pa.list_(pa.int8() if key in SMALL_COLUMNS else pa.int32())  # one value per token

    return pa.table({key: pa.array(rows, type=arrow_type(key)) for key, rows in columns.items()})


def flat_lists(rows: Any, lengths: Any, key: str) -> Any:
    """A pyarrow list column from per-row lists (or one flat numpy array) and the row lengths."""
    dtype = np.int8 if key in SMALL_COLUMNS else np.int32
    values = rows if isinstance(rows, np.ndarray) else np.fromiter(chain.from_iterable(rows), dtype=dtype,
                                                                   count=int(lengths.sum()))
    offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values.astype(dtype, copy=False)))


def arrow_chunks(ds: Any) -> Iterator[Any]:
    """A dataset's rows in order as pyarrow tables. A map output is read from its Arrow files as streams
    (not memory-mapped: the pages of a mapped file count in the process's RSS until it is unmapped, which
    for a corpus is gigabytes); an in-memory dataset in chunks of GROUP_ROWS rows."""
    files = [f["filename"] for f in ds.cache_files]
    if not files or ds._indices is not None:
        yield from ds.with_format("arrow").iter(batch_size=GROUP_ROWS)
        return
    rows = 0
    for name in files:  # a map with num_proc: one file per worker, in row order
        with pa.OSFile(name) as source:
            for batch in pa.ipc.open_stream(source):
                rows += batch.num_rows
                yield pa.Table.from_batches([batch]).select(ds.column_names)
    if rows != len(ds):  # a view of part of its files would need the other path
        raise RuntimeError(f"read {rows} rows from {files}, expected {len(ds)}")


def cut_blocks(lines: Any, size: int) -> Iterator[Any]:
    """Tables of blocks of exactly ``size`` tokens from a per-line tokenized dataset: every token column
    concatenated in row order and cut, the rest of each chunk carried into the next; the last partial block
    is dropped."""
    import pyarrow.compute as pc

    columns = [c for c in lines.column_names if c not in ("length", "untruncated_length")]
    carry: dict[str, Any] = {}  # per column: the tokens after the last full block so far
    for chunk in arrow_chunks(lines):
        flat = {c: pc.list_flatten(chunk[c]).combine_chunks() for c in columns}
        stream = {c: pa.concat_arrays([carry[c], flat[c]]) if carry else flat[c] for c in columns}
        blocks = len(stream[columns[0]]) // size
        offsets = pa.array(np.arange(0, blocks * size + 1, size, dtype=np.int32))
        out = {c: pa.ListArray.from_arrays(offsets, stream[c].slice(0, blocks * size)) for c in columns}
        lengths = pa.array(np.full(blocks, size, dtype=np.int32))
        out.update(length=lengths, untruncated_length=lengths)  # blocks are cut, never truncated
        carry = {c: stream[c].slice(blocks * size) for c in columns}
        yield pa.table(out)


class LanguageModelingDataModule(TextDataModule):
    """Shared by causal_lm and masked_lm (which only add columns); rows of the raw split are lines."""

    task_name = "language_modeling"
    labels_from_data = False  # no classes; NSP's two are fixed
    with_offsets = False  # emit offset_start/offset_end per token (character offsets in its line)

    def __init__(self, data_cfg: Any, tokenizer: Any, **kwargs: Any):
        if "grouping" not in data_cfg:
            raise DataError(
                f"task={self.task_name} reads raw text, but data={data_cfg.name} is not a text data config (it has "
                "no data.grouping). Fix: data=wikitext2 or data=tinyshakespeare (with data.files.* set to your own "
                "text files if you like)."
            )
        super().__init__(data_cfg, tokenizer, **kwargs)

    @property
    def encode_batch_size(self) -> int | None:  # type: ignore[override]
        """Lines per encode call; None (the whole split in one call) for sentence pairs, which draw partners
        from anywhere in the split."""
        return None if self.cfg.get("next_sentence") else LINES_PER_BATCH

    def num_proc(self, rows: int) -> int | None:
        """data.num_proc, or (null) every usable core up to NUM_PROC_MAX for splits of NUM_PROC_ROWS lines."""
        if self.encode_batch_size is None:
            return None
        wanted = self.cfg.num_proc
        if wanted is None:
            wanted = min(usable_cores(), NUM_PROC_MAX) if rows >= NUM_PROC_ROWS else 1
        wanted = min(wanted, -(-rows // LINES_PER_BATCH))  # no idle workers for a short split
        return wanted if wanted > 1 else None

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

    def encode(self, batch: dict[str, list[Any]], split: str) -> Any:
        """A batch of lines -> a pyarrow table: one row per non-blank line (line grouping) or per line
        (block grouping: ``regroup`` cuts the blocks)."""
        texts = [str(t) for t in batch[self.cfg.text_column] if t is not None]
        if self.cfg.grouping == "line":
            return as_table(self.encode_lines(texts, split))
        return self.encode_stream(texts)

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
        """One example per line (or line pair), truncated at data.max_length; blank lines are skipped (a
        batch of only blank lines gives no row; ``regroup`` reports a split without any)."""
        if pairs is None:
            texts = [t.strip() for t in texts if t.strip()]
        empty = not texts
        texts = texts or [""]  # tokenized for the column set and types only, then cut to zero rows
        out = self._tokenize(texts, pairs, truncate=True)
        full = self.tokenizer(texts, pairs, truncation=False, return_attention_mask=False,
                              return_token_type_ids=False, verbose=False)
        out["length"] = [len(ids) for ids in out["input_ids"]]
        out["untruncated_length"] = [len(ids) for ids in full["input_ids"]]
        return {key: [] for key in out} if empty else out

    def encode_stream(self, texts: list[str]) -> Any:
        """Each line's tokens (with the tokenizer's special tokens) as a pyarrow table, to be concatenated
        into blocks. A fast tokenizer's encodings go straight into flat numpy arrays: the transformers call
        would first build Python lists of lists, which costs as much as the tokenization itself."""
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is None or backend.truncation is not None or backend.padding is not None:
            out = self._tokenize(texts)
            out["length"] = [len(ids) for ids in out["input_ids"]]
            out["untruncated_length"] = out["length"]
            return as_table(out)
        encodings = backend.encode_batch(texts)  # what tokenizer(texts) runs (special tokens added)
        lengths = np.fromiter((len(e) for e in encodings), dtype=np.int32, count=len(encodings))
        tokens = int(lengths.sum())
        names = self.tokenizer.model_input_names
        table = {"input_ids": flat_lists([e.ids for e in encodings], lengths, "input_ids")}
        if "token_type_ids" in names:  # one unpadded sentence: all 0, unless the template says otherwise (XLNet)
            constant = not encodings or not any(encodings[0].type_ids)
            table["token_type_ids"] = flat_lists(np.zeros(tokens, np.int8) if constant else
                                                 [e.type_ids for e in encodings], lengths, "token_type_ids")
        if "attention_mask" in names:  # no padding: every token is attended
            table["attention_mask"] = flat_lists(np.ones(tokens, np.int8), lengths, "attention_mask")
        if self.with_offsets:
            spans = np.fromiter(chain.from_iterable(chain.from_iterable(e.offsets for e in encodings)),
                                dtype=np.int32, count=2 * tokens).reshape(-1, 2)  # (tokens, 2)
            table["offset_start"] = flat_lists(spans[:, 0], lengths, "offset_start")
            table["offset_end"] = flat_lists(spans[:, 1], lengths, "offset_end")
        table["length"] = table["untruncated_length"] = pa.array(lengths)
        return pa.table(table)

    def regroup(self, encoded: Any, split: str, work: Path | None) -> Any:
        """Block grouping: the per-line tokens cut into blocks of data.max_length (``cut_blocks``), written
        to an Arrow file in ``work`` (in memory without one). Line grouping: checks some line was kept."""
        if self.cfg.grouping == "line" or self.cfg.get("next_sentence"):
            if len(encoded) == 0:
                raise DataError(
                    f"The {split} data {self._source(split)} has no non-blank line among the lines read "
                    f"({self._limit_key(split)}={self._limit(split)}). Fix: raise that limit or set it to null.")
            return encoded
        import datasets
        from datasets.arrow_writer import ArrowWriter

        size, tables, writer, rows = self.cfg.max_length, [], None, 0
        path = None if work is None else work / "blocks.arrow"
        for table in cut_blocks(encoded, size):
            rows += table.num_rows
            if path is None:
                tables.append(table)
                continue
            writer = writer or ArrowWriter(path=str(path), schema=table.schema)
            writer.write_table(table)
        if rows == 0:
            if writer is not None:
                writer.finalize()
            tokens = int(numbers(encoded, "length").sum())
            limit = self._limit(split)
            key = self._limit_key(split)
            read = f" in the {limit} lines read ({key}={limit})" if limit is not None else ""
            more = f"a larger {key} (or null)" if limit is not None else "more text in that file"
            raise DataError(
                f"The {split} data {self._source(split)} has {tokens} tokens{read}, fewer than one block of "
                f"data.max_length={size} tokens, so data.grouping=block makes no example from it. Fix: "
                f"data.max_length={tokens} (or less), data.grouping=line, or {more}."
            )
        if writer is None:
            return datasets.Dataset(pa.concat_tables(tables))
        writer.finalize()
        return datasets.Dataset.from_file(str(path))

    def prepare_data(self) -> None:
        """As TextDataModule's, but labels come from the config (NSP classes or none), so the train text is
        not opened for them: a cache hit on a corpus then costs no pass over its Arrow file."""
        if self.label_names is None:
            self.label_names = self.discover_labels(None)
        for split in self.splits:
            if split not in self.datasets:
                self._load_or_build(split)
                self._report(split)

    # -- statistics ---------------------------------------------------------------------------------
    def _build_split(self, split: str) -> tuple[Any, dict[str, Any]]:
        encoded, stats = super()._build_split(split)
        # Rows are blocks/lines/pairs while the file counts lines: keep the line counts apart, so the report
        # does not read fewer blocks than lines as a data.limit_* cut.
        lines = stats["rows_in_file"]  # of the split (its data.line_ranges part of the file)
        limit = self._limit(split)
        stats.update(lines=lines, lines_read=min(limit or lines, lines),
                     tokens=int(numbers(encoded, "length").sum()), grouping=self.cfg.grouping, rows_in_file=stats["rows"])
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
        return as_table(out)

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
