"""Prompt-based classification: a masked LM scores each class's verbalizer word at the prompt's [MASK].

No new parameters: the class logits are the MLM logits of the verbalizer tokens at the mask position
(batch, num_labels), so an MLM scores zero-shot (`lmlab evaluate` without a checkpoint) and few-shot training
is PET's: cross-entropy over those logits, updating the MLM itself. With ``task.calibrate``, evaluation scores
are contextually calibrated: log p(label | text) - log p(label | "N/A"). Steps, metrics (accuracy, macro-F1, MCC,
f1_pos, per-class report) and `predict` output are sequence classification's.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from transformers.modeling_outputs import SequenceClassifierOutput

from lmlab.data.prompt_classification import verbalizer_ids
from lmlab.errors import DataError
from lmlab.tasks.sequence_classification import SequenceClassificationTask


class PromptClassificationTask(SequenceClassificationTask):
    needs_tokenizer = True  # the mask token id and the verbalizer's token ids
    scores_untrained = True  # `lmlab evaluate` without ckpt_path scores model.* zero-shot

    @staticmethod
    def build_model(model_cfg: Any, label_names: list[str], weights: bool = True, tokenizer: Any = None) -> torch.nn.Module:
        from transformers import AutoModelForMaskedLM

        from lmlab.models import build_model

        return build_model(model_cfg, AutoModelForMaskedLM, weights, tokenizer)

    def __init__(self, model: torch.nn.Module, config: dict[str, Any], label_names: list[str], tokenizer: Any):
        super().__init__(model, config, label_names)
        self.mask_id = int(tokenizer.mask_token_id)
        ids = verbalizer_ids(config["task"]["verbalizer"], label_names, tokenizer)
        self.register_buffer("verbalizer_ids", torch.tensor(ids), persistent=False)  # (num_labels,)
        self.calibrate = bool(config["task"]["calibrate"])
        self.prior: torch.Tensor | None = None  # log p(label | content-free prompt), set per evaluation
        if self.calibrate:
            template = config["task"]["template"]
            self.content_free = tokenizer(template.format(text="N/A", text_pair="N/A", mask=tokenizer.mask_token),
                                          return_tensors="pt")

    def forward(self, batch: dict[str, torch.Tensor]) -> SequenceClassifierOutput:
        """Class logits (batch, num_labels) = MLM logits of the verbalizer tokens at each row's mask; with
        labels, the cross-entropy over them."""
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        mask = inputs["input_ids"] == self.mask_id  # (batch, seq), one True per row
        per_row = mask.sum(-1)
        if (per_row != 1).any():
            raise DataError(f"A prompt has {int(per_row[per_row != 1][0])} mask tokens instead of one (its text "
                            "contains the mask token itself?). Fix: remove mask tokens from the data's texts.")
        logits = self.mask_logits(inputs, mask)[:, self.verbalizer_ids]  # (batch, num_labels)
        if self.prior is not None and not self.training:
            logits = logits.float().log_softmax(-1) - self.prior
        labels = batch.get("labels")
        loss = F.cross_entropy(logits.float(), labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)

    def compiled_modules(self) -> list[torch.nn.Module]:
        head = getattr(self.model, "cls", None)  # a step calls the encoder and the head apart (below)
        return [self.model] if head is None else [self.model.base_model, head]

    def mask_logits(self, inputs: dict[str, torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits at the mask positions (batch, vocab). BERT-family models (a ``cls`` head over
        ``base_model``) project only those positions onto the vocabulary, not every token."""
        head = getattr(self.model, "cls", None)
        if head is None:
            return self.model(**inputs).logits[mask]
        hidden = self.model.base_model(**inputs).last_hidden_state[mask]  # (batch, hidden)
        return head(hidden)

    # -- contextual calibration (task.calibrate) ----------------------------------------------------
    def content_free_prior(self) -> torch.Tensor:
        """log p(label) for the template filled with "N/A" (Zhao et al. 2021): the model's bias towards a
        verbalizer word when the text says nothing. (num_labels,)"""
        inputs = {k: v.to(self.device) for k, v in self.content_free.items()}
        with torch.no_grad():
            logits = self.mask_logits(inputs, inputs["input_ids"] == self.mask_id)[:, self.verbalizer_ids]
        return logits.float().log_softmax(-1)[0]

    def _set_prior(self) -> None:
        # From the current weights: after training steps the bias has changed.
        self.prior = self.content_free_prior() if self.calibrate else None

    def on_validation_epoch_start(self) -> None:
        self._set_prior()

    def on_test_epoch_start(self) -> None:
        self._set_prior()

    def on_predict_epoch_start(self) -> None:
        self._set_prior()
