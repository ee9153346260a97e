"""Reading plain text files (data.format=text): one row per line, for the language-modeling tasks.

Lines keep their newline: grouped into blocks, a byte-level tokenizer (GPT-2) learns and reproduces the line
structure (verse, dialogue); WordPiece treats it as whitespace. ``data.line_ranges`` cuts one file into
splits by fractions of its lines (tinyshakespeare ships as one file).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from lmlab.errors import DataError


def line_range(data_cfg: DictConfig, split: str) -> tuple[float, float] | None:
    """The (start, end) fraction of the file's lines ``split`` reads, or None for the whole file."""
    # Only language-modeling data configs have line_ranges; a text file read by another task is whole.
    ranges = OmegaConf.select(data_cfg, "line_ranges", default=None)
    value = ranges.get(split) if ranges is not None else None
    return None if value is None else (float(value[0]), float(value[1]))


def select_lines(lines: list[str], fraction: tuple[float, float] | None) -> list[str]:
    """The lines between two fractions of the file (by line count; [0.9, 1.0] = the last 10 %)."""
    if fraction is None:
        return lines
    start, end = (round(f * len(lines)) for f in fraction)
    return lines[start:end]


def load_text(path: Path, data_cfg: DictConfig, split: str) -> Any:
    """A datasets.Dataset with one column (data.text_column) holding each line of ``path``, newline kept.

    Blank lines are kept (they separate paragraphs when lines are grouped into blocks); the line-by-line
    mode drops them. A file without any text is an error naming it.
    """
    import datasets

    datasets.disable_progress_bars()  # as for the other formats: one log line per split instead
    lines = path.read_text(encoding=data_cfg.encoding).splitlines(keepends=True)
    fraction = line_range(data_cfg, split)
    selected = select_lines(lines, fraction)
    if not any(line.strip() for line in selected):
        where = f" in data.line_ranges.{split}={list(fraction)} (lines {len(lines)} in all)" if fraction else ""
        raise DataError(
            f"The {split} file {path} has no text{where}: every line is blank. Fix: point data.files.{split} at a "
            "file with text" + (f", or widen data.line_ranges.{split}." if fraction else ".")
        )
    return datasets.Dataset.from_dict({data_cfg.text_column: selected})
