"""Inference: `lmlab predict` vs a `transformers` pipeline on the same fine-tuned MiniLM, same sentences.

    python benchmarks/inference.py           # 10,000 SST-2 sentences (~3 min quiet)
    python benchmarks/inference.py --quick   # 300 sentences, a smoke run

A MiniLM is first fine-tuned briefly with `lmlab train` (untimed; --train-samples sentences), giving
checkpoints/best.ckpt and its `export/` (save_pretrained). Then, interleaved, each in a fresh process and timed
from launch to exit (imports and model loading included in both):
  lmlab      `lmlab predict ckpt_path=.../best.ckpt input=sentences.tsv output=preds.jsonl` (length-sorted
             batches of data.eval_batch_size=128, Lightning's predict loop under torch.inference_mode; its default
             precision=auto: bf16 autocast on a CPU with native bf16, near ties re-run in fp32, else fp32)
  pipeline   transformers.pipeline("text-classification", model=export/) over the same sentences, with
             batch_size=1 (the pipeline default) and batch_size=128 (batches in input order, padded per batch)
Labels must be identical (every sentence). The speedup goal (>= 3x) is taken against the faster pipeline.
A second lmlab arm runs `precision=32-true` (fp32 throughout), to show what the precision choice adds
(`--lmlab-precisions auto` drops it).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _common as c


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sentences", type=int, default=None, help="sentences to label (default 10000; quick 300)")
    p.add_argument("--train-samples", type=int, default=None, help="fine-tuning sentences (default 1024; quick 64)")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per program (default 2; quick 1)")
    p.add_argument("--pipeline-batch-sizes", default="1,128", help="pipeline batch_size values to time")
    p.add_argument("--lmlab-precisions", default="auto,32-true",
                   help="lmlab predict precision= values to time; the first is the one held to the goal")
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run of the script")
    p.add_argument("--pipeline-worker", nargs=4, help=argparse.SUPPRESS)  # internal: EXPORT INPUT BATCH OUT
    args = p.parse_args(argv)
    args.sentences = args.sentences or (300 if args.quick else 10_000)
    args.train_samples = args.train_samples or (64 if args.quick else 1024)
    args.repeats = args.repeats or (1 if args.quick else 2)
    return args


def write_sentences(n: int, path: Path) -> list[str]:
    """The last ``n`` sentences of SST-2 train (the fine-tuning run reads a seeded subset of the whole file)."""
    lines = (c.DATA_ROOT / "sst2" / "train.tsv").read_text(encoding="utf-8").splitlines()[1:]
    sentences = [line.split("\t")[0] for line in lines if line.strip()][-n:]
    path.write_text("sentence\n" + "\n".join(sentences) + "\n", encoding="utf-8")
    return sentences


def fine_tune(args: argparse.Namespace, work: Path) -> Path:
    overrides = ["model=minilm", f"data.limit_train_samples={args.train_samples}", "data.limit_val_samples=128",
                 "test=false", "trainer.enable_progress_bar=false", f"paths.log_dir={work / 'outputs'}",
                 f"paths.cache_dir={work / 'cache'}"]
    c.run_measured(c.lmlab_cmd("train", *overrides), env=c.child_env(), cwd=work)
    return next((work / "outputs").glob("*/runs/*"))


def pipeline_worker(export: str, input_file: str, batch_size: str, out: str) -> None:
    c.set_environment()
    c.quiet()
    from transformers import pipeline

    started = time.perf_counter()
    sentences = Path(input_file).read_text(encoding="utf-8").splitlines()[1:]
    pipe = pipeline("text-classification", model=export, tokenizer=export, device=-1)
    names = json.loads((Path(export) / "labels.json").read_text())
    loaded = time.perf_counter()
    outputs = pipe(sentences, batch_size=int(batch_size), truncation=True, max_length=128)
    labels = [names[pipe.model.config.label2id[o["label"]]] for o in outputs]
    Path(out).write_text(json.dumps({"labels": labels, "compute_s": time.perf_counter() - loaded,
                                     "load_s": loaded - started}))


def newest_log(work: Path) -> list[str]:
    logs = sorted((work / "outputs").glob("*/predictions/*/*.log"), key=lambda p: p.stat().st_mtime)
    return logs[-1].read_text().splitlines() if logs else []


def loop_seconds(work: Path) -> float | None:
    """From the newest `lmlab predict` job log: seconds from the "data predict: ..." line (input tokenized or
    read from the cache) to "wrote N predictions" (Lightning's predict loop + writing the JSONL)."""
    import datetime as dt
    import re

    stamps = {}
    for line in newest_log(work):
        m = re.match(r"\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]", line)
        for key, marker in (("start", "data predict:"), ("end", "wrote ")):
            if m and marker in line:
                stamps[key] = dt.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f")
    return (stamps["end"] - stamps["start"]).total_seconds() if len(stamps) == 2 else None


def precision_note(work: Path) -> str:
    """The newest job log's line on the precision it ran in and the rows it re-ran in fp32 (none: fp32)."""
    notes = [line.split(" - ", 1)[-1] for line in newest_log(work) if "near tie" in line or "Mixed Precision" in line]
    return "; ".join(notes) or "fp32"


def time_lmlab(run: Path, input_file: Path, work: Path, precision: str) -> tuple[float, list[str]]:
    out = work / "lmlab_preds.jsonl"
    cmd = c.lmlab_cmd("predict", f"ckpt_path={run / 'checkpoints' / 'best.ckpt'}", f"input={input_file}",
                      f"output={out}", "overwrite=true", "trainer.enable_progress_bar=false", f"precision={precision}",
                      f"paths.log_dir={work / 'outputs'}", f"paths.cache_dir={work / 'cache'}")
    _, wall, _ = c.run_measured(cmd, env=c.child_env(), cwd=work)
    return wall, [json.loads(line)["label"] for line in out.read_text().splitlines()]


def time_pipeline(run: Path, input_file: Path, work: Path, batch: int) -> tuple[float, dict[str, Any]]:
    out = work / f"pipeline_{batch}.json"
    cmd = [sys.executable, __file__, "--pipeline-worker", str(run / "export"), str(input_file), str(batch), str(out)]
    _, wall, _ = c.run_measured(cmd, env=c.child_env(), cwd=work)
    return wall, json.loads(out.read_text())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.pipeline_worker:
        pipeline_worker(*args.pipeline_worker)
        return 0
    c.set_environment()
    c.header("inference: lmlab predict vs transformers pipeline (MiniLM, SST-2)")
    batches = [int(b) for b in args.pipeline_batch_sizes.split(",")]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="lmlab-bench-predict-") as tmp:
        work = Path(tmp)
        input_file = work / "sentences.tsv"
        write_sentences(args.sentences, input_file)
        run = fine_tune(args, work)
        print(f"setup: {args.sentences} sentences; model fine-tuned on {args.train_samples} (untimed); "
              f"{args.repeats} timed run(s) per program, interleaved", flush=True)
        precisions = args.lmlab_precisions.split(",")
        arms = {("lmlab" if i == 0 else f"lmlab_{p.replace('-', '_')}"): p for i, p in enumerate(precisions)}
        walls: dict[str, list[float]] = {**{a: [] for a in arms}, **{f"pipeline_b{b}": [] for b in batches}}
        labels: dict[str, list[str]] = {}
        compute: dict[str, list[float]] = {f"pipeline_b{b}": [] for b in batches}
        loops: dict[str, list[float]] = {a: [] for a in arms}
        notes: dict[str, str] = {}
        for _ in range(args.repeats):
            for arm, precision in arms.items():
                wall, labels[arm] = time_lmlab(run, input_file, work, precision)
                walls[arm].append(wall)
                loop = loop_seconds(work)
                if loop is not None:
                    loops[arm].append(loop)
                notes[arm] = precision_note(work)
            for b in batches:
                wall, res = time_pipeline(run, input_file, work, b)
                walls[f"pipeline_b{b}"].append(wall)
                compute[f"pipeline_b{b}"].append(res["compute_s"])
                labels[f"pipeline_b{b}"] = res["labels"]
            print("  " + ", ".join(f"{k} {v[-1]:.1f} s" for k, v in walls.items()), flush=True)
    med = {k: statistics.median(v) for k, v in walls.items()}
    n = args.sentences
    fastest = min((k for k in med if k.startswith("pipeline")), key=med.get)
    fastest_compute = min(compute, key=lambda k: statistics.median(compute[k]))
    for b in batches:
        key = f"pipeline_b{b}"
        c.result(f"predict_{key}_s", f"{med[key]:.1f}",
                 f"info: whole process; compute only {statistics.median(compute[key]):.1f} s")
    for arm, precision in arms.items():
        c.result(f"predict_{arm}_s", f"{med[arm]:.1f}",
                 f"info: precision={precision}, {n / med[arm]:.0f} sentences/s, whole process; {notes[arm]}")
        for b in batches:
            same = sum(x == y for x, y in zip(labels[arm], labels[f"pipeline_b{b}"], strict=True))
            c.result(f"predict_labels_identical_{arm}_vs_pipeline_b{b}", f"{same}/{n}", "goal: all")
        if loops[arm]:
            loop = statistics.median(loops[arm])
            c.result(f"predict_{arm}_loop_s", f"{loop:.1f}", "info: from the job log, predict loop + writing")
            c.result(f"predict_{arm}_loop_speedup_vs_pipeline",
                     c.ratio(statistics.median(compute[fastest_compute]), loop),
                     f"info: startup excluded from both; vs {fastest_compute}'s compute (its tokenization included)")
        if arm != "lmlab":
            c.result(f"predict_{arm}_speedup_vs_pipeline", c.ratio(med[fastest], med[arm]),
                     f"info: precision={precision}; against {fastest}, whole processes")
    c.result("predict_speedup_vs_pipeline", c.ratio(med[fastest], med["lmlab"]),
             f"goal >= 3x; precision={arms['lmlab']}, against the faster pipeline ({fastest}), whole processes")
    print(f"load average at end: {c.load_avg()}; total time {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
