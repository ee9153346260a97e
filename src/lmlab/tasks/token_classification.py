"""Token classification (NER): a transformer encoder with a per-token classification head.

Scored per word (the first subword of each word, see data/token_classification.py). Metrics follow seqeval:
entity-level precision/recall/F1, micro-averaged over entity types and per type, plus token (word)
accuracy. ``task.metric_mode`` picks seqeval's entity rules: ``conlleval`` (seqeval's default, the conlleval
script: an I- after O or after another type starts an entity) or ``strict`` (seqeval ``mode="strict",
scheme=IOB2``: only B-X I-X* spans are entities, a stray I- is no entity).
"""

from __future__ import annotations

from typing import Any

import torch
from torchmetrics import Metric
from torchmetrics.classification import MulticlassAccuracy

from lmlab.config.validate import NER_METRIC_MODES
from lmlab.data.token_classification import OUTSIDE, split_tag
from lmlab.errors import ConfigError
from lmlab.tasks.base import TaskModule

Span = tuple[str, int, int]  # (entity type, first word, last word)


def conlleval_entities(tags: list[str]) -> set[Span]:
    """Entities as seqeval's default mode (conlleval) reads IOB1/IOB2 tags: a chunk ends before B-, O or a
    change of type, and starts at B-, or at an I- that follows O or another type."""
    spans: set[Span] = set()
    start, kind = -1, ""
    for i, tag in enumerate([*tags, OUTSIDE]):
        prefix, tag_kind = split_tag(tag) or (OUTSIDE, "")
        if start >= 0 and (prefix in (OUTSIDE, "B") or tag_kind != kind):
            spans.add((kind, start, i - 1))
            start = -1
        if prefix == "B" or (prefix == "I" and start < 0):
            start, kind = i, tag_kind
    return spans


def strict_entities(tags: list[str]) -> set[Span]:
    """Entities as seqeval's strict IOB2 mode reads tags: B-X followed by any I-X; a stray I- is no entity."""
    spans: set[Span] = set()
    start, kind = -1, ""
    for i, tag in enumerate([*tags, OUTSIDE]):
        prefix, tag_kind = split_tag(tag) or (OUTSIDE, "")
        if start >= 0 and not (prefix == "I" and tag_kind == kind):
            spans.add((kind, start, i - 1))
            start = -1
        if prefix == "B":
            start, kind = i, tag_kind
    return spans


class EntityScores(Metric):
    """Entity-level true positives, predicted and gold entity counts per type, and word accuracy.

    Distributed-safe by construction: every state is a count that adds up over sentences, so summing the
    states of all ranks (dist_reduce_fx="sum") gives exactly the single-process counts, with O(types)
    communication instead of gathering every predicted sequence.
    """

    full_state_update = False

    def __init__(self, label_names: list[str], mode: str = "conlleval"):
        super().__init__()
        if mode not in NER_METRIC_MODES:
            raise ConfigError([f"task.metric_mode={mode!r} is not a valid choice. Valid: {', '.join(NER_METRIC_MODES)}."])
        self.label_names = list(label_names)
        self.types = sorted({kind for name in label_names if (parts := split_tag(name)) and (kind := parts[1])})
        self.type_index = {kind: i for i, kind in enumerate(self.types)}
        self.extract = conlleval_entities if mode == "conlleval" else strict_entities
        n = len(self.types)
        for name in ("true_positives", "predicted", "gold"):
            self.add_state(name, default=torch.zeros(n, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("correct_words", default=torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("words", default=torch.tensor(0), dist_reduce_fx="sum")

    def _count(self, state: torch.Tensor, spans: set[Span]) -> None:
        for kind, _, _ in spans:
            state[self.type_index[kind]] += 1

    def update(self, predicted: list[list[str]], gold: list[list[str]]) -> None:
        """Add sentences given as tag strings, one list per sentence (``words_tags`` makes them from ids)."""
        for pred_tags, gold_tags in zip(predicted, gold, strict=True):
            pred_spans, gold_spans = self.extract(pred_tags), self.extract(gold_tags)
            self._count(self.true_positives, pred_spans & gold_spans)
            self._count(self.predicted, pred_spans)
            self._count(self.gold, gold_spans)
            self.correct_words += sum(p == g for p, g in zip(pred_tags, gold_tags, strict=True))
            self.words += len(gold_tags)

    def compute(self) -> dict[str, Any]:
        """{"precision", "recall", "f1", "token_acc": float, "per_type": {type: {precision, recall, f1, support}}}."""
        per_type = {kind: _prf(int(self.true_positives[i]), int(self.predicted[i]), int(self.gold[i]))
                    for i, kind in enumerate(self.types)}
        overall = _prf(int(self.true_positives.sum()), int(self.predicted.sum()), int(self.gold.sum()))
        words = int(self.words)
        return {"precision": overall["precision"], "recall": overall["recall"], "f1": overall["f1"],
                "token_acc": int(self.correct_words) / words if words else 0.0, "per_type": per_type}


def words_tags(ids: torch.Tensor, scored: torch.Tensor, label_names: list[str]) -> list[list[str]]:
    """Per sentence, the tags at the scored positions (each word's first subword). ids, scored: (batch, seq)."""
    return [[label_names[i] for i, keep in zip(row, mask, strict=True) if keep]
            for row, mask in zip(ids.tolist(), scored.tolist(), strict=True)]


def _prf(tp: int, predicted: int, gold: int) -> dict[str, float]:
    """Precision, recall, F1 and support; 0.0 where undefined (seqeval's zero_division default)."""
    precision = tp / predicted if predicted else 0.0
    recall = tp / gold if gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "support": gold}


class TokenClassificationTask(TaskModule):
    rechecks_ties = True  # lmlab predict may run it under bf16 autocast (predict.yaml: precision)

    @staticmethod
    def build_model(model_cfg: Any, label_names: list[str], weights: bool = True, tokenizer: Any = None) -> torch.nn.Module:
        from transformers import AutoModelForTokenClassification

        from lmlab.models import build_model

        return build_model(model_cfg, AutoModelForTokenClassification, weights, num_labels=len(label_names),
                           id2label=dict(enumerate(label_names)),
                           label2id={name: i for i, name in enumerate(label_names)})

    def __init__(self, model: torch.nn.Module, config: dict[str, Any], label_names: list[str]):
        super().__init__(model, config, label_names)
        mode = config["task"]["metric_mode"]
        from lmlab.techniques.adversarial import Adversarial

        # adversarial=fgm|pgd (None when off; .get: runs from before the adversarial group).
        self.adversarial = Adversarial.from_config(config.get("adversarial"))
        # Subword-level accuracy over labelled positions: a cheap training signal, not a reported metric.
        self.train_acc = MulticlassAccuracy(len(label_names), average="micro", ignore_index=-100)
        self.val_metrics = EntityScores(label_names, mode)
        self.test_metrics = EntityScores(label_names, mode)
        self.class_report: dict[str, dict[str, float]] = {}

    def forward(self, batch: dict[str, torch.Tensor]) -> Any:
        # word_index only tells metrics and predictions where words start; the model does not take it.
        return self.model(**{k: v for k, v in batch.items() if k != "word_index"})

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        rows = len(batch["labels"])
        if self.adversarial is None:
            out = self(batch)  # logits: (batch, seq, num_labels)
            loss = out.loss
        else:  # clean + adversarial loss (logs train/loss_clean, train/loss_adv)
            out, loss = self.adversarial.training_loss(self, lambda: self(batch), rows)
        self.train_acc.update(out.logits.argmax(-1), batch["labels"])
        self.log_train_step({"train/loss": loss}, prog_bar=True, batch_size=rows)
        return loss

    def on_train_epoch_end(self) -> None:
        self.log_and_reset("train/acc", self.train_acc)

    def _eval_step(self, batch: dict[str, torch.Tensor], prefix: str, metrics: EntityScores) -> None:
        out = self(batch)
        # Words cut off by max_length have no first subword in the batch, so they are not scored.
        scored = batch["word_index"] >= 0
        metrics.update(words_tags(out.logits.argmax(-1), scored, self.label_names),
                       words_tags(batch["labels"], scored, self.label_names))
        self.log(f"{prefix}/loss", out.loss, on_epoch=True, sync_dist=True, batch_size=len(batch["labels"]))

    def _log_epoch(self, prefix: str, metrics: EntityScores) -> dict[str, dict[str, float]]:
        values = metrics.compute()  # summed across ranks by torchmetrics
        metrics.reset()
        per_type = values.pop("per_type")
        names = {"precision": "entity_precision", "recall": "entity_recall", "f1": "entity_f1",
                 "token_acc": "token_acc"}
        self.log_dict({f"{prefix}/{names[k]}": float(v) for k, v in values.items()}, prog_bar=prefix == "val")
        return per_type

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "val", self.val_metrics)

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val", self.val_metrics)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "test", self.test_metrics)

    def on_test_epoch_end(self) -> None:
        per_type = self._log_epoch("test", self.test_metrics)
        if self.config["task"]["per_class_report"]:
            self.class_report = per_type
            for kind, row in per_type.items():
                self.log_dict({f"test/class/{kind}/{k}": float(v) for k, v in row.items() if k != "support"})

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> list[list[int]]:
        """Per sentence, the predicted label id of each word that fits in max_length, in word order."""
        batch = {k: v for k, v in batch.items() if k != "labels"}
        starts = batch["word_index"] >= 0
        predicted = self.recheck_near_ties(batch, self(batch).logits, positions=starts).argmax(-1)  # (batch, seq)
        return [row[mask].tolist() for row, mask in zip(predicted, starts, strict=True)]

    def prediction_records(self, outputs: list[Any], order: list[int], raw: Any, data_cfg: Any) -> list[dict]:
        """{"tokens": [...], "tags": [...], "truncated_words": n} per input sentence, in input order; the n
        words past data.max_length were not seen by the model and get the tag O."""
        flat = [sentence for batch in outputs for sentence in batch]  # loader order
        by_row: list[list[int]] = [[] for _ in order]
        for position, row in enumerate(order):
            by_row[row] = flat[position]
        records = []
        for words, ids in zip(raw[data_cfg.text_column], by_row, strict=True):
            missing = len(words) - len(ids)
            tags = [self.label_names[i] for i in ids] + [OUTSIDE] * missing
            records.append({"tokens": list(words), "tags": tags, "truncated_words": missing})
        return records
