"""Train-split text augmentation for sequence classification: EDA (Wei & Zou 2019) without WordNet.

Tokenized splits are cached, so augmentation happens on the fly, before tokenization: the train loader reads
the raw texts (aligned with the cached rows) and tokenizes each augmented row as the loader asks for it;
validation, test and predict loaders keep serving the cached, unaugmented encodings.

Each row's augmentation is a function of (seed, epoch, row index) only: a numpy Generator is seeded with that
triple. So the same seed gives the same texts, every epoch gives new ones, and the result does not depend on
``data.num_workers`` or on which worker loads the row, while two workers never share a random stream (no two
rows share a seed; the classic bug of every worker copying one global RNG state cannot happen). The epoch
reaches the workers with each index: the train sampler is wrapped to yield ``(epoch, row)`` pairs.

Operations (one drawn per augmented row, as in EDA; ``alpha`` sets how many words change, at least one):
``synonym`` replaces words by synonyms from a list file, ``insert`` inserts a synonym of a word of the text at
a random place, ``swap`` swaps two words, ``delete`` drops each word with probability alpha (keeping one).

``augment.method=back_translation`` instead swaps a row's text for its paraphrase through a pivot language,
generated once per train split and cached (lmlab.data.back_translation), with the same per-row draws.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset, Sampler

from lmlab.config.validate import AUGMENT_METHODS
from lmlab.data.back_translation import BackTranslation, prepare_paraphrases
from lmlab.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_SYNONYMS = Path(__file__).with_name("synonyms_en.txt")
PUNCTUATION = ".,;:!?\"'()[]{}"


def load_synonyms(path: str | Path | None) -> dict[str, list[str]]:
    """word -> its synonyms, from a file with one comma-separated group of synonyms per line (``#`` comments).
    A word in several groups gets the union; ``None``: lmlab's small English list."""
    source = Path(path).expanduser() if path is not None else DEFAULT_SYNONYMS
    if not source.is_file():
        raise ConfigError([f"augment.synonyms={path}: no such file. Fix: a text file with one comma-separated "
                           "synonym group per line, or augment.synonyms=null for lmlab's English list."])
    table: dict[str, set[str]] = {}
    for line in source.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("#"):
            continue
        group = [w.strip().lower() for w in line.split(",") if w.strip()]
        for word in group:
            table.setdefault(word, set()).update(w for w in group if w != word)
    return {word: sorted(others) for word, others in table.items() if others}


def _recase(word: str, like: str) -> str:
    """``word`` in the case pattern of ``like`` (Title, UPPER or as is)."""
    if like.isupper() and len(like) > 1:
        return word.upper()
    return word[:1].upper() + word[1:] if like[:1].isupper() else word


class EDA:
    """Easy Data Augmentation on whitespace-separated words; ``__call__(text, rng)`` -> augmented text."""

    def __init__(self, synonyms: dict[str, list[str]], operations: list[str], alpha: float, prob: float):
        self.synonyms = synonyms
        self.operations = list(operations)
        self.alpha = alpha
        self.prob = prob

    def _synonyms_of(self, word: str) -> list[str]:
        return self.synonyms.get(word.strip(PUNCTUATION).lower(), [])

    def _replace(self, word: str, rng: np.random.Generator) -> str:
        """``word`` with its core (punctuation stripped) replaced by a random synonym, case and punctuation kept."""
        core = word.strip(PUNCTUATION)
        start = word.find(core)
        new = _recase(str(rng.choice(self._synonyms_of(word))), core)
        return word[:start] + new + word[start + len(core):]

    def synonym(self, words: list[str], n: int, rng: np.random.Generator) -> list[str]:
        candidates = [i for i, w in enumerate(words) if self._synonyms_of(w)]
        for i in rng.permutation(candidates)[:n].tolist():
            words[i] = self._replace(words[i], rng)
        return words

    def insert(self, words: list[str], n: int, rng: np.random.Generator) -> list[str]:
        candidates = [w for w in words if self._synonyms_of(w)]
        for _ in range(n if candidates else 0):
            new = str(rng.choice(self._synonyms_of(str(rng.choice(candidates)))))
            words.insert(int(rng.integers(len(words) + 1)), new)
        return words

    def swap(self, words: list[str], n: int, rng: np.random.Generator) -> list[str]:
        for _ in range(n if len(words) > 1 else 0):
            i, j = rng.choice(len(words), size=2, replace=False).tolist()
            words[i], words[j] = words[j], words[i]
        return words

    def delete(self, words: list[str], n: int, rng: np.random.Generator) -> list[str]:
        if len(words) <= 1:
            return words
        kept = [w for w, drop in zip(words, rng.random(len(words)) < self.alpha, strict=True) if not drop]
        return kept or [words[int(rng.integers(len(words)))]]  # EDA keeps one random word

    def __call__(self, text: str, rng: np.random.Generator) -> str:
        """The text itself with probability 1 - prob, else one random operation applied to it."""
        words = text.split()
        if not words or rng.random() >= self.prob:
            return text
        operation: Callable[[list[str], int, np.random.Generator], list[str]] = getattr(
            self, self.operations[int(rng.integers(len(self.operations)))])
        n = max(1, int(self.alpha * len(words)))
        return " ".join(operation(words, n, rng))


def build_augmenter(cfg: dict[str, Any]) -> EDA:
    """The augmenter of an ``augment`` config with method eda (back_translation: ``back_translation_augmenter``)."""
    if cfg["method"] != "eda":
        valid = ", ".join(AUGMENT_METHODS)
        raise ConfigError([f"augment.method={cfg['method']!r} is not an EDA method here. Valid: {valid}."])
    synonyms = load_synonyms(cfg.get("synonyms"))
    return EDA(synonyms, list(cfg["operations"]), float(cfg["alpha"]), float(cfg["prob"]))


def row_rng(seed: int, epoch: int, row: int) -> np.random.Generator:
    """The random stream of one row in one epoch (independent of the worker that loads it)."""
    return np.random.default_rng([seed, epoch, row])


class EpochSampler(Sampler[tuple[int, int]]):
    """Wraps the train sampler: yields ``(epoch, row)`` so that loader workers (persistent, each with its own
    copy of the dataset) know the epoch; ``set_epoch`` reaches the wrapped sampler too."""

    def __init__(self, sampler: Any):
        self.sampler = sampler
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        return ((epoch, int(row)) for row in self.sampler)


class AugmentedRows(Dataset):
    """The train split as raw texts + label ids; item ``(epoch, row)`` is that row augmented for that epoch
    and tokenized with ``encode(texts, pairs)`` (a batch-of-one call returning lists)."""

    def __init__(self, texts: list[str], pairs: list[str] | None, labels: list[int],
                 augmenter: EDA | BackTranslation, seed: int,
                 encode: Callable[[list[str], list[str] | None], dict[str, list[Any]]]):
        self.texts = texts
        self.pairs = pairs
        self.labels = labels
        self.augmenter = augmenter
        self.seed = seed
        self.encode = encode

    def __len__(self) -> int:
        return len(self.texts)

    def text(self, epoch: int, row: int) -> str:
        """Row ``row``'s (first) text as augmented in ``epoch``."""
        return self.augmenter(self.texts[row], row_rng(self.seed, epoch, row))

    def __getitem__(self, key: tuple[int, int] | int) -> dict[str, Any]:
        epoch, row = key if isinstance(key, tuple) else (0, key)
        pairs = [self.pairs[row]] if self.pairs is not None else None
        encoded = self.encode([self.text(epoch, row)], pairs)
        item = {name: values[0] for name, values in encoded.items()}
        item["labels"] = self.labels[row]
        return item


class Tokenize:
    """Sequence-classification encoding of raw rows, as the cached splits have it (picklable for workers)."""

    def __init__(self, tokenizer: Any, max_length: int):
        self.tokenizer = tokenizer
        self.max_length = max_length

    def __call__(self, texts: list[str], pairs: list[str] | None) -> dict[str, list[Any]]:
        return dict(self.tokenizer(texts, pairs, truncation=True, max_length=self.max_length))


def back_translation_augmenter(texts: list[str], augment: dict[str, Any], datamodule: Any) -> BackTranslation:
    """The back-translation augmenter of the train rows ``texts``: their paraphrases, generated now or read
    from ``${paths.cache_dir}/back_translation`` (beside the tokenized-data cache)."""
    cache_root = Path(str(datamodule.cfg.cache_dir)).parent
    paraphrases, _, _ = prepare_paraphrases(texts, augment, cache_root, datamodule.seed)
    return BackTranslation(texts, paraphrases, float(augment["prob"]))


def augmented_loader(datamodule: Any, augment: dict[str, Any]) -> Any:
    """``datamodule``'s train loader serving augmented texts, tokenized on the fly: same sampler (length
    groups of the original texts), batch size, collator and workers as the cached one."""
    from torch.utils.data import DataLoader

    from lmlab.data.loading import column_values, load_split

    loader = datamodule._loader("train", train=True)  # the cached one: its sampler, collator, workers
    cfg = datamodule.cfg
    raw, _ = load_split(cfg, "train", datamodule._raw_cache_dir())
    raw = datamodule.select_rows(raw, "train")  # the cached rows, in the same order

    def texts(column: str) -> list[str]:
        return ["" if t is None else str(t) for t in column_values(raw, column)]

    first = texts(cfg.text_column)
    if augment["method"] == "back_translation":
        augmenter: EDA | BackTranslation = back_translation_augmenter(first, augment, datamodule)
        log.info("augment=back_translation: train texts replaced by their paraphrase on the fly (prob %s); "
                 "eval data is not", augment["prob"])
    else:
        augmenter = build_augmenter(augment)
        log.info("augment=%s: train texts augmented on the fly (prob %s, operations %s, alpha %s); eval data is not",
                 augment["method"], augment["prob"], list(augment["operations"]), augment["alpha"])
    rows = AugmentedRows(first, texts(cfg.text_pair_column) if cfg.text_pair_column else None,
                         column_values(datamodule.datasets["train"], "labels"), augmenter,
                         datamodule.seed, Tokenize(datamodule.tokenizer, cfg.max_length))
    return DataLoader(rows, batch_size=loader.batch_size, sampler=EpochSampler(loader.sampler),
                      collate_fn=loader.collate_fn, num_workers=loader.num_workers,
                      persistent_workers=loader.persistent_workers, drop_last=False)
