"""Exact resume: random-number state in every checkpoint, and the data position handed to the loader.

Lightning checkpoints weights, optimizer, scheduler, loop counters and (with lmlab's ResumableDataLoader) the
position in the epoch, but not the random generators: a resumed run would draw new dropout masks. This
callback stores the global torch/numpy/python generator states and every ``torch.Generator`` the
LightningModule holds (e.g. masked-LM masking), and puts them back when training restarts (``on_train_start``:
after Lightning has restored the checkpoint and created the data iterator, right before the next step).
"""

from __future__ import annotations

import logging
import random
from typing import Any

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

log = logging.getLogger(__name__)


def global_rng_states() -> dict[str, Any]:
    """torch (CPU + CUDA), numpy and python generator states as tensors/lists/ints: plain data that
    ``torch.load(weights_only=True)`` reads back (a numpy array in a checkpoint would be refused)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, py_gauss = random.getstate()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
            "python": [version, list(internal), py_gauss]}


def set_global_rng_states(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, py_gauss = state["python"]
    random.setstate((version, tuple(internal), py_gauss))


def module_generators(module: torch.nn.Module) -> dict[str, torch.Generator]:
    """The module's own generators by attribute name (not those of submodules: lmlab tasks keep them on top)."""
    return {name: value for name, value in vars(module).items() if isinstance(value, torch.Generator)}


def load_pending_loader_state(trainer: Any) -> None:
    """Give the train loader its checkpointed position (ResumableDataLoader.load_state_dict).

    Lightning hands a checkpoint's loader state to the loader only when it builds the train loader after
    restoring; lmlab's LR schedule asks for the total steps (``estimated_stepping_batches``) while the
    optimizers are configured, which builds the loader before the restore, so the state would be dropped and
    the resumed epoch would start again from its first batch. No batch has been drawn yet at train start.
    """
    fit_loop = trainer.fit_loop
    if getattr(fit_loop, "_combined_loader_states_to_load", None) and fit_loop._combined_loader is not None:
        fit_loop._load_combined_loader_states()


class ResumeRNGState(Callback):
    """Saves the generator states with each checkpoint and restores them when a fit resumes."""

    def __init__(self) -> None:
        self.pending: dict[str, Any] | None = None  # states loaded from a checkpoint, applied at train start
        self.module: torch.nn.Module | None = None

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self.module = pl_module

    def state_dict(self) -> dict[str, Any]:
        generators = module_generators(self.module) if self.module is not None else {}
        return {"global": global_rng_states(),
                "module": {name: gen.get_state() for name, gen in generators.items()},
                "module_devices": {name: str(gen.device) for name, gen in generators.items()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.pending = state_dict

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        load_pending_loader_state(trainer)
        if self.pending is None:
            return
        state, self.pending = self.pending, None
        set_global_rng_states(state["global"])
        for name, gen_state in state.get("module", {}).items():
            # A new generator per attribute: two attributes may share one object at construction time
            # (e.g. train and eval masking) but held different states when the checkpoint was written.
            gen = torch.Generator(device=state.get("module_devices", {}).get(name, "cpu"))
            gen.set_state(gen_state)
            setattr(pl_module, name, gen)
        log.info("restored the random generator states of the checkpoint (global + %d of the module)",
                 len(state.get("module", {})))
