"""Sequence classification data: one text (or a text pair) and a label per row."""

from __future__ import annotations

from typing import Any

from lmlab.data.base import TextDataModule
from lmlab.data.loading import column_values
from lmlab.errors import DataError


def _label_key(value: Any) -> tuple[int, Any]:
    """Sort numeric labels numerically (2 < 10) and others alphabetically."""
    try:
        return (0, float(value))
    except (TypeError, ValueError):
        return (1, str(value))


# Formats that hold no (text, label) rows: they belong to the token-level, LM and seq2seq tasks.
OTHER_TASK_FORMATS = {"conll": "token_classification", "text": "masked_lm or causal_lm", "parallel": "seq2seq"}


class SequenceClassificationDataModule(TextDataModule):
    task_name = "sequence_classification"

    def __init__(self, data_cfg: Any, *args: Any, **kwargs: Any):
        fmt = data_cfg.get("format")
        if fmt in OTHER_TASK_FORMATS:
            raise DataError(
                f"data={data_cfg.name} is {fmt} data (data.format={fmt}), made for task={OTHER_TASK_FORMATS[fmt]}; "
                "task=sequence_classification needs one text (or a pair) and one label per row. Fix: choose "
                "the matching task, or a classification data config (data=sst2, mrpc, rte or local)."
            )
        super().__init__(data_cfg, *args, **kwargs)

    def has_labels(self, split: str) -> bool:
        return split != "predict"

    def columns(self, split: str) -> list[str]:
        cols = [self.cfg.text_column]
        if self.cfg.text_pair_column:
            cols.append(self.cfg.text_pair_column)
        if self.has_labels(split):
            cols.append(self.cfg.label_column)
        return cols

    def _require_labels(self, values: list[Any], split: str, source: str) -> None:
        missing = [i for i, v in enumerate(values) if v is None or v == ""]
        if missing:
            raise DataError(
                f"The {split} data {source} has {len(missing)} row(s) without a label in column "
                f"{self.cfg.label_column!r} (first at data row {missing[0] + 1}). Fix: remove or label those rows."
            )

    def discover_labels(self, train: Any) -> list[str]:
        source = self.sources.get("train", "")
        values = column_values(train, self.cfg.label_column)
        if any(isinstance(v, list | dict) for v in values[:100]):
            raise DataError(
                f"The train data {source} has lists in label column {self.cfg.label_column!r}, not one label per "
                "row: it looks like token-level data. Fix: task=token_classification, or point "
                "data.label_column at a column with one label per row."
            )
        self._require_labels(values, "train", source)
        names = [str(v) for v in sorted(set(values), key=_label_key)]
        if len(names) < 2:
            raise DataError(
                f"The train data {source} has a single label value {names} in column {self.cfg.label_column!r}; "
                "classification needs at least two. Fix: check data.label_column."
            )
        return names

    # The run's `augment` group (a run-level option, not data.*): given here by tests; in a run it is read from
    # the trainer's task module, which carries the run config. Only the train loader uses it.
    augment: dict[str, Any] | None = None

    def train_dataloader(self) -> Any:
        augment = self.augment
        if augment is None and self.trainer is not None:
            augment = (getattr(self.trainer.lightning_module, "config", None) or {}).get("augment")
        if not augment or augment.get("method") is None:
            return super().train_dataloader()
        from lmlab.data.augment import augmented_loader

        return augmented_loader(self, augment)  # raw texts augmented per (seed, epoch, row), tokenized on the fly

    def check_split(self, ds: Any, split: str, source: str) -> None:
        if not self.has_labels(split) or self.label_names is None:
            return
        values = column_values(ds, self.cfg.label_column)
        self._require_labels(values, split, source)
        known = set(self.label_names)
        unseen = sorted({str(v) for v in values} - known, key=_label_key)
        if unseen:
            raise DataError(
                f"The {split} data {source} has label value(s) {unseen[:10]} in column "
                f"{self.cfg.label_column!r} that never occur in the training data (known: {self.label_names[:20]}). "
                "Fix: correct those labels, add training examples for them, or drop those rows."
            )

    def encode(self, batch: dict[str, list[Any]], split: str) -> dict[str, list[Any]]:
        texts = ["" if t is None else str(t) for t in batch[self.cfg.text_column]]
        pairs = None
        if self.cfg.text_pair_column:
            pairs = ["" if t is None else str(t) for t in batch[self.cfg.text_pair_column]]
        enc = self.tokenizer(texts, pairs, truncation=True, max_length=self.cfg.max_length)
        # Untruncated token counts, only to report how many texts max_length cut.
        full = self.tokenizer(texts, pairs, truncation=False, return_attention_mask=False,
                              return_token_type_ids=False, verbose=False)
        out: dict[str, list[Any]] = dict(enc)
        out["length"] = [len(ids) for ids in enc["input_ids"]]
        out["untruncated_length"] = [len(ids) for ids in full["input_ids"]]
        if self.has_labels(split):
            index = {name: i for i, name in enumerate(self.label_names or [])}
            out["labels"] = [index[str(v)] for v in batch[self.cfg.label_column]]
        return out
