"""Faults: SIGKILL (training, checkpoint write, evaluation), preemption signals, half-written checkpoints,
out-of-memory, unwritable/full output dirs, config-derived file names. Each kill test resumes the killed
run with `resume=` and asserts the final metrics equal an uninterrupted run's, bit for bit (CPU).

The classes below are test hooks, injected into the real CLI with `+callbacks.NAME._target_=...`
(PYTHONPATH=repo); they act only while their environment variable is set, so the resumed run (started
without it) trains normally.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from tests.conftest import REPO, cli_env, read_json, run_dirs, run_lmlab, tiny

HOOK = "tests.test_faults"
STEPS_PER_EPOCH = 8  # 128 train rows / batch 16
EVERY = ["callbacks.step_checkpoint.every_n_train_steps=2", "trainer.max_epochs=2"]


# -- hooks (run inside the lmlab subprocess) ----------------------------------------------------------
def _wait_here(marker: str) -> None:
    """Touch ``marker``, then wait (forever, for a SIGKILL) until ``marker + '.go'`` appears."""
    Path(marker).touch()
    while not Path(marker + ".go").exists():
        time.sleep(0.05)


class PauseAtStep(Callback):
    """$FAULT_PAUSE_AT_STEP=N: after optimizer step N, touch $FAULT_MARKER and wait."""

    def on_train_batch_end(self, trainer: Any, *args: Any) -> None:
        if os.environ.get("FAULT_PAUSE_AT_STEP") == str(trainer.global_step):
            os.environ.pop("FAULT_PAUSE_AT_STEP")
            _wait_here(os.environ["FAULT_MARKER"])


class PauseInTest(Callback):
    """$FAULT_PAUSE_IN_TEST: at the first test batch, touch $FAULT_MARKER and wait."""

    def on_test_batch_start(self, *args: Any) -> None:
        if os.environ.pop("FAULT_PAUSE_IN_TEST", None):
            _wait_here(os.environ["FAULT_MARKER"])


class PauseInCheckpointWrite(Callback):
    """$FAULT_PAUSE_AT_SAVE=N: the Nth checkpoint write stops half-way (half the bytes in the temp file)."""

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if not os.environ.get("FAULT_PAUSE_AT_SAVE"):
            return
        real_save, saves = torch.save, [0]

        def half_save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
            saves[0] += 1
            if saves[0] < int(os.environ["FAULT_PAUSE_AT_SAVE"]):
                return real_save(obj, f, *args, **kwargs)
            buffer = io.BytesIO()
            real_save(obj, buffer, *args, **kwargs)
            f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
            f.flush()
            _wait_here(os.environ["FAULT_MARKER"])

        torch.save = half_save


class RaiseOOM(Callback):
    """$FAULT_OOM_AT_STEP=N: the batch after step N fails as a CUDA/CPU allocator would."""

    def on_train_batch_start(self, trainer: Any, *args: Any) -> None:
        if os.environ.get("FAULT_OOM_AT_STEP") == str(trainer.global_step):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (simulated)")


# -- helpers --------------------------------------------------------------------------------------------
def hook_args(*names: str) -> list[str]:
    return [f"+callbacks.{n.lower()}._target_={HOOK}.{n}" for n in names]


def hook_env(**extra: str) -> dict[str, str]:
    return cli_env(PYTHONPATH=str(REPO), **extra)


def start_and_kill_at_marker(args: list[str], cwd: Path, env: dict[str, str], sig: int = signal.SIGKILL,
                             release: bool = False, timeout: float = 300) -> subprocess.CompletedProcess | None:
    """Start `lmlab train ARGS`, wait for the hook's marker, then send ``sig`` (and with ``release`` let the
    hook go on and wait for the exit)."""
    marker = Path(env["FAULT_MARKER"])
    proc = subprocess.Popen([sys.executable, "-m", "lmlab", "train", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + timeout
    while not marker.exists():
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            out, err = proc.communicate()
            raise AssertionError(f"the hook was never reached (exit {proc.returncode})\n{out[-3000:]}\n{err[-3000:]}")
        time.sleep(0.1)
    proc.send_signal(sig)
    if release:
        Path(str(marker) + ".go").touch()
    out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def finals(run: Path) -> dict[str, Any]:
    metrics = read_json(run / "metrics.json")
    return {"val": metrics["val"], "test": metrics["test"], "global_step": metrics["global_step"],
            "best_step": metrics["best_checkpoint"]["global_step"]}


def saved_step(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["global_step"])


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The reference: the same 2-epoch run with step checkpoints, never stopped."""
    cwd = tmp_path_factory.mktemp("reference")
    run_lmlab("train", *tiny(*EVERY), cwd=cwd)
    (run,) = run_dirs(cwd)
    reference = finals(run)
    assert reference["global_step"] == 2 * STEPS_PER_EPOCH
    return reference


# -- SIGKILL ----------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_gives_the_uninterrupted_metrics(uninterrupted: dict, workdir: Path):
    env = hook_env(FAULT_PAUSE_AT_STEP="5", FAULT_MARKER=str(workdir / "paused"))
    killed = start_and_kill_at_marker([*tiny(*EVERY), *hook_args("PauseAtStep")], workdir, env)
    assert killed.returncode == -signal.SIGKILL
    (run,) = run_dirs(workdir)
    assert saved_step(run / "checkpoints" / "last.ckpt") == 4, "the step-4 checkpoint, mid-epoch 1 of 2"
    assert read_json(run / "run.json")["status"] == "running", "SIGKILL leaves no chance to record anything"

    resumed = run_lmlab("train", f"resume={run}", cwd=workdir, env=hook_env())
    assert "not resumable" not in resumed.stdout + resumed.stderr  # Lightning's mid-epoch warning
    assert run_dirs(workdir) == [run]
    assert finals(run) == uninterrupted
    assert read_json(run / "run.json")["status"] == "completed"


@pytest.mark.slow
def test_sigkill_during_a_checkpoint_write_resumes_from_the_last_complete_one(uninterrupted: dict, workdir: Path):
    # Writes: step 2 last, step 4 last, step 6 last (the 3rd, killed half-way).
    env = hook_env(FAULT_PAUSE_AT_SAVE="3", FAULT_MARKER=str(workdir / "paused"))
    start_and_kill_at_marker([*tiny(*EVERY), *hook_args("PauseInCheckpointWrite")], workdir, env)
    (run,) = run_dirs(workdir)
    (partial,) = (run / "checkpoints").glob(".last.ckpt.*.tmp")
    assert partial.stat().st_size > 0
    assert saved_step(run / "checkpoints" / "last.ckpt") == 4, "the good last.ckpt was not replaced"

    resumed = run_lmlab("train", f"resume={run}", cwd=workdir, env=hook_env())
    assert f"removed half-written checkpoint {partial.name}" in resumed.stdout + resumed.stderr
    assert not list((run / "checkpoints").glob(".*.tmp"))
    assert finals(run) == uninterrupted


@pytest.mark.slow
def test_sigkill_during_evaluation_resumes_to_the_same_test_metrics(uninterrupted: dict, workdir: Path):
    env = hook_env(FAULT_PAUSE_IN_TEST="1", FAULT_MARKER=str(workdir / "paused"))
    start_and_kill_at_marker([*tiny(*EVERY), *hook_args("PauseInTest")], workdir, env)
    (run,) = run_dirs(workdir)
    assert not (run / "metrics.json").exists()
    assert saved_step(run / "checkpoints" / "last.ckpt") == 2 * STEPS_PER_EPOCH

    run_lmlab("train", f"resume={run}", cwd=workdir, env=hook_env())
    assert finals(run) == uninterrupted


def test_truncated_last_checkpoint_is_skipped_for_the_newest_complete_one(tmp_path: Path):
    from lmlab.checkpoints import resume_checkpoint

    folder = tmp_path / "checkpoints"
    folder.mkdir()
    torch.save({"global_step": 8, "w": torch.zeros(1000)}, folder / "best.ckpt")
    torch.save({"global_step": 12, "w": torch.zeros(1000)}, folder / "last.ckpt")
    data = (folder / "last.ckpt").read_bytes()
    (folder / "last.ckpt").write_bytes(data[: len(data) // 2])  # e.g. copied by a tool that is not atomic
    (folder / ".last.ckpt.abc123.tmp").write_bytes(data[:100])
    path, notes = resume_checkpoint(folder)
    assert path == folder / "best.ckpt"
    assert notes[0].startswith("removed half-written checkpoint .last.ckpt.abc123.tmp")
    assert notes[1].startswith("skipped last.ckpt: truncated or corrupted")
    assert not (folder / ".last.ckpt.abc123.tmp").exists()
    (folder / "best.ckpt").write_bytes(b"junk")
    assert resume_checkpoint(folder)[0] is None


# -- preemption --------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGTERM], ids=["SIGUSR1", "SIGTERM"])
def test_preemption_signal_saves_at_the_next_step_and_resume_finishes_the_same(
        sig: int, uninterrupted: dict, workdir: Path):
    env = hook_env(FAULT_PAUSE_AT_STEP="5", FAULT_MARKER=str(workdir / "paused"))
    stopped = start_and_kill_at_marker([*tiny(*EVERY), *hook_args("PauseAtStep")], workdir, env, sig=sig,
                                       release=True)
    assert stopped.returncode == 0, stopped.stderr[-3000:]
    (run,) = run_dirs(workdir)
    assert "lmlab: preempted" in stopped.stderr and f"resume={run}" in stopped.stderr
    # The signal came while step 5's hooks ran; the checkpoint is written after the next step (6), which is
    # not a periodic save step (every 2 steps: 6 is one, so check the contents, not only the file).
    assert saved_step(run / "checkpoints" / "last.ckpt") == 6
    metrics = read_json(run / "metrics.json")
    assert metrics["status"] == "preempted" and metrics["global_step"] == 6
    assert metrics["signal"] == signal.Signals(sig).name
    assert read_json(run / "run.json")["status"] == "preempted"

    run_lmlab("train", f"resume={run}", cwd=workdir, env=hook_env())
    assert finals(run) == uninterrupted
    assert read_json(run / "run.json")["status"] == "completed"


@pytest.mark.slow
def test_preemption_at_an_epochs_last_step_validates_that_epoch_before_stopping(uninterrupted: dict, workdir: Path):
    """A signal that lands on the epoch's last step: Lightning resumes a checkpoint saved there at the next epoch, so
    stopping at once would skip epoch 0's validation for good (seen on a requeued SLURM job). lmlab validates the
    epoch first, saves again at its end, then stops; the resumed run validates every epoch once."""
    env = hook_env(FAULT_PAUSE_AT_STEP=str(STEPS_PER_EPOCH - 1), FAULT_MARKER=str(workdir / "paused"))
    stopped = start_and_kill_at_marker([*tiny(*EVERY), *hook_args("PauseAtStep")], workdir, env,
                                       sig=signal.SIGTERM, release=True)
    assert stopped.returncode == 0, stopped.stderr[-3000:]
    (run,) = run_dirs(workdir)
    log = (run / "train.log").read_text()
    assert f"at step {STEPS_PER_EPOCH}, the epoch's last; validating the epoch before stopping" in log
    assert "validated epoch 0, saved" in log
    assert read_json(run / "metrics.json")["status"] == "preempted"
    run_lmlab("train", f"resume={run}", cwd=workdir, env=hook_env())
    assert finals(run) == uninterrupted
    rows = (run / "logs" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    val_epochs = [int(r["epoch"]) for r in (dict(zip(header, line.split(","), strict=False)) for line in rows[1:])
                  if r.get("val/acc")]
    # each epoch validated once (none skipped, none repeated), then the best checkpoint after fit (logged as epoch 2)
    assert val_epochs == [0, 1, 2]


# -- resources ---------------------------------------------------------------------------------------------
def test_out_of_memory_names_the_batch_and_suggests_accumulation(workdir: Path):
    proc = run_lmlab("train", *tiny(), *hook_args("RaiseOOM"), cwd=workdir, check=False,
                     env=hook_env(FAULT_OOM_AT_STEP="2"))
    assert proc.returncode == 2, proc.stderr[-3000:]
    (error,) = [line for line in proc.stderr.splitlines() if line.startswith("lmlab: error:")]
    assert "Out of memory" in error and "data.batch_size=16" in error and "data.max_length=" in error
    assert "data.batch_size=8 trainer.accumulate_grad_batches=2" in error
    assert "Traceback" not in proc.stderr
    (run,) = run_dirs(workdir)
    assert read_json(run / "run.json")["status"] == "failed"


def test_not_enough_disk_for_checkpoints_fails_before_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import shutil

    from lmlab.checkpoints import checkpoint_size_estimate, require_free_space
    from lmlab.errors import RunDirError

    module = torch.nn.Linear(1000, 1000)  # 1001000 float32 weights: 4 MB, 12 MB with AdamW moments
    assert checkpoint_size_estimate(module) == 3 * 4 * 1_001_000
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=10 * 2**20))
    with pytest.raises(RunDirError, match=r"10.0 MiB free, about 22.9 MiB needed.*paths.log_dir="):
        require_free_space(tmp_path / "checkpoints", module)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=30 * 2**20))
    require_free_space(tmp_path / "checkpoints", module)


# -- output locations and config-derived names -----------------------------------------------------------
@pytest.mark.parametrize(("args", "message"), [
    (["paths.log_dir=/proc/lmlab-cannot-write"], "Cannot write runs under /proc/lmlab-cannot-write (paths.log_dir)"),
    (["paths.log_dir={tmp}/a_file/outputs"], "a_file is a file, not a directory"),
    (["hydra.run.dir={tmp}/a_file/run"], "(hydra.run.dir)"),
    (["task_name=../../escaped"], "task_name='../../escaped' names a directory inside paths.log_dir"),
    (["task_name=a/b"], "must be a plain name"),
], ids=["proc", "file-in-path", "run-dir", "task-name-dotdot", "task-name-slash"])
def test_unusable_output_location_fails_before_anything_is_written(args: list[str], message: str, tmp_path: Path):
    cwd = tmp_path / "work"
    cwd.mkdir()
    (tmp_path / "a_file").write_text("not a directory")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    proc = run_lmlab("train", *tiny(), *args, cwd=cwd, check=False)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a_file", "work"], "nothing was created anywhere"


def test_loader_state_round_trip_skips_exactly_the_batches_already_trained():
    from lmlab.data.sampling import LengthGroupedSampler, ResumableDataLoader

    lengths = [(i * 7) % 23 + 1 for i in range(100)]

    def loader() -> ResumableDataLoader:
        return ResumableDataLoader(list(range(100)), batch_size=8, collate_fn=list,
                                   sampler=LengthGroupedSampler(lengths, 8, seed=3))

    full = loader()
    full.sampler.set_epoch(1)
    everything = list(full)
    first = loader()
    first.sampler.set_epoch(1)
    seen = []
    for batch in first:
        seen.append(batch)
        if len(seen) == 5:
            state = first.state_dict()
            break
    assert state == {"epoch": 1, "batches": 5}
    resumed = loader()
    resumed.load_state_dict(state)
    resumed.sampler.set_epoch(1)
    rest = list(resumed)
    assert seen + rest == everything
    assert resumed.state_dict() == {"epoch": 1, "batches": len(everything)}
    resumed.sampler.set_epoch(2)
    assert len(list(resumed)) == len(everything), "the skip applies to the interrupted epoch only"
    stale = loader()
    stale.load_state_dict({"epoch": 0, "batches": 5})  # saved at the end of an earlier epoch
    stale.sampler.set_epoch(1)
    assert list(stale) == everything
