"""Jobs that other processes start or restart: DDP workers inside a multirun sweep, and SLURM/submitit jobs.

- Lightning starts DDP ranks >= 1 by re-running the command line. Inside `lmlab train -m ...` that command
  line is the whole sweep, so every worker would start the sweep again. During a multirun job lmlab hands
  Lightning a command that runs exactly this job, with its overrides, in its run dir (`ddp_child_command`).
- A job that SLURM restarts (requeue after preemption or a timeout) runs again with the same overrides in the
  same run dir; it continues from that dir's last checkpoint (`continue_requeued_run`).
- `hydra/launcher=slurm|submitit_local` (hydra_plugins/lmlab_submitit) are submitit's Hydra launchers plus
  a check, on the submitting machine, that each job's tasks per node match what Lightning DDP expects.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger("lmlab.cluster")

# Set by Lightning's process launcher in the parent (rank 0) for the workers; a sweep's next job must not
# inherit them, or Lightning would think it is a worker started from outside and wait for ranks that never come.
DDP_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")
# Hydra flags that choose the config tree; a DDP worker needs them to compose the same config.
CONFIG_FLAGS = ("--config-dir", "-cd", "--config-name", "-cn", "--config-path", "-cp")


def register_launcher_schemas() -> None:
    """Register submitit's launcher schemas under lmlab's own names: conf/hydra/launcher/submitit_local.yaml
    shadows the plugin's `submitit_local` entry, so a defaults entry of that name would include the file itself."""
    from hydra.core.config_store import ConfigStore
    from hydra_plugins.hydra_submitit_launcher.config import LocalQueueConf, SlurmQueueConf
    from omegaconf import OmegaConf

    store = ConfigStore.instance()
    for name, schema in (("submitit_local_schema", LocalQueueConf), ("submitit_slurm_schema", SlurmQueueConf)):
        # As plain keys and defaults: Hydra's plugin scan loads its own copy of these classes, and OmegaConf
        # refuses to merge two copies of a dataclass ("LocalQueueConf is not a subclass of LocalQueueConf").
        store.store(group="hydra/launcher", name=name, provider="lmlab",
                    node=OmegaConf.to_container(OmegaConf.structured(schema)))


def _config_flags(argv: Sequence[str]) -> list[str]:
    flags: list[str] = []
    for i, arg in enumerate(argv):
        name = arg.split("=", 1)[0]
        if name in CONFIG_FLAGS:
            flags.extend([arg] if "=" in arg else list(argv[i : i + 2]))
    return flags


def ddp_child_command(module: str, overrides: Sequence[str], output_dir: str, local_rank: int,
                      argv: Sequence[str]) -> list[str]:
    """The command for DDP rank ``local_rank`` of one multirun job: this job alone, in its own run dir."""
    return [sys.executable, "-m", module, *_config_flags(argv), *overrides, f'hydra.run.dir="{output_dir}"',
            f"hydra.job.name=train_ddp_process_{local_rank}", "hydra.output_subdir=null"]


@contextlib.contextmanager
def multirun_job(module: str) -> Iterator[None]:
    """Run one multirun job so that Lightning's DDP workers run this job (not the sweep) and the next job
    starts from a clean distributed state."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import get_original_cwd
    from lightning.pytorch.strategies.launchers import subprocess_script

    hydra_cfg = HydraConfig.get()
    overrides = list(hydra_cfg.overrides.task)
    output_dir = hydra_cfg.runtime.output_dir
    argv = list(sys.argv[1:])

    def command(local_rank: int) -> tuple[list[str], str]:
        return ddp_child_command(module, overrides, output_dir, local_rank, argv), get_original_cwd()

    saved_env = {k: os.environ.get(k) for k in DDP_ENV}
    original = subprocess_script._hydra_subprocess_cmd
    # Lightning's own version re-runs sys.argv (the sweep) with hydra.run.dir=<run.dir> (not this job's dir).
    subprocess_script._hydra_subprocess_cmd = command
    try:
        yield
    finally:
        subprocess_script._hydra_subprocess_cmd = original
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()  # the next job's workers form a new group on a new port


def restart_count() -> int:
    """How many times the scheduler restarted this job (SLURM sets SLURM_RESTART_COUNT on a requeued job)."""
    try:
        return int(os.environ.get("SLURM_RESTART_COUNT", "0"))
    except ValueError:
        return 0


def continue_requeued_run(cfg: Any) -> None:
    """A requeued job continues in its own run dir: from checkpoints/last.ckpt when there is one; otherwise the
    earlier attempt's run.json/metrics.json are kept aside as *.attempt-N.json and the job starts over."""
    from omegaconf import open_dict

    from lmlab.run_dir import is_rank_zero

    restarts = restart_count()
    if restarts < 1 or cfg.get("resume") is not None or "paths" not in cfg:
        return
    run_dir = Path(str(cfg.paths.output_dir))
    if (run_dir / "checkpoints" / "last.ckpt").is_file():
        log.info("restart %d of this job: continuing from %s", restarts, run_dir / "checkpoints" / "last.ckpt")
        with open_dict(cfg):
            cfg.resume = str(run_dir)
        return
    if is_rank_zero():
        for name in ("run.json", "metrics.json"):
            if (run_dir / name).is_file():
                (run_dir / name).rename(run_dir / f"{Path(name).stem}.attempt-{restarts}.json")
    log.info("restart %d of this job: no checkpoint yet, starting over in %s", restarts, run_dir)


def hand_back_if_preempted(result: Any) -> Any:
    """A submitit job on SLURM that stopped on a preemption signal exits without a result: SLURM requeues it
    (scontrol requeue, PreemptMode=REQUEUE) and the restarted job's result is the one the sweep collects.
    Returning would make submitit record this attempt as the job's final result."""
    preempted = isinstance(result, dict) and result.get("status") == "preempted"
    if preempted and os.environ.get("SUBMITIT_EXECUTOR") == "slurm":
        log.warning("preempted: leaving the job to SLURM's requeue; it resumes from %s", result.get("checkpoint"))
        raise SystemExit(0)
    return result


def quiet_other_ranks() -> None:
    """SLURM starts one task per DDP rank and each runs the whole Hydra job: only rank 0 keeps the job log."""
    from lmlab.run_dir import is_rank_zero

    if is_rank_zero():
        return
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.FileHandler):
            root.removeHandler(handler)
            handler.close()


def check_slurm_tasks(launcher: Any, cfg: Any, where: str) -> list[str]:
    """Lightning DDP on SLURM: SLURM starts the processes, one task per device, so tasks_per_node must equal
    trainer.devices and nodes trainer.num_nodes."""
    problems: list[str] = []
    devices, nodes = cfg.trainer.get("devices"), cfg.trainer.get("num_nodes", 1)
    tasks = launcher.get("tasks_per_node", 1)
    if isinstance(devices, int) and devices != tasks:
        problems.append(f"hydra.launcher.tasks_per_node={tasks} but trainer.devices={devices}{where}: Lightning "
                        f"DDP needs one SLURM task per device. Fix: hydra.launcher.tasks_per_node={devices}.")
    if isinstance(nodes, int) and nodes != launcher.get("nodes", 1):
        problems.append(f"hydra.launcher.nodes={launcher.get('nodes', 1)} but trainer.num_nodes={nodes}{where}. "
                        f"Fix: hydra.launcher.nodes={nodes} (or trainer.num_nodes={launcher.get('nodes', 1)}).")
    return problems


def check_local_tasks(launcher: Any, cfg: Any, where: str) -> list[str]:
    """submitit's local executor is not a cluster Lightning recognises: Lightning starts the DDP workers
    itself, so each job must be one task (more would train the same job several times over)."""
    tasks = launcher.get("tasks_per_node", 1)
    if tasks != 1:
        return [f"hydra.launcher.tasks_per_node={tasks}{where}: with hydra/launcher=submitit_local each job is "
                "one process and Lightning starts trainer.devices workers itself. Fix: hydra.launcher.tasks_per_node=1."]
    return []
