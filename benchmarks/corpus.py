"""Corpus scale: preprocess a >= 1 GB text corpus for the masked-LM task, with peak RSS, cores used and MB/s.

    python benchmarks/corpus.py            # 1 GB corpus (built under /tmp, deleted afterwards)
    python benchmarks/corpus.py --quick    # 8 MB and 16 MB corpora: RSS per MB of text, a smoke run

The corpus is every text line under ../shared/data (WikiText-2, Tiny Shakespeare, SST-2, AG News, ...),
shuffled and repeated (reshuffled each time) to --size-mb, written under /tmp. Each measurement is a fresh
process whose whole process tree (datasets' worker processes included) is sampled every 50 ms with psutil:
  1. preprocess   lmlab's masked-LM datamodule (task=masked_lm model=tiny_bert data=wikitext2 with
                  data.files.train = the corpus, blocks of 128 tokens) runs prepare_data() on the train split
                  into an empty cache: wall time, MB/s of text, peak RSS (goal <= 2 GB), CPU seconds / wall
                  (goal: both cores, ~2). A tree above --kill-gb is killed and reported (guards the machine).
  2. cache hit    the same again: prepare_data() time inside the process (goal <= 2 s).
  3. training     `lmlab train` on it for --train-steps steps: peak RSS (the tokenized corpus must stay
                  memory-mapped, not loaded into RAM).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
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
        start = time.perf_counter()
        datamodule.prepare_data()
        seconds = time.perf_counter() - start
        print(json.dumps({"prepare_s": seconds, "rows": len(datamodule.datasets["train"]),
                          "cache_hit": datamodule.cache_hits.get("train", False)}), flush=True)


def measure_prepare(corpus_dir: Path, cache_dir: Path, kill: int) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--worker", str(corpus_dir), str(cache_dir)]
    proc, wall, rss = c.run_measured(cmd, env=c.child_env(), kill_above=kill, check=False)
    out: dict[str, Any] = {"wall_s": wall, "peak_rss": rss.peak, "cpu_s": rss.cpu_s, "killed": rss.killed}
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
    proc, wall, rss = c.run_measured(cmd, env=c.child_env(), cwd=corpus_dir, kill_above=kill, check=False)
    if proc.returncode != 0 and not rss.killed:
        raise RuntimeError(f"lmlab train exited {proc.returncode}\n{proc.stderr[-4000:]}")
    return {"wall_s": wall, "peak_rss": rss.peak, "killed": rss.killed}


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
        c.result(f"{tag}_preprocess_peak_rss_gb", f"> {args.kill_gb:.1f}",
                 f"goal <= 2; killed at {gb(first['peak_rss'])} GB after {first['wall_s']:.0f} s")
        return
    c.result(f"{tag}_preprocess_peak_rss_gb", gb(first["peak_rss"]), "goal <= 2 (whole process tree)")
    c.result(f"{tag}_preprocess_mb_per_s", f"{mb / first['prepare_s']:.2f}",
             f"info: prepare_data {first['prepare_s']:.1f} s for {first['rows']} blocks of 128 tokens")
    c.result(f"{tag}_preprocess_cores_used", f"{first['cpu_s'] / first['wall_s']:.2f}",
             "goal ~2 (CPU s / wall s of the whole process, imports included)")
    second = measure_prepare(corpus_dir, cache_dir, kill)
    c.result(f"{tag}_cache_hit_s", f"{second['prepare_s']:.2f}", f"goal <= 2; cache hit: {second.get('cache_hit')}")
    train = measure_training(corpus_dir, cache_dir, args.train_steps, kill)
    value = f"> {args.kill_gb:.1f}" if train["killed"] else gb(train["peak_rss"])
    c.result(f"{tag}_training_peak_rss_gb", value,
             f"info: lmlab train, {args.train_steps} steps; compare with the corpus size {mb / 1024:.2f} GB")
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
