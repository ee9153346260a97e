"""Fast dropout on CPU (`model.cpu_dropout: fast`).

torch's CPU dropout draws one 64-bit random number per element, serially, then stores a float noise tensor for
the backward: on 2 cores ``aten::bernoulli_`` alone was 9 % of a MiniLM fine-tuning step in fp32 (torch.profiler,
BENCHMARKS.md). Here one 64-bit draw from torch's generator gives four 16-bit uniforms, each
compared with a threshold; the mask, scaled, is kept for the backward in the input's dtype, as torch keeps it.

Semantics are dropout's: each element is kept with probability 1 - p, where p is rounded to a multiple of 1/65536
(0.1 -> 0.100006), and kept elements are scaled by the exact inverse of that keep probability, so expectations are
unchanged. Masks come from torch's default CPU generator, so ``seed_everything`` and the RNG state saved in
checkpoints make runs reproducible; they are a different stream from torch's own dropout, so losses differ from a
``cpu_dropout: torch`` run with the same seed by the noise of dropout, not by its distribution.

Only CPU tensors in eager mode take this path: on a GPU torch's fused dropout kernel is already fast, and compiled
graphs get inductor's own RNG. Attention-probability dropout happens inside ``scaled_dot_product_attention``,
which falls back to its unfused math path on CPU whenever dropout is on; ``attention`` (registered with
transformers' AttentionInterface) runs that same math path itself with this dropout, and hands every other call
(no dropout: evaluation, prediction; other devices; compiled) to transformers' sdpa function unchanged.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

ATTENTION = "lmlab_cpu_sdpa"  # the name `attention` is registered under with transformers' AttentionInterface
_LEVELS = 1 << 16


def _is_fast_path(x: torch.Tensor) -> bool:
    return x.device.type == "cpu" and not torch.compiler.is_compiling()


def keep_mask(shape: torch.Size | tuple[int, ...], p: float) -> tuple[torch.Tensor, float]:
    """(bool mask of elements kept with probability 1 - p rounded to 1/65536, the scale 1 / that probability)."""
    drop_levels = round(p * _LEVELS)
    n = math.prod(shape)
    # random_(int64 min, None): the full 64-bit range from one random64 draw per element (not 63 bits).
    bits = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-(1 << 63), None)
    uniform16 = bits.view(torch.int16)[:n].view(shape)  # four independent uniforms in [-32768, 32767] per draw
    keep = uniform16 >= drop_levels - _LEVELS // 2  # P(keep) = (65536 - drop_levels) / 65536
    return keep, _LEVELS / (_LEVELS - drop_levels)


class _MaskAndScale(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, p: float) -> torch.Tensor:
        keep, scale = keep_mask(x.shape, p)
        # The scaled mask in x's dtype, as torch keeps its noise: 20 % faster forward + backward than multiplying
        # by the bool mask (a mixed-dtype product casts the mask each time) and scaling apart (measured).
        noise = keep.to(x.dtype).mul_(scale)
        ctx.save_for_backward(noise)
        return x * noise

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (noise,) = ctx.saved_tensors
        return grad * noise, None


def fast_dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """``torch.nn.functional.dropout(x, p, training)``, with the fast mask on CPU in eager mode."""
    if not training or p == 0.0:
        return x
    if p >= 1.0 or not _is_fast_path(x) or round(p * _LEVELS) == 0:
        return nn.functional.dropout(x, p, training)
    return _MaskAndScale.apply(x, p)


class Dropout(nn.Dropout):
    """``nn.Dropout`` with the fast CPU mask (same ``p``, no state: checkpoints are unchanged)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fast_dropout(x, self.p, self.training)


def attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
              attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
              is_causal: bool | None = None, position_bias: torch.Tensor | None = None,
              **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers' sdpa attention; when dropout is on for CPU tensors, SDPA's math path with the fast mask.
    Inputs are (batch, heads, length, head_dim); returns (batch, length, heads, head_dim), as the sdpa function."""
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    if dropout == 0.0 or not _is_fast_path(query) or kwargs.get("softcap") is not None or kwargs.get("s_aux") is not None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, position_bias=position_bias, **kwargs)
    groups = getattr(module, "num_key_value_groups", 1)
    if groups > 1:
        key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    q_len, kv_len = query.shape[2], key.shape[2]
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    scores = torch.matmul(query, key.transpose(2, 3)) * scale
    if position_bias is not None:
        scores = scores + position_bias
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:  # True = attend, as SDPA reads it
            scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + attention_mask
    elif q_len > 1 and (is_causal if is_causal is not None else getattr(module, "is_causal", True)):
        # SDPA's is_causal is aligned to the top left (query i sees keys 0..i), also when keys are longer.
        causal = torch.ones(q_len, kv_len, dtype=torch.bool, device=query.device).tril()
        scores = scores.masked_fill(~causal, torch.finfo(scores.dtype).min)
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    out = torch.matmul(fast_dropout(probs, dropout), value)
    return out.transpose(1, 2).contiguous(), None


def _register_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTENTION, attention)
    # The masks sdpa gets. Without a mask function transformers builds no mask at all for an implementation
    # (it takes it for an external kernel that masks itself): padding would be attended to.
    AttentionMaskInterface.register(ATTENTION, sdpa_mask)


def use_fast_cpu_dropout(model: nn.Module) -> int:
    """Swap every ``nn.Dropout`` in ``model`` for ``Dropout`` and, for models on transformers' sdpa attention,
    switch to ``attention`` (same kernel as sdpa outside CPU training). Returns the number of modules swapped."""
    swapped = 0
    for parent in model.modules():
        for name, child in parent.named_children():
            if type(child) is nn.Dropout:
                setattr(parent, name, Dropout(child.p, child.inplace))
                swapped += 1
    pretrained = next((m for m in model.modules() if hasattr(m, "set_attn_implementation")), None)
    if pretrained is not None and getattr(pretrained.config, "_attn_implementation", None) == "sdpa":
        _register_attention()
        pretrained.set_attn_implementation(ATTENTION)
    log.debug("model.cpu_dropout=fast: %d dropout modules swapped", swapped)
    return swapped

