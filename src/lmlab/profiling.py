"""The Trainer's profiler when none is configured (``trainer.profiler: null``).

Lightning wraps every hook call, optimizer step and batch fetch in ``trainer.profiler.profile(name)``; its
default PassThroughProfiler records nothing but still builds a generator-based context manager each time
(~30 a training step). On CPU recipes with short steps that is part of Lightning's fixed per-step cost
(BENCHMARKS.md, overhead.py --floor: 0.12-0.19 ms of ~1 ms a step, 3 of 3 alternating runs). NoOpProfiler
returns one shared, reusable null context instead. A configured profiler (``trainer.profiler=simple``,
``debug=profiler``) is Lightning's own, unchanged.
"""

from __future__ import annotations

import contextlib

from lightning.pytorch.profilers import PassThroughProfiler

_NULL_CONTEXT = contextlib.nullcontext()


class NoOpProfiler(PassThroughProfiler):
    """PassThroughProfiler (a subclass, so Lightning treats it as 'no profiler') without a context per call."""

    def profile(self, action_name: str) -> contextlib.AbstractContextManager:
        return _NULL_CONTEXT
