"""The one Hydra entry wrapper behind `lmlab train|evaluate|predict` and `python -m lmlab.<cmd>`.

It registers schemas and resolvers, validates the composed config before any heavy import, and turns
LmlabError into one clear message and exit code 2 (HYDRA_FULL_ERROR=1 shows the traceback instead).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import Any

log = logging.getLogger("lmlab")


def _is_child_rank() -> bool:
    """True in a DDP worker that Lightning re-launched from sys.argv (it sets LOCAL_RANK>0)."""
    return os.environ.get("LOCAL_RANK", "0") != "0" or any(
        a.startswith("hydra.job.name=train_ddp_process_") for a in sys.argv[1:]
    )


def _child_rank_overrides() -> list[str]:
    # Lightning's re-launch reuses the rank-0 run dir; keep rank>0 from writing its own log file there.
    return ["hydra/job_logging=stdout"] if _is_child_rank() else []


def _report(error: BaseException) -> None:
    """Print the message once on stderr and keep a copy in the job's log file."""
    message = f"lmlab: error: {error}"
    print(message, file=sys.stderr)
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def use_hydra_logging() -> None:
    """Route Lightning's messages through Hydra's handlers only (it installs its own console handler,
    which printed every line twice). Call after importing lightning."""
    if logging.getLogger().handlers:
        for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
            logging.getLogger(name).handlers.clear()
            logging.getLogger(name).propagate = True


def run_app(config_name: str, task: Callable[[Any], Any]) -> None:
    """Compose ``config_name`` from lmlab's config tree (plus --config-dir/searchpath) and run ``task``."""
    import hydra

    from lmlab.config import resolvers, schema
    from lmlab.config.locate import config_dir
    from lmlab.config.validate import validate
    from lmlab.errors import LmlabError

    schema.register()
    resolvers.register()
    sys.argv.extend(_child_rank_overrides())

    def job(cfg: Any) -> Any:
        try:
            validate(cfg)
            return task(cfg)
        except LmlabError as error:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            _report(error)
            from hydra.core.hydra_config import HydraConfig
            from hydra.types import RunMode

            if HydraConfig.get().mode == RunMode.MULTIRUN:
                raise  # the sweep records it and moves on
            raise SystemExit(error.exit_code) from None

    job.__name__ = config_name  # Hydra names the job (and its log file) after the task function
    hydra.main(config_path=str(config_dir()), config_name=config_name, version_base="1.3")(job)()
