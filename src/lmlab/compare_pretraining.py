"""`make compare-pretraining`: does MLM pretraining help? One command, three runs, two dev accuracies.

1. pretrain: `lmlab train experiment=mlm_tiny_wikitext2` (a small BERT and its WordPiece vocabulary, from
   scratch on WikiText-2; `--recipe mlm_tiny_sst2` pretrains on the unlabeled SST-2 train sentences instead:
   task-adaptive pretraining);
2. fine-tune the same architecture on SST-2 (experiment=sst2_tiny_finetune) with the pretraining run's
   tokenizer, (a) from random init and (b) from the pretrained weights (model.init_from=<its best.ckpt>):
   the two runs differ only in their initial weights.

Prints both SST-2 dev accuracies (of each run's best checkpoint) and writes them to OUT/summary.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

RECIPE = "mlm_tiny_wikitext2"
FINETUNE = ["experiment=sst2_tiny_finetune", "model.train_tokenizer.algorithm=null"]


def train(run_dir: Path, overrides: list[str]) -> dict[str, Any]:
    """Run `lmlab train` into ``run_dir``; return its metrics.json (exit on failure, its output shown)."""
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


def compare(out: Path, recipe: str, pretrain_extra: list[str], finetune_extra: list[str]) -> dict[str, Any]:
    pre_dir = out / "pretrain"
    pretrain = train(pre_dir, [f"experiment={recipe}", *pretrain_extra])
    tokenizer = [f"model.tokenizer={pre_dir / 'export'}", *architecture_overrides(pre_dir)]
    random_init = train(out / "random_init", [*FINETUNE, *tokenizer, *finetune_extra])
    pretrained = train(out / "pretrained", [*FINETUNE, *tokenizer, f"model.init_from={pre_dir / 'checkpoints' / 'best.ckpt'}",
                                            *finetune_extra])
    summary = {
        "pretrain": {"recipe": recipe, "val_ppl": pretrain["val"]["val/ppl"],
                     "test_ppl": (pretrain.get("test") or {}).get("test/ppl"), "wall_time_s": pretrain["wall_time_s"]},
        "random_init": {"dev_acc": random_init["val"]["val/acc"], "wall_time_s": random_init["wall_time_s"]},
        "pretrained": {"dev_acc": pretrained["val"]["val/acc"], "wall_time_s": pretrained["wall_time_s"]},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lmlab.compare_pretraining", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/compare_pretraining") / time.strftime("%Y-%m-%d_%H-%M-%S"),
                        help="directory for the three run dirs and summary.json")
    parser.add_argument("--recipe", default=RECIPE, help="the pretraining recipe (experiment=NAME)")
    parser.add_argument("--pretrain", nargs="*", default=[], help="extra overrides for the pretraining run")
    parser.add_argument("--finetune", nargs="*", default=[], help="extra overrides for both fine-tuning runs")
    args = parser.parse_args(argv)
    summary = compare(args.out.resolve(), args.recipe, args.pretrain, args.finetune)
    print(f"\nMLM pretraining ({args.recipe}): val perplexity {summary['pretrain']['val_ppl']:.1f}")
    print(f"SST-2 dev accuracy, random init:        {summary['random_init']['dev_acc']:.4f}")
    print(f"SST-2 dev accuracy, MLM-pretrained init: {summary['pretrained']['dev_acc']:.4f}")
    print(f"(summary: {args.out / 'summary.json'})")


if __name__ == "__main__":
    main()
