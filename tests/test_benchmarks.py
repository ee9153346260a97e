"""The benchmark scripts: they parse their arguments, and run_all.py collects `name: value (goal)` lines.
No timings are asserted (figures come from benchmarks/run_all.py and are recorded in BENCHMARKS.md)."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tests.conftest import REPO, cli_env

BENCH = REPO / "benchmarks"
SCRIPTS = ["run_all.py", "startup.py", "overhead.py", "hf_trainer.py", "mfu.py", "inference.py", "corpus.py",
           "gpu_clm.py", "cache_probe.py"]


def bench_module(name: str) -> Any:
    """A module of benchmarks/, imported as its scripts import each other (benchmarks/ on sys.path)."""
    sys.path.insert(0, str(BENCH))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCH))


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_has_quick_mode(script: str) -> None:
    proc = subprocess.run([sys.executable, str(BENCH / script), "--help"], capture_output=True, text=True,
                          env=cli_env(), timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "--quick" in proc.stdout


@pytest.mark.slow  # two torch imports: ~15 s quiet, over a minute on a busy machine
def test_run_all_collects_figure_lines(tmp_path: Path) -> None:
    """gpu_clm.py through run_all.py: on CPU its figure is the skip line; with CUDA a measured MFU."""
    log = tmp_path / "bench.log"
    proc = subprocess.run([sys.executable, str(BENCH / "run_all.py"), "--quick", "--only", "gpu", "--log", str(log)],
                          capture_output=True, text=True, env=cli_env(), timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = proc.stdout.split("== summary ==", 1)[1].splitlines()
    assert summary[1].startswith("# gpu (")
    figure = next(line for line in summary if line.startswith("gpu_gpt2_small_mfu: "))
    assert figure.endswith("(goal >= 0.45 on an H100)") or "vs nominal" in figure or "measured peak" in figure
    if "cuda device: none" in proc.stdout:
        assert figure == "gpu_gpt2_small_mfu: skipped: no CUDA device (goal >= 0.45 on an H100)"
    assert "gpu_clm.py --quick" in log.read_text()


@pytest.mark.slow  # ~25 s: a real `lmlab train` (tokenizer, aot_eager compile) plus the plain loop
def test_gpu_benchmark_runs_both_programs_end_to_end_on_cpu(tmp_path: Path) -> None:
    """gpu_clm.py --cpu-smoke: the GPU benchmark's two programs at toy sizes, so its first run on a lent GPU does not
    fail on a script error. The lmlab run must have used every setting the figure is about."""
    proc = subprocess.run([sys.executable, str(BENCH / "gpu_clm.py"), "--cpu-smoke"], capture_output=True, text=True,
                          env=cli_env(OMP_NUM_THREADS="1"), timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert ("precision bf16-mixed, attn_implementation sdpa, compiled yes (backend aot_eager), AdamW fused=True, "
            "callbacks non_finite, lr_monitor, bench_clock") in proc.stdout
    figures = dict(line.split(": ", 1) for line in proc.stdout.splitlines() if line.startswith("gpu_"))
    for name in ("gpu_lmlab_tokens_per_s", "gpu_plain_tokens_per_s"):
        assert float(figures[name].split()[0]) > 0, figures[name]
    assert 0.05 < float(figures["gpu_lmlab_vs_plain_throughput"].split()[0]) < 20
    assert figures["gpu_gpt2_small_mfu"].startswith("n/a (CPU smoke run)")


def test_cpu_seconds_of_a_process_tree_count_each_process_once() -> None:
    """A child that burns ~1 CPU second and exits must add ~1 s, not 2 (its parent's children_* fields repeat it)."""
    PeakRSS = bench_module("_common").PeakRSS
    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 1.0: pass\n"
    parent = f"import subprocess, sys, time\nsubprocess.run([sys.executable, '-c', {burn!r}])\ntime.sleep(0.3)\n"
    proc = subprocess.Popen([sys.executable, "-c", parent])
    with PeakRSS(proc.pid) as meter:
        proc.wait(timeout=60)
    assert 0.9 <= meter.cpu_s <= 1.6, meter.cpu_s


def test_overhead_floor_shrinks_the_recipe_model_and_names_its_figures_apart(tmp_path: Path) -> None:
    """--floor: batch 2, 120 steps, 4 rounds, no padding part, the recipe's model at width 8 (composed for real),
    figures tagged ``<task>_floor_``; refused for the MiniLM recipes, whose model is pretrained."""
    sys.path.insert(0, str(BENCH))
    try:
        import overhead
    finally:
        sys.path.remove(str(BENCH))
    args = overhead.parse_args(["--task", "seq2seq", "--floor"])
    assert (args.batch_size, args.steps, args.rounds, args.pad_steps) == (2, 120, 4, 0)
    assert overhead.figure_prefix(args) == "seq2seq_floor_"
    assert overhead.figure_prefix(overhead.parse_args(["--task", "seq2seq"])) == "seq2seq_"
    overrides = overhead.overrides_for(args, args.steps)
    assert "model.from_config.d_model=8" in overrides and "data.batch_size=2" in overrides
    assert "data.limit_train_samples=240" in overrides
    from hydra.core.hydra_config import HydraConfig

    try:
        cfg = overhead.compose_config(overrides, tmp_path)
    finally:
        HydraConfig.instance().cfg = None  # compose_config sets it as a run would; later tests start clean
    assert (cfg.model.from_config.d_model, cfg.model.from_config.num_layers, cfg.data.batch_size) == (8, 1, 2)
    with pytest.raises(SystemExit):
        overhead.parse_args(["--task", "sst2", "--floor"])


def test_overhead_in_bf16_runs_both_paths_in_autocast_to_identical_weights(tmp_path: Path) -> None:
    """--precision bf16-mixed: Lightning's bf16-mixed (with the fused AdamW, clipping and no NaN guard: callbacks=none)
    and the plain loop's autocast compute the same training, to the bit; its figures are named bf16_*."""
    proc = subprocess.run([sys.executable, str(BENCH / "overhead.py"), "--quick", "--model", "tiny_bert",
                           "--precision", "bf16-mixed", "--pad-steps", "0"], capture_output=True, text=True,
                          env=cli_env(), timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "precision bf16-mixed" in proc.stdout
    assert "bf16_weights_max_abs_diff_after_round1: 0.00e+00 (" in proc.stdout
    assert "\nbf16_lightning_overhead_pct: " in proc.stdout and "\nlightning_overhead_pct: " not in proc.stdout


def test_overhead_with_the_train_callbacks_keeps_identical_weights_and_names_its_figures_apart(tmp_path: Path) -> None:
    """--callbacks train: the Lightning path runs with the callbacks and CSV logger `lmlab train` runs every step
    (the NaN guard's gradient norm then does the clipping) and still trains exactly as the plain loop does."""
    proc = subprocess.run([sys.executable, str(BENCH / "overhead.py"), "--quick", "--model", "tiny_bert",
                           "--callbacks", "train", "--pad-steps", "0"], capture_output=True, text=True,
                          env=cli_env(), timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert ("lightning path: callbacks non_finite, resume_state, preemption, lr_monitor (+ the benchmark's timer), "
            "logger csv (--callbacks train)") in proc.stdout
    assert "callbacks_weights_max_abs_diff_after_round1: 0.00e+00 (" in proc.stdout
    assert "\ncallbacks_lightning_overhead_pct: " in proc.stdout and "\nlightning_overhead_pct: " not in proc.stdout


def test_mfu_interleaves_variants_each_on_its_own_dropout_stream(tmp_path: Path) -> None:
    """Variants run their steps interleaved (same machine speed for all); each keeps its RNG stream, so the 1-thread
    variant draws eager fp32's masks (losses equal up to summation order), while torch's dropout draws others."""
    proc = subprocess.run([sys.executable, str(BENCH / "mfu.py"), "--quick", "--mm-repeats", "1",
                           "--variants", "eager_fp32,eager_fp32_1thread,eager_fp32_torch_dropout"],
                          capture_output=True, text=True, env=cli_env(OMP_NUM_THREADS="2"), timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    figures = dict(line.split(": ", 1) for line in proc.stdout.splitlines() if line.startswith("loss_max_rel_diff_"))
    same = float(figures["loss_max_rel_diff_eager_fp32_1thread"].split()[0])
    other = float(figures["loss_max_rel_diff_eager_fp32_torch_dropout"].split()[0])
    assert same < 1e-5 and other > 1e-3, figures
    assert "mfu_eager_fp32_torch_dropout: " in proc.stdout
    # the peak MFU divides by is sampled between the steps (one sample per timed batch: --quick times 4), the
    # median counts; the peak measured alone before and after the steps is printed beside it
    line = next(x for x in proc.stdout.splitlines() if x.startswith("matmul_peak_fp32_gflops: "))
    match = re.search(r"median of (\d+) samples between the steps, range ([\d.]+)\.\.([\d.]+);", line)
    assert match and int(match[1]) == 4, line
    peak, low, high = float(line.split()[1]), float(match[2]), float(match[3])
    assert 0 < low <= peak <= high, line
    before, after = (float(v) for v in line.rsplit(": ", 1)[1].rstrip(")").split(" / "))
    assert min(before, after) > 0, line
    mfu = float(next(x for x in proc.stdout.splitlines() if x.startswith("mfu_eager_fp32: ")).split()[1])
    flops = float(re.search(r"eager_fp32: [\d.]+ samples/s, ([\d.]+) model GFLOP/s", proc.stdout)[1])
    counted = float(re.search(r"mfu_eager_fp32: .*counting the embedding table too: ([\d.]+);", proc.stdout)[1])
    assert abs(counted - flops / peak) < 0.002, (counted, flops, peak)  # every MFU divides by that peak
    assert 0 < mfu < counted


def test_mfu_samples_the_peak_with_the_default_threads_even_after_the_one_thread_variant(monkeypatch) -> None:
    """The peak probe runs in the variants' rotation; the 1-thread variant sets torch to one thread for its step, and
    a probe right after it must not measure a one-thread peak (which would double every MFU)."""
    import torch

    mfu = bench_module("mfu")

    class NoStep:  # the variants' steps are not what this checks
        def __init__(self, *args: object, **kwargs: object) -> None:
            pass

        def __call__(self, batch: dict) -> float:
            return 0.0

    threads_at_sample: list[int] = []

    class Probe:
        samples: list[float] = []

        def sample(self) -> None:
            threads_at_sample.append(torch.get_num_threads())

    monkeypatch.setattr(mfu, "Step", NoStep)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        args = SimpleNamespace(seed=0, warmup=1, steps=4, bf16_steps=4)
        mfu.run_variants(["eager_fp32_1thread"], None, [{}] * 5, args, {"fp32": Probe(), "bf16": Probe()})
    finally:
        torch.set_num_threads(before)
    assert threads_at_sample == [2, 2, 2, 2]  # one per timed batch, each with the default threads
