"""Hydra callback: after every multirun, write the sweep report and remember whether jobs failed."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

log = logging.getLogger(__name__)

# Read by lmlab.app after Hydra returns, to exit non-zero when any job of the sweep failed.
LAST_SWEEP: dict[str, Any] = {}


class SweepSummary(Callback):
    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        from lmlab.sweep.report import write_report

        sweep_dir = Path(str(config.hydra.sweep.dir))
        if not sweep_dir.is_dir():
            return
        try:
            summary = write_report(sweep_dir)
        except SystemExit as e:  # no job dirs: nothing ran
            log.warning("%s", e)
            return
        LAST_SWEEP.clear()
        LAST_SWEEP.update(summary, sweep_dir=str(sweep_dir))
        log.info("sweep report: %s/summary.md (%d/%d completed)", sweep_dir, summary["completed"], summary["jobs"])
        if summary["best_overrides"] is not None:
            log.info("best job %s: %s=%s -> lmlab train %s", summary["best_job"], summary["metric"],
                     summary["best_value"], summary["best_overrides"])
