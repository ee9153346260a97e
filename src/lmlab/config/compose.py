"""Compose lmlab's configs in-process: the config `lmlab <command> OVERRIDES --cfg job` prints, for tests,
benchmarks and notebooks. Never imports torch.

    from lmlab.config.compose import compose_job
    cfg = compose_job(["experiment=mrpc_minilm", "optimizer.lr=3e-5"], output_dir="outputs/scratch")
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def register_config_nodes() -> None:
    """Everything the config tree builds on besides its files: the typed schemas, lmlab's resolvers and the
    submitit launcher schemas (what the CLI registers before Hydra composes)."""
    from lmlab.cluster import register_launcher_schemas
    from lmlab.config import resolvers, schema

    schema.register()
    resolvers.register()
    register_launcher_schemas()


def compose_config(name: str = "train", overrides: Sequence[str] = (), *, hydra: bool = False) -> Any:
    """Config ``name`` (train, evaluate, predict, generate, ...) from lmlab's tree with ``overrides``, unresolved;
    ``hydra``: keep the ``hydra`` node (launcher, sweeper, run dir). Typos and wrong types raise here, as on the
    command line."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from lmlab.config.locate import config_dir

    register_config_nodes()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose(name, overrides=list(overrides), return_hydra_config=hydra)


def resolve_job(cfg: Any, output_dir: str | Path) -> Any:
    """The job config of ``cfg`` (composed with ``hydra=True``) as a run in ``output_dir`` would see it: the
    ``hydra`` node dropped, every interpolation resolved (``${hydra:runtime.output_dir}`` to ``output_dir``;
    relative paths from the current directory, or $LMLAB_ROOT, as on the command line)."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf, read_write

    with read_write(cfg.hydra.runtime):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.runtime.cwd = os.getcwd()
    HydraConfig.instance().set_config(cfg)
    job = OmegaConf.masked_copy(cfg, [key for key in cfg if key != "hydra"])
    OmegaConf.resolve(job)
    return job


def compose_job(overrides: Sequence[str] = (), *, output_dir: str | Path, name: str = "train",
                check: bool = True) -> Any:
    """``compose_config`` + ``resolve_job``; ``check``: also lmlab's semantic validation (value ranges, files,
    combinations), which the CLI runs before building anything."""
    from lmlab.config.validate import validate

    job = resolve_job(compose_config(name, overrides, hydra=True), output_dir)
    if check:
        validate(job)
    return job
