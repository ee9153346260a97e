"""Back-translation paraphrases of the train split (Sennrich et al. 2016; UDA, Xie et al. 2020; nlpaug).

Each train text is translated into a pivot language by ``augment.forward_model`` and back by
``augment.backward_model`` (any local ``AutoModelForSeq2SeqLM`` directory: a MarianMT/T5 export or a lmlab
seq2seq run's ``export/``). Generating is far too slow to do per batch, so the paraphrases are made once per
train split, batched and without gradients, and cached as JSON under ``${paths.cache_dir}/back_translation``,
keyed by both models' file fingerprints, the texts and the generation settings. The file's rows are aligned
with the train rows the loader serves. During training ``BackTranslation`` swaps a row's text for its
paraphrase with probability ``augment.prob``, drawn from the row's (seed, epoch, row) generator (augment.py).

Nothing here imports torch or transformers at module level: ``spec_problem`` runs at validate time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from lmlab.errors import ConfigError, ModelLoadError

log = logging.getLogger(__name__)

CACHE_FORMAT = 1  # bump when the cached layout or the generation logic changes
MODEL_KEYS = ("forward_model", "backward_model")
# Settings that change the generated texts (part of the cache key); batch_size too, as padding can flip a
# near-tied beam.
SETTINGS = ("forward_prefix", "backward_prefix", "num_beams", "do_sample", "temperature", "max_new_tokens",
            "batch_size")
# Files a hub snapshot needs for from_pretrained (online only): config, weights, tokenizer.
HUB_FILES = ["*.json", "*.safetensors", "*.bin", "*.model", "*.spm", "*.txt"]
MAX_SOURCE_TOKENS = 512  # inputs are cut here when the tokenizer declares no (or an absurd) model_max_length


def _fix(key: str) -> str:
    return (f"Fix: set augment.{key} to a directory made by save_pretrained holding a seq2seq model and its "
            "tokenizer (a MarianMT/T5 export, or a lmlab seq2seq run's export/).")


def spec_problem(key: str, spec: str | None) -> str | None:
    """Why ``augment.<key>=spec`` cannot be used, found without importing torch (None: it looks usable). A hub
    id must be in the Hugging Face cache when the hub is unreachable: offline that is known before any work."""
    from lmlab.models import _looks_like_path, hub_reachable, resolve_package_path

    if spec is None or not str(spec).strip():
        return f"augment.method=back_translation needs augment.{key}. {_fix(key)}"
    spec = str(spec)
    try:
        path = resolve_package_path(spec) if spec.startswith("pkg:") else Path(spec).expanduser()
    except ModelLoadError as e:
        return f"augment.{key}={spec}: {e}"
    if path.exists() or spec.startswith("pkg:") or _looks_like_path(spec):
        if not path.is_dir():
            return f"augment.{key}={spec}: no such directory ({path}). {_fix(key)}"
        if not (path / "config.json").is_file():
            return f"augment.{key}={spec}: {path} has no config.json, so it is not a saved transformers model. {_fix(key)}"
        return None
    if _hub_snapshot(spec) is None and not hub_reachable():
        return (f"augment.{key}={spec} is not a local directory and is not in the Hugging Face cache, and the hub is "
                f"unreachable (offline). Fix: on a machine with internet run `hf download {spec} --local-dir DIR`, "
                f"copy DIR here and set augment.{key}=DIR.")
    return None


def _hub_snapshot(repo_id: str) -> Path | None:
    """The cached snapshot directory of a hub model (None: not cached)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo_id, "config.json")
    except ValueError:  # not a valid repo id
        return None
    return Path(found).parent if isinstance(found, str) else None


def model_dir(key: str, spec: str) -> Path:
    """The local directory of ``augment.<key>``: a path, ``pkg:PACKAGE/DIR``, or a hub id (its cached snapshot;
    downloaded first when the hub is reachable)."""
    problem = spec_problem(key, spec)
    if problem is not None:
        raise ConfigError([problem])
    from lmlab.models import resolve_package_path

    path = resolve_package_path(spec) if spec.startswith("pkg:") else Path(spec).expanduser()
    if path.is_dir():
        return path
    snapshot = _hub_snapshot(spec)
    if snapshot is not None:
        return snapshot
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(spec, allow_patterns=HUB_FILES))


def dir_fingerprint(path: Path) -> str:
    """Hash of every file under a model directory (name + content; size + mtime for files over 64 MB)."""
    from lmlab.data.base import file_fingerprint

    files = sorted(p for p in path.rglob("*") if p.is_file() and not any(part.startswith(".")
                                                                          for part in p.relative_to(path).parts))
    parts = [f"{p.relative_to(path).as_posix()}={file_fingerprint(p)}" for p in files]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:20]


def settings_of(augment: dict[str, Any]) -> dict[str, Any]:
    """The generation settings of an ``augment`` config."""
    return {name: augment[name] for name in SETTINGS}


def cache_path(cache_root: Path, texts: list[str], fingerprints: list[str], settings: dict[str, Any],
               seed: int) -> Path:
    """Where the paraphrases of ``texts`` live: a key over the models, texts and settings (and the seed, when
    sampling: beam search does not depend on it, so every seed shares one file)."""
    key = json.dumps({"format": CACHE_FORMAT, "models": fingerprints, "settings": settings,
                      "texts": hashlib.sha256("\n".join(texts).encode()).hexdigest(), "rows": len(texts),
                      "seed": seed if settings["do_sample"] else None}, sort_keys=True)
    return cache_root / "back_translation" / f"{hashlib.sha256(key.encode()).hexdigest()[:20]}.json"


def _load_seq2seq(key: str, path: Path) -> tuple[Any, Any]:
    """(tokenizer, model in eval mode) from a local directory; errors name ``augment.<key>``."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        model = AutoModelForSeq2SeqLM.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        raise ModelLoadError(f"augment.{key}={path}: could not load a seq2seq model and its tokenizer "
                             f"({type(e).__name__}: {str(e)[:300]}). {_fix(key)}") from e
    return tokenizer, model.eval()


def translate(key: str, path: Path, texts: list[str], settings: dict[str, Any], prefix: str,
              seed: int) -> list[str]:
    """``texts`` translated by the model in ``path``: batched ``generate`` without gradients, shortest texts
    batched together (less padding); sampling draws from a generator seeded by (seed, model, batch)."""
    import torch

    tokenizer, model = _load_seq2seq(key, path)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    limit = tokenizer.model_max_length if 0 < tokenizer.model_max_length <= 100_000 else MAX_SOURCE_TOKENS
    kwargs: dict[str, Any] = {"num_beams": settings["num_beams"], "do_sample": settings["do_sample"],
                              "max_new_tokens": settings["max_new_tokens"]}
    if settings["do_sample"]:
        kwargs["temperature"] = settings["temperature"]
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out: list[str] = [""] * len(texts)
    size = settings["batch_size"]
    for start in range(0, len(order), size):
        rows = order[start:start + size]
        batch = tokenizer([prefix + texts[i] for i in rows], return_tensors="pt", padding=True, truncation=True,
                          max_length=limit).to(device)
        with torch.no_grad(), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(int(np.random.SeedSequence([seed, MODEL_KEYS.index(key), start]).generate_state(1)[0]))
            ids = model.generate(**batch, **kwargs)  # (batch, generated tokens)
        for i, text in zip(rows, tokenizer.batch_decode(ids, skip_special_tokens=True), strict=True):
            out[i] = text.strip()
    return out


def _generate(texts: list[str], augment: dict[str, Any], dirs: dict[str, Path], seed: int) -> list[dict[str, str]]:
    """Rows ``{"text", "pivot", "paraphrase"}`` aligned with ``texts``; each distinct non-empty text is
    translated once."""
    unique = list(dict.fromkeys(t for t in texts if t.strip()))
    settings = settings_of(augment)
    pivots = translate("forward_model", dirs["forward_model"], unique, settings, augment["forward_prefix"], seed)
    back = translate("backward_model", dirs["backward_model"], pivots, settings, augment["backward_prefix"], seed)
    by_text = {t: {"text": t, "pivot": p, "paraphrase": b} for t, p, b in zip(unique, pivots, back, strict=True)}
    return [by_text.get(t, {"text": t, "pivot": "", "paraphrase": ""}) for t in texts]


def _write_atomic(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    tmp.write_text(json.dumps(payload, ensure_ascii=False))
    os.replace(tmp, path)  # readers see the old file or the whole new one, never half of it


def prepare_paraphrases(texts: list[str], augment: dict[str, Any], cache_root: Path,
                        seed: int) -> tuple[list[str], Path, bool]:
    """(paraphrase per row of ``texts``, cache file, whether it was a cache hit). Generated once per (models,
    texts, settings); parallel jobs and DDP ranks wait on one lock and then read the file."""
    from filelock import FileLock

    dirs = {key: model_dir(key, str(augment[key])) for key in MODEL_KEYS}
    fingerprints = [dir_fingerprint(dirs[key]) for key in MODEL_KEYS]
    path = cache_path(cache_root, texts, fingerprints, settings_of(augment), seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        hit = path.is_file()
        if hit:
            rows = json.loads(path.read_text())["rows"]
            log.info("augment=back_translation: paraphrases of %d train rows from %s [cache hit]", len(rows), path)
        else:
            began = time.perf_counter()
            rows = _generate(texts, augment, dirs, seed)
            _write_atomic(path, {"format": CACHE_FORMAT, "models": {k: str(dirs[k]) for k in MODEL_KEYS},
                                 "fingerprints": fingerprints, "settings": settings_of(augment), "rows": rows})
            log.info("augment=back_translation: translated %d train rows (%d distinct texts) via the pivot in %.1f s, "
                     "cached at %s [generated]", len(rows), len({r["text"] for r in rows}),
                     time.perf_counter() - began, path)
    empty = sum(1 for r in rows if r["text"].strip() and not r["paraphrase"])
    if empty:
        log.warning("augment=back_translation: %d of %d paraphrases are empty; those rows keep their text",
                    empty, len(rows))
    return [r["paraphrase"] for r in rows], path, hit


class BackTranslation:
    """Augmenter: ``__call__(text, rng)`` -> the text's back-translation with probability ``prob``, else the
    text. Paraphrases are looked up by text (a duplicated text has one paraphrase); an empty one is not used."""

    def __init__(self, texts: list[str], paraphrases: list[str], prob: float):
        self.paraphrases = {t: p for t, p in zip(texts, paraphrases, strict=True) if p}
        self.prob = prob

    def __call__(self, text: str, rng: np.random.Generator) -> str:
        if rng.random() >= self.prob:
            return text
        return self.paraphrases.get(text, text)
