"""GPU: GPT-2-small causal-LM pretraining throughput and MFU with bf16 autocast + torch.compile + fused AdamW + SDPA.

    python benchmarks/gpu_clm.py            # 30 timed steps of 16 x 1024 tokens after 10 warm-up steps
    python benchmarks/gpu_clm.py --quick    # 5 timed steps after 3 warm-up steps

Without a CUDA device it prints "skipped: no CUDA device" and exits 0.

GPT-2 small (12 layers, hidden 768, 12 heads, vocab 50,257, 124M params) from config (random init),
attn_implementation="sdpa", on random token ids (throughput does not depend on the text), trained by a plain
loop: forward under torch.autocast(bfloat16), backward, clip_grad_norm_(1.0), AdamW(fused=True). The model is
wrapped in torch.compile; compilation happens in the warm-up steps and is excluded. Model FLOPs per token =
6·params + 12·layers·hidden·seq_len (PaLM appendix B; attention included). MFU is given against the measured
bf16 matmul peak (torch.mm 8192², best of 10) and, for an H100, against the nominal dense bf16 peak
(989 TFLOP/s SXM). Goal: >= 45 % MFU on an H100.
"""

from __future__ import annotations

import argparse
import sys
import time

import _common as c

NOMINAL_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 30; quick 5)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps incl. compilation (default 10; quick 3)")
    p.add_argument("--no-compile", action="store_true", help="eager mode (for comparison)")
    p.add_argument("--quick", action="store_true", help="few steps: a smoke run")
    args = p.parse_args(argv)
    args.steps = args.steps or (5 if args.quick else 30)
    args.warmup = args.warmup or (3 if args.quick else 10)
    return args


def bf16_matmul_peak() -> float:
    import torch

    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(10):
        torch.cuda.synchronize()
        t = time.perf_counter()
        a @ b
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return 2 * 8192 ** 3 / best


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    c.set_environment()
    import torch

    if not torch.cuda.is_available():
        print("gpu_clm: skipped: no CUDA device", flush=True)
        c.result("gpu_gpt2_small_mfu", "skipped: no CUDA device", "goal >= 0.45 on an H100")
        return 0
    c.quiet()
    from transformers import AutoModelForCausalLM, GPT2Config

    c.header("GPU: GPT-2 small causal-LM pretraining")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    config = GPT2Config(n_positions=args.seq_len)  # GPT-2 small defaults
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").cuda().train()
    params = sum(p.numel() for p in model.parameters())
    step_model = model if args.no_compile else torch.compile(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=6e-4, weight_decay=0.1, fused=True)
    gen = torch.Generator(device="cuda").manual_seed(0)

    def step() -> float:
        ids = torch.randint(0, config.vocab_size, (args.batch_size, args.seq_len), device="cuda", generator=gen)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = step_model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    t = time.perf_counter()
    for _ in range(args.warmup):
        step()
    torch.cuda.synchronize()
    warm = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    torch.cuda.synchronize()
    seconds = time.perf_counter() - t
    tokens = args.steps * args.batch_size * args.seq_len
    flops = (6 * params + 12 * config.n_layer * config.n_embd * args.seq_len) * tokens / seconds
    peak = bf16_matmul_peak()
    name = torch.cuda.get_device_name(0)
    nominal = next((v for k, v in NOMINAL_BF16.items() if k in name), None)
    print(f"setup: {params / 1e6:.0f}M params, batch {args.batch_size} x {args.seq_len}, warm-up {args.warmup} "
          f"steps ({warm:.1f} s incl. compile), {args.steps} timed steps, final loss {float(loss):.3f}", flush=True)
    c.result("gpu_gpt2_small_tokens_per_s", f"{tokens / seconds:.0f}", f"info: {name}")
    c.result("gpu_bf16_matmul_peak_tflops", f"{peak / 1e12:.0f}", "measured, torch.mm 8192^2")
    c.result("gpu_gpt2_small_mfu_vs_measured_peak", f"{flops / peak:.3f}", "info")
    if nominal:
        c.result("gpu_gpt2_small_mfu", f"{flops / nominal:.3f}",
                 f"goal >= 0.45 on an H100; vs nominal dense bf16 {nominal / 1e12:.0f} TFLOP/s")
    else:
        c.result("gpu_gpt2_small_mfu", f"{flops / peak:.3f}", "goal >= 0.45 on an H100; vs the measured peak")
    return 0


if __name__ == "__main__":
    sys.exit(main())
