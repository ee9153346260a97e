"""Token classification (NER) data: a list of words and one tag per word per row.

Tags are read as IOB2 (``data.tag_scheme=iob2``: every entity starts with B-) or IOB1 (``iob1``: an entity
starts with I-, B- only separates two adjacent entities of one type) and always stored as IOB2. A tag outside
the scheme (``X-PER``, ``E-PER``) or, in IOB2, an I- that follows no B-/I- of its type is repaired (the tag
becomes O; the I- becomes B-) with one warning naming the file, or rejected (``data.invalid_tags=error``).

The tag set is O plus B-/I- of every entity type seen in train, so a type whose train entities are all one
word still gets its I- tag. Words are split into subwords; only a word's first subword carries its label
unless ``data.label_all_subwords`` (then the others carry the I- form of it). A ``word_index`` column marks
first subwords with the word's position (-1 elsewhere): metrics and predictions are made per word from it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from lmlab.data.base import TextDataModule
from lmlab.data.conll import LINE_COLUMN
from lmlab.data.loading import resolve_file
from lmlab.errors import DataError

log = logging.getLogger(__name__)

OUTSIDE = "O"
IGNORE = -100  # label of positions the loss skips (special tokens, non-first subwords, padding)
SHOWN = 5  # problems quoted in a warning or error message


def split_tag(tag: str) -> tuple[str, str] | None:
    """(prefix, entity type) of a well-formed B-/I- tag, ("O", "") for O, None for anything else."""
    if tag == OUTSIDE:
        return OUTSIDE, ""
    prefix, sep, kind = tag.partition("-")
    if sep and prefix in ("B", "I") and kind:
        return prefix, kind
    return None


@dataclass
class TagProblem:
    position: int  # word index in the sentence
    tag: str
    kind: str  # "outside the scheme" | "I- without B-"


def normalize_tags(tags: list[Any], scheme: str) -> tuple[list[str], list[TagProblem]]:
    """IOB2 tags for one sentence in IOB1/IOB2 (``scheme``), and the problems that were repaired.

    Repair: a tag outside the scheme becomes O; an entity that starts with I- gets B- (the normal IOB1
    start, a problem only in IOB2)."""
    out: list[str] = []
    problems: list[TagProblem] = []
    previous = (OUTSIDE, "")
    for position, tag in enumerate(tags):
        parts = split_tag(tag) if isinstance(tag, str) else None
        if parts is None:
            problems.append(TagProblem(position, str(tag), "outside the scheme"))
            parts = (OUTSIDE, "")
        prefix, kind = parts
        if prefix == "I" and previous[1] != kind:
            if scheme == "iob2":
                problems.append(TagProblem(position, tag, "I- without B-"))
            prefix = "B"
        out.append(f"{prefix}-{kind}" if kind else OUTSIDE)
        previous = (prefix, kind)
    return out, problems


def tag_set(entity_types: set[str]) -> list[str]:
    """O, then B-/I- of each entity type in alphabetical order (the label ids saved with the model)."""
    return [OUTSIDE] + [f"{p}-{kind}" for kind in sorted(entity_types) for p in ("B", "I")]


class TokenClassificationDataModule(TextDataModule):
    task_name = "token_classification"

    def __init__(self, data_cfg: Any, tokenizer: Any, **kwargs: Any):
        if "tag_scheme" not in data_cfg:
            raise DataError(
                f"task=token_classification needs a token-classification data config (word and tag lists with "
                f"data.tag_scheme etc.), but data={data_cfg.name} is not one. Fix: data=wnut17 or data=conll2003 "
                "(with data.root / data.files pointing at your own CoNLL or JSONL files)."
            )
        super().__init__(data_cfg, tokenizer, **kwargs)

    def has_labels(self, split: str) -> bool:
        return split != "predict"

    def columns(self, split: str) -> list[str]:
        cols = [self.cfg.text_column]
        if self.has_labels(split):
            cols.append(self.cfg.label_column)
        return cols

    # -- tags ---------------------------------------------------------------------------------------
    def _where(self, ds: Any, row: int, position: int) -> str:
        """A problem's location: the CoNLL line, or the row and word of a JSONL file."""
        if LINE_COLUMN in ds.column_names:
            return f"line {ds[LINE_COLUMN][row] + position}"
        return f"row {row + 1} word {position + 1}"

    def _check_rows(self, ds: Any, source: str) -> None:
        """Words and tags are lists of one length per row, tags are strings, and no sentence is empty."""
        for row, (words, tags) in enumerate(zip(ds[self.cfg.text_column], ds[self.cfg.label_column], strict=True)):
            if isinstance(tags, list) and tags and not all(isinstance(t, str) for t in tags):
                raise DataError(
                    f"{source} row {row + 1}: tags must be strings such as B-PER or O; got {str(tags)[:80]} "
                    "(tag ids?). Fix: write the tag names in the file."
                )
            if not isinstance(words, list) or not isinstance(tags, list) or len(words) != len(tags) or not words:
                raise DataError(
                    f"{source} row {row + 1}: {self.cfg.text_column!r} and {self.cfg.label_column!r} must be "
                    f"non-empty lists of equal length (one tag per word); got {str(words)[:80]} and "
                    f"{str(tags)[:80]}. Fix: write that sentence as {{\"{self.cfg.text_column}\": [words...], "
                    f"\"{self.cfg.label_column}\": [tags...]}} or drop it."
                )

    def _repair_report(self, ds: Any, source: str) -> None:
        """Warn about (or, with data.invalid_tags=error, reject) tags that normalize_tags had to repair."""
        found: list[str] = []
        count = 0
        for row, tags in enumerate(ds[self.cfg.label_column]):
            for p in normalize_tags(tags, self.cfg.tag_scheme)[1]:
                count += 1
                if len(found) < SHOWN:
                    found.append(f"{self._where(ds, row, p.position)}: {p.tag!r} ({p.kind})")
        if not count:
            return
        listing = "; ".join(found) + (" ..." if count > SHOWN else "")
        if self.cfg.invalid_tags == "error":
            raise DataError(
                f"{source}: {count} tag(s) not valid in data.tag_scheme={self.cfg.tag_scheme}: {listing}. Fix: "
                "correct them, set data.tag_scheme=iob1 if entities start with I-, or data.invalid_tags=repair "
                "(tags outside the scheme become O, an I- without B- becomes B-)."
            )
        log.warning("%s: repaired %d tag(s) not valid in data.tag_scheme=%s (outside the scheme -> O, I- without "
                    "B- -> B-): %s. Set data.invalid_tags=error to stop instead.", source, count,
                    self.cfg.tag_scheme, listing)

    def discover_labels(self, train: Any) -> list[str]:
        self._check_rows(train, str(resolve_file(self.cfg, "train")))
        types = {tag[2:] for tags in train[self.cfg.label_column]
                 for tag in normalize_tags(tags, self.cfg.tag_scheme)[0] if tag != OUTSIDE}
        if not types:
            raise DataError(
                f"The train data has no entity tags (every tag in column {self.cfg.label_column!r} is O or "
                f"invalid). Fix: check data.tag_column_index (now {self.cfg.tag_column_index}) and data.tag_scheme."
            )
        return tag_set(types)

    def check_split(self, ds: Any, split: str, source: str) -> None:
        if not self.has_labels(split):
            return
        self._check_rows(ds, source)
        self._repair_report(ds, source)
        known = set(self.label_names or [])
        unseen = sorted({tag for tags in ds[self.cfg.label_column]
                         for tag in normalize_tags(tags, self.cfg.tag_scheme)[0]} - known)
        if unseen:
            raise DataError(
                f"The {split} data {source} has tag(s) {unseen[:10]} whose entity types never occur in the "
                f"training data (known tags: {self.label_names}). Fix: add training sentences with those types, "
                "or map them to a known type (or O) in that file."
            )

    # -- encoding -----------------------------------------------------------------------------------
    def _words(self, batch: dict[str, list[Any]]) -> list[list[str]]:
        """Each word as a string; a word the tokenizer turns into nothing (a lone U+FE0F) becomes the unknown
        token, so every word has a first subword to label and predict."""
        words = [[str(w) for w in ws] for ws in batch[self.cfg.text_column]]
        full = self.tokenizer(words, is_split_into_words=True, add_special_tokens=False, return_attention_mask=False,
                              return_token_type_ids=False)
        for i, ws in enumerate(words):
            present = set(full.word_ids(i))
            for w in range(len(ws)):
                if w not in present:
                    ws[w] = self.tokenizer.unk_token
        return words

    def _align(self, word_ids: list[int | None], tag_ids: list[int] | None,
               inside_of: dict[int, int]) -> tuple[list[int], list[int]]:
        """(labels, word_index) per token: a word's first subword gets its tag and position; later subwords get
        IGNORE (or, with label_all_subwords, the I- form of the tag) and -1."""
        labels, index = [], []
        previous = None
        for w in word_ids:
            first = w is not None and w != previous
            index.append(w if first else -1)
            if tag_ids is None or w is None:
                labels.append(IGNORE)
            elif first:
                labels.append(tag_ids[w])
            else:
                labels.append(inside_of[tag_ids[w]] if self.cfg.label_all_subwords else IGNORE)
            previous = w
        return labels, index

    def encode(self, batch: dict[str, list[Any]], split: str) -> dict[str, list[Any]]:
        if not self.tokenizer.is_fast:
            raise DataError(
                f"token classification aligns tags to subwords with a fast tokenizer; {type(self.tokenizer).__name__} "
                "is not one. Fix: a model/tokenizer with a tokenizer.json (model.tokenizer=...)."
            )
        words = self._words(batch)
        enc = self.tokenizer(words, is_split_into_words=True, truncation=True, max_length=self.cfg.max_length)
        # Untruncated token counts, only to report how many sentences max_length cut (their last words get
        # no label and, in predictions, the tag O).
        full = self.tokenizer(words, is_split_into_words=True, truncation=False, return_attention_mask=False,
                              return_token_type_ids=False, verbose=False)
        names = self.label_names or []
        ids = {name: i for i, name in enumerate(names)}
        inside_of = {i: ids.get("I-" + name[2:], i) for i, name in enumerate(names)}
        out: dict[str, list[Any]] = {**enc, "labels": [], "word_index": []}
        for i in range(len(words)):
            tag_ids = None
            if self.has_labels(split):
                tag_ids = [ids[t] for t in normalize_tags(batch[self.cfg.label_column][i], self.cfg.tag_scheme)[0]]
            labels, index = self._align(enc.word_ids(i), tag_ids, inside_of)
            out["labels"].append(labels)
            out["word_index"].append(index)
        if not self.has_labels(split):
            del out["labels"]
        out["length"] = [len(x) for x in enc["input_ids"]]
        out["untruncated_length"] = [len(x) for x in full["input_ids"]]
        return out

    def pad_values(self) -> dict[str, int]:
        return {**super().pad_values(), "labels": IGNORE, "word_index": -1}
