"""One LightningModule per task over a small shared base; TASKS maps task.name to (module, datamodule)."""

from __future__ import annotations

TASKS = {
    "sequence_classification": (
        "lmlab.tasks.sequence_classification:SequenceClassificationTask",
        "lmlab.data.sequence_classification:SequenceClassificationDataModule",
    ),
    "token_classification": (
        "lmlab.tasks.token_classification:TokenClassificationTask",
        "lmlab.data.token_classification:TokenClassificationDataModule",
    ),
    "seq2seq": (
        "lmlab.tasks.seq2seq:Seq2SeqTask",
        "lmlab.data.seq2seq:Seq2SeqDataModule",
    ),
    "causal_lm": (
        "lmlab.tasks.causal_lm:CausalLMTask",
        "lmlab.data.language_modeling:CausalLMDataModule",
    ),
    "masked_lm": (
        "lmlab.tasks.masked_lm:MaskedLMTask",
        "lmlab.data.language_modeling:MaskedLMDataModule",
    ),
    "prompt_classification": (
        "lmlab.tasks.prompt_classification:PromptClassificationTask",
        "lmlab.data.prompt_classification:PromptClassificationDataModule",
    ),
}


def load_task(name: str) -> tuple[type, type]:
    """The (LightningModule class, LightningDataModule class) of a task name."""
    import importlib

    from lmlab.errors import ConfigError

    if name not in TASKS:
        raise ConfigError([f"task.name={name!r} is not a known task. Valid: {', '.join(TASKS)}."])
    classes = []
    for path in TASKS[name]:
        module, _, attr = path.partition(":")
        classes.append(getattr(importlib.import_module(module), attr))
    return classes[0], classes[1]
