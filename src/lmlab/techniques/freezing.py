"""Freezing and gradual unfreezing (`finetune.freeze`, `finetune.unfreeze`).

Frozen parameters get ``requires_grad=False``. With gradual unfreezing the optimizer holds every parameter
from the start (param_groups.py) and a parameter trains from the epoch its ``requires_grad`` turns on: torch
optimizers skip a parameter whose ``.grad`` is None, so a frozen one is left bitwise unchanged (weight decay
included). The state is recomputed from the epoch number at every epoch start, so a resumed run lands in
the same state.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from lmlab.errors import ConfigError
from lmlab.techniques.patterns import ALL_BUT_HEAD, expand, matches

log = logging.getLogger(__name__)


def body_names(model: torch.nn.Module) -> set[str]:
    """Names (in ``model``) of the parameters of the transformer body, ``model.base_model``: for any
    AutoModelFor* the rest is the task head. (A model whose base_model is itself has no separate head.)"""
    body = {id(p) for p in model.base_model.parameters()}
    return {name for name, p in model.named_parameters() if id(p) in body}


def name_prefixes(names: list[str], limit: int = 10) -> list[str]:
    """A few real name prefixes, for error messages: up to the first layer number, else the module path."""
    out: list[str] = []
    for name in names:
        parts = name.split(".")
        digit = next((i for i, p in enumerate(parts) if p.isdigit()), None)
        prefix = ".".join(parts[:digit + 1] if digit is not None else parts[:-1] or parts)
        if prefix not in out:
            out.append(prefix)
    return out[:limit] + (["..."] if len(out) > limit else [])


def select(model: torch.nn.Module, pattern: str, key: str) -> set[str]:
    """Parameter names of ``model`` matched by one pattern; a pattern matching nothing is a ConfigError."""
    names = [name for name, _ in model.named_parameters()]
    if pattern == ALL_BUT_HEAD:
        found = body_names(model)
    else:
        prefixes = expand(pattern)
        found = {n for n in names if any(matches(n, p) for p in prefixes)}
    if not found:
        raise ConfigError([f"{key}: pattern {pattern!r} matches no parameter of the model. Parameter names "
                           f"start like: {', '.join(name_prefixes(names))}. Fix: use one of these prefixes "
                           f"(a range such as `encoder.layer.0-3` is allowed), or `{ALL_BUT_HEAD}`."])
    return found


class Finetuning(Callback):
    """Applies `finetune.freeze` when fitting starts and unfreezes `finetune.unfreeze[i]` (0-based i) from
    epoch (i + 1) * ``every``; logs trainable vs total parameters (log, loggers' hyperparameters,
    ``module.param_counts``)."""

    def __init__(self, freeze: list[str], unfreeze: list[str], every: int = 1):
        self.freeze = list(freeze)
        self.schedule = [(pattern, (i + 1) * every) for i, pattern in enumerate(unfreeze)]
        self.trainable: set[str] | None = None  # trainable before we froze anything (peft may freeze too)
        self.frozen: set[str] = set()
        self.unfreeze: list[tuple[int, set[str]]] = []  # (epoch, names unfrozen from then on)

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        model = pl_module.model
        if self.trainable is None:  # once: a second setup must not see our own freezing as the start state
            self.trainable = {n for n, p in model.named_parameters() if p.requires_grad}
            self.frozen = set().union(*(select(model, p, "finetune.freeze") for p in self.freeze))
            self.unfreeze = [(epoch, self._unfrozen_by(model, p)) for p, epoch in self.schedule]
        self.apply(model, epoch=0)
        if not any(p.requires_grad for p in pl_module.parameters()):
            raise ConfigError([f"finetune.freeze={self.freeze} freezes every trainable parameter: nothing would "
                               "train. Fix: freeze fewer parameters."])
        pl_module.param_counts = count_parameters(pl_module)
        log.info("trainable parameters: %(trainable)d of %(total)d", pl_module.param_counts)
        for logger in trainer.loggers:
            logger.log_hyperparams({f"params/{k}": v for k, v in pl_module.param_counts.items()})

    def _unfrozen_by(self, model: torch.nn.Module, pattern: str) -> set[str]:
        found = select(model, pattern, "finetune.unfreeze")
        if not found & self.frozen:
            raise ConfigError([f"finetune.unfreeze: {pattern!r} matches no parameter frozen by "
                               f"finetune.freeze={self.freeze}. Fix: freeze it first, or drop it."])
        return found

    def frozen_at(self, epoch: int) -> set[str]:
        """Names frozen during ``epoch`` (0-based)."""
        thawed = [names for start, names in self.unfreeze if start <= epoch]
        return self.frozen - set().union(*thawed)

    def apply(self, model: torch.nn.Module, epoch: int) -> list[str]:
        """Set requires_grad for ``epoch``; returns the names whose state changed."""
        frozen = self.frozen_at(epoch)
        changed = []
        for name, param in model.named_parameters():
            want = name in (self.trainable or ()) and name not in frozen
            if param.requires_grad != want:
                param.requires_grad_(want)
                changed.append(name)
        return changed

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        changed = self.apply(pl_module.model, trainer.current_epoch)
        if changed:
            counts = count_parameters(pl_module)
            log.info("epoch %d: unfroze %d tensors (%s); trainable parameters: %d of %d", trainer.current_epoch,
                     len(changed), ", ".join(name_prefixes(changed, limit=4)), counts["trainable"], counts["total"])


def count_parameters(module: torch.nn.Module) -> dict[str, int]:
    """{"trainable": n, "total": n} over ``module``'s (deduplicated, tied-once) parameters."""
    params = list(module.parameters())
    return {"trainable": sum(p.numel() for p in params if p.requires_grad), "total": sum(p.numel() for p in params)}


def finetuning_callback(finetune: dict[str, Any] | None) -> Finetuning:
    """The callback for a run's plain `finetune` config (None: a checkpoint from before the group existed)."""
    finetune = finetune or {}
    return Finetuning(finetune.get("freeze") or [], finetune.get("unfreeze") or [],
                      int(finetune.get("unfreeze_every_n_epochs") or 1))
