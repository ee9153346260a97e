"""The task module's training step as Lightning runs it: when gradients are freed (before the forward, not after
it) without changing what is computed, gradient accumulation included."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch

from tests.conftest import compose_train, tiny


def fit_recording_gradients(cfg, early_zero: bool) -> tuple[list[bool], dict, dict]:
    """trainer.fit on ``cfg``; returns, for every training forward, whether any parameter still held a gradient
    when it started, and the weights before and after training. ``early_zero=False`` runs Lightning's own order
    (the module's on_train_batch_start hook replaced by LightningModule's no-op)."""
    from lmlab.builders import (
        build_callbacks,
        build_datamodule,
        build_task_module,
        build_tokenizer,
        build_trainer,
    )
    from lmlab.run_dir import plain_config
    from lmlab.tasks.base import TaskModule

    L.seed_everything(0, workers=True, verbose=False)
    tokenizer = build_tokenizer(cfg)
    datamodule = build_datamodule(cfg, tokenizer)
    datamodule.prepare_data()
    datamodule.setup("fit")
    module = build_task_module(cfg, plain_config(cfg), datamodule.label_names, tokenizer=tokenizer)
    initial = {k: v.clone() for k, v in module.model.state_dict().items()}
    held: list[bool] = []

    def record(model: torch.nn.Module, args: object) -> None:
        if model.training and torch.is_grad_enabled():
            held.append(any(p.grad is not None for p in model.parameters()))

    module.model.register_forward_pre_hook(record)
    trainer = build_trainer(cfg, build_callbacks(cfg, has_logger=False), [])
    with pytest.MonkeyPatch.context() as patch:
        if not early_zero:
            patch.setattr(TaskModule, "on_train_batch_start", L.LightningModule.on_train_batch_start)
        trainer.fit(module, datamodule=datamodule)
    return held, initial, {k: v.clone() for k, v in module.model.state_dict().items()}


@pytest.mark.parametrize("accumulate", [1, 2])
def test_gradients_are_freed_before_the_forward_with_the_same_training(tmp_path: Path, accumulate):
    """Lightning zeroes gradients between training_step and backward, so the previous step's gradients would stay
    allocated through the forward (memory's peak); lmlab frees them at the step's start. With accumulation the
    window's later micro-batches keep accumulating, and the trained weights are bitwise Lightning's own order's."""
    cfg = compose_train(tiny("trainer.max_epochs=1", "data.limit_train_samples=96",
                             f"trainer.accumulate_grad_batches={accumulate}", "trainer.num_sanity_val_steps=0",
                             "trainer.limit_val_batches=1", "test=false", "export=false",
                             "trainer.precision=32-true"), tmp_path)
    held, initial, weights = fit_recording_gradients(cfg, early_zero=True)
    held_late, _, weights_late = fit_recording_gradients(cfg, early_zero=False)
    steps = cfg.data.limit_train_samples // cfg.data.batch_size
    assert len(held) == len(held_late) == steps
    # Lightning's order: every forward after the first runs beside the previous step's gradients.
    assert held_late == [False] + [True] * (steps - 1)
    # lmlab's: none at the start of an accumulation window, the window's own after it.
    assert held == [i % accumulate != 0 for i in range(steps)]
    for name, value in weights.items():
        assert torch.equal(value, weights_late[name]), name
    assert sum(not torch.equal(weights[k], initial[k]) for k in initial) > len(initial) // 2  # it trained

