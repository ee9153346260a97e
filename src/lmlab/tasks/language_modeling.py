"""What causal_lm and masked_lm share: the tokenizer at run time and token-weighted loss -> perplexity.

Perplexity is exp of the mean loss per predicted token over the whole split (each batch's mean loss weighted
by its number of predicted tokens, summed across ranks by torchmetrics), not a mean of per-batch values.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torchmetrics import MeanMetric

from lmlab.tasks.base import TaskModule

STAGES = ("train", "val", "test")


class LanguageModelingTask(TaskModule):
    """A task subclass implements ``lm_step`` (loss, predicted tokens, extra metrics) and ``build_model``."""

    needs_tokenizer = True  # builders pass the run's tokenizer (masking, sample generation)

    def __init__(self, model: torch.nn.Module, config: dict[str, Any], label_names: list[str] | None,
                 tokenizer: Any):
        super().__init__(model, config, label_names)
        self.tokenizer = tokenizer
        # Keyed "<stage>_loss": ModuleDict refuses a key that is a Module attribute, such as "train".
        self.token_loss = torch.nn.ModuleDict({f"{stage}_loss": MeanMetric() for stage in STAGES})

    def forward(self, batch: dict[str, torch.Tensor]) -> Any:
        return self.model(**batch)

    def lm_step(self, batch: dict[str, torch.Tensor], stage: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(loss to optimise, LM loss per predicted token, number of predicted tokens) for one batch."""
        raise NotImplementedError

    def _step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        loss, lm_loss, tokens = self.lm_step(batch, stage)
        if tokens > 0:  # a batch without predicted tokens (no mask drawn) has a NaN loss and no weight
            self.token_loss[f"{stage}_loss"].update(lm_loss.detach(), tokens.float())
        rows = len(batch["input_ids"])
        if stage == "train":
            self.log_train_step({"train/loss": lm_loss}, prog_bar=True, batch_size=rows)
        else:
            self.log(f"{stage}/loss", lm_loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=rows,
                     sync_dist=True)
        return loss

    def _log_perplexity(self, stage: str) -> None:
        metric = self.token_loss[f"{stage}_loss"]
        if metric.update_count == 0:
            return
        mean = float(metric.compute())  # token-weighted over the epoch, all ranks
        metric.reset()
        self.log(f"{stage}/ppl", math.exp(min(mean, 50.0)), prog_bar=stage == "val")  # exp(50): overflow guard

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def on_train_epoch_end(self) -> None:
        self._log_perplexity("train")

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_perplexity("val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._log_perplexity("test")
