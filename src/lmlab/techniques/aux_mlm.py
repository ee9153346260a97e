"""Auxiliary masked-LM loss during fine-tuning: loss = L_task + λ·L_mlm on the same batch texts.

The MLM head is the one transformers' ``AutoModelForMaskedLM`` builds for the task model's architecture (BERT:
``cls``, RoBERTa: ``lm_head``, ...), set on top of the task model's own encoder (shared, not copied) and with
its decoder tied to the task model's word embeddings. Only the head's own modules are registered in the task
module (state-dict keys ``aux_mlm.heads.*``), so a checkpoint restores with ``weights=False`` like any other.
The head is built from the config (random init): all-MiniLM-L6-v2 ships no MLM head, and a restore needs no
weights file.

Masking is lmlab's masked_lm masker (transformers' DataCollatorForLanguageModeling, 15 % of the non-special
tokens, 80/10/10), drawn on the CPU with a generator seeded by (seed, epoch, batch index).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from lmlab.errors import ConfigError

# Masking as in task=masked_lm's defaults (BERT's recipe).
MASKING = {"mlm_probability": 0.15, "whole_word_masking": False, "mask_replace_prob": 0.8, "random_replace_prob": 0.1}


def _mlm_model(task_model: torch.nn.Module) -> torch.nn.Module:
    """A masked-LM model of the task model's architecture, its encoder replaced by the task model's."""
    from transformers import AutoModelForMaskedLM

    if hasattr(task_model, "get_base_model"):  # a peft wrapper: the transformers model (adapters inside) is in it
        task_model = task_model.get_base_model()
    try:
        mlm = AutoModelForMaskedLM.from_config(task_model.config)
    except ValueError as e:
        raise ConfigError([
            f"task.aux_mlm_weight needs a model type with a masked-LM head; {task_model.config.model_type} has "
            "none in transformers. Fix: task.aux_mlm_weight=0.0, or an encoder model (BERT, RoBERTa, MiniLM, ...)."
        ]) from e
    setattr(mlm, mlm.base_model_prefix, task_model.base_model)
    output = mlm.get_output_embeddings()
    if output is not None and getattr(mlm.config, "tie_word_embeddings", True):
        output.weight = task_model.get_input_embeddings().weight  # the decoder predicts the shared vocabulary
    return mlm


class AuxMLM(torch.nn.Module):
    """The auxiliary MLM head over a task model's encoder; ``forward(batch)`` masks and returns L_mlm."""

    def __init__(self, task_model: torch.nn.Module, tokenizer: Any, weight: float, seed: int):
        super().__init__()
        from lmlab.tasks.masked_lm import MaskedLMTask

        if tokenizer is None or tokenizer.mask_token_id is None:
            raise ConfigError([
                "task.aux_mlm_weight > 0 masks tokens, and this model's tokenizer has no mask token. Fix: "
                "task.aux_mlm_weight=0.0, or a tokenizer with [MASK] (a BERT-style model)."
            ])
        self.weight = weight
        self.seed = seed
        mlm = _mlm_model(task_model)
        base = mlm.base_model
        # Registered: the head modules only (the encoder belongs to the task model). The wrapper itself is
        # kept in a list so that its (shared) encoder is not registered, saved or counted twice.
        self.heads = torch.nn.ModuleDict({n: m for n, m in mlm.named_children() if m is not base})
        self._mlm = [mlm]
        self.masker = MaskedLMTask._masker(MASKING, tokenizer)
        self.register_buffer("special_ids", torch.tensor(sorted(set(tokenizer.all_special_ids))), persistent=False)

    def mask(self, input_ids: torch.Tensor, epoch: int, batch_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(masked input ids, labels: the original ids at masked positions, -100 elsewhere), both (batch, seq),
        drawn on the CPU (the generator is a CPU one) and returned on ``input_ids``' device."""
        state = np.random.SeedSequence([self.seed, epoch, batch_idx]).generate_state(1)[0]
        self.masker.generator = torch.Generator().manual_seed(int(state))
        ids = input_ids.detach().cpu()
        special = torch.isin(ids, self.special_ids.cpu())  # [CLS]/[SEP]/[PAD] are never masked
        masked, labels = self.masker.torch_mask_tokens(ids.clone(), special_tokens_mask=special)
        return masked.to(input_ids.device), labels.to(input_ids.device)

    def forward(self, batch: dict[str, torch.Tensor], epoch: int, batch_idx: int) -> torch.Tensor:
        """L_mlm: mean cross-entropy over the masked tokens of the batch (a zero loss when none was drawn)."""
        mlm = self._mlm[0]
        input_ids, labels = self.mask(batch["input_ids"], epoch, batch_idx)
        inputs = {k: batch[k] for k in ("attention_mask", "token_type_ids") if k in batch}
        masked = labels != -100  # (batch, seq)
        head = getattr(mlm, "cls", None)
        if head is not None:  # BERT family: project only the masked positions onto the vocabulary (cheaper)
            hidden = mlm.base_model(input_ids=input_ids, **inputs).last_hidden_state[masked]  # (masked, hidden)
            logits = head(hidden)
        else:
            logits = mlm(input_ids=input_ids, **inputs).logits[masked]  # (masked, vocab)
        if not masked.any():
            return logits.sum() * 0.0
        return F.cross_entropy(logits.float(), labels[masked])

    def training_loss(self, module: Any, batch: dict[str, torch.Tensor], batch_idx: int, task_loss: torch.Tensor,
                      rows: int) -> torch.Tensor:
        """task_loss + λ·L_mlm for a task's training_step; logs ``train/loss_task`` and ``train/loss_mlm``."""
        mlm_loss = self(batch, module.current_epoch, batch_idx)
        module.log_train_step({"train/loss_task": task_loss, "train/loss_mlm": mlm_loss}, batch_size=rows)
        return task_loss + self.weight * mlm_loss


def build_aux_mlm(task_model: torch.nn.Module, config: dict[str, Any], tokenizer: Any) -> AuxMLM | None:
    """The auxiliary MLM of a run config (None when task.aux_mlm_weight is 0 or absent)."""
    weight = float(config["task"].get("aux_mlm_weight") or 0.0)  # .get: checkpoints from before the option
    if weight <= 0:
        return None
    return AuxMLM(task_model, tokenizer, weight, int(config["seed"]))
