"""Masked language modeling (BERT style), optionally with next-sentence prediction.

Masking is transformers' DataCollatorForLanguageModeling (``task.mlm_probability``, 80/10/10 replacement,
``task.whole_word_masking`` from the character offsets the data carries), applied to each padded batch on
the CPU before it moves to the device. Training masks are drawn anew each epoch (seeded by seed + epoch);
validation and test use the same masks at every evaluation (seeded by seed), so their perplexity is
comparable across epochs. Metrics: MLM loss, perplexity, masked-token accuracy, and with data.next_sentence
(BertForPreTraining) NSP loss and accuracy.
"""

from __future__ import annotations

import inspect
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torchmetrics import MeanMetric
from torchmetrics.classification import BinaryAccuracy

from lmlab.errors import ConfigError
from lmlab.tasks.language_modeling import STAGES, LanguageModelingTask

# Lightning warns whenever a LightningModule overrides on_before_batch_transfer while a datamodule is in use.
# Masking is the task's (its probabilities are task.* keys), so the module's hook is the intended one.
warnings.filterwarnings("ignore", message=r"You have overridden `on_before_batch_transfer` in `LightningModule` but")


class MaskedLMTask(LanguageModelingTask):
    @staticmethod
    def build_model(model_cfg: Any, label_names: list[str] | None, weights: bool = True, tokenizer: Any = None) -> torch.nn.Module:
        """A masked-LM model; with NSP labels (data.next_sentence) the pretraining model with both heads."""
        from transformers import AutoModelForMaskedLM, AutoModelForPreTraining

        from lmlab.models import build_model

        model = build_model(model_cfg, AutoModelForPreTraining if label_names else AutoModelForMaskedLM, weights, tokenizer)
        if label_names and "next_sentence_label" not in inspect.signature(model.forward).parameters:
            raise ConfigError([
                f"data.next_sentence=true needs a model with a next-sentence head (BERT); {type(model).__name__} "
                "has none. Fix: a BERT model (model.from_config.model_type=bert), or data.next_sentence=false."
            ])
        return model

    def __init__(self, model: torch.nn.Module, config: dict[str, Any], label_names: list[str] | None, tokenizer: Any):
        super().__init__(model, config, label_names, tokenizer)
        self.masker = self._masker(config["task"], tokenizer)
        self.special_ids = torch.tensor(sorted(set(tokenizer.all_special_ids)))
        self.masked_acc = torch.nn.ModuleDict({f"{stage}_acc": MeanMetric() for stage in STAGES})
        self.nsp = bool(label_names)
        if self.nsp:
            self.nsp_acc = torch.nn.ModuleDict({f"{stage}_acc": BinaryAccuracy() for stage in STAGES})
        # Separate mask generators: a validation inside a training epoch leaves training's masks as they were.
        self.train_masks = self.eval_masks = self._generator(0)

    @staticmethod
    def _masker(task: dict[str, Any], tokenizer: Any) -> Any:
        from transformers import DataCollatorForLanguageModeling

        whole_word = bool(task["whole_word_masking"])
        # Whole-word masking only replaces with [MASK] (transformers warns and forces this otherwise).
        return DataCollatorForLanguageModeling(
            tokenizer, mlm_probability=task["mlm_probability"], whole_word_mask=whole_word,
            mask_replace_prob=1.0 if whole_word else task["mask_replace_prob"],
            random_replace_prob=0.0 if whole_word else task["random_replace_prob"])

    # -- masking ------------------------------------------------------------------------------------
    def _generator(self, epoch: int) -> torch.Generator:
        return torch.Generator().manual_seed(int(self.config["seed"]) * 100_003 + epoch)

    def on_train_epoch_start(self) -> None:
        self.train_masks = self._generator(self.current_epoch + 1)

    def on_validation_epoch_start(self) -> None:
        self.eval_masks = self._generator(0)

    def on_test_epoch_start(self) -> None:
        self.eval_masks = self._generator(0)

    def on_before_batch_transfer(self, batch: dict[str, torch.Tensor], dataloader_idx: int) -> dict[str, torch.Tensor]:
        """Mask the padded CPU batch: input_ids get [MASK]/random/kept tokens, labels the originals (-100
        elsewhere, so only masked positions are scored)."""
        self.masker.generator = self.train_masks if self.trainer.training else self.eval_masks
        offsets = torch.stack([batch.pop("offset_start"), batch.pop("offset_end")], dim=-1)  # (batch, seq, 2)
        special = torch.isin(batch["input_ids"], self.special_ids)  # [CLS]/[SEP]/[PAD] are never masked
        batch["input_ids"], batch["labels"] = self.masker.torch_mask_tokens(
            batch["input_ids"].clone(), special_tokens_mask=special,
            offset_mapping=offsets if self.masker.whole_word_mask else None)
        return batch

    # -- steps --------------------------------------------------------------------------------------
    def compiled_modules(self) -> list[torch.nn.Module]:
        head = getattr(self.model, "cls", None)  # a step calls the encoder and the head apart (below)
        return [self.model] if head is None else [self.model.base_model, head]

    def scores(self, batch: dict[str, torch.Tensor], masked: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(vocabulary logits at the masked positions (masked tokens, vocab), NSP logits (batch, 2) or None).

        BERT-family models (a ``cls`` head over ``base_model``) project only the masked positions onto the
        vocabulary: with a small encoder that projection is most of the compute, and ~85 % of it is never
        scored. Other models score every position and the masked ones are picked out.
        """
        inputs = {k: v for k, v in batch.items() if k not in ("labels", "next_sentence_label")}
        head = getattr(self.model, "cls", None)
        if head is None:
            out = self.model(**inputs)
            logits = out.prediction_logits if self.nsp else out.logits  # (batch, seq, vocab)
            return logits[masked], out.seq_relationship_logits if self.nsp else None
        encoded = self.model.base_model(**inputs)
        hidden = encoded.last_hidden_state[masked]  # (masked tokens, hidden)
        if self.nsp:
            return head(hidden, encoded.pooler_output)  # BertPreTrainingHeads: (MLM logits, NSP logits)
        return head(hidden), None

    def lm_step(self, batch: dict[str, torch.Tensor], stage: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        labels = batch["labels"]
        masked = labels != -100  # (batch, seq)
        tokens = masked.sum()
        logits, nsp_logits = self.scores(batch, masked)
        targets = labels[masked]
        if tokens == 0:  # nothing drawn for masking (a few short lines): a zero loss, not cross-entropy's NaN
            mlm_loss = logits.sum() * 0.0
        else:
            mlm_loss = F.cross_entropy(logits.float(), targets)
            self.masked_acc[f"{stage}_acc"].update((logits.argmax(-1) == targets).float().mean(), tokens.float())
        if nsp_logits is None:
            return mlm_loss, mlm_loss, tokens
        nsp_label = batch["next_sentence_label"]
        nsp_loss = F.cross_entropy(nsp_logits.float(), nsp_label)
        self.nsp_acc[f"{stage}_acc"].update(nsp_logits.argmax(-1), nsp_label)
        self.log(f"{stage}/nsp_loss", nsp_loss, on_step=False, on_epoch=True, batch_size=len(nsp_label),
                 sync_dist=stage != "train")
        return mlm_loss + nsp_loss, mlm_loss, tokens  # BertForPreTraining's loss: the sum of both

    def _log_epoch(self, stage: str) -> None:
        self._log_perplexity(stage)
        metrics = [("masked_acc", self.masked_acc[f"{stage}_acc"])]
        if self.nsp:
            metrics.append(("nsp_acc", self.nsp_acc[f"{stage}_acc"]))
        for name, metric in metrics:
            self.log_and_reset(f"{stage}/{name}", metric, prog_bar=stage == "val")

    def on_train_epoch_end(self) -> None:
        self._log_epoch("train")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")
