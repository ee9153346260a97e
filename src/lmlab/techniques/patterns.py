"""Parameter-name patterns of the `finetune` group, and its config checks (torch-free: runs at validate time).

A pattern is a dotted prefix of parameter names, matched on whole name components: ``embeddings`` matches
``bert.embeddings.word_embeddings.weight``; ``encoder.layer.1`` matches layer 1 but not layer 10. A component
``A-B`` is a range: ``encoder.layer.0-3`` is layers 0, 1, 2 and 3. The keyword ``all_but_head`` is every
parameter of the transformer body (``model.base_model``), for any AutoModelFor* class.
"""

from __future__ import annotations

import itertools
import re
from typing import Any

ALL_BUT_HEAD = "all_but_head"
RANGE = re.compile(r"^(\d+)-(\d+)$")
# Tasks whose head is the LM head, tied to the input embeddings: it has no weights of its own to train alone.
TIED_HEAD_TASKS = ("causal_lm", "seq2seq")
SHARDED_STRATEGIES = ("ddp", "fsdp", "deepspeed")


def expand(pattern: str) -> list[str]:
    """The plain dotted prefixes a pattern stands for (ranges expanded). Raises ValueError on a bad pattern."""
    if pattern == ALL_BUT_HEAD:
        return [pattern]
    parts = pattern.split(".")
    if not pattern or any(not p for p in parts):
        raise ValueError("empty name component (leading, trailing or double dot)")
    choices = []
    for part in parts:
        m = RANGE.match(part)
        if m and int(m.group(1)) > int(m.group(2)):
            raise ValueError(f"range {part} runs backwards (write {m.group(2)}-{m.group(1)})")
        choices.append([str(i) for i in range(int(m.group(1)), int(m.group(2)) + 1)] if m else [part])
    return [".".join(c) for c in itertools.product(*choices)]


def matches(name: str, prefix: str) -> bool:
    """Whether the dotted prefix occurs in ``name`` on whole components."""
    return f".{prefix}." in f".{name}."


def _pattern_problems(key: str, patterns: list[str]) -> list[str]:
    problems = []
    for pattern in patterns:
        try:
            expand(str(pattern))
        except ValueError as e:
            problems.append(f"{key}: pattern {str(pattern)!r} is not valid ({e}). Fix: a dotted parameter-name "
                            f"prefix such as `encoder.layer.0-3` or `embeddings`, or `{ALL_BUT_HEAD}`.")
    return problems


def config_problems(finetune: Any, task: str | None, max_epochs: int | None, strategy: Any) -> list[str]:
    """Every problem of a composed `finetune` section (``finetune``: that section; the task name, the
    trainer's max_epochs and strategy decide what applies)."""
    freeze = [str(p) for p in finetune.freeze or []]
    unfreeze = [str(p) for p in finetune.unfreeze or []]
    every = finetune.unfreeze_every_n_epochs
    problems = _pattern_problems("finetune.freeze", freeze) + _pattern_problems("finetune.unfreeze", unfreeze)
    decay = finetune.layerwise_lr_decay
    if decay is not None and not 0.0 < decay <= 1.0:
        problems.append(f"finetune.layerwise_lr_decay={decay} must be in (0, 1] (each layer's lr is this times the "
                        "lr of the layer above). Fix: `finetune.layerwise_lr_decay=0.9`, or null (off).")
    if finetune.head_lr is not None and finetune.head_lr <= 0:
        problems.append(f"finetune.head_lr={finetune.head_lr} must be > 0. Fix: `finetune.head_lr=1e-3`, or null "
                        "(the head trains at optimizer.lr).")
    if task in TIED_HEAD_TASKS:
        why = (f"does not apply to task={task}: its head is the LM head, tied to the input embeddings, so it "
               "has no weights of its own")
        if ALL_BUT_HEAD in freeze or ALL_BUT_HEAD in unfreeze:
            problems.append(f"finetune.freeze/unfreeze `{ALL_BUT_HEAD}` {why}. Fix: freeze by name "
                            "instead, e.g. `finetune.freeze=[transformer.wte,transformer.h.0]` (GPT-2).")
        if finetune.head_lr is not None:
            problems.append(f"finetune.head_lr={finetune.head_lr} {why}. Fix: `finetune.head_lr=null`.")
    if every < 1:
        problems.append(f"finetune.unfreeze_every_n_epochs={every} must be >= 1. Fix: "
                        "`finetune.unfreeze_every_n_epochs=1`.")
    elif unfreeze and max_epochs is not None and max_epochs >= 0 and len(unfreeze) * every >= max_epochs:
        last = len(unfreeze) * every
        problems.append(f"finetune.unfreeze: the last pattern ({unfreeze[-1]}) unfreezes at epoch {last} "
                        f"(pattern i at epoch i x finetune.unfreeze_every_n_epochs={every}), never reached with "
                        f"trainer.max_epochs={max_epochs}. Fix: `trainer.max_epochs={last + 1}`, fewer patterns "
                        "or a smaller finetune.unfreeze_every_n_epochs.")
    if unfreeze and not freeze:
        problems.append("finetune.unfreeze is set but finetune.freeze is empty: there is nothing to "
                        "unfreeze. Fix: freeze those parameters first, e.g. `finetune.freeze=[all_but_head]`.")
    if unfreeze and any(s in str(strategy).lower() for s in SHARDED_STRATEGIES):
        problems.append(f"finetune.unfreeze does not work with trainer.strategy={strategy}: DDP/FSDP only "
                        "synchronise parameters that were trainable when training started. Fix: a single-device "
                        "trainer, or freezing without unfreezing.")
    return problems
