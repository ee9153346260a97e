"""`lmlab evaluate ckpt_path=...`: score a checkpoint on a split with the config it was trained with."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from lmlab.app import run_app

log = logging.getLogger("lmlab.evaluate")


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Score ``cfg.ckpt_path`` on ``cfg.split``; writes metrics.json in this job's dir and returns it."""
    from lmlab.app import use_hydra_logging
    from lmlab.builders import build_eval_trainer, restore_task
    from lmlab.run_dir import RunDir

    use_hydra_logging()
    split = str(cfg.split)
    untrained = OmegaConf.is_missing(cfg, "ckpt_path") or cfg.ckpt_path is None
    if untrained:
        module, datamodule, run_cfg = untrained_task(cfg, split)
    else:
        module, datamodule, _, run_cfg, meta = restore_task(cfg, splits=(split,))
    datamodule.prepare_data()
    if split not in datamodule.splits:
        from lmlab.errors import DataError

        raise DataError(f"The checkpoint's data config has no {split} file. Fix: data.files.{split}=<file>.")
    trainer = build_eval_trainer(run_cfg, str(cfg.paths.output_dir))
    if split == "test":
        results = trainer.test(module, dataloaders=datamodule.test_dataloader(), verbose=False)
    else:
        results = trainer.validate(module, dataloaders=datamodule.val_dataloader(), verbose=False)
    checkpoint = None if untrained else str(Path(str(cfg.ckpt_path)).resolve())
    metrics: dict[str, Any] = {"checkpoint": checkpoint, "split": split,
                               "data": datamodule.stats.get(split, {}).get("source"),
                               split: {k: float(v) for k, v in results[0].items()}}
    if getattr(module, "class_report", None):
        metrics[f"{split}_per_class"] = module.class_report
    if untrained:
        metrics["model"] = cfg.model.name_or_path or "from_config (random init)"
    run = RunDir(cfg.paths.output_dir)
    run.write_metrics(metrics)
    if cfg.output:
        Path(str(cfg.output)).write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    log.info("%s", json.dumps(metrics[split], sort_keys=True))
    print(json.dumps(metrics[split], sort_keys=True))
    return metrics


def untrained_task(cfg: DictConfig, split: str) -> tuple[Any, Any, DictConfig]:
    """(module, datamodule, config) of a task that scores a model as it is, without a checkpoint: the model
    and tokenizer come from model.* (zero-shot prompting). Other tasks need a trained checkpoint."""
    import lightning as L

    from lmlab.builders import build_datamodule, build_task_module, build_tokenizer
    from lmlab.errors import ConfigError
    from lmlab.run_dir import plain_config
    from lmlab.tasks import load_task

    if not getattr(load_task(cfg.task.name)[0], "scores_untrained", False):
        raise ConfigError([f"ckpt_path is missing: task={cfg.task.name} evaluates a trained checkpoint (only "
                           "task=prompt_classification scores a model without training). Fix: "
                           "ckpt_path=RUN_DIR/checkpoints/best.ckpt."])
    L.seed_everything(int(cfg.seed), verbose=False)  # a from_config model's random init, reproducibly
    tokenizer = build_tokenizer(cfg)
    datamodule = build_datamodule(cfg, tokenizer, splits=(split,))
    datamodule.prepare_data()
    module = build_task_module(cfg, plain_config(cfg), datamodule.label_names, tokenizer=tokenizer)
    return module, datamodule, cfg


def main() -> None:
    run_app("evaluate", evaluate)


if __name__ == "__main__":
    main()
