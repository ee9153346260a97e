"""The one Hydra entry wrapper behind `lmlab train|evaluate|predict` and `python -m lmlab.<cmd>`.

It registers schemas and resolvers, validates the composed config before any heavy import, and turns
LmlabError into one clear message and exit code 2 (HYDRA_FULL_ERROR=1 shows the traceback instead).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import Any

log = logging.getLogger("lmlab")


def _is_child_rank() -> bool:
    """True in a DDP worker that Lightning re-launched from sys.argv (it sets LOCAL_RANK>0)."""
    return os.environ.get("LOCAL_RANK", "0") != "0" or any(
        a.startswith("hydra.job.name=train_ddp_process_") for a in sys.argv[1:]
    )


def _child_rank_overrides() -> list[str]:
    # Lightning's re-launch reuses the rank-0 run dir; keep rank>0 from writing its own log file there.
    return [f"hydra.job_logging.handlers.file.filename={os.devnull}"] if _is_child_rank() else []


def override_key(arg: str) -> str:
    """The key of a command-line override (`+a.b=1` -> `a.b`)."""
    return arg.split("=", 1)[0].lstrip("+~")


def _resume_overrides(args: list[str]) -> list[str]:
    """`resume=RUN_DIR` continues that run: its saved overrides first, then the new ones, same dir.

    The original .hydra/ files are kept; this job's go to .hydra/resume-<time>/.
    """
    import time
    from pathlib import Path

    value = next((a.split("=", 1)[1] for a in args if override_key(a) == "resume" and "=" in a), None)
    if not value or value == "null" or "-m" in args or "--multirun" in args:
        return args
    run_dir = Path(value).expanduser().resolve()
    saved = run_dir / ".hydra" / "overrides.yaml"
    if not saved.is_file():
        return args  # a .ckpt file, or not a run dir: train() reports what is wrong
    from omegaconf import OmegaConf

    given = {override_key(a) for a in args if "=" in a}
    previous = [o for o in OmegaConf.load(saved) if override_key(o) not in given
                and override_key(o) != "resume" and not override_key(o).startswith("hydra")]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return [*previous, *args, f"hydra.run.dir=\"{run_dir}\"", f"hydra.output_subdir=.hydra/resume-{stamp}"]


def _refuse_existing_run_dir(args: list[str]) -> None:
    """`hydra.run.dir=DIR` naming a dir that holds a run fails here, before Hydra writes its .hydra/ files and
    log into it (train() checks again for dirs set another way)."""
    from pathlib import Path

    from lmlab.run_dir import RunDir

    if "-m" in args or "--multirun" in args or any(override_key(a) == "resume" for a in args):
        return
    value = next((a.split("=", 1)[1] for a in args if override_key(a) == "hydra.run.dir" and "=" in a), None)
    if value:
        RunDir(str(Path(value.strip("'\"")).expanduser())).ensure_fresh()


def _note_search_without_sweep() -> None:
    """hparams_search=X without -m runs one job with the search's settings (how a best trial's override line is
    rerun), not a search: say so, since a user who forgot -m would otherwise wait for a search that never starts."""
    from hydra.core.hydra_config import HydraConfig

    search = HydraConfig.get().runtime.choices.get("hparams_search") if HydraConfig.initialized() else None
    if search:
        log.warning("hparams_search=%s without -m: one run with the search's settings, no search. "
                    "To search: lmlab train -m hparams_search=%s", search, search)


def _refuse_conflicting_modes(args: list[str], command: str) -> None:
    """Hydra does one of run, multirun (-m), --cfg, --info per command, and says so with a bare ValueError."""
    from lmlab.errors import ConfigError

    multirun = "-m" in args or "--multirun" in args
    shows = [flag for flag in ("--cfg", "-c", "--info", "-i") if flag in args]
    if multirun and shows:
        show = "--cfg job" if shows[0] in ("--cfg", "-c") else "--info"
        raise ConfigError([
            f"-m (a sweep) and {shows[0]} cannot be combined: Hydra either runs a sweep or prints a config. Fix: "
            f"drop -m and give one value per swept key (`lmlab {command} seed=1 {show}`); each job of a sweep keeps "
            "its own config in <run dir>/.hydra/config.yaml."])


def _refuse_unusable_output(args: list[str]) -> None:
    """Before Hydra creates the run dir: a task_name that is not a plain name, or an output location that
    cannot be written (read-only, a file in the path, /proc), fails with one message instead of a traceback."""
    import os
    from pathlib import Path

    from lmlab.errors import ConfigError
    from lmlab.run_dir import check_creatable, path_name_problem

    given = {override_key(a): a.split("=", 1)[1].strip("'\"") for a in args if "=" in a}
    if "task_name" in given and (problem := path_name_problem("task_name", given["task_name"])):
        raise ConfigError([problem])
    if "resume" in given:
        return  # continues an existing dir; train() checks that it is writable
    multirun = "-m" in args or "--multirun" in args
    for key in ("hydra.sweep.dir" if multirun else "hydra.run.dir", "paths.log_dir"):
        if key in given:
            if "${" not in given[key]:
                check_creatable(Path(given[key]).expanduser(), key)
            return
    root = os.environ.get("LMLAB_ROOT") or os.getcwd()
    check_creatable(Path(root) / "outputs", "paths.log_dir, default ./outputs")


def _record_job_failure(error: BaseException, output_dir: str) -> None:
    import traceback
    from pathlib import Path

    message = f"{type(error).__name__}: {error}"
    log.error("job failed: %s", message)
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    Path(output_dir, "error.txt").write_text("".join(traceback.format_exception(error)))


def _exit_if_sweep_failed() -> None:
    from lmlab.sweep.callbacks import LAST_SWEEP

    if LAST_SWEEP.get("failed"):
        print(f"lmlab: {len(LAST_SWEEP['failed'])} of {LAST_SWEEP['jobs']} jobs failed (jobs "
              f"{', '.join(LAST_SWEEP['failed'])}); see {LAST_SWEEP['sweep_dir']}/summary.md and each job's "
              "error.txt.", file=sys.stderr)
        raise SystemExit(1)


def _report(error: BaseException) -> None:
    """Print the message once on stderr and keep a copy in the job's log file."""
    message = f"lmlab: error: {error}"
    print(message, file=sys.stderr)
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


class _DropAdverts(logging.Filter):
    """Lightning logs a product tip ("💡 Tip: ... litlogger") on every Trainer; it is not about the run."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip")


def use_hydra_logging() -> None:
    """Route Lightning's messages through Hydra's handlers only (it installs its own console handler,
    which printed every line twice). Call after importing lightning."""
    import warnings

    import lightning  # noqa: F401  (its import installs the console handler removed below)

    # Lightning 2.6 calls a torch.utils._pytree API that torch 2.13 deprecates; harmless, and not ours to fix.
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_DropAdverts())
    if logging.getLogger().handlers:
        for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
            logging.getLogger(name).handlers.clear()
            logging.getLogger(name).propagate = True


# glibc mallopt parameters (malloc.h): M_TRIM_THRESHOLD = -1, M_MMAP_THRESHOLD = -3.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
KEEP_LARGE_BLOCKS_BYTES = 1 << 30


def keep_large_allocations_on_the_heap() -> bool:
    """Linux/glibc, for every command (train, evaluate, predict, generate): serve large tensors (a causal LM's
    logits: 33 MB a step for a tiny GPT-2) from the heap and keep freed memory for the next step, instead of a
    fresh mmap whose pages fault in on first touch at every step. Measured (BENCHMARKS.md, overhead --task
    clm): 13-17k minor page faults a step -> ~0, the Lightning step 229 -> 277 samples/s. The price: freed
    memory stays with the process (its RSS holds its peak). Skipped when the user set glibc's own
    MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_, or with
    LMLAB_MALLOC=default. Returns whether the parameters were set."""
    import ctypes
    import ctypes.util
    import os
    import platform

    if platform.system() != "Linux" or os.environ.get("LMLAB_MALLOC", "") == "default":
        return False
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, KEEP_LARGE_BLOCKS_BYTES)) and bool(
        mallopt(_M_TRIM_THRESHOLD, KEEP_LARGE_BLOCKS_BYTES))


def run_app(config_name: str, task: Callable[[Any], Any]) -> None:
    """Compose ``config_name`` from lmlab's config tree (plus --config-dir/searchpath) and run ``task``."""
    import hydra

    from lmlab.config.compose import register_config_nodes
    from lmlab.config.locate import config_dir
    from lmlab.config.validate import validate
    from lmlab.errors import LmlabError

    register_config_nodes()
    if not _is_child_rank():
        try:
            _refuse_conflicting_modes(sys.argv[1:], config_name)
            _refuse_existing_run_dir(sys.argv[1:])
            _refuse_unusable_output(sys.argv[1:])
        except LmlabError as error:
            _report(error)
            raise SystemExit(error.exit_code) from None
        sys.argv[1:] = _resume_overrides(sys.argv[1:])
    sys.argv.extend(_child_rank_overrides())

    def job(cfg: Any) -> Any:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
        try:
            validate(cfg)
            if keep_large_allocations_on_the_heap():
                log.debug("glibc malloc: large blocks stay on the heap (LMLAB_MALLOC=default turns this off)")
            if not multirun:
                _note_search_without_sweep()
                return task(cfg)
            # DDP workers of a sweep job run that job (not the sweep); a SLURM-requeued job resumes its run dir.
            from lmlab import cluster

            cluster.quiet_other_ranks()
            cluster.continue_requeued_run(cfg)
            with cluster.multirun_job(job.__module__):
                return cluster.hand_back_if_preempted(task(cfg))
        except Exception as error:
            if os.environ.get("HYDRA_FULL_ERROR") == "1" and not multirun:
                raise
            if multirun and type(error).__name__ == "TrialPruned":
                log.info("job pruned by the Optuna pruner: %s", error)
                return {"status": "pruned", "error": str(error)}
            if multirun:
                # One failed job must not stop the sweep: record it in its run dir and go on.
                _record_job_failure(error, HydraConfig.get().runtime.output_dir)
                return {"status": "failed", "error": f"{type(error).__name__}: {error}"}
            if not isinstance(error, LmlabError):
                raise
            _report(error)
            raise SystemExit(error.exit_code) from None

    # Hydra names the job (and its log file, train.log) after the task function's module.
    job.__module__ = f"lmlab.{config_name}"
    hydra.main(config_path=str(config_dir()), config_name=config_name, version_base="1.3")(job)()
    _exit_if_sweep_failed()
