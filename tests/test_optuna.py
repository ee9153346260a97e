"""Optuna search through lmlab's own Hydra sweeper: config errors, search space, study report, and the real
CLI on a rigged objective (pruning, failed trials, resume of an interrupted study)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lmlab.sweep.optuna_sweeper import grid_values, search_space, trial_value

from .conftest import DATA_ROOT, REPO, cli_env, read_json, run_dirs, run_lmlab, tiny

# The rigged objective: the validation split *is* the 64-row training file, so val/loss falls fast with a
# usable lr and stays at ln 2 with a tiny one; a median pruner that starts after one trial then prunes the
# tiny-lr trials at their first validations.
RIGGED = """# @package _global_
defaults:
  - override /hydra/sweeper: lmlab_optuna
  - override /hydra/sweeper/sampler: tpe
  - override /hydra/sweeper/pruner: median
hydra:
  sweep:
    dir: ${paths.log_dir}/${task_name}/studies/${hydra.sweeper.study_name}
  sweeper:
    study_name: rigged
    n_trials: 6
    metric: val/loss
    direction: minimize
    pruner:
      n_startup_trials: 1
    params:
      optimizer.lr: tag(log, interval(1e-7, 1e-2))
callbacks:
  optuna_pruning:
    _target_: lmlab.sweep.optuna_pruning.OptunaPruning
    monitor: val/loss
"""


def _rigged(workdir: Path, *extra: str) -> list[str]:
    (workdir / "conf" / "hparams_search").mkdir(parents=True, exist_ok=True)
    (workdir / "conf" / "hparams_search" / "rigged.yaml").write_text(RIGGED)
    (workdir / "data").mkdir(exist_ok=True)
    with open(DATA_ROOT / "sst2" / "train.tsv") as f:
        (workdir / "data" / "small.tsv").write_text("".join(f.readlines()[:65]))  # header + 64 rows
    return ["-m", "--config-dir", str(workdir / "conf"), "hparams_search=rigged",
            *tiny(f"data.root={workdir / 'data'}", "data.files.train=small.tsv", "data.files.validation=small.tsv",
                  "data.files.test=null", "data.limit_train_samples=null", "data.limit_val_samples=null",
                  "test=false", "export=false", "trainer.max_epochs=6"), *extra]


def _study_dir(workdir: Path, name: str = "rigged") -> Path:
    return workdir / "outputs" / "sequence_classification" / "studies" / name


def _trials(study_dir: Path) -> list:
    import optuna

    from lmlab.sweep.optuna_sweeper import open_storage

    info = read_json(study_dir / "study.json")
    return optuna.load_study(study_name=info["study_name"], storage=open_storage(info["storage"])).trials


# ---------------------------------------------------------------- fast: config and pieces


def test_search_space_from_yaml_and_command_line():
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    space, fixed, problems = search_space(
        {"optimizer.lr": "tag(log, interval(1e-5, 1e-3))", "data.batch_size": "choice(16, 32)",
         "trainer.max_epochs": "range(1, 4)", "seed": "int(interval(0, 9))", "data.max_length": "tag(log, int(interval(16, 128)))", "scheduler.name": "linear"},
        ["scheduler.warmup_ratio=interval(0.0,0.2)", "data.batch_size=8"])
    assert problems == []
    assert space["optimizer.lr"] == FloatDistribution(1e-5, 1e-3, log=True)
    assert space["trainer.max_epochs"] == IntDistribution(1, 3)  # Hydra's range excludes its stop
    assert space["seed"] == IntDistribution(0, 9)
    assert space["data.max_length"] == IntDistribution(16, 128, log=True)
    assert space["scheduler.warmup_ratio"] == FloatDistribution(0.0, 0.2)
    assert "data.batch_size" not in space and sorted(fixed) == ["data.batch_size=8", "scheduler.name=linear"]
    grid, grid_problems = grid_values(space)
    assert grid["trainer.max_epochs"] == [1, 2, 3] and len(grid_problems) == 3  # lr, warmup, max_length
    assert "hydra.sweeper.params.optimizer.lr" in grid_problems[0] and "choice(" in grid_problems[0]
    space, _, problems = search_space({"data.batch_size": "choice(16, 32)"}, [])
    assert space["data.batch_size"] == CategoricalDistribution([16, 32])
    _, _, problems = search_space({"optimizer.lr": "interval(1e-5"}, [])
    assert "hydra.sweeper.params.optimizer.lr='interval(1e-5'" in problems[0]


def test_trial_value_from_what_the_job_returned():
    assert trial_value({"val": {"val/acc": 0.75}, "status": "completed"}, "val/acc") == (0.75, "")
    value, reason = trial_value({"val": {"val/acc": math.nan}, "status": "completed"}, "val/acc")
    assert value is None and reason == "val/acc=nan is not finite"
    value, reason = trial_value({"val": {"val/loss": 0.5}}, "val/f1")
    assert value is None and "no 'val/f1'" in reason and "val/loss" in reason
    assert trial_value({"status": "failed", "error": "ValueError: x"}, "val/acc") == (None, "ValueError: x")


@pytest.mark.parametrize("name", sorted(p.stem for p in (REPO / "conf" / "hparams_search").glob("*.yaml")))
def test_every_hparams_search_option_composes(name: str, tmp_path: Path):
    from .conftest import compose_train

    job = compose_train([f"hparams_search={name}"], tmp_path, check=True)
    from hydra.core.hydra_config import HydraConfig

    sweeper = HydraConfig.get().sweeper
    assert sweeper._target_.endswith("LmlabOptunaSweeper") and sweeper.study_name == name
    assert HydraConfig.get().sweep.dir.endswith(f"studies/{name}")
    space, _, problems = search_space(dict(sweeper.params), [])
    assert problems == [] and len(space) >= 2
    assert job.callbacks.optuna_pruning.monitor == job.task.monitor


SWEEPER_CONF = REPO / "conf" / "hydra" / "sweeper"


@pytest.mark.parametrize("option", [f"{g}={p.stem}" for g in ("sampler", "pruner")
                                    for p in sorted((SWEEPER_CONF / g).glob("*.yaml"))])
def test_every_sampler_and_pruner_option_builds(option: str, tmp_path: Path):
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from lmlab.sweep.optuna_sweeper import build_pruner, build_sampler

    from .conftest import compose_train

    group, name = option.split("=")
    compose_train(["hparams_search=sst2_grid", f"hydra/sweeper/{option}", "seed=3"], tmp_path)
    node = OmegaConf.to_container(HydraConfig.get().sweeper, resolve=True)[group]
    space, _, _ = search_space(dict(HydraConfig.get().sweeper.params), [])
    built = build_sampler(OmegaConf.create(node), 2, grid_values(space)[0]) if group == "sampler" \
        else build_pruner(OmegaConf.create(node))
    assert type(built).__name__ == node["_target_"].rsplit(".", 1)[-1]
    if group == "sampler":
        assert node["seed"] == 3


def test_a_resumed_study_does_not_replay_the_first_runs_suggestions():
    import optuna
    from omegaconf import OmegaConf

    from lmlab.sweep.optuna_sweeper import build_sampler

    def first_lr(seed_offset: int) -> float:
        node = OmegaConf.create({"_target_": "optuna.samplers.RandomSampler", "seed": 42})
        study = optuna.create_study(sampler=build_sampler(node, seed_offset, None))
        return study.ask({"lr": optuna.distributions.FloatDistribution(0, 1)}).params["lr"]

    assert first_lr(0) == first_lr(0) != first_lr(3)


def test_bad_sweeper_settings_fail_before_any_trial(tmp_path: Path):
    proc = run_lmlab("train", "-m", "hparams_search=sst2_grid", "hydra.sweeper.direction=up",
                     "hydra.sweeper.n_trials=0", "optimizer.lr=interval(1e-5,1e-3)", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    err = proc.stderr
    assert "hydra.sweeper.direction='up'" in err and "maximize" in err
    assert "hydra.sweeper.n_trials=0 must be an integer >= 1" in err
    assert not (tmp_path / "outputs" / "sequence_classification" / "studies" / "sst2_grid" / "0").exists()
    proc = run_lmlab("train", "-m", "hparams_search=sst2_grid", "optimizer.lr=interval(1e-5,1e-3)", cwd=tmp_path,
                     check=False)
    assert proc.returncode == 2 and "hydra.sweeper.params.optimizer.lr is a continuous interval" in proc.stderr


@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_report_of_a_study_lists_trials_by_state(kind: str, tmp_path: Path):
    """A study written with optuna directly (as the sweeper does): complete, pruned and failed trials."""
    import optuna

    from lmlab.sweep.optuna_sweeper import open_storage, storage_location
    from lmlab.sweep.study_report import summarize

    journal = storage_location(None if kind == "journal" else f"sqlite:///{tmp_path}/study.db", tmp_path)
    assert journal == (str(tmp_path / "optuna.journal") if kind == "journal" else f"sqlite:///{tmp_path}/study.db")
    study = optuna.create_study(study_name="s", storage=open_storage(journal), direction="minimize")
    for number, (lr, state, value) in enumerate([(1e-3, "COMPLETE", 0.4), (1e-6, "PRUNED", None),
                                                 (3e-3, "FAIL", None), (2e-3, "COMPLETE", 0.3)]):
        study.enqueue_trial({"optimizer.lr": lr})
        trial = study.ask({"optimizer.lr": optuna.distributions.FloatDistribution(1e-7, 1e-2, log=True)})
        trial.set_user_attr("overrides", ["model=tiny_bert", f"optimizer.lr={lr}"])
        trial.report(0.69, 4)
        if state == "PRUNED":
            trial.set_user_attr("pruned_at_step", 4)
        if state == "FAIL":
            trial.set_user_attr("fail_reason", "ValueError: boom")
        study.tell(trial, value, state=getattr(optuna.trial.TrialState, state))
        assert trial.number == number
    (tmp_path / "study.json").write_text(json.dumps(
        {"study_name": "s", "storage": journal, "metric": "val/loss", "direction": "minimize"}))
    records = [{"job": str(n), "status": "failed", "error": "TrialPruned: ..."} for n in range(4)]
    summary = summarize(tmp_path, records)
    assert summary["trials"] == {"completed": 2, "pruned": 1, "failed": 1}
    assert summary["best_trial"] == 3 and summary["best_value"] == 0.3
    assert summary["best_overrides"] == "model=tiny_bert optimizer.lr=0.002"
    assert [r["status"] for r in records] == ["completed", "pruned", "failed", "completed"]
    assert records[1]["error"] == "pruned at step 4" and records[2]["error"] == "ValueError: boom"
    lines = (tmp_path / "study.md").read_text().splitlines()
    assert lines[0] == "| trial | state | val/loss | optimizer.lr | reports | last_step | note |"
    assert lines[3].startswith("| 1 | pruned | 0.69 | 1e-06 | 1 | 4 | pruned at step 4 |")


# ---------------------------------------------------------------- slow: the real CLI


@pytest.mark.slow
def test_tpe_search_prunes_and_a_killed_study_continues_where_it_stopped(workdir: Path):
    """Acceptance: TPE, 6 trials, median pruning on the rigged metric; the first launch is killed during its
    third trial (or a later one: a pruned trial can end between two polls), and the same command then finishes the
    study (trial numbers go on, the cut trial is retried)."""
    args = _rigged(workdir)
    study_dir = _study_dir(workdir)
    first = subprocess.Popen([sys.executable, "-m", "lmlab", "train", *args], cwd=workdir, env=cli_env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and first.poll() is None:
            if (study_dir / "study.json").is_file() and len(_trials(study_dir)) >= 3:
                break  # trial 2 is running
            time.sleep(0.5)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    before = [t.state.name for t in _trials(study_dir)]
    cut = len(before) - 1  # the trial the kill interrupted
    assert cut >= 2 and before[cut] == "RUNNING" and "RUNNING" not in before[:cut], before

    proc = run_lmlab("train", *args, cwd=workdir)
    trials = _trials(study_dir)
    states = [t.state.name for t in trials]
    assert [t.number for t in trials] == list(range(7)), "numbers continue after the kill"
    assert states[cut] == "FAIL" and trials[cut].user_attrs["interrupted"] is True
    assert trials[cut + 1].params == trials[cut].params and trials[cut + 1].user_attrs["retry_of"] == cut, \
        "cut trial retried"
    assert sum(s in ("COMPLETE", "PRUNED", "FAIL") for s in states[:cut] + states[cut + 1:]) == 6  # n_trials ended
    assert states.count("PRUNED") >= 1 and states.count("COMPLETE") >= 2
    for t in trials:
        if t.state.name == "PRUNED":  # stopped at a validation, before the last step
            assert t.user_attrs["pruned_at_step"] == max(t.intermediate_values) < 24
        if t.state.name == "COMPLETE":
            assert t.value == read_json(study_dir / str(t.number) / "metrics.json")["val"]["val/loss"]
    best = min((t for t in trials if t.state.name == "COMPLETE"), key=lambda t: t.value)
    result = read_json(study_dir / "optuna_best.json")
    assert result["best_trial"] == best.number and result["best_value"] == best.value
    assert result["best_overrides"].endswith(f"optimizer.lr={best.params['optimizer.lr']}")
    assert "-> lmlab train hparams_search=rigged" in proc.stdout + proc.stderr
    # `lmlab report` covers the study: one row per trial, pruned jobs are not failures (exit 0 above).
    report = run_lmlab("report", str(study_dir), cwd=workdir)
    assert f"'pruned': {states.count('PRUNED')}" in report.stdout
    rows = (study_dir / "study.md").read_text().splitlines()[2:]
    assert [r.split(" | ")[1] for r in rows] == [
        {"COMPLETE": "completed", "PRUNED": "pruned", "FAIL": "interrupted"}[s] for s in states]


@pytest.mark.slow
def test_failed_trials_do_not_stop_the_search_in_parallel_workers(workdir: Path):
    """joblib workers (local_parallel), 2 trials at a time: the lr=-1 trial fails, the others complete."""
    args = _rigged(workdir, "hydra/launcher=local_parallel", "hydra.sweeper.n_jobs=2", "hydra.sweeper.n_trials=3",
                   "hydra/sweeper/sampler=grid", "hydra.sweeper.pruner.n_startup_trials=10", "hydra.sweeper.study_name=grid",
                   "optimizer.lr=choice(-1.0,1e-3,3e-3)")
    proc = run_lmlab(*["train", *args], cwd=workdir, check=False)
    assert proc.returncode == 1 and "1 of 3 jobs failed" in proc.stderr
    trials = _trials(_study_dir(workdir, "grid"))
    by_lr = {t.params["optimizer.lr"]: t for t in trials}
    assert sorted(by_lr) == [-1.0, 1e-3, 3e-3]
    assert by_lr[-1.0].state.name == "FAIL" and "must be > 0" in by_lr[-1.0].user_attrs["fail_reason"]
    assert by_lr[1e-3].state.name == by_lr[3e-3].state.name == "COMPLETE"


def test_search_config_without_m_runs_one_job_and_says_so(tmp_path: Path):
    """How a best trial's override line is rerun; a user who forgot -m learns that no search started."""
    proc = run_lmlab("train", *tiny("hparams_search=sst2_grid", "debug=fast_dev_run"), cwd=tmp_path)
    assert ("hparams_search=sst2_grid without -m: one run with the search's settings, no search. "
            "To search: lmlab train -m hparams_search=sst2_grid") in proc.stdout + proc.stderr
    (run,) = run_dirs(tmp_path)
    assert not (tmp_path / "outputs" / "sequence_classification" / "studies").exists()
    from omegaconf import OmegaConf

    # the search's own settings apply to the one run: its pruning callback (a no-op outside a sweep)
    callbacks = OmegaConf.load(run / "config_resolved.yaml").callbacks
    assert callbacks.optuna_pruning._target_ == "lmlab.sweep.optuna_pruning.OptunaPruning"
