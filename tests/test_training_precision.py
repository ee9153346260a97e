"""trainer.precision=auto (the default): bf16 autocast where the hardware multiplies bf16 natively, else fp32;
resolved once before the Trainer is built, recorded in the run dir, kept on resume and by `lmlab reproduce`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from lmlab import precision
from tests.conftest import compose_train, read_json, run_dirs, run_lmlab, tiny


@pytest.mark.parametrize(("accelerator", "cuda", "cuda_bf16", "cpu_bf16", "expected"), [
    ("auto", False, False, True, "bf16-mixed"),   # CPU with AMX / AVX512-BF16
    ("auto", False, False, False, "32-true"),     # CPU without: emulated bf16 is many times slower
    ("cpu", True, True, False, "32-true"),        # a GPU in the box does not matter on accelerator=cpu
    ("auto", True, True, False, "bf16-mixed"),    # Ampere and later
    ("gpu", True, False, True, "32-true"),        # V100/T4: no bf16, and no silent fp16 (needs loss scaling)
])
def test_auto_precision_is_bf16_where_the_hardware_multiplies_it_natively(monkeypatch, accelerator, cuda,
                                                                          cuda_bf16, cpu_bf16, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: cuda_bf16)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    monkeypatch.setattr(precision, "native_cpu_bf16", lambda: cpu_bf16)
    used, why = precision.auto_precision(accelerator)
    assert used == expected and why
    assert precision.concrete("auto", accelerator) == expected
    assert precision.concrete("16-mixed", accelerator) == "16-mixed"  # an explicit choice is never changed


def test_auto_is_the_default_and_a_bad_value_lists_auto_among_the_choices(tmp_path: Path):
    assert compose_train([], tmp_path).trainer.precision == "auto"
    proc = run_lmlab("train", "trainer.precision=bf16", "--cfg", "job", cwd=tmp_path)  # Lightning's alias: valid
    assert "precision: bf16" in proc.stdout
    proc = run_lmlab("train", "trainer.precision=automatic", cwd=tmp_path, check=False)
    assert proc.returncode != 0
    assert "trainer.precision='automatic' is not a valid precision. Valid: auto, transformer-engine" in proc.stderr


def test_evaluate_trainer_resolves_auto_too():
    from lmlab.builders import build_eval_trainer

    run_cfg = OmegaConf.create({"trainer": {"precision": "auto", "accelerator": "cpu", "enable_progress_bar": False,
                                            "limit_test_batches": None, "limit_val_batches": None,
                                            "limit_predict_batches": None}})
    trainer = build_eval_trainer(run_cfg, "/tmp")
    assert trainer.precision == precision.auto_precision("cpu")[0]


def expected_on_this_machine() -> str:
    return "bf16-mixed" if precision.native_cpu_bf16() else "32-true"


def other_than(used: str) -> str:
    return "32-true" if used == "bf16-mixed" else "bf16-mixed"


def test_a_run_records_what_auto_became_and_trains_in_it(workdir: Path):
    proc = run_lmlab("train", *tiny(), cwd=workdir)
    (run,) = run_dirs(workdir)
    used = expected_on_this_machine()
    assert read_json(run / "run.json")["precision"]["requested"] == "auto"
    assert read_json(run / "run.json")["precision"]["used"] == used
    out = proc.stdout + proc.stderr
    assert f"trainer.precision=auto: {used} (" in out
    # What ran is what the config records: config_resolved.yaml, the checkpoint's config, Lightning's own report.
    assert OmegaConf.load(run / "config_resolved.yaml").trainer.precision == used
    saved = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert saved["lmlab"]["config"]["trainer"]["precision"] == used
    assert ("Automatic Mixed Precision (AMP)" in out) == (used == "bf16-mixed")
    assert OmegaConf.load(run / ".hydra" / "config.yaml").trainer.precision == "auto"  # what was asked


@pytest.mark.slow  # ~20 s: two trainings (a run, then its resume as if it had started on other hardware)
def test_resume_keeps_the_precision_the_run_started_with(workdir: Path):
    run_lmlab("train", *tiny(), cwd=workdir)
    (run,) = run_dirs(workdir)
    meta = read_json(run / "run.json")
    started = other_than(meta["precision"]["used"])  # as if it had started on other hardware
    meta["precision"]["used"] = started
    (run / "run.json").write_text(json.dumps(meta))
    proc = run_lmlab("train", f"resume={run}", "trainer.max_epochs=2", cwd=workdir)
    assert f"trainer.precision=auto: {started} (the precision this run started with)" in proc.stdout + proc.stderr
    assert read_json(run / "run.json")["precision"]["used"] == started
    assert read_json(run / "metrics.json")["epoch"] == 2  # the resumed run went on to its second epoch


def test_reproduce_pins_the_precision_auto_became(tmp_path: Path):
    from lmlab.reproduce import pinned_precision

    (tmp_path / "run.json").write_text(json.dumps({"precision": {"requested": "auto", "used": "bf16-mixed"}}))
    assert pinned_precision(tmp_path) == ["trainer.precision=bf16-mixed"]
    (tmp_path / "run.json").write_text(json.dumps({"precision": {"requested": "32-true", "used": "32-true"}}))
    assert pinned_precision(tmp_path) == []  # the composed config already says it
    (tmp_path / "run.json").write_text(json.dumps({}))  # a run from before run.json recorded it
    assert pinned_precision(tmp_path) == []


def test_logger_none_runs_with_the_default_callbacks(workdir: Path):
    """The LR monitor is one of the default callbacks; Lightning refuses it without a logger."""
    proc = run_lmlab("train", *tiny("logger=none"), cwd=workdir)
    (run,) = run_dirs(workdir)
    assert read_json(run / "metrics.json")["status"] == "completed"
    assert "callbacks.lr_monitor left out: no logger" in proc.stdout + proc.stderr
    assert not (run / "logs" / "metrics.csv").exists()


@pytest.mark.slow  # ~26 s, 3 trainings: the NaN guard off under bf16 (not the default); test_reliability checks clipping by default
def test_bf16_mixed_clips_with_the_fused_optimizer_when_the_nan_guard_is_off(workdir: Path):
    """Lightning refuses to clip for a fused optimizer under any mixed precision (Lightning-AI/pytorch-lightning
    #21435: meant for fp16's GradScaler); lmlab clips bf16-mixed as fp32 does, the same as its NaN guard's clipping."""
    clip = "trainer.gradient_clip_val=0.01"  # below every step's gradient norm: every step is clipped
    runs = {"guard": [clip], "no_guard": [clip, "~callbacks.non_finite"], "no_clip": ["trainer.gradient_clip_val=null"]}
    val = {}
    for name, extra in runs.items():
        cwd = workdir / name
        cwd.mkdir()
        run_lmlab("train", *tiny("trainer.precision=bf16-mixed", "test=false", "export=false", *extra), cwd=cwd)
        (run,) = run_dirs(cwd)
        val[name] = read_json(run / "metrics.json")["val"]
    assert val["no_guard"] == val["guard"]
    assert val["no_clip"]["val/loss"] != val["guard"]["val/loss"]  # clipping at 0.01 acted
