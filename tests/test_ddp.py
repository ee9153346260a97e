"""DDP under Hydra: `trainer=ddp_sim` (2 CPU processes over gloo) in a single run and inside a multirun sweep.

Lightning starts rank 1 by re-running the command line; under `-m` that is the whole sweep, so lmlab gives
it the job's own command instead (lmlab.cluster). The sweep test checks the consequences: one run dir per
job, one W&B run per job, nothing written by rank 1, every eval example counted exactly once.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from .conftest import read_json, run_lmlab, tiny


def test_ddp_worker_of_a_sweep_job_runs_that_job_alone_in_its_run_dir():
    from lmlab.cluster import ddp_child_command

    argv = ["-m", "--config-dir", "/my/conf", "trainer=ddp_sim", "seed=0,1", "-cn=train"]
    cmd = ddp_child_command("lmlab.train", ["trainer=ddp_sim", "seed=1"], "/out/multiruns/s/1", 1, argv)
    assert cmd == [sys.executable, "-m", "lmlab.train", "--config-dir", "/my/conf", "-cn=train",
                   "trainer=ddp_sim", "seed=1", 'hydra.run.dir="/out/multiruns/s/1"',
                   "hydra.job.name=train_ddp_process_1", "hydra.output_subdir=null"]
    assert "-m" not in cmd[3:] and "seed=0,1" not in cmd, "never the sweep"


@pytest.mark.slow
def test_ddp_sim_sweep_gives_one_run_dir_and_one_wandb_run_per_job_written_by_rank_zero(workdir: Path):
    """~2.5 min on a busy 2-core machine: 2 jobs x 2 processes x (fit, validate, test)."""
    run_lmlab("train", "-m", "trainer=ddp_sim", "seed=0,1", *tiny("logger=[csv,wandb]"), cwd=workdir)
    assert sorted(p.name for p in workdir.iterdir()) == ["outputs"]
    base = workdir / "outputs" / "sequence_classification"
    assert sorted(p.name for p in base.iterdir()) == ["multiruns"], "no run dir from a worker re-running argv"
    (sweep,) = base.joinpath("multiruns").iterdir()
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert [j.name for j in jobs] == ["0", "1"], "the sweep ran once, not once per rank"
    wandb_ids = set()
    for seed, job in enumerate(jobs):
        meta, metrics = read_json(job / "run.json"), read_json(job / "metrics.json")
        assert meta["status"] == metrics["status"] == "completed" and meta["world_size"] == 2
        assert meta["seed"] == seed and f"seed={seed}" in meta["overrides"]
        # 128 samples / (batch 16 x 2 ranks) = 4 optimizer steps: the data was sharded, not duplicated.
        assert metrics["global_step"] == 4
        # Every one of the 64 test rows counted once, the counts summed over both ranks.
        assert sum(row["support"] for row in metrics["test_per_class"].values()) == 64
        assert not list(job.rglob("*ddp_process*")), "rank 1 writes no log file"
        (offline,) = (job / "wandb").glob("offline-run-*")
        assert offline.name.endswith(meta["wandb_id"]), "one W&B run per job, the one in run.json"
        wandb_ids.add(meta["wandb_id"])
        # Hydra's files are the job's own (a worker passes hydra.output_subdir=null and writes none).
        assert f"seed={seed}" in (job / ".hydra" / "overrides.yaml").read_text()
    assert len(wandb_ids) == 2
    summary = read_json(sweep / "summary.json")
    assert (summary["jobs"], summary["completed"]) == (2, 2), "the sweep summary saw each job once"


@pytest.mark.slow
def test_ddp_sim_counts_each_example_of_an_odd_sized_eval_set_once(workdir: Path):
    run_lmlab("train", *tiny("trainer=ddp_sim", "data.limit_test_samples=63"), cwd=workdir)
    (run,) = (workdir / "outputs" / "sequence_classification" / "runs").iterdir()
    metrics = read_json(run / "metrics.json")
    assert sum(row["support"] for row in metrics["test_per_class"].values()) == 63


def test_requeued_job_resumes_its_run_dir_from_last_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from omegaconf import OmegaConf

    from lmlab.cluster import continue_requeued_run

    cfg = OmegaConf.create({"resume": None, "paths": {"output_dir": str(tmp_path)}})
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    (tmp_path / "run.json").write_text("{}")
    continue_requeued_run(cfg)
    assert cfg.resume is None, "a first attempt never resumes"

    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    continue_requeued_run(cfg)
    assert cfg.resume is None and not (tmp_path / "run.json").exists(), "no checkpoint yet: start over"
    assert (tmp_path / "run.attempt-1.json").read_text() == "{}", "the earlier attempt's record is kept"

    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"x")
    continue_requeued_run(cfg)
    assert cfg.resume == str(tmp_path)
    assert os.environ["SLURM_RESTART_COUNT"] == "1"
