"""The Optuna study behind a sweep dir (written by lmlab's Optuna sweeper): one row per trial, as study.csv
and study.md, and each job's status taken from its trial (a pruned trial's job ended with an exception, but
it was pruned, not failed). Imports optuna only when the sweep dir holds a study."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

STATES = {"COMPLETE": "completed", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running",
          "WAITING": "waiting"}


def load_trials(sweep_dir: Path) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
    """(study info, one row per trial) or None when ``sweep_dir`` holds no study.json."""
    path = sweep_dir / "study.json"
    if not path.is_file():
        return None
    import optuna

    from lmlab.sweep.optuna_sweeper import open_storage

    info = json.loads(path.read_text())
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=info["study_name"], storage=open_storage(info["storage"]))
    rows = []
    for t in study.get_trials(deepcopy=False):
        state = "interrupted" if t.user_attrs.get("interrupted") else STATES.get(t.state.name, t.state.name.lower())
        steps = sorted(t.intermediate_values)
        reason = t.user_attrs.get("fail_reason") or (
            f"pruned at step {t.user_attrs['pruned_at_step']}" if "pruned_at_step" in t.user_attrs else "")
        rows.append({"trial": t.number, "state": state, "value": t.value, "params": dict(t.params),
                     "last_step": steps[-1] if steps else None, "reports": len(steps), "note": reason,
                     "overrides": t.user_attrs.get("overrides") or []})
    return info, rows


def write_tables(sweep_dir: Path, info: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    keys = sorted({k for r in rows for k in r["params"]})
    header = ["trial", "state", info["metric"], *keys, "reports", "last_step", "note"]
    table = [[r["trial"], r["state"], "" if r["value"] is None else r["value"],
              *[r["params"].get(k, "") for k in keys], r["reports"],
              "" if r["last_step"] is None else r["last_step"], r["note"]] for r in rows]
    with open(sweep_dir / "study.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(table)

    def cell(v: Any) -> str:
        return (f"{v:.6g}" if isinstance(v, float) else str(v)).replace("|", "\\|")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table]
    (sweep_dir / "study.md").write_text("\n".join(lines) + "\n")


def summarize(sweep_dir: Path, records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Write study.csv/.md, set each job record's status from its trial (job number = trial number) and
    return the study's summary (counts by state, best trial, its override line); None without a study."""
    loaded = load_trials(sweep_dir)
    if loaded is None:
        return None
    info, rows = loaded
    write_tables(sweep_dir, info, rows)
    by_number = {r["trial"]: r for r in rows}
    for record in records:
        trial = by_number.get(int(record["job"])) if record["job"].isdigit() else None
        if trial is not None and trial["state"] not in ("running", "waiting"):
            record["status"] = trial["state"]
            if trial["note"]:
                record["error"] = trial["note"]
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    done = [r for r in rows if r["state"] == "completed" and r["value"] is not None]
    sign = -1 if info["direction"] == "minimize" else 1
    best = max(done, key=lambda r: sign * r["value"]) if done else None
    return {"study_name": info["study_name"], "storage": info["storage"], "metric": info["metric"],
            "direction": info["direction"], "trials": counts, "best_trial": best["trial"] if best else None,
            "best_value": best["value"] if best else None, "best_params": best["params"] if best else None,
            "best_overrides": " ".join(best["overrides"]) if best else None}
