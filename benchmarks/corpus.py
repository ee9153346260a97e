"""Corpus scale: preprocess a >= 1 GB text corpus for the masked-LM task, with peak RSS, cores used and MB/s.

    python benchmarks/corpus.py            # 1 GB corpus (built under /tmp, deleted afterwards)
    python benchmarks/corpus.py --quick    # 8 MB and 16 MB corpora: RSS per MB of text, a smoke run

The corpus is every text line under ../shared/data (WikiText-2, Tiny Shakespeare, SST-2, AG News, ...),
shuffled and repeated (reshuffled each time) to --size-mb, written under /tmp. Each measurement is a fresh
process whose whole process tree (datasets' worker processes included) is sampled every 50 ms with psutil:
  1. preprocess   lmlab's masked-LM datamodule (task=masked_lm model=tiny_bert data=wikitext2 with
                  data.files.train = the corpus, blocks of 128 tokens) runs prepare_data() on the train split
                  into an empty cache: wall time, MB/s of text, peak memory (goal <= 2 GB), CPU seconds / wall
                  (goal: both cores, ~2). A tree above --kill-gb is killed and reported (guards the machine).
  2. cache hit    the same again: prepare_data() time inside the process (goal <= 2 s).
  3. training     `lmlab train` on it for --train-steps steps: peak RSS (the tokenized corpus must stay
                  memory-mapped, not loaded into RAM).

Memory is reported two ways, both summed over the process tree at each sample:
  peak_memory_gb  Pss_Anon + Pss_Shmem from /proc/PID/smaps_rollup: the RAM the tree itself holds, each page
                  shared by forked workers counted once (split between them), pages of memory-mapped files
                  (the Arrow data, which the kernel can drop and re-read) left out. The --kill-gb guard uses it.
  peak_rss_gb     the sum of RSS: counts a page shared by the parent and its forked tokenizer workers once
                  per process, and every page of a memory-mapped Arrow file that was read (a corpus's
                  gigabytes), so it overstates what the machine must hold.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _common as c

TEXT_SUFFIXES = (".tokens", ".txt", ".tsv", ".csv", ".en", ".de", ".conll")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size-mb", default=None, help="corpus size(s) in MB, comma list (default 1024; quick 8,16)")
    p.add_argument("--kill-gb", type=float, default=None, help="kill a process tree above this RSS (default 6)")
    p.add_argument("--train-steps", type=int, default=None, help="training steps in part 3 (default 50; quick 5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="small corpora: a smoke run of the script")
    p.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)  # internal: CORPUS_DIR CACHE_DIR
    args = p.parse_args(argv)
    args.size_mb = [int(s) for s in (args.size_mb or ("8,16" if args.quick else "1024")).split(",")]
    args.kill_gb = args.kill_gb or 6.0
    args.train_steps = args.train_steps or (5 if args.quick else 50)
    return args


def source_lines() -> list[str]:
    lines: list[str] = []
    for path in sorted(c.DATA_ROOT.rglob("*")):
        if path.is_file() and path.suffix in TEXT_SUFFIXES:
            lines.extend(line for line in path.read_text(encoding="utf-8", errors="replace").splitlines()
                         if line.strip())
    return lines


def build_corpus(directory: Path, size_mb: int, seed: int) -> Path:
    """train.txt of about ``size_mb`` MB (the shuffled lines, repeated) and a small valid.txt."""
    lines = source_lines()
    rng = random.Random(seed)
    target, written = size_mb * 1024 * 1024, 0
    path = directory / "train.txt"
    with path.open("w", encoding="utf-8") as f:
        while written < target:
            rng.shuffle(lines)
            chunk = "\n".join(lines) + "\n"
            chunk = chunk[: target - written] if written + len(chunk) > target else chunk
            f.write(chunk)
            written += len(chunk)
    (directory / "valid.txt").write_text("\n".join(lines[:2000]) + "\n", encoding="utf-8")
    return path


def overrides(corpus_dir: Path, cache_dir: Path) -> list[str]:
    return ["task=masked_lm", "model=tiny_bert", "data=wikitext2", f"data.root={corpus_dir}",
            "data.files.train=train.txt", "data.files.validation=valid.txt", "data.files.test=null",
            "data.line_ranges.validation=null", "data.max_length=128", "data.limit_train_samples=null",
            f"paths.cache_dir={cache_dir}"]


def private_bytes(pid: int) -> int:
    """Pss_Anon + Pss_Shmem of one process (bytes): its share of the memory no file backs."""
    total = 0
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("Pss_Anon", "Pss_Shmem"):
                total += int(value.split()[0]) * 1024
    return total


class TreeMemory(c.PeakRSS):
    """PeakRSS plus ``peak_private``: the largest tree sum of private_bytes; the kill guard uses that."""

    def __init__(self, pid: int, interval: float = 0.05, kill_above: int | None = None):
        super().__init__(pid, interval, kill_above=None)  # at most 2 % of a core: see PeakRSS
        self.private_limit = kill_above
        self.peak_private = 0

    def _sample(self) -> None:
        import psutil

        super()._sample()
        try:
            procs = [self.proc, *self.proc.children(recursive=True)]
        except psutil.Error:
            return
        total = 0
        for p in procs:
            with contextlib.suppress(OSError, psutil.Error):
                total += private_bytes(p.pid)
        self.peak_private = max(self.peak_private, total)
        if self.private_limit is not None and total > self.private_limit and not self.killed:
            self.killed = True
            for p in reversed(procs):
                with contextlib.suppress(psutil.Error):
                    p.kill()


def run_measured(cmd: list[str], cwd: Path | None = None, kill: int | None = None) -> tuple[Any, float, TreeMemory]:
    """Run ``cmd`` (not checked); (process, wall seconds, its TreeMemory)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=c.child_env(), cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    with TreeMemory(proc.pid, kill_above=kill) as memory:
        out, err = proc.communicate()
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err), time.perf_counter() - start, memory


def cpu_seconds() -> float:
    """CPU seconds of this process and its finished (reaped) children, e.g. datasets' map workers."""
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def worker(corpus_dir: str, cache_dir: str) -> None:
    """prepare_data() of the train split in this process; prints one JSON line."""
    c.set_environment()
    c.quiet()
    import overhead
    from lmlab.builders import build_datamodule, build_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        cfg = overhead.compose_config(overrides(Path(corpus_dir), Path(cache_dir)), Path(tmp))
        tokenizer = build_tokenizer(cfg)
        datamodule = build_datamodule(cfg, tokenizer, splits=("train",))
        start, cpu = time.perf_counter(), cpu_seconds()
        datamodule.prepare_data()
        seconds = time.perf_counter() - start
        print(json.dumps({"prepare_s": seconds, "prepare_cpu_s": cpu_seconds() - cpu,
                          "rows": len(datamodule.datasets["train"]),
                          "cache_hit": datamodule.cache_hits.get("train", False)}), flush=True)


def measure_prepare(corpus_dir: Path, cache_dir: Path, kill: int) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--worker", str(corpus_dir), str(cache_dir)]
    proc, wall, rss = run_measured(cmd, kill=kill)
    out: dict[str, Any] = {"wall_s": wall, "peak_rss": rss.peak, "peak_private": rss.peak_private,
                           "cpu_s": rss.cpu_s, "killed": rss.killed, "sampler_cpu_s": rss.sampler_cpu_s}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 and not rss.killed:
        raise RuntimeError(f"corpus worker exited {proc.returncode}\n{proc.stderr[-4000:]}")
    if lines:
        out.update(json.loads(lines[-1]))
    return out


def measure_training(corpus_dir: Path, cache_dir: Path, steps: int, kill: int) -> dict[str, Any]:
    cmd = c.lmlab_cmd("train", *overrides(corpus_dir, cache_dir), f"trainer.max_steps={steps}",
                      "trainer.limit_val_batches=2", "trainer.num_sanity_val_steps=0", "test=false",
                      "export=false", "trainer.enable_progress_bar=false",
                      f"paths.log_dir={corpus_dir / 'outputs'}")
    proc, wall, rss = run_measured(cmd, cwd=corpus_dir, kill=kill)
    if proc.returncode != 0 and not rss.killed:
        raise RuntimeError(f"lmlab train exited {proc.returncode}\n{proc.stderr[-4000:]}")
    return {"wall_s": wall, "peak_rss": rss.peak, "peak_private": rss.peak_private, "killed": rss.killed}


def gb(n: float) -> str:
    return f"{n / 1024 ** 3:.2f}"


def one_size(args: argparse.Namespace, size_mb: int, root: Path) -> None:
    kill = int(args.kill_gb * 1024 ** 3)
    corpus_dir, cache_dir = root / f"corpus-{size_mb}mb", root / f"cache-{size_mb}mb"
    corpus_dir.mkdir()
    t = time.perf_counter()
    path = build_corpus(corpus_dir, size_mb, args.seed)
    mb = path.stat().st_size / 1024 ** 2
    print(f"  corpus {mb:.0f} MB built in {time.perf_counter() - t:.0f} s: {path}", flush=True)
    first = measure_prepare(corpus_dir, cache_dir, kill)
    tag = f"corpus_{size_mb}mb"
    if first["killed"]:
        c.result(f"{tag}_preprocess_peak_memory_gb", f"> {args.kill_gb:.1f}",
                 f"goal <= 2; killed at {gb(first['peak_private'])} GB after {first['wall_s']:.0f} s")
        return
    c.result(f"{tag}_preprocess_peak_memory_gb", gb(first["peak_private"]),
             "goal <= 2 (whole process tree: anonymous + shared memory, proportional set size)")
    c.result(f"{tag}_preprocess_peak_rss_gb", gb(first["peak_rss"]),
             "goal <= 2 as RSS; sum of RSS over the tree: fork-shared pages once per process, mapped Arrow pages")
    c.result(f"{tag}_preprocess_mb_per_s", f"{mb / first['prepare_s']:.2f}",
             f"info: prepare_data {first['prepare_s']:.1f} s for {first['rows']} blocks of 128 tokens")
    c.result(f"{tag}_preprocess_cores_used", f"{first['prepare_cpu_s'] / first['prepare_s']:.2f}",
             "goal ~2 (CPU s / wall s of prepare_data, its worker processes included)")
    c.result(f"{tag}_preprocess_cores_used_whole_process", f"{first['cpu_s'] / first['wall_s']:.2f}",
             "info: CPU s / wall s of the whole process tree, imports included")
    c.result(f"{tag}_memory_sampler_cores", f"{first['sampler_cpu_s'] / first['wall_s']:.3f}",
             "info: what sampling the tree's memory took, on the same cores (capped at 0.02)")
    second = measure_prepare(corpus_dir, cache_dir, kill)
    c.result(f"{tag}_cache_hit_s", f"{second['prepare_s']:.2f}", f"goal <= 2; cache hit: {second.get('cache_hit')}")
    train = measure_training(corpus_dir, cache_dir, args.train_steps, kill)
    value = f"> {args.kill_gb:.1f}" if train["killed"] else gb(train["peak_rss"])
    c.result(f"{tag}_training_peak_rss_gb", value,
             f"info: lmlab train, {args.train_steps} steps; compare with the corpus size {mb / 1024:.2f} GB "
             f"(peak memory {gb(train['peak_private'])} GB)")
    shutil.rmtree(corpus_dir, ignore_errors=True)
    shutil.rmtree(cache_dir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        worker(*args.worker)
        return 0
    c.set_environment()
    c.header("corpus scale: masked-LM preprocessing")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="lmlab-bench-corpus-", dir="/tmp") as tmp:
        for size in args.size_mb:
            one_size(args, size, Path(tmp))
    print(f"load average at end: {c.load_avg()}; total time {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
