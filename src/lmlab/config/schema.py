"""Typed schemas for the config tree, registered in Hydra's ConfigStore.

Every YAML option of a group lists its schema first in its defaults list, so a typo'd key or a value of
the wrong type fails while Hydra composes the config, before any heavy import. Documentation of each
key lives next to its default in the YAML files; the schema only fixes names and types.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class TaskConfig:
    name: str = MISSING
    monitor: str = MISSING
    monitor_mode: str = "max"
    per_class_report: bool = True


@dataclass
class TokenizerTrainingConfig:
    algorithm: str | None = None  # None: no tokenizer training
    vocab_size: int = 8000
    min_frequency: int = 2
    lowercase: bool = True


@dataclass
class ModelConfig:
    name_or_path: str | None = None
    from_config: Any = None  # a dict; typed Any because OmegaConf cannot assign a dict into an Optional[Dict] holding None
    tokenizer: str | None = None
    revision: str | None = None
    trust_remote_code: bool = False
    init_from: str | None = None
    train_mode: bool = True
    attn_implementation: str | None = None  # None: transformers' choice (sdpa where the model supports it)
    cpu_dropout: str = "fast"  # fast | torch: dropout masks on CPU (techniques/cpu_dropout.py)
    compile: bool = False
    compile_mode: str | None = None
    compile_backend: str = "inductor"
    # Not Optional: OmegaConf cannot merge a dict override into a structured field holding None.
    train_tokenizer: TokenizerTrainingConfig = field(default_factory=TokenizerTrainingConfig)


@dataclass
class DataFiles:
    train: str | None = None
    validation: str | None = None
    test: str | None = None


@dataclass
class HubDataset:
    path: str | None = None
    name: str | None = None
    train_split: str = "train"
    validation_split: str = "validation"
    test_split: str | None = None


@dataclass
class DataConfig:
    name: str = MISSING
    root: str = MISSING
    files: DataFiles = field(default_factory=DataFiles)
    hub: HubDataset = field(default_factory=HubDataset)
    format: str = "auto"
    encoding: str = "utf-8"
    quoting: str = "minimal"
    has_header: bool = True
    column_names: list[str] | None = None
    text_column: str = "sentence"
    text_pair_column: str | None = None
    label_column: str = "label"
    max_length: int = 128
    batch_size: int = 32
    eval_batch_size: int = 128
    num_workers: int = 0
    group_by_length: bool = True
    limit_train_samples: int | None = None
    limit_val_samples: int | None = None
    limit_test_samples: int | None = None
    cache_dir: str = MISSING
    use_cache: bool = True


@dataclass
class SequenceClassificationTaskConfig(TaskConfig):
    positive_label: str | None = None
    aux_mlm_weight: float = 0.0  # λ of the auxiliary MLM loss (issue 5: aux/adversarial/augment owner)


@dataclass
class TokenClassificationTaskConfig(TaskConfig):
    metric_mode: str = "conlleval"


@dataclass
class TokenClassificationDataConfig(DataConfig):
    tag_column_index: int = -1
    tag_scheme: str = "iob2"
    invalid_tags: str = "repair"
    label_all_subwords: bool = False


@dataclass
class GenerationConfig:
    prompts: list[str] = field(default_factory=list)
    max_new_tokens: int = 40
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 50
    top_p: float = 1.0
    seed: int = 0
    every_n_epochs: int = 1


@dataclass
class CausalLMTaskConfig(TaskConfig):
    generation: GenerationConfig = field(default_factory=GenerationConfig)


@dataclass
class MaskedLMTaskConfig(TaskConfig):
    mlm_probability: float = 0.15
    whole_word_masking: bool = False
    mask_replace_prob: float = 0.8
    random_replace_prob: float = 0.1


@dataclass
class LineRanges:
    train: list[float] | None = None
    validation: list[float] | None = None
    test: list[float] | None = None


@dataclass
class LanguageModelingDataConfig(DataConfig):
    grouping: str = "block"
    line_ranges: LineRanges = field(default_factory=LineRanges)
    next_sentence: bool = False
    num_proc: int | None = None  # tokenizer processes; None = auto (all usable cores, up to 8, for >= 50k lines)


@dataclass
class Seq2SeqTaskConfig(TaskConfig):
    source_prefix: str = ""
    num_beams: int = 4
    max_new_tokens: int = 64


@dataclass
class Seq2SeqDataConfig(DataConfig):
    source_column: str = "source"
    target_column: str = "target"
    source_suffix: str | None = None
    target_suffix: str | None = None
    source_prefix: str = ""
    max_target_length: int = 128
    skip_empty: bool = True


@dataclass
class PromptClassificationTaskConfig(TaskConfig):
    """task=prompt_classification: a masked LM scores verbalizer words at the [MASK] of a template."""

    template: str = "{text} It was {mask}."
    verbalizer: dict[str, str] = field(default_factory=dict)  # label value -> single-token word
    positive_label: str | None = None
    few_shot_k: int | None = None  # train on k rows per class (None: every train row)
    calibrate: bool = False  # contextual calibration of evaluation scores


@dataclass
class OptimizerConfig:
    _target_: str = MISSING
    _partial_: bool = True
    lr: float = MISSING
    weight_decay: float = 0.0
    no_weight_decay: list[str] = field(default_factory=list)


@dataclass
class AdamWConfig(OptimizerConfig):
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    fused: bool | None = None


@dataclass
class SGDConfig(OptimizerConfig):
    momentum: float = 0.0
    nesterov: bool = False
    dampening: float = 0.0


@dataclass
class SchedulerConfig:
    name: str = MISSING
    warmup_ratio: float = 0.0
    warmup_steps: int | None = None


@dataclass
class TrainerConfig:
    """The lightning.pytorch.Trainer arguments lmlab exposes (a typo'd one fails at compose time)."""

    _target_: str = "lightning.pytorch.Trainer"
    accelerator: str = "auto"
    strategy: Any = "auto"
    devices: Any = 1
    num_nodes: int = 1
    precision: Any = "auto"
    max_epochs: int | None = None
    min_epochs: int | None = None
    max_steps: int = -1
    max_time: str | None = None
    val_check_interval: Any = None
    check_val_every_n_epoch: int | None = 1
    num_sanity_val_steps: int = 2
    log_every_n_steps: int = 50
    accumulate_grad_batches: int = 1
    gradient_clip_val: float | None = None
    gradient_clip_algorithm: str | None = None
    deterministic: Any = None
    benchmark: bool | None = None
    fast_dev_run: Any = False
    overfit_batches: Any = 0.0
    limit_train_batches: Any = None
    limit_val_batches: Any = None
    limit_test_batches: Any = None
    limit_predict_batches: Any = None
    profiler: Any = None
    detect_anomaly: bool = False
    enable_progress_bar: bool = True
    enable_model_summary: bool = True
    enable_checkpointing: bool = True
    use_distributed_sampler: bool = True
    sync_batchnorm: bool = False
    inference_mode: bool = True
    reload_dataloaders_every_n_epochs: int = 0
    default_root_dir: str | None = None


# -- fine-tuning techniques (issue 5). Each block below is one top-level config group. -----------------
@dataclass
class FinetuneConfig:
    """`finetune` group: freezing, gradual unfreezing, layer-wise LR decay, head LR."""

    freeze: list[str] = field(default_factory=list)
    unfreeze: list[str] = field(default_factory=list)
    unfreeze_every_n_epochs: int = 1
    layerwise_lr_decay: float | None = None
    head_lr: float | None = None


@dataclass
class PeftConfig:
    """`peft` group: parameter-efficient fine-tuning through the peft library (method None: off).

    One schema per method (below), so a key of another method (``peft=lora peft.num_virtual_tokens=5``)
    fails at compose time. ``modules_to_save``: modules trained in full beside the adapter (the task head
    is added by peft for classification)."""

    method: str | None = None
    modules_to_save: list[str] | None = None


@dataclass
class LoraPeftConfig(PeftConfig):
    r: int = 8
    alpha: int = 16
    dropout: float = 0.1
    target_modules: list[str] | None = None  # None: peft's default for the architecture
    bias: str = "none"


@dataclass
class IA3PeftConfig(PeftConfig):
    target_modules: list[str] | None = None
    feedforward_modules: list[str] | None = None


@dataclass
class PromptTuningPeftConfig(PeftConfig):
    num_virtual_tokens: int = 20
    init_text: str | None = None  # None: random init


@dataclass
class PrefixTuningPeftConfig(PeftConfig):
    num_virtual_tokens: int = 20
    prefix_projection: bool = False
    encoder_hidden_size: int | None = None


@dataclass
class AdversarialConfig:
    """`adversarial` group: FGM/PGD perturbations of the word embeddings (method None: off)."""

    method: str | None = None
    epsilon: float = 0.2
    alpha: float | None = None
    steps: int = 1
    loss_weight: float = 1.0


@dataclass
class AugmentConfig:
    """`augment` group: train-split text augmentation for classification (method None: off)."""

    method: str | None = None
    prob: float = 0.5
    operations: list[str] = field(default_factory=lambda: ["synonym", "insert", "swap", "delete"])
    alpha: float = 0.1
    synonyms: str | None = None
    # method back_translation (lmlab.data.back_translation): two seq2seq models, text -> pivot -> text.
    forward_model: str | None = None
    backward_model: str | None = None
    forward_prefix: str = ""
    backward_prefix: str = ""
    num_beams: int = 4
    do_sample: bool = False
    temperature: float = 1.0
    max_new_tokens: int = 128
    batch_size: int = 32


@dataclass
class PathsConfig:
    root_dir: str = MISSING
    data_root: str = MISSING
    log_dir: str = MISSING
    # None only where Hydra runs no job: `--cfg job --resolve` prints the config without a run dir.
    output_dir: str | None = MISSING
    cache_dir: str = MISSING


# A task with options of its own subclasses TaskConfig (and DataConfig for its data keys) and adds the
# classes here; its YAML files then name `<task>_schema` / `<task>_data_schema` first in their defaults.
SCHEMAS: list[tuple[str, str, type]] = [
    ("task", "task_schema", TaskConfig),
    ("task", "sequence_classification_schema", SequenceClassificationTaskConfig),
    ("task", "token_classification_schema", TokenClassificationTaskConfig),
    ("data", "token_classification_data_schema", TokenClassificationDataConfig),
    ("task", "causal_lm_schema", CausalLMTaskConfig),
    ("task", "masked_lm_schema", MaskedLMTaskConfig),
    ("data", "language_modeling_data_schema", LanguageModelingDataConfig),
    ("task", "seq2seq_schema", Seq2SeqTaskConfig),
    ("data", "seq2seq_data_schema", Seq2SeqDataConfig),
    ("task", "prompt_classification_schema", PromptClassificationTaskConfig),
    ("model", "model_schema", ModelConfig),
    ("data", "data_schema", DataConfig),
    ("optimizer", "adamw_schema", AdamWConfig),
    ("optimizer", "sgd_schema", SGDConfig),
    ("scheduler", "scheduler_schema", SchedulerConfig),
    ("trainer", "trainer_schema", TrainerConfig),
    ("paths", "paths_schema", PathsConfig),
    ("finetune", "finetune_schema", FinetuneConfig),
    ("peft", "peft_schema", PeftConfig),
    ("peft", "lora_schema", LoraPeftConfig),
    ("peft", "ia3_schema", IA3PeftConfig),
    ("peft", "prompt_tuning_schema", PromptTuningPeftConfig),
    ("peft", "prefix_tuning_schema", PrefixTuningPeftConfig),
    ("adversarial", "adversarial_schema", AdversarialConfig),
    ("augment", "augment_schema", AugmentConfig),
]


def register() -> None:
    """Register every schema (idempotent; cheap: dataclasses only)."""
    cs = ConfigStore.instance()
    for group, name, node in SCHEMAS:
        cs.store(group=group, name=name, node=node)
