"""submitit's Hydra launchers plus a check of every job's tasks/devices before anything is submitted."""

import logging
import time
from collections.abc import Sequence
from typing import Any

from hydra_plugins.hydra_submitit_launcher import submitit_launcher

from lmlab.cluster import check_local_tasks, check_slurm_tasks

log = logging.getLogger("lmlab.cluster")


def _check_jobs(launcher: Any, job_overrides: Sequence[Sequence[str]], check: Any) -> None:
    """Compose each job's config (cheap, no torch) and raise one ConfigError listing every problem."""
    from lmlab.errors import ConfigError

    problems: list[str] = []
    for overrides in job_overrides:
        cfg = launcher.hydra_context.config_loader.load_sweep_config(launcher.config, list(overrides))
        where = f" (job: {' '.join(overrides)})" if overrides else ""
        problems += [p for p in check(cfg.hydra.launcher, cfg, where) if p not in problems]
    if problems:
        raise ConfigError(problems)


class SlurmLauncher(submitit_launcher.SlurmLauncher):
    """One sbatch array task per job; Lightning DDP gets one SLURM task per device."""

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Any:
        _check_jobs(self, job_overrides, check_slurm_tasks)
        started = time.time()
        returns = super().launch(job_overrides, initial_job_idx)
        log.info("%d SLURM jobs finished in %.0f s", len(returns), time.time() - started)
        return returns


class LocalLauncher(submitit_launcher.LocalLauncher):
    """The same jobs as local processes (a dry run of hydra/launcher=slurm without SLURM)."""

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Any:
        _check_jobs(self, job_overrides, check_local_tasks)
        return super().launch(job_overrides, initial_job_idx)
