"""`lmlab generate ckpt_path=... prompt="..."`: print the continuation of a prompt by a causal LM.

``ckpt_path`` is a causal_lm checkpoint (rebuilt with the config saved in it, like `lmlab evaluate`) or a
save_pretrained directory such as a run's export/. Greedy by default (the same output every time); set
do_sample=true (with temperature/top_k/top_p, seeded by ``seed``) to sample.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from lmlab.app import run_app
from lmlab.errors import CheckpointError

log = logging.getLogger("lmlab.generate")


def load_generator(cfg: DictConfig) -> tuple[Any, Any]:
    """(causal LM, tokenizer) from cfg.ckpt_path: a lmlab checkpoint or a save_pretrained directory."""
    path = Path(str(cfg.ckpt_path)).expanduser()
    if path.is_dir():
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from lmlab.models import _load

        return _load(AutoModelForCausalLM, str(path), "model"), _load(AutoTokenizer, str(path), "tokenizer")
    from lmlab.builders import restore_task

    module, _, tokenizer, _, meta = restore_task(cfg, splits=())
    if meta.get("task") != "causal_lm":
        raise CheckpointError(
            f"ckpt_path={path} is a task={meta.get('task')} checkpoint; lmlab generate continues text with a "
            "causal language model. Fix: a checkpoint of a task=causal_lm run (e.g. experiment=clm_tiny_shakespeare) "
            "or its export/ directory."
        )
    return module.model, tokenizer


def generate(cfg: DictConfig) -> list[str]:
    """Print (and return) the prompt(s) followed by their continuations; also writes them to cfg.output."""
    from lmlab.app import use_hydra_logging
    from lmlab.tasks.causal_lm import generate_continuations

    use_hydra_logging()
    model, tokenizer = load_generator(cfg)
    prompts = [str(cfg.prompt)] if isinstance(cfg.prompt, str) else [str(p) for p in cfg.prompt]
    texts = generate_continuations(model, tokenizer, prompts, int(cfg.max_new_tokens), bool(cfg.do_sample),
                                   float(cfg.temperature), int(cfg.top_k), float(cfg.top_p), int(cfg.seed))
    if cfg.output:
        records = [{"prompt": p, "text": t} for p, t in zip(prompts, texts, strict=True)]
        Path(str(cfg.output)).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    for text in texts:
        log.info("generated: %r", text)
    print("\n\n".join(texts))
    return texts


def main() -> None:
    run_app("generate", generate)


if __name__ == "__main__":
    main()
