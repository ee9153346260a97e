"""Lightning callback of an Optuna search: report the monitored metric to the job's trial after every
validation during fit, and stop the job when the study's pruner says so.

Optuna's own PyTorchLightningPruningCallback lives in optuna-integration (not a dependency); this is the same
few lines, plus finding the trial through the Hydra job (lmlab.sweep.optuna_sweeper.current_trial).
"""

from __future__ import annotations

import logging
import math
from typing import Any

from lightning.pytorch.callbacks import Callback

log = logging.getLogger("lmlab.optuna")


class OptunaPruning(Callback):
    """Does nothing outside an lmlab Optuna sweep (e.g. a single run that kept the hparams_search option)."""

    def __init__(self, monitor: str) -> None:
        self.monitor = monitor
        self.trial: Any = None

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        from lmlab.sweep.optuna_sweeper import current_trial

        if stage == "fit" and trainer.is_global_zero:
            self.trial = current_trial()
            if self.trial is None:
                log.info("optuna pruning: not a trial of an lmlab Optuna sweep (run with -m); nothing to report")

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        from lightning.pytorch.trainer.states import TrainerFn

        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return  # the re-validation of the best checkpoint after fit is not a new step
        prune, step = False, trainer.global_step
        value = trainer.callback_metrics.get(self.monitor)
        if self.trial is not None and value is not None and math.isfinite(float(value)):
            # A NaN is not reported: the pruner would prune it, and it should end as a failed trial instead.
            self.trial.report(float(value), step)
            prune = self.trial.should_prune()
        if trainer.world_size > 1:
            prune = trainer.strategy.broadcast(prune)
        if prune:
            import optuna

            if self.trial is not None:
                # The sweeper reads this mark to tell PRUNED rather than FAIL (the job reports an exception).
                self.trial.set_user_attr("pruned_at_step", step)
            raise optuna.TrialPruned(f"trial pruned at step {step}: {self.monitor}={float(value):.6g}")
