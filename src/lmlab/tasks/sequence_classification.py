"""Sequence classification: a transformer encoder with a classification head.

Metrics (torchmetrics, streamed: only counts are kept, never logits): accuracy, macro-F1, MCC, plus the
positive-class F1 for binary tasks (GLUE's F1 for MRPC/QQP) and a per-class report at test time.
"""

from __future__ import annotations

from typing import Any

import torch
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassF1Score,
    MulticlassMatthewsCorrCoef,
    MulticlassStatScores,
)

from lmlab.data.loading import column_values
from lmlab.tasks.base import TaskModule


def _metrics(num_labels: int) -> MetricCollection:
    return MetricCollection({
        "acc": MulticlassAccuracy(num_labels, average="micro"),
        "f1": MulticlassF1Score(num_labels, average="macro"),
        "mcc": MulticlassMatthewsCorrCoef(num_labels),
        "stats": MulticlassStatScores(num_labels, average=None),  # (num_labels, 5): tp, fp, tn, fn, support
    })


def per_class_report(stats: torch.Tensor, label_names: list[str]) -> dict[str, dict[str, float]]:
    """Precision/recall/F1/support per class from a (num_labels, 5) stat-scores tensor."""
    report = {}
    for name, (tp, fp, _tn, fn, support) in zip(label_names, stats.tolist(), strict=True):
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        report[name] = {"precision": precision, "recall": recall, "f1": f1, "support": int(support)}
    return report


def positive_label(name: Any, label_names: list[str]) -> str | None:
    """The class scored as f1_pos: ``task.positive_label``, else the second label of a binary task (GLUE's
    convention for 0/1 labels), else None (no f1_pos)."""
    if name is None:
        return label_names[1] if len(label_names) == 2 else None
    if str(name) not in label_names:
        from lmlab.errors import ConfigError

        raise ConfigError([f"task.positive_label={name!r} is not a label of the training data (labels: "
                           f"{label_names}). Fix: task.positive_label=<one of them>, or null."])
    return str(name)


class SequenceClassificationTask(TaskModule):
    rechecks_ties = True  # lmlab predict may run it under bf16 autocast (predict.yaml: precision)
    needs_tokenizer = True  # the auxiliary MLM loss (task.aux_mlm_weight) masks with the run's tokenizer

    @staticmethod
    def build_model(model_cfg: Any, label_names: list[str], weights: bool = True, tokenizer: Any = None) -> torch.nn.Module:
        from transformers import AutoModelForSequenceClassification

        from lmlab.models import build_model

        return build_model(model_cfg, AutoModelForSequenceClassification, weights, tokenizer,
                           num_labels=len(label_names),
                           id2label=dict(enumerate(label_names)),
                           label2id={name: i for i, name in enumerate(label_names)})

    def __init__(self, model: torch.nn.Module, config: dict[str, Any], label_names: list[str], tokenizer: Any = None):
        super().__init__(model, config, label_names)
        from lmlab.techniques.adversarial import Adversarial
        from lmlab.techniques.aux_mlm import build_aux_mlm

        n = len(label_names)
        # Training-only extras (issue 5): None when off. .get: runs from before the adversarial group.
        self.adversarial = Adversarial.from_config(config.get("adversarial"))
        self.aux_mlm = build_aux_mlm(self.model, config, tokenizer)
        self.train_acc = MulticlassAccuracy(n, average="micro")
        self.val_metrics = _metrics(n)
        self.test_metrics = _metrics(n)
        self.class_report: dict[str, dict[str, float]] = {}
        # .get: checkpoints written before task.positive_label existed do not have the key.
        self.positive_label = positive_label(config["task"].get("positive_label"), label_names)

    def forward(self, batch: dict[str, torch.Tensor]) -> Any:
        return self.model(**batch)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        rows = len(batch["labels"])
        if self.adversarial is None:
            out = self(batch)  # logits: (batch, num_labels)
            loss = out.loss
        else:  # clean + adversarial loss (logs train/loss_clean, train/loss_adv)
            out, loss = self.adversarial.training_loss(self, lambda: self(batch), rows)
        if self.aux_mlm is not None:  # + λ·L_mlm (logs train/loss_task, train/loss_mlm)
            loss = self.aux_mlm.training_loss(self, batch, batch_idx, loss, rows)
        self.train_acc.update(out.logits.argmax(-1), batch["labels"])
        self.log_train_step({"train/loss": loss}, prog_bar=True, batch_size=rows)
        return loss

    def on_train_epoch_end(self) -> None:
        self.log_and_reset("train/acc", self.train_acc)

    def _eval_step(self, batch: dict[str, torch.Tensor], prefix: str, metrics: MetricCollection) -> None:
        out = self(batch)
        metrics.update(out.logits.argmax(-1), batch["labels"])
        self.log(f"{prefix}/loss", out.loss, on_epoch=True, sync_dist=True, batch_size=len(batch["labels"]))

    def _log_epoch(self, prefix: str, metrics: MetricCollection) -> dict[str, Any]:
        values = metrics.compute()  # synced across ranks by torchmetrics
        metrics.reset()
        stats = values.pop("stats")
        if self.positive_label is not None:
            values["f1_pos"] = torch.tensor(per_class_report(stats, self.label_names)[self.positive_label]["f1"])
        self.log_dict({f"{prefix}/{k}": v for k, v in values.items()}, prog_bar=prefix == "val")
        return {"stats": stats}

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "val", self.val_metrics)

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val", self.val_metrics)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "test", self.test_metrics)

    def on_test_epoch_end(self) -> None:
        stats = self._log_epoch("test", self.test_metrics)["stats"]
        if self.config["task"].get("per_class_report", True):
            self.class_report = per_class_report(stats, self.label_names)
            for name, row in self.class_report.items():
                self.log_dict({f"test/class/{name}/{k}": float(v) for k, v in row.items() if k != "support"})

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        batch = {k: v for k, v in batch.items() if k != "labels"}
        logits = self.recheck_near_ties(batch, self(batch).logits)
        return torch.softmax(logits, dim=-1)  # (batch, num_labels)

    def prediction_records(self, outputs: list[Any], order: list[int], raw: Any, data_cfg: Any) -> list[dict]:
        """The input text(s), the predicted label name and every class probability, in input order."""
        probs = torch.cat(outputs)  # (rows, num_labels), in loader order
        by_row: list[Any] = [None] * len(order)
        for position, row in enumerate(order):
            by_row[row] = probs[position]
        text_cols = [c for c in (data_cfg.text_column, data_cfg.text_pair_column) if c]
        texts = {col: column_values(raw, col) for col in text_cols}
        records = []
        for i, p in enumerate(by_row):
            record = {col: texts[col][i] for col in text_cols}
            record["label"] = self.label_names[int(p.argmax())]
            record["probs"] = {name: round(float(v), 6) for name, v in zip(self.label_names, p, strict=True)}
            records.append(record)
        return records
