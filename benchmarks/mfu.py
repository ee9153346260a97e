"""Close to the limit: the machine's dense matmul peak, and MiniLM fine-tuning's model FLOP utilisation (MFU).

    python benchmarks/mfu.py            # 40 steps per variant, all variants (~8 min quiet, 2-3 of them compiling)
    python benchmarks/mfu.py --quick    # 4 steps (bf16: 1), no torch.compile: a smoke run

1. Peak: torch.mm FLOP/s (2·M·K·N per product) for the shapes of a MiniLM step (M = batch tokens, K/N = 384 and
   1536), the fastest shape; bf16 on the same shapes. Sampled between the training steps: at every timed batch,
   beside the variants' steps and in their rotation, each shape is multiplied twice (the first product may find
   its operands evicted by a step) and the fastest counts; the peak is the median of these samples. So the peak
   and the steps it divides see the same machine speed: on a shared host it drifts (seen: the fp32 peak 323
   GFLOP/s at one time, 196 twenty minutes later), and a peak measured apart from the steps then inflates or
   deflates every MFU. Before and after the steps the peak is also measured on its own (best of --mm-repeats,
   plus a 2048² square in fp32) and printed as info.
2. MFU: SST-2 training steps of MiniLM on lmlab's length-grouped batches (from lmlab's datamodule, collated
   once; data loading excluded) in a plain PyTorch loop (forward, backward, clip, optimizer and schedule from the
   task module's configure_optimizers: lmlab's fused AdamW; overhead.py measures lmlab's Trainer within ~1-2 %
   of such a loop). Model FLOPs per step = 6·params·tokens + attention 12·layers·hidden·Σ
   seq_len² (forward + backward of QKᵀ and AV), tokens = the padded tokens computed. MFU = achieved model
   FLOP/s / peak, with the non-embedding params: MiniLM's 11.7M-param embedding table (half its params) is
   looked up, not multiplied (a classifier has no output softmax over the vocabulary), so counting it would
   credit the step with FLOPs it never runs; that figure is printed as info. A bf16 variant is measured against
   the bf16 peak (its matmuls run in bf16), not the fp32 one.
3. Variants, each from the same initial weights, seed and batches, their steps interleaved: eager fp32 (torch's
   default threads), eager fp32 with 1 thread, bf16 autocast (all steps with native bf16; without it at most
   --bf16-steps: slow), torch.compile in fp32 and under bf16 autocast (compile time excluded, printed). Eager
   variants use lmlab's default CPU dropout
   (model.cpu_dropout=fast); the *_torch_dropout ones torch's own (model.cpu_dropout=torch), and compiled
   graphs inductor's, as in `lmlab train`. Each one's losses are compared with eager fp32's: equal for the same
   dropout masks, within dropout's noise for other masks (max relative loss difference, and the mean loss).
4. torch.profiler: the top ops of six eager fp32 steps (the first timed ones), by self CPU time.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import _common as c

VARIANTS = ("eager_fp32", "eager_fp32_torch_dropout", "eager_fp32_1thread", "bf16_autocast", "bf16_torch_dropout",
            "compile_fp32", "compile_bf16")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=None, help="timed steps per variant (default 40; quick 4)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first, compile included (default 3; quick 2)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--variants", default=None, help=f"comma list of {VARIANTS} (quick: no compile)")
    p.add_argument("--mm-repeats", type=int, default=None, help="timed repeats per matmul shape (default 20)")
    p.add_argument("--bf16-steps", type=int, default=None,
                   help="timed steps of the bf16 variants at most (default: all with native bf16, else 6; quick 1)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run of the script")
    args = p.parse_args(argv)
    args.steps = args.steps or (4 if args.quick else 40)
    args.warmup = args.warmup if args.warmup is not None else (2 if args.quick else 3)
    if not args.bf16_steps:
        from lmlab.precision import native_cpu_bf16

        args.bf16_steps = 1 if args.quick else args.steps if native_cpu_bf16() else 6
    args.mm_repeats = args.mm_repeats or (3 if args.quick else 20)
    default = [v for v in VARIANTS if not v.startswith("compile")] if args.quick else VARIANTS
    args.variants = args.variants.split(",") if args.variants else list(default)
    return args


# -- 1. matmul peak -----------------------------------------------------------------------------------------

def timed_mm_flops(a: Any, b: Any, repeats: int) -> float:
    """FLOP/s (2·M·K·N per product) of the fastest of ``repeats`` timed ``a @ b``."""
    import torch

    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * a.shape[0] * a.shape[1] * b.shape[1] / best


def matmul_flops(m: int, k: int, n: int, dtype: Any, repeats: int) -> float:
    import torch

    a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
    for _ in range(2):
        torch.mm(a, b)
    return timed_mm_flops(a, b, repeats)


def model_shapes(tokens: int, hidden: int, ffn: int) -> list[tuple[int, int, int]]:
    """(M, K, N) of a MiniLM step's products: attention projections, FFN up and down."""
    return [(tokens, hidden, hidden), (tokens, hidden, ffn), (tokens, ffn, hidden)]


class PeakProbe:
    """The matmul peak sampled between training steps: ``sample()`` times each shape twice (the first product
    may find its operands evicted from cache by the step before it) and records the fastest shape's FLOP/s."""

    def __init__(self, shapes: list[tuple[int, int, int]], dtype: Any):
        import torch

        gen = torch.Generator().manual_seed(0)  # the variants' RNG streams stay untouched
        self.pairs = [(torch.randn(m, k, generator=gen).to(dtype), torch.randn(k, n, generator=gen).to(dtype))
                      for m, k, n in shapes]
        self.samples: list[float] = []

    def sample(self) -> None:
        self.samples.append(max(timed_mm_flops(a, b, repeats=2) for a, b in self.pairs))


def matmul_peak(tokens: int, hidden: int, ffn: int, repeats: int) -> tuple[float, float]:
    """(fp32 peak over the shapes, bf16 peak over the model's shapes). bf16 gets fewer repeats and no 2048²
    square: on a CPU without native bf16 matmul (AVX2 only) it is ~25x slower than fp32."""
    import torch

    shapes = [*model_shapes(tokens, hidden, ffn), (2048, 2048, 2048)]
    peaks = {}
    for dtype, dtype_shapes, n_repeats in ((torch.float32, shapes, repeats),
                                           (torch.bfloat16, shapes[:3], min(repeats, 5))):
        for m, k, n in dtype_shapes:
            flops = matmul_flops(m, k, n, dtype, n_repeats)
            print(f"  mm {str(dtype)[6:]} {m}x{k} @ {k}x{n}: {flops / 1e9:.1f} GFLOP/s", flush=True)
            peaks[dtype] = max(peaks.get(dtype, 0.0), flops)
    return peaks[torch.float32], peaks[torch.bfloat16]


# -- 2./3. training steps -----------------------------------------------------------------------------------

def build(args: argparse.Namespace, workdir: Path) -> tuple[Any, list[dict]]:
    """lmlab's SST-2 task module on MiniLM and one epoch of its grouped training batches (as overhead.py builds
    them)."""
    import lightning as L

    import overhead
    from lmlab.builders import build_task_module, build_tokenizer
    from lmlab.run_dir import plain_config

    ns = SimpleNamespace(model="minilm", seed=args.seed, batch_size=args.batch_size)
    n = args.steps + args.warmup
    # torch's dropout here; each variant swaps in lmlab's CPU dropout on its own copy (Step) where lmlab would
    cfg = overhead.compose_config(overhead.overrides_for(ns, n, **{"model.cpu_dropout": "torch"}), workdir)
    L.seed_everything(args.seed, workers=True, verbose=False)
    tokenizer = build_tokenizer(cfg)
    datamodule, batches = overhead.train_batches(cfg, tokenizer)
    module = build_task_module(cfg, plain_config(cfg), datamodule.label_names)
    return module, batches


def model_flops(model: Any, batches: list[dict]) -> tuple[float, float]:
    """(model FLOPs with all params, with non-embedding params) for one pass over ``batches``."""
    cfg = model.config
    params = sum(p.numel() for p in model.parameters())
    embed = sum(p.numel() for n, p in model.named_parameters() if "embeddings" in n)
    tokens = sum(b["input_ids"].numel() for b in batches)
    attention = sum(12 * cfg.num_hidden_layers * cfg.hidden_size * b["input_ids"].shape[0] * b["input_ids"].shape[1] ** 2
                    for b in batches)
    return 6 * params * tokens + attention, 6 * (params - embed) * tokens + attention


class Step:
    """One training step of a fresh copy of the task module's model, as lmlab runs it: forward (optionally
    compiled / under autocast), backward, norm clipping at 1.0, the optimizer and schedule of the module's
    configure_optimizers (sized to ``n_steps``), zero_grad."""

    def __init__(self, module: Any, n_steps: int, compile_: bool = False, autocast: Any = None,
                 fast_dropout: bool = False):
        import torch

        import overhead
        from lmlab.techniques.cpu_dropout import use_fast_cpu_dropout

        copy_ = overhead.module_copy(module)
        if fast_dropout:
            use_fast_cpu_dropout(copy_.model)
        self.model = copy_.model.train()
        self.optimizer, self.scheduler = overhead.task_optimizer(copy_, n_steps)
        # dynamic=True: one graph for every batch length (grouped batches vary), not a recompile per new shape
        self.forward = torch.compile(self.model, dynamic=True) if compile_ else self.model
        self.autocast = autocast or contextlib.nullcontext()

    def __call__(self, batch: dict) -> float:
        """Runs the step; returns its loss."""
        import torch

        with self.autocast:
            loss = self.forward(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.item()


def run_variants(names: list[str], module: Any, batches: list[dict], args: argparse.Namespace,
                 probes: dict[str, PeakProbe]) -> dict[str, dict]:
    """Train a fresh copy of the module's model per variant on the same batches, steps interleaved: at each batch
    every variant runs its step (the order rotated from batch to batch), so all of them see the same machine speed
    (on a shared 2-core machine the speed drifts by 10-20 % over minutes). Each variant keeps its own RNG stream,
    so its dropout masks are those it would draw running alone. Timings of the last ``args.steps`` steps.
    ``probes`` ("fp32", "bf16") sample the matmul peak in the same rotation at every timed batch (bf16: while a
    bf16 variant still steps)."""
    import torch

    threads = torch.get_num_threads()
    torch.manual_seed(args.seed)
    seeded = torch.get_rng_state()
    runs = {}
    for name in names:
        compile_ = name.startswith("compile")
        step = Step(module, len(batches), compile_=compile_,
                    autocast=torch.autocast("cpu", dtype=torch.bfloat16) if "bf16" in name else None,
                    fast_dropout=not compile_ and not name.endswith("torch_dropout"))
        # bf16 without native support is slow: a few timed steps are enough to see it
        limit = args.warmup + min(args.steps, args.bf16_steps) if "bf16" in name else len(batches)
        runs[name] = {"step": step, "rng": seeded.clone(), "limit": limit, "losses": [], "times": [],
                      "threads": 1 if name.endswith("1thread") else threads}
    bf16_limit = max([r["limit"] for name, r in runs.items() if "bf16" in name], default=0)
    order = [*names, "peak"]
    try:
        for i, batch in enumerate(batches):
            for name in order[i % len(order):] + order[: i % len(order)]:
                if name == "peak":
                    if i >= args.warmup:
                        torch.set_num_threads(threads)  # not the 1-thread variant's setting
                        probes["fp32"].sample()
                        if i < bf16_limit:
                            probes["bf16"].sample()
                    continue
                r = runs[name]
                if i >= r["limit"]:
                    continue
                torch.set_rng_state(r["rng"])
                torch.set_num_threads(r["threads"])
                t = time.perf_counter()
                r["losses"].append(r["step"](batch))
                r["times"].append(time.perf_counter() - t)
                r["rng"] = torch.get_rng_state()
    finally:
        torch.set_num_threads(threads)
    return {name: {"losses": r["losses"], "times": r["times"], "warmup_s": sum(r["times"][: args.warmup]),
                   "timed_s": sum(r["times"][args.warmup:])} for name, r in runs.items()}


def profile_top_ops(module: Any, batches: list[dict], warmup: int, rows: int = 14) -> None:
    """torch.profiler's top ops over the first six timed steps (after ``warmup`` untimed ones)."""
    from torch.profiler import ProfilerActivity, profile

    step = Step(module, len(batches), fast_dropout=True)
    for batch in batches[:warmup]:  # the first steps fault in fresh memory (optimizer state, gradients)
        step(batch)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for batch in batches[warmup:warmup + 6]:
            step(batch)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows), flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    c.set_environment()
    c.quiet()
    # What `lmlab train` does first: large tensors (the 47 MB embedding gradient) come from the heap instead of a
    # fresh mmap faulted in page by page every step (without it, zero-filling that gradient took ~20 % of a step).
    from lmlab.app import keep_large_allocations_on_the_heap

    heap = keep_large_allocations_on_the_heap()
    import torch

    c.header("MFU: matmul peak and MiniLM fine-tuning")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="lmlab-bench-mfu-") as tmp:
        module, batches = build(args, Path(tmp))
    model = module.model
    timed = batches[args.warmup:]
    mean_tokens = sum(b["input_ids"].numel() for b in timed) // len(timed)
    print(f"setup: {len(batches)} batches of {args.batch_size} ({args.warmup} untimed), mean {mean_tokens} padded "
          f"tokens per batch, threads {torch.get_num_threads()}, large allocations kept on the heap as in "
          f"`lmlab train`: {'yes' if heap else 'no'}", flush=True)
    shapes = (mean_tokens, model.config.hidden_size, model.config.intermediate_size, args.mm_repeats)
    print("-- 1. dense matmul peak (measured before the training steps, and again after them) --", flush=True)
    before = matmul_peak(*shapes)
    rate_of = {}  # variant -> model FLOP/s (all params), over the batches it ran
    print("-- 2./3. MiniLM training steps, the matmul peak sampled between them --", flush=True)
    probes = {"fp32": PeakProbe(model_shapes(*shapes[:3]), torch.float32),
              "bf16": PeakProbe(model_shapes(*shapes[:3]), torch.bfloat16)}
    results = run_variants(args.variants, module, batches, args, probes)
    print("-- 1. dense matmul peak, again --", flush=True)
    after = matmul_peak(*shapes)
    # The peak the MFU divides by is the one sampled between the steps: the same machine speed as the steps (a
    # peak measured apart, on a host whose speed drifts, moved MFU by up to ~0.1 here).
    peak = statistics.median(probes["fp32"].samples)
    bf16 = statistics.median(probes["bf16"].samples) if probes["bf16"].samples else max(before[1], after[1])
    for dtype, probe, value, alone in (("fp32", probes["fp32"], peak, (before[0], after[0])),
                                       ("bf16", probes["bf16"], bf16, (before[1], after[1]))):
        sampled = (f"median of {len(probe.samples)} samples between the steps, range "
                   f"{min(probe.samples) / 1e9:.1f}..{max(probe.samples) / 1e9:.1f}" if probe.samples
                   else "no bf16 step timed: best of before/after")
        c.result(f"matmul_peak_{dtype}_gflops", f"{value / 1e9:.1f}",
                 f"{'' if dtype == 'fp32' else 'info: '}fastest model shape, {sampled}; measured alone before/after "
                 f"the steps: {alone[0] / 1e9:.1f} / {alone[1] / 1e9:.1f}")
    for name, r in results.items():
        ran = timed[: len(r["times"]) - args.warmup]
        r["flops"], r["flops_nonembed"] = model_flops(model, ran)
        r["samples"] = len(ran) * args.batch_size
        rate_of[name] = rate = r["flops"] / r["timed_s"]
        print(f"  {name}: {r['samples'] / r['timed_s']:.1f} samples/s, {rate / 1e9:.1f} model "
              f"GFLOP/s, warm-up {r['warmup_s']:.1f} s", flush=True)
    base = results[args.variants[0]]
    base_rate = rate_of[args.variants[0]]
    mfu_of = {}  # variant -> non-embedding MFU against the peak of the dtype its matmuls run in
    for name, r in results.items():
        dtype_peak, dtype = (bf16, "bf16") if "bf16" in name else (peak, "fp32")
        mfu_of[name] = r["flops_nonembed"] / r["timed_s"] / dtype_peak
        c.result(f"mfu_{name}", f"{mfu_of[name]:.3f}",
                 f"goal >= 0.50; non-embedding params vs the {dtype} peak; counting the embedding table too: "
                 f"{rate_of[name] / dtype_peak:.3f}; {rate_of[name] / base_rate:.2f}x the speed of {args.variants[0]}")
        diff = max(abs(a - b) / max(abs(b), 1e-8) for a, b in zip(r["losses"], base["losses"], strict=False))
        mean = sum(r["losses"]) / len(r["losses"])
        c.result(f"loss_max_rel_diff_{name}", f"{diff:.2e}",
                 f"info: vs {args.variants[0]}, {len(r['losses'])} steps; mean loss {mean:.4f}")
    best, fastest = max(mfu_of, key=mfu_of.get), max(rate_of, key=rate_of.get)
    c.result("mfu_best", f"{mfu_of[best]:.3f}", f"goal >= 0.50; {best}")
    c.result("fastest_variant", fastest, f"info: {rate_of[fastest] / base_rate:.2f}x the speed of {args.variants[0]}")
    from lmlab.precision import auto_precision

    auto = auto_precision("cpu")[0]
    default = "bf16_autocast" if auto == "bf16-mixed" else "eager_fp32"
    if default in mfu_of:
        c.result("mfu_default", f"{mfu_of[default]:.3f}",
                 f"info: {default}, what `lmlab train` runs here (trainer.precision=auto -> {auto})")
    print(f"-- 4. torch.profiler, 6 eager fp32 steps after {args.warmup}, top ops by self CPU time --", flush=True)
    profile_top_ops(module, batches, args.warmup)
    print(f"load average at end: {c.load_avg()}; total time {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
