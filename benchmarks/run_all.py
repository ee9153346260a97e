"""Run every lmlab benchmark, one after the other, and print each figure as a `name: value (goal)` line.

    python benchmarks/run_all.py                  # full mode: ~45 min on a quiet 2-core machine (make bench)
    python benchmarks/run_all.py --quick          # smoke run of every script (make bench-quick)
    python benchmarks/run_all.py --only mfu,startup --log bench.log

Each script runs in its own process with this Python; its whole output goes to --log (default
benchmarks-<time>.log in the current directory), its figures to the summary at the end. A script that fails is
reported as failed and the others still run; the exit status is 1 if any failed. BENCHMARKS.md records a
full run's summary and the machine it ran on.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import _common as c

# (name, script, full-mode arguments): the full-mode sizes are chosen for ~45 min in all on 2 quiet cores.
BENCHMARKS: list[tuple[str, str, list[str]]] = [
    ("startup", "startup.py", ["--repeats", "3"]),
    ("overhead", "overhead.py", []),
    ("overhead_tasks", "overhead.py", ["--task", "all"]),
    ("overhead_floor", "overhead.py", ["--task", "all", "--floor"]),  # Lightning's fixed per-step cost
    # precision=auto's pick on a CPU with native bf16; part 1 only (part 2's padding figures do not depend on it)
    ("overhead_bf16", "overhead.py", ["--precision", "bf16-mixed", "--pad-steps", "0"]),
    # the same with the callbacks and CSV logger `lmlab train` runs every step
    ("overhead_bf16_callbacks", "overhead.py",
     ["--precision", "bf16-mixed", "--pad-steps", "0", "--callbacks", "train"]),
    ("hf_trainer", "hf_trainer.py", []),
    ("mfu", "mfu.py", ["--steps", "30"]),  # torch.compile alone compiles for minutes
    ("inference", "inference.py", []),
    ("corpus", "corpus.py", []),
    ("gpu", "gpu_clm.py", []),
]
FIGURE = re.compile(r"^([A-Za-z0-9_.]+): (.+) \((.*)\)$")
HEADER = {"command", "machine", "software", "model", "training", "data", "batches", "timing", "setup"}  # not figures


def is_figure(line: str) -> bool:
    m = FIGURE.match(line)
    return m is not None and m.group(1) not in HEADER


def run_one(name: str, script: str, extra: list[str], quick: bool, log: Path) -> tuple[list[str], int, float]:
    cmd = [sys.executable, str(c.BENCH / script), *(["--quick"] if quick else extra)]
    # what is measured, not how long: --quick keeps these
    if quick and {"--task", "--precision", "--callbacks"} & set(extra):
        cmd += extra
    started = time.perf_counter()
    figures: list[str] = []
    with log.open("a") as f:
        f.write(f"\n\n######## {name}: {' '.join(cmd)}\n")
        f.flush()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=c.child_env())
        assert proc.stdout is not None
        for line in proc.stdout:
            f.write(line)
            f.flush()
            if is_figure(line.rstrip("\n")):
                figures.append(line.rstrip("\n"))
                print(f"  {line.rstrip()}", flush=True)
        code = proc.wait()
    return figures, code, time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="every script with --quick")
    p.add_argument("--only", help="comma list of " + ",".join(n for n, _, _ in BENCHMARKS))
    p.add_argument("--skip", default="", help="comma list of benchmarks not to run")
    p.add_argument("--log", type=Path, default=None, help="full output of every script")
    args = p.parse_args(argv)
    chosen = [b for b in BENCHMARKS if (not args.only or b[0] in args.only.split(",")) and
              b[0] not in args.skip.split(",")]
    log = args.log or Path(f"benchmarks-{time.strftime('%Y%m%d-%H%M%S')}.log")
    c.set_environment()
    c.header("lmlab benchmarks" + (" (--quick: smoke sizes, figures are not results)" if args.quick else ""))
    print(f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; full output: {log}", flush=True)
    started = time.perf_counter()
    summary: list[str] = []
    failed: list[str] = []
    for name, script, extra in chosen:
        print(f"-- {name} ({script})", flush=True)
        figures, code, seconds = run_one(name, script, extra, args.quick, log)
        print(f"   {name}: exit {code}, {seconds:.0f} s", flush=True)
        summary.append(f"# {name} ({seconds:.0f} s{', FAILED exit ' + str(code) if code else ''})")
        summary.extend(figures)
        if code:
            failed.append(name)
    print("\n== summary ==")
    print("\n".join(summary))
    print(f"total: {time.perf_counter() - started:.0f} s; load average at end: {c.load_avg()}"
          + (f"; FAILED: {', '.join(failed)} (see {log})" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
