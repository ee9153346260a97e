"""Sweeps, reports and reproduction through the real CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from .conftest import read_json, run_lmlab, tiny

SMALL = tiny("data.limit_train_samples=64", "data.limit_val_samples=32", "data.limit_test_samples=32",
             "export=false")


def _sweep_dir(cwd: Path) -> Path:
    (sweep,) = (cwd / "outputs" / "sequence_classification" / "multiruns").iterdir()
    return sweep


@pytest.mark.slow
def test_grid_sweep_of_four_jobs_and_its_report(workdir: Path):
    run_lmlab("train", "-m", "optimizer.lr=1e-3,3e-3", "seed=0,1", *SMALL, cwd=workdir)
    sweep = _sweep_dir(workdir)
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert jobs == ["0", "1", "2", "3"]
    seeds = sorted((read_json(sweep / j / "run.json")["seed"], read_json(sweep / j / "run.json")["wandb_id"])
                   for j in jobs)
    assert [s for s, _ in seeds] == [0, 0, 1, 1] and len({w for _, w in seeds}) == 4, "one W&B id per job"
    with open(sweep / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["status"] for r in rows] == ["completed"] * 4
    assert {(r["optimizer.lr"], r["seed"]) for r in rows} == {("0.001", "0"), ("0.001", "1"), ("0.003", "0"),
                                                             ("0.003", "1")}
    assert all(r["best_epoch"] == "0" and float(r["wall_time_s"]) > 0 for r in rows)  # 0-based, as Lightning
    accs = {r["job"]: float(r["val/acc"]) for r in rows}
    assert accs == {j: read_json(sweep / j / "metrics.json")["val"]["val/acc"] for j in jobs}
    assert (sweep / "val_acc_vs_params.png").stat().st_size > 1000
    summary = read_json(sweep / "summary.json")
    assert summary["best_value"] == max(accs.values())
    # `lmlab report` prints the best job's overrides as a ready-to-paste command.
    proc = run_lmlab("report", str(sweep), cwd=workdir)
    best_line = proc.stdout.strip().splitlines()[-1]
    assert best_line.startswith("lmlab train ") and "optimizer.lr=" in best_line and "seed=" in best_line
    assert "| job | status |" in (sweep / "summary.md").read_text()


def test_a_failing_job_does_not_stop_the_sweep(workdir: Path):
    proc = run_lmlab("train", "-m", "optimizer.lr=-1,1e-3", *SMALL, cwd=workdir, check=False)
    assert proc.returncode == 1 and "1 of 2 jobs failed" in proc.stderr
    sweep = _sweep_dir(workdir)
    assert "optimizer.lr=-1" in (sweep / "0" / "error.txt").read_text()
    assert read_json(sweep / "1" / "run.json")["status"] == "completed", "the job after the failure ran"
    with open(sweep / "summary.csv") as f:
        rows = {r["job"]: r for r in csv.DictReader(f)}
    assert rows["0"]["status"] == "failed" and "must be > 0" in rows["0"]["error"]
    assert rows["1"]["status"] == "completed" and rows["1"]["val/acc"]


def test_reproduce_gives_delta_zero_on_the_same_machine(workdir: Path):
    run_lmlab("train", *SMALL, "seed=5", cwd=workdir)
    (run,) = (workdir / "outputs" / "sequence_classification" / "runs").iterdir()
    proc = run_lmlab("reproduce", str(run), cwd=workdir)
    assert "largest |delta|: 0" in proc.stdout and "environment: identical" in proc.stdout
    (repro,) = [p for p in run.parent.iterdir() if p.name.startswith(f"{run.name}-repro-")]
    result = json.loads((repro / "reproduce.json").read_text())
    assert len(result["metrics"]) >= 10 and all(r["delta"] == 0 for r in result["metrics"].values())
    assert read_json(repro / "run.json")["seed"] == 5


def test_reproduce_refuses_a_dir_that_lacks_what_it_needs(workdir: Path):
    (workdir / "half").mkdir()
    (workdir / "half" / "run.json").write_text("{}")
    proc = run_lmlab("reproduce", str(workdir / "half"), cwd=workdir, check=False)
    assert proc.returncode == 1
    assert ".hydra/config.yaml" in proc.stderr and "metrics.json" in proc.stderr


@pytest.mark.slow
def test_local_parallel_launcher_runs_jobs_in_worker_processes(workdir: Path):
    run_lmlab("train", "-m", "hydra/launcher=local_parallel", "optimizer.lr=1e-3,2e-3,3e-3", *SMALL, cwd=workdir)
    sweep = _sweep_dir(workdir)
    metas = [read_json(sweep / j / "run.json") for j in ("0", "1", "2")]
    assert all(m["status"] == "completed" for m in metas)
    assert read_json(sweep / "summary.json")["completed"] == 3


@pytest.mark.slow  # ~18 s: a run from an older version; the default suite keeps test_reproduce_gives_delta_zero
def test_reproduce_of_a_run_from_before_cpu_dropout_uses_torch_dropout(workdir: Path):
    """A run dir written before model.cpu_dropout existed (no key in its config, no record in run.json) trained with
    torch's dropout: the re-run is pinned to it, so the numbers still match exactly."""
    import yaml

    run_lmlab("train", *SMALL, "seed=5", "model.cpu_dropout=torch", cwd=workdir)
    (run,) = (workdir / "outputs" / "sequence_classification" / "runs").iterdir()
    config = yaml.safe_load((run / ".hydra" / "config.yaml").read_text())
    del config["model"]["cpu_dropout"]
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    meta = read_json(run / "run.json")
    del meta["cpu_dropout"]
    (run / "run.json").write_text(json.dumps(meta))
    proc = run_lmlab("reproduce", str(run), cwd=workdir)
    assert "model.cpu_dropout=torch" in proc.stdout and "largest |delta|: 0" in proc.stdout
    (repro,) = [p for p in run.parent.iterdir() if p.name.startswith(f"{run.name}-repro-")]
    assert read_json(repro / "run.json")["cpu_dropout"] == "torch"
