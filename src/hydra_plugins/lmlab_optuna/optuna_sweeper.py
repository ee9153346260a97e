"""`hydra/sweeper=lmlab_optuna`: the schema of the sweeper's config and the Sweeper Hydra instantiates.

Documentation of each key lives next to its default in conf/hydra/sweeper/lmlab_optuna.yaml.
"""

# No `from __future__ import annotations`: Hydra's plugin scan runs this module before it is in
# sys.modules, where dataclasses cannot resolve string annotations.
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import MISSING, DictConfig


@dataclass
class OptunaSweeperConf:
    _target_: str = "hydra_plugins.lmlab_optuna.optuna_sweeper.LmlabOptunaSweeper"
    # The sampler/pruner dicts reach the sweeper as config: it builds them itself (seed, grid search space).
    _recursive_: bool = False
    study_name: str = MISSING
    storage: str | None = None
    metric: str = MISSING
    direction: str = MISSING
    n_trials: int = 20
    n_jobs: int = 1
    # Typed Any: each is a `_target_` dict chosen from hydra/sweeper/sampler|pruner (or null for pruner).
    sampler: Any = None
    pruner: Any = None
    params: dict[str, str] = field(default_factory=dict)


ConfigStore.instance().store(group="hydra/sweeper", name="lmlab_optuna_schema", node=OptunaSweeperConf,
                             provider="lmlab")


class LmlabOptunaSweeper(Sweeper):
    """Ask Optuna for trials, run each as a Hydra job through the configured launcher, tell the outcome."""

    def __init__(self, **config: Any) -> None:
        from lmlab.sweep.optuna_sweeper import OptunaSearch

        self.search = OptunaSearch(**config)

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        with user_errors():
            self.search.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> Any:
        with user_errors():
            return self.search.sweep(arguments)


@contextmanager
def user_errors() -> Iterator[None]:
    """A bad search setting is one message and exit 2, as lmlab's other config errors (Hydra would print a
    traceback for an exception raised in a plugin)."""
    from lmlab.errors import LmlabError

    try:
        yield
    except LmlabError as error:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"lmlab: error: {error}", file=sys.stderr)
        raise SystemExit(error.exit_code) from None
