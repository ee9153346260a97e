"""The run directory: what a run leaves behind, written by rank 0 only.

Layout (``outputs/<task_name>/runs/<timestamp>_<id>/``):
  .hydra/                 Hydra's config.yaml, overrides.yaml, hydra.yaml
  config_resolved.yaml    the fully resolved config (secrets redacted)
  run.json                status, seed, world size, command, versions, git SHA, timings, W&B id
  git.diff                uncommitted changes of the project at launch (when any)
  checkpoints/            best.ckpt, last.ckpt
  logs/ tensorboard/ wandb/   logger output
  metrics.json            final val/test metrics (written atomically)
  export/                 save_pretrained model + tokenizer + label map of the best checkpoint
"""

from __future__ import annotations

import json
import os
import platform
import re
import socket
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from lmlab.errors import RunDirError

PACKAGES = ("lmlab", "torch", "lightning", "transformers", "tokenizers", "datasets", "torchmetrics",
            "hydra-core", "omegaconf", "wandb", "peft", "numpy")
SECRET_KEY = re.compile(r"(_key|_token|token|password|passwd|secret|api_key)$", re.IGNORECASE)
REDACTED = "***REDACTED***"


def is_rank_zero() -> bool:
    """Global rank 0 by the launcher's environment (valid before the Trainer exists)."""
    for var in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if var in os.environ:
            return os.environ[var] == "0"
    return True


def redact(obj: Any) -> Any:
    """A copy of a plain container with values under secret-looking keys replaced."""
    if isinstance(obj, dict):
        return {k: REDACTED if isinstance(k, str) and SECRET_KEY.search(k) and v else redact(v)
                for k, v in obj.items()}
    if isinstance(obj, list):
        return [redact(v) for v in obj]
    return obj


def redact_override(override: str) -> str:
    """``api_key=abc`` -> ``api_key=***REDACTED***`` (other overrides unchanged)."""
    key, eq, _ = override.partition("=")
    return f"{key}={REDACTED}" if eq and SECRET_KEY.search(key.lstrip("+~").rsplit(".", 1)[-1]) else override


def secret_values(cfg: DictConfig, overrides: list[str]) -> set[str]:
    """Every secret this run knows: values under secret-looking keys in the resolved config and the
    overrides, and secret-looking environment variables (WANDB_API_KEY, HF_TOKEN, ...)."""
    found: set[str] = set()

    def walk(obj: Any) -> None:
        if isinstance(obj, dict):
            for k, v in obj.items():
                if isinstance(k, str) and SECRET_KEY.search(k) and isinstance(v, str | int) and str(v):
                    found.add(str(v))
                walk(v)
        elif isinstance(obj, list):
            for v in obj:
                walk(v)

    walk(OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False))
    for override in overrides:
        key, eq, value = override.partition("=")
        if eq and SECRET_KEY.search(key.lstrip("+~").rsplit(".", 1)[-1]) and value:
            found.add(value)
    found.update(v for k, v in os.environ.items() if SECRET_KEY.search(k) and len(v) >= 6)
    return {v for v in found if len(v) >= 4 and v != REDACTED}


def scrub_files(paths: list[Path], secrets: set[str]) -> None:
    """Replace every secret in these text files (Hydra's .hydra/*.yaml copy the command line verbatim)."""
    for path in paths:
        text = path.read_text(encoding="utf-8", errors="surrogateescape")
        clean = text
        for secret in sorted(secrets, key=len, reverse=True):
            clean = clean.replace(secret, REDACTED)
        if clean != text:
            atomic_write_text(path, clean)


def plain_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as plain Python (what loggers and checkpoints store), secrets redacted."""
    return redact(OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False))


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temp file + fsync + rename, so a crash never leaves a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


def git_state(cwd: Path) -> dict[str, Any]:
    """SHA, branch and uncommitted diff of the git project containing ``cwd`` (empty when none)."""
    sha = _git(["rev-parse", "HEAD"], cwd)
    if sha is None:
        return {"sha": None, "dirty": None, "diff": ""}
    diff = _git(["diff", "HEAD"], cwd) or ""
    return {"sha": sha.strip(), "branch": (_git(["rev-parse", "--abbrev-ref", "HEAD"], cwd) or "").strip(),
            "dirty": bool(diff), "diff": diff}


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def path_name_problem(key: str, value: str) -> str | None:
    """Why a config value used as one directory name (``task_name`` in outputs/<task_name>/runs/) is unsafe:
    a '/', '\\' or '..' in it would put the run outside the log dir. None when it is a plain name."""
    if value and value not in (".", "..") and not any(c in value for c in "/\\\0"):
        return None
    return (f"{key}={value!r} names a directory inside paths.log_dir and must be a plain name (no '/', '\\', "
            f"'..'), so runs cannot land outside it. Fix: {key}=my_experiment; to write runs elsewhere set "
            "paths.log_dir=/some/dir (or hydra.run.dir=...).")


def check_creatable(path: Path, setting: str) -> None:
    """Fail before anything is written when ``path`` cannot be created: its nearest existing ancestor must be
    a directory we can create entries in (tried for real: permission bits say nothing for root or /proc)."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        if not probe.is_dir():
            raise NotADirectoryError(f"{probe} is a file, not a directory")
        tempfile.TemporaryDirectory(dir=probe, prefix=".lmlab-write-test-").cleanup()
    except OSError as e:
        raise RunDirError(
            f"Cannot write runs under {path} ({setting}): {e.strerror or e}"
            f"{f' ({probe})' if e.strerror else ''}. Fix: point it at a writable directory, e.g. "
            "paths.log_dir=/a/writable/dir, or free disk space."
        ) from e


class RunDir:
    """Reads and writes one run directory. Writes are no-ops on ranks other than 0."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.write = is_rank_zero()

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def meta_file(self) -> Path:
        return self.path / "run.json"

    def ensure_writable(self) -> None:
        """Fail before training when the run dir cannot be written (read-only, disk full)."""
        if not self.write:
            return
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.path, prefix=".write-test-"):
                pass
        except OSError as e:
            raise RunDirError(
                f"Run directory {self.path} is not writable ({e.strerror or e}). Fix: free disk space or "
                "point runs elsewhere with `paths.log_dir=/a/writable/dir` (or hydra.run.dir=...)."
            ) from e

    def ensure_fresh(self) -> None:
        """Refuse to reuse a run dir that holds a finished or started run (never overwrite results)."""
        if not self.write:
            return
        leftovers = [p.name for p in (self.meta_file, self.path / "metrics.json", self.checkpoints) if p.exists()]
        if leftovers:
            raise RunDirError(
                f"Run directory {self.path} already holds a run ({', '.join(leftovers)}); lmlab never "
                f"overwrites one. Fix: continue it with `resume={self.path}`, or start a new run without "
                "setting hydra.run.dir to an existing directory."
            )

    def read_meta(self) -> dict[str, Any]:
        if not self.meta_file.is_file():
            return {}
        return json.loads(self.meta_file.read_text(encoding="utf-8"))

    def update_meta(self, **fields: Any) -> None:
        if not self.write:
            return
        meta = self.read_meta()
        meta.update(fields)
        atomic_write_text(self.meta_file, json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n")

    def start(self, cfg: DictConfig, command: str, overrides: list[str], resumed: bool) -> None:
        """Record what is needed to understand and reproduce this run."""
        if not self.write:
            return
        scrub_files(sorted((self.path / ".hydra").rglob("*.yaml")), secret_values(cfg, overrides))
        command = " ".join(redact_override(part) for part in command.split(" "))
        overrides = [redact_override(o) for o in overrides]
        git = git_state(Path.cwd())
        if git.get("diff"):
            atomic_write_text(self.path / "git.diff", git["diff"])
        atomic_write_text(self.path / "config_resolved.yaml",
                          OmegaConf.to_yaml(OmegaConf.create(plain_config(cfg))))
        previous = self.read_meta()
        starts = [*previous.get("starts", []), time.strftime("%Y-%m-%dT%H:%M:%S%z")]
        self.update_meta(
            status="running", command=command, overrides=overrides, seed=int(cfg.seed),
            task=str(cfg.task.name), resumed=resumed, starts=starts, started_at=previous.get("started_at", starts[0]),
            git={"sha": git.get("sha"), "branch": git.get("branch"), "dirty": git.get("dirty")},
            packages=package_versions(), python=sys.version.split()[0], platform=platform.platform(),
            hostname=socket.gethostname(), cpu_count=os.cpu_count(),
        )

    def finish(self, status: str, error: str | None = None, **fields: Any) -> None:
        self.update_meta(status=status, error=error, finished_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"), **fields)

    def write_metrics(self, metrics: dict[str, Any], name: str = "metrics.json") -> Path:
        path = self.path / name
        if self.write:
            atomic_write_text(path, json.dumps(metrics, indent=2, sort_keys=True) + "\n")
        return path
