"""`lmlab report SWEEP_DIR`: one row per job (overrides, status, metrics, wall time, best epoch) as
summary.csv and summary.md, a plot of the metric against each swept parameter, and the best job's
override line ready to paste. Reads only files; never imports torch."""

from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path
from typing import Any

import yaml


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _first_line(path: Path) -> str | None:
    if not path.is_file():
        return None
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    return lines[-1] if lines else None


def _job_overrides(job: Path) -> list[str]:
    path = job / ".hydra" / "overrides.yaml"
    return list(yaml.safe_load(path.read_text()) or []) if path.is_file() else []


def _monitor(job: Path) -> tuple[str | None, str]:
    path = job / "config_resolved.yaml"
    if not path.is_file():
        return None, "max"
    task = (yaml.safe_load(path.read_text()) or {}).get("task", {})
    return task.get("monitor"), task.get("monitor_mode", "max")


def collect(sweep_dir: Path) -> list[dict[str, Any]]:
    """One record per job directory (numbered sub-dirs, or any sub-dir holding .hydra/)."""
    jobs = [p for p in sweep_dir.iterdir() if p.is_dir() and (p / ".hydra").is_dir()]
    jobs.sort(key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0, p.name))
    records = []
    for job in jobs:
        meta, metrics = _read_json(job / "run.json"), _read_json(job / "metrics.json")
        flat = {k: v for split in ("val", "test") for k, v in metrics.get(split, {}).items()
                if isinstance(v, (int, float)) and "/class/" not in k}
        monitor, mode = _monitor(job)
        status = meta.get("status") or ("failed" if (job / "error.txt").is_file() else "not started")
        if status == "running" and not (job / "metrics.json").exists():
            status = "crashed or running"
        records.append({
            "job": job.name, "dir": str(job), "overrides": _job_overrides(job), "status": status,
            "error": meta.get("error") or _first_line(job / "error.txt"), "wall_time_s": metrics.get("wall_time_s"),
            "best_epoch": (metrics.get("best_checkpoint") or {}).get("epoch"), "metrics": flat,
            "monitor": monitor, "mode": mode,
        })
    return records


def swept_keys(records: list[dict[str, Any]]) -> list[str]:
    """Override keys whose values differ between jobs."""
    values: dict[str, set[str]] = {}
    for r in records:
        for o in r["overrides"]:
            key, _, value = o.partition("=")
            values.setdefault(key, set()).add(value)
    return [k for k, v in values.items() if len(v) > 1 or len(records) == 1]


def best_job(records: list[dict[str, Any]], metric: str | None, mode: str | None) -> dict[str, Any] | None:
    scored = [r for r in records if r["status"] == "completed" and (metric or r["monitor"]) in r["metrics"]]
    if not scored:
        return None
    key = metric or scored[0]["monitor"]
    sign = -1 if (mode or scored[0]["mode"]) == "min" else 1
    return max(scored, key=lambda r: sign * r["metrics"][key])


def _write_tables(out: Path, records: list[dict[str, Any]], keys: list[str], metric_names: list[str]) -> None:
    header = ["job", "status", *keys, *metric_names, "wall_time_s", "best_epoch", "error"]
    rows = []
    for r in records:
        params = dict(o.partition("=")[::2] for o in r["overrides"])
        rows.append([r["job"], r["status"], *[params.get(k, "") for k in keys],
                     *[r["metrics"].get(m, "") for m in metric_names], r["wall_time_s"] or "",
                     r["best_epoch"] if r["best_epoch"] is not None else "", (r["error"] or "")[:200]])
    with open(out / "summary.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)

    def cell(v: Any) -> str:
        text = f"{v:.4f}" if isinstance(v, float) else str(v)
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    (out / "summary.md").write_text("\n".join(lines) + "\n")


def _plot(out: Path, records: list[dict[str, Any]], keys: list[str], metric: str) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [(dict(o.partition("=")[::2] for o in r["overrides"]), r["metrics"][metric])
              for r in records if metric in r["metrics"]]
    if not points or not keys:
        return None
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        xs = [p.get(key, "") for p, _ in points]
        try:
            numeric = [float(x) for x in xs]
            ax.scatter(numeric, [m for _, m in points])
            if min(numeric) > 0 and max(numeric) / min(numeric) >= 100:
                ax.set_xscale("log")
        except ValueError:
            labels = sorted(set(xs))
            ax.scatter([labels.index(x) for x in xs], [m for _, m in points])
            ax.set_xticks(range(len(labels)), labels, rotation=30)
        ax.set_xlabel(key)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = out / f"{metric.replace('/', '_')}_vs_params.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_report(sweep_dir: Path, metric: str | None = None, mode: str | None = None) -> dict[str, Any]:
    """Write summary.csv, summary.md and the plot into ``sweep_dir``; return a summary dict."""
    records = collect(sweep_dir)
    if not records:
        raise SystemExit(f"lmlab report: no job directories (with .hydra/) in {sweep_dir}.")
    from lmlab.sweep.study_report import summarize

    # An Optuna study (study.json): study.csv/.md, job status from its trial (pruned is not failed), its metric.
    study = summarize(sweep_dir, records)
    if study is not None:
        metric = metric or study["metric"]
        mode = mode or ("min" if study["direction"] == "minimize" else "max")
    keys = swept_keys(records)
    metric_names = sorted({m for r in records for m in r["metrics"]})
    _write_tables(sweep_dir, records, keys, metric_names)
    best = best_job(records, metric, mode)
    chosen = metric or (best["monitor"] if best else None)
    plot = _plot(sweep_dir, records, keys, chosen) if chosen else None
    summary = {
        "jobs": len(records), "completed": sum(r["status"] == "completed" for r in records),
        "failed": [r["job"] for r in records if r["status"] not in ("completed", "pruned", "interrupted")],
        "metric": chosen,
        "best_job": best["job"] if best else None, "best_value": best["metrics"][chosen] if best else None,
        "best_overrides": " ".join(best["overrides"]) if best else None, "plot": str(plot) if plot else None,
        "study": study,
    }
    (sweep_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="lmlab report", description=__doc__)
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--metric", help="metric to rank and plot (default: each job's task.monitor)")
    parser.add_argument("--mode", choices=["min", "max"], help="default: the task's monitor_mode")
    args = parser.parse_args(argv)
    if not args.sweep_dir.is_dir():
        raise SystemExit(f"lmlab report: {args.sweep_dir} is not a directory.")
    s = write_report(args.sweep_dir, args.metric, args.mode)
    print(f"{s['jobs']} jobs, {s['completed']} completed" + (f", not completed: {s['failed']}" if s["failed"] else ""))
    print(f"wrote {args.sweep_dir}/summary.csv, summary.md" + (f", {Path(s['plot']).name}" if s["plot"] else ""))
    if s["study"]:
        print(f"study {s['study']['study_name']}: trials {s['study']['trials']}; wrote study.csv, study.md")
    if s["best_job"] is not None:
        value = s["best_value"]
        shown = f"{value:.4f}" if isinstance(value, float) and math.isfinite(value) else value
        print(f"best: job {s['best_job']} {s['metric']}={shown}")
        print(f"lmlab train {s['best_overrides']}")
