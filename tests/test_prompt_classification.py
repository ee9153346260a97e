"""task=prompt_classification: template encoding, scoring at [MASK], few-shot sampling, zero-shot evaluate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmlab.errors import ConfigError

from .conftest import compose_train, read_json, run_lmlab, tiny

PROMPT = ["task=prompt_classification", "model=tiny_bert"]


def _datamodule(tmp_path: Path, *overrides: str, splits: tuple[str, ...] = ("validation",)):
    from lmlab.builders import build_datamodule, build_tokenizer

    cfg = compose_train([*PROMPT, "data.limit_val_samples=3", *overrides], tmp_path, check=True)
    tokenizer = build_tokenizer(cfg)
    datamodule = build_datamodule(cfg, tokenizer, splits=splits)
    datamodule.prepare_data()
    return cfg, tokenizer, datamodule


def test_scores_are_the_mlm_logits_of_the_verbalizer_at_the_mask(tmp_path: Path):
    """Encoded rows are the filled-in template; class logits equal a manual BertForMaskedLM forward's."""
    import torch

    from lmlab.builders import build_task_module
    from lmlab.run_dir import plain_config

    cfg, tokenizer, dm = _datamodule(tmp_path)
    first = dm.datasets["validation"][0]
    assert dm.label_names == ["0", "1"]
    sentence = "it 's a charming and often affecting journey ."  # dev.tsv row 1 (trailing space stripped)
    assert first["input_ids"] == tokenizer(f"{sentence} It was [MASK].")["input_ids"]
    torch.manual_seed(0)
    module = build_task_module(cfg, plain_config(cfg), dm.label_names, tokenizer=tokenizer).eval()
    batch = next(iter(dm.val_dataloader()))
    assert len(batch["labels"]) == 3
    with torch.no_grad():
        got = module(batch).logits  # (3, 2)
        vocab = module.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                             token_type_ids=batch["token_type_ids"]).logits  # (3, seq, vocab)
    words = tokenizer.convert_tokens_to_ids(["terrible", "great"])
    rows, cols = (batch["input_ids"] == tokenizer.mask_token_id).nonzero(as_tuple=True)
    assert rows.tolist() == [0, 1, 2]
    torch.testing.assert_close(got, vocab[rows, cols][:, words], rtol=1e-5, atol=1e-6)
    expected_loss = torch.nn.functional.cross_entropy(vocab[rows, cols][:, words], batch["labels"])
    torch.testing.assert_close(module(batch).loss, expected_loss, rtol=1e-5, atol=1e-6)

    # task.calibrate: log p(word | text) - log p(word | "N/A It was [MASK].")
    cal_cfg = compose_train([*PROMPT, "task.calibrate=true"], tmp_path)
    calibrated = build_task_module(cal_cfg, plain_config(cal_cfg), dm.label_names, tokenizer=tokenizer).eval()
    calibrated.model.load_state_dict(module.model.state_dict())
    calibrated.on_validation_epoch_start()
    free = tokenizer("N/A It was [MASK].", return_tensors="pt")
    with torch.no_grad():
        free_logits = module.model(**free).logits[free["input_ids"] == tokenizer.mask_token_id][:, words]  # (1, 2)
        torch.testing.assert_close(calibrated(batch).logits, vocab[rows, cols][:, words].log_softmax(-1)
                                   - free_logits.log_softmax(-1), rtol=1e-5, atol=1e-5)


def test_long_texts_lose_their_own_tokens_never_the_template(tmp_path: Path):
    _, tokenizer, dm = _datamodule(tmp_path, "data.max_length=12")
    for row in dm.datasets["validation"]:
        tokens = tokenizer.convert_ids_to_tokens(row["input_ids"])
        assert len(tokens) <= 12 and tokens[0] == "[CLS]"
        assert tokens[-5:] == ["it", "was", "[MASK]", ".", "[SEP]"]
    assert dm.stats["validation"]["truncated"] >= 1


def test_few_shot_draws_exactly_k_rows_per_class_the_same_for_a_seed(tmp_path: Path):
    from lmlab.data.prompt_classification import few_shot_rows

    labels = [str(i % 3 == 0) for i in range(60)]  # 20 "True", 40 "False"
    rows = few_shot_rows(labels, ["False", "True"], 5, seed=1, source="x")
    assert rows == few_shot_rows(labels, ["False", "True"], 5, seed=1, source="x")
    assert rows != few_shot_rows(labels, ["False", "True"], 5, seed=2, source="x")
    assert sorted(labels[i] for i in rows) == ["False"] * 5 + ["True"] * 5
    with pytest.raises(Exception, match="only 20 row"):
        few_shot_rows(labels, ["False", "True"], 21, seed=1, source="x")

    _, _, dm = _datamodule(tmp_path, "task.few_shot_k=4", "seed=3", splits=("train",))
    train = dm.datasets["train"]
    assert sorted(train["labels"]) == [0] * 4 + [1] * 4
    _, _, again = _datamodule(tmp_path, "task.few_shot_k=4", "seed=3", "data.use_cache=false", splits=("train",))
    assert again.datasets["train"]["input_ids"] == train["input_ids"]


def test_verbalizer_word_of_several_tokens_is_an_error_naming_its_pieces(tmp_path: Path):
    from lmlab.data.prompt_classification import verbalizer_ids
    from lmlab.models import load_tokenizer

    cfg = compose_train(PROMPT, tmp_path)
    tokenizer = load_tokenizer(cfg.model)
    assert verbalizer_ids({"0": "terrible", "1": "great"}, ["0", "1"], tokenizer) == \
        tokenizer.convert_tokens_to_ids(["terrible", "great"])
    with pytest.raises(ConfigError) as err:
        verbalizer_ids({"0": "terrible", "1": "unwatchable"}, ["0", "1"], tokenizer)
    message = str(err.value)
    assert "task.verbalizer.1='unwatchable'" in message and str(tokenizer.tokenize("unwatchable")) in message
    with pytest.raises(ConfigError, match="no word for label"):
        verbalizer_ids({"0": "terrible"}, ["0", "1"], tokenizer)


def test_bad_prompt_options_fail_at_validation(tmp_path: Path):
    cfg = compose_train([*PROMPT, "task.template='{text} is good'", "task.few_shot_k=0",
                         "task.verbalizer.1=very good"], tmp_path)
    from lmlab.config.validate import validate

    with pytest.raises(ConfigError) as err:
        validate(cfg)
    message = str(err.value)
    assert "0 {mask} placeholders" in message
    assert "task.few_shot_k=0 must be > 0" in message
    assert "task.verbalizer.1='very good' must be one word" in message
    pair = compose_train([*PROMPT, "data=mrpc"], tmp_path)
    with pytest.raises(ConfigError, match="text_pair"):
        validate(pair)
    validate(compose_train([*PROMPT, "data=mrpc", "task.template='{text} ? {mask} , {text_pair}'",
                            "task.verbalizer.0=no", "task.verbalizer.1=yes"], tmp_path))


def test_data_or_tokenizer_that_does_not_fit_is_a_clear_error(tmp_path: Path):
    from types import SimpleNamespace

    from lmlab.builders import build_datamodule
    from lmlab.errors import DataError

    text = compose_train([*PROMPT, "data=wikitext2"], tmp_path, check=True)
    with pytest.raises(DataError, match="data.format=text.*task=prompt_classification needs one text"):
        build_datamodule(text, None)
    sst2 = compose_train(PROMPT, tmp_path, check=True)
    with pytest.raises(DataError, match="has no mask token.*masked-LM model"):
        build_datamodule(sst2, SimpleNamespace(mask_token=None))


def test_every_recipe_composes_with_the_prompt_task(tmp_path: Path):
    from lmlab.config.validate import validate

    for recipe in ("sst2_prompt_minilm", "sst2_prompt_minilm_fewshot"):
        cfg = compose_train([f"experiment={recipe}", f"model.name_or_path={tmp_path}"], tmp_path, check=True)
        assert cfg.task.name == "prompt_classification" and cfg.model.name_or_path == str(tmp_path)
    fewshot = compose_train(["experiment=sst2_prompt_minilm_fewshot", f"model.name_or_path={tmp_path}"], tmp_path)
    assert fewshot.task.few_shot_k == 16 and fewshot.data.limit_train_samples is None
    # Zero-shot is scored calibrated (raw scores pick one word for every sentence); the few-shot model as it is.
    zero_shot = compose_train(["experiment=sst2_prompt_minilm", f"model.name_or_path={tmp_path}"], tmp_path)
    assert zero_shot.task.calibrate is True and fewshot.task.calibrate is False
    mlm = compose_train(["experiment=mlm_minilm_sst2"], tmp_path)
    validate(mlm)
    assert (mlm.task.name, mlm.data.text_column, mlm.data.format) == ("masked_lm", "sentence", "tsv")
    # The new MLM head learns 20x faster than the pretrained encoder (param groups: finetune.head_lr).
    assert (mlm.optimizer.lr, mlm.finetune.head_lr, mlm.data.limit_train_samples) == (1e-4, 2e-3, 32000)


def test_zero_shot_evaluate_without_checkpoint_writes_metrics(workdir: Path):
    proc = run_lmlab("evaluate", *PROMPT, "split=validation", "data.limit_val_samples=40",
                     "trainer.enable_progress_bar=false", cwd=workdir)
    (metrics_file,) = (workdir / "outputs" / "prompt_classification" / "evals").glob("*/metrics.json")
    metrics = read_json(metrics_file)
    assert metrics["checkpoint"] is None and metrics["model"] == "from_config (random init)"
    assert metrics["data"].endswith("sst2/dev.tsv") and metrics["split"] == "validation"
    values = metrics["validation"]
    assert set(values) >= {"val/acc", "val/f1", "val/mcc", "val/f1_pos", "val/loss"}
    assert round(values["val/acc"] * 40, 4) == int(round(values["val/acc"] * 40))  # a count of 40 rows
    assert f'"val/acc": {values["val/acc"]}' in proc.stdout


def test_evaluate_without_checkpoint_of_a_task_that_needs_training_says_so(tmp_path: Path):
    from lmlab.evaluate import untrained_task

    with pytest.raises(ConfigError, match="ckpt_path is missing: task=sequence_classification evaluates a trained"):
        untrained_task(compose_train(["model=tiny_bert"], tmp_path), "test")


@pytest.mark.slow
def test_few_shot_training_then_evaluate_its_checkpoint(workdir: Path):
    """PET-style training on k rows per class, then `lmlab evaluate` of the checkpoint gives the run's numbers."""
    run_lmlab("train", *tiny(*PROMPT, "task.few_shot_k=8", "trainer.max_epochs=2", "optimizer.lr=1e-3"), cwd=workdir)
    (run,) = (workdir / "outputs" / "prompt_classification" / "runs").iterdir()
    metrics = read_json(run / "metrics.json")
    meta = read_json(run / "run.json")
    assert meta["data"]["train"]["rows"] == 16 and metrics["global_step"] == 2  # 16 rows / batch 16, 2 epochs
    assert (run / "export" / "labels.json").is_file()
    run_lmlab("evaluate", f"ckpt_path={run}/checkpoints/best.ckpt", "split=test", cwd=workdir)
    (evaluated,) = (workdir / "outputs").glob("*/evals/*/metrics.json")
    assert read_json(evaluated)["test"]["test/acc"] == pytest.approx(metrics["test"]["test/acc"])
    (workdir / "in.tsv").write_text("sentence\na gorgeous , witty film .\nawful .\n")
    run_lmlab("predict", f"ckpt_path={run}/checkpoints/best.ckpt", "input=in.tsv", "output=out.jsonl", cwd=workdir)
    records = [json.loads(line) for line in (workdir / "out.jsonl").read_text().splitlines()]
    assert [r["sentence"] for r in records] == ["a gorgeous , witty film .", "awful ."]
    assert all(set(r["probs"]) == {"0", "1"} and sum(r["probs"].values()) == pytest.approx(1, abs=1e-5) for r in records)
