"""Reading CoNLL-style token files: one ``token ... tag`` line per token, a blank line between sentences.

Columns are separated by tabs when the file's first token line has a tab (WNUT'17), else by runs of spaces
(CoNLL-2003's ``token POS chunk NER``). Every token line must have as many columns as the first one;
``-DOCSTART-`` lines end the current sentence and are skipped. A file whose lines all hold one column is
tokens only, accepted for ``lmlab predict`` input, as is running text (``load_sentences``, data.format=text: a
sentence per line). Each sentence remembers the line number of its first
token, so later checks (tags outside the scheme, ...) can name the exact line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmlab.errors import DataError

DOCSTART = "-DOCSTART-"
LINE_COLUMN = "conll_line"  # dataset column: 1-based line number of each sentence's first token


@dataclass
class _Sentence:
    first_line: int
    tokens: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)


def _split_columns(line: str, tab_separated: bool) -> list[str]:
    if tab_separated:
        return [c.strip() for c in line.split("\t")]
    return line.split()


def _column_error(path: Path, number: int, line: str, columns: list[str], expected: int,
                  first_line: int) -> DataError:
    found = f"an empty column in {line.rstrip()!r}" if len(columns) == expected else (
        f"{len(columns)} column(s) in {line.rstrip()!r}, but line {first_line} (the file's first token line) has "
        f"{expected}")
    return DataError(
        f"{path} line {number}: {found}. Every token line needs the same columns (`token ... tag`, separated by a "
        "tab or by spaces), with a blank line between sentences. Fix: correct that line (an empty field, a "
        "stray space in a tab-separated file, two sentences without the blank line between them); for "
        "`lmlab predict` on running text (a sentence per line), data.format=text."
    )


def _tag_index(path: Path, columns: int, tag_column_index: int) -> int:
    if not -columns <= tag_column_index < columns or tag_column_index in (0, -columns):
        raise DataError(
            f"data.tag_column_index={tag_column_index} does not point at a tag column of {path}, whose lines have "
            f"{columns} columns (column 0 is the token). Fix: data.tag_column_index=-1 for the last column, or "
            f"an index in 1..{columns - 1}."
        )
    return tag_column_index % columns


def read_conll(path: Path, encoding: str, tag_column_index: int, need_tags: bool) -> list[_Sentence]:
    """Sentences of a CoNLL file; raises DataError naming the line of any malformed line."""
    sentences: list[_Sentence] = []
    current: _Sentence | None = None
    expected = first_line = 0
    tab_separated = False
    tag_col: int | None = None
    with open(path, encoding=encoding, newline=None) as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                current = None  # blank (or whitespace-only, as in WNUT'17) line: sentence boundary
                continue
            if not expected:
                tab_separated = "\t" in line
            columns = _split_columns(line.rstrip("\r\n"), tab_separated)
            if columns[0] == DOCSTART:
                current = None
                continue
            if not expected:
                expected, first_line = len(columns), number
                if expected > 1:
                    tag_col = _tag_index(path, expected, tag_column_index)
            if len(columns) != expected or not all(columns):
                raise _column_error(path, number, line, columns, expected, first_line)
            if current is None:
                current = _Sentence(first_line=number)
                sentences.append(current)
            current.tokens.append(columns[0])
            if tag_col is not None:
                current.tags.append(columns[tag_col])
    if not sentences:
        raise DataError(
            f"{path} holds no sentences (only blank lines and/or {DOCSTART} lines). Fix: point the data.files "
            "entry at a CoNLL file with `token ... tag` lines."
        )
    if need_tags and tag_col is None:
        raise DataError(
            f"{path} has a single column (tokens only) but this split needs tags. Fix: use a file with "
            "`token<TAB>tag` lines (tokens-only files are for `lmlab predict` input)."
        )
    return sentences


def _looks_like_a_tag(value: str) -> bool:
    """Any tagging scheme's tag (BIOES too), broader than split_tag's B-/I-: a predict input is refused only when
    its tag column holds no tag at all."""
    return value == "O" or value[:2] in ("B-", "I-", "E-", "S-", "L-", "U-")


def check_predict_tags(path: Path, sentences: list[_Sentence]) -> None:
    """A predict input's tag column, if it has one, must hold tags: running text (a sentence per line, words
    separated by spaces) parses as CoNLL lines whose last word is taken for the tag, and would be tagged as
    one long sentence of first words."""
    tags = [tag for s in sentences for tag in s.tags]
    if tags and not any(_looks_like_a_tag(tag) for tag in tags):
        first = sentences[0]
        raise DataError(
            f"{path} line {first.first_line}: its tag column holds {first.tags[0]!r}, not a tag, and so does every "
            "line: this looks like running text, not CoNLL. Fix: `data.format=text` (one sentence per line, words "
            "split on spaces), or a CoNLL file (one token per line, a blank line between sentences)."
        )


def load_sentences(path: Path, data_cfg: Any, split: str) -> Any:
    """Running text as token-classification input (data.format=text): one sentence per non-blank line, words
    split on whitespace. Only for `lmlab predict`: such a file has no tags to train or score on."""
    import datasets

    if split != "predict":
        raise DataError(
            f"data.format=text ({path}) gives sentences without tags, which only `lmlab predict` takes; the {split} "
            "split needs tagged words. Fix: a CoNLL file (`token<TAB>tag` lines) or JSONL {\"tokens\", \"tags\"}.")
    with open(path, encoding=data_cfg.encoding, newline=None) as f:
        rows = [(number, line.split()) for number, line in enumerate(f, start=1) if line.strip()]
    if not rows:
        raise DataError(f"{path} holds no text (only blank lines). Fix: input=<a file with a sentence per line>.")
    return datasets.Dataset.from_dict({data_cfg.text_column: [words for _, words in rows],
                                       LINE_COLUMN: [number for number, _ in rows]})


def load_conll(path: Path, data_cfg: Any, split: str) -> Any:
    """A CoNLL file as a datasets.Dataset with columns data.text_column (tokens), data.label_column (tags,
    absent for a tokens-only predict input) and ``conll_line``."""
    import datasets

    if "tag_column_index" not in data_cfg:
        raise DataError(
            f"data.format=conll ({path}) is read by task=token_classification, whose data configs carry "
            "data.tag_column_index / data.tag_scheme. Fix: `task=token_classification data=wnut17` (or "
            "data=conll2003 with data.root/data.files pointing at your files)."
        )
    sentences = read_conll(path, data_cfg.encoding, int(data_cfg.tag_column_index), need_tags=split != "predict")
    if split == "predict":
        check_predict_tags(path, sentences)
    columns: dict[str, list[Any]] = {data_cfg.text_column: [s.tokens for s in sentences],
                                     LINE_COLUMN: [s.first_line for s in sentences]}
    if sentences[0].tags:
        columns[data_cfg.label_column] = [s.tags for s in sentences]
    return datasets.Dataset.from_dict(columns)
