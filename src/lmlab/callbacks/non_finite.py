"""Stop (or skip the step) when the gradients become NaN/inf, before the optimizer applies them.

Lightning's EarlyStopping(check_finite) sees only the monitored validation metric, so a diverged run would
train on NaN weights until the next validation and then checkpoint them. This callback checks the total
gradient norm right before every optimizer step (one fused norm: ~1 ms for a 22M-parameter model):
  - action=stop: raise TrainingError naming the step; nothing non-finite was applied, so last.ckpt and
    best.ckpt hold the last good weights, and the run is marked failed (run.json, metrics.json, W&B).
  - action=skip: drop that step's gradients (the optimizer then leaves every parameter as it is), warn, and
    stop after ``max_skips`` skipped steps in a row.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback

from lmlab.errors import TrainingError

log = logging.getLogger(__name__)
ACTIONS = ("stop", "skip")


def gradient_norm(params: Any) -> torch.Tensor:
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.tensor(0.0)
    return torch.nn.utils.get_total_norm(grads)


class NonFiniteGuard(Callback):
    def __init__(self, action: str = "stop", max_skips: int = 10):
        if action not in ACTIONS:
            raise ValueError(f"callbacks.non_finite.action={action!r}: valid are {', '.join(ACTIONS)}")
        self.action = action
        self.max_skips = max_skips
        self.skipped_in_a_row = 0
        self.skipped_total = 0

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        # The optimizer's parameters: the set Lightning clips, so the task module's clipping reuses this norm.
        norm = gradient_norm(p for group in optimizer.param_groups for p in group["params"])
        if bool(torch.isfinite(norm)):
            self.skipped_in_a_row = 0
            pl_module.guard_grad_norm = norm
            return
        step = trainer.global_step
        where = f"at step {step} (epoch {trainer.current_epoch})"
        if self.action == "skip" and self.skipped_in_a_row < self.max_skips:
            for group in optimizer.param_groups:
                for p in group["params"]:
                    p.grad = None  # torch optimizers leave parameters without a gradient untouched
            self.skipped_in_a_row += 1
            self.skipped_total += 1
            log.warning("non-finite gradient norm %s: step skipped (%d in a row, %d in all)", where,
                        self.skipped_in_a_row, self.skipped_total)
            pl_module.log("train/skipped_steps", float(self.skipped_total), on_step=True, on_epoch=False)
            return
        reason = (f"{self.skipped_in_a_row} steps in a row were skipped (callbacks.non_finite.max_skips="
                  f"{self.max_skips})" if self.action == "skip" else "callbacks.non_finite.action=stop")
        raise TrainingError(
            f"The gradients became NaN/inf {where}; training stopped ({reason}) before applying them, so "
            "checkpoints/last.ckpt holds the last good weights. Fix: lower optimizer.lr, raise "
            "scheduler.warmup_ratio, keep trainer.gradient_clip_val set, or use trainer.precision=32-true / "
            "bf16 instead of 16-mixed; then continue with resume=<this run dir>, or set "
            "callbacks.non_finite.action=skip to step over rare bad batches."
        )
