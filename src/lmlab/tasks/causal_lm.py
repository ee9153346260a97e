"""Causal language modeling (GPT-2 style): next-token loss, perplexity, and sample generations.

At the end of a validation (every ``task.generation.every_n_epochs``), rank 0 continues each of
``task.generation.prompts`` (greedy, or sampled with temperature/top-k/top-p, seeded) and logs them: a text
table to W&B, a text entry to TensorBoard, one JSON line per sample to RUN_DIR/samples.jsonl, and the log.
``generate_continuations`` is also what `lmlab generate` runs.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from lmlab.models import run_eagerly
from lmlab.tasks.language_modeling import LanguageModelingTask

log = logging.getLogger(__name__)

SAMPLES_FILE = "samples.jsonl"


def generate_continuations(model: Any, tokenizer: Any, prompts: list[str], max_new_tokens: int,
                           do_sample: bool = False, temperature: float = 1.0, top_k: int = 50,
                           top_p: float = 1.0, seed: int = 0) -> list[str]:
    """Each prompt followed by the model's continuation (the prompt text is kept verbatim)."""
    was_training = model.training
    model.eval()
    sampling = {"do_sample": True, "temperature": temperature, "top_k": top_k, "top_p": top_p} if do_sample else {"do_sample": False}
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    texts = []
    # Sampling draws from torch's RNG: fork it so samples are seeded and training randomness is untouched.
    with torch.random.fork_rng(), torch.no_grad(), run_eagerly():
        torch.manual_seed(seed)
        for prompt in prompts:
            ids = tokenizer(prompt, return_tensors="pt")["input_ids"]  # (1, prompt tokens)
            if ids.shape[1] == 0:  # an empty prompt: start from the beginning-of-text token
                ids = torch.tensor([[start]])
            ids = ids.to(model.device)
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                 pad_token_id=pad, **sampling)  # (1, prompt + new tokens)
            texts.append(prompt + tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True))
    model.train(was_training)
    return texts


class CausalLMTask(LanguageModelingTask):
    @staticmethod
    def build_model(model_cfg: Any, label_names: list[str] | None, weights: bool = True, tokenizer: Any = None) -> torch.nn.Module:
        from transformers import AutoModelForCausalLM

        from lmlab.models import build_model

        return build_model(model_cfg, AutoModelForCausalLM, weights, tokenizer)

    def lm_step(self, batch: dict[str, torch.Tensor], stage: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # Padding is not predicted. (GPT-2's pad id is its end-of-text id, so mask by attention, not by id.)
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)  # (batch, seq)
        # No key/value cache: a teacher-forced pass never reads it (as in seq2seq's forward).
        out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels,
                         use_cache=False)
        tokens = (labels[:, 1:] != -100).sum()  # the model shifts: position t predicts token t + 1
        return out.loss, out.loss, tokens

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        gen = self.config["task"]["generation"]
        due = (self.current_epoch + 1) % gen["every_n_epochs"] == 0
        # Only while fitting: not in the sanity check, nor when `lmlab evaluate` or the final validation re-score.
        fitting = self.trainer.state.fn == "fit" and not self.trainer.sanity_checking
        if gen["prompts"] and due and fitting and self.trainer.is_global_zero:
            self.log_samples(self.sample())

    def sample(self) -> list[str]:
        gen = self.config["task"]["generation"]
        return generate_continuations(self.model, self.tokenizer, list(gen["prompts"]), gen["max_new_tokens"],
                                      gen["do_sample"], gen["temperature"], gen["top_k"], gen["top_p"], gen["seed"])

    def log_samples(self, texts: list[str]) -> None:
        """Send the samples to every logger that shows text, to RUN_DIR/samples.jsonl and to the log."""
        from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger

        prompts = list(self.config["task"]["generation"]["prompts"])
        rows = [{"epoch": self.current_epoch, "step": self.global_step, "prompt": p, "text": t}
                for p, t in zip(prompts, texts, strict=True)]
        for logger in self.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_text(key="samples", columns=list(rows[0]), data=[list(r.values()) for r in rows])
            elif isinstance(logger, TensorBoardLogger):
                table = "\n\n".join(f"**{r['prompt']!r}** → `{r['text']!r}`" for r in rows)
                logger.experiment.add_text("samples", table, global_step=self.global_step)
        run_dir = self.config["paths"]["output_dir"]
        if Path(run_dir).is_dir():
            with open(Path(run_dir) / SAMPLES_FILE, "a", encoding="utf-8") as f:
                f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        for r in rows:
            log.info("sample (epoch %d): %r", r["epoch"], r["text"])
