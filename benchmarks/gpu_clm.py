"""GPU: GPT-2-small causal-LM pretraining through `lmlab train`, bf16 + torch.compile + fused AdamW + SDPA: MFU.

    python benchmarks/gpu_clm.py              # 30 timed steps of 16 x 1024 tokens after 10 warm-up steps, each path
    python benchmarks/gpu_clm.py --quick      # 5 timed steps after 3 warm-up steps
    python benchmarks/gpu_clm.py --cpu-smoke  # the same programs at toy sizes on CPU (checks the script, no figures)

Without a CUDA device (and without --cpu-smoke) it prints "skipped: no CUDA device" and exits 0.

Two programs, one after the other in this run, on the same device:
  lmlab  the real CLI: `lmlab train task=causal_lm model=tiny_gpt2` widened to GPT-2 small (12 layers, hidden 768,
         12 heads, 1,024 positions, vocabulary 50,257: 124M parameters, random init) with
         model.attn_implementation=sdpa, model.compile=true, trainer.precision=bf16-mixed and fused AdamW
         (lr 6e-4, weight decay 0.1, clipping 1.0), on a synthetic text corpus written by this script (throughput
         does not depend on the text; its BPE tokenizer has 2,000 pieces, the model keeps GPT-2's 50,257-row
         embedding and output layer so its FLOPs are GPT-2 small's). Callbacks: the NaN/inf guard and the LR
         monitor of the default set (no checkpoints, no validation), CSV logger. A callback times steps
         warm-up..end with CUDA synchronisation at both ends; compilation happens in the warm-up steps.
  plain  a plain PyTorch loop on the same architecture and settings (torch.compile, autocast bf16, fused AdamW,
         clip_grad_norm_) on random token ids: the reference for what the device gives without a framework.

Model FLOPs per token = 6·params + 12·layers·hidden·seq_len (PaLM appendix B; attention included). MFU is given
against the nominal dense bf16 peak for H100/H200/A100 and against the measured bf16 matmul peak (torch.mm 8192²,
best of 10). Goal: lmlab >= 45 % MFU on an H100.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _common as c

NOMINAL_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}
GPT2_SMALL = {"n_layer": 12, "n_embd": 768, "n_head": 12, "vocab_size": 50257}
TOY = {"n_layer": 2, "n_embd": 64, "n_head": 2, "vocab_size": 2000}  # --cpu-smoke
TOKENIZER_PIECES = 2000


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-size", type=int, default=None, help="sequences per step (default 16; 4 with --cpu-smoke)")
    p.add_argument("--seq-len", type=int, default=None, help="tokens per sequence (default 1024; 64 with --cpu-smoke)")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 30; 5 with --quick, 3 --cpu-smoke)")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed steps incl. compilation (default 10; 3 with --quick, 2 --cpu-smoke)")
    p.add_argument("--no-compile", action="store_true", help="eager mode, both paths (for comparison)")
    p.add_argument("--only", choices=("lmlab", "plain"), default=None, help="run one of the two programs")
    p.add_argument("--quick", action="store_true", help="few steps: a smoke run")
    p.add_argument("--cpu-smoke", action="store_true",
                   help="toy model and sizes on CPU, compile backend aot_eager: checks the script end to end")
    args = p.parse_args(argv)
    smoke = args.cpu_smoke
    args.batch_size = args.batch_size or (4 if smoke else 16)
    args.seq_len = args.seq_len or (64 if smoke else 1024)
    args.steps = args.steps or (3 if smoke else 5 if args.quick else 30)
    args.warmup = args.warmup or (2 if smoke else 3 if args.quick else 10)
    args.arch = TOY if smoke else GPT2_SMALL
    args.backend = "aot_eager" if smoke else "inductor"
    return args


def write_corpus(path: Path, tokens: int, seed: int = 0) -> None:
    """Lines of random made-up words, at least ``tokens`` words (each is at least one token)."""
    rng = random.Random(seed)
    letters = "etaoinshrdlcumwfgypbvk"
    words = ["".join(rng.choice(letters) for _ in range(rng.randint(2, 9))) for _ in range(5000)]
    with path.open("w") as f:
        written = 0
        while written < tokens:
            line = rng.choices(words, k=rng.randint(5, 25))
            f.write(" ".join(line) + "\n")
            written += len(line)


def flops_per_token(params: int, arch: dict[str, int], seq_len: int) -> float:
    return 6 * params + 12 * arch["n_layer"] * arch["n_embd"] * seq_len


def run_lmlab(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """`lmlab train` as a subprocess; returns the StepClock record plus the parameter count from run.json."""
    total = args.warmup + args.steps
    corpus = work / "corpus.txt"
    write_corpus(corpus, int(total * args.batch_size * args.seq_len * 1.1) + 10_000)
    clock = work / "clock.json"
    arch = args.arch
    overrides = [
        "task=causal_lm", "model=tiny_gpt2", "data=tinyshakespeare", f"data.root={work}",
        "data.files.train=corpus.txt", "data.files.validation=corpus.txt", "data.files.test=corpus.txt",
        "data.line_ranges.train=[0.0,0.98]", "data.line_ranges.validation=[0.98,0.99]",
        "data.line_ranges.test=[0.99,1.0]", f"data.max_length={args.seq_len}", f"data.batch_size={args.batch_size}",
        "data.num_workers=2", f"paths.cache_dir={work / 'cache'}",
        f"model.from_config.n_layer={arch['n_layer']}", f"model.from_config.n_embd={arch['n_embd']}",
        f"model.from_config.n_head={arch['n_head']}", f"model.from_config.n_positions={args.seq_len}",
        f"+model.from_config.vocab_size={arch['vocab_size']}",
        f"model.train_tokenizer.vocab_size={TOKENIZER_PIECES}",
        "model.attn_implementation=sdpa", f"model.compile={str(not args.no_compile).lower()}",
        f"model.compile_backend={args.backend}",
        "trainer.precision=bf16-mixed", "optimizer=adamw", "optimizer.fused=true", "optimizer.lr=6e-4",
        "optimizer.weight_decay=0.1", "trainer.gradient_clip_val=1.0",
        f"trainer.max_steps={total}", "trainer.max_epochs=100", "trainer.limit_val_batches=0",
        "trainer.num_sanity_val_steps=0", "trainer.enable_checkpointing=false", "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false", "trainer.log_every_n_steps=10",
        "callbacks=[non_finite,lr_monitor]", "logger=csv", "task.generation.prompts=[]", "test=false",
        "export=false", f"hydra.run.dir={work / 'run'}",
        "+callbacks.bench_clock._target_=_common.step_clock", f"+callbacks.bench_clock.path={clock}",
        f"+callbacks.bench_clock.skip={args.warmup}",
    ]
    proc, wall, _ = c.run_measured(c.lmlab_cmd("train", *overrides), env=c.child_env(), cwd=work)
    record = json.loads(clock.read_text())
    if record["global_step"] != total or record["steps"] != args.steps:
        raise RuntimeError(f"lmlab ran {record['global_step']} steps ({record['steps']} timed), expected {total}")
    record["wall"] = wall
    record["settings"] = settings_of(work / "run")
    record["params"] = count_params(args)  # the architecture the overrides above give the CLI
    return record


def settings_of(run: Path) -> str:
    """What the run's resolved config and log say it used (so a silently dropped override shows)."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(run / "config_resolved.yaml")
    compiled = "model.compile: torch.compile" in (run / "train.log").read_text()
    return (f"precision {cfg.trainer.precision}, attn_implementation {cfg.model.attn_implementation}, "
            f"compiled {'yes' if compiled else 'no'} (backend {cfg.model.compile_backend}), "
            f"AdamW fused={cfg.optimizer.fused}, callbacks {', '.join(cfg.callbacks)}")


def gpt2_config(args: argparse.Namespace) -> Any:
    from transformers import GPT2Config

    return GPT2Config(n_positions=args.seq_len, **args.arch)


def count_params(args: argparse.Namespace) -> int:
    """Parameters of the model (tied input/output embedding counted once), built on the meta device."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(gpt2_config(args))
    return sum(p.numel() for p in model.parameters())


def run_plain(args: argparse.Namespace, device: str) -> dict[str, Any]:
    """The same architecture and settings in a plain loop on random token ids."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(gpt2_config(args), attn_implementation="sdpa").to(device).train()
    params = sum(p.numel() for p in model.parameters())
    step_model = model
    if not args.no_compile:
        step_model = torch.compile(model, backend=args.backend)
    optimizer = torch.optim.AdamW(model.parameters(), lr=6e-4, weight_decay=0.1, fused=True)
    gen = torch.Generator(device=device).manual_seed(0)

    def step() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        ids = torch.randint(0, TOKENIZER_PIECES, (args.batch_size, args.seq_len), device=device, generator=gen)
        with torch.autocast(device, dtype=torch.bfloat16):
            loss = step_model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        return loss

    def sync() -> float:
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    for _ in range(args.warmup):
        step()
    start = sync()
    for _ in range(args.steps):
        loss = step()
    seconds = sync() - start
    return {"seconds": seconds, "steps": args.steps, "tokens": args.steps * args.batch_size * args.seq_len,
            "params": params, "final_loss": float(loss.detach())}


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


def report(name: str, record: dict[str, Any], args: argparse.Namespace, peak: float | None,
           nominal: float | None, device_name: str) -> float:
    """Prints the figures of one program; returns its MFU against the nominal peak (else the measured one)."""
    tokens_s = record["tokens"] / record["seconds"]
    flops = flops_per_token(record["params"], args.arch, args.seq_len) * tokens_s
    c.result(f"gpu_{name}_tokens_per_s", f"{tokens_s:.0f}", f"info: {device_name}, {record['steps']} steps of "
             f"{args.batch_size} x {args.seq_len}, {record['params'] / 1e6:.1f}M params")
    if not peak:  # --cpu-smoke
        return float("nan")
    c.result(f"gpu_{name}_mfu_vs_measured_peak", f"{flops / peak:.3f}", "info")
    return flops / nominal if nominal else flops / peak


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    c.set_environment()
    import torch

    if not torch.cuda.is_available() and not args.cpu_smoke:
        print("gpu_clm: skipped: no CUDA device", flush=True)
        c.result("gpu_gpt2_small_mfu", "skipped: no CUDA device", "goal >= 0.45 on an H100")
        return 0
    c.quiet()
    device = "cpu" if args.cpu_smoke else "cuda"
    c.header("GPU: GPT-2 small causal-LM pretraining, lmlab train vs a plain loop" +
             (" (CPU SMOKE RUN: toy sizes, figures are NOT results)" if args.cpu_smoke else ""))
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    device_name = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
    print(f"device: {device_name}; batch {args.batch_size} x {args.seq_len}, {args.warmup} warm-up + {args.steps} "
          f"timed steps per program, compile={'off' if args.no_compile else args.backend}", flush=True)
    records = {}
    with tempfile.TemporaryDirectory(prefix="lmlab-gpu-") as tmp:
        if args.only in (None, "lmlab"):
            records["lmlab"] = run_lmlab(args, Path(tmp))
            print(f"lmlab train: {records['lmlab']['wall']:.0f} s in all (incl. tokenizer, compile); "
                  f"{records['lmlab']['settings']}", flush=True)
    if args.only in (None, "plain"):
        records["plain"] = run_plain(args, device)
        print(f"plain loop: final loss {records['plain']['final_loss']:.3f}", flush=True)
    peak = bf16_matmul_peak() if device == "cuda" else None
    nominal = next((v for k, v in NOMINAL_BF16.items() if k in device_name), None)
    if peak:
        c.result("gpu_bf16_matmul_peak_tflops", f"{peak / 1e12:.0f}", "measured, torch.mm 8192^2")
    mfu = {name: report(name, rec, args, peak, nominal, device_name) for name, rec in records.items()}
    basis = f"vs nominal dense bf16 {nominal / 1e12:.0f} TFLOP/s" if nominal else "vs the measured peak"
    if "plain" in mfu and peak:
        c.result("gpu_plain_loop_mfu", f"{mfu['plain']:.3f}", f"info: the same model and settings without lmlab; {basis}")
    if "lmlab" in mfu:
        value = f"{mfu['lmlab']:.3f}" if peak else "n/a (CPU smoke run)"
        c.result("gpu_gpt2_small_mfu", value, f"goal >= 0.45 on an H100; lmlab train, {basis}")
    if len(records) == 2:
        rates = {name: rec["tokens"] / rec["seconds"] for name, rec in records.items()}
        c.result("gpu_lmlab_vs_plain_throughput", f"{rates['lmlab'] / rates['plain']:.3f}",
                 "info: tokens/s of lmlab train / of the plain loop; 1.0 = no framework cost")
    return 0


if __name__ == "__main__":
    sys.exit(main())
