"""Preemption: on SIGUSR1/SIGTERM, save checkpoints/last.ckpt at the next step boundary and stop cleanly.

A cluster announces preemption or the end of a time slot with a signal (SLURM: ``--signal=USR1@90`` sends
SIGUSR1 90 s before the end; ``scancel``/preemption sends SIGTERM). The handler only sets a flag; the
checkpoint is written after the current optimizer step (``on_train_batch_end``), the same point at which
``ModelCheckpoint(every_n_train_steps)`` saves, so ``lmlab train resume=RUN_DIR`` continues exactly there.
Then ``Preempted`` ends the fit; ``lmlab train`` marks the run ``preempted`` (run.json, metrics.json) and
exits 0. A signal during validation is acted on at the next step boundary, or right after fit.

At an epoch's last step the epoch's validation comes first: Lightning resumes a checkpoint saved on the epoch's
last batch at the next epoch, so stopping there would lose that epoch's validation (its metrics, its chance at
best.ckpt, early stopping's look at it). The checkpoint is saved at the step all the same (should the grace period
end during validation, that one is resumed from), and again at the epoch's end, after validation, and then the
fit stops.

Requeueing is not done here. While training runs, these handlers replace Lightning's (its SIGTERM
notifier and, on SLURM with auto-requeue, its SIGUSR1 save-and-requeue handler), so exactly one thing reacts
to the signal: the job ends once, with a checkpoint, and whatever launched it (sbatch ``--requeue``, a
launcher, a person) decides whether to run ``lmlab train resume=RUN_DIR`` again.
"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from lightning.pytorch.callbacks import Callback, ModelCheckpoint

log = logging.getLogger(__name__)


class Preempted(Exception):
    """Training stopped on a preemption signal after saving ``checkpoint`` (None: nothing new was saved)."""

    def __init__(self, signal_name: str, step: int, checkpoint: str | None):
        self.signal_name, self.step, self.checkpoint = signal_name, step, checkpoint
        saved = f"checkpoint saved to {checkpoint}" if checkpoint else "no new checkpoint (not at a step)"
        super().__init__(f"received {signal_name}: stopped after step {step}, {saved}")


def signal_numbers(names: list[str]) -> list[signal.Signals]:
    """``["SIGUSR1", "TERM"]`` -> signal numbers; an unknown name raises ValueError naming the valid ones."""
    found = []
    for name in names:
        key = name.upper() if name.upper().startswith("SIG") else f"SIG{name.upper()}"
        if not hasattr(signal.Signals, key) or key in ("SIGKILL", "SIGSTOP"):
            raise ValueError(f"callbacks.preemption.signals: {name!r} is not a signal that can be caught "
                             "(e.g. SIGUSR1, SIGUSR2, SIGTERM, SIGINT)")
        found.append(signal.Signals[key])
    return found


class PreemptionCheckpoint(Callback):
    """Sets a flag on each of ``signals``; at the next step boundary saves last.ckpt and raises ``Preempted``."""

    def __init__(self, signals: list[str] | None = None):
        self.signals = signal_numbers(list(signals if signals is not None else ["SIGUSR1", "SIGTERM"]))
        self.received: str | None = None
        self.previous: dict[signal.Signals, Any] = {}
        self.validating_first = False  # saved at an epoch's last step; stop at the epoch's end

    # -- signal handling -----------------------------------------------------------------------------
    def _handle(self, signum: int, frame: FrameType | None) -> None:
        # Only a flag here: a signal can arrive in the middle of a forward pass or a checkpoint write.
        self.received = signal.Signals(signum).name
        log.warning("received %s: will save checkpoints/last.ckpt after the current step and stop",
                    self.received)

    def _install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # Python delivers signals to the main thread only
        for sig in self.signals:
            if sig not in self.previous:
                self.previous[sig] = signal.getsignal(sig)
                signal.signal(sig, self._handle)

    def _restore(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig, handler in self.previous.items():
            if signal.getsignal(sig) == self._handle:  # not already replaced by someone else
                signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self.previous = {}

    # Installed when training starts, over Lightning's own handlers (registered just before), and put back
    # when it ends; Lightning then restores the handlers from before fit.
    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self.received = None
        self.validating_first = False
        self._install()

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self._restore()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self._restore()

    # -- acting at a step boundary -----------------------------------------------------------------------
    def should_stop(self, trainer: Any) -> bool:
        # Every rank must stop at the same step: stop when any rank got the signal.
        return bool(trainer.strategy.reduce_boolean_decision(self.received is not None, all=False))

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if trainer.fit_loop.epoch_loop._should_accumulate() or not self.should_stop(trainer):
            return  # mid-accumulation there is no optimizer step to resume from yet
        if self.validating_first:
            return
        path = last_checkpoint_path(trainer)
        trainer.save_checkpoint(path)
        if validates_after(trainer, batch_idx):
            self.validating_first = True
            log.warning("preempted (%s): saved %s at step %d, the epoch's last; validating the epoch before "
                        "stopping, so that a resumed run does not skip it", self.received, path, trainer.global_step)
            return
        log.warning("preempted (%s): saved %s at step %d", self.received, path, trainer.global_step)
        raise Preempted(self.received or "signal", trainer.global_step, str(path))

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        """After the epoch's validation (and ModelCheckpoint's saves on it): save again, then stop."""
        if not self.validating_first:
            return
        path = last_checkpoint_path(trainer)
        trainer.save_checkpoint(path)
        log.warning("preempted (%s): validated epoch %d, saved %s at its end", self.received,
                    trainer.current_epoch, path)
        raise Preempted(self.received or "signal", trainer.global_step, str(path))


def validates_after(trainer: Any, batch_idx: int) -> bool:
    """Whether ``batch_idx`` is the epoch's last training batch and this epoch ends with a validation."""
    every = trainer.check_val_every_n_epoch
    last = isinstance(trainer.num_training_batches, int) and batch_idx + 1 >= trainer.num_training_batches
    return bool(last and every and trainer.enable_validation and (trainer.current_epoch + 1) % every == 0)


def last_checkpoint_path(trainer: Any) -> Path:
    """checkpoints/last.ckpt of the run (the ModelCheckpoint's dir, else the trainer's root dir)."""
    callback = next((c for c in trainer.callbacks if isinstance(c, ModelCheckpoint) and c.dirpath), None)
    folder = Path(callback.dirpath) if callback else Path(trainer.default_root_dir) / "checkpoints"
    name = callback.CHECKPOINT_NAME_LAST if callback else "last"
    return folder / f"{name}{ModelCheckpoint.FILE_EXTENSION}"
