"""What every benchmark script shares: environment, machine header, `name: value (goal)` lines, timing helpers.

Scripts import it as ``import _common`` (``python benchmarks/X.py`` puts benchmarks/ first on sys.path). The
Lightning callbacks at the end are also used inside `lmlab train` subprocesses through a ``+callbacks.NAME``
override with ``PYTHONPATH=benchmarks/`` (so the timed run is the real CLI, not a copy of it).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"
DATA_ROOT = Path(os.environ.get("LMLAB_DATA_ROOT", REPO.parent / "shared" / "data"))


def set_environment() -> None:
    """Offline, quiet, and the data root of a checkout; must run before transformers is imported."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("WANDB_MODE", "disabled")
    os.environ.setdefault("LMLAB_DATA_ROOT", str(DATA_ROOT))
    os.environ.setdefault("LMLAB_ROOT", str(REPO))


def child_env(**extra: str) -> dict[str, str]:
    """Environment of an `lmlab` / helper subprocess: offline, benchmarks/ importable, unbuffered."""
    set_environment()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(BENCH), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_features() -> str:
    """The vector units the figures depend on: machines of the same "AMD EPYC" name differ here, and with native
    bf16 (AVX512-BF16/AMX) bf16 matmuls are faster than fp32, without it many times slower."""
    import torch

    from lmlab.precision import native_cpu_bf16  # the test precision=auto makes (train and predict)

    return f"{torch.backends.cpu.get_cpu_capability()}, native bf16: {'yes' if native_cpu_bf16() else 'no'}"


def load_avg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def header(title: str) -> None:
    """Command, machine, software and load: what BENCHMARKS.md records next to every figure."""
    import torch

    print(f"== {title} ==")
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"machine: {os.cpu_count()} cores ({len(os.sched_getaffinity(0))} usable), {cpu_model()}, "
          f"{platform.system()} {platform.machine()}, {cpu_features()}")
    cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    print(f"software: python {platform.python_version()}, torch {torch.__version__}, cuda device: {cuda}")
    print(f"torch threads: {torch.get_num_threads()}; load average at start: {load_avg()}", flush=True)


def result(name: str, value: str, note: str) -> None:
    """One figure, as run_all.py collects it: ``name: value (goal or note)``."""
    print(f"{name}: {value} ({note})", flush=True)


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b > 0 else "n/a"


def quiet() -> None:
    """Only errors from Lightning/transformers/datasets: the figures are the output."""
    import logging
    import warnings

    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "lmlab", "transformers", "datasets"):
        logging.getLogger(name).setLevel(logging.ERROR)
    for message in (".*does not have many workers.*", ".*smaller than the logging interval.*", ".*LeafSpec.*"):
        warnings.filterwarnings("ignore", message=message)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        import datasets

        datasets.disable_progress_bars()
    except ImportError:
        pass


class PeakRSS:
    """Samples the resident memory of a process tree (the process and its children) every ``interval`` s, or
    less often when a sample is costly: at most ``max_share`` of one core goes to sampling.

    ``peak`` is the largest sum over the tree seen; ``cpu_s`` the CPU seconds the tree used (for "both
    cores used": cpu_s / wall ~ 2); ``sampler_cpu_s`` what the sampling itself cost. (Reading
    /proc/PID/smaps_rollup of a process that maps gigabytes of Arrow files walks its page tables: at a fixed
    50 ms this sampler took CPU from the 2-core run it measured.)"""

    def __init__(self, pid: int, interval: float = 0.05, kill_above: int | None = None, max_share: float = 0.02):
        import psutil

        self.proc = psutil.Process(pid)
        self.interval = interval
        self.max_share = max_share
        self.sampler_cpu_s = 0.0
        self.kill_above = kill_above  # bytes: kill the tree beyond this (a guard against swapping the machine)
        self.killed = False
        self.peak = 0
        self.cpu_s = 0.0
        self._cpu: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        import psutil

        total = 0
        try:
            procs = [self.proc, *self.proc.children(recursive=True)]
        except psutil.Error:
            return
        for p in procs:
            try:
                total += p.memory_info().rss
                t = p.cpu_times()
                # Own time only: a reaped child's time also shows in its parent's children_* fields, and the
                # child is in this dict already (its last sample), so adding both counted it twice.
                self._cpu[p.pid] = t.user + t.system
            except psutil.Error:
                continue
        self.peak = max(self.peak, total)
        self.cpu_s = sum(self._cpu.values())
        if self.kill_above is not None and total > self.kill_above and not self.killed:
            self.killed = True
            for p in reversed(procs):
                with contextlib.suppress(psutil.Error):
                    p.kill()

    def _run(self) -> None:
        while not self._stop.is_set():
            start = time.thread_time()
            self._sample()
            cost = time.thread_time() - start
            self.sampler_cpu_s += cost
            self._stop.wait(max(self.interval, cost / self.max_share))

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run_measured(cmd: Sequence[str], env: dict[str, str] | None = None, cwd: Path | None = None,
                 timeout: float | None = None, kill_above: int | None = None,
                 check: bool = True) -> tuple[subprocess.CompletedProcess, float, PeakRSS]:
    """Run ``cmd``; (process, wall seconds, PeakRSS of its process tree). Raises with its output on failure
    (unless ``check`` is false); ``kill_above``: RSS bytes beyond which the tree is killed."""
    start = time.perf_counter()
    proc = subprocess.Popen(list(cmd), env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with PeakRSS(proc.pid, kill_above=kill_above) as rss:
        out, err = proc.communicate(timeout=timeout)
    wall = time.perf_counter() - start
    done = subprocess.CompletedProcess(list(cmd), proc.returncode, out, err)
    if proc.returncode != 0 and check:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}\n--- stdout\n{out[-4000:]}\n"
                           f"--- stderr\n{err[-4000:]}")
    return done, wall, rss


def lmlab_cmd(verb: str, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "lmlab", verb, *overrides]


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


# -- callbacks used inside `lmlab train` subprocesses (+callbacks.NAME._target_=_common.X) ----------------

class EvalClock:
    """Writes one JSON line per validation to ``path``: global step, training seconds so far (validation time
    excluded), wall seconds since fit start, and every val/* metric. The first line is the fit start."""

    def __init__(self, path: str):
        self.path = Path(path)
        self.train_s = 0.0
        self._mark: float | None = None
        self._start = 0.0

    def _write(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    # Lightning hooks (duck-typed: Lightning accepts any Callback subclass; see as_callback)
    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self._start = time.perf_counter()
        self._mark = self._start
        self._write({"event": "train_start", "unix": time.time()})

    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        if self._mark is not None and not trainer.sanity_checking and trainer.state.fn == "fit":
            self.train_s += time.perf_counter() - self._mark
            self._mark = None

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.state.fn != "fit" or trainer.sanity_checking:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        self._write({"event": "val", "step": trainer.global_step, "train_s": self.train_s,
                     "wall_s": time.perf_counter() - self._start, **metrics})
        self._mark = time.perf_counter()

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        if self._mark is not None:
            self.train_s += time.perf_counter() - self._mark
        self._write({"event": "train_end", "train_s": self.train_s, "wall_s": time.perf_counter() - self._start})


class FirstStep:
    """Writes the unix time of the first training batch to ``path``, then stops training."""

    def __init__(self, path: str):
        self.path = Path(path)

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if not self.path.exists():
            self.path.write_text(f"{time.time()!r}\n")
        trainer.should_stop = True


class StepClock:
    """Writes one JSON line to ``path`` when training ends: the seconds from the start of batch ``skip`` to the end
    of the last batch, the number of batches in between and the tokens (input ids) they held. On CUDA it
    synchronizes at both marks, so queued kernels are counted where they run."""

    def __init__(self, path: str, skip: int):
        self.path, self.skip = Path(path), skip
        self.start: float | None = None
        self.end = 0.0
        self.steps = self.tokens = 0

    @staticmethod
    def _now() -> float:
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return time.perf_counter()

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step == self.skip and self.start is None:
            self.start = self._now()

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.start is not None:
            self.steps += 1
            self.tokens += batch["input_ids"].numel()
            self.end = self._now() if trainer.global_step >= trainer.max_steps else time.perf_counter()

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self.path.write_text(json.dumps({"seconds": self.end - (self.start or self.end), "steps": self.steps,
                                         "tokens": self.tokens, "global_step": trainer.global_step}) + "\n")


def as_callback(cls: type) -> Any:
    """Factory for Hydra's _target_: the class mixed with Lightning's Callback (imported lazily, so the
    benchmark scripts that only read results do not import Lightning)."""
    from lightning.pytorch.callbacks import Callback

    return type(cls.__name__, (cls, Callback), {})


def eval_clock(path: str) -> Any:
    return as_callback(EvalClock)(path)


def first_step(path: str) -> Any:
    return as_callback(FirstStep)(path)


def step_clock(path: str, skip: int) -> Any:
    return as_callback(StepClock)(path, skip)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
