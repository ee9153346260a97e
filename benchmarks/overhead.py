"""How much does lmlab's Lightning path cost per training step, and how much does dynamic padding save?

    python benchmarks/overhead.py                          # MiniLM, ~5 min on 2 CPU cores
    python benchmarks/overhead.py --model tiny_bert --quick  # smoke check, a few seconds
    python benchmarks/overhead.py --task all                # part 1 for every other task's recipe
    python benchmarks/overhead.py --task seq2seq --floor    # Lightning's fixed cost per step (near-zero model)
    python benchmarks/overhead.py --precision bf16-mixed    # both paths in bf16 autocast (auto's pick on AMX CPUs)
    python benchmarks/overhead.py --callbacks train         # with the per-step callbacks + CSV logger of `lmlab train`

1. Lightning overhead. The real `train` config is composed with Hydra (as `lmlab train` does) and the
   tokenizer, datamodule, task module and Trainer come from lmlab's builders. The training batches of one
   epoch are collated once into a list, and the SAME list is fed to (A) ``trainer.fit`` with the lmlab-built
   Trainer and (B) a plain PyTorch loop (zero_grad, forward, backward, clip_grad_norm_, optimizer.step,
   scheduler.step) on a copy of the model with the same initial weights, the same AdamW parameter groups and the
   same warmup/decay schedule (both come from the task module's ``configure_optimizers``). Data loading and
   collation are therefore excluded from both. Both are warmed up, then measured in rounds: each round is one
   ``trainer.fit`` epoch in which every Lightning step is paired with a plain-loop step on the same batch, run by
   a callback right before it in every other step and right after it in the rest, and timed apart, so that a
   change in the machine's speed hits both paths alike (separate rounds of each varied by up to 20 % on a quiet
   2-core machine, more than the 2 % to be measured). The plain loop keeps its own torch RNG state, so both draw
   the same dropout masks as they would alone (weights compared afterwards). The first ``--skip`` steps of a
   round are not timed (optimizer-state allocation); the rest give samples/s, and the median over rounds of
   ``plain_rate / lightning_rate - 1`` is the overhead.

2. Padding. The same training samples, the same number of steps, through the same lmlab Trainer:
   length-grouped batches with dynamic padding (lmlab's default; the Lightning rounds of part 1),
   random-order batches with dynamic padding (``data.group_by_length=false``), and those random batches
   padded to ``data.max_length`` (128), i.e. classic fixed padding.

--task picks the recipe: sst2 (default; MiniLM, or --model) or another task's experiment as it is
(wnut17 = experiments/wnut17_minilm, with --quick on tiny_bert; mlm = mlm_tiny_wikitext2, clm =
clm_tiny_shakespeare, seq2seq = translate_tiny_multi30k), or all four of those. The plain loop computes each task's loss the way its
training_step does, without Lightning: masked LM masks the batch with the task's own masker and generator
(what its on_before_batch_transfer does) and calls lm_step; causal LM calls lm_step; the others call the
module's forward. Part 2 (padding) runs for sst2 only.

--floor runs part 1 of an LM/seq2seq recipe with its model shrunk to width 8 and one layer (a few thousand
parameters), batch 2 and 120 steps: a step is then almost all Python, and ``lightning_overhead_ms_per_step`` is
Lightning's fixed per-step cost (hook dispatch, closure, batch transfer, logging checks) on this CPU, the floor
under every recipe's overhead. Its figures are named ``<task>_floor_*``.

--precision bf16-mixed runs both paths in bf16 autocast (Lightning wraps training_step in it; the plain loop its
forward and loss), the precision `lmlab train`'s default trainer.precision=auto picks on a CPU with AMX or
AVX512-BF16; figures are named ``bf16_*``. The default, 32-true, measures fp32 training.

--callbacks train adds what `lmlab train` runs around every step on top of Lightning's loop: its default callbacks
that act during training (the NaN guard, the learning-rate monitor, the RNG-state and preemption handlers) and the
CSV logger (written every trainer.log_every_n_steps). Left out: the checkpoint and early-stopping callbacks (they act
after validation, which these epochs skip) and the progress bar (display). Figures are named ``callbacks_*``. The
default, none, measures Lightning's step machinery with the task module alone.

Timings on a shared machine are noisy: the load average is printed before and after.
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from itertools import pairwise
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from _common import cpu_model, load_avg  # benchmarks/ is on sys.path when a script runs

REPO = Path(__file__).resolve().parents[1]
MODELS = ("minilm", "tiny_bert")
# --task -> the experiment it runs (sst2 composes `train` with --model instead)
EXPERIMENTS = {"wnut17": "wnut17_minilm", "mlm": "mlm_tiny_wikitext2", "clm": "clm_tiny_shakespeare",
               "seq2seq": "translate_tiny_multi30k"}


def set_environment() -> None:
    """Offline, quiet, and the data root of a checkout; must run before transformers is imported."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("WANDB_MODE", "disabled")
    os.environ.setdefault("LMLAB_DATA_ROOT", str(REPO.parent / "shared" / "data"))
    os.environ.setdefault("LMLAB_ROOT", str(REPO))  # paths.root_dir: the checkout's tokenization cache
    # What `lmlab train` does before building anything: both paths below then share the allocator setting.
    from lmlab.app import keep_large_allocations_on_the_heap

    keep_large_allocations_on_the_heap()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=MODELS, default="minilm", help="lmlab model config for sst2 (default: minilm)")
    p.add_argument("--task", choices=("sst2", *EXPERIMENTS, "all"), default="sst2",
                   help="sst2 (default), another task's recipe, or all other tasks (part 1 only)")
    p.add_argument("--steps", type=int, default=None,
                   help="training steps per measurement = batches in the epoch (default: 40; 8 with --quick)")
    p.add_argument("--batch-size", type=int, default=32, help="data.batch_size (default: 32)")
    p.add_argument("--rounds", type=int, default=None,
                   help="measured rounds in part 1 (default: 6 for the MiniLM recipes sst2/wnut17, 10 for the "
                        "2-layer models of mlm/clm/seq2seq; 2 with --quick)")
    p.add_argument("--pad-steps", type=int, default=None,
                   help="steps per padding variant in part 2, 0 to skip part 2 (default: 16; 6 with --quick)")
    p.add_argument("--pad-rounds", type=int, default=1, help="measured rounds per padding variant (default: 1)")
    p.add_argument("--warmup", type=int, default=3, help="untimed warm-up steps before measuring (default: 3)")
    p.add_argument("--skip", type=int, default=2,
                   help="untimed first steps of every measured round (default: 2)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads(N) (default: leave torch's default)")
    p.add_argument("--seed", type=int, default=42, help="seed of the config and of every round (default: 42)")
    p.add_argument("--quick", action="store_true", help="few steps and rounds: a smoke check of the script")
    p.add_argument("--precision", choices=("32-true", "bf16-mixed"), default="32-true",
                   help="trainer.precision of both paths (default: 32-true); bf16-mixed: the plain loop's forward "
                        "runs under torch.autocast(bfloat16) as Lightning's does (`lmlab train`'s default "
                        "precision=auto on a CPU with native bf16)")
    p.add_argument("--callbacks", choices=("none", "train"), default="none",
                   help="none (default): Lightning's loop and the task module only; train: also the callbacks and "
                        "CSV logger `lmlab train` runs every step (no checkpoint/early stopping/progress bar)")
    p.add_argument("--floor", action="store_true",
                   help=f"part 1 with the recipe's model shrunk to near zero ({', '.join(FLOOR_MODELS)}): "
                        "Lightning's fixed per-step cost")
    args = p.parse_args(argv)
    if args.floor:
        if args.task not in (*FLOOR_MODELS, "all"):
            p.error(f"--floor needs --task {' | '.join(FLOOR_MODELS)} | all (recipes with a from-config model)")
        args.batch_size = 2
        args.steps = args.steps or (20 if args.quick else 120)
        args.rounds = args.rounds or (2 if args.quick else 4)
        args.pad_steps = 0
    if args.steps is None:
        args.steps = 8 if args.quick else 40
    args.rounds_given = args.rounds
    if args.pad_steps is None:
        args.pad_steps = 6 if args.quick else 16
    for name in ("steps", "pad_steps"):
        value = getattr(args, name)
        if value <= args.skip and not (name == "pad_steps" and value == 0):
            p.error(f"--{name.replace('_', '-')} ({value}) must be larger than --skip ({args.skip})")
    return args


# One round's overhead moves by about +-1 % from round to round on a quiet 2-core machine (10 CLM rounds:
# 0.0-3.8 %, sd 1.1 %; 3 SST-2 MiniLM rounds: -1.3..2.7 %), as much as the margin to the 2 % goal, so the median of
# 3 rounds could land anywhere within 1-2 % of the true value. 10 rounds of the 2-layer models (~8 s each) and 6 of
# MiniLM (~20-40 s each) bring the standard error of the mean to ~0.2-0.5 %.
TINY_MODEL_TASKS = ("mlm", "clm", "seq2seq")
# --callbacks train: the default callbacks left out (they act after validation, which the measured epochs skip,
# or only display)
STEPLESS_CALLBACKS = ("checkpoint", "step_checkpoint", "early_stopping", "progress")
# --floor: each from-config recipe's model at width 8, one layer
FLOOR_MODELS = {
    "mlm": {"hidden_size": 8, "intermediate_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2},
    "clm": {"n_embd": 8, "n_layer": 1, "n_head": 2},
    "seq2seq": {"d_model": 8, "d_kv": 2, "d_ff": 8, "num_layers": 1, "num_decoder_layers": 1},
}


def rounds_for(args: argparse.Namespace) -> int:
    if args.rounds_given is not None:
        return args.rounds_given
    if args.quick:
        return 2
    return 10 if args.task in TINY_MODEL_TASKS else 6


# -- config and objects, built the way `lmlab train` builds them ---------------------------------------------

def compose_config(overrides: list[str], workdir: Path) -> Any:
    """Compose `train` with overrides and resolve it with the run-time paths Hydra would set."""
    from lmlab.config.compose import compose_job

    return compose_job(overrides, output_dir=workdir / "run")


def overrides_for(args: argparse.Namespace, steps: int, **extra: Any) -> list[str]:
    task = getattr(args, "task", "sst2")
    recipe = {"experiment": EXPERIMENTS[task]} if task in EXPERIMENTS else {"model": args.model}
    if task == "wnut17" and args.quick:  # the smoke run swaps the recipe's MiniLM for the 2-layer test model
        recipe["model"] = "tiny_bert"
    base = {
        **recipe,
        "seed": args.seed,
        # one epoch = exactly --steps full batches; LM tasks cut lines into blocks: whole file, then the first --steps
        "data.limit_train_samples": "null" if task in ("mlm", "clm") else steps * args.batch_size,
        "data.batch_size": args.batch_size,
        "trainer.max_epochs": 1,
        "trainer.precision": getattr(args, "precision", "32-true"),  # both paths compute in it (never auto)
        "trainer.enable_progress_bar": "false",
        "trainer.num_sanity_val_steps": 0,
        "trainer.limit_val_batches": 0,
        "trainer.enable_checkpointing": "false",
        "trainer.enable_model_summary": "false",
        "callbacks": "none",
        "logger": "none",  # fit_round builds the config's loggers: none here, csv with --callbacks train
        "test": "false",
        "export": "false",
    }
    if getattr(args, "floor", False):
        base.update({f"model.from_config.{k}": v for k, v in FLOOR_MODELS[task].items()})
    if getattr(args, "callbacks", "none") == "train":
        base.update({"callbacks": "default", "logger": "csv"})
    base.update(extra)
    dropped = [f"~callbacks.{name}" for name in STEPLESS_CALLBACKS] if base["callbacks"] == "default" else []
    return [f"{k}={v}" for k, v in base.items()] + dropped


def train_batches(cfg: Any, tokenizer: Any, label_names: list[str] | None = None) -> tuple[Any, list[dict]]:
    """(datamodule, the collated batches of one training epoch) from lmlab's datamodule."""
    from lmlab.builders import build_datamodule

    datamodule = build_datamodule(cfg, tokenizer, label_names=label_names, splits=("train",))
    datamodule.prepare_data()
    return datamodule, list(datamodule.train_dataloader())


class BatchList:
    """A sized iterable over pre-collated batches. (A bare list would be taken by Lightning as a list of
    dataloaders.)"""

    def __init__(self, batches: list[dict]):
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        return (dict(b) for b in self.batches)  # shallow copies: a task may edit its batch (MLM masking)


def pad_to(batch: dict, width: int, pad_values: dict[str, int], left: bool) -> dict:
    """The batch with every padded key widened to ``width`` (fixed padding, as padding='max_length')."""
    import torch

    out = {}
    for key, value in batch.items():
        if key in pad_values and value.dim() == 2 and value.shape[1] < width:
            padded = torch.full((value.shape[0], width), pad_values[key], dtype=value.dtype)
            if left:
                padded[:, width - value.shape[1]:] = value
            else:
                padded[:, : value.shape[1]] = value
            value = padded
        out[key] = value
    return out


def same_samples(a: list[dict], b: list[dict]) -> bool:
    """Whether two epochs hold the same examples (as multisets of unpadded token sequences)."""

    def rows(batches: list[dict]) -> list[tuple[int, ...]]:
        return sorted(tuple(ids[mask.bool()].tolist()) for batch in batches
                      for ids, mask in zip(batch["input_ids"], batch["attention_mask"], strict=True))

    return rows(a) == rows(b)


# -- the two training paths; each returns the duration of every step --------------------------------------

class Round:
    """One measured epoch: per-step durations (s), batch sizes, the wall time of the whole call and, where
    measured, each step's minor page faults (memory the allocator had to fault in afresh)."""

    def __init__(self, steps: list[float], sizes: list[int], wall: float, faults: list[int] | None = None):
        self.steps, self.sizes, self.wall, self.faults = steps, sizes, wall, faults

    def rate(self, skip: int) -> float:
        return sum(self.sizes[skip:]) / sum(self.steps[skip:])


def plain_loss(wrapper: Any, batch: dict) -> Any:
    """The task's training loss without Lightning (what its training_step computes, minus logging)."""
    import torch

    if hasattr(wrapper, "masker"):  # masked LM: on_before_batch_transfer's masking, then lm_step
        offsets = torch.stack([batch.pop("offset_start"), batch.pop("offset_end")], dim=-1)  # (batch, seq, 2)
        special = torch.isin(batch["input_ids"], wrapper.special_ids)
        batch["input_ids"], batch["labels"] = wrapper.masker.torch_mask_tokens(
            batch["input_ids"].clone(), special_tokens_mask=special,
            offset_mapping=offsets if wrapper.masker.whole_word_mask else None)
    if hasattr(wrapper, "lm_step"):
        return wrapper.lm_step(batch, "train")[0]
    return wrapper(batch).loss


def module_copy(module: Any, tokenizer: Any = None) -> Any:
    """The same task module around a deep copy of its model (a separate model for a plain loop)."""
    extra = {"tokenizer": tokenizer} if getattr(module, "needs_tokenizer", False) else {}
    return type(module)(copy.deepcopy(module.model), module.config, module.label_names, **extra)


def task_optimizer(module: Any, n_steps: int) -> tuple[Any, Any]:
    """(optimizer, scheduler) from the task module's own configure_optimizers, as `lmlab train` gets them: the
    config's optimizer (AdamW with torch's fused kernel on CPU by default), parameter groups and warmup/decay
    schedule. It needs only the step count from a trainer: given by a stand-in."""
    module._trainer = SimpleNamespace(estimated_stepping_batches=n_steps)
    try:
        conf = module.configure_optimizers()
    finally:
        module._trainer = None
    return conf["optimizer"], conf["lr_scheduler"]["scheduler"]


class PlainLoop:
    """The same training steps in a plain PyTorch loop on ``wrapper.model`` (a separate copy of the model).

    Optimizer and scheduler come from the task module's own configure_optimizers (``task_optimizer``: same
    parameter groups, lr, weight decay, warmup).
    Gradient clipping follows trainer.gradient_clip_val/algorithm, as Lightning does. The loop keeps its own
    torch RNG state (dropout), so that stepping it between Lightning's steps leaves both with the random
    draws each would have alone.
    """

    def __init__(self, cfg: Any, wrapper: Any, n_steps: int, init_state: dict, seed: int):
        import torch

        self.wrapper, self.model = wrapper, wrapper.model
        self.bf16 = str(cfg.trainer.precision) == "bf16-mixed"  # Lightning: autocast around training_step only
        self.clip = cfg.trainer.gradient_clip_val
        self.clip_fn = (torch.nn.utils.clip_grad_norm_ if cfg.trainer.gradient_clip_algorithm == "norm"
                        else torch.nn.utils.clip_grad_value_)
        self.model.load_state_dict(init_state)
        self.model.train()
        self.optimizer, self.scheduler = task_optimizer(wrapper, n_steps)
        self.params = [p for group in self.optimizer.param_groups for p in group["params"]]
        if hasattr(wrapper, "masker"):  # the generator Lightning's on_train_epoch_start sets for epoch 0
            wrapper.masker.generator = wrapper._generator(1)
        outer = torch.get_rng_state()
        torch.manual_seed(seed)
        self.rng = torch.get_rng_state()
        torch.set_rng_state(outer)

    def step(self, batch: dict) -> float:
        """One training step on ``batch``; returns its duration in seconds (RNG swaps excluded)."""
        import torch

        outer = torch.get_rng_state()
        torch.set_rng_state(self.rng)
        t0 = time.perf_counter()
        # zero_grad first, as lmlab's task module does at each step's start (TaskModule.on_train_batch_start):
        # each path's gradients then live from its backward to its next step, so neither runs its step beside the
        # other's gradients more than the other.
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            loss = plain_loss(self.wrapper, dict(batch))
        loss.backward()
        if self.clip is not None:
            self.clip_fn(self.params, self.clip)
        self.optimizer.step()
        self.scheduler.step()
        took = time.perf_counter() - t0
        self.rng = torch.get_rng_state()
        torch.set_rng_state(outer)
        return took


def plain_round(cfg: Any, wrapper: Any, batches: list[dict], init_state: dict, seed: int) -> Round:
    """The plain loop alone over ``batches`` (warm-up)."""
    t_wall = time.perf_counter()
    loop = PlainLoop(cfg, wrapper, len(batches), init_state, seed)
    steps = [loop.step(batch) for batch in batches]
    return Round(steps, [len(b["input_ids"]) for b in batches], time.perf_counter() - t_wall)


def fit_round(cfg: Any, module: Any, batches: list[dict], init_state: dict, seed: int,
              loop: PlainLoop | None = None, parity: int = 0) -> tuple[Round, list[float], list[int]]:
    """``trainer.fit`` over ``batches`` with a freshly built lmlab Trainer (the config's callbacks + a timer).

    A Lightning step lasts from its on_train_batch_start to the next one (the last: to on_train_epoch_end), so
    everything Lightning does between batches is counted. With a ``loop``, step i of the plain loop runs on the
    same batch in on_train_batch_start of Lightning's step i when ``i % 2 == parity``, else in its
    on_train_batch_end (P0 L0 L1 P1 P2 L2 ...: each path follows itself and the other equally often); it is
    timed on its own and taken out of Lightning's step. Returns Lightning's Round and the plain steps' durations
    and page faults (empty without a loop).
    """
    import torch
    from lightning.pytorch.callbacks import Callback

    from lmlab.builders import build_callbacks, build_loggers, build_trainer

    class Timer(Callback):
        def __init__(self) -> None:
            self.marks: list[tuple[float, int]] = []  # (time, page faults) at each step start and at the end
            self.plain: list[float] = []  # each plain step's own duration
            self.calls: list[tuple[float, int]] = []  # the whole plain call (RNG swaps included): time, faults

        def run_plain(self, batch_idx: int) -> None:
            if loop is None:
                return
            f0, t0 = minor_faults(), time.perf_counter()
            self.plain.append(loop.step(batches[batch_idx]))
            self.calls.append((time.perf_counter() - t0, minor_faults() - f0))

        def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
            self.marks.append((time.perf_counter(), minor_faults()))
            if batch_idx % 2 == parity:
                self.run_plain(batch_idx)

        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            if batch_idx % 2 != parity:
                self.run_plain(batch_idx)

        def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            self.marks.append((time.perf_counter(), minor_faults()))

    module.model.load_state_dict(init_state)
    timer = Timer()
    loggers = build_loggers(cfg, None)  # none unless --callbacks train (csv)
    trainer = build_trainer(cfg, [*build_callbacks(cfg, has_logger=bool(loggers)), timer], loggers)
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    trainer.fit(module, train_dataloaders=BatchList(batches))
    wall = time.perf_counter() - t0
    n = len(batches)
    if trainer.global_step != n or len(timer.marks) != n + 1 or len(timer.plain) not in (0, n):
        raise RuntimeError(f"Lightning ran {trainer.global_step} steps, expected {n}")
    calls = timer.calls or [(0.0, 0)] * n
    steps = [b[0] - a[0] - c[0] for (a, b), c in zip(pairwise(timer.marks), calls, strict=True)]
    faults = [b[1] - a[1] - c[1] for (a, b), c in zip(pairwise(timer.marks), calls, strict=True)]
    light = Round(steps, [len(b["input_ids"]) for b in batches], wall - sum(c[0] for c in calls), faults)
    return light, timer.plain, [c[1] for c in timer.calls]


def lightning_round(cfg: Any, module: Any, batches: list[dict], init_state: dict, seed: int) -> Round:
    """Lightning alone over ``batches`` (warm-up, padding variants)."""
    return fit_round(cfg, module, batches, init_state, seed)[0]


def paired_round(cfg: Any, module: Any, wrapper: Any, batches: list[dict], init_state: dict, seed: int,
                 parity: int) -> tuple[Round, Round]:
    """One epoch through lmlab's Trainer with a plain-loop step on the same batch inside every Lightning step
    (``fit_round``): the two alternate step by step, so a change in the machine's speed (other processes,
    clock) hits both alike instead of one whole round. Returns (Lightning's Round, the plain loop's Round)."""
    t_setup = time.perf_counter()
    loop = PlainLoop(cfg, wrapper, len(batches), init_state, seed)
    plain_setup = time.perf_counter() - t_setup
    light, plain, plain_faults = fit_round(cfg, module, batches, init_state, seed, loop, parity)
    return light, Round(plain, light.sizes, plain_setup + sum(plain), plain_faults)


def minor_faults() -> int:
    """Minor page faults of this process so far (Linux; 0 where getrusage does not count them)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def median_rate(rounds: list[Round], skip: int) -> float:
    return statistics.median(r.rate(skip) for r in rounds)


def best_rate(rounds: list[Round], skip: int) -> float:
    """Samples/s from each step's fastest time over the rounds: robust to other processes on the cores."""
    fastest = [min(r.steps[i] for r in rounds) for i in range(skip, len(rounds[0].steps))]
    return sum(rounds[0].sizes[skip:]) / sum(fastest)


def max_weight_diff(a: Any, b: Any) -> float:
    import torch

    with torch.no_grad():
        return max((pa - pb).abs().max().item() for pa, pb in zip(a.parameters(), b.parameters(), strict=True))


# -- reporting ----------------------------------------------------------------------------------------------


def result(name: str, value: str, note: str) -> None:
    print(f"{name}: {value} ({note})", flush=True)


def quiet() -> None:
    """Drop Lightning's info lines and warnings that are expected here (no workers, no validation, ...)."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "lmlab", "transformers"):
        logging.getLogger(name).setLevel(logging.ERROR)
    for message in (".*does not have many workers.*", ".*smaller than the logging interval.*",
                    ".*`validation_step` but have no `val_dataloader`.*", ".*LeafSpec.*"):
        warnings.filterwarnings("ignore", message=message)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass


# -- the benchmark ------------------------------------------------------------------------------------------

def figure_prefix(args: argparse.Namespace) -> str:
    """What part 1's figure names start with, distinct per task and mode in run_all.py's summary."""
    return (("" if args.task == "sst2" else f"{args.task}_") + ("floor_" if args.floor else "")
            + ("bf16_" if getattr(args, "precision", "32-true") == "bf16-mixed" else "")
            + ("callbacks_" if getattr(args, "callbacks", "none") == "train" else ""))


def part_overhead(args: argparse.Namespace, cfg: Any, module: Any, wrapper: Any, batches: list[dict],
                  init_state: dict) -> None:
    print("-- part 1: lmlab/Lightning training step vs plain PyTorch loop, same batches, steps paired --", flush=True)
    tag = figure_prefix(args)
    warm = batches[: max(args.warmup, 1)]
    lightning_round(cfg, module, warm, init_state, args.seed)
    plain_round(cfg, wrapper, warm, init_state, args.seed)
    runs: dict[str, list[Round]] = {"lightning": [], "plain": []}
    weight_diff = float("nan")
    skip, n = args.skip, len(batches)
    rounds = rounds_for(args)
    for r in range(rounds):
        light_round, plain_round_ = paired_round(cfg, module, wrapper, batches, init_state, args.seed,
                                                 parity=r % 2)
        runs["lightning"].append(light_round)
        runs["plain"].append(plain_round_)
        if r == 0:  # both trained from the same weights on the same batches with the same seed
            weight_diff = max_weight_diff(module.model, wrapper.model)
        print(f"  round {r + 1}: lightning {light_round.rate(skip):.1f} samples/s, "
              f"plain {plain_round_.rate(skip):.1f} samples/s, "
              f"overhead {(plain_round_.rate(skip) / light_round.rate(skip) - 1) * 100:.2f} %", flush=True)
    light, plain = median_rate(runs["lightning"], skip), median_rate(runs["plain"], skip)
    per_round = [(p.rate(skip) / lr.rate(skip) - 1) * 100 for lr, p in zip(runs["lightning"], runs["plain"], strict=True)]
    overhead = statistics.median(per_round) / 100
    light_best, plain_best = best_rate(runs["lightning"], skip), best_rate(runs["plain"], skip)
    light_wall = statistics.median(sum(r.sizes) / r.wall for r in runs["lightning"])
    plain_wall = statistics.median(sum(r.sizes) / r.wall for r in runs["plain"])
    per_step_ms = statistics.median(
        (sum(a.steps[skip:]) - sum(b.steps[skip:])) / (n - skip) * 1e3
        for a, b in zip(runs["lightning"], runs["plain"], strict=True))
    step_ms = statistics.median(sum(b.steps[skip:]) / (n - skip) * 1e3 for b in runs["plain"])
    result(tag + "lightning_samples_per_s", f"{light:.1f}", f"median of {rounds} rounds, steps {skip}..{n - 1}")
    result(tag + "plain_samples_per_s", f"{plain:.1f}", f"median of {rounds} rounds, same steps")
    goal = "info: a near-zero model, all Python" if args.floor else "goal <= 2"
    result(tag + "lightning_overhead_pct", f"{overhead * 100:.1f}",
           f"{goal}; median over {rounds} rounds of each round's paired steps")
    if rounds > 2:
        result(tag + "lightning_overhead_pct_rounds", f"mean {statistics.mean(per_round):.2f}, standard error "
               f"{statistics.stdev(per_round) / len(per_round) ** 0.5:.2f}, range {min(per_round):.1f}..{max(per_round):.1f}",
               f"info: the {rounds} rounds' overheads")
    result(tag + "lightning_overhead_pct_best_per_step", f"{(plain_best / light_best - 1) * 100:.1f}",
           f"info; each step's fastest of {rounds} rounds: "
           f"lightning {light_best:.1f} vs plain {plain_best:.1f} samples/s")
    result(tag + "lightning_overhead_ms_per_step", f"{per_step_ms:.2f}",
           f"info: median over rounds; a plain step takes {step_ms:.1f} ms")
    result(tag + "lightning_overhead_pct_whole_fit", f"{(plain_wall / light_wall - 1) * 100:.1f}",
           f"info: all {n} steps, incl. trainer.fit setup/teardown vs the loop incl. optimizer setup")
    faults = {name: statistics.median(sum(r.faults[skip:]) / (n - skip) for r in rounds)
              for name, rounds in runs.items()}
    result(tag + "page_faults_per_step", f"lightning {faults['lightning']:.0f}, plain {faults['plain']:.0f}",
           "info: minor page faults, median over rounds (memory faulted in afresh: slower kernels)")
    result(tag + "weights_max_abs_diff_after_round1", f"{weight_diff:.2e}",
           "info: lightning vs plain model after the same training; 0 = identical computation")


def part_padding(args: argparse.Namespace, cfg: Any, tokenizer: Any, module: Any, init_state: dict,
                 label_names: list[str], workdir: Path) -> None:
    print("-- part 2: dynamic vs fixed padding, same samples and steps, lmlab Trainer --", flush=True)
    n = args.pad_steps
    cfg_grouped = compose_config(overrides_for(args, n), workdir)
    cfg_random = compose_config(overrides_for(args, n, **{"data.group_by_length": "false"}), workdir)
    datamodule, grouped = train_batches(cfg_grouped, tokenizer, label_names)
    _, random_batches = train_batches(cfg_random, tokenizer, label_names)
    width = int(cfg.data.max_length)
    fixed = [pad_to(b, width, datamodule.pad_values(), tokenizer.padding_side == "left") for b in random_batches]
    variants = {"grouped_dynamic": grouped, "random_dynamic": random_batches, f"fixed_{width}": fixed}
    for name, batches in variants.items():
        tokens = sum(b["input_ids"].numel() for b in batches)
        real = sum(int(b["attention_mask"].sum()) for b in batches)
        print(f"  {name}: {len(batches)} batches, mean padded length "
              f"{statistics.mean(b['input_ids'].shape[1] for b in batches):.1f}, "
              f"{100 * (1 - real / tokens):.1f}% padding tokens", flush=True)
    runs: dict[str, list[Round]] = {name: [] for name in variants}
    for _ in range(args.pad_rounds):
        for name, batches in variants.items():
            runs[name].append(lightning_round(cfg, module, batches, init_state, args.seed))
            print(f"  {name}: {runs[name][-1].rate(args.skip):.1f} samples/s", flush=True)
    rates = {name: median_rate(rounds, args.skip) for name, rounds in runs.items()}
    fixed_name = f"fixed_{width}"
    note = f"steps {args.skip}..{n - 1} of {n} x batch {args.batch_size}, median of {args.pad_rounds}"
    result("grouped_dynamic_samples_per_s", f"{rates['grouped_dynamic']:.1f}",
           f"lmlab default: length-grouped + dynamic padding; {note}")
    result("random_dynamic_samples_per_s", f"{rates['random_dynamic']:.1f}", "data.group_by_length=false")
    result(f"{fixed_name}_samples_per_s", f"{rates[fixed_name]:.1f}", f"the random batches padded to {width}")
    result(f"speedup_grouped_vs_{fixed_name}", f"{rates['grouped_dynamic'] / rates[fixed_name]:.2f}x", "info")
    result(f"speedup_random_dynamic_vs_{fixed_name}", f"{rates['random_dynamic'] / rates[fixed_name]:.2f}x", "info")
    result("speedup_grouped_vs_random_dynamic", f"{rates['grouped_dynamic'] / rates['random_dynamic']:.2f}x",
           "info; experiments/sst2_minilm.yaml says ~3x for a whole epoch")
    result("same_samples_in_all_variants", "yes" if same_samples(grouped, random_batches) else "NO", "must be yes")


def run_task(args: argparse.Namespace, workdir: Path) -> None:
    """Both parts for one task (args.task), in ``workdir``."""
    import lightning as L

    from lmlab.builders import build_task_module, build_tokenizer
    from lmlab.run_dir import plain_config

    cfg = compose_config(overrides_for(args, args.steps), workdir)
    if cfg.trainer.accumulate_grad_batches != 1 or str(cfg.trainer.precision) not in ("32-true", "bf16-mixed"):
        raise SystemExit("the plain loop mirrors fp32 or bf16-mixed training without gradient accumulation only")
    L.seed_everything(args.seed, workers=True, verbose=False)
    tokenizer = build_tokenizer(cfg)
    datamodule, batches = train_batches(cfg, tokenizer)
    batches = batches[: args.steps]
    if len(batches) <= args.skip:
        raise SystemExit(f"{args.task}: only {len(batches)} training batches, not more than --skip={args.skip}")
    label_names = datamodule.label_names
    module = build_task_module(cfg, plain_config(cfg), label_names, tokenizer=tokenizer)
    init_state = copy.deepcopy(module.model.state_dict())
    wrapper = module_copy(module, tokenizer)  # the plain loop's
    n_params = sum(p.numel() for p in module.model.parameters())
    source = cfg.model.name_or_path or f"random init from_config {cfg.model.from_config.model_type}"
    print(f"== task {args.task}: {cfg.task.name} ==")
    print(f"model: {source} ({n_params / 1e6:.1f}M params), task {cfg.task.name}, "
          f"trainer accelerator={cfg.trainer.accelerator}, precision {cfg.trainer.precision}")
    print(f"training: {cfg.optimizer._target_.rsplit('.', 1)[-1]} lr {cfg.optimizer.lr}, scheduler "
          f"{cfg.scheduler.name} (warmup_ratio {cfg.scheduler.warmup_ratio}), gradient clip "
          f"{cfg.trainer.gradient_clip_val} ({cfg.trainer.gradient_clip_algorithm})")
    print(f"lightning path: callbacks {', '.join(cfg.get('callbacks') or {}) or 'none'} (+ the benchmark's timer), "
          f"logger {', '.join(cfg.get('logger') or {}) or 'none'} (--callbacks {args.callbacks})")
    print(f"data: {cfg.data.name} train, data.limit_train_samples={cfg.data.limit_train_samples} = {len(batches)} "
          f"steps x batch {args.batch_size}, max_length {cfg.data.max_length}, "
          f"group_by_length={cfg.data.group_by_length}, mean padded length "
          f"{statistics.mean(b['input_ids'].shape[1] for b in batches):.1f}")
    print("batches: one epoch from lmlab's train_dataloader(), collated ONCE into a list that every run "
          "reuses (data loading and collation are excluded from all timings)")
    print(f"timing: {args.warmup} untimed warm-up steps per path, then {rounds_for(args)} rounds; in each round one "
          f"trainer.fit epoch runs, and inside every Lightning step a plain-loop step on the same batch (before it "
          f"in every other step, after it in the rest), timed apart; both from the initial weights and seed; "
          f"steps {args.skip}..{len(batches) - 1} timed", flush=True)
    print(flush=True)

    part_overhead(args, cfg, module, wrapper, batches, init_state)
    if args.pad_steps > 0 and args.task == "sst2":
        print(flush=True)
        part_padding(args, cfg, tokenizer, module, init_state, label_names, workdir)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    set_environment()
    started = time.perf_counter()

    import lightning as L
    import torch
    import transformers

    quiet()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    threads = "set by --threads" if args.threads is not None else "torch default, not set by this script"

    print("== lmlab overhead benchmark ==")
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"machine: {os.cpu_count()} cores ({len(os.sched_getaffinity(0))} usable), {cpu_model()}, "
          f"{platform.system()} {platform.machine()}")
    print(f"software: python {platform.python_version()}, torch {torch.__version__}, lightning {L.__version__}, "
          f"transformers {transformers.__version__}")
    print(f"torch threads: {torch.get_num_threads()} ({threads}); interop threads: {torch.get_num_interop_threads()}")
    print(f"load average at start: {load_avg()} (other processes on these cores make timings noisy)")
    print(f"data root: {os.environ['LMLAB_DATA_ROOT']}", flush=True)

    tasks = [args.task] if args.task != "all" else list(FLOOR_MODELS if args.floor else EXPERIMENTS)
    for task in tasks:
        args.task = task
        with tempfile.TemporaryDirectory(prefix="lmlab-bench-") as tmp:
            run_task(args, Path(tmp))
    print(flush=True)
    print(f"load average at end: {load_avg()}; total time {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
