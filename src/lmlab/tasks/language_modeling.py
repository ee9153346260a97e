"""What causal_lm and masked_lm share: the tokenizer at run time and token-weighted loss -> perplexity.

Perplexity is exp of the mean loss per predicted token over the whole split (each batch's mean loss weighted
by its number of predicted tokens, summed across ranks by torchmetrics), not a mean of per-batch values.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torchmetrics import Metric

from lmlab.tasks.base import TaskModule

STAGES = ("train", "val", "test")


class TokenWeightedLoss(Metric):
    """Mean loss per predicted token: each batch's mean loss weighted by its token count, summed across ranks.

    Not torchmetrics' MeanMetric: its NaN check reads a value back from the device on every update (a GPU stall
    each step), and with that check disabled it ignores the weights (torchmetrics 1.9). A batch without
    predicted tokens (possibly a NaN loss) adds nothing, through a tensor ``where`` rather than a host-side
    ``if``; a diverged model's NaN loss in any other batch shows in the result."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("loss_sum", default=torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("tokens", default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, loss: torch.Tensor, tokens: torch.Tensor) -> None:
        weighted = torch.where(tokens > 0, loss.detach().float() * tokens, 0.0)
        self.loss_sum += weighted
        self.tokens += tokens

    def compute(self) -> torch.Tensor:
        return self.loss_sum / self.tokens


class LanguageModelingTask(TaskModule):
    """A task subclass implements ``lm_step`` (loss, predicted tokens, extra metrics) and ``build_model``."""

    needs_tokenizer = True  # builders pass the run's tokenizer (masking, sample generation)

    def __init__(self, model: torch.nn.Module, config: dict[str, Any], label_names: list[str] | None,
                 tokenizer: Any):
        super().__init__(model, config, label_names)
        self.tokenizer = tokenizer
        # Keyed "<stage>_loss": ModuleDict refuses a key that is a Module attribute, such as "train".
        self.token_loss = torch.nn.ModuleDict({f"{stage}_loss": TokenWeightedLoss() for stage in STAGES})

    def forward(self, batch: dict[str, torch.Tensor]) -> Any:
        return self.model(**batch)

    def lm_step(self, batch: dict[str, torch.Tensor], stage: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(loss to optimise, LM loss per predicted token, number of predicted tokens) for one batch."""
        raise NotImplementedError

    def _step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        loss, lm_loss, tokens = self.lm_step(batch, stage)
        self.token_loss[f"{stage}_loss"].update(lm_loss, tokens)
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
