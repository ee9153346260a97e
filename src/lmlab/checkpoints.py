"""Checkpoints: durable writes, safe reads, and rebuilding a task from one.

Writes go to a temp file in the same directory, are fsynced, then renamed over the target: a crash
mid-write never replaces a good checkpoint. Reads use ``torch.load(weights_only=True)``: a checkpoint that
needs arbitrary pickled objects (a possible code-execution payload) is refused.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from lmlab.errors import CheckpointError


def _good_checkpoints_near(path: Path) -> list[str]:
    folder = path.parent
    return sorted(p.name for p in folder.glob("*.ckpt") if p != path) if folder.is_dir() else []


def _directory_given(path: Path, key: str) -> str:
    """The message for a directory where a .ckpt file belongs: a run dir, its export/ or its checkpoints/."""
    for folder in (path, path / "checkpoints", path.parent / "checkpoints"):
        found = sorted(p.name for p in folder.glob("*.ckpt")) if folder.is_dir() else []
        if found:
            pick = folder / ("best.ckpt" if "best.ckpt" in found else found[0])
            return (f"{key}={path} is a directory, not a checkpoint file; its run's checkpoints are in {folder}: "
                    f"{found}. Fix: {key}={pick}.")
    return f"{key}={path} is a directory with no .ckpt file in or beside it. Fix: {key}=<a .ckpt file>."


def load_checkpoint(path: str | Path, map_location: Any = "cpu", mmap: bool = False,
                    key: str = "ckpt_path") -> dict[str, Any]:
    """Load a checkpoint safely; every failure names the file and the other checkpoints beside it.

    ``mmap=True`` maps the file instead of reading it: only the tensors a caller touches are read, so a caller
    that wants the weights alone (evaluate, predict, init_from) skips the optimizer state, twice the weights'
    size with Adam. Those tensors share the file's pages: copy them (load_state_dict does) before it changes.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        raise CheckpointError(_directory_given(path, key))
    if not path.is_file():
        others = _good_checkpoints_near(path)
        hint = f" Checkpoints in {path.parent}: {others}." if others else ""
        raise CheckpointError(f"Checkpoint {path} does not exist.{hint} Fix: {key}=<an existing .ckpt>.")
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"Refusing to load {path}: it contains pickled objects that are not plain tensors/containers "
            f"(torch.load weights_only=True rejected it: {str(e).splitlines()[0]}). Loading it could run "
            "arbitrary code. Fix: only load checkpoints written by lmlab/Lightning from a trusted source."
        ) from e
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as e:
        others = _good_checkpoints_near(path)
        hint = f" Other checkpoints in {path.parent}: {others}." if others else ""
        raise CheckpointError(
            f"Checkpoint {path} is truncated or corrupted ({type(e).__name__}: {str(e).splitlines()[0]}).{hint} "
            "Fix: use another checkpoint (e.g. last.ckpt or best.ckpt of the same run)."
        ) from e


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO with fsync + atomic rename on save and weights_only loading."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
            dir_fd = os.open(target.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        return load_checkpoint(path, map_location=map_location or "cpu")


def lmlab_metadata(checkpoint: dict[str, Any], path: Path) -> dict[str, Any]:
    meta = checkpoint.get("lmlab")
    if not meta or "config" not in meta:
        raise CheckpointError(
            f"{path} is not an lmlab checkpoint (no 'lmlab' metadata with the run config). Fix: give a "
            "checkpoint from an lmlab run dir (RUN_DIR/checkpoints/best.ckpt), or use the run's export/ "
            "folder as model.name_or_path."
        )
    return meta


def is_complete(path: Path) -> str | None:
    """None when ``path`` reads back as a checkpoint, else why not (memory-mapped: no weights are loaded)."""
    try:
        torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # truncated zip, bad pickle, I/O error: all mean "do not resume from this"
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return None


def half_written(folder: Path) -> list[Path]:
    """Temp files AtomicCheckpointIO leaves when the process dies mid-write (``.last.ckpt.XXXX.tmp``)."""
    return sorted(folder.glob(".*.ckpt.*.tmp")) if folder.is_dir() else []


def resume_checkpoint(folder: Path) -> tuple[Path | None, list[str]]:
    """The newest complete checkpoint in a run's ``checkpoints/`` folder, and a message per file skipped.

    last.ckpt first, then the others newest first. Half-written temp files are removed (they can never be
    completed) and named; a truncated or unreadable .ckpt is skipped and named.
    """
    notes = []
    for tmp in half_written(folder):
        tmp.unlink(missing_ok=True)
        notes.append(f"removed half-written checkpoint {tmp.name} (the process died while writing it)")
    last = folder / "last.ckpt"
    others = sorted((p for p in folder.glob("*.ckpt") if p != last), key=lambda p: p.stat().st_mtime, reverse=True)
    for path in ([last] if last.is_file() else []) + others:
        problem = is_complete(path)
        if problem is None:
            return path, notes
        notes.append(f"skipped {path.name}: truncated or corrupted ({problem})")
    return None, notes


def checkpoint_size_estimate(module: torch.nn.Module) -> int:
    """Bytes of one training checkpoint: the weights, plus two AdamW moments per trainable weight."""
    weights = sum(p.numel() * p.element_size() for p in module.parameters())
    trainable = sum(p.numel() * p.element_size() for p in module.parameters() if p.requires_grad)
    return weights + 2 * trainable


def require_free_space(folder: Path, module: torch.nn.Module) -> None:
    """Fail before training when the disk cannot hold two checkpoints (a new one is written beside the old
    one, then renamed): better now than a full disk at the first save, hours in."""
    import shutil

    from lmlab.errors import RunDirError

    needed = 2 * checkpoint_size_estimate(module)
    probe = folder if folder.exists() else folder.parent
    free = shutil.disk_usage(probe).free
    if free < needed:
        raise RunDirError(
            f"Not enough disk space for checkpoints in {folder}: {free / 2**20:.1f} MiB free, about "
            f"{needed / 2**20:.1f} MiB needed (two checkpoints of this model with its optimizer state). Fix: "
            "free disk space, or write runs elsewhere with paths.log_dir=/a/larger/disk."
        )
