"""The config tree: every option composes and instantiates; typos and wrong types fail at compose time."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from lmlab.config.compose import compose_config, resolve_job
from lmlab.config.locate import config_dir
from lmlab.config.validate import validate
from lmlab.errors import ConfigError

from .conftest import DATA_ROOT, REPO, cli_env

CONF = config_dir()
GROUPS = ["task", "model", "data", "optimizer", "scheduler", "trainer", "callbacks", "logger", "paths",
          "hydra", "debug", "finetune", "peft", "adversarial", "augment", "hparams_search"]
OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted((CONF / g).glob("*.yaml"))]
EXPERIMENTS = sorted(p.stem for p in (REPO / "experiments").rglob("*.yaml"))


def _compose(overrides: list[str], name: str = "train"):
    return compose_config(name, overrides, hydra=True)


def _resolved(cfg, tmp_path: Path):
    """Resolve with the run-time paths Hydra would set (output dir, cwd); keep the group choices to assert on."""
    choices = OmegaConf.to_container(cfg.hydra.runtime.choices)
    job = resolve_job(cfg, tmp_path / "run")
    job.hydra_choices = choices
    return job


def test_every_group_has_options_and_experiments_exist():
    assert {g for g, _ in OPTIONS} == set(GROUPS)
    assert {"sst2_minilm", "mrpc_minilm", "sst2_tiny"} <= set(EXPERIMENTS)
    # The experiment group is the top-level experiments/ folder (symlinked into the tree).
    assert (CONF / "experiment").resolve() == (REPO / "experiments").resolve()


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_option_composes_validates_and_resolves(group: str, option: str, tmp_path: Path):
    overrides = [f"{group}={option}"]
    if group == "model" and option == "pretrained":
        overrides.append(f"model.name_or_path={tmp_path}")
    if group == "data" and option == "local":
        overrides += ["data.files.train=a.csv", "data.files.validation=b.csv"]
    if group == "finetune" and option == "head_warmup":
        overrides.append("trainer.max_epochs=2")  # unfreezes at epoch 1: the 1-epoch default recipe never gets there
    if group == "augment" and option == "back_translation":
        (tmp_path / "config.json").write_text("{}")  # validate checks the two model dirs exist (no loading)
        overrides += [f"augment.forward_model={tmp_path}", f"augment.backward_model={tmp_path}"]
    cfg = _resolved(_compose(overrides), tmp_path)
    validate(cfg)
    assert cfg.hydra_choices[group] == option
    assert OmegaConf.missing_keys(cfg) == set() or group == "model"


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_composes_and_instantiates(name: str, tmp_path: Path):
    """Compose each recipe and build every object that needs no model weights."""
    from hydra.utils import instantiate

    from lmlab.builders import build_callbacks

    cfg = _resolved(_compose([f"experiment={name}"]), tmp_path)
    validate(cfg)
    text = (REPO / "experiments" / f"{name}.yaml").read_text()
    assert f"lmlab train experiment={name}" in text.splitlines()[1], "line 2 must give the exact command"
    callbacks = build_callbacks(cfg)
    assert {type(c).__name__ for c in callbacks} >= {"ModelCheckpoint", "EarlyStopping"}
    optimizer_factory = instantiate(OmegaConf.masked_copy(cfg.optimizer, [k for k in cfg.optimizer if k != "no_weight_decay"]))
    import torch

    opt = optimizer_factory([torch.nn.Parameter(torch.zeros(2))])
    assert opt.defaults["lr"] == pytest.approx(cfg.optimizer.lr)
    assert Path(cfg.data.root).parent == DATA_ROOT or "LMLAB_DATA_ROOT" not in __import__("os").environ


def test_loggers_instantiate_together(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from lmlab.builders import build_loggers

    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    cfg = _resolved(_compose(["logger=[csv,tensorboard,wandb]", "logger.wandb.mode=disabled"]), tmp_path)
    loggers = build_loggers(cfg, wandb_id="abc123")
    assert [type(lg).__name__ for lg in loggers] == ["ResumableCSVLogger", "TensorBoardLogger", "WandbLogger"]
    for lg in loggers:
        if type(lg).__name__ == "WandbLogger":
            lg.experiment.finish()


def test_typo_in_key_fails_at_compose_time():
    with pytest.raises(ConfigCompositionException) as err:
        _compose(["trainer.max_epoch=3"])
    assert "max_epoch" in str(err.value.__cause__ or err.value)


def test_wrong_type_fails_at_compose_time():
    with pytest.raises(ConfigCompositionException) as err:
        _compose(["data.batch_size=lots"])
    message = str(err.value.__cause__ or err.value)
    assert "lots" in message and "batch_size" in message


def test_unknown_group_option_lists_the_valid_ones():
    with pytest.raises(ConfigCompositionException) as err:
        _compose(["optimizer=adamz"])
    assert "adamw" in str(err.value) and "sgd" in str(err.value)


def test_semantic_problems_are_collected_into_one_error(tmp_path: Path):
    cfg = _resolved(_compose(["data.batch_size=0", "optimizer.lr=-1", "scheduler.warmup_ratio=1.5",
                              "data.format=xlsx", "model.from_config={model_type: bert}"]), tmp_path)
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    message = str(err.value)
    for fragment in ("data.batch_size=0", "optimizer.lr=-1", "warmup_ratio=1.5", "'xlsx'", "csv, tsv",
                     "both set", "set model.tokenizer"):
        assert fragment in message, fragment
    assert len(err.value.problems) == 6


def test_cfg_job_prints_config_without_heavy_imports(tmp_path: Path):
    code = ("import sys; from lmlab.cli import main; main(['train', '--cfg', 'job', 'seed=7']);"
            "heavy = [m for m in ('torch', 'lightning', 'transformers', 'datasets') if m in sys.modules];"
            "print('HEAVY', heavy, file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert "seed: 7" in proc.stdout
    assert "HEAVY []" in proc.stderr


def test_compose_job_is_the_cli_config_in_process_without_heavy_imports(tmp_path: Path):
    """lmlab.config.compose (tests, benchmarks, notebooks): the config `lmlab train ... --cfg job --resolve`
    prints, with the run-time paths resolved and validated, and without importing torch."""
    overrides = ["experiment=mrpc_minilm", "optimizer.lr=3e-5"]
    code = ("import json, sys; from omegaconf import OmegaConf; from lmlab.config.compose import compose_job;"
            f"cfg = compose_job({overrides!r}, output_dir='RUN');"
            "heavy = [m for m in ('torch', 'lightning', 'transformers', 'datasets') if m in sys.modules];"
            "print(json.dumps({'cfg': OmegaConf.to_container(cfg), 'heavy': heavy}))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=cli_env(), capture_output=True, text=True,
                          check=True)
    composed = json.loads(proc.stdout)
    cfg = composed["cfg"]
    assert composed["heavy"] == []
    assert cfg["optimizer"]["lr"] == 3e-5 and cfg["data"]["root"] == f"{DATA_ROOT}/glue-mrpc"
    assert (cfg["paths"]["output_dir"], cfg["paths"]["log_dir"]) == ("RUN", f"{tmp_path}/outputs")
    cli = subprocess.run([sys.executable, "-m", "lmlab", "train", "--cfg", "job", "--resolve", *overrides],
                         cwd=tmp_path, env=cli_env(), capture_output=True, text=True, check=True)
    printed = OmegaConf.to_container(OmegaConf.create(cli.stdout))
    # The run dir exists only once a job runs: the CLI prints null where compose_job has the given one.
    assert (cfg["trainer"].pop("default_root_dir"), printed["trainer"].pop("default_root_dir")) == ("RUN", None)
    assert cfg["callbacks"]["checkpoint"]["dirpath"] == "RUN/checkpoints"
    for section in ("task", "model", "data", "optimizer", "scheduler", "trainer", "finetune", "peft"):
        assert cfg[section] == printed[section], section


def test_compose_job_validates_like_the_cli(tmp_path: Path):
    from lmlab.config.compose import compose_job

    with pytest.raises(ConfigError, match=r"data.batch_size=0"):
        compose_job(["data.batch_size=0"], output_dir=tmp_path / "run")
    assert compose_job(["data.batch_size=0"], output_dir=tmp_path / "run", check=False).data.batch_size == 0


def test_sweep_with_cfg_says_how_to_print_a_job_config(tmp_path: Path):
    """Hydra's answer was a ValueError traceback ("Only one of --run, --multirun, --cfg ...")."""
    proc = subprocess.run([sys.executable, "-m", "lmlab", "train", "-m", "seed=1,2", "--cfg", "job"], cwd=tmp_path,
                          env=cli_env(), capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "-m (a sweep) and --cfg cannot be combined" in proc.stderr
    assert "Fix: drop -m and give one value per swept key (`lmlab train seed=1 --cfg job`)" in proc.stderr
    assert not (tmp_path / "outputs").exists()


def test_cli_typo_exits_nonzero_with_the_key_named(tmp_path: Path):
    proc = subprocess.run([sys.executable, "-m", "lmlab", "train", "trainer.max_epoch=3"], cwd=tmp_path,
                          capture_output=True, text=True)
    assert proc.returncode != 0
    assert "max_epoch" in proc.stderr
    assert not (tmp_path / "outputs").exists(), "a config error must not create a run dir"


def test_unknown_command_lists_commands():
    proc = subprocess.run([sys.executable, "-m", "lmlab", "trian"], capture_output=True, text=True)
    assert proc.returncode == 2 and "train" in proc.stderr and "evaluate" in proc.stderr
