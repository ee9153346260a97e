"""OmegaConf resolvers used by the config tree (registered before Hydra composes)."""

from __future__ import annotations

import os
import secrets

from omegaconf import OmegaConf

_RUN_UID = secrets.token_hex(3)


def register() -> None:
    """Register lmlab's resolvers once per process."""
    if not OmegaConf.has_resolver("lmlab.uid"):
        # One short random id per process: keeps run dirs unique even when two runs start in the same
        # second; cached so every reference in one process sees the same value.
        OmegaConf.register_new_resolver("lmlab.uid", lambda: _RUN_UID, use_cache=True)
    if not OmegaConf.has_resolver("lmlab.cwd"):
        # The launch directory. Unlike ${hydra:runtime.cwd} it also resolves where Hydra has not set its
        # runtime config yet (the multirun sweeper resolves hydra.sweep.dir before any job starts).
        OmegaConf.register_new_resolver("lmlab.cwd", os.getcwd, use_cache=True)
