"""Optimizer parameter groups for `finetune`: layer-wise lr decay (LLRD), a head lr, and gradual unfreezing.

With L transformer layers numbered k = 0 (bottom) .. L-1 (top) and decay d (ELECTRA's layer-wise decay):

    head (parameters outside model.base_model)        finetune.head_lr, else lr
    body parameters in no layer (pooler, final norm)   lr
    layer k                                            lr * d ** (L - k)
    embeddings                                         lr * d ** (L + 1)

Layers are found by name: ``...layer.N`` (BERT), ``h.N`` (GPT-2), ``block.N`` (T5), ``layers.N``. Several stacks
(T5's encoder.block and decoder.block) are stacked in the order they appear: the decoder sits above the encoder.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from lmlab.techniques.freezing import body_names

LAYER = re.compile(r"(?:^|\.)(?:layers?|h|blocks?)\.(\d+)(?:\.|$)")
EMBEDDING = re.compile(r"(?:^|\.)(?:embeddings?|wte|wpe|shared|embed_tokens|embed_positions)(?:\.|$)")
MODEL_PREFIX = "model."


def layer_depths(names: list[str]) -> tuple[dict[str, int], int]:
    """(name -> layer number counted from the bottom over all stacks, number of layers L)."""
    stacks: dict[str, set[int]] = {}
    where: dict[str, tuple[str, int]] = {}
    for name in names:
        m = LAYER.search(name)  # leftmost: T5's encoder.block.0.layer.1 is block 0
        if m:
            stack, index = name[:m.start()], int(m.group(1))
            stacks.setdefault(stack, set()).add(index)
            where[name] = (stack, index)
    offsets, total = {}, 0
    for stack, indices in stacks.items():  # dicts keep first-seen order: bottom stack first
        offsets[stack] = {index: total + rank for rank, index in enumerate(sorted(indices))}
        total += len(indices)
    return {name: offsets[stack][index] for name, (stack, index) in where.items()}, total


def lr_scales(model: torch.nn.Module, decay: float | None) -> dict[str, tuple[str, float | None]]:
    """name (in ``model``) -> (group label, lr multiplier); multiplier None marks the head."""
    names = [n for n, _ in model.named_parameters()]
    body = body_names(model)
    depths, layers = layer_depths([n for n in names if n in body])
    scales: dict[str, tuple[str, float | None]] = {}
    for name in names:
        if name not in body:
            scales[name] = ("head", None)
        elif decay is None:
            scales[name] = ("body", 1.0)
        elif name in depths:
            scales[name] = (f"layer.{depths[name]}", decay ** (layers - depths[name]))
        elif EMBEDDING.search(name):
            scales[name] = ("embeddings", decay ** (layers + 1))
        else:
            scales[name] = ("top", 1.0)
    return scales


def finetune_groups(module: torch.nn.Module, lr: float, weight_decay: float, no_decay: list[str],
                    finetune: dict[str, Any] | None) -> list[dict[str, Any]] | None:
    """Named param groups for ``module`` (a TaskModule: its transformer is ``module.model``), or None when
    `finetune` asks for nothing that needs them (the caller's plain decay/no-decay groups then apply).

    Parameters of ``module`` outside ``module.model`` (e.g. an auxiliary head) count as head. Frozen
    parameters are left out, unless gradual unfreezing will turn them on later."""
    finetune = finetune or {}
    decay, head_lr = finetune.get("layerwise_lr_decay"), finetune.get("head_lr")
    include_frozen = bool(finetune.get("unfreeze"))
    if decay is None and head_lr is None and not include_frozen:
        return None
    scales = lr_scales(module.model, decay)
    groups: dict[str, dict[str, Any]] = {}
    for name, param in module.named_parameters():
        if not (param.requires_grad or include_frozen):
            continue
        inner = name[len(MODEL_PREFIX):] if name.startswith(MODEL_PREFIX) else None
        label, scale = scales.get(inner, ("head", None)) if inner is not None else ("head", None)
        group_lr = (head_lr if head_lr is not None else lr) if scale is None else lr * scale
        plain = any(p in name for p in no_decay)
        key = f"{label}/no_decay" if plain else label
        group = groups.setdefault(key, {"name": key, "params": [], "lr": group_lr,
                                        "weight_decay": 0.0 if plain else weight_decay})
        group["params"].append(param)
    return list(groups.values())
