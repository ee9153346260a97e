"""Load soak: N short jobs in one `lmlab train -m hydra/launcher=local_parallel` sweep, watched from outside.

    python benchmarks/soak.py              # 50 jobs (~10-20 min on a shared 2-core machine)
    python benchmarks/soak.py --quick      # 6 jobs
    python benchmarks/soak.py --jobs 20 --workdir /tmp/soak --keep

Each job: tiny_bert, 64 SST-2 train sentences, 1 epoch, `logger=[csv,wandb]` with W&B offline, seed = job number.
While the sweep runs, every second: the launcher's RSS and open file descriptors (the launcher is the
`lmlab train -m` process; jobs run in loky worker processes), its descendant processes and their RSS, and how many
jobs have finished. Afterwards (checks; exit code 1 when one fails):

- N run dirs, each with metrics.json status completed; the sweep summary.json lists N completed;
- N distinct W&B offline run ids, each run finished (its wandb-core log says the stream finished);
- no leaked processes: every descendant seen during the sweep (loky workers, wandb-core services) is gone once
  the launcher exited (after a grace period), and no process carries this soak's marker environment variable;
- launcher memory flat: median RSS while the first k jobs ran vs while the last k ran (k = N/10, 1..10), growth
  < 50 MB. Why that bound: the launcher holds no model or data; what it keeps per job (Hydra's JobReturn, the
  job's config, log records) is kilobytes, so 50 jobs cannot reach 50 MB honestly, while retaining anything a job
  builds (a tiny_bert model is 4 MB of weights, a W&B run with its buffers and threads, a datamodule) adds MBs per
  job and crosses it; the bound stays well above allocator noise (a few MB). The slope (MB per finished job, least
  squares) is printed beside it: a leak of L MB/job shows as a slope of about L;
- launcher file descriptors at the start vs the end of the sweep: growth <= 4 (a per-job leak grows with N).

Figures are `name: value (goal)` lines (see _common.result); the workers' peak RSS is reported, not checked.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import shutil
import statistics
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import _common as c

MB = 1024 * 1024
RSS_GROWTH_GOAL_MB = 50.0
FD_GROWTH_GOAL = 4
GRACE_S = 20.0  # loky workers and wandb-core exit shortly after the launcher; wait this long before calling a leak
MARK = "LMLAB_SOAK_MARK"  # inherited by every process the sweep starts: finds them even after re-parenting

JOB = ["model=tiny_bert", "data.limit_train_samples=64", "data.limit_val_samples=32",
       "data.limit_test_samples=32", "data.batch_size=16", "data.eval_batch_size=32", "trainer.max_epochs=1",
       "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "trainer.num_sanity_val_steps=0",
       "export=false", "logger=[csv,wandb]", "logger.wandb.mode=offline"]


@dataclass
class Sample:
    t: float
    done: int  # jobs finished (metrics.json completed/failed) at this moment
    rss: int  # launcher RSS, bytes
    fds: int  # launcher open file descriptors
    workers: dict[int, int]  # pid -> RSS of each descendant python process (loky workers)


@dataclass
class Watch:
    samples: list[Sample] = field(default_factory=list)
    seen: dict[tuple[int, float], str] = field(default_factory=dict)  # (pid, create_time) -> name + cmdline
    peak: dict[str, int] = field(default_factory=dict)  # process kind -> peak RSS over the sweep


class LeakProbe:
    """Inside each job (a worker process), at fit start: what the worker still holds from earlier jobs.

    Writes ``<out>/<time_ns>-<pid>.json``: live LightningModules, Trainers, optimizers and W&B runs (after a
    gc.collect(); this job's own are 1 each), logging handlers on all loggers, threads, open fds, RSS. In a worker
    that leaks nothing these stay the same from its first job to its last."""

    def __init__(self, out: str):
        self.out = Path(out)

    def on_fit_start(self, trainer: object, pl_module: object) -> None:
        import gc
        import logging
        import os
        import threading

        import lightning
        import psutil
        import torch

        gc.collect()
        kinds = {"modules": lightning.LightningModule, "trainers": lightning.Trainer,
                 "optimizers": torch.optim.Optimizer}
        with contextlib.suppress(ImportError):
            from wandb.sdk.wandb_run import Run

            kinds["wandb_runs"] = Run
        counts = dict.fromkeys(kinds, 0)
        objects = gc.get_objects()
        counts["gc_objects"] = len(objects)  # growth here is Python-level; RSS growth without it is native
        for obj in objects:
            for name, cls in kinds.items():
                if isinstance(obj, cls):
                    counts[name] += 1
        loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
        counts["log_handlers"] = sum(len(getattr(lg, "handlers", [])) for lg in loggers)
        counts["threads"] = threading.active_count()
        counts["fds"] = len(os.listdir("/proc/self/fd"))
        counts["rss_mb"] = psutil.Process().memory_info().rss / MB
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / f"{time.time_ns()}-{os.getpid()}.json").write_text(json.dumps(counts))


def leak_probe(out: str) -> object:
    """Hydra _target_ for ``+callbacks.soak_probe`` (see LeakProbe)."""
    return c.as_callback(LeakProbe)(out)


def sweep_command(jobs: int, workdir: Path) -> list[str]:
    return c.lmlab_cmd("train", "-m", "hydra/launcher=local_parallel", f"seed=range(0,{jobs})", *JOB,
                       f"paths.log_dir={workdir / 'outputs'}", f"paths.cache_dir={workdir / 'cache'}",
                       "+callbacks.soak_probe._target_=soak.leak_probe", f"+callbacks.soak_probe.out={workdir / 'probe'}")


def worker_probes(workdir: Path) -> dict[int, list[dict[str, float]]]:
    """LeakProbe records per worker pid, in job order."""
    by_pid: dict[int, list[dict[str, float]]] = collections.defaultdict(list)
    for path in sorted(workdir.glob("probe/*.json"), key=lambda p: int(p.stem.split("-")[0])):
        by_pid[int(path.stem.split("-")[1])].append(json.loads(path.read_text()))
    return dict(by_pid)


def report_workers(workdir: Path, failed: list[str]) -> None:
    """Per worker, at the fit start of its first vs its last job: live objects of earlier jobs must not pile up."""
    probes = {pid: seq for pid, seq in worker_probes(workdir).items() if len(seq) > 1}
    if not probes:
        c.result("soak_worker_probe", "n/a", "no worker ran two jobs")
        return
    for key in ("modules", "trainers", "optimizers", "wandb_runs", "log_handlers", "threads", "fds"):
        pairs = [(seq[0].get(key, 0), seq[-1].get(key, 0)) for seq in probes.values()]
        grew = max(last - first for first, last in pairs)
        shown = ", ".join(f"{first:g} -> {last:g}" for first, last in pairs)
        check(f"soak_worker_{key}", shown, "goal no growth from a worker's first job to its last", grew <= 0, failed)
    # A worker's first two jobs warm it up (lazy imports, allocator pools: ~50 MB measured); the slope after that
    # is the per-job figure a leak would show in.
    warm = {pid: seq[2:] for pid, seq in probes.items()}
    slopes = [_slope(list(range(len(seq))), [r["rss_mb"] for r in seq]) for seq in warm.values()]
    rss = ", ".join(" -> ".join(f"{r['rss_mb']:.0f}" for r in (seq[0], *seq[2:3], seq[-1])) for seq in probes.values())
    c.result("soak_worker_rss_at_fit_start_mb", rss, f"info; per worker: job 1 -> job 3 -> last of "
             f"{[len(s) for s in probes.values()]} jobs; slope from job 3 on "
             f"{', '.join(f'{s:+.2f}' for s in slopes)} MB/job")
    objects = ", ".join(f"{seq[min(2, len(seq) - 1)]['gc_objects']} -> {seq[-1]['gc_objects']}" for seq in probes.values())
    c.result("soak_worker_gc_objects", objects, "info; per worker, job 3 -> last: Python objects alive at fit start")


def finished_jobs(workdir: Path, known: set[Path]) -> int:
    """Count job dirs whose metrics.json says the job ended (``known`` caches those already counted)."""
    for metrics in workdir.glob("outputs/*/multiruns/*/*/metrics.json"):
        if metrics in known:
            continue
        with contextlib.suppress(OSError, ValueError):
            if json.loads(metrics.read_text()).get("status") in ("completed", "failed"):
                known.add(metrics)
    return len(known)


def _kind(proc: object) -> str:
    name = proc.name()  # type: ignore[attr-defined]
    return "wandb-core" if "wandb" in name else ("python" if "python" in name else name)


def sample(launcher: object, watch: Watch, done: int) -> None:
    """One observation of the launcher and its descendants (psutil.Process)."""
    import psutil

    try:
        rss, fds = launcher.memory_info().rss, launcher.num_fds()  # type: ignore[attr-defined]
        children = launcher.children(recursive=True)  # type: ignore[attr-defined]
    except psutil.Error:
        return
    workers: dict[int, int] = {}
    for p in children:
        try:
            kind, child_rss = _kind(p), p.memory_info().rss
            watch.seen.setdefault((p.pid, p.create_time()), f"{p.name()} {' '.join(p.cmdline())[:120]}")
        except psutil.Error:
            continue
        watch.peak[kind] = max(watch.peak.get(kind, 0), child_rss)
        if kind == "python":
            workers[p.pid] = child_rss
    watch.samples.append(Sample(time.monotonic(), done, rss, fds, workers))


def run_sweep(jobs: int, workdir: Path, mark: str, timeout: float) -> tuple[int, float, Watch, Path]:
    """Start the sweep, sample it every second until it exits; (exit code, wall s, samples, its log)."""
    import psutil

    env = c.child_env(WANDB_MODE="offline", OMP_NUM_THREADS="1", **{MARK: mark})
    log = workdir / "sweep.log"
    watch, known = Watch(), set()
    start = time.monotonic()
    with open(log, "w") as out:
        proc = subprocess.Popen(sweep_command(jobs, workdir), cwd=workdir, env=env, stdout=out,
                                stderr=subprocess.STDOUT)
        launcher = psutil.Process(proc.pid)
        while proc.poll() is None:
            sample(launcher, watch, finished_jobs(workdir, known))
            if time.monotonic() - start > timeout:
                proc.kill()
                break
            time.sleep(1.0)
        proc.wait()
    return proc.returncode, time.monotonic() - start, watch, log


def leaked_processes(watch: Watch, mark: str) -> list[str]:
    """Descendants seen during the sweep still alive, plus any process with this soak's marker; after a grace."""
    import psutil

    deadline = time.monotonic() + GRACE_S
    while True:
        alive = [desc for (pid, created), desc in watch.seen.items() if _same_process_alive(pid, created)]
        for p in psutil.process_iter(["pid", "name"]):
            with contextlib.suppress(psutil.Error):
                if p.environ().get(MARK) == mark and not any(pid == p.pid for (pid, _) in watch.seen):
                    alive.append(f"{p.name()} (pid {p.pid}, not seen during the sweep)")
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(1.0)


def _same_process_alive(pid: int, created: float) -> bool:
    import psutil

    try:
        p = psutil.Process(pid)
        return p.create_time() == created and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def process_table() -> dict[tuple[int, float], str]:
    """Processes on the machine that look like sweep machinery (wandb, loky/joblib, lmlab), any owner."""
    import psutil

    table = {}
    for p in psutil.process_iter(["pid", "name", "cmdline", "create_time"]):
        line = f"{p.info['name']} {' '.join(p.info['cmdline'] or [])}"
        if any(word in line for word in ("wandb", "loky", "joblib", "lmlab")):
            table[(p.info["pid"], p.info["create_time"])] = line[:120]
    return table


def wandb_runs(sweep: Path) -> tuple[list[str], int]:
    """(W&B offline run ids, how many of them finished: wandb-core logs 'stream: all finished' on run.finish())."""
    ids, finished = [], 0
    for run in sorted(sweep.glob("*/wandb/offline-run-*")):
        ids.append(run.name.rsplit("-", 1)[1])
        internal = run / "logs" / "debug-internal.log"
        if internal.is_file() and "stream: all finished" in internal.read_text(errors="replace"):
            finished += 1
    return ids, finished


def memory_figures(watch: Watch, jobs: int) -> dict[str, float]:
    """Launcher RSS (MB): medians while the first / last k jobs ran, growth, slope per job; fds start/end."""
    # From the first sample with a worker (before: Hydra still composing, RSS still climbing) to the last job.
    running = [s for s in watch.samples if s.workers and s.done < jobs] or watch.samples
    k = max(1, min(10, jobs // 5))  # 50 jobs: the first 10 vs the last 10
    first = [s.rss / MB for s in running if s.done < k] or [running[0].rss / MB]
    last = [s.rss / MB for s in running if s.done >= jobs - k] or [running[-1].rss / MB]
    slope = _slope([s.done for s in running], [s.rss / MB for s in running])
    return {"k": k, "first": statistics.median(first), "last": statistics.median(last),
            "growth": statistics.median(last) - statistics.median(first), "slope": slope,
            "fd_start": running[0].fds, "fd_end": running[-1].fds}


def _slope(x: list[int], y: list[float]) -> float:
    """Least-squares MB per finished job (0 when fewer than two distinct job counts were sampled)."""
    return statistics.linear_regression(x, y).slope if len(set(x)) > 1 else 0.0


def check(name: str, value: str, goal: str, ok: bool, failed: list[str]) -> None:
    c.result(name, value, f"{goal}: {'ok' if ok else 'FAIL'}")
    if not ok:
        failed.append(name)


def report(jobs: int, code: int, wall: float, watch: Watch, workdir: Path, mark: str,
           before: dict[tuple[int, float], str]) -> list[str]:
    failed: list[str] = []
    c.result("soak_jobs", str(jobs), f"sweep exit code {code}, {len(watch.samples)} samples at 1 s")
    c.result("soak_wall_s", f"{wall:.0f}", "info; shared machine")
    check("soak_exit_code", str(code), "goal 0", code == 0, failed)
    sweeps = sorted(workdir.glob("outputs/*/multiruns/*"))
    sweep = sweeps[-1] if sweeps else workdir
    statuses = []
    for n in range(jobs):
        with contextlib.suppress(OSError, ValueError):
            statuses.append(json.loads((sweep / str(n) / "metrics.json").read_text()).get("status"))
    check("soak_run_dirs_completed", str(statuses.count("completed")), f"goal {jobs}",
          statuses.count("completed") == jobs, failed)
    summary = {}
    with contextlib.suppress(OSError, ValueError):
        summary = json.loads((sweep / "summary.json").read_text())
    check("soak_summary_completed", f"{summary.get('completed')}/{summary.get('jobs')}", f"goal {jobs}/{jobs}",
          summary.get("completed") == jobs and summary.get("jobs") == jobs, failed)
    ids, finished = wandb_runs(sweep)
    check("soak_wandb_distinct_ids", str(len(set(ids))), f"goal {jobs}", len(set(ids)) == jobs == len(ids), failed)
    check("soak_wandb_finished", str(finished), f"goal {jobs}", finished == jobs, failed)
    leaked = leaked_processes(watch, mark)
    check("soak_leaked_processes", str(len(leaked)), f"goal 0 after {GRACE_S:.0f} s grace; "
          f"{len(watch.seen)} descendants seen", not leaked, failed)
    for desc in leaked:
        print(f"  leaked: {desc}")
    kinds = collections.Counter(desc.split(" ", 1)[0] for desc in watch.seen.values())
    print("  descendants seen: " + ", ".join(f"{n} x {name}" for name, n in kinds.most_common()))
    new = set(process_table()) - set(before)
    c.result("soak_new_machinery_processes", str(len(new)), "info; wandb/loky/lmlab processes started since the "
             "soak began and still alive, whole machine: other users' runs count here, the check above does not")
    if not watch.samples:
        check("soak_launcher_rss_growth_mb", "n/a", "no samples", False, failed)
        return failed
    m = memory_figures(watch, jobs)
    c.result("soak_launcher_rss_first_mb", f"{m['first']:.1f}", f"median while the first {m['k']} jobs ran")
    c.result("soak_launcher_rss_last_mb", f"{m['last']:.1f}", f"median while the last {m['k']} jobs ran")
    check("soak_launcher_rss_growth_mb", f"{m['growth']:+.1f}", f"goal < {RSS_GROWTH_GOAL_MB:.0f}",
          m["growth"] < RSS_GROWTH_GOAL_MB, failed)
    c.result("soak_launcher_rss_slope_mb_per_job", f"{m['slope']:+.3f}", "info; a leak of L MB/job shows as ~L")
    check("soak_launcher_fds", f"{m['fd_start']} -> {m['fd_end']}", f"goal growth <= {FD_GROWTH_GOAL}",
          m["fd_end"] - m["fd_start"] <= FD_GROWTH_GOAL, failed)
    workers = {pid for s in watch.samples for pid in s.workers}
    c.result("soak_worker_peak_rss_mb", f"{watch.peak.get('python', 0) / MB:.0f}",
             f"info; largest loky worker, {len(workers)} worker processes over the sweep")
    c.result("soak_wandb_core_peak_rss_mb", f"{watch.peak.get('wandb-core', 0) / MB:.0f}", "info")
    report_workers(workdir, failed)
    return failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=50, help="jobs in the sweep (default 50)")
    parser.add_argument("--quick", action="store_true", help="6 jobs")
    parser.add_argument("--workdir", type=Path, default=None, help="where outputs/ goes (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (always kept with --workdir)")
    parser.add_argument("--timeout", type=float, default=3600, help="kill the sweep after this many seconds")
    args = parser.parse_args(argv)
    jobs = 6 if args.quick else args.jobs
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="lmlab-soak-"))
    workdir.mkdir(parents=True, exist_ok=True)
    c.header(f"soak: {jobs} jobs, hydra/launcher=local_parallel")
    print(f"workdir: {workdir}", flush=True)
    mark = uuid.uuid4().hex
    before = process_table()
    code, wall, watch, log = run_sweep(jobs, workdir, mark, args.timeout)
    failed = report(jobs, code, wall, watch, workdir, mark, before)
    (workdir / "samples.json").write_text(json.dumps([s.__dict__ for s in watch.samples]))
    if code != 0:
        print(f"--- last lines of {log}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-30:]))
    print(f"soak: {'FAIL (' + ', '.join(failed) + ')' if failed else 'PASS'}", flush=True)
    if args.workdir is None and not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
