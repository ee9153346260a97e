"""`lmlab predict`'s precision: auto picks bf16 only where it is native, and near ties are re-checked in fp32 so
labels stay those of an fp32 run."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from lmlab.config.compose import compose_config
from lmlab.config.validate import validate
from lmlab.errors import ConfigError
from lmlab.tasks.base import TaskModule


class NearTieClassifier(TaskModule):
    """Two classes whose weight rows differ by less than bf16 can hold: under bf16 autocast every row is an
    exact tie (argmax 0); in fp32, class 1 wins wherever x[:, 0] > 0."""

    def __init__(self) -> None:
        linear = torch.nn.Linear(4, 2, bias=False)
        with torch.no_grad():
            linear.weight.copy_(torch.tensor([[1.0, 0.5, 0.25, 2.0], [1.0 + 1e-3, 0.5, 0.25, 2.0]]))
        super().__init__(linear, {"model": {}})

    def forward(self, batch: dict[str, torch.Tensor]) -> SimpleNamespace:
        return SimpleNamespace(logits=self.model(batch["x"]))


def labels_under_bf16(module: TaskModule, x: torch.Tensor) -> torch.Tensor:
    batch = {"x": x}
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        return module.recheck_near_ties(batch, module(batch).logits).argmax(-1)


def test_near_ties_are_rerun_in_fp32_so_bf16_labels_equal_fp32_labels():
    torch.manual_seed(0)
    x = torch.randn(64, 4).abs()
    x[::2, 0] *= -1  # half the rows have fp32 label 0, half label 1
    module = NearTieClassifier().eval()
    fp32 = module({"x": x}).logits.argmax(-1)
    assert fp32.tolist() == [0, 1] * 32

    assert labels_under_bf16(module, x).tolist() == [0] * 64  # bf16 alone: the ties all go to class 0
    assert module.rechecked_rows == 0  # recheck_margin None: off

    module.recheck_margin = 0.1
    assert torch.equal(labels_under_bf16(module, x), fp32)
    assert module.rechecked_rows == 64


def test_rows_far_from_a_tie_keep_their_bf16_logits():
    module = NearTieClassifier().eval()
    module.recheck_margin = 0.1
    with torch.no_grad():
        module.model.weight[1, 3] = 1.0  # a gap of ~|x3| between the classes
    x = torch.tensor([[0.5, 1.0, 1.0, 3.0], [0.5, 1.0, 1.0, 0.01]])
    assert labels_under_bf16(module, x).tolist() == [0, 0]
    assert module.rechecked_rows == 1  # only the second row (gap 0.01) was run again


def test_positions_limit_the_check_to_the_masked_tokens():
    module = NearTieClassifier().eval()
    module.recheck_margin = 0.1
    logits = torch.tensor([[[2.0, 0.0], [1.0, 1.0]], [[2.0, 0.0], [0.0, 2.0]]])  # (batch 2, seq 2, labels 2)
    batch = {"x": torch.zeros(2, 2, 4)}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        module.recheck_near_ties(batch, logits.clone(), positions=torch.tensor([[True, False], [True, True]]))
    assert module.rechecked_rows == 0  # the only tie sits at a position the mask leaves out
    with torch.autocast("cpu", dtype=torch.bfloat16):
        module.recheck_near_ties(batch, logits.clone())
    assert module.rechecked_rows == 1


@pytest.mark.parametrize(("requested", "run", "accelerator", "native", "expected"), [
    ("auto", "32-true", "auto", True, "bf16-mixed"),
    ("auto", "32-true", "cpu", False, "32-true"),  # emulated bf16 is many times slower than fp32
    ("auto", "32-true", "gpu", True, "32-true"),  # a GPU run keeps the precision it was trained in
    ("auto", "bf16-mixed", "cpu", True, "bf16-mixed"),
    ("auto", "auto", "cpu", True, "bf16-mixed"),  # a run config asking for auto (e.g. trainer.precision=auto here)
    ("auto", "auto", "cpu", False, "32-true"),
    ("auto", "16-mixed", "cpu", True, "16-mixed"),
    ("32-true", "32-true", "cpu", True, "32-true"),
    ("bf16-mixed", "32-true", "cpu", False, "bf16-mixed"),
])
def test_auto_precision_is_bf16_only_for_fp32_runs_on_a_cpu_with_native_bf16(monkeypatch, requested, run,
                                                                               accelerator, native, expected):
    from lmlab import precision, predict

    monkeypatch.setattr(precision, "native_cpu_bf16", lambda: native)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = OmegaConf.create({"precision": requested})
    run_cfg = OmegaConf.create({"trainer": {"precision": run, "accelerator": accelerator}})
    module = NearTieClassifier()
    module.rechecks_ties = True
    assert predict.predict_precision(cfg, run_cfg, module) == expected


def test_auto_precision_needs_a_task_that_rechecks_ties(monkeypatch):
    from lmlab import precision, predict

    monkeypatch.setattr(precision, "native_cpu_bf16", lambda: True)
    cfg = OmegaConf.create({"precision": "auto"})
    run_cfg = OmegaConf.create({"trainer": {"precision": "32-true", "accelerator": "cpu"}})
    module = NearTieClassifier()
    assert predict.predict_precision(cfg, run_cfg, module) == "32-true"  # TaskModule.rechecks_ties: False
    module.rechecks_ties = True
    assert predict.predict_precision(cfg, run_cfg, module) == "bf16-mixed"


def test_seq_and_token_classification_recheck_ties():
    from lmlab.tasks import load_task

    assert load_task("sequence_classification")[0].rechecks_ties
    assert load_task("token_classification")[0].rechecks_ties
    assert not load_task("seq2seq")[0].rechecks_ties


def test_predict_config_defaults_compose():
    cfg = compose_config("predict", ["ckpt_path=x.ckpt", "input=in.tsv", "output=out.jsonl"])
    assert cfg.precision == "auto" and cfg.recheck_margin == 0.1
    validate(cfg)


@pytest.mark.parametrize(("name", "overrides", "fragment"), [
    ("predict", ["precision=fp8"], "precision='fp8' is not a valid precision. Valid: auto, transformer-engine"),
    ("predict", ["recheck_margin=-0.5"], "recheck_margin=-0.5 must be >= 0"),
    ("train", ["trainer.precision=bf15-mixed"], "trainer.precision='bf15-mixed' is not a valid precision."),
])
def test_bad_precision_settings_fail_before_anything_runs(name, overrides, fragment):
    required = ["ckpt_path=x.ckpt", "input=in.tsv", "output=out.jsonl"] if name == "predict" else []
    with pytest.raises(ConfigError) as err:
        validate(compose_config(name, required + overrides))
    assert fragment in str(err.value)
    assert len(err.value.problems) == 1
