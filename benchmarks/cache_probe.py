"""Does Python work between training steps slow the next step's kernels? Evidence for overhead.py's residue.

    python benchmarks/cache_probe.py --task seq2seq      # 24 rounds of 40 steps, ~2 min on 2 cores
    python benchmarks/cache_probe.py --quick             # smoke run

overhead.py finds Lightning's step costs 1.6-1.9 ms more than a plain loop's on the small LM/seq2seq recipes, while
its fixed Python cost (``--floor``: near-zero models) is ~0.8 ms. This probe runs overhead.py's plain loop alone on
the recipe's batches and, before every other step, an untimed piece of pure-Python work about as long as
Lightning's per-step cost (attribute and dict reads over 10k small objects spread through memory, ~0.7 ms). Which steps get it flips
from round to round, so both sets cover the same batches. If the timed steps that follow the Python work are
slower, that work costs the step more than its own duration (caches and branch predictors refilled by the kernels).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

import overhead as ov


class Thing:
    def __init__(self, i: int):
        self.a, self.b, self.c = i, str(i), {"k": i}


THINGS = [Thing(i) for i in range(40_000)]  # every 4th is read: 10k objects spread over ~10 MB


def python_work() -> int:
    """~0.7 ms of interpreter work over many small objects (on the 2-core Intel machine of BENCHMARKS.md)."""
    return sum(t.a + len(t.b) + t.c["k"] for t in THINGS[::4])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", choices=tuple(ov.FLOOR_MODELS), default="seq2seq")
    p.add_argument("--rounds", type=int, default=None, help="rounds of one epoch each (default 24; quick 2)")
    p.add_argument("--quick", action="store_true", help="2 rounds of 8 steps: a smoke run")
    args = p.parse_args(argv)
    rounds = args.rounds or (2 if args.quick else 24)
    oargs = ov.parse_args(["--task", args.task, "--pad-steps", "0", *(["--quick"] if args.quick else [])])
    ov.set_environment()
    import lightning as L

    from lmlab.builders import build_task_module, build_tokenizer
    from lmlab.run_dir import plain_config

    ov.quiet()
    t = time.perf_counter()
    for _ in range(50):
        python_work()
    work_ms = (time.perf_counter() - t) / 50 * 1e3
    with tempfile.TemporaryDirectory(prefix="lmlab-bench-") as tmp:
        cfg = ov.compose_config(ov.overrides_for(oargs, oargs.steps), Path(tmp))
        L.seed_everything(oargs.seed, verbose=False)
        tokenizer = build_tokenizer(cfg)
        datamodule, batches = ov.train_batches(cfg, tokenizer)
        batches = batches[: oargs.steps]
        module = build_task_module(cfg, plain_config(cfg), datamodule.label_names, tokenizer=tokenizer)
    init = copy.deepcopy(module.model.state_dict())
    print(f"task {args.task}: {len(batches)} steps a round, {rounds} rounds; python work between steps "
          f"{work_ms:.2f} ms (untimed)", flush=True)
    diffs = []
    for r in range(rounds):
        loop = ov.PlainLoop(cfg, module, len(batches), init, oargs.seed)
        after_work, plain = [], []
        for i, batch in enumerate(batches):
            worked = (i + r) % 2 == 0
            if worked:
                python_work()
            took = loop.step(batch)
            if i >= oargs.skip:
                (after_work if worked else plain).append(took)
        diffs.append((statistics.mean(after_work) - statistics.mean(plain)) * 1e3)
        print(f"  round {r + 1}: {statistics.mean(plain) * 1e3:.2f} ms a step, "
              f"{statistics.mean(after_work) * 1e3:.2f} ms after python work", flush=True)
    se = statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else float("nan")
    ov.result(f"{args.task}_step_slowdown_after_python_work_ms", f"{statistics.mean(diffs):.2f}",
              f"info: mean over {rounds} rounds, standard error {se:.2f}; the work itself took {work_ms:.2f} ms, untimed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
