"""The load soak (benchmarks/soak.py --quick): a 6-job local_parallel sweep with W&B offline, watched from outside."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO, cli_env


def _figures(stdout: str) -> dict[str, str]:
    """`name: value (goal)` lines -> {name: value}."""
    return {m[1]: m[2] for m in re.finditer(r"^(soak_\w+): (.+?) \(", stdout, re.M)}


@pytest.mark.slow  # a 6-job sweep: ~1 min quiet, several on a busy machine
def test_quick_soak_leaves_six_complete_runs_and_nothing_running(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "soak.py"), "--quick", "--workdir",
                           str(tmp_path)], capture_output=True, text=True, env=cli_env(), timeout=1200)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    figures = _figures(proc.stdout)
    assert figures["soak_jobs"] == "6"
    assert figures["soak_run_dirs_completed"] == "6"
    assert figures["soak_summary_completed"] == "6/6"
    assert figures["soak_wandb_distinct_ids"] == "6"
    assert figures["soak_wandb_finished"] == "6"
    assert figures["soak_leaked_processes"] == "0"
    assert float(figures["soak_launcher_rss_growth_mb"]) < 50
    start, end = (int(n) for n in figures["soak_launcher_fds"].split(" -> "))
    assert end - start <= 4
    assert proc.stdout.rstrip().endswith("soak: PASS")
    # The figures are about real files: six job dirs, six W&B offline runs with distinct ids.
    (sweep,) = (tmp_path / "outputs" / "sequence_classification" / "multiruns").iterdir()
    ids = {run.name.rsplit("-", 1)[1] for run in sweep.glob("*/wandb/offline-run-*")}
    assert len(ids) == 6 and sorted(p.name for p in sweep.iterdir() if p.is_dir()) == [str(n) for n in range(6)]
