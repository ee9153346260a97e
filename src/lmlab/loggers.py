"""Experiment loggers: building them from config, W&B's offline fallback, and closing them exactly once."""

from __future__ import annotations

import logging
import netrc
import os
from typing import Any

log = logging.getLogger(__name__)


def has_wandb_credentials() -> bool:
    """An API key in the environment or in ~/.netrc (where `wandb login` puts it)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def wandb_logger(mode: str = "auto", project: str = "lmlab", entity: str | None = None, name: str | None = None,
                 group: str | None = None, tags: list[str] | None = None, save_dir: str = ".",
                 log_model: bool = False, id: str | None = None) -> Any:
    """A Lightning WandbLogger; mode=auto is online with credentials and offline without them."""
    from lightning.pytorch.loggers import WandbLogger

    if mode == "auto":
        mode = "online" if has_wandb_credentials() else "offline"
        if mode == "offline":
            log.info("W&B: no API key found, logging offline to %s/wandb (sync later: `wandb sync DIR`)", save_dir)
    # W&B's console capture duplicates every line of our log; the run's own log file is in the run dir.
    os.environ.setdefault("WANDB_CONSOLE", "off")
    return WandbLogger(project=project, entity=entity, name=name, group=group, tags=list(tags or []),
                       save_dir=save_dir, log_model=log_model, mode=mode, id=id, resume="allow" if id else None)


def is_wandb(logger: Any) -> bool:
    return type(logger).__name__ == "WandbLogger"


def start_wandb(logger: Any) -> None:
    """Create the W&B run now; if online fails (network, bad key), continue offline and say so."""
    try:
        _ = logger.experiment
    except Exception as e:  # wandb raises many types for network/auth failures
        log.warning("W&B online logging failed (%s: %s); continuing with W&B offline.", type(e).__name__, e)
        os.environ["WANDB_MODE"] = "offline"
        logger._wandb_init["mode"] = "offline"
        logger._experiment = None
        _ = logger.experiment


def finish_loggers(loggers: list[Any], failed: bool) -> None:
    """Flush every logger; finish the W&B run (marked failed on error) so the next job gets its own."""
    for logger in loggers:
        try:
            logger.finalize("failed" if failed else "success")
            if is_wandb(logger) and logger._experiment is not None:
                logger._experiment.finish(exit_code=1 if failed else 0)
        except Exception as e:  # never let logging teardown hide the run's own result
            log.warning("Closing logger %s failed: %s", type(logger).__name__, e)


def _csv_logger_classes() -> tuple[type, type]:
    import csv

    from lightning.pytorch.loggers import CSVLogger
    from lightning.pytorch.loggers.csv_logs import ExperimentWriter
    from lightning.pytorch.loggers.logger import rank_zero_experiment

    class AppendingWriter(ExperimentWriter):
        """Keeps an existing metrics.csv (Lightning's writer deletes it) and appends to it."""

        def _check_log_dir_exists(self) -> None:
            if os.path.isfile(self.metrics_file_path):
                with open(self.metrics_file_path, newline="") as f:
                    self.metrics_keys = sorted(next(csv.reader(f), []))

    class ResumableCSVLogger(CSVLogger):
        """CSVLogger whose resumed runs append to RUN_DIR/logs/metrics.csv instead of erasing it."""

        @property
        @rank_zero_experiment
        def experiment(self) -> Any:
            if self._experiment is None:
                self._fs.makedirs(self.root_dir, exist_ok=True)
                self._experiment = AppendingWriter(log_dir=self.log_dir)
            return self._experiment

    return AppendingWriter, ResumableCSVLogger


def csv_logger(**kwargs: Any) -> Any:
    """Config target for logger=csv (see ResumableCSVLogger)."""
    return _csv_logger_classes()[1](**kwargs)
