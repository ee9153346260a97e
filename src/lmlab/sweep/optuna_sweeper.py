"""Optuna hyperparameter search as a Hydra sweeper (ask/tell), selected with `hparams_search=NAME`.

The sweeper asks the study for ``n_jobs`` trials, launches them as Hydra jobs (job number = trial number, so
the job dirs of a study are numbered like its trials), and tells each outcome:

- complete: the job's return value holds ``val[metric]``, a finite number;
- pruned: the job's OptunaPruning callback reported every validation to the trial (through the shared
  storage, so it works in-process and in joblib workers alike), found it should be pruned, marked the trial
  (user attr ``pruned_at_step``) and raised ``optuna.TrialPruned``; lmlab's job wrapper turns that, like any
  exception in a multirun, into a failed return value, and the mark tells the two apart;
- failed: any other exception, a missing or NaN metric.

The study lives in a journal file in the sweep dir (or a database URL), so rerunning the same command
continues it: trials left running by an interrupted sweep are marked failed (``interrupted``) and their
parameters asked again, and only ``n_trials`` minus the trials already ended are run.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from lmlab.errors import ConfigError

log = logging.getLogger("lmlab.optuna")

DIRECTIONS = {"maximize": "maximize", "minimize": "minimize", "max": "maximize", "min": "minimize"}
JOURNAL = "optuna.journal"
STUDY_FILE = "study.json"  # in the sweep dir: how `lmlab report` finds the study
DISCRETE_SAMPLERS = ("GridSampler",)


# ---------------------------------------------------------------- storage (sweeper and jobs share it)

def storage_location(storage: str | None, sweep_dir: str | Path) -> str:
    """The storage as a string: a database URL as given, or the absolute path of a journal file."""
    if storage and "://" in storage:
        return storage
    path = Path(storage).expanduser() if storage else Path(sweep_dir) / JOURNAL
    return str(path.resolve())


def open_storage(location: str) -> Any:
    import optuna

    if "://" in location:
        return location  # optuna builds an RDBStorage from the URL
    from optuna.storages.journal import JournalFileBackend

    Path(location).parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(JournalFileBackend(location))


# ---------------------------------------------------------------- search space

def _plain(value: Any) -> Any:
    """A choice element as an Optuna categorical value: primitives as they are, anything else as override text."""
    from hydra.core.override_parser.types import Override

    return value if isinstance(value, (str, int, float, bool)) or value is None else \
        Override._get_value_element_as_str(value)


def distribution(override: Any) -> Any:
    """The Optuna distribution of one sweep override (choice / range / interval, optionally tagged log)."""
    from hydra.core.override_parser.types import IntervalSweep, RangeSweep
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    value = override.value()
    if override.is_choice_sweep():
        return CategoricalDistribution([_plain(v) for v in override.sweep_iterator()])
    if override.is_range_sweep():
        assert isinstance(value, RangeSweep)
        if all(isinstance(v, int) for v in (value.start, value.stop, value.step)) and not value.shuffle:
            values = list(override.sweep_iterator())  # Hydra's range excludes stop, like Python's
            return IntDistribution(values[0], values[-1], step=value.step) if values else \
                CategoricalDistribution([])
        return CategoricalDistribution(list(override.sweep_iterator()))
    if override.is_interval_sweep():
        assert isinstance(value, IntervalSweep)
        log_scale = "log" in value.tags
        if isinstance(value.start, int) and isinstance(value.end, int):
            return IntDistribution(value.start, value.end, log=log_scale)
        return FloatDistribution(float(value.start), float(value.end), log=log_scale)
    raise ValueError(f"unsupported sweep {override.input_line}")


def search_space(params: dict[str, str], arguments: list[str], config_loader: Any = None
                 ) -> tuple[dict[str, Any], list[str], list[str]]:
    """(distributions by key, fixed overrides for every trial, problems) from ``hydra.sweeper.params`` and
    the command line; a command-line value for a key replaces the params entry (a plain value fixes it)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create(config_loader=config_loader)
    merged: dict[str, str] = {key: f"{key}={value}" for key, value in params.items()}
    for arg in arguments:
        merged[parser.parse_override(arg).get_key_element()] = arg
    space, fixed, problems = {}, [], []
    for key, line in merged.items():
        try:
            override = parser.parse_override(line)
        except Exception as e:  # Hydra's grammar error names the position
            problems.append(f"hydra.sweeper.params.{key}={line.split('=', 1)[1]!r} does not parse: {e}. Fix: "
                            "interval(1e-5,1e-3), tag(log,interval(1e-5,1e-3)), choice(a,b) or range(1,5).")
            continue
        if not override.is_sweep_override():
            fixed.append(line)
            continue
        try:
            dist = distribution(override)
        except Exception as e:
            problems.append(f"hydra.sweeper.params.{key}: {e}. Fix: interval(low,high), choice(a,b) or range(a,b).")
            continue
        if getattr(dist, "choices", True) == ():
            problems.append(f"hydra.sweeper.params.{key}={line.split('=', 1)[1]} is empty. Fix: give values.")
            continue
        space[override.get_key_element()] = dist
    return space, fixed, problems


def grid_values(space: dict[str, Any]) -> tuple[dict[str, list[Any]], list[str]]:
    """The search space as GridSampler wants it: every value of every key (discrete keys only)."""
    from optuna.distributions import CategoricalDistribution, IntDistribution

    grid, problems = {}, []
    for key, dist in space.items():
        if isinstance(dist, CategoricalDistribution):
            grid[key] = list(dist.choices)
        elif isinstance(dist, IntDistribution) and not dist.log:
            grid[key] = list(range(dist.low, dist.high + 1, dist.step))
        else:
            problems.append(f"hydra.sweeper.params.{key} is a continuous interval; the grid sampler needs "
                            "values. Fix: choice(a,b,c) or range(start,stop,step), or another sampler.")
    return grid, problems


def override_line(key: str, value: Any) -> str:
    from hydra.core.override_parser.types import Override

    return f"{key}={Override._get_value_element_as_str(value)}"


# ---------------------------------------------------------------- building sampler and pruner

def _target_name(node: Any) -> str:
    return str(node.get("_target_", "")).rsplit(".", 1)[-1] if node is not None else ""


def _instantiate(key: str, node: DictConfig, **extra: Any) -> Any:
    from hydra.utils import instantiate

    try:
        return instantiate(node, **extra)
    except Exception as e:  # Hydra's message names the target and the bad argument
        raise ConfigError([f"hydra.sweeper.{key} ({node.get('_target_')}) cannot be built: "
                           f"{str(e).splitlines()[0]} {str(e.__cause__ or '')}. Fix: only that class's "
                           f"arguments under hydra.sweeper.{key} (a value set for another option stays when "
                           f"you switch hydra/sweeper/{key}=...; drop it with ~hydra.sweeper.{key}.KEY)."]) from e


def build_sampler(node: DictConfig, seed_offset: int, grid: dict[str, list[Any]] | None) -> Any:
    extra: dict[str, Any] = {}
    if node.get("seed") is not None:
        # A resumed study gets a new seed: the same one would replay the first run's random suggestions.
        extra["seed"] = int(node.seed) + seed_offset
    if _target_name(node) in DISCRETE_SAMPLERS:
        extra["search_space"] = grid
    return _instantiate("sampler", node, **extra)


def build_pruner(node: DictConfig | None) -> Any:
    import optuna

    return optuna.pruners.NopPruner() if node is None else _instantiate("pruner", node)


def check_config(config: dict[str, Any]) -> list[str]:
    """Problems with the sweeper's own settings (space problems are found in sweep())."""
    import importlib.util

    problems = []
    if config["direction"] not in DIRECTIONS:
        problems.append(f"hydra.sweeper.direction={config['direction']!r} is not one of maximize, minimize "
                        "(or max, min). Fix: hydra.sweeper.direction=maximize.")
    for key in ("n_trials", "n_jobs"):
        if not isinstance(config[key], int) or config[key] < 1:
            problems.append(f"hydra.sweeper.{key}={config[key]!r} must be an integer >= 1. Fix: hydra.sweeper.{key}=4.")
    if not config["metric"]:
        problems.append("hydra.sweeper.metric is empty. Fix: hydra.sweeper.metric=val/acc (a key of metrics.json's val).")
    if not config["study_name"]:
        problems.append("hydra.sweeper.study_name is empty. Fix: hydra.sweeper.study_name=my_search.")
    for key in ("sampler", "pruner"):
        node = config[key]
        if key == "sampler" and node is None:
            problems.append("hydra.sweeper.sampler is null. Fix: hydra/sweeper/sampler=tpe (or random, grid, cmaes).")
        elif node is not None and "_target_" not in node:
            problems.append(f"hydra.sweeper.{key} has no _target_. Fix: hydra/sweeper/{key}=<an option of that group>.")
    if _target_name(config["sampler"]) == "CmaEsSampler" and importlib.util.find_spec("cmaes") is None:
        problems.append("hydra/sweeper/sampler=cmaes needs the `cmaes` package, which is not installed. "
                        "Fix: pip install cmaes, or hydra/sweeper/sampler=tpe.")
    return problems


# ---------------------------------------------------------------- the sweeper

class OptunaSearch:
    """The body of hydra_plugins.lmlab_optuna's Sweeper (kept here, with the rest of lmlab's sweep code)."""

    def __init__(self, **config: Any) -> None:
        self.config = config
        self.launcher: Any = None
        self.hydra_context: Any = None
        self.hydra_config: DictConfig | None = None

    def setup(self, *, hydra_context: Any, task_function: Any, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        problems = check_config(self.config)
        if problems:
            raise ConfigError(problems)
        build_pruner(self.config["pruner"])  # a bad argument fails now, not in the first trial
        self.hydra_context = hydra_context
        self.hydra_config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> list[Any]:
        import optuna

        assert self.hydra_config is not None
        cfg = self.config
        space, fixed, problems = search_space(dict(cfg["params"] or {}), arguments,
                                              self.hydra_context.config_loader)
        if not space and not problems:
            problems.append("the search space is empty. Fix: set hydra.sweeper.params in the hparams_search "
                            "option, or sweep a key on the command line (optimizer.lr='interval(1e-5,1e-3)').")
        grid, grid_problems = grid_values(space) if _target_name(cfg["sampler"]) in DISCRETE_SAMPLERS \
            else ({}, [])
        if problems or grid_problems:
            raise ConfigError(problems + grid_problems)

        sweep_dir = Path(str(self.hydra_config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.hydra_config, sweep_dir / "multirun.yaml")
        location = storage_location(cfg["storage"], sweep_dir)
        direction = DIRECTIONS[cfg["direction"]]
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # lmlab logs one line per trial itself
        study = optuna.create_study(study_name=cfg["study_name"], storage=open_storage(location),
                                    direction=direction, load_if_exists=True)
        if study.direction.name.lower() != direction:
            raise ConfigError([f"hydra.sweeper.direction={cfg['direction']}: study {cfg['study_name']!r} in "
                               f"{location} was created to {study.direction.name.lower()}. Fix: the same "
                               "direction, or a new hydra.sweeper.study_name."])
        self._retry_interrupted(study)
        study.sampler = build_sampler(cfg["sampler"], len(study.trials), grid or None)
        study.pruner = build_pruner(cfg["pruner"])
        (sweep_dir / STUDY_FILE).write_text(json.dumps(
            {"study_name": cfg["study_name"], "storage": location, "metric": cfg["metric"],
             "direction": direction}, indent=2) + "\n")

        remaining = cfg["n_trials"] - len(ended_trials(study))
        if grid:
            remaining = min(remaining, math.prod(len(v) for v in grid.values()) - len(ended_trials(study)))
        log.info("study %s (%s): %d trials ended, %d to run; storage %s", cfg["study_name"], direction,
                 len(ended_trials(study)), max(remaining, 0), location)
        returns = []
        while remaining > 0:
            trials = [study.ask(space) for _ in range(min(cfg["n_jobs"], remaining))]
            returns.extend(self._run_batch(study, trials, fixed))
            remaining -= len(trials)
        self._write_best(study, sweep_dir)
        return returns

    def _retry_interrupted(self, study: Any) -> None:
        """Trials still RUNNING when the sweep starts were cut off by an interrupted run (one sweeper per
        study): mark them failed and ask their parameters again, so the rerun finishes what was cut off."""
        from optuna.trial import TrialState

        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            study._storage.set_trial_user_attr(trial._trial_id, "interrupted", True)
            study.tell(trial.number, state=TrialState.FAIL)
            study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
            log.warning("trial %d was interrupted: marked failed, its parameters will run again", trial.number)

    def _run_batch(self, study: Any, trials: list[Any], fixed: list[str]) -> list[Any]:
        batch = [[*fixed, *(override_line(k, v) for k, v in t.params.items())] for t in trials]
        for trial, overrides in zip(trials, batch, strict=True):
            trial.set_user_attr("overrides", overrides)
        numbers = [t.number for t in trials]
        if numbers != list(range(numbers[0], numbers[0] + len(numbers))):
            # Job number = trial number (the job finds its trial by it); not consecutive: launch one by one.
            results = [r for t, o in zip(trials, batch, strict=True)
                       for r in self.launcher.launch([o], initial_job_idx=t.number)]
        else:
            results = list(self.launcher.launch(batch, initial_job_idx=numbers[0]))
        for trial, result in zip(trials, results, strict=True):
            self._tell(study, trial, result)
        return results

    def _tell(self, study: Any, trial: Any, result: Any) -> None:
        from hydra.core.utils import JobStatus
        from optuna.trial import TrialState

        metric = self.config["metric"]
        attrs = trial.storage.get_trial_user_attrs(trial._trial_id)  # as the job left them
        if result.status == JobStatus.FAILED:
            outcome, reason = None, f"{type(result._return_value).__name__}: {result._return_value}"
        else:
            outcome, reason = trial_value(result.return_value, metric)
        if outcome is None and "pruned_at_step" in attrs:
            _finish(study, trial, state=TrialState.PRUNED)
            log.info("trial %d pruned at step %s: %s", trial.number, attrs["pruned_at_step"], _params(trial))
        elif outcome is None:
            trial.set_user_attr("fail_reason", reason)
            _finish(study, trial, state=TrialState.FAIL)
            log.warning("trial %d failed (%s): %s", trial.number, reason, _params(trial))
        else:
            _finish(study, trial, outcome)
            log.info("trial %d: %s=%.6g %s", trial.number, metric, outcome, _params(trial))

    def _write_best(self, study: Any, sweep_dir: Path) -> None:
        from optuna.trial import TrialState

        counts = {name: len(study.get_trials(deepcopy=False, states=(state,))) for name, state in
                  (("completed", TrialState.COMPLETE), ("pruned", TrialState.PRUNED), ("failed", TrialState.FAIL))}
        interrupted = sum(bool(t.user_attrs.get("interrupted")) for t in study.get_trials(deepcopy=False))
        if interrupted:  # counted apart, as in `lmlab report`: they were retried
            counts.update(failed=counts["failed"] - interrupted, interrupted=interrupted)
        summary: dict[str, Any] = {"study_name": study.study_name, "direction": study.direction.name.lower(),
                                   "metric": self.config["metric"], "trials": counts}
        if counts["completed"]:
            best = study.best_trial
            # The trial's own overrides (hparams_search kept: outside -m its pruning callback stays idle, and
            # any training setting the search option fixed is kept too).
            line = " ".join(best.user_attrs.get("overrides") or [])
            summary.update(best_trial=best.number, best_value=best.value, best_params=best.params,
                           best_overrides=line)
            log.info("study %s: %s; best trial %d %s=%.6g -> lmlab train %s", study.study_name, counts,
                     best.number, self.config["metric"], best.value, line)
        else:
            log.warning("study %s: no trial completed (%s)", study.study_name, counts)
        (sweep_dir / "optuna_best.json").write_text(json.dumps(summary, indent=2) + "\n")


def _finish(study: Any, trial: Any, value: float | None = None, state: Any = None) -> None:
    """study.tell; GridSampler calls study.stop() once the grid is used up, which Optuna refuses outside
    study.optimize(). The trial is stored before that (tell writes it in a `finally`), and the sweep stops
    anyway (n_trials is capped at the grid size)."""
    try:
        study.tell(trial, value, state=state)
    except RuntimeError as e:
        if "Study.stop" not in str(e):
            raise


def _params(trial: Any) -> str:
    return " ".join(override_line(k, v) for k, v in trial.params.items())


def ended_trials(study: Any) -> list[Any]:
    """Trials that count toward n_trials: complete, pruned or failed, but not cut off by an interruption."""
    from optuna.trial import TrialState

    ended = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    return [t for t in study.get_trials(deepcopy=False, states=ended) if not t.user_attrs.get("interrupted")]


def trial_value(returned: Any, metric: str) -> tuple[float | None, str]:
    """(the trial's value, or None with the reason) from what the training job returned."""
    if not isinstance(returned, dict):
        return None, f"the job returned {type(returned).__name__}, not metrics"
    if returned.get("status") == "failed":
        return None, str(returned.get("error"))
    value = (returned.get("val") or {}).get(metric)
    if value is None:
        return None, (f"no {metric!r} in the job's validation metrics (found: {sorted(returned.get('val') or {})}); "
                      "check hydra.sweeper.metric and that a checkpoint callback keeps a best checkpoint")
    if not math.isfinite(float(value)):
        return None, f"{metric}={value} is not finite"
    return float(value), ""


# ---------------------------------------------------------------- the job's side

def current_trial() -> Any:
    """The Optuna trial of this Hydra job, or None outside an lmlab Optuna sweep."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    sweeper = hydra_cfg.sweeper
    if hydra_cfg.mode != RunMode.MULTIRUN or not str(sweeper.get("_target_", "")).endswith("LmlabOptunaSweeper"):
        return None
    import optuna

    location = storage_location(sweeper.storage, str(hydra_cfg.sweep.dir))
    # RandomSampler: constructing a Trial calls sampler.before_trial, which must not change the study here.
    study = optuna.load_study(study_name=str(sweeper.study_name), storage=open_storage(location),
                              sampler=optuna.samplers.RandomSampler(), pruner=build_pruner(sweeper.pruner))
    trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, int(hydra_cfg.job.num))
    return optuna.trial.Trial(study, trial_id)
