"""Startup cost of `lmlab train --cfg job` (compose + validate, no torch) next to `import torch, lightning,
transformers`, each measured in fresh processes, interleaved, median of N.

    python benchmarks/startup.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time


def _time(cmd: list[str], cwd: str) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    cfg_job = [sys.executable, "-m", "lmlab", "train", "--cfg", "job"]
    heavy = [sys.executable, "-c", "import torch, lightning, transformers"]
    bare = [sys.executable, "-c", "pass"]
    results: dict[str, list[float]] = {"cfg_job": [], "heavy_imports": [], "python": []}
    with tempfile.TemporaryDirectory() as cwd:
        for _ in range(args.repeats):
            results["cfg_job"].append(_time(cfg_job, cwd))
            results["heavy_imports"].append(_time(heavy, cwd))
            results["python"].append(_time(bare, cwd))
    med = {k: statistics.median(v) for k, v in results.items()}
    print(f"# startup, median of {args.repeats} fresh processes")
    print(f"startup_cfg_job_s: {med['cfg_job']:.2f} (goal <= 1.0)")
    print(f"import_torch_lightning_transformers_s: {med['heavy_imports']:.2f} (reference)")
    print(f"python_startup_s: {med['python']:.2f} (reference)")


if __name__ == "__main__":
    main()
