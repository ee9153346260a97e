"""`make compare-pretraining`: does MLM pretraining help? One command: one pretraining run, then pairs of fine-tunes.

1. pretrain: `lmlab train experiment=mlm_tiny_sst2` (task-adaptive MLM of a small BERT and its WordPiece vocabulary,
   from scratch on the unlabeled SST-2 train sentences; `--recipe mlm_tiny_wikitext2` pretrains on WikiText-2);
2. for each fine-tuning size (``--train-samples``) and seed (``--seeds``), fine-tune the same architecture on SST-2
   (experiment=sst2_tiny_finetune) with the pretraining run's tokenizer, (a) from random init and (b) from the
   pretrained weights (model.init_from=<its best.ckpt>): the two runs of a pair differ only in their initial weights.

Prints each pair's SST-2 dev accuracies (of each run's best checkpoint) and their means per size, and writes them
to OUT/summary.json. One seed is not evidence: pairs differ by a point either way from the seed alone (measured).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

RECIPE = "mlm_tiny_sst2"
FINETUNE = ["experiment=sst2_tiny_finetune", "model.train_tokenizer.algorithm=null"]
ARMS = ("random_init", "pretrained")


def train(run_dir: Path, overrides: list[str]) -> dict[str, Any]:
    """Run `lmlab train` into ``run_dir``; return its metrics.json (exit on failure, its output shown). A run that
    already finished there (a rerun of the comparison with more sizes or seeds) is reused, not trained again."""
    done = run_dir / "metrics.json"
    if done.is_file() and json.loads((run_dir / "run.json").read_text()).get("status") == "completed":
        print(f"  reusing the finished run in {run_dir}", flush=True)
        return json.loads(done.read_text())
    command = [sys.executable, "-m", "lmlab", "train", *overrides, f"hydra.run.dir={run_dir}",
               "trainer.enable_progress_bar=false"]
    print(f"$ lmlab train {' '.join(command[4:])}", flush=True)
    started = time.time()
    if subprocess.run(command).returncode != 0:
        raise SystemExit(f"compare-pretraining: the run in {run_dir} failed; see {run_dir}/train.log.")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    print(f"  done in {time.time() - started:.0f} s: val {metrics.get('val')}", flush=True)
    return metrics


def architecture_overrides(run_dir: Path) -> list[str]:
    """``++model.from_config.KEY=VALUE`` for every field of the pretraining run's model.from_config: the two
    fine-tuning arms must build the architecture that was pretrained (a ``--pretrain model.from_config.*``
    change would otherwise leave the pretrained arm loading only the weights whose shapes happen to match)."""
    from omegaconf import OmegaConf

    model = OmegaConf.load(run_dir / "config_resolved.yaml").model
    fields = OmegaConf.to_container(model.from_config) if model.get("from_config") else {}

    def value(v: Any) -> str:
        return "null" if v is None else str(v).lower() if isinstance(v, bool) else str(v)

    return [f"++model.from_config.{key}={value(v)}" for key, v in fields.items()]


def compare(out: Path, recipe: str, pretrain_extra: list[str], finetune_extra: list[str], sizes: list[int],
            seeds: list[int]) -> dict[str, Any]:
    pre_dir = out / "pretrain"
    pretrain = train(pre_dir, [f"experiment={recipe}", *pretrain_extra])
    shared = [*FINETUNE, f"model.tokenizer={pre_dir / 'export'}", *architecture_overrides(pre_dir)]
    init = {"random_init": [], "pretrained": [f"model.init_from={pre_dir / 'checkpoints' / 'best.ckpt'}"]}
    runs = []
    for size in sizes:
        for seed in seeds:
            pair: dict[str, Any] = {"train_samples": size, "seed": seed}
            for arm in ARMS:
                metrics = train(out / arm / f"n{size}_seed{seed}", [*shared, f"data.limit_train_samples={size}",
                                                                   f"seed={seed}", *init[arm], *finetune_extra])
                pair[arm] = metrics["val"]["val/acc"]
                pair[f"{arm}_wall_time_s"] = metrics["wall_time_s"]
            runs.append(pair)
    summary = {
        "pretrain": {"recipe": recipe, "val_ppl": pretrain["val"]["val/ppl"],
                     "val_masked_acc": pretrain["val"].get("val/masked_acc"), "wall_time_s": pretrain["wall_time_s"]},
        "runs": runs,
        "by_size": {str(size): means([r for r in runs if r["train_samples"] == size]) for size in sizes},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def means(pairs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean dev accuracy of each arm over the seeds, their difference, and in how many pairs pretraining won."""
    mean = {arm: sum(p[arm] for p in pairs) / len(pairs) for arm in ARMS}
    return {**mean, "difference": mean["pretrained"] - mean["random_init"], "seeds": len(pairs),
            "pretrained_wins": sum(p["pretrained"] > p["random_init"] for p in pairs)}


def int_list(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lmlab.compare_pretraining", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/compare_pretraining") / time.strftime("%Y-%m-%d_%H-%M-%S"),
                        help="directory for the run dirs and summary.json")
    parser.add_argument("--recipe", default=RECIPE, help="the pretraining recipe (experiment=NAME)")
    parser.add_argument("--pretrain", nargs="*", default=[], help="extra overrides for the pretraining run")
    parser.add_argument("--finetune", nargs="*", default=[], help="extra overrides for every fine-tuning run")
    parser.add_argument("--train-samples", type=int_list, default=[2000],
                        help="comma-separated fine-tuning sizes (SST-2 train rows), e.g. 2000,8000")
    parser.add_argument("--seeds", type=int_list, default=[42, 1, 2], help="comma-separated fine-tuning seeds")
    args = parser.parse_args(argv)
    summary = compare(args.out.resolve(), args.recipe, args.pretrain, args.finetune, args.train_samples, args.seeds)
    pre = summary["pretrain"]
    print(f"\nMLM pretraining ({args.recipe}): val perplexity {pre['val_ppl']:.1f}, masked accuracy "
          f"{pre['val_masked_acc']:.4f}")
    print("SST-2 dev accuracy      random init   MLM-pretrained init")
    for run in summary["runs"]:
        print(f"  n={run['train_samples']:<6} seed={run['seed']:<4}  {run['random_init']:.4f}        {run['pretrained']:.4f}")
    for size, m in summary["by_size"].items():
        print(f"  n={size:<6} mean         {m['random_init']:.4f}        {m['pretrained']:.4f}   "
              f"(difference {100 * m['difference']:+.2f} points; pretrained better in {m['pretrained_wins']} of {m['seeds']})")
    print(f"(summary: {args.out / 'summary.json'})")


if __name__ == "__main__":
    main()
