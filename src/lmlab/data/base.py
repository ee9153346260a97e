"""TextDataModule: the data machinery every task shares.

Load each split (local file or hub), check it, tokenize it once into an on-disk cache keyed by the data
files + tokenizer + max_length + processing options, and serve it with dynamic padding and length-grouped
batches. A task subclass says only which columns it reads and how a batch of rows is encoded.
"""

from __future__ import annotations

import copy
import gc
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from filelock import FileLock
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from lmlab.data.loading import load_split, require_columns, resolve_file
from lmlab.data.sampling import LengthGroupedSampler, PadCollator, ResumableDataLoader, by_length

log = logging.getLogger(__name__)

CACHE_FORMAT = 3  # bump when the cached layout or encoding logic changes (3: the build's Arrow files, moved)
HASH_FULL_FILE_BYTES = 64 * 1024 * 1024
SPLITS = ("train", "validation", "test")  # plus "predict", set up by `lmlab predict`


def file_fingerprint(path: Path) -> str:
    """Content hash for ordinary files; size + mtime for very large ones (hashing 1 GB costs seconds)."""
    stat = path.stat()
    if stat.st_size > HASH_FULL_FILE_BYTES:
        return f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """Hash of everything that changes token ids: vocab/merges/normalizer (fast tokenizers) + settings."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        state = json.loads(backend.to_str())
        # Each call sets the backend's truncation/padding state; it is not part of the vocabulary.
        state.pop("truncation", None)
        state.pop("padding", None)
        body = json.dumps(state, sort_keys=True)
    else:
        body = json.dumps(tokenizer.get_vocab(), sort_keys=True)
    extra = f"{type(tokenizer).__name__}|{tokenizer.padding_side}|{tokenizer.truncation_side}"
    return hashlib.sha256((body + extra).encode()).hexdigest()[:16]


def numbers(ds: Any, name: str) -> np.ndarray:
    """A numeric column as one numpy array (a corpus's millions of lengths, not a Python list)."""
    return np.asarray(ds.with_format("numpy")[name][:])


def store_split(encoded: Any, work: Path, directory: Path) -> dict[str, Any]:
    """Keep ``encoded``'s rows as Arrow files in ``directory``; returns how to load them (``load_stored``).

    The Arrow files a build wrote into its ``work`` directory (the tokenizing map's shards, the blocks) are
    moved there: a rename, where ``save_to_disk`` would copy them (4 GB of blocks for a 1 GB corpus, and twice the
    disk while both copies exist). A dataset held in memory or seen through an index mapping is written once."""
    files = [Path(f["filename"]) for f in encoded.cache_files]
    if files and encoded._indices is None and all(f.parent == work for f in files):
        for f in files:
            os.replace(f, directory / f.name)  # the open memory map keeps reading the same inode
        return {"files": [f.name for f in files], "columns": encoded.column_names}
    from datasets.arrow_writer import ArrowWriter

    writer = ArrowWriter(path=str(directory / "data.arrow"), features=encoded.features)
    for table in encoded.with_format("arrow").iter(batch_size=10_000):
        writer.write_table(table)
    writer.finalize()
    return {"files": ["data.arrow"], "columns": encoded.column_names}


def load_stored(directory: Path, store: dict[str, Any]) -> Any:
    """The memory-mapped dataset ``store_split`` kept in ``directory`` (rows in file order)."""
    import datasets

    parts = [datasets.Dataset.from_file(str(directory / name)) for name in store["files"]]
    dataset = parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)
    return dataset.select_columns(store["columns"])


class TextDataModule(L.LightningDataModule):
    """Shared base; subclasses implement ``columns`` and ``encode`` (and may extend ``pad_values``)."""

    task_name = "text"
    # Raw rows per ``encode`` call; None = the whole split at once (tasks that group rows across a split).
    encode_batch_size: int | None = 1000
    # False when discover_labels does not look at the rows (language modeling): the train file is then not read
    # for it, and no label list is cached.
    labels_from_data = True

    def __init__(self, data_cfg: DictConfig, tokenizer: Any, seed: int = 0, label_names: list[str] | None = None,
                 splits: tuple[str, ...] = SPLITS):
        super().__init__()
        self.cfg = data_cfg
        self.tokenizer = tokenizer
        self.seed = seed
        self.label_names = list(label_names) if label_names is not None else None
        self.splits = tuple(s for s in splits if resolve_file(data_cfg, s) is not None or
                            (data_cfg.hub.path and data_cfg.hub.get(f"{s}_split")))
        self.datasets: dict[str, Any] = {}
        self.sources: dict[str, str] = {}  # split -> the file (or hub name) it was read from, for messages
        self.stats: dict[str, dict[str, Any]] = {}
        self.cache_hits: dict[str, bool] = {}
        self._tokenizer_key: str | None = None  # tokenizer_fingerprint, once per datamodule (it hashes the vocab)

    # -- what a task defines ------------------------------------------------------------------------
    def columns(self, split: str) -> list[str]:
        """Raw columns ``encode`` reads for this split."""
        raise NotImplementedError

    def discover_labels(self, train: Any) -> list[str] | None:
        """Label names from the training split (None for tasks without labels)."""
        return None

    def check_split(self, ds: Any, split: str, source: str) -> None:
        """Task-specific checks of a raw split (e.g. labels unseen in train)."""

    def encode(self, batch: dict[str, list[Any]], split: str) -> dict[str, list[Any]]:
        """Tokenize a batch of raw rows; must return a ``length`` column (tokens per example)."""
        raise NotImplementedError

    def corpus_columns(self) -> list[str]:
        """Text columns of the train split a tokenizer trained for this task learns from."""
        return [c for c in (self.cfg.get("text_column"), self.cfg.get("text_pair_column")) if c]

    def corpus(self) -> Iterator[str]:
        """Every text of the train split's corpus columns (a list of words is joined with spaces)."""
        raw, source = load_split(self.cfg, "train", self._raw_cache_dir())
        columns = self.corpus_columns()
        require_columns(raw, columns, source, "train")
        for batch in raw.select_columns(columns).iter(batch_size=1000):
            for column in columns:
                for value in batch[column]:
                    if value is not None:
                        yield " ".join(map(str, value)) if isinstance(value, list) else str(value)

    def source_fingerprint(self, split: str) -> str:
        """Identity of a split's input: its file's content hash, or the hub name when there is no local file.
        A task that reads several files per split (seq2seq's line-aligned source/target files) extends it."""
        path = resolve_file(self.cfg, split)
        return file_fingerprint(path) if path is not None and path.exists() else f"hub:{self.cfg.hub.path}"

    def corpus_fingerprint(self) -> str:
        """Identity of the corpus: the train file's content hash (or hub name) and the columns read."""
        return f"{self.source_fingerprint('train')}|{self.corpus_columns()}"

    def pad_values(self) -> dict[str, int]:
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        return {"input_ids": pad, "attention_mask": 0, "token_type_ids": 0}

    def num_proc(self, rows: int) -> int | None:
        """Worker processes for tokenizing a split of ``rows`` raw rows (None: this process)."""
        return None

    def regroup(self, encoded: Any, split: str, work: Path | None) -> Any:
        """Encoded rows -> examples (language modeling cuts the token stream into blocks); ``work`` is the
        directory for new Arrow files (None: build in memory)."""
        return encoded

    def collator(self) -> Any:
        """Turns a list of encoded rows into a batch (seq2seq extends it to carry reference texts)."""
        return PadCollator(self.pad_values(), self.tokenizer.padding_side)

    # -- caching ------------------------------------------------------------------------------------
    def _limit(self, split: str) -> int | None:
        return {"train": self.cfg.limit_train_samples, "validation": self.cfg.limit_val_samples,
                "test": self.cfg.limit_test_samples}.get(split)

    @staticmethod
    def _limit_key(split: str) -> str:
        """The config key of ``split``'s row limit (``_limit``), for messages."""
        return f"data.limit_{split.replace('validation', 'val')}_samples"

    def select_rows(self, raw: Any, split: str) -> Any:
        """The raw rows to encode: data.limit_*_samples of them (train: a seeded random subset)."""
        limit = self._limit(split)
        if limit is not None and limit < len(raw):
            raw = (raw.shuffle(seed=self.seed) if split == "train" else raw).select(range(limit))
        return raw

    def _options(self) -> dict[str, Any]:
        """The data options that change what is read or encoded (not where files live, not batching)."""
        options = OmegaConf.to_container(self.cfg, resolve=True)
        for volatile in ("root", "files", "cache_dir", "use_cache", "batch_size", "eval_batch_size",
                         "num_workers", "group_by_length", "name"):
            options.pop(volatile, None)
        return options

    def _cache_key(self, split: str) -> str:
        if self._tokenizer_key is None:
            self._tokenizer_key = tokenizer_fingerprint(self.tokenizer)
        key = json.dumps({"format": CACHE_FORMAT, "task": self.task_name, "split": split,
                          "source": self.source_fingerprint(split), "tokenizer": self._tokenizer_key,
                          "options": self._options(), "labels": self.label_names, "seed": self.seed},
                         sort_keys=True, default=str)
        return hashlib.sha256(key.encode()).hexdigest()[:20]

    def _labels_file(self) -> Path:
        """Where the label names discovered in the train file are kept: keyed by its content and the options,
        so a rerun on unchanged data does not read the whole train file again only to list its labels."""
        key = json.dumps({"format": CACHE_FORMAT, "task": self.task_name, "source": self.source_fingerprint("train"),
                          "options": self._options()}, sort_keys=True, default=str)
        return Path(str(self.cfg.cache_dir)) / self.task_name / f"labels-{hashlib.sha256(key.encode()).hexdigest()[:20]}.json"

    def _train_labels(self) -> list[str] | None:
        """discover_labels over the train split, or its cached answer for the same file and options."""
        if not self.labels_from_data:
            return self.discover_labels(None)
        cached = self._labels_file() if self.cfg.use_cache else None
        if cached is not None and cached.is_file():
            return json.loads(cached.read_text())["labels"]
        raw, source = load_split(self.cfg, "train", self._raw_cache_dir())
        self.sources["train"] = source
        require_columns(raw, self.columns("train"), source, "train")
        labels = self.discover_labels(raw)
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_name(cached.name + f".tmp-{os.getpid()}")
            tmp.write_text(json.dumps({"labels": labels, "source": source}))
            os.replace(tmp, cached)
        return labels

    def _cache_path(self, split: str) -> Path:
        return Path(str(self.cfg.cache_dir)) / self.task_name / f"{split}-{self._cache_key(split)}"

    def _build_split(self, split: str) -> tuple[Any, dict[str, Any]]:
        raw, source = load_split(self.cfg, split, self._raw_cache_dir())
        self.sources[split] = source
        require_columns(raw, self.columns(split), source, split)
        self.check_split(raw, split, source)
        total = len(raw)
        raw = self.select_rows(raw, split)
        work = self._work_dir(split)
        if work is not None:
            work.mkdir(parents=True, exist_ok=True)
        num_proc = self.num_proc(len(raw))
        # Worker processes get a pickled copy of this datamodule: without the loaded splits or a trainer.
        encoder = self if num_proc is None else copy.copy(self)
        if num_proc is not None:
            encoder.datasets, encoder.trainer = {}, None
        # With a cache, map writes Arrow files into the work directory (memory-mapped, not held in RAM).
        # gc.freeze: a forked worker's garbage collections then skip the parent's objects instead of touching
        # (and so copying) every page of the parent's heap.
        if num_proc is not None:
            gc.freeze()
        try:
            encoded = raw.map(lambda b: encoder.encode(b, split), batched=True, batch_size=self.encode_batch_size,
                              remove_columns=raw.column_names, desc=f"tokenize {split}", num_proc=num_proc,
                              keep_in_memory=work is None, new_fingerprint=self._cache_key(split),
                              cache_file_name=None if work is None else str(work / "encoded.arrow"))
        finally:
            gc.unfreeze()
        encoded = self.regroup(encoded, split, work)
        lengths = numbers(encoded, "length")
        truncated = int((numbers(encoded, "untruncated_length") > self.cfg.max_length).sum())
        encoded = encoded.remove_columns(["untruncated_length"])
        stats = {"source": source, "rows": len(encoded), "rows_in_file": total, "truncated": truncated,
                 "max_tokens": int(lengths.max()), "mean_tokens": float(lengths.mean()),
                 "label_names": self.label_names}
        return encoded, stats

    def _work_dir(self, split: str) -> Path | None:
        """Where a split's intermediate Arrow files go while it is built (None: in memory, no cache)."""
        if not self.cfg.use_cache:
            return None
        path = self._cache_path(split)
        return path.with_name(path.name + f".work-{os.getpid()}")

    def _raw_cache_dir(self) -> str:
        return str(Path(str(self.cfg.cache_dir)).parent / "hf_datasets")

    def _load_or_build(self, split: str) -> None:
        if split in self.datasets:
            return
        path = self._cache_path(split)
        meta_file = path / "lmlab_meta.json"
        if self.cfg.use_cache and meta_file.is_file():
            stats = json.loads(meta_file.read_text())
            self.datasets[split] = load_stored(path, stats.pop("store"))
            self.stats[split] = stats
            self.cache_hits[split] = True
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path) + ".lock"):  # DDP ranks and parallel jobs build each split once
            if self.cfg.use_cache and meta_file.is_file():
                return self._load_or_build(split)
            work = self._work_dir(split)
            if work is not None:
                shutil.rmtree(work, ignore_errors=True)  # left by a killed build of this process id
            try:
                encoded, stats = self._build_split(split)
                self.cache_hits[split] = False
                if self.cfg.use_cache:
                    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
                    shutil.rmtree(tmp, ignore_errors=True)
                    tmp.mkdir()
                    store = store_split(encoded, work, tmp)
                    (tmp / "lmlab_meta.json").write_text(json.dumps({**stats, "store": store}, indent=1))
                    shutil.rmtree(path, ignore_errors=True)
                    os.replace(tmp, path)
                    encoded = load_stored(path, store)  # memory-mapped, not held in RAM
            finally:
                if work is not None:
                    shutil.rmtree(work, ignore_errors=True)
            self.datasets[split] = encoded
            self.stats[split] = stats

    def _report(self, split: str) -> None:
        s = self.stats[split]
        hit = "cache hit" if self.cache_hits.get(split) else "tokenized"
        limited = f" (first {s['rows']} of {s['rows_in_file']}, data.limit_*_samples)" if s["rows"] < s["rows_in_file"] else ""
        log.info("data %s: %d rows%s from %s [%s], mean %.1f / max %d tokens", split, s["rows"], limited,
                 s["source"], hit, s["mean_tokens"], s["max_tokens"])
        if s["truncated"]:
            log.warning(
                "data %s: %d of %d texts in %s are longer than data.max_length=%d tokens and were truncated. "
                "Raise data.max_length to keep them whole.", split, s["truncated"], s["rows"], s["source"],
                self.cfg.max_length)

    # -- Lightning hooks ----------------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Tokenize (or load from cache) every configured split. Safe to call on every rank."""
        if self.label_names is None and "train" in self.splits:
            self.label_names = self._train_labels()
        for split in self.splits:
            if split not in self.datasets:
                self._load_or_build(split)
                self._report(split)

    def setup(self, stage: str | None = None) -> None:
        self.prepare_data()

    def _loader(self, split: str, train: bool) -> DataLoader:
        ds = self.datasets[split]
        lengths = numbers(ds, "length")
        ds = ds.remove_columns(["length"])
        if train:
            sampler: Any = LengthGroupedSampler(lengths, self.cfg.batch_size, self.seed,
                                                group=self.cfg.group_by_length)
        else:
            sampler = by_length(lengths) if self.cfg.group_by_length else None
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                # Lightning would pad each rank's share with repeats (DistributedSampler): an odd-sized eval
                # set would count one example twice. Unrepeated shards count every example exactly once.
                from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSamplerWrapper

                sampler = UnrepeatedDistributedSamplerWrapper(sampler if sampler is not None else range(len(ds)),
                                                              shuffle=False)
        # Training: a loader Lightning checkpoints mid-epoch, with its own generator so that starting an
        # epoch draws nothing from the global RNG (dropout); a step-checkpoint resume then replays exactly.
        loader_cls, extra = ((ResumableDataLoader, {"generator": torch.Generator().manual_seed(self.seed)})
                             if train else (DataLoader, {}))
        return loader_cls(ds, batch_size=self.cfg.batch_size if train else self.cfg.eval_batch_size,
                          sampler=sampler, collate_fn=self.collator(),
                          num_workers=self.cfg.num_workers, persistent_workers=self.cfg.num_workers > 0,
                          drop_last=False, **extra)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("validation", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict", train=False)

    def eval_order(self, split: str) -> list[int]:
        """Row order in which the eval/predict loader of ``split`` yields examples."""
        lengths = numbers(self.datasets[split], "length")
        return by_length(lengths) if self.cfg.group_by_length else list(range(len(lengths)))
