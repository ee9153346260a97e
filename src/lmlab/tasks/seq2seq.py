"""Seq2seq (translation, summarization): an encoder-decoder (T5, BART, ...) trained with teacher forcing.

At validation/test the model also generates (beam search: task.num_beams, task.max_new_tokens), and the
decoded texts are scored against the raw reference texts with corpus BLEU (sacreBLEU's definition: 13a
tokenization of detokenized text, exponential smoothing, 0-100) and ROUGE-1/2/L F-measures (0-1). Both
are streamed (n-gram counts, per-sentence scores; never the texts) and summed/gathered across ranks.
ROUGE tokenizes like Google's rouge_score (lowercased [a-z0-9] runs), so it suits English targets; for
other languages (umlauts are dropped) read BLEU.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torchmetrics import MetricCollection
from torchmetrics.text import ROUGEScore, SacreBLEUScore

from lmlab.data.loading import column_values
from lmlab.data.seq2seq import REFERENCE_KEY
from lmlab.models import run_eagerly
from lmlab.tasks.base import TaskModule

ROUGE_KEYS = ("rouge1", "rouge2", "rougeL")


def sacrebleu_from_counts(correct: list[float], total: list[float], sys_len: float, ref_len: float) -> float:
    """Corpus BLEU (0-100) from n-gram statistics, exactly as sacreBLEU's default BLEU computes it.

    ``correct[n-1]``/``total[n-1]``: clipped matching / hypothesis n-grams of order n over the corpus;
    ``sys_len``/``ref_len``: hypothesis and reference token counts. An order without matches gets
    sacreBLEU's 'exp' smoothing (1 / (2^k * total)), not torchmetrics' add-one.
    """
    if not any(correct):
        return 0.0
    precisions, smooth = [], 1.0
    for matches, count in zip(correct, total, strict=True):
        if count == 0:  # no hypothesis is this long: sacreBLEU counts the order as precision 0
            return 0.0
        if matches == 0:
            smooth *= 2
            precisions.append(100.0 / (smooth * count))
        else:
            precisions.append(100.0 * matches / count)
    brevity = 1.0 if sys_len >= ref_len else math.exp(1 - ref_len / sys_len)
    return brevity * math.exp(sum(math.log(p) for p in precisions) / len(precisions))


class CorpusBLEU(SacreBLEUScore):
    """torchmetrics' streamed SacreBLEU statistics (13a tokenizer, summed across ranks), scored like sacreBLEU."""

    def __init__(self, **kwargs: Any):
        super().__init__(n_gram=4, smooth=False, tokenize="13a", lowercase=False, **kwargs)

    def compute(self) -> torch.Tensor:
        return torch.tensor(sacrebleu_from_counts(self.numerator.tolist(), self.denominator.tolist(),
                                                  float(self.preds_len), float(self.target_len)))


def generation_metrics() -> MetricCollection:
    return MetricCollection({"bleu": CorpusBLEU(), "rouge": ROUGEScore(rouge_keys=ROUGE_KEYS)})


class Seq2SeqTask(TaskModule):
    needs_tokenizer = True  # generations are decoded into text for the metrics and `lmlab predict`

    @staticmethod
    def build_model(model_cfg: Any, label_names: list[str] | None, weights: bool = True,
                    tokenizer: Any = None) -> torch.nn.Module:
        from transformers import AutoModelForSeq2SeqLM

        from lmlab.models import build_model

        return build_model(model_cfg, AutoModelForSeq2SeqLM, weights, tokenizer)

    def __init__(self, model: torch.nn.Module, config: dict[str, Any], label_names: list[str] | None = None,
                 tokenizer: Any = None):
        super().__init__(model, config, label_names)
        self.tokenizer = tokenizer
        task = config["task"]
        self.generation = {"num_beams": int(task["num_beams"]), "max_new_tokens": int(task["max_new_tokens"])}
        self.val_metrics = generation_metrics()
        self.test_metrics = generation_metrics()

    def forward(self, batch: dict[str, Any]) -> Any:
        # use_cache=False: a teacher-forced pass never reads a key/value cache, and building one costs T5 a
        # deep copy of its config every forward (0.75 ms a step on the tiny T5 recipe; the loss is bitwise equal).
        return self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                          labels=batch["labels"], use_cache=False)

    def generate(self, batch: dict[str, Any]) -> list[str]:
        """Beam-search output of the batch's sources, detokenized (special tokens dropped)."""
        with run_eagerly():  # beam search under a compiled model would recompile for every new length
            ids = self.model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                      **self.generation)  # (batch, generated tokens)
        # No clean-up of spaces: the decoder already restores the text's spacing, and "word ." -> "word."
        # rewriting would make the hypotheses differ from what the model produced.
        return self.tokenizer.batch_decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self(batch).loss  # mean cross-entropy over target tokens (labels -100 ignored)
        self.log_train_step({"train/loss": loss}, prog_bar=True, batch_size=len(batch["input_ids"]))
        return loss

    def _eval_step(self, batch: dict[str, Any], prefix: str, metrics: MetricCollection) -> None:
        n = len(batch["input_ids"])
        self.log(f"{prefix}/loss", self(batch).loss, on_epoch=True, sync_dist=True, batch_size=n)
        metrics.update(self.generate(batch), [[ref] for ref in batch[REFERENCE_KEY]])

    def _log_epoch(self, prefix: str, metrics: MetricCollection) -> None:
        values = metrics.compute()  # synced across ranks by torchmetrics
        metrics.reset()
        scores = {"bleu": values["bleu"], **{key: values[f"{key}_fmeasure"] for key in ROUGE_KEYS}}
        self.log_dict({f"{prefix}/{k}": v for k, v in scores.items()}, prog_bar=prefix == "val")

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "val", self.val_metrics)

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val", self.val_metrics)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "test", self.test_metrics)

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test", self.test_metrics)

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[str]:
        return self.generate(batch)

    def prediction_records(self, outputs: list[Any], order: list[int], raw: Any, data_cfg: Any) -> list[dict]:
        """{source column: the input text, "generated": the model's output} per input line, in input order."""
        generated = [text for batch in outputs for text in batch]  # loader order
        by_row: list[str] = [""] * len(order)
        for position, row in enumerate(order):
            by_row[row] = generated[position]
        column = data_cfg.source_column
        sources = column_values(raw, column)
        return [{column: source, "generated": text} for source, text in zip(sources, by_row, strict=True)]
