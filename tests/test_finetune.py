"""The `finetune` group: freezing (bitwise-unchanged frozen weights), gradual unfreezing, layer-wise lr decay,
head lr; every option against every task; bad patterns."""

from __future__ import annotations

import csv
import functools
import json
from pathlib import Path
from typing import Any

import lightning as L
import pytest

from .conftest import REPO, cli_env, compose_train, read_json, run_dirs, run_lmlab, tiny

FINETUNE_OPTIONS = sorted(p.stem for p in (REPO / "conf" / "finetune").glob("*.yaml"))
# One recipe per task, and the architecture its tiny model has (built in-process below).
TASKS = {
    "sequence_classification": ("sst2_tiny", "AutoModelForSequenceClassification", {"model_type": "bert"}),
    "token_classification": ("wnut17_minilm", "AutoModelForTokenClassification", {"model_type": "bert"}),
    "masked_lm": ("mlm_tiny_wikitext2", "AutoModelForMaskedLM", {"model_type": "bert"}),
    "causal_lm": ("clm_tiny_shakespeare", "AutoModelForCausalLM", {"model_type": "gpt2", "n_layer": 2}),
    "seq2seq": ("translate_tiny_multi30k", "AutoModelForSeq2SeqLM",
                {"model_type": "t5", "num_layers": 2, "num_decoder_layers": 2}),
}
SIZES = {"bert": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64},
         "gpt2": {"n_embd": 32, "n_head": 2}, "t5": {"d_model": 32, "d_kv": 8, "d_ff": 64, "num_heads": 2}}
NO_DECAY = ["bias", "LayerNorm.weight", "layer_norm.weight", "ln_f.weight", "ln_1.weight", "ln_2.weight"]


@functools.cache
def _tiny_model(task: str) -> Any:
    import transformers

    _, auto_class, arch = TASKS[task]
    config = transformers.AutoConfig.for_model(**arch, **SIZES[arch["model_type"]], vocab_size=100, num_labels=3)
    return getattr(transformers, auto_class).from_config(config)


def tiny_model(task: str) -> Any:
    """A 2-layer model of the class the task builds (random init, vocabulary 100; built once per session,
    every parameter trainable again on each call)."""
    model = _tiny_model(task)
    model.requires_grad_(True)
    return model


def wrapped(model: Any) -> Any:
    """What configure_optimizers sees: a module holding the transformer as ``.model``."""
    import torch

    module = torch.nn.Module()
    module.model = model
    return module


# -- every option x every task -------------------------------------------------------------------------
@pytest.mark.parametrize("option", FINETUNE_OPTIONS)
@pytest.mark.parametrize("task", list(TASKS))
def test_every_option_composes_with_every_task_or_names_both(task: str, option: str, tmp_path: Path):
    from lmlab.errors import ConfigError
    from lmlab.techniques.freezing import Finetuning, select
    from lmlab.techniques.param_groups import finetune_groups

    overrides = [f"experiment={TASKS[task][0]}", f"finetune={option}", "trainer.max_epochs=2"]
    tied_head = task in ("causal_lm", "seq2seq") and option in ("head_only", "head_warmup")
    if tied_head:
        with pytest.raises(ConfigError) as e:
            compose_train(overrides, tmp_path, check=True)
        assert "finetune." in str(e.value) and f"task={task}" in str(e.value) and "all_but_head" in str(e.value)
        return
    cfg = compose_train(overrides, tmp_path, check=True)
    assert cfg.task.name == task
    # And it applies to the model that task builds: patterns match, groups cover every trainable weight.
    finetune = dict(cfg.finetune)
    model = tiny_model(task)
    callback = Finetuning(finetune["freeze"], finetune["unfreeze"], finetune["unfreeze_every_n_epochs"])
    callback.trainable = {n for n, _ in model.named_parameters()}
    callback.frozen = set().union(*(select(model, p, "finetune.freeze") for p in finetune["freeze"]))
    callback.apply(model, epoch=0)
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable
    groups = finetune_groups(wrapped(model), 1e-3, 0.01, NO_DECAY, finetune)
    if groups is not None:
        grouped = {id(p) for g in groups for p in g["params"]}
        assert trainable <= grouped


# -- layer-wise lr decay -------------------------------------------------------------------------------
EXPECTED_LLRD = {  # parameter name -> lr multiplier, with 2 layers (4 for T5: encoder then decoder) and d=0.5
    "sequence_classification": {"bert.encoder.layer.1.output.dense.weight": 0.5,
                                "bert.encoder.layer.0.attention.self.query.weight": 0.25,
                                "bert.embeddings.word_embeddings.weight": 0.125,
                                "bert.pooler.dense.weight": 1.0, "classifier.weight": "head"},
    "causal_lm": {"transformer.h.1.mlp.c_fc.weight": 0.5, "transformer.h.0.attn.c_attn.weight": 0.25,
                  "transformer.wte.weight": 0.125, "transformer.ln_f.weight": 1.0},
    "seq2seq": {"decoder.block.1.layer.2.DenseReluDense.wi.weight": 0.5,
                "decoder.block.0.layer.0.SelfAttention.q.weight": 0.25,
                "encoder.block.1.layer.0.SelfAttention.q.weight": 0.125,
                "encoder.block.0.layer.1.DenseReluDense.wo.weight": 0.0625, "shared.weight": 0.03125,
                "encoder.final_layer_norm.weight": 1.0},
    "masked_lm": {"bert.encoder.layer.0.output.dense.weight": 0.25, "cls.predictions.transform.dense.weight": "head"},
}


@pytest.mark.parametrize("task", list(EXPECTED_LLRD))
def test_layerwise_lr_decay_sets_each_layers_lr_in_the_optimizer(task: str):
    import torch

    from lmlab.techniques.param_groups import finetune_groups

    model = tiny_model(task)
    finetune = {"layerwise_lr_decay": 0.5, "head_lr": 0.02, "freeze": [], "unfreeze": []}
    optimizer = torch.optim.AdamW(finetune_groups(wrapped(model), 1e-3, 0.01, NO_DECAY, finetune))
    by_param = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    params = dict(model.named_parameters())
    for name, scale in EXPECTED_LLRD[task].items():
        group = by_param[id(params[name])]
        assert group["lr"] == pytest.approx(0.02 if scale == "head" else 1e-3 * scale), name
    # Biases and norm weights keep weight decay 0 in every group.
    for name, param in params.items():
        assert by_param[id(param)]["weight_decay"] == (0.0 if any(k in name for k in NO_DECAY) else 0.01), name
    # Every parameter is in exactly one group.
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(params)


def test_plain_config_keeps_the_two_plain_groups():
    from lmlab.techniques.param_groups import finetune_groups

    off = {"freeze": [], "unfreeze": [], "layerwise_lr_decay": None, "head_lr": None}
    assert finetune_groups(wrapped(tiny_model("sequence_classification")), 1e-3, 0.01, NO_DECAY, off) is None
    assert finetune_groups(wrapped(tiny_model("sequence_classification")), 1e-3, 0.01, NO_DECAY, None) is None


# -- bad patterns and values ----------------------------------------------------------------------------
def test_pattern_matching_no_parameter_names_it_and_shows_real_prefixes():
    from lmlab.errors import ConfigError
    from lmlab.techniques.freezing import select

    model = tiny_model("sequence_classification")
    assert len(select(model, "encoder.layer.0-1", "finetune.freeze")) == 2 * 16
    assert len(select(model, "encoder.layer.1", "finetune.freeze")) == 16  # not layer 10, 11, ...
    with pytest.raises(ConfigError) as e:
        select(model, "encoder.layer.7", "finetune.freeze")
    message = str(e.value)
    assert "finetune.freeze: pattern 'encoder.layer.7' matches no parameter" in message
    assert "bert.embeddings.word_embeddings" in message and "bert.encoder.layer.0" in message
    assert "classifier" in message


def test_bad_finetune_values_fail_at_validate_time(tmp_path: Path):
    from lmlab.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        compose_train(["finetune.freeze=[encoder.layer.3-1,embeddings..x]", "finetune.layerwise_lr_decay=1.5",
                       "finetune.head_lr=0", "finetune.unfreeze=[embeddings]", "trainer.max_epochs=1"],
                      tmp_path, check=True)
    with pytest.raises(ConfigError) as e2:
        compose_train(["finetune.unfreeze=[embeddings]", "finetune.unfreeze_every_n_epochs=0"], tmp_path, check=True)
    problems = e.value.problems + e2.value.problems
    assert any("'encoder.layer.3-1'" in p and "backwards" in p for p in problems)
    assert any("'embeddings..x'" in p for p in problems)
    assert any(p.startswith("finetune.layerwise_lr_decay=1.5 must be in (0, 1]") for p in problems)
    assert any(p.startswith("finetune.head_lr=0.0 must be > 0") for p in problems)
    assert any("never reached with trainer.max_epochs=1" in p and "trainer.max_epochs=2" in p for p in problems)
    assert any(p.startswith("finetune.unfreeze is set but finetune.freeze is empty") for p in problems)
    assert any(p.startswith("finetune.unfreeze_every_n_epochs=0 must be >= 1") for p in problems)
    assert len(problems) == 7


# -- end to end through the CLI ---------------------------------------------------------------------------
class Probe(L.Callback):
    """Test-only callback (instantiated by Hydra inside the lmlab process): saves the weights before the first
    step and, per epoch, the trainable-parameter count and which top-level modules' weights changed."""

    def __init__(self, path: str) -> None:
        self.path, self.epochs, self.start = Path(path), {}, {}

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        import torch

        self.start = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
        torch.save(self.start, self.path / "initial.pt")

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if batch_idx == 0:  # after every epoch-start hook, before the epoch's first step
            self.epochs[trainer.current_epoch] = {
                "trainable": sum(p.numel() for p in pl_module.parameters() if p.requires_grad)}

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        import torch

        changed = {k.split(".")[1] for k, v in pl_module.state_dict().items() if not torch.equal(v, self.start[k])}
        self.epochs[trainer.current_epoch]["changed"] = sorted(changed)
        (self.path / "probe.json").write_text(json.dumps(self.epochs))


def probe(path: Path) -> list[str]:
    return ["+callbacks.probe._target_=tests.test_finetune.Probe", f"+callbacks.probe.path={path}"]


def probe_env() -> dict[str, str]:
    return cli_env(PYTHONPATH=str(REPO))


HEAD = 32 * 2 + 2  # tiny_bert's classifier: hidden 32 -> 2 labels


def test_freezing_all_but_the_head_leaves_frozen_weights_bitwise_unchanged(workdir: Path):
    import torch

    from lmlab.checkpoints import load_checkpoint

    run_lmlab("train", *tiny("finetune=head_only", "scheduler=constant", "trainer.log_every_n_steps=1", *probe(workdir)), cwd=workdir,
              env=probe_env())
    (run,) = run_dirs(workdir)
    initial = torch.load(workdir / "initial.pt", weights_only=True)
    trained = load_checkpoint(run / "checkpoints" / "last.ckpt")["state_dict"]
    frozen = [k for k in initial if k.startswith("model.bert.")]
    assert len(frozen) > 30
    for name in frozen:
        assert torch.equal(initial[name], trained[name]), name
    for name in ("model.classifier.weight", "model.classifier.bias"):
        assert not torch.equal(initial[name], trained[name]), name
    metrics = read_json(run / "metrics.json")
    total = sum(v.numel() for v in initial.values())
    assert metrics["params"] == {"trainable": HEAD, "total": total}
    assert f"trainable parameters: {HEAD} of {total}" in (run / "train.log").read_text()
    # finetune.head_lr reaches the optimizer (constant schedule: the logged lr is the head lr itself).
    with open(run / "logs" / "metrics.csv") as f:
        head_lrs = {float(r["lr-AdamW/head"]) for r in csv.DictReader(f) if r.get("lr-AdamW/head")}
    assert head_lrs == {1e-2}


@pytest.mark.slow  # two epochs, then evaluate
def test_gradual_unfreezing_turns_the_body_on_at_epoch_one(workdir: Path):
    run_lmlab("train", *tiny("finetune=head_warmup", "trainer.max_epochs=2", "data.limit_train_samples=64",
                             *probe(workdir)), cwd=workdir, env=probe_env())
    (run,) = run_dirs(workdir)
    epochs = read_json(workdir / "probe.json")
    total = read_json(run / "metrics.json")["params"]["total"]
    assert epochs["0"] == {"trainable": HEAD, "changed": ["classifier"]}  # the body did not move in epoch 0
    assert epochs["1"] == {"trainable": total, "changed": ["bert", "classifier"]}
    log = (run / "train.log").read_text()
    assert f"trainable parameters: {HEAD} of {total}" in log
    assert "epoch 1: unfroze 39 tensors (bert.embeddings.word_embeddings" in log
    # Restore still works (evaluate builds the model without weights, then loads the checkpoint).
    proc = run_lmlab("evaluate", f"ckpt_path={run / 'checkpoints' / 'best.ckpt'}", cwd=workdir)
    evaluated = json.loads(proc.stdout.strip().splitlines()[-1])
    assert evaluated["test/acc"] == pytest.approx(read_json(run / "metrics.json")["test"]["test/acc"], abs=1e-6)


# -- optimizer.fused ------------------------------------------------------------------------------------
def test_fused_optimizer_is_used_where_torch_has_a_kernel_and_false_keeps_the_default_loop():
    import torch

    from lmlab.tasks.base import use_fused_kernel

    params = [torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2, 2))]
    assert use_fused_kernel(None, params) is True  # auto on CPU
    assert use_fused_kernel(False, params) is None  # torch's own default (per-parameter loop on CPU)
    assert use_fused_kernel(True, params) is True
    assert use_fused_kernel(None, params, grad_scaler=True) is None  # 16-mixed: Lightning clips unscaled grads
    assert use_fused_kernel(None, [torch.nn.Parameter(torch.zeros(3), requires_grad=False).to("meta")]) is None

    class FlatParameter(torch.nn.Parameter):  # a wrapper's own parameter type (FSDP): left to torch
        pass

    assert use_fused_kernel(None, [FlatParameter(torch.zeros(3))]) is None
    # And the auto choice gives the same update as the default loop, within float rounding.
    for fused in (None, False):
        torch.manual_seed(0)
        start = torch.randn(64, 64)
        weights = torch.nn.Parameter(start.clone())
        optimizer = torch.optim.AdamW([weights], lr=1e-2, fused=use_fused_kernel(fused, [weights]))
        for _ in range(5):
            weights.grad = torch.sin(weights.detach() * 3)
            optimizer.step()
        if fused is None:
            auto = weights.detach().clone()
    assert torch.allclose(auto, weights.detach(), atol=1e-6)
    assert (auto - start).abs().mean() > 1e-2  # the steps were taken (5 x lr 1e-2)
