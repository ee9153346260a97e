"""The config tree travels: an installed wheel finds it, users add their own with --config-dir, and
the Hydra flags work through `lmlab`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from .conftest import REPO


def _lmlab(args: list[str], cwd: Path, pythonpath: str | None = None) -> subprocess.CompletedProcess:
    env = None
    if pythonpath:
        import os

        env = {**os.environ, "PYTHONPATH": pythonpath}
    return subprocess.run([sys.executable, "-m", "lmlab", *args], cwd=cwd, capture_output=True, text=True,
                          env=env)


def test_installed_wheel_carries_the_config_tree_and_experiments(tmp_path: Path):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "-q", "-w", str(wheels)],
                   check=True, capture_output=True)
    (wheel,) = wheels.glob("lmlab-*.whl")
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    assert (target / "lmlab" / "_conf" / "train.yaml").is_file()
    assert (target / "lmlab" / "_conf" / "experiment" / "mrpc_minilm.yaml").is_file()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = _lmlab(["train", "--cfg", "job", "experiment=mrpc_minilm"], cwd=elsewhere, pythonpath=str(target))
    assert proc.returncode == 0, proc.stderr
    assert "name: mrpc" in proc.stdout and "text_pair_column: '#2 String'" in proc.stdout


def test_user_config_dir_adds_options_to_the_groups(tmp_path: Path):
    mine = tmp_path / "myconf" / "model"
    mine.mkdir(parents=True)
    (mine / "my_bert.yaml").write_text(
        "defaults:\n  - tiny_bert\n  - _self_\nfrom_config:\n  num_hidden_layers: 4\n")
    proc = _lmlab(["train", "--config-dir", str(tmp_path / "myconf"), "model=my_bert", "--cfg", "job"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "num_hidden_layers: 4" in proc.stdout and "hidden_size: 32" in proc.stdout


def test_help_lists_groups_and_options(tmp_path: Path):
    proc = _lmlab(["train", "--help"], cwd=tmp_path)
    assert proc.returncode == 0
    groups = {line.split(":", 1)[0]: line.split(":", 1)[1].split(", ")
              for line in proc.stdout.splitlines() if ": " in line and "," in line}
    assert {"minilm", "pretrained", "tiny_bert", "tiny_gpt2", "tiny_t5"} <= {o.strip() for o in groups["model"]}
    assert "ddp_sim" in {o.strip() for o in groups["trainer"]}
    recipes = {p.stem for p in (REPO / "experiments").glob("*.yaml")}
    assert len(recipes) >= 9 and recipes <= {o.strip() for o in groups["experiment"]}


def test_multirun_runs_every_job_in_its_own_dir_under_one_sweep_dir(tmp_path: Path):
    from .conftest import read_json, run_lmlab, tiny

    run_lmlab("train", "-m", "seed=1,2", *tiny("debug=fast_dev_run"), cwd=tmp_path)
    (sweep,) = (tmp_path / "outputs" / "sequence_classification" / "multiruns").iterdir()
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit())
    assert [j.name for j in jobs] == ["0", "1"]
    assert [read_json(j / "run.json")["seed"] for j in jobs] == [1, 2]
    assert all(read_json(j / "metrics.json")["global_step"] == 1 for j in jobs)
