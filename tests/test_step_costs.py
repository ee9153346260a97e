"""What a training step skips because nothing reads it: the key/value cache of teacher-forced LM/seq2seq passes,
and the profiler contexts Lightning opens around every hook when no profiler is configured."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from .conftest import compose_train, run_dirs, run_lmlab, tiny

RECIPES = {"tiny_gpt2": ("causal_lm", "tinyshakespeare"), "tiny_t5": ("seq2seq", "multi30k")}


def _task_module(tmp_path: Path, model: str, *overrides: str):
    from lmlab.builders import build_task_module
    from lmlab.run_dir import plain_config

    task, data = RECIPES[model]
    cfg = compose_train([f"model={model}", f"task={task}", f"data={data}", *overrides], tmp_path)
    return build_task_module(cfg, plain_config(cfg), None)


def _batch(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    ids = torch.randint(5, 90, (3, 12))
    mask = torch.ones_like(ids)
    mask[0, 8:] = 0
    labels = ids.masked_fill(mask == 0, -100) if model.config.is_encoder_decoder else None
    return {"input_ids": ids, "attention_mask": mask, **({"labels": labels} if labels is not None else {})}


def _training_loss(module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The loss the task's training_step optimises (without Lightning's logging)."""
    return module.lm_step(batch, "train")[0] if hasattr(module, "lm_step") else module(batch).loss


@pytest.mark.parametrize("model_name", list(RECIPES))
def test_training_steps_build_no_key_value_cache_and_compute_the_same_loss(
        tmp_path: Path, model_name: str, monkeypatch: pytest.MonkeyPatch):
    from transformers import cache_utils

    built: list[str] = []
    original = cache_utils.DynamicCache.__init__

    def counting_init(self, *args, **kwargs):
        built.append(type(self).__name__)
        original(self, *args, **kwargs)

    monkeypatch.setattr(cache_utils.DynamicCache, "__init__", counting_init)
    module = _task_module(tmp_path, model_name)
    model = module.model.train()
    batch = _batch(model)
    labels = batch.get("labels", batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100))

    torch.manual_seed(0)
    loss = _training_loss(module, dict(batch))
    assert built == []  # the task's step: no cache
    torch.manual_seed(0)  # the same dropout masks
    cached = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels).loss
    assert built  # the model's own default builds one: the spy sees it
    assert torch.equal(loss, cached)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_trainer_without_a_configured_profiler_gets_the_no_op_one(tmp_path: Path):
    from lightning.pytorch.profilers import PassThroughProfiler, SimpleProfiler

    from lmlab.builders import build_trainer
    from lmlab.profiling import NoOpProfiler

    base = ["model=tiny_bert", "task=sequence_classification", "data=sst2", "trainer.accelerator=cpu"]
    trainer = build_trainer(compose_train(base, tmp_path), [], [])
    assert type(trainer.profiler) is NoOpProfiler and isinstance(trainer.profiler, PassThroughProfiler)
    first, second = trainer.profiler.profile("a"), trainer.profiler.profile("b")
    assert first is second  # one shared null context: nothing built per call
    with first as value:
        assert value is None
    configured = build_trainer(compose_train([*base, "trainer.profiler=simple"], tmp_path), [], [])
    assert type(configured.profiler) is SimpleProfiler


def test_debug_profiler_still_writes_lightnings_report(workdir: Path):
    run_lmlab("train", *tiny("debug=profiler", "trainer.limit_train_batches=3", "trainer.limit_val_batches=1"),
              cwd=workdir)
    (run,) = run_dirs(workdir, "sequence_classification")
    reports = list(run.glob("*profile*.txt"))
    assert reports, f"no profiler report in {sorted(p.name for p in run.iterdir())}"
    text = reports[0].read_text()
    assert "run_training_batch" in text and "training_step" in text
