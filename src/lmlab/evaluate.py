"""`lmlab evaluate ckpt_path=...`: score a checkpoint on a split with the config it was trained with."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from lmlab.app import run_app

log = logging.getLogger("lmlab.evaluate")


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Score ``cfg.ckpt_path`` on ``cfg.split``; writes metrics.json in this job's dir and returns it."""
    from lmlab.app import use_hydra_logging
    from lmlab.builders import build_eval_trainer, restore_task
    from lmlab.run_dir import RunDir

    use_hydra_logging()
    split = str(cfg.split)
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
    metrics: dict[str, Any] = {"checkpoint": str(Path(str(cfg.ckpt_path)).resolve()), "split": split,
                               "data": datamodule.stats.get(split, {}).get("source"),
                               split: {k: float(v) for k, v in results[0].items()}}
    if getattr(module, "class_report", None):
        metrics[f"{split}_per_class"] = module.class_report
    run = RunDir(cfg.paths.output_dir)
    run.write_metrics(metrics)
    if cfg.output:
        Path(str(cfg.output)).write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    log.info("%s", json.dumps(metrics[split], sort_keys=True))
    print(json.dumps(metrics[split], sort_keys=True))
    return metrics


def main() -> None:
    run_app("evaluate", evaluate)


if __name__ == "__main__":
    main()
