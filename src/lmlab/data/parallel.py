"""Line-aligned parallel text (`data.format=parallel`): line i of the source file translates line i of the
target file, the layout of Multi30k, WMT, OPUS and Moses corpora.

`data.files.train: train` with `data.source_suffix: .en` and `data.target_suffix: .de` reads `train.en` and
`train.de` under data.root. The predict split has no target: `input=` is the source file itself
(`sentences.en`) or its stem (`test_2016_flickr`, + source_suffix).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from lmlab.data.loading import check_readable
from lmlab.errors import DataError


def parallel_files(path: Path, data_cfg: DictConfig, split: str) -> list[Path]:
    """The files a split reads: [source, target], or [source] for predict."""
    source = path.with_name(path.name + str(data_cfg.source_suffix))
    if split == "predict":
        return [path if path.is_file() else source]
    return [source, path.with_name(path.name + str(data_cfg.target_suffix))]


def _require_file(path: Path, stem: Path, side: str, split: str, data_cfg: DictConfig) -> None:
    """A missing source/target file gets a message naming the keys that built its name and what is there."""
    if path.exists():
        return
    siblings = sorted(p.name for p in stem.parent.glob(stem.name + ".*")) if stem.parent.is_dir() else []
    raise DataError(
        f"The {split} {side} file {path} does not exist (data.files.{split}={stem.name} + "
        f"data.{side}_suffix={data_cfg.get(f'{side}_suffix')}, under data.root={data_cfg.root}). Files there "
        f"named {stem.name}.*: {siblings or 'none'}. Fix: add the file, or set data.files.{split} to the "
        f"common stem of the pair (train for train.en/train.de) and data.source_suffix / "
        "data.target_suffix to its endings."
    )


def read_lines(path: Path, split: str, encoding: str) -> list[str]:
    """The lines of a text file, without their line ends."""
    check_readable(path, split, encoding)
    lines = path.read_text(encoding=encoding).split("\n")
    # str.splitlines would also break at U+2028, U+0085 or \x1c, which occur inside sentences of crawled
    # corpora and would silently shift every later line out of alignment; only "\n" ends a line here.
    if lines[-1] == "":
        lines.pop()  # the newline that ends the last line does not start another one
    return [line.removesuffix("\r") for line in lines]


def load_parallel(path: Path, data_cfg: DictConfig, split: str) -> tuple[Any, str]:
    """(datasets.Dataset with data.source_column [and data.target_column], source description) of a split."""
    import datasets

    files = parallel_files(path, data_cfg, split)
    for file, side in zip(files, ("source", "target"), strict=False):
        _require_file(file, path, side, split, data_cfg)
    columns = [data_cfg.source_column, data_cfg.target_column][: len(files)]
    texts = [read_lines(file, split, data_cfg.encoding) for file in files]
    if len(texts) == 2 and len(texts[0]) != len(texts[1]):
        raise DataError(
            f"The {split} files are not line-aligned: the source file {files[0]} has {len(texts[0])} lines but the "
            f"target file {files[1]} has {len(texts[1])}. Line i of one must translate line i of the other. Fix: "
            "repair the shorter file (a lost or extra line break), or point data.files / data.source_suffix / "
            "data.target_suffix at a matching pair."
        )
    return datasets.Dataset.from_dict(dict(zip(columns, texts, strict=True))), " + ".join(map(str, files))
