"""Which floating-point precision a run computes in: ``auto`` (trainer.precision, predict's precision) is
resolved here, once, before a Trainer is built, and the run records what it became (run.json ``precision``)."""

from __future__ import annotations

FP32 = ("32-true", "32", 32)


def native_cpu_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 or AMX): there bf16 matmuls ran 2.0-2.5x faster than
    fp32 (AMD EPYC with avx512_bf16, measured); without it oneDNN emulates bf16 and it is many times slower."""
    import torch

    cpu = torch.cpu
    return any(getattr(cpu, name, lambda: False)() for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


def on_cpu(accelerator: str) -> bool:
    import torch

    return accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available()
                                    and not torch.backends.mps.is_available())


def on_cuda(accelerator: str) -> bool:
    import torch

    return accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()


def missing_accelerator(accelerator: str) -> str | None:
    """Why ``accelerator`` cannot run here (a GPU asked for where torch sees none), with the fix; None when it can.
    Lightning's own error ("No supported gpu backend found!") names neither the setting nor the way out."""
    import torch

    if accelerator == "cuda" or (accelerator == "gpu" and not torch.backends.mps.is_available()):
        if torch.cuda.is_available():
            return None
        build = ("a CPU-only build of torch" if torch.version.cuda is None
                 else f"built for CUDA {torch.version.cuda}, but no device is visible (nvidia-smi, CUDA_VISIBLE_DEVICES)")
        return (f"trainer.accelerator={accelerator}, but torch {torch.__version__} sees no GPU ({build}). Fix: "
                "`trainer.accelerator=cpu` "
                "(or trainer=default: the GPU when there is one, else the CPU; trainer=ddp_sim runs DDP on CPU "
                "processes); for a GPU install torch's CUDA build (README, GPU users).")
    return None


def auto_precision(accelerator: str) -> tuple[str, str]:
    """(precision, why) for ``auto`` on ``accelerator``: bf16 autocast where the hardware multiplies bf16 natively,
    else fp32. Never 16-mixed: fp16 needs loss scaling and can overflow where bf16 (fp32's exponent range) does not."""
    if on_cpu(accelerator):
        if native_cpu_bf16():
            return "bf16-mixed", ("this CPU multiplies bf16 natively (AMX/AVX512-BF16); MiniLM on SST-2 trained "
                                  "1.4x faster with the same accuracy over 3 seeds (BENCHMARKS.md)")
        return "32-true", "this CPU has no native bf16 (emulated bf16 is many times slower than fp32)"
    if on_cuda(accelerator):
        import torch

        if torch.cuda.is_bf16_supported(including_emulation=False):
            return "bf16-mixed", "this GPU has bf16 tensor cores"
        return "32-true", "this GPU has no native bf16 (fp16 would need loss scaling; ask for 16-mixed)"
    return "32-true", f"accelerator {accelerator}: fp32 unless a precision is set"


def concrete(precision: object, accelerator: str) -> object:
    """``precision`` itself, or what ``auto`` becomes on ``accelerator`` (for Lightning, which has no auto)."""
    return auto_precision(accelerator)[0] if str(precision) == "auto" else precision
