"""`lmlab train`: compose -> build -> fit -> test -> export, everything recorded in the run dir."""

from __future__ import annotations

import logging
import secrets
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from lmlab.app import run_app
from lmlab.errors import RunDirError

log = logging.getLogger("lmlab.train")


def resolve_resume(resume: str | None, run_path: Path) -> tuple[str | None, bool]:
    """(checkpoint to resume from, whether it continues in this same run dir)."""
    if resume is None:
        return None, False
    target = Path(str(resume)).expanduser()
    if target.is_dir():
        from lmlab.checkpoints import resume_checkpoint

        ckpt, notes = resume_checkpoint(target / "checkpoints")
        for note in notes:
            log.warning("resume: %s", note)
        if ckpt is None:
            found = sorted(p.name for p in (target / "checkpoints").glob("*.ckpt")) if (target / "checkpoints").is_dir() else []
            raise RunDirError(
                f"resume={target}: no complete checkpoint in that run dir (found: {found or 'none'}"
                f"{'; ' + '; '.join(notes) if notes else ''}); the run stopped before its first checkpoint. "
                "Fix: start a new run, or resume=<a .ckpt file>."
            )
        if ckpt.name != "last.ckpt":
            log.warning("resume: continuing from %s, the newest complete checkpoint", ckpt)
        return str(ckpt), target.resolve() == run_path.resolve()
    if target.is_file():
        return str(target), False
    raise RunDirError(f"resume={target}: no such run dir or checkpoint file. Fix: resume=<RUN_DIR or a .ckpt>.")


def settle_precision(cfg: DictConfig, started: dict[str, Any] | None) -> dict[str, Any]:
    """Make trainer.precision concrete before anything records the config (config_resolved.yaml, checkpoints,
    loggers): ``auto`` becomes what this hardware runs best (lmlab.precision.auto_precision), or, for a run
    continuing in its own dir, the precision it started with. Returns run.json's ``precision`` record."""
    from omegaconf import open_dict

    requested = cfg.trainer.precision
    if str(requested) != "auto":
        return {"requested": requested, "used": requested}
    if started and started.get("requested") == "auto":
        used, why = started["used"], "the precision this run started with"
    else:
        from lmlab.precision import auto_precision

        used, why = auto_precision(str(cfg.trainer.accelerator))
    with open_dict(cfg):
        cfg.trainer.precision = used
    log.info("trainer.precision=auto: %s (%s)", used, why)
    return {"requested": "auto", "used": used, "why": why}


def settle_cpu_dropout(cfg: DictConfig, previous: dict[str, Any] | None) -> str:
    """A run continuing in its own dir keeps the CPU dropout it started with: one that began before
    model.cpu_dropout existed (run.json has no record of it) drew torch's masks. Returns the value to record."""
    from omegaconf import open_dict

    if previous and previous.get("precision") and "cpu_dropout" not in previous:
        with open_dict(cfg):
            cfg.model.cpu_dropout = "torch"
        log.info("model.cpu_dropout=torch: the dropout this run started with (it predates model.cpu_dropout)")
    return str(cfg.model.get("cpu_dropout", "fast"))  # .get: a saved config from before the key lacks it


def _share_cores_with_parallel_jobs() -> None:
    """Under a parallel launcher (hydra/launcher=local_parallel), give each job cores / n_jobs threads:
    torch's default of one thread per core in every job oversubscribes the CPU and slows all of them."""
    import os

    import torch
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    if not HydraConfig.initialized():
        return
    n_jobs = OmegaConf.select(HydraConfig.get(), "launcher.n_jobs", default=None)
    if isinstance(n_jobs, int) and n_jobs != 1:
        cores = os.cpu_count() or 1
        torch.set_num_threads(max(1, cores // (cores if n_jobs < 0 else n_jobs)))


def _final_metrics(results: list[dict[str, float]]) -> dict[str, float]:
    return {k: float(v) for k, v in (results[0] if results else {}).items()}


def _best_checkpoint(trainer: Any) -> dict[str, Any]:
    cb = trainer.checkpoint_callback
    if cb is None or not cb.best_model_path:
        return {}
    import torch

    # mmap: reads the epoch counter without loading the weights.
    saved = torch.load(cb.best_model_path, map_location="cpu", weights_only=True, mmap=True)
    return {"path": cb.best_model_path, "monitor": cb.monitor, "epoch": saved.get("epoch"),
            "global_step": saved.get("global_step"),
            "score": float(cb.best_model_score) if cb.best_model_score is not None else None}


def _why_no_best(trainer: Any) -> str:
    if not any(cb.monitor for cb in trainer.checkpoint_callbacks):
        return "no checkpoint callback follows a validation metric: callbacks.checkpoint is off"
    return "no validation ran before training stopped, e.g. trainer.max_steps inside the first epoch"


def export_pretrained(module: Any, tokenizer: Any, best: dict[str, Any], out_dir: Path) -> Path:
    """save_pretrained of the best weights + tokenizer + label map, loadable without lmlab."""
    import json

    from transformers.utils import logging as hf_logging

    from lmlab.checkpoints import load_checkpoint

    hf_logging.disable_progress_bar()  # a "Writing model shards" bar per export is noise in the job log
    if best.get("path"):  # strict_loading: False for peft checkpoints holding only the trainable weights
        module.load_state_dict(load_checkpoint(best["path"])["state_dict"], strict=module.strict_loading)
    if module.peft_info is not None:  # LoRA/IA3 merged into plain weights; prompt/prefix: the peft adapter
        from lmlab.techniques.peft_support import save_export

        module.peft_info["export"] = save_export(module.model, out_dir)
    else:
        module.model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    if module.label_names is not None:
        (out_dir / "labels.json").write_text(json.dumps(module.label_names, indent=1) + "\n")
    return out_dir


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run one training job from a composed config; returns the metrics written to metrics.json."""
    from hydra.core.hydra_config import HydraConfig

    from lmlab.app import use_hydra_logging
    from lmlab.callbacks.preemption import Preempted
    from lmlab.errors import ConfigError
    from lmlab.loggers import finish_loggers
    from lmlab.precision import missing_accelerator
    from lmlab.run_dir import RunDir, path_name_problem, plain_config

    use_hydra_logging()
    started = time.time()
    if problem := path_name_problem("task_name", str(cfg.task_name)):  # e.g. set in an experiment file
        raise ConfigError([problem])
    run = RunDir(cfg.paths.output_dir)
    resume_ckpt, same_dir = resolve_resume(cfg.resume, run.path)
    run.ensure_writable()
    if not same_dir:
        run.ensure_fresh()
    previous = run.read_meta()
    wandb_id = previous.get("wandb_id") or secrets.token_hex(4)
    if problem := missing_accelerator(str(cfg.trainer.accelerator)):
        raise ConfigError([problem])
    precision = settle_precision(cfg, previous.get("precision") if same_dir else None)
    cpu_dropout = settle_cpu_dropout(cfg, previous if same_dir else None)
    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    run.start(cfg, command="lmlab train " + shlex.join(sys.argv[1:]), overrides=overrides,
              resumed=resume_ckpt is not None)
    run.update_meta(wandb_id=wandb_id, precision=precision, cpu_dropout=cpu_dropout)
    config = plain_config(cfg)
    loggers: list[Any] = []
    failed, error, status = True, None, "failed"
    try:
        try:
            metrics = _fit_test_export(cfg, config, run, resume_ckpt, wandb_id, loggers)
        except (MemoryError, RuntimeError) as e:
            oom = _out_of_memory(cfg, e)
            if oom is None:
                raise
            raise oom from e
        metrics["wall_time_s"] = round(time.time() - started, 2)
        metrics["status"] = status = "completed"
        run.write_metrics(metrics)
        failed = False
        if run.write:
            _print_summary(run.path, metrics)
        return metrics
    except Preempted as e:
        failed, status = False, "preempted"
        return _record_preemption(cfg, run, e, started)
    except BaseException as e:
        error = f"{type(e).__name__}: {e}"
        if is_pruned(e):  # an Optuna pruner stopped this trial: an outcome of the search, not a failure
            failed, status = False, "pruned"
        if not (run.path / "metrics.json").exists():  # never replace a finished run's metrics
            run.write_metrics({"status": status, "error": error, "task": cfg.task.name})
        raise
    finally:
        finish_loggers(loggers, failed)
        run.finish(status, error=error)


def is_pruned(error: BaseException) -> bool:
    """Optuna's TrialPruned, recognised without importing optuna (lmlab's sweeper raises it)."""
    return type(error).__name__ == "TrialPruned"


def _record_preemption(cfg: DictConfig, run: Any, e: Any, started: float) -> dict[str, Any]:
    """metrics.json says preempted (unless it holds a completed run's results) and how to continue."""
    import json

    metrics = {"status": "preempted", "task": cfg.task.name, "signal": e.signal_name, "global_step": e.step,
               "checkpoint": e.checkpoint, "wall_time_s": round(time.time() - started, 2)}
    metrics_file = run.path / "metrics.json"
    previous = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    if previous.get("status") != "completed":
        run.write_metrics(metrics)
    print(f"lmlab: preempted ({e}). Continue with: lmlab train resume={run.path}", file=sys.stderr)
    return metrics


def _out_of_memory(cfg: DictConfig, error: BaseException) -> Exception | None:
    """A TrainingError saying which batch ran out of memory and how to fit it; None for other errors."""
    from lmlab.errors import TrainingError

    text = str(error)
    if not isinstance(error, MemoryError) and "out of memory" not in text.lower():
        return None
    half = max(1, int(cfg.data.batch_size) // 2)
    accumulate = int(cfg.trainer.accumulate_grad_batches) * 2
    return TrainingError(
        f"Out of memory ({type(error).__name__}: {text.splitlines()[0] if text else 'no details'}) with "
        f"data.batch_size={cfg.data.batch_size} (evaluation: data.eval_batch_size={cfg.data.eval_batch_size}) "
        f"and sequences up to data.max_length={cfg.data.max_length} tokens. Fix: halve the batch and "
        f"accumulate gradients to keep the effective batch: data.batch_size={half} "
        f"trainer.accumulate_grad_batches={accumulate} (and data.eval_batch_size="
        f"{max(1, int(cfg.data.eval_batch_size) // 2)} if it failed in evaluation); or lower data.max_length, "
        "or use trainer.precision=bf16-mixed on a GPU."
    )


def _fit_test_export(cfg: DictConfig, config: dict[str, Any], run: Any, resume_ckpt: str | None,
                     wandb_id: str, loggers: list[Any]) -> dict[str, Any]:
    """Build everything from the config, fit, test the best checkpoint, export it. ``loggers`` is filled
    in place so the caller can close them whatever happens."""
    import lightning as L

    from lmlab.builders import (
        build_callbacks,
        build_datamodule,
        build_loggers,
        build_task_module,
        build_tokenizer,
        build_trainer,
    )

    _share_cores_with_parallel_jobs()
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    tokenizer = build_tokenizer(cfg)
    datamodule = build_datamodule(cfg, tokenizer)
    datamodule.prepare_data()
    module = build_task_module(cfg, config, datamodule.label_names, tokenizer=tokenizer)
    module.run_info = {"wandb_run_id": wandb_id, "run_dir": str(run.path)}
    if run.write and cfg.train:
        from lmlab.checkpoints import require_free_space

        require_free_space(run.checkpoints, module)
    loggers.extend(build_loggers(cfg, wandb_id))
    trainer = build_trainer(cfg, build_callbacks(cfg, has_logger=bool(loggers)), loggers)
    for logger in loggers:
        logger.log_hyperparams(config)
    run.update_meta(world_size=trainer.world_size, data=datamodule.stats,
                    label_names=datamodule.label_names, resumed_from=resume_ckpt)

    metrics: dict[str, Any] = {"task": cfg.task.name, "label_names": datamodule.label_names}
    best: dict[str, Any] = {}
    if cfg.train:
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume_ckpt)
        if trainer.interrupted:
            raise KeyboardInterrupt("training was interrupted")
        _stop_if_preempted(trainer)
        best = _best_checkpoint(trainer)
        metrics.update(best_checkpoint=best, epoch=trainer.current_epoch, global_step=trainer.global_step,
                       params=module.param_counts)
        metrics["train"] = {k.split("/", 1)[1]: float(v) for k, v in trainer.callback_metrics.items()
                            if k.startswith("train/")}
        if best:
            metrics["val"] = _final_metrics(trainer.validate(module, datamodule=datamodule,
                                                             ckpt_path=best["path"], verbose=False))
        elif not cfg.trainer.fast_dev_run:
            log.warning("no best checkpoint (%s): the test and the export use the weights at the end of training "
                        "(step %d)", _why_no_best(trainer), trainer.global_step)
    if cfg.test and "test" in datamodule.splits:
        metrics["test"] = _final_metrics(trainer.test(module, datamodule=datamodule,
                                                      ckpt_path=best.get("path"), verbose=False))
        if getattr(module, "class_report", None):
            metrics["test_per_class"] = module.class_report
    if cfg.export and cfg.train and run.write and not cfg.trainer.fast_dev_run:
        metrics["export"] = str(export_pretrained(module, tokenizer, best, run.path / "export"))
    if module.peft_info is not None:  # method, trainable/total params, checkpoint and export kind
        metrics["peft"] = module.peft_info
    return metrics


def _stop_if_preempted(trainer: Any) -> None:
    """A preemption signal that came after the last training step (e.g. in the final validation): stop
    before testing; last.ckpt is the end of training, so resume= goes straight to the test."""
    from lmlab.callbacks.preemption import Preempted, PreemptionCheckpoint

    for callback in trainer.callbacks:
        if isinstance(callback, PreemptionCheckpoint) and callback.received:
            raise Preempted(callback.received, trainer.global_step, None)


def _print_summary(run_path: Path, metrics: dict[str, Any]) -> None:
    finals = {k: v for split in ("val", "test") for k, v in metrics.get(split, {}).items() if "/class/" not in k}
    log.info("run dir: %s", run_path)
    if finals:
        log.info("final: %s", "  ".join(f"{k}={v:.4f}" for k, v in finals.items()))


def main() -> None:
    run_app("train", train)


if __name__ == "__main__":
    main()
