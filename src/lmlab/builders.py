"""Config -> objects. The one place where a composed config becomes tokenizer, data, model, trainer."""

from __future__ import annotations

import logging
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from lmlab.errors import ConfigError

log = logging.getLogger(__name__)


def build_tokenizer(cfg: DictConfig) -> Any:
    """model.tokenizer / model.name_or_path's tokenizer, or one trained on the train split
    (model.train_tokenizer; cached, so evaluate/predict and later runs get the same one)."""
    from lmlab.models import load_tokenizer

    if OmegaConf.select(cfg, "model.train_tokenizer.algorithm", default=None) is None:
        return load_tokenizer(cfg.model)
    from pathlib import Path

    from lmlab.tasks import load_task
    from lmlab.tokenizer_training import train_tokenizer

    _, datamodule_cls = load_task(cfg.task.name)
    corpus = datamodule_cls(cfg.data, None, seed=int(cfg.seed), splits=("train",))
    spec = OmegaConf.to_container(cfg.model.train_tokenizer, resolve=True)
    return train_tokenizer(spec, corpus.corpus, corpus.corpus_fingerprint(),
                           Path(str(cfg.paths.cache_dir)) / "tokenizers")


def build_datamodule(cfg: DictConfig, tokenizer: Any, label_names: list[str] | None = None,
                     splits: tuple[str, ...] = ("train", "validation", "test")) -> Any:
    from lmlab.tasks import load_task

    _, datamodule_cls = load_task(cfg.task.name)
    return datamodule_cls(cfg.data, tokenizer, seed=int(cfg.seed), label_names=label_names, splits=splits)


def check_max_length(cfg: DictConfig, model: Any) -> None:
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit and cfg.data.max_length > limit:
        raise ConfigError([
            f"data.max_length={cfg.data.max_length} is above the model's limit of {limit} positions "
            f"(max_position_embeddings of {cfg.model.name_or_path or cfg.model.from_config.model_type}). "
            f"Fix: data.max_length={limit} or less."
        ])


def build_task_module(cfg: DictConfig, config: dict[str, Any], label_names: list[str] | None,
                      weights: bool = True, tokenizer: Any = None) -> Any:
    """The task's LightningModule with a freshly loaded/built model (``config``: the plain run config).

    ``tokenizer`` lets a task size a from-config model's vocabulary (e.g. a tokenizer trained for it), and
    reaches tasks that use it at run time (``needs_tokenizer``: masking, sample generation). With
    ``weights`` (a new run, not a restore), model.init_from loads a lmlab checkpoint's matching weights."""
    from lmlab.tasks import load_task

    module_cls, _ = load_task(cfg.task.name)
    model = module_cls.build_model(cfg.model, label_names, weights=weights, tokenizer=tokenizer)
    check_max_length(cfg, model)
    if weights and cfg.model.init_from:
        from lmlab.models import init_from_checkpoint

        init_from_checkpoint(model, str(cfg.model.init_from))
    from lmlab.techniques.peft_support import wrap_model

    model, peft_info = wrap_model(cfg, model)  # (model, None) unchanged when peft is off
    if cfg.model.get("cpu_dropout", "fast") == "fast" and not cfg.model.compile:
        from lmlab.techniques.cpu_dropout import use_fast_cpu_dropout

        use_fast_cpu_dropout(model)  # after peft: its LoRA dropouts too
    extra = {"tokenizer": tokenizer} if getattr(module_cls, "needs_tokenizer", False) else {}
    module = module_cls(model, config, label_names, **extra)
    if peft_info is not None:
        module.peft_info = peft_info
        # Trainable-only checkpoints lack the base weights: Lightning's resume/test loads must not be strict.
        module.strict_loading = peft_info["checkpoint"] != "trainable"
    from lmlab.models import compile_modules

    compile_modules(module.compiled_modules(), cfg.model)
    return module


def build_callbacks(cfg: DictConfig, has_logger: bool = True) -> list[Any]:
    """The configured callbacks, less those the run's settings rule out: a progress bar when bars are off,
    and (with logger=none) the LR monitor, which Lightning refuses without a logger to write to."""
    from lightning.pytorch.callbacks import LearningRateMonitor, ProgressBar

    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    if not cfg.trainer.enable_progress_bar:
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    if not has_logger and any(isinstance(c, LearningRateMonitor) for c in callbacks):
        log.info("callbacks.lr_monitor left out: no logger to write the learning rate to (logger=none)")
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    return callbacks


def build_loggers(cfg: DictConfig, wandb_id: str | None) -> list[Any]:
    from lmlab.loggers import start_wandb

    loggers = []
    for name, logger_cfg in (cfg.get("logger") or {}).items():
        if logger_cfg is None:
            continue
        extra = {"id": wandb_id} if logger_cfg.get("_target_") == "lmlab.loggers.wandb_logger" else {}
        if extra and logger_cfg.get("name") is None:
            extra["name"] = f"{cfg.task_name}/{cfg.paths.output_dir.rsplit('/', 1)[-1]}"
        logger = instantiate(logger_cfg, **extra)
        log.info("logger %s: %s", name, type(logger).__name__)
        if extra:
            start_wandb(logger)
        loggers.append(logger)
    return loggers


def build_trainer(cfg: DictConfig, callbacks: list[Any], loggers: list[Any]) -> Any:
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    from lmlab.checkpoints import AtomicCheckpointIO

    plugins: list[Any] = [AtomicCheckpointIO()]
    if SLURMEnvironment.detect():
        # Exactly one component requeues: SLURM/submitit (docs/cluster.md). Lightning's own auto-requeue would
        # issue a second `scontrol requeue` and write hpc_ckpt files outside the run dir.
        plugins.append(SLURMEnvironment(auto_requeue=False))
    from lmlab.precision import concrete

    # `lmlab train` settles auto before recording the config (train.settle_precision); other callers get it here.
    precision = concrete(cfg.trainer.precision, str(cfg.trainer.accelerator))
    extra: dict[str, Any] = {}
    if cfg.trainer.get("profiler") is None:  # no profiler asked for: none of Lightning's per-hook contexts
        from lmlab.profiling import NoOpProfiler

        extra["profiler"] = NoOpProfiler()
    return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, plugins=plugins,
                       precision=precision, _convert_="object", **extra)


GROUP_SECTIONS = {"debug": "trainer"}  # a group whose options write into another section
OWN_KEYS = ("ckpt_path", "split", "output", "input", "overwrite", "precision", "recheck_margin")


def config_from_checkpoint(saved: dict[str, Any], cfg: DictConfig, overrides: list[str]) -> DictConfig:
    """The training run's config with this command's overrides applied on top.

    A group override (``data=mrpc``) replaces that whole section with the newly composed one; a key
    override (``data.files.test=x.tsv``) takes the composed value of that key, so types and
    interpolations are those Hydra resolved.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    run_cfg = OmegaConf.create(saved)
    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.key_or_group
        if key in OWN_KEYS or key.startswith("hydra") or key == "experiment":
            continue
        section = GROUP_SECTIONS.get(key, key)
        if "." not in key and section in cfg and OmegaConf.is_dict(cfg[section]):
            run_cfg[section] = OmegaConf.to_container(cfg[section], resolve=True)
        else:
            OmegaConf.update(run_cfg, key, OmegaConf.select(cfg, key), merge=False, force_add=True)
    for key in OWN_KEYS:
        if key in cfg:
            run_cfg[key] = cfg[key]
    return run_cfg


def restore_task(cfg: DictConfig, splits: tuple[str, ...]) -> tuple[Any, Any, Any, DictConfig, dict[str, Any]]:
    """(module with the checkpoint's weights, datamodule, tokenizer, run config, checkpoint metadata)."""
    from pathlib import Path

    from hydra.core.hydra_config import HydraConfig

    from lmlab.checkpoints import lmlab_metadata, load_checkpoint
    from lmlab.errors import CheckpointError

    path = Path(str(cfg.ckpt_path)).expanduser()
    checkpoint = load_checkpoint(path, mmap=True)
    meta = lmlab_metadata(checkpoint, path)
    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    run_cfg = config_from_checkpoint(meta["config"], cfg, overrides)
    tokenizer = build_tokenizer(run_cfg)
    # A peft checkpoint may hold only the trainable weights: then the base weights come from model.name_or_path.
    adapter_only = (meta.get("peft") or {}).get("checkpoint") == "trainable"
    module = build_task_module(run_cfg, meta["config"], meta.get("label_names"), weights=adapter_only,
                               tokenizer=tokenizer)
    try:
        if adapter_only:
            from lmlab.techniques.peft_support import load_trainable

            load_trainable(module, checkpoint["state_dict"])
        else:
            module.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as e:
        raise CheckpointError(
            f"Checkpoint {path} does not fit the model built from its config ({str(e).splitlines()[0]} ...). "
            "Fix: evaluate with the model/tokenizer config the checkpoint was trained with (do not override "
            "model.*), or retrain."
        ) from e
    datamodule = build_datamodule(run_cfg, tokenizer, label_names=meta.get("label_names"), splits=splits)
    return module, datamodule, tokenizer, run_cfg, meta


def build_eval_trainer(run_cfg: DictConfig, output_dir: str, precision: Any = None) -> Any:
    """A bare Trainer for scoring/prediction on the run's accelerator (no loggers, no checkpoints), in
    ``precision`` (default: the run's trainer.precision)."""
    import lightning as L

    from lmlab.errors import ConfigError
    from lmlab.precision import concrete, missing_accelerator
    from lmlab.profiling import NoOpProfiler

    t = run_cfg.trainer
    if problem := missing_accelerator(str(t.accelerator)):  # e.g. a run trained on a GPU, scored on a laptop
        raise ConfigError([problem])
    precision = concrete(t.precision if precision is None else precision, str(t.accelerator))
    return L.Trainer(accelerator=t.accelerator, devices=1, precision=precision, logger=False,
                     profiler=NoOpProfiler(), enable_checkpointing=False,
                     enable_progress_bar=bool(t.enable_progress_bar), enable_model_summary=False, default_root_dir=output_dir,
                     limit_test_batches=t.limit_test_batches, limit_val_batches=t.limit_val_batches,
                     limit_predict_batches=t.limit_predict_batches)
