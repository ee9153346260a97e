"""Cluster submission through submitit: `hydra/launcher=slurm` against a real (one-node) SLURM, and
`hydra/launcher=submitit_local` as the dry run that needs no SLURM.

The SLURM tests need a running cluster: `scripts/slurm-local.sh start` (Debian's slurm-wlm + munge, root);
`.ci/run` starts it. Without `sinfo` on PATH, or with no controller answering, they are skipped.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import cli_env, read_json, run_lmlab, tiny

# A CPU job on the local one-node cluster: no GPUs, one task.
CPU_SLURM = ["hydra/launcher=slurm", "hydra.launcher.gpus_per_node=null", "hydra.launcher.tasks_per_node=1",
             "hydra.launcher.timeout_min=10"]


def _slurm_unavailable() -> str | None:
    if shutil.which("sinfo") is None:
        return "no SLURM client (sinfo) on PATH; start a one-node cluster with `scripts/slurm-local.sh start`"
    proc = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30)
    if proc.returncode != 0 or not proc.stdout.strip():
        return f"sinfo found but no SLURM controller answers ({proc.stderr.strip()[:200]}); run scripts/slurm-local.sh start"
    return None


needs_slurm = pytest.mark.skipif(_slurm_unavailable() is not None, reason=str(_slurm_unavailable()))


def _jobs(workdir: Path) -> tuple[Path, list[Path]]:
    (sweep,) = (workdir / "outputs" / "sequence_classification" / "multiruns").iterdir()
    return sweep, sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))


def test_slurm_launcher_config_sets_one_task_per_gpu_and_follows_trainer_nodes(tmp_path: Path):
    from lmlab.config.compose import compose_config

    cfg = compose_config("train", ["hydra/launcher=slurm", "trainer=ddp", "trainer.num_nodes=2",
                                   "hydra.launcher.gpus_per_node=4", "hydra.launcher.partition=gpu"], hydra=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.lmlab_submitit.launcher.SlurmLauncher"
    assert (launcher.tasks_per_node, launcher.nodes, launcher.partition) == (4, 2, "gpu")
    assert launcher.max_num_timeout >= 1, "a timed-out job is requeued and resumes"


def test_slurm_sweep_with_fewer_tasks_than_devices_fails_before_submitting(workdir: Path):
    proc = run_lmlab("train", "-m", *CPU_SLURM, "trainer=ddp_sim", "seed=0,1", *tiny(), cwd=workdir,
                     check=False, timeout=120)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "hydra.launcher.tasks_per_node=1 but trainer.devices=2" in out
    assert "Fix: hydra.launcher.tasks_per_node=2" in out
    assert not list(workdir.rglob(".submitit")), "nothing was submitted"


@pytest.mark.slow
def test_submitit_local_dry_run_runs_a_two_job_sweep(workdir: Path):
    run_lmlab("train", "-m", "hydra/launcher=submitit_local", "seed=0,1", *tiny(), cwd=workdir)
    sweep, jobs = _jobs(workdir)
    assert [j.name for j in jobs] == ["0", "1"]
    for job in jobs:
        metrics = read_json(job / "metrics.json")
        assert metrics["status"] == "completed" and metrics["global_step"] == 8 and "val/acc" in metrics["val"]
    assert len(list((sweep / ".submitit").glob("*/*_result.pkl"))) == 2, "each job ran through submitit"


@needs_slurm
@pytest.mark.slow
def test_slurm_sweep_runs_both_jobs_on_the_cluster(workdir: Path):
    run_lmlab("train", "-m", *CPU_SLURM, "seed=0,1", *tiny(), cwd=workdir)
    sweep, jobs = _jobs(workdir)
    assert [j.name for j in jobs] == ["0", "1"]
    for seed, job in enumerate(jobs):
        metrics, meta = read_json(job / "metrics.json"), read_json(job / "run.json")
        assert metrics["status"] == meta["status"] == "completed" and meta["seed"] == seed
        assert metrics["global_step"] == 8 and 0.0 <= metrics["test"]["test/acc"] <= 1.0
    (script,) = (sweep / ".submitit").glob("*/*_submission.sh")
    assert "#SBATCH --array=0-1" in script.read_text(), "one sbatch array, one task per job"
    assert len(list((sweep / ".submitit").glob("*_*/*_result.pkl"))) == 2


@needs_slurm
@pytest.mark.slow
def test_slurm_ddp_job_runs_one_task_per_device_and_rank_zero_writes(workdir: Path):
    """trainer=ddp_sim with tasks_per_node=2: SLURM starts both ranks, Lightning's SLURMEnvironment joins them."""
    slurm_ddp = [o.replace("tasks_per_node=1", "tasks_per_node=2") for o in CPU_SLURM] + ["trainer=ddp_sim"]
    run_lmlab("train", "-m", *slurm_ddp, "seed=0", *tiny("logger=[csv,wandb]"), cwd=workdir)
    _, (job,) = _jobs(workdir)
    meta, metrics = read_json(job / "run.json"), read_json(job / "metrics.json")
    assert metrics["status"] == "completed" and meta["world_size"] == 2
    # 128 samples / (batch 16 x 2 ranks) = 4 steps; 64 test rows counted once over both ranks.
    assert metrics["global_step"] == 4
    assert sum(row["support"] for row in metrics["test_per_class"].values()) == 64
    assert len(list((job / "wandb").glob("offline-run-*"))) == 1, "one W&B run, rank 0's"
    log = (job / "train.log").read_text()
    assert "GLOBAL_RANK: 0, MEMBER: 1/2" in log and "GLOBAL_RANK: 1" not in log, "rank 1 keeps out of train.log"


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not predicate():
        if time.time() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.5)


@needs_slurm
@pytest.mark.slow
def test_requeued_slurm_job_resumes_from_its_checkpoint_not_from_step_zero(workdir: Path):
    epochs = 12
    args = [*CPU_SLURM, "seed=0", *tiny(f"trainer.max_epochs={epochs}", "~callbacks.early_stopping")]
    proc = subprocess.Popen([sys.executable, "-m", "lmlab", "train", "-m", *args], cwd=workdir, env=cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        base = workdir / "outputs" / "sequence_classification" / "multiruns"
        last = lambda: list(base.glob("*/0/checkpoints/last.ckpt"))  # noqa: E731
        _wait_for(lambda: bool(last()), 240, "the first last.ckpt")
        (submitted,) = base.glob("*/.submitit/*/*_submitted.pkl")
        job_id = submitted.parent.name  # the SLURM job id (<array id>_<index> in a sweep of several jobs)
        assert not (last()[0].parents[1] / "metrics.json").exists(), "still training when requeued"
        subprocess.run(["scontrol", "requeue", job_id], check=True, timeout=30)
        # SLURM holds a requeued job back for ~2 min (BeginTime); a test cluster need not wait.
        _wait_for(lambda: "PENDING" in subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"],
                                                      capture_output=True, text=True).stdout, 60, "requeue")
        subprocess.run(["scontrol", "update", f"jobid={job_id}", "starttime=now"], check=True, timeout=30)
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-4000:]
    sweep, (job,) = _jobs(workdir)
    meta, metrics = read_json(job / "run.json"), read_json(job / "metrics.json")
    assert metrics["status"] == meta["status"] == "completed"
    assert len(meta["starts"]) == 2 and meta["resumed"], "the job started twice, the second time resuming"
    assert meta["resumed_from"] == str(job / "checkpoints" / "last.ckpt")
    assert metrics["global_step"] == epochs * 8 and metrics["epoch"] == epochs
    assert "Restoring states from the checkpoint path at" in (job / "train.log").read_text()
    # Resumed, not retrained: epoch 0 was validated once (a restart from step 0 would log it twice), and the
    # CSV log (appended to on resume) has a validation row for every epoch.
    rows = [dict(zip(header, r.split(","), strict=False))
            for rows in [(job / "logs" / "metrics.csv").read_text().splitlines()]
            for header in [rows[0].split(",")] for r in rows[1:]]
    val_epochs = [int(r["epoch"]) for r in rows if r.get("val/acc")]
    assert val_epochs.count(0) == 1 and set(range(epochs)) <= set(val_epochs), val_epochs
