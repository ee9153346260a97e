"""TaskModule: what every task's LightningModule shares (optimizer, scheduler, train mode, checkpoint
metadata). A task adds its model head, steps and metrics; nothing else is inherited."""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from lmlab.techniques.freezing import finetuning_callback
from lmlab.techniques.param_groups import finetune_groups

log = logging.getLogger(__name__)

CHECKPOINT_KEY = "lmlab"


def parameter_groups(model: torch.nn.Module, weight_decay: float, no_decay: list[str]) -> list[dict[str, Any]]:
    """Two groups: decayed weights, and biases/norm weights (names matching ``no_decay``) without decay."""
    decay, plain = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (plain if any(p in name for p in no_decay) else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: DictConfig, total_steps: int) -> Any:
    """transformers' warmup schedules; total steps come from the trainer, warmup from the config."""
    from transformers import get_scheduler

    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else int(cfg.warmup_ratio * total_steps)
    name = {"constant": "constant_with_warmup"}.get(cfg.name, cfg.name)
    return get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)


def use_fused_kernel(requested: bool | None, params: list[torch.Tensor], grad_scaler: bool = False) -> bool | None:
    """``optimizer.fused``: null (auto) takes torch's fused kernel when every parameter is a plain tensor on a
    device torch has one for (CPU since torch 2.4, CUDA, ...): on CPU it is several times faster than the default
    per-parameter loop and equal to it within float rounding. Not under a GradScaler (``16-mixed``): a fused
    optimizer unscales inside its step, so Lightning cannot clip (or the NaN guard check) unscaled gradients.
    false keeps torch's default; true is passed on (torch and Lightning name what they cannot do with it)."""
    if requested is not None:
        return bool(requested) or None
    if grad_scaler:
        return None
    from torch.optim.optimizer import _get_fused_kernels_supported_devices

    supported = set(_get_fused_kernels_supported_devices())
    plain = all(type(p) in (torch.Tensor, torch.nn.Parameter) and p.is_floating_point() for p in params)
    return (plain and bool(params) and all(p.device.type in supported for p in params)) or None


class TaskModule(L.LightningModule):
    """Shared base of every task module. ``config`` is the plain resolved run config, stored in checkpoints."""

    def __init__(self, model: torch.nn.Module, config: dict[str, Any], label_names: list[str] | None = None):
        super().__init__()
        self.model = model
        self.config = config
        self.label_names = label_names
        self.run_info: dict[str, Any] = {}  # e.g. W&B run id, written into every checkpoint
        self.peft_info: dict[str, Any] | None = None  # set by builders when peft wraps the model
        self.param_counts: dict[str, int] = {}  # trainable/total, set when fitting starts (techniques.freezing)
        # from_pretrained returns the model in eval mode and Lightning keeps the mode it finds: without
        # this, dropout silently stays off during fine-tuning. (Validation switches to eval and back.)
        if config["model"].get("train_mode", True):
            self.model.train()

    def compiled_modules(self) -> list[torch.nn.Module]:
        """The modules a step calls, which model.compile compiles (the task's own loss code stays eager)."""
        return [self.model]

    # -- optimization ------------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        opt_cfg = OmegaConf.create(self.config["optimizer"])
        no_decay = list(opt_cfg.pop("no_weight_decay", []))
        weight_decay = float(opt_cfg.weight_decay)
        # .get: checkpoints written before the finetune group existed do not have it.
        groups = (finetune_groups(self, float(opt_cfg.lr), weight_decay, no_decay, self.config.get("finetune"))
                  or parameter_groups(self, weight_decay, no_decay))
        if "fused" in opt_cfg:
            scaler = getattr(getattr(self._trainer, "precision_plugin", None), "scaler", None) is not None
            opt_cfg.fused = use_fused_kernel(opt_cfg.fused, [p for g in groups for p in g["params"]], scaler)
        optimizer = instantiate(opt_cfg)(groups)
        total = int(self.trainer.estimated_stepping_batches)
        scheduler = build_scheduler(optimizer, OmegaConf.create(self.config["scheduler"]), total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """Free the previous step's gradients before this step's forward, not after it. Lightning's automatic
        optimization calls zero_grad between training_step and backward, so every parameter's gradient (for
        MiniLM 91 MB in fp32) stays allocated through the forward, when activations make memory peak (nanoGPT
        zeroes early for this, karpathy/nanoGPT#71). Same condition as Lightning's own call (the first batch of an
        accumulation window), so gradients still accumulate; Lightning's later call then finds nothing to clear.
        Gradients stay readable until here (on_train_batch_end of the previous step included)."""
        if self.automatic_optimization and batch_idx % self.trainer.accumulate_grad_batches == 0:
            for optimizer in self.trainer.optimizers:
                optimizer.zero_grad(set_to_none=True)

    def configure_gradient_clipping(self, optimizer: Any, gradient_clip_val: float | None = None,
                                    gradient_clip_algorithm: str | None = None) -> None:
        """Lightning's norm clipping, with the total norm the NaN guard computed over the same gradients this step
        (callbacks.non_finite): one pass over the gradients instead of two. Any other case is Lightning's own."""
        norm = self.__dict__.pop("guard_grad_norm", None)
        reusable = (norm is not None and gradient_clip_val and (gradient_clip_algorithm or "norm") == "norm"
                    and type(self.trainer.strategy).__name__ in ("SingleDeviceStrategy", "DDPStrategy"))
        if not reusable:
            if gradient_clip_val and self._clips_scaler_free_autocast(optimizer, gradient_clip_val,
                                                                      gradient_clip_algorithm):
                return
            super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
            return
        params = [p for group in optimizer.param_groups for p in group["params"]]
        torch.nn.utils.clip_grads_with_norm_(params, gradient_clip_val, norm)

    def _clips_scaler_free_autocast(self, optimizer: Any, clip_val: float, algorithm: str | None) -> bool:
        """Under bf16-mixed, clip as Lightning does in fp32 and return True. Lightning's mixed-precision plugin
        refuses to clip for a fused optimizer (which unscales fp16 gradients inside its step), also for bf16, which
        has no GradScaler and nothing to unscale (Lightning-AI/pytorch-lightning#21435): bf16-mixed with the fused
        AdamW and clipping, lmlab's defaults, would stop at the first step when the NaN guard is off."""
        from lightning.pytorch.plugins.precision import MixedPrecision, Precision
        from lightning.pytorch.utilities import GradClipAlgorithmType

        plugin = self.trainer.precision_plugin
        if not isinstance(plugin, MixedPrecision) or plugin.scaler is not None:
            return False
        Precision.clip_gradients(plugin, optimizer, clip_val, GradClipAlgorithmType(algorithm or "norm"))
        return True

    def configure_callbacks(self) -> list[Any]:
        """finetune.freeze / unfreeze, and the trainable-parameter count of every run."""
        return [finetuning_callback(self.config.get("finetune"))]

    # -- checkpoint metadata ------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_KEY] = {"config": self.config, "label_names": self.label_names,
                                      "task": self.config["task"]["name"], **self.run_info}
        if self.peft_info is not None:
            checkpoint[CHECKPOINT_KEY]["peft"] = self.peft_info
            if self.peft_info["checkpoint"] == "trainable":  # the base is reloaded from model.name_or_path
                from lmlab.techniques.peft_support import keep_trainable

                keep_trainable(self, checkpoint)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Lightning loads a trainable-only peft checkpoint non-strictly (resume, test of best): check it fits.
        if self.peft_info is not None and self.peft_info["checkpoint"] == "trainable":
            from lmlab.techniques.peft_support import check_trainable

            check_trainable(self, checkpoint["state_dict"])

    # -- prediction output --------------------------------------------------------------------------
    # Set by `lmlab predict` (its recheck_margin) when it predicts under autocast; None: no re-check.
    recheck_margin: float | None = None
    rechecked_rows = 0
    rechecks_ties = False  # True where predict_step passes its logits through recheck_near_ties

    def recheck_near_ties(self, batch: dict[str, torch.Tensor], logits: torch.Tensor,
                          positions: torch.Tensor | None = None) -> torch.Tensor:
        """``logits`` as float32, with every row whose top two logits are closer than ``recheck_margin`` (at any
        of ``positions``, a (batch, seq) mask; default every position) run again without autocast.

        bf16 moves logits by ~1e-2 at most (MiniLM, measured), so only a near tie can change the argmax; the
        labels then equal an fp32 run's, at the cost of the few rows rerun."""
        logits = logits.float()
        device = logits.device.type
        if not self.recheck_margin or logits.shape[-1] < 2 or not torch.is_autocast_enabled(device):
            return logits
        top2 = logits.topk(2, dim=-1).values
        gap = top2[..., 0] - top2[..., 1]  # (batch,) or (batch, seq)
        if positions is not None:
            gap = gap.masked_fill(~positions, float("inf"))
        rows = gap.reshape(len(gap), -1).amin(dim=1) < self.recheck_margin
        if rows.any():
            with torch.autocast(device, enabled=False):
                logits[rows] = self({k: v[rows] for k, v in batch.items()}).logits.float()
            self.rechecked_rows += int(rows.sum())
        return logits

    def prediction_records(self, outputs: list[Any], order: list[int], raw: Any, data_cfg: DictConfig) -> list[dict]:
        """One JSON-able record per input row, in input order, from ``predict_step`` outputs.

        ``outputs``: what predict_step returned per batch, in loader order; ``order[i]`` is the input row of
        the i-th example the loader yielded; ``raw``: the input file as a datasets.Dataset.
        """
        raise NotImplementedError(f"task {self.config['task']['name']} does not support `lmlab predict`")

    def log_metrics(self, metrics: dict[str, torch.Tensor], **kwargs: Any) -> None:
        self.log_dict(metrics, sync_dist=True, **kwargs)

    # -- per-step training values -------------------------------------------------------------------
    def is_logging_step(self) -> bool:
        """Whether Lightning's loggers write this training step: every ``trainer.log_every_n_steps`` optimizer
        steps, an epoch's last batch (so the run's final ``train/*`` values are the last step's) and
        ``fast_dev_run``. Outside a Trainer: always."""
        trainer = self._trainer
        if trainer is None:
            return True
        # The check Lightning's own LearningRateMonitor and ThroughputMonitor make before logging.
        return bool(trainer._logger_connector.should_update_logs or trainer.is_last_batch or trainer.fast_dev_run)

    def log_train_step(self, values: dict[str, torch.Tensor | float], **kwargs: Any) -> None:
        """``self.log`` of per-step training values (loss, ...) on logging steps only (``is_logging_step``).

        Lightning's ``self.log`` costs ~1 ms per call on CPU (measured: MLM on a 2-layer BERT, 2.4 -> 1.3 ms of
        framework time per ~90 ms step without it), and values logged between two logger writes are never
        written. The progress bar and ``callback_metrics`` keep the last logged value in between."""
        if self.is_logging_step():
            for name, value in values.items():
                self.log(name, value, **kwargs)

    def log_and_reset(self, name: str, metric: Any, **kwargs: Any) -> None:
        """Log a torchmetrics metric's value over the epoch (synced across ranks by ``compute``) and reset it.

        For metrics updated with ``metric.update`` every step: ``self.log(name, metric)`` in a step would run the
        metric's forward (a per-batch value too) and Lightning's logging each step (~1 ms each on CPU)."""
        if metric.update_count:
            self.log(name, metric.compute(), **kwargs)
            metric.reset()
