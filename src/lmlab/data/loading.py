"""Reading one split from local CSV/TSV/JSONL/JSON files (or the hub) into a datasets.Dataset.

Every failure names the file, the config key to change and how: a wrong encoding, a missing column, an
empty split, a directory where a file was expected.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from lmlab.errors import DataError

log = logging.getLogger(__name__)

EXTENSIONS = {".csv": "csv", ".tsv": "tsv", ".txt": "tsv", ".jsonl": "jsonl", ".json": "json", ".conll": "conll",
              ".tokens": "text"}
ENCODING_CHECK_BYTES = 256 * 1024 * 1024  # decode-check files up to this size before parsing


def resolve_file(data_cfg: DictConfig, split: str) -> Path | None:
    """The configured file of ``split`` (relative names are under data.root), or None if not configured."""
    name = data_cfg.files.get(split)
    if name is None:
        return None
    path = Path(str(name)).expanduser()
    return path if path.is_absolute() else Path(str(data_cfg.root)).expanduser() / path


def detect_format(path: Path, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    try:
        return EXTENSIONS[path.suffix.lower()]
    except KeyError:
        raise DataError(
            f"Cannot tell the format of {path} from its extension {path.suffix!r}. Fix: set "
            f"data.format to one of csv, tsv, jsonl, json, conll, text."
        ) from None


def check_readable(path: Path, split: str, encoding: str) -> None:
    """A file exists, is a file, is non-empty and decodes with ``encoding`` (error says where it breaks)."""
    if not path.exists():
        raise DataError(
            f"The {split} file {path} does not exist. Fix: set data.files.{split}=<file> (relative to "
            f"data.root) or data.root / paths.data_root / LMLAB_DATA_ROOT to the folder that holds it."
        )
    if path.is_dir():
        raise DataError(f"The {split} file {path} is a directory, not a file. Fix: data.files.{split}=<a file in it>.")
    size = path.stat().st_size
    if size == 0:
        raise DataError(f"The {split} file {path} is empty (0 bytes). Fix: point data.files.{split} at a file with rows.")
    if size > ENCODING_CHECK_BYTES:
        return
    raw = path.read_bytes()
    try:
        raw.decode(encoding)
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        bad = raw[e.start : e.start + 4]
        raise DataError(
            f"The {split} file {path} is not valid {encoding}: byte {bad[:1]!r} at offset {e.start} (line "
            f"{line}). Fix: set data.encoding to the file's encoding (cp1252 for Windows-1252, latin-1) or "
            "re-save the file as UTF-8."
        ) from None
    except LookupError:
        raise DataError(f"data.encoding={encoding!r} is not a known text encoding (try utf-8, utf-8-sig, cp1252).") from None


def _csv_kwargs(data_cfg: DictConfig, fmt: str) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "sep": "\t" if fmt == "tsv" else ",",
        "encoding": data_cfg.encoding,
        "quoting": csv.QUOTE_NONE if data_cfg.quoting == "none" else csv.QUOTE_MINIMAL,
        # Texts such as "NA" or "null" are words, not missing values.
        "keep_default_na": False,
        "na_values": [""],
        # Never take a first column as the index (pandas does when the first row has one field too many).
        "index_col": False,
    }
    if not data_cfg.has_header:
        kwargs["column_names"] = list(data_cfg.column_names)
        kwargs["header"] = None
    return kwargs


def check_delimited_rows(path: Path, data_cfg: DictConfig, split: str, fmt: str) -> None:
    """Header-only files, and (with quoting=none, where a separator is always a separator) rows whose field
    count differs from the header's: pandas would shift such a first row's columns silently."""
    if path.stat().st_size > ENCODING_CHECK_BYTES:
        return
    lines = [(n, line) for n, line in enumerate(path.read_text(encoding=data_cfg.encoding).splitlines(), start=1)
             if line.strip()]
    if data_cfg.has_header and len(lines) == 1:
        raise DataError(
            f"The {split} file {path} has a header but no rows. Fix: point data.files.{split} at a file with data."
        )
    if data_cfg.quoting != "none" or not lines:
        return
    sep = "\t" if fmt == "tsv" else ","
    expected = len(data_cfg.column_names) if not data_cfg.has_header else lines[0][1].count(sep) + 1
    for number, line in lines:
        fields = line.count(sep) + 1
        if fields != expected:
            raise DataError(
                f"Could not parse the {split} file {path} as {fmt}: Expected {expected} fields in line {number}, "
                f"saw {fields}. With data.quoting=none every {sep!r} separates fields, even inside quotes. Fix: "
                "data.quoting=minimal if that text is quoted, or remove the extra separator from that line."
            )


def _header(path: Path, data_cfg: DictConfig, fmt: str) -> list[str]:
    if not data_cfg.has_header:
        return list(data_cfg.column_names)
    with path.open(encoding=data_cfg.encoding, newline="") as f:
        quoting = csv.QUOTE_NONE if data_cfg.quoting == "none" else csv.QUOTE_MINIMAL
        return next(csv.reader(f, delimiter="\t" if fmt == "tsv" else ",", quoting=quoting), [])


def _parse(path: Path, data_cfg: DictConfig, split: str, fmt: str, cache_dir: str | None) -> Any:
    import datasets

    if fmt in ("csv", "tsv"):
        # Every cell is text: one empty cell must not turn a label column of 0/1 into floats 0.0/1.0.
        columns = _header(path, data_cfg, fmt)
        features = datasets.Features({c: datasets.Value("string") for c in columns}) if len(set(columns)) == len(columns) else None
        return datasets.load_dataset("csv", data_files={split: str(path)}, split=split, cache_dir=cache_dir,
                                     features=features, **_csv_kwargs(data_cfg, fmt))
    return datasets.load_dataset("json", data_files={split: str(path)}, split=split, cache_dir=cache_dir)


def load_file(path: Path, data_cfg: DictConfig, split: str, cache_dir: str | None) -> Any:
    """Load one local file as a datasets.Dataset (Arrow, memory-mapped)."""
    import datasets

    check_readable(path, split, data_cfg.encoding)
    fmt = detect_format(path, data_cfg.format)
    if fmt == "text" and "tag_column_index" in data_cfg:  # running text to tag (NER predict): data/conll.py
        from lmlab.data.conll import load_sentences

        return load_sentences(path, data_cfg, split)
    if fmt == "text":  # plain text, one row per line (language modeling): see data/text.py
        from lmlab.data.text import load_text

        return load_text(path, data_cfg, split)
    if fmt == "conll":  # token-per-line files (NER): their own reader, see data/conll.py
        from lmlab.data.conll import load_conll

        return load_conll(path, data_cfg, split)
    if fmt in ("csv", "tsv"):
        check_delimited_rows(path, data_cfg, split, fmt)
    datasets.disable_progress_bars()
    verbosity = datasets.logging.get_verbosity()
    # datasets logs its own ERROR about a file it cannot parse; the DataError below is the one report.
    datasets.logging.set_verbosity(logging.CRITICAL)
    try:
        ds = _parse(path, data_cfg, split, fmt, cache_dir)
    except Exception as e:  # datasets wraps parser errors in several types; report them all the same way
        cause = e.__cause__ or e
        raise DataError(
            f"Could not parse the {split} file {path} as {fmt}: {type(cause).__name__}: {cause}. Fix: check "
            "data.format, data.quoting (none for GLUE-style TSVs with quotes in text), data.has_header and "
            "data.column_names."
        ) from e
    finally:
        datasets.logging.set_verbosity(verbosity)
    if len(ds) == 0:
        raise DataError(
            f"The {split} file {path} has a header but no rows. Fix: point data.files.{split} at a file with data."
        )
    if data_cfg.has_header and data_cfg.column_names:
        ds = ds.rename_columns(dict(zip(ds.column_names, data_cfg.column_names, strict=False)))
    return ds


def load_hub_split(data_cfg: DictConfig, split: str, cache_dir: str | None) -> Any:
    """The hub copy of a split (only used online when the local file is missing)."""
    import datasets

    hub_split = data_cfg.hub.get(f"{split}_split")
    if hub_split is None:
        raise DataError(f"data.hub has no {split}_split for {data_cfg.hub.path}.")
    return datasets.load_dataset(data_cfg.hub.path, data_cfg.hub.name, split=hub_split, cache_dir=cache_dir)


def load_split(data_cfg: DictConfig, split: str, cache_dir: str | None) -> tuple[Any, str]:
    """Return (dataset, source description) for ``split``: the local file, else the hub copy when online."""
    path = resolve_file(data_cfg, split)
    if path is None:
        raise DataError(f"No {split} data configured for data={data_cfg.name}. Fix: set data.files.{split}=<file>.")
    if data_cfg.format == "parallel":  # line-aligned source/target files (seq2seq): see data/parallel.py
        from lmlab.data.parallel import load_parallel

        return load_parallel(path, data_cfg, split)
    if path.exists() or not data_cfg.hub.path:
        return load_file(path, data_cfg, split, cache_dir), str(path)
    from lmlab.models import hub_reachable

    if not hub_reachable():
        raise DataError(
            f"data={data_cfg.name}: the {split} file {path} does not exist, and its hub copy "
            f"({data_cfg.hub.path}/{data_cfg.hub.name}) cannot be fetched offline. Looked in data.root="
            f"{data_cfg.root}. Fix: set paths.data_root (or LMLAB_DATA_ROOT) to the folder holding "
            f"{Path(str(data_cfg.root)).name}/, or data.files.{split}=/path/to/file."
        )
    log.info("%s not found locally; loading %s/%s from the hub", path, data_cfg.hub.path, data_cfg.hub.name)
    return load_hub_split(data_cfg, split, cache_dir), f"hub:{data_cfg.hub.path}/{data_cfg.hub.name}"


def column_values(ds: Any, name: str) -> list[Any]:
    """A column as a Python list, read at once. (datasets >= 4 returns a lazy Column for ``ds[name]``;
    iterating it decodes row by row, ~3000x slower: 7 s for SST-2's 67k labels.)"""
    return ds[name][:]


def require_columns(ds: Any, columns: list[str], source: str, split: str) -> None:
    missing = [c for c in columns if c not in ds.column_names]
    if missing and len(ds.column_names) == 1:
        (header,) = ds.column_names
        found = next((sep for sep in (",", "\t", ";", "|") if sep in header), None)
        if found:
            raise DataError(
                f"The {split} data {source} has no column(s) {missing}; its columns are {ds.column_names}: one "
                f"column whose name holds {found!r}, so the file is not separated the way data.format says. "
                f"Fix: set data.format={'tsv' if found == chr(9) else 'csv'} (or the matching format)."
            )
    if missing:
        # A file without a header line (e.g. one text per line) reads its first row as the column names.
        names = ",".join(missing) if len(missing) == len(ds.column_names) else "<its columns in order>"
        raise DataError(
            f"The {split} data {source} has no column(s) {missing}; its columns are {ds.column_names}. Fix: "
            "set data.text_column / data.text_pair_column / data.label_column to the right names, or, if the "
            f"file has no header line, `data.has_header=false data.column_names=[{names}]`."
        )
