"""Seq2seq (translation): the BLEU metric against sacreBLEU, parallel/JSONL data and its bad inputs, and the real
CLI on a tiny T5 trained from scratch: the recipe's fast_dev_run, memorising a few Multi30k pairs, evaluate and
predict of that checkpoint. Each test asserts numbers or file contents."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from lmlab.config import schema
from lmlab.config.locate import config_dir
from lmlab.config.schema import Seq2SeqDataConfig
from lmlab.data.seq2seq import Seq2SeqDataModule
from lmlab.errors import ConfigError, DataError
from lmlab.tasks.seq2seq import CorpusBLEU, sacrebleu_from_counts

from .conftest import DATA_ROOT, cli_env, compose_train, read_json, run_dirs, run_lmlab

CONF = config_dir()
MULTI30K = DATA_ROOT / "multi30k-en-de"
QUIET = ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]
RECIPE_FAST = ["experiment=translate_tiny_multi30k", "debug=fast_dev_run", "data.limit_train_samples=64",
               "data.limit_val_samples=16", "data.limit_test_samples=16", "data.batch_size=8",
               "data.eval_batch_size=8", "task.max_new_tokens=8", "task.num_beams=2", *QUIET]
N_PAIRS = 12  # memorised pairs: the first lines of Multi30k train
OVERFIT_EPOCHS = 250  # margin: on 12 pairs the trained Unigram pieces can differ between fresh caches
OVERFIT = ["task=seq2seq", "model=tiny_t5", "data=multi30k", "data.files.train=pairs", "data.files.validation=pairs",
           "data.files.test=pairs", "model.train_tokenizer.vocab_size=300", "model.from_config.dropout_rate=0",
           "optimizer.lr=1e-2", "scheduler=constant", f"trainer.max_epochs={OVERFIT_EPOCHS}",
           # validate (generate) once, at the end: the memorised model is the best checkpoint
           f"trainer.check_val_every_n_epoch={OVERFIT_EPOCHS}", "trainer.num_sanity_val_steps=0",
           "trainer.log_every_n_steps=1", "~callbacks.early_stopping", f"data.batch_size={N_PAIRS}",
           "task.max_new_tokens=48", "export=false", *QUIET]


def env() -> dict[str, str]:
    """cli_env (the session's cache) with one torch thread: tiny models gain nothing from a second one, and on a
    busy machine two OpenMP threads per process spin against each other (20x slower steps, measured)."""
    return cli_env(OMP_NUM_THREADS="1")


def head(path: Path, n: int) -> list[str]:
    return path.read_text(encoding="utf-8").split("\n")[:n]


def write_pair(root: Path, stem: str, sources: list[str], targets: list[str], src: str = ".en",
               tgt: str = ".de") -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{stem}{src}").write_text("".join(s + "\n" for s in sources), encoding="utf-8")
    (root / f"{stem}{tgt}").write_text("".join(t + "\n" for t in targets), encoding="utf-8")


# -- BLEU: sacreBLEU's corpus BLEU, streamed ----------------------------------------------------------------
def test_bleu_hand_computed_cases():
    # 1-4 gram matches 5/6, 3/5, 2/4, 1/3, equal lengths: BLEU = 100 * (5/6 * 3/5 * 2/4 * 1/3) ** (1/4).
    bleu = CorpusBLEU()
    bleu.update(["the cat sat on the mat"], [["the cat sat on a mat"]])
    assert float(bleu.compute()) == pytest.approx(100 * (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25, abs=1e-4)
    # No 4-gram matches (0/2): sacreBLEU's exp smoothing gives that order 1 / (2 * 2); 5 tokens against 6 gives
    # brevity penalty exp(1 - 6/5). Precisions 5/5, 3/4, 1/3, 1/4.
    bleu = CorpusBLEU()
    bleu.update(["the cat on the mat"], [["the cat sat on the mat"]])
    expected = 100 * math.exp(1 - 6 / 5) * (1 * 3 / 4 * 1 / 3 * 1 / 4) ** 0.25
    assert float(bleu.compute()) == pytest.approx(expected, abs=1e-4)
    assert sacrebleu_from_counts([0, 0, 0, 0], [3, 2, 1, 0], 3, 3) == 0.0
    assert sacrebleu_from_counts([2, 1, 0, 0], [2, 1, 0, 0], 2, 2) == 0.0, "no 3-grams at all: order 3 counts as 0"


def test_streamed_bleu_equals_sacrebleu_corpus_bleu_on_real_sentences():
    sacrebleu = pytest.importorskip("sacrebleu")
    refs = head(MULTI30K / "val.de", 300)
    # Deterministic "system outputs" of varied quality: words dropped, swapped, lowercased, one empty.
    hyps = []
    for i, ref in enumerate(refs):
        words = ref.split()
        if i % 4 == 0:
            words = words[::2]
        elif i % 4 == 1:
            words = words[1:] + words[:1]
        elif i % 4 == 2:
            words = [w.lower() for w in words]
        hyps.append(" ".join(words) if i != 7 else "")
    bleu = CorpusBLEU()
    for start in range(0, len(refs), 64):  # streamed in batches, as validation does
        bleu.update(hyps[start:start + 64], [[r] for r in refs[start:start + 64]])
    expected = sacrebleu.corpus_bleu(hyps, [refs]).score
    assert 10 < expected < 90
    assert float(bleu.compute()) == pytest.approx(expected, abs=1e-3)


# -- data: parallel and JSONL files, and their bad inputs ---------------------------------------------------
@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory):
    """A small T5-style Unigram tokenizer trained on 2,000 Multi30k pairs (both sides)."""
    from lmlab.tokenizer_training import train_tokenizer

    texts = head(MULTI30K / "train.en", 2000) + head(MULTI30K / "train.de", 2000)
    spec = {"algorithm": "unigram", "vocab_size": 1000, "min_frequency": 2, "lowercase": False}
    return train_tokenizer(spec, lambda: iter(texts), "test-seq2seq", tmp_path_factory.mktemp("tok"))


def data_cfg(root: Path, **overrides):
    """conf/data/multi30k.yaml on its schema, reading files under ``root`` (files train/val by default)."""
    schema.register()
    local = OmegaConf.load(CONF / "data" / "multi30k.yaml")
    local.pop("defaults")
    cfg = OmegaConf.merge(OmegaConf.structured(Seq2SeqDataConfig), local, {
        "root": str(root), "cache_dir": str(root / "cache"), "use_cache": False,
        "files": {"train": "train", "validation": "val", "test": None}})
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value, merge=False)
    return cfg


def prepare(root: Path, tokenizer, splits=("train", "validation"), **overrides) -> Seq2SeqDataModule:
    dm = Seq2SeqDataModule(data_cfg(root, **overrides), tokenizer, seed=0, splits=splits)
    dm.prepare_data()
    return dm


SRC = ["A man rides a horse.", "Two dogs play in the snow.", "A child eats an apple."]
TGT = ["Ein Mann reitet ein Pferd.", "Zwei Hunde spielen im Schnee.", "Ein Kind isst einen Apfel."]


def test_parallel_files_encode_with_prefix_padded_labels_and_raw_references(tmp_path, tokenizer):
    write_pair(tmp_path, "train", SRC, TGT)
    write_pair(tmp_path, "val", SRC[:2], TGT[:2])
    prefix = "translate English to German: "
    dm = prepare(tmp_path, tokenizer, source_prefix=prefix)
    assert dm.stats["train"]["rows"] == 3 and dm.stats["train"]["source"] == f"{tmp_path}/train.en + {tmp_path}/train.de"
    row = dm.datasets["train"][0]
    assert row["input_ids"] == tokenizer(prefix + SRC[0])["input_ids"] and row["input_ids"][-1] == tokenizer.eos_token_id
    assert row["labels"] == tokenizer(text_target=TGT[0])["input_ids"]
    assert "target_text" not in dm.datasets["train"].column_names, "references only for validation/test"
    batch = next(iter(dm.val_dataloader()))
    assert sorted(batch["target_text"]) == sorted(TGT[:2]), "references are the texts as written in the file"
    labels, lengths = batch["labels"], [len(tokenizer(text_target=t)["input_ids"]) for t in batch["target_text"]]
    for i, n in enumerate(lengths):  # each row's labels end at its length; the rest is -100
        assert (labels[i, n:] == -100).all() and (labels[i, :n] >= 0).all()
    assert batch["input_ids"].shape[0] == 2 and batch["attention_mask"].sum() == sum(
        len(tokenizer(prefix + s)["input_ids"]) for s in SRC[:2])


def test_jsonl_with_configured_column_names(tmp_path, tokenizer):
    rows = [{"en": s, "de": t, "id": i} for i, (s, t) in enumerate(zip(SRC, TGT, strict=True))]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "val.jsonl").write_text(json.dumps(rows[0]) + "\n")
    dm = prepare(tmp_path, tokenizer, format="jsonl", source_column="en", target_column="de",
                 **{"files.train": "train.jsonl", "files.validation": "val.jsonl"})
    assert dm.stats["train"]["rows"] == 3 and dm.stats["validation"]["rows"] == 1
    assert dm.datasets["validation"][0]["labels"] == tokenizer(text_target=TGT[0])["input_ids"]
    assert dm.corpus_columns() == ["en", "de"]
    assert sorted(dm.corpus()) == sorted(SRC + TGT), "a trained tokenizer learns both sides"


def test_unequal_line_counts_name_both_files_and_counts(tmp_path, tokenizer):
    write_pair(tmp_path, "train", SRC, TGT[:2])
    write_pair(tmp_path, "val", SRC, TGT)
    with pytest.raises(DataError) as e:
        prepare(tmp_path, tokenizer)
    message = str(e.value)
    for fragment in (f"source file {tmp_path}/train.en has 3 lines", f"target file {tmp_path}/train.de has 2",
                     "not line-aligned", "Fix:"):
        assert fragment in message, message


def test_missing_target_file_names_it_the_keys_and_what_is_there(tmp_path, tokenizer):
    write_pair(tmp_path, "train", SRC, TGT, tgt=".fr")
    write_pair(tmp_path, "val", SRC, TGT)
    with pytest.raises(DataError) as e:
        prepare(tmp_path, tokenizer)
    message = str(e.value)
    for fragment in (f"train target file {tmp_path}/train.de does not exist", "data.target_suffix=.de",
                     "['train.en', 'train.fr']", "Fix:"):
        assert fragment in message, message


def test_line_separators_inside_a_sentence_keep_the_files_aligned(tmp_path, tokenizer):
    # U+2028 and U+0085 are line breaks to str.splitlines, not to parallel corpora.
    write_pair(tmp_path, "train", ["A man\u2028rides.", "Two\x85dogs.", "A child."], TGT)
    write_pair(tmp_path, "val", SRC, TGT)
    dm = prepare(tmp_path, tokenizer)
    assert dm.stats["train"]["rows"] == 3 and dm.stats["train"]["rows_in_file"] == 3


def test_empty_pairs_are_skipped_counted_and_reported(tmp_path, tokenizer, caplog):
    write_pair(tmp_path, "train", [SRC[0], "", SRC[1], "  ", SRC[2]], [TGT[0], "Leer.", TGT[1], "Leer.", ""])
    write_pair(tmp_path, "val", SRC, TGT)
    with caplog.at_level(logging.WARNING):
        dm = prepare(tmp_path, tokenizer)
    stats = dm.stats["train"]
    assert (stats["rows"], stats["rows_in_file"], stats["empty_skipped"]) == (2, 5, 3)
    assert sorted(dm.datasets["train"]["labels"]) == sorted(tokenizer(text_target=TGT[:2])["input_ids"])
    assert "skipped 3 pair(s)" in caplog.text and "2 pairs remain" in caplog.text
    with pytest.raises(DataError) as e:
        prepare(tmp_path, tokenizer, skip_empty=False)
    assert "3 pair(s) with an empty source or target (rows 2, 4, 5)" in str(e.value)
    assert "data.skip_empty=true" in str(e.value)


def prepare_predict(root: Path, tokenizer, input_path: Path) -> Seq2SeqDataModule:
    """The datamodule as `lmlab predict input=INPUT_PATH` sets it up."""
    cfg = OmegaConf.merge(OmegaConf.create(OmegaConf.to_container(data_cfg(root), resolve=True)),
                          {"files": {"predict": str(input_path)}})
    dm = Seq2SeqDataModule(cfg, tokenizer, splits=())
    dm.splits = ("predict",)
    dm.prepare_data()
    return dm


def test_predict_input_keeps_every_line_even_empty_ones(tmp_path, tokenizer):
    (tmp_path / "input.txt").write_text("A dog.\n\nA cat runs.\n")
    stats = prepare_predict(tmp_path, tokenizer, tmp_path / "input.txt").stats["predict"]
    assert stats["rows"] == 3 and stats["empty_skipped"] == 0
    # The stem of a parallel pair works as input too: input=STEM reads STEM + data.source_suffix.
    write_pair(tmp_path, "test", SRC, TGT)
    stats = prepare_predict(tmp_path, tokenizer, tmp_path / "test").stats["predict"]
    assert stats["rows"] == 3 and stats["source"] == f"{tmp_path}/test.en"


def test_long_sources_and_targets_are_truncated_counted_and_reported(tmp_path, tokenizer, caplog):
    long_src, long_tgt = " ".join(SRC * 4), " ".join(TGT * 4)
    write_pair(tmp_path, "train", [long_src, SRC[1], long_src], [TGT[0], long_tgt, long_tgt])
    write_pair(tmp_path, "val", SRC, TGT)
    with caplog.at_level(logging.WARNING):
        dm = prepare(tmp_path, tokenizer, max_length=12, max_target_length=10)
    stats = dm.stats["train"]
    assert (stats["truncated"], stats["truncated_targets"]) == (2, 2)
    assert stats["max_tokens"] == 12 and max(len(ids) for ids in dm.datasets["train"]["labels"]) == 10
    assert all(ids[-1] == tokenizer.eos_token_id for ids in dm.datasets["train"]["labels"]), "</s> survives truncation"
    assert "data.max_length=12" in caplog.text and "2 of 3 targets" in caplog.text
    assert "data.max_target_length=10" in caplog.text


def composed(overrides: list[str], tmp_path: Path):
    """`lmlab train OVERRIDES --cfg job`, resolved as a run would see it."""
    return compose_train(overrides, tmp_path)


def test_bad_seq2seq_config_values_fail_before_any_model_is_built(tmp_path):
    from lmlab.config.validate import validate

    with pytest.raises(ConfigError) as e:
        validate(composed(["task=seq2seq", "data=multi30k", "data.target_suffix=null", "task.num_beams=0",
                           "data.max_target_length=-1"], tmp_path))
    for fragment in ("data.format=parallel needs data.target_suffix", "task.num_beams=0 must be > 0",
                     "data.max_target_length=-1 must be > 0"):
        assert fragment in str(e.value), str(e.value)
    # A classification data config for task=seq2seq: refused before the tokenizer is trained.
    with pytest.raises(DataError) as e:
        Seq2SeqDataModule(composed(["task=seq2seq", "data=sst2"], tmp_path).data, None, splits=("train",))
    assert "data=sst2 is not a seq2seq data config" in str(e.value) and "data=multi30k" in str(e.value)


def test_task_source_prefix_reaches_the_data_config(tmp_path):
    cfg = composed(["experiment=translate_tiny_multi30k", "task.source_prefix=translate: "], tmp_path)
    assert cfg.data.source_prefix == "translate: " and cfg.task.monitor == "val/bleu"


# -- the real CLI -------------------------------------------------------------------------------------------
def test_recipe_fast_dev_run(workdir: Path):
    run_lmlab("train", *RECIPE_FAST, cwd=workdir, env=env())
    (run,) = run_dirs(workdir, task="seq2seq")
    metrics, meta = read_json(run / "metrics.json"), read_json(run / "run.json")
    assert metrics["global_step"] == 1 and meta["status"] == "completed"
    assert set(metrics["test"]) == {"test/loss", "test/bleu", "test/rouge1", "test/rouge2", "test/rougeL"}
    assert 0.0 <= metrics["test"]["test/bleu"] <= 100.0 and metrics["test"]["test/loss"] > 0
    train = meta["data"]["train"]
    assert (train["rows"], train["rows_in_file"], train["empty_skipped"]) == (64, 29000, 0)
    assert meta["data"]["validation"]["rows_in_file"] == 1014 and meta["data"]["test"]["rows_in_file"] == 1000


@pytest.fixture(scope="module")
def memorised(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny T5 trained until it reproduces N_PAIRS Multi30k pairs (train = validation = test)."""
    cwd = tmp_path_factory.mktemp("memorised")
    write_pair(cwd / "data", "pairs", head(MULTI30K / "train.en", N_PAIRS), head(MULTI30K / "train.de", N_PAIRS))
    run_lmlab("train", *OVERFIT, f"data.root={cwd}/data", cwd=cwd, env=env())
    (run,) = run_dirs(cwd, task="seq2seq")
    return run


def test_tiny_t5_memorises_pairs_to_bleu_above_90(memorised: Path):
    metrics = read_json(memorised / "metrics.json")
    assert metrics["global_step"] == OVERFIT_EPOCHS
    assert metrics["test"]["test/bleu"] > 90 and metrics["val"]["val/bleu"] > 90
    assert metrics["test"]["test/rougeL"] > 0.9
    assert metrics["train"]["loss"] < 0.1


def test_evaluate_reproduces_the_runs_test_metrics(memorised: Path):
    proc = run_lmlab("evaluate", f"ckpt_path={memorised}/checkpoints/best.ckpt", cwd=memorised.parents[3], env=env())
    evaluated = json.loads(proc.stdout.strip().splitlines()[-1])
    train_test = read_json(memorised / "metrics.json")["test"]
    assert set(evaluated) == set(train_test)
    for key, value in train_test.items():
        assert abs(evaluated[key] - value) < 1e-6, key


def test_predict_writes_one_generation_per_source_scoring_the_runs_bleu(memorised: Path, tmp_path: Path):
    data = memorised.parents[3] / "data"
    out = tmp_path / "out.jsonl"
    run_lmlab("predict", f"ckpt_path={memorised}/checkpoints/best.ckpt", f"input={data}/pairs.en",
              f"output={out}", cwd=tmp_path, env=env())
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    sources, refs = head(data / "pairs.en", N_PAIRS), head(data / "pairs.de", N_PAIRS)
    assert [line["source"] for line in lines] == sources
    assert all(line["generated"].strip() for line in lines)
    exact = sum(line["generated"] == ref for line, ref in zip(lines, refs, strict=True))
    assert exact >= N_PAIRS * 2 // 3, f"only {exact} of {N_PAIRS} memorised pairs reproduced exactly"
    # The same generations scored by sacreBLEU itself give the run's test BLEU (same sources, same beams).
    sacrebleu = pytest.importorskip("sacrebleu")
    test_bleu = read_json(memorised / "metrics.json")["test"]["test/bleu"]
    assert sacrebleu.corpus_bleu([line["generated"] for line in lines], [refs]).score == pytest.approx(test_bleu,
                                                                                                     abs=1e-3)
