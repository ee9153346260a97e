"""Reading plain text files (data.format=text): one row per line, for the language-modeling tasks.

Lines keep their newline: grouped into blocks, a byte-level tokenizer (GPT-2) learns and reproduces the line
structure (verse, dialogue); WordPiece treats it as whitespace. ``data.line_ranges`` cuts one file into
splits by fractions of its lines (tinyshakespeare ships as one file).

Two readers give the same rows. Files up to ``ARROW_TEXT_BYTES`` are read into memory (fast: no Arrow
cache to write). Larger files go through ``datasets.load_dataset("text")``, which writes the lines to an
Arrow file under the raw-data cache and memory-maps it, so a corpus of gigabytes is never held in RAM. Both
split lines at "\\n" only (as the Arrow reader does; other Unicode line separators such as form feeds stay
inside a line) after universal-newline decoding ("\\r\\n" and "\\r" read as "\\n").
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from lmlab.errors import DataError

# Above this size a text file is read through an on-disk, memory-mapped Arrow dataset, not a Python list.
ARROW_TEXT_BYTES = 16 * 1024 * 1024
BLANK_SCAN_ROWS = 10_000  # lines per batch when looking for a non-blank line (stops at the first batch with one)


def line_range(data_cfg: DictConfig, split: str) -> tuple[float, float] | None:
    """The (start, end) fraction of the file's lines ``split`` reads, or None for the whole file."""
    # Only language-modeling data configs have line_ranges; a text file read by another task is whole.
    ranges = OmegaConf.select(data_cfg, "line_ranges", default=None)
    value = ranges.get(split) if ranges is not None else None
    return None if value is None else (float(value[0]), float(value[1]))


def line_bounds(n_lines: int, fraction: tuple[float, float] | None) -> tuple[int, int]:
    """[start, end) line indices between two fractions of the file (by line count; [0.9, 1.0] = the last 10 %)."""
    if fraction is None:
        return 0, n_lines
    start, end = (round(f * n_lines) for f in fraction)
    return start, end


def read_lines_in_memory(path: Path, data_cfg: DictConfig, split: str) -> Any:
    """Every line of a small file as an in-memory datasets.Dataset (column data.text_column)."""
    import datasets

    with path.open(encoding=data_cfg.encoding) as f:  # universal newlines, as the Arrow reader
        lines = io.StringIO(f.read()).readlines()  # split at "\n" only, newline kept
    return datasets.Dataset.from_dict({data_cfg.text_column: lines})


def read_lines_arrow(path: Path, data_cfg: DictConfig, split: str) -> Any:
    """Every line of a (large) file as a memory-mapped datasets.Dataset, written once under the raw-data
    cache beside data.cache_dir (where the other formats' Arrow copies go: TextDataModule._raw_cache_dir)."""
    import datasets

    tokenized = OmegaConf.select(data_cfg, "cache_dir", default=None)
    cache_dir = str(Path(str(tokenized)).parent / "hf_datasets") if tokenized else None
    features = datasets.Features({data_cfg.text_column: datasets.Value("string")})
    return datasets.load_dataset("text", data_files={split: str(path)}, split=split, keep_linebreaks=True,
                                 encoding=data_cfg.encoding, features=features, cache_dir=cache_dir)


def has_text(ds: Any, column: str) -> bool:
    """Whether any row of ``column`` has a non-whitespace character (reads batches until one has)."""
    for start in range(0, len(ds), BLANK_SCAN_ROWS):
        if any(line.strip() for line in ds[start:start + BLANK_SCAN_ROWS][column]):
            return True
    return False


def load_text(path: Path, data_cfg: DictConfig, split: str) -> Any:
    """A datasets.Dataset with one column (data.text_column) holding each line of ``path``, newline kept.

    Blank lines are kept (they separate paragraphs when lines are grouped into blocks); the line-by-line
    mode drops them. A file without any text is an error naming it.
    """
    import datasets

    datasets.disable_progress_bars()  # as for the other formats: one log line per split instead
    big = path.stat().st_size > ARROW_TEXT_BYTES
    ds = read_lines_arrow(path, data_cfg, split) if big else read_lines_in_memory(path, data_cfg, split)
    fraction = line_range(data_cfg, split)
    total = len(ds)
    if fraction is not None:
        ds = ds.select(range(*line_bounds(total, fraction)))  # contiguous: a slice of the Arrow table, no copy
    if not has_text(ds, data_cfg.text_column):
        where = f" in data.line_ranges.{split}={list(fraction)} (lines {total} in all)" if fraction else ""
        raise DataError(
            f"The {split} file {path} has no text{where}: every line is blank. Fix: point data.files.{split} at a "
            "file with text" + (f", or widen data.line_ranges.{split}." if fraction else ".")
        )
    return ds
