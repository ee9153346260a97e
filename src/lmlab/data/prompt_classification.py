"""Prompt-classification data: sequence-classification rows put into a template with one [MASK].

Reading, label checks, caching and batching are SequenceClassificationDataModule's; this module changes how a
row is encoded (``task.template`` with ``{text}``, ``{text_pair}``, ``{mask}``), where the label names come
from (the keys of ``task.verbalizer``, so zero-shot scoring needs no train split) and, with
``task.few_shot_k``, which train rows are used (k per class, drawn by ``seed``). Texts longer than
``data.max_length`` lose their last tokens (the longest text first); the template's own tokens, the mask
included, are never cut.
"""

from __future__ import annotations

import random
from string import Formatter
from typing import Any

from omegaconf import DictConfig, OmegaConf

from lmlab.data.loading import column_values
from lmlab.data.sequence_classification import (
    OTHER_TASK_FORMATS,
    SequenceClassificationDataModule,
    _label_key,
)
from lmlab.errors import ConfigError, DataError


def task_settings(data_cfg: DictConfig) -> DictConfig:
    """The run's task config. The datamodule is built from the data section alone, but the template, verbalizer
    and few-shot k are task keys (they belong to the method, not to the data set): read them from the run
    config that the data section is part of."""
    root = data_cfg._get_root()
    task = OmegaConf.select(root, "task", default=None)
    if task is None or OmegaConf.select(task, "template", default=None) is None:
        raise DataError("The prompt-classification datamodule needs the run's task config (task.template, "
                        "task.verbalizer): build it from a composed config's data section (cfg.data).")
    return task


class PromptClassificationDataModule(SequenceClassificationDataModule):
    task_name = "prompt_classification"

    def __init__(self, data_cfg: Any, tokenizer: Any, *args: Any, label_names: list[str] | None = None,
                 **kwargs: Any):
        fmt = data_cfg.get("format")
        if fmt in OTHER_TASK_FORMATS:
            raise DataError(
                f"data={data_cfg.name} is {fmt} data (data.format={fmt}), made for task={OTHER_TASK_FORMATS[fmt]}; "
                "task=prompt_classification needs one text (or a pair) and one label per row. Fix: a "
                "classification data config (data=sst2, mrpc, rte or local)."
            )
        task = task_settings(data_cfg)
        self.template = str(task.template)
        self.few_shot_k = task.few_shot_k
        verbalizer = OmegaConf.to_container(task.verbalizer, resolve=True)
        # The verbalizer fixes the label space (in sequence classification's order: 0 < 1 < 2, then names).
        label_names = label_names or [str(k) for k in sorted(verbalizer, key=_label_key)]
        if tokenizer is not None and tokenizer.mask_token is None:
            raise DataError(
                f"The tokenizer of this model ({type(tokenizer).__name__}) has no mask token, so it cannot fill a "
                "prompt's {mask}. Fix: a masked-LM model (BERT family), e.g. model=minilm or an MLM run's export/."
            )
        if tokenizer is not None:  # fail before tokenizing: a bad verbalizer word is a config error
            verbalizer_ids(verbalizer, label_names, tokenizer)
        super().__init__(data_cfg, tokenizer, *args, label_names=label_names, **kwargs)

    # -- what a task defines ------------------------------------------------------------------------
    def check_split(self, ds: Any, split: str, source: str) -> None:
        if self.has_labels(split):
            values = {str(v) for v in column_values(ds, self.cfg.label_column)} - {"", "None"}
            unknown = sorted(values - set(self.label_names or []), key=_label_key)
            if unknown:
                raise DataError(
                    f"The {split} data {source} has label value(s) {unknown[:10]} in column "
                    f"{self.cfg.label_column!r} without a verbalizer word (task.verbalizer has {self.label_names}). "
                    f"Fix: add one per label, e.g. task.verbalizer.{unknown[0]}=<word>, or drop those rows."
                )
        super().check_split(ds, split, source)

    def select_rows(self, raw: Any, split: str) -> Any:
        """data.limit_* as usual; then, for train with task.few_shot_k, k rows per class drawn by seed."""
        raw = super().select_rows(raw, split)
        if split != "train" or self.few_shot_k is None:
            return raw
        return raw.select(few_shot_rows(column_values(raw, self.cfg.label_column), self.label_names or [],
                                        int(self.few_shot_k), self.seed, self.sources.get("train", "train")))

    def source_fingerprint(self, split: str) -> str:
        """The template and mask token change every encoded row, few_shot_k the train rows: all are cache key."""
        mask = self.tokenizer.mask_token if self.tokenizer is not None else None
        return f"{super().source_fingerprint(split)}|template={self.template!r}|mask={mask}|k={self.few_shot_k}"

    def encode(self, batch: dict[str, list[Any]], split: str) -> dict[str, list[Any]]:
        texts = ["" if t is None else str(t) for t in batch[self.cfg.text_column]]
        pairs = (["" if t is None else str(t) for t in batch[self.cfg.text_pair_column]]
                 if self.cfg.text_pair_column else [""] * len(texts))
        prompts, spans = zip(*(self.render(t, p) for t, p in zip(texts, pairs, strict=True)), strict=True)
        enc = self.tokenizer(list(prompts), truncation=False, return_offsets_mapping=True, verbose=False)
        out: dict[str, list[Any]] = {k: [] for k in enc if k != "offset_mapping"}
        out["untruncated_length"] = [len(ids) for ids in enc["input_ids"]]
        for i, offsets in enumerate(enc["offset_mapping"]):
            keep = self.kept_tokens(offsets, spans[i], prompts[i])
            for key in out:
                if key != "untruncated_length":
                    out[key].append([enc[key][i][j] for j in keep])
        out["length"] = [len(ids) for ids in out["input_ids"]]
        if self.has_labels(split):
            index = {name: i for i, name in enumerate(self.label_names or [])}
            out["labels"] = [index[str(v)] for v in batch[self.cfg.label_column]]
        return out

    # -- prompts ------------------------------------------------------------------------------------
    def render(self, text: str, pair: str) -> tuple[str, list[tuple[int, int]]]:
        """The template filled in, and the character spans (start, end) of the texts in it."""
        values = {"text": text.strip(), "text_pair": pair.strip(), "mask": self.tokenizer.mask_token}
        parts: list[str] = []
        spans: list[tuple[int, int]] = []
        for literal, name, _, _ in Formatter().parse(self.template):
            parts.append(literal)
            if name is None:
                continue
            start = sum(map(len, parts))
            parts.append(values[name])
            if name != "mask":
                spans.append((start, start + len(values[name])))
        return "".join(parts), spans

    def kept_tokens(self, offsets: list[tuple[int, int]], spans: list[tuple[int, int]], prompt: str) -> list[int]:
        """Indices of the tokens to keep: all, or without the last tokens of the longest text(s) when the
        prompt is longer than data.max_length (the template's tokens, the mask among them, always stay)."""
        excess = len(offsets) - self.cfg.max_length
        if excess <= 0:
            return list(range(len(offsets)))
        # (token index lists per text span); special tokens have the empty offset (0, 0).
        owned = [[j for j, (s, e) in enumerate(offsets) if e > s and s >= a and e <= b] for a, b in spans]
        if sum(map(len, owned)) < excess:
            raise DataError(
                f"The template alone is longer than data.max_length={self.cfg.max_length} tokens ({prompt[:80]!r}...). "
                f"Fix: a shorter task.template or a larger data.max_length."
            )
        dropped: set[int] = set()
        for _ in range(excess):
            longest = max(owned, key=len)
            dropped.add(longest.pop())
        return [j for j in range(len(offsets)) if j not in dropped]


def verbalizer_ids(verbalizer: dict[str, Any], label_names: list[str], tokenizer: Any) -> list[int]:
    """The token id of each label's verbalizer word, in label order; every word must be one distinct token."""
    problems = []
    missing = [name for name in label_names if name not in verbalizer]
    if missing:
        problems.append(f"task.verbalizer has no word for label(s) {missing} (it has {sorted(verbalizer)}). "
                        f"Fix: task.verbalizer.{missing[0]}=<word>.")
    ids: list[int] = []
    for name in label_names:
        word = str(verbalizer.get(name, ""))
        pieces = tokenizer(word, add_special_tokens=False)["input_ids"]
        if name in verbalizer and len(pieces) != 1:
            problems.append(
                f"task.verbalizer.{name}={word!r} is {len(pieces)} tokens of the tokenizer "
                f"({tokenizer.convert_ids_to_tokens(pieces)}); a verbalizer word must be a single token. Fix: a "
                "word the tokenizer keeps whole (a frequent word, e.g. great/terrible/good/bad).")
        ids.extend(pieces[:1])
    if not problems and len(set(ids)) < len(ids):
        words = {name: tokenizer.convert_ids_to_tokens(i) for name, i in zip(label_names, ids, strict=True)}
        problems.append(f"task.verbalizer maps two labels to the same token ({words}). Fix: one distinct word per label.")
    if problems:
        raise ConfigError(problems)
    return ids


def few_shot_rows(labels: list[Any], label_names: list[str], k: int, seed: int, source: str) -> list[int]:
    """Row indices (in file order) of k rows per class, drawn by ``seed``: the same seed gives the same rows."""
    order = list(range(len(labels)))
    random.Random(seed).shuffle(order)
    chosen: list[int] = []
    for name in label_names:
        rows = [i for i in order if str(labels[i]) == name][:k]
        if len(rows) < k:
            raise DataError(
                f"task.few_shot_k={k}: the train data {source} has only {len(rows)} row(s) of label {name!r} "
                "(after data.limit_train_samples). Fix: a smaller task.few_shot_k, or data.limit_train_samples=null."
            )
        chosen.extend(rows)
    return sorted(chosen)
