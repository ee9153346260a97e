"""Faults during training: NaN/inf gradients stop the run (or skip the step) before they reach the weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lmlab.callbacks.non_finite import NonFiniteGuard
from lmlab.checkpoints import load_checkpoint
from lmlab.errors import CheckpointError, TrainingError

from .conftest import DATA_ROOT, cli_env, read_json, run_dirs, run_lmlab, tiny


class PoisonedRegression:
    """A linear model whose loss is NaN on the batches listed in ``poison``."""

    @staticmethod
    def build(poison: set[int]):
        import lightning as L

        class Module(L.LightningModule):
            def __init__(self) -> None:
                super().__init__()
                self.layer = torch.nn.Linear(4, 1)

            def training_step(self, batch, batch_idx):
                loss = ((self.layer(batch[0]) - batch[1]) ** 2).mean()
                return loss * float("nan") if self.global_step in poison else loss

            def configure_optimizers(self):
                return torch.optim.AdamW(self.parameters(), lr=0.1)

        return Module()


def fit(tmp_path: Path, guard: NonFiniteGuard, poison: set[int], steps: int = 8):
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(steps * 4, 4), torch.randn(steps * 4, 1))
    module = PoisonedRegression.build(poison)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "checkpoints", save_last=True, every_n_train_steps=1, save_top_k=0)
    trainer = L.Trainer(max_epochs=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[guard, ckpt], default_root_dir=tmp_path)
    error = None
    try:
        trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=4))
    except TrainingError as e:
        error = e
    return module, trainer, error


def test_nan_gradients_stop_before_the_step_and_last_checkpoint_stays_finite(tmp_path: Path):
    module, trainer, error = fit(tmp_path, NonFiniteGuard(action="stop"), poison={3})
    assert error is not None and "at step 3 (epoch 0)" in str(error) and "optimizer.lr" in str(error)
    assert trainer.global_step == 3, "the poisoned step was not taken"
    assert all(torch.isfinite(p).all() for p in module.parameters())
    last = load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert last["global_step"] == 3
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values())


def test_skip_drops_bad_steps_and_keeps_training(tmp_path: Path):
    guard = NonFiniteGuard(action="skip", max_skips=3)
    module, trainer, error = fit(tmp_path, guard, poison={2, 5})
    assert error is None and trainer.global_step == 8
    assert guard.skipped_total == 2
    assert all(torch.isfinite(p).all() for p in module.parameters())


def test_skip_gives_up_after_max_skips_in_a_row(tmp_path: Path):
    _, trainer, error = fit(tmp_path, NonFiniteGuard(action="skip", max_skips=2), poison={1, 2, 3, 4})
    assert error is not None and "2 steps in a row were skipped" in str(error) and "at step 3" in str(error)


def test_diverging_cli_run_is_marked_failed_with_one_error(tmp_path: Path):
    """A learning rate of 1e30 blows the weights up within a few steps: exit 2, one message, failed status."""
    proc = run_lmlab("train", *tiny("optimizer=sgd", "optimizer.lr=1e30", "scheduler.warmup_ratio=0",
                                    "trainer.gradient_clip_val=null", "export=false"), cwd=tmp_path, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.count("lmlab: error:") == 1 and "Traceback" not in proc.stderr
    assert "The gradients became NaN/inf at step" in proc.stderr
    (run,) = run_dirs(tmp_path)
    assert read_json(run / "run.json")["status"] == "failed"
    metrics = read_json(run / "metrics.json")
    assert metrics["status"] == "failed" and "TrainingError" in metrics["error"]


def test_clipping_with_the_guards_norm_gives_exactly_lightnings_clipping(tmp_path: Path):
    """The task module clips with the total norm the NaN guard already computed (one pass over the gradients):
    the same weights, to the bit, as Lightning's own clipping (guard off); and clipping did act (no clip differs)."""
    # clip at 0.01: every step's gradient norm is above it, so every step is clipped
    clip = "trainer.gradient_clip_val=0.01"
    runs = {"guard": [clip], "lightning": [clip, "~callbacks.non_finite"], "no_clip": ["trainer.gradient_clip_val=null"]}
    val = {}
    for name, extra in runs.items():
        cwd = tmp_path / name
        cwd.mkdir()
        run_lmlab("train", *tiny("test=false", "export=false", *extra), cwd=cwd)
        (run,) = run_dirs(cwd)
        val[name] = read_json(run / "metrics.json")["val"]
    assert val["guard"] == val["lightning"]
    assert val["guard"]["val/loss"] != val["no_clip"]["val/loss"]


def test_task_module_clips_with_the_norm_the_guard_left_once():
    from types import SimpleNamespace

    from lightning.pytorch.strategies import SingleDeviceStrategy

    from lmlab.tasks.base import TaskModule

    module = TaskModule(torch.nn.Linear(3, 1), {"model": {}})
    module._trainer = SimpleNamespace(strategy=SingleDeviceStrategy(device=torch.device("cpu")))
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
    for p in module.parameters():
        p.grad = torch.ones_like(p)  # true total norm 2.0
    module.guard_grad_norm = torch.tensor(100.0)  # a planted norm: the factor shows which norm clipped
    module.configure_gradient_clipping(optimizer, 1.0, "norm")
    assert all(torch.allclose(p.grad, torch.full_like(p, 0.01)) for p in module.parameters())
    assert "guard_grad_norm" not in module.__dict__  # used for one step only (the CLI test covers the fallback)


@pytest.mark.parametrize("action", ["explode"])
def test_unknown_action_is_refused(action: str):
    with pytest.raises(ValueError, match="valid are stop, skip"):
        NonFiniteGuard(action=action)


# -- security ----------------------------------------------------------------------------------------------
class _Payload:
    """Unpickling this would create ``marker``: what a malicious checkpoint does."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickled_payload_checkpoint_is_refused_without_running_it(tmp_path: Path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": _Payload(marker)}, evil)
    with pytest.raises(CheckpointError, match="Refusing to load .*evil.ckpt.*arbitrary code"):
        load_checkpoint(evil)
    assert not marker.exists()


def test_truncated_checkpoint_names_the_file_and_the_good_ones_beside_it(tmp_path: Path):
    good = tmp_path / "last.ckpt"
    torch.save({"state_dict": {"w": torch.ones(1000)}}, good)
    bad = tmp_path / "best.ckpt"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(bad)
    message = str(err.value)
    assert f"Checkpoint {bad} is truncated or corrupted" in message and "last.ckpt" in message


@pytest.mark.parametrize("given", [".", "export", "checkpoints"])
def test_a_run_directory_given_as_checkpoint_points_to_its_best_ckpt(tmp_path: Path, given: str):
    """`ckpt_path=RUN_DIR` or `RUN_DIR/export` said "does not exist" for a path that exists."""
    run = tmp_path / "run"
    (run / "export").mkdir(parents=True)
    (run / "checkpoints").mkdir()
    for name in ("last.ckpt", "best.ckpt"):
        torch.save({"state_dict": {}}, run / "checkpoints" / name)
    path = (run / given).resolve()
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert str(err.value) == (f"ckpt_path={path} is a directory, not a checkpoint file; its run's checkpoints are in "
                              f"{run / 'checkpoints'}: ['best.ckpt', 'last.ckpt']. "
                              f"Fix: ckpt_path={run / 'checkpoints' / 'best.ckpt'}.")
    with pytest.raises(CheckpointError, match=r"^model.init_from=.* Fix: model.init_from=.*best.ckpt\.$"):
        load_checkpoint(path, key="model.init_from")
    (tmp_path / "empty" / "inner").mkdir(parents=True)
    with pytest.raises(CheckpointError, match=r"is a directory with no \.ckpt file in or beside it"):
        load_checkpoint(tmp_path / "empty" / "inner")


def test_secrets_from_env_and_config_never_reach_the_run_dir(tmp_path: Path):
    env_secret, config_secret = "env-s3cr3t-7f1d", "cfg-s3cr3t-92ab"
    env = cli_env(WANDB_API_KEY=env_secret, HF_TOKEN=env_secret)
    run_lmlab("train", *tiny("debug=fast_dev_run", f"+service.api_key={config_secret}",
                             f"+service.password={config_secret}"), cwd=tmp_path, env=env)
    (run,) = run_dirs(tmp_path)
    leaks = [str(p.relative_to(run)) for p in run.rglob("*") if p.is_file()
             and (env_secret.encode() in p.read_bytes() or config_secret.encode() in p.read_bytes())]
    assert leaks == []
    assert "api_key: '***REDACTED***'" in (run / "config_resolved.yaml").read_text()


# -- reproducibility ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("algorithm", ["wordpiece", "bpe", "unigram"])
def test_trained_tokenizer_is_identical_across_trainings(algorithm: str, tmp_path: Path):
    """`tokenizers` hands out ids in hash-map order; lmlab puts the vocabulary in a canonical order."""
    from lmlab.tokenizer_training import train_tokenizer

    lines = [line for name in ("train.en", "train.de")
             for line in (DATA_ROOT / "multi30k-en-de" / name).read_text().splitlines()[:2000]]
    spec = {"algorithm": algorithm, "vocab_size": 1000, "min_frequency": 2, "lowercase": True}
    first, second = (train_tokenizer(spec, lambda: iter(lines), "same-corpus", tmp_path / run)
                     for run in ("a", "b"))
    assert first.backend_tokenizer.to_str() == second.backend_tokenizer.to_str()
    assert first("Two dogs are playing.")["input_ids"] == second("Two dogs are playing.")["input_ids"]


def test_disk_full_during_a_checkpoint_write_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch):
    """ENOSPC in the middle of torch.save: the error reaches the caller, the temp file is gone and the
    previous checkpoint is untouched (atomic write: temp file, fsync, rename)."""
    import errno

    from lmlab import checkpoints
    from lmlab.checkpoints import AtomicCheckpointIO

    io = AtomicCheckpointIO()
    target = tmp_path / "last.ckpt"
    io.save_checkpoint({"step": 1, "w": torch.ones(3)}, target)
    before = target.read_bytes()

    def full_disk(obj, f, *args, **kwargs):
        f.write(b"partial bytes")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoints.torch, "save", full_disk)
    with pytest.raises(OSError, match="No space left"):
        io.save_checkpoint({"step": 2, "w": torch.zeros(3)}, target)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]
    assert torch.load(target, weights_only=True)["step"] == 1


def test_trust_remote_code_is_off_by_default_and_logged_when_on(tmp_path: Path, caplog):
    from lmlab import models

    from .conftest import compose_train

    for option in ("minilm", "tiny_bert", "pretrained", "tiny_bert_scratch", "tiny_gpt2", "tiny_t5"):
        assert compose_train([f"model={option}"], tmp_path).model.trust_remote_code is False, option

    (tmp_path / "config.json").write_text("{}")  # a local model dir, as far as locate() checks
    seen: list[dict] = []

    class Loader:
        @staticmethod
        def from_pretrained(location, **kwargs):
            seen.append(kwargs)
            return "model"

    with caplog.at_level("WARNING", logger="lmlab.models"):
        models._load(Loader, str(tmp_path), "model", trust_remote_code=False)
        assert not caplog.records
        models._load(Loader, str(tmp_path), "model", trust_remote_code=True)
    assert [k["trust_remote_code"] for k in seen] == [False, True]
    assert f"trust_remote_code=true: executing model code shipped with {tmp_path}" in caplog.text
