"""`lmlab reproduce RUN_DIR`: re-run a finished run from what its run dir holds and compare.

The new run uses the run's own composed config (RUN_DIR/.hydra/config.yaml, which includes its seed and
every override), not today's config tree, so later edits to conf/ do not change what is reproduced. It
goes to a new run dir beside the original; then every final metric (old, new, delta) and every
environment difference (packages, git SHA, uncommitted diff, device, world size) is printed and saved as
reproduce.json in the new run dir.
"""

from __future__ import annotations

import argparse
import json
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

NEEDED = (".hydra/config.yaml", "run.json", "metrics.json")
ENVIRONMENT = ("packages", "git", "python", "platform", "hostname", "cpu_count", "world_size", "precision")


def _flat(metrics: dict[str, Any]) -> dict[str, float]:
    """val/* and test/* keys already carry their split; train's are bare (acc, loss)."""
    flat = {f"train/{k}": float(v) for k, v in metrics.get("train", {}).items() if isinstance(v, (int, float))}
    flat.update({k: float(v) for split in ("val", "test") for k, v in metrics.get(split, {}).items()
                 if isinstance(v, (int, float))})
    return flat


def _env_differences(old: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    diffs = []
    for key in ENVIRONMENT:
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += [(f"{key}.{k}", a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        elif a != b:
            diffs.append((key, a, b))
    return diffs


def check_run_dir(run_dir: Path) -> None:
    missing = [name for name in NEEDED if not (run_dir / name).is_file()]
    if missing:
        raise SystemExit(
            f"lmlab reproduce: {run_dir} lacks {', '.join(missing)}, so it cannot be reproduced (it is not an "
            "lmlab run dir, or the run never finished). Give the dir of a completed run "
            "(outputs/<task>/runs/<run>)."
        )
    status = json.loads((run_dir / "run.json").read_text()).get("status")
    if status != "completed":
        raise SystemExit(f"lmlab reproduce: the run in {run_dir} has status {status!r}, not 'completed'; "
                         "there are no final metrics to compare with.")


def compare(old_dir: Path, new_dir: Path) -> dict[str, Any]:
    old_m, new_m = (_flat(json.loads((d / "metrics.json").read_text())) for d in (old_dir, new_dir))
    old_e, new_e = (json.loads((d / "run.json").read_text()) for d in (old_dir, new_dir))
    for env in (old_e, new_e):  # what ran: the re-run pins the original's auto to the precision it became
        env["precision"] = (env.get("precision") or {}).get("used")
    (old_e.setdefault("git", {}))["diff_bytes"] = (old_dir / "git.diff").stat().st_size if (old_dir / "git.diff").exists() else 0
    (new_e.setdefault("git", {}))["diff_bytes"] = (new_dir / "git.diff").stat().st_size if (new_dir / "git.diff").exists() else 0
    metrics = {k: {"old": old_m.get(k), "new": new_m.get(k),
                   "delta": (new_m[k] - old_m[k]) if k in old_m and k in new_m else None}
               for k in sorted(set(old_m) | set(new_m))}
    return {"original": str(old_dir), "reproduction": str(new_dir), "metrics": metrics,
            "environment_differences": [{"key": k, "old": a, "new": b} for k, a, b in _env_differences(old_e, new_e)]}


def print_comparison(result: dict[str, Any]) -> None:
    print(f"original:     {result['original']}\nreproduction: {result['reproduction']}\n")
    print(f"{'metric':<28}{'old':>14}{'new':>14}{'delta':>14}")
    for name, row in result["metrics"].items():
        cells = [f"{row[c]:>14.6g}" if row[c] is not None else f"{'-':>14}" for c in ("old", "new", "delta")]
        print(f"{name:<28}{''.join(cells)}")
    worst = max((abs(r["delta"]) for r in result["metrics"].values() if r["delta"] is not None), default=0.0)
    print(f"\nlargest |delta|: {worst:.3g}")
    diffs = result["environment_differences"]
    print("environment: identical" if not diffs else "environment differences:")
    for d in diffs:
        print(f"  {d['key']}: {d['old']!r} -> {d['new']!r}")


def pinned_precision(run_dir: Path) -> list[str]:
    """The override that gives the re-run the precision the original ran in, where it asked for ``auto`` (which
    another machine may resolve differently: bf16 on a CPU with AMX, fp32 on one without)."""
    precision = json.loads((run_dir / "run.json").read_text()).get("precision") or {}
    return [f"trainer.precision={precision['used']}"] if precision.get("requested") == "auto" else []


def pinned_cpu_dropout(run_dir: Path) -> list[str]:
    """Runs from before model.cpu_dropout existed (no record in run.json) drew torch's dropout masks: the re-run
    must too, or its numbers would differ by dropout noise."""
    meta = json.loads((run_dir / "run.json").read_text())
    return [] if "cpu_dropout" in meta else ["++model.cpu_dropout=torch"]  # ++: added (the saved config lacks the key)


def reproduce(run_dir: Path) -> dict[str, Any]:
    run_dir = run_dir.resolve()
    check_run_dir(run_dir)
    new_dir = run_dir.parent / f"{run_dir.name}-repro-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
    cmd = [sys.executable, "-m", "lmlab", "train", "--config-path", str(run_dir / ".hydra"),
           "--config-name", "config", f"hydra.run.dir={new_dir}", "resume=null", *pinned_precision(run_dir),
           *pinned_cpu_dropout(run_dir)]
    print("running:", " ".join(cmd[2:]), flush=True)
    proc = subprocess.run(cmd)
    if proc.returncode != 0 or not (new_dir / "metrics.json").is_file():
        raise SystemExit(f"lmlab reproduce: the re-run failed (exit {proc.returncode}); see {new_dir}/train.log.")
    result = compare(run_dir, new_dir)
    (new_dir / "reproduce.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    print_comparison(result)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="lmlab reproduce", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    reproduce(parser.parse_args(argv).run_dir)
