"""Parameter-efficient fine-tuning through the ``peft`` library (config group ``peft``).

``wrap_model`` turns the task's transformers model into a peft model (LoRA, IA3, prompt or prefix tuning);
the task module then trains only what peft left trainable (adapters + the task head via ``modules_to_save``).

Checkpoints: when the base weights can be reloaded from ``model.name_or_path`` (a pretrained model, no
``model.init_from``), a checkpoint's ``state_dict`` holds only the trainable weights and its lmlab metadata
says so (``peft.checkpoint: trainable``); restoring loads the base from its pointer, then those weights. A
random-init base (``model.from_config``) or one patched by ``model.init_from`` cannot be rebuilt from a
pointer, so its checkpoints keep the full state (``peft.checkpoint: full``).

Export: LoRA/IA3 are merged into the base weights (``merge_and_unload``) and saved as a plain transformers
model; prompt/prefix tuning cannot be merged, so export/ holds the peft adapter (``PeftModel.from_pretrained``).

This module imports no torch/peft at import time: ``config_problems`` runs while validating a config.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

METHODS = ("lora", "ia3", "prompt_tuning", "prefix_tuning")
MERGEABLE = ("lora", "ia3")
# lmlab task -> peft TaskType. masked_lm has no peft task type (its BERT fast path calls the encoder
# directly, which a peft wrapper hides), so it is refused with a message.
TASK_TYPES = {"sequence_classification": "SEQ_CLS", "token_classification": "TOKEN_CLS",
              "causal_lm": "CAUSAL_LM", "seq2seq": "SEQ_2_SEQ_LM"}
# (task, method) pairs peft cannot run whatever the model (tried on tiny models: tests/test_peft.py). Prefix
# tuning depends on the model (it needs past_key_values, which BERT-style encoders lack in transformers 5):
# wrap_model refuses it there, naming option, task and model type.
UNSUPPORTED: dict[tuple[str, str], str] = {
    ("token_classification", "prompt_tuning"): "peft prepends the virtual tokens to the inputs but not to the "
                                               "per-token labels, so logits and labels no longer line up",
}
# finetune.* options that decide which base weights train or at which lr: peft decides that itself.
CONFLICTS = {"finetune.freeze": [], "finetune.unfreeze": [], "finetune.layerwise_lr_decay": None,
             "finetune.head_lr": None}


def _get(cfg: DictConfig, key: str) -> Any:
    return OmegaConf.select(cfg, key, default=None, throw_on_missing=False)


def config_problems(cfg: DictConfig) -> list[str]:
    """Every problem of the ``peft`` section and its combination with the task and finetune.* (no torch)."""
    method = _get(cfg, "peft.method")
    if method is None:
        return []
    if method not in METHODS:
        return [f"peft.method={method!r} is not a valid choice. Valid: {', '.join(METHODS)} (or peft=none)."]
    problems = []
    task = _get(cfg, "task.name")
    if task is not None and task not in TASK_TYPES:
        problems.append(f"peft={method} is not supported for task={task} (peft has no task type for it; "
                        f"supported tasks: {', '.join(TASK_TYPES)}). Fix: peft=none for task={task}.")
    elif (task, method) in UNSUPPORTED:
        problems.append(f"peft={method} is not supported for task={task}: {UNSUPPORTED[(task, method)]}. "
                        "Fix: peft=lora or peft=ia3 (they work with every supported task), or peft=none.")
    for key, off in CONFLICTS.items():
        value = _get(cfg, key)
        if value is not None and value != off:
            shown = list(value) if OmegaConf.is_list(value) else value
            problems.append(f"{key}={shown} conflicts with peft={method}: peft already freezes the base model and "
                            f"trains only adapters + task head at optimizer.lr. Fix: `{key}={off if off is not None else 'null'}`"
                            " or peft=none.")
    for key, low, high in (("peft.r", 1, None), ("peft.alpha", 1, None), ("peft.num_virtual_tokens", 1, None),
                           ("peft.dropout", 0.0, 1.0)):
        value = _get(cfg, key)
        if value is not None and (value < low or (high is not None and value >= high)):
            bound = f">= {low}" if high is None else f"in [{low}, {high})"
            problems.append(f"{key}={value} must be {bound}. Fix: `{key}=<a value {bound}>`.")
    bias = _get(cfg, "peft.bias")
    if bias is not None and bias not in ("none", "all", "lora_only"):
        problems.append(f"peft.bias={bias!r} is not a valid choice. Valid: none, all, lora_only.")
    return problems


def keeps_full_state(model_cfg: Any) -> bool:
    """Whether checkpoints must hold every weight: the base cannot be reloaded from model.name_or_path."""
    return model_cfg.get("from_config") is not None or model_cfg.get("init_from") is not None


def _tokenizer_location(model_cfg: Any) -> str:
    from lmlab.models import locate

    return locate(str(model_cfg.get("tokenizer") or model_cfg.get("name_or_path")), "tokenizer")[0]


def build_peft_config(peft_cfg: dict[str, Any], task: str, model_cfg: Any) -> Any:
    """The peft config object for ``peft_cfg`` (the plain ``peft`` section) on ``task``."""
    import peft

    method = peft_cfg["method"]
    common = {"task_type": TASK_TYPES[task], "modules_to_save": peft_cfg["modules_to_save"]}
    if method == "lora":
        return peft.LoraConfig(r=peft_cfg["r"], lora_alpha=peft_cfg["alpha"], lora_dropout=peft_cfg["dropout"],
                               target_modules=peft_cfg["target_modules"], bias=peft_cfg["bias"], **common)
    if method == "ia3":
        return peft.IA3Config(target_modules=peft_cfg["target_modules"],
                              feedforward_modules=peft_cfg["feedforward_modules"], **common)
    if method == "prompt_tuning":
        init = {}
        if peft_cfg["init_text"]:
            init = {"prompt_tuning_init": peft.PromptTuningInit.TEXT, "prompt_tuning_init_text": peft_cfg["init_text"],
                    "tokenizer_name_or_path": _tokenizer_location(model_cfg)}
        return peft.PromptTuningConfig(num_virtual_tokens=peft_cfg["num_virtual_tokens"], **init, **common)
    return peft.PrefixTuningConfig(num_virtual_tokens=peft_cfg["num_virtual_tokens"],
                                   prefix_projection=peft_cfg["prefix_projection"],
                                   encoder_hidden_size=peft_cfg["encoder_hidden_size"], **common)


def _check_positions(cfg: DictConfig, model: Any) -> None:
    """Prompt tuning prepends virtual tokens: with absolute positions they count against the model's limit."""
    from lmlab.errors import ConfigError

    limit = getattr(model.config, "max_position_embeddings", None)
    extra = int(cfg.peft.num_virtual_tokens)
    if limit and cfg.data.max_length + extra > limit:
        raise ConfigError([f"data.max_length={cfg.data.max_length} + peft.num_virtual_tokens={extra} is above the "
                           f"model's limit of {limit} positions. Fix: data.max_length={limit - extra} or less."])


def _takes_past_key_values(model: Any) -> bool:
    """peft's own test (run at forward time): the model's or its backbone's forward takes past_key_values."""
    import inspect

    backbone = getattr(model, model.base_model_prefix, model)
    return any("past_key_values" in inspect.signature(m.forward).parameters for m in (model, backbone))


def wrap_model(cfg: DictConfig, model: Any) -> tuple[Any, dict[str, Any] | None]:
    """(peft model, info) for ``cfg.peft``; (model, None) unchanged when peft is off.

    ``info``: method, trainable/total parameter counts and percent, and ``checkpoint`` (trainable | full)."""
    if cfg.peft.method is None:
        return model, None
    import peft

    from lmlab.errors import ConfigError

    if cfg.peft.method == "prompt_tuning":
        _check_positions(cfg, model)
    # peft's SEQ_CLS/TOKEN_CLS models check this only at the first forward; its LM models pass the prefix as kwargs.
    if cfg.peft.method == "prefix_tuning" and cfg.task.name.endswith("classification") and not _takes_past_key_values(model):
        raise ConfigError([f"peft=prefix_tuning is not supported for task={cfg.task.name} with {type(model).__name__} "
                           f"(model_type {model.config.model_type}): the model takes no past_key_values, which prefix "
                           "tuning needs. Fix: peft=lora | ia3 | prompt_tuning, or a decoder model (GPT-2 style)."])
    peft_cfg = OmegaConf.to_container(cfg.peft, resolve=True)
    config = build_peft_config(peft_cfg, cfg.task.name, cfg.model)
    try:
        wrapped = peft.get_peft_model(model, config)
    except ValueError as e:  # e.g. no default target_modules for this architecture, or a name that matches nothing
        raise ConfigError([f"peft={cfg.peft.method} cannot wrap {type(model).__name__} "
                           f"(model_type {model.config.model_type}): {str(e).splitlines()[0]} Fix: another "
                           "peft method, or peft.target_modules=<module names of this model> (BERT: [query,value])."]) from e
    trainable, total = wrapped.get_nb_trainable_parameters()
    info = {"method": cfg.peft.method, "trainable_params": int(trainable), "total_params": int(total),
            "trainable_percent": round(100.0 * trainable / total, 4),
            "checkpoint": "full" if keeps_full_state(cfg.model) else "trainable"}
    log.info("peft %s: %s trainable parameters of %s (%.3f %%); checkpoints hold %s", info["method"],
             f"{trainable:,}", f"{total:,}", info["trainable_percent"],
             "only the trainable weights" if info["checkpoint"] == "trainable" else
             "every weight (a from_config / init_from base cannot be reloaded from model.name_or_path)")
    return wrapped, info


def trainable_keys(module: Any) -> set[str]:
    """State-dict names of the module's trainable parameters (adapters, prompt encoder, modules_to_save)."""
    return {name for name, param in module.named_parameters() if param.requires_grad}


def keep_trainable(module: Any, checkpoint: dict[str, Any]) -> None:
    """Drop the frozen base weights from a checkpoint being saved (they come back from model.name_or_path)."""
    keep = trainable_keys(module)
    checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}


def check_trainable(module: Any, state_dict: dict[str, Any]) -> None:
    """A trainable-only state dict must hold every trainable weight of ``module`` and nothing it lacks (a
    non-strict load would silently skip both): RuntimeError, like a strict load, otherwise."""
    missing = sorted(trainable_keys(module) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(module.state_dict()))
    if missing or unexpected:
        raise RuntimeError(f"peft weights do not match the model: missing {missing[:3]}, unexpected {unexpected[:3]}")


def load_trainable(module: Any, state_dict: dict[str, Any]) -> None:
    """Load a trainable-only state dict into a module whose base weights are already loaded."""
    check_trainable(module, state_dict)
    module.load_state_dict(state_dict, strict=False)


def save_export(model: Any, out_dir: Path) -> str:
    """Write ``model`` (a peft model) to ``out_dir``: merged into plain weights for LoRA/IA3 ("merged"),
    the peft adapter for prompt/prefix tuning ("adapter"). The module's own model is left unmerged."""
    if model.peft_config["default"].peft_type.value.lower() in MERGEABLE:
        merged = copy.deepcopy(model).merge_and_unload()
        merged.save_pretrained(out_dir)
        return "merged"
    model.save_pretrained(out_dir)
    return "adapter"
