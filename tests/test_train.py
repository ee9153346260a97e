"""End to end through the real CLI on a tiny BERT and slices of real SST-2: train, resume, evaluate,
predict, seeds, caching, overfitting. Each test asserts numbers or file contents."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from .conftest import DATA_ROOT, cli_env, compose_train, read_json, run_dirs, run_lmlab, tiny

STEPS_PER_EPOCH = 128 // 16  # data.limit_train_samples / data.batch_size in TINY


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny 2-epoch run shared by the read-only tests below."""
    cwd = tmp_path_factory.mktemp("trained")
    run_lmlab("train", *tiny("trainer.max_epochs=2", "logger=[csv,tensorboard]"), cwd=cwd)
    (run,) = run_dirs(cwd)
    return run


def test_fast_dev_run(workdir: Path):
    run_lmlab("train", *tiny("debug=fast_dev_run"), cwd=workdir)
    (run,) = run_dirs(workdir)
    metrics = read_json(run / "metrics.json")
    assert metrics["global_step"] == 1
    assert set(metrics["test"]) >= {"test/acc", "test/f1", "test/mcc", "test/loss"}
    assert read_json(run / "run.json")["status"] == "completed"


def test_run_dir_holds_everything_needed_to_understand_the_run(trained: Path):
    meta = read_json(trained / "run.json")
    assert meta["status"] == "completed" and meta["seed"] == 42 and meta["world_size"] == 1
    assert meta["packages"]["torch"] and meta["packages"]["lightning"] and meta["packages"]["transformers"]
    assert "sha" in meta["git"] and meta["command"].startswith("lmlab train")
    assert "trainer.max_epochs=2" in meta["overrides"]
    assert meta["label_names"] == ["0", "1"]
    assert meta["data"]["train"]["rows"] == 128 and meta["data"]["train"]["rows_in_file"] == 67349
    for name in (".hydra/config.yaml", ".hydra/overrides.yaml", ".hydra/hydra.yaml", "config_resolved.yaml",
                 "train.log", "checkpoints/best.ckpt", "checkpoints/last.ckpt", "logs/metrics.csv",
                 "export/config.json", "export/model.safetensors", "export/tokenizer.json", "export/labels.json"):
        assert (trained / name).is_file(), name
    assert list((trained / "tensorboard").glob("events.out.tfevents.*"))
    resolved = (trained / "config_resolved.yaml").read_text()
    assert "${" not in resolved and "max_epochs: 2" in resolved
    metrics = read_json(trained / "metrics.json")
    assert metrics["global_step"] == 2 * STEPS_PER_EPOCH and metrics["epoch"] == 2
    assert 0.0 <= metrics["val"]["val/acc"] <= 1.0
    assert metrics["best_checkpoint"]["score"] == pytest.approx(metrics["val"]["val/acc"], abs=1e-6)
    # Per-class report: support adds up to the test rows.
    assert sum(row["support"] for row in metrics["test_per_class"].values()) == 64
    with open(trained / "logs" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert max(int(r["step"]) for r in rows) >= 2 * STEPS_PER_EPOCH - 1
    # optimizer.fused=null (the default) takes torch's fused AdamW on CPU: ~9x the default loop's speed.
    import torch

    state = torch.load(trained / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    assert [g["fused"] for g in state["optimizer_states"][0]["param_groups"]] == [True, True]


def test_export_loads_with_plain_transformers(trained: Path):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from lmlab.checkpoints import load_checkpoint

    model = AutoModelForSequenceClassification.from_pretrained(trained / "export").eval()
    tokenizer = AutoTokenizer.from_pretrained(trained / "export")
    assert model.config.id2label == {0: "0", 1: "1"}
    checkpoint = load_checkpoint(trained / "checkpoints" / "best.ckpt")
    state = checkpoint["state_dict"]
    # The checkpoint carries what is needed to rebuild and continue the run.
    assert checkpoint["lmlab"]["label_names"] == ["0", "1"]
    assert checkpoint["lmlab"]["wandb_run_id"] == read_json(trained / "run.json")["wandb_id"]
    assert checkpoint["lmlab"]["config"]["trainer"]["max_epochs"] == 2
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, state[f"model.{name}"]), name
    assert tokenizer("a fine film")["input_ids"][0] == tokenizer.cls_token_id


def test_evaluate_reproduces_train_time_test_metrics(trained: Path):
    proc = run_lmlab("evaluate", f"ckpt_path={trained}/checkpoints/best.ckpt", cwd=trained.parents[3])
    train_test = read_json(trained / "metrics.json")["test"]
    evaluated = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(evaluated) == set(train_test)
    for key, value in train_test.items():
        assert abs(evaluated[key] - value) < 1e-6, key


def test_evaluate_on_another_split_and_file(trained: Path, tmp_path: Path):
    proc = run_lmlab("evaluate", f"ckpt_path={trained}/checkpoints/best.ckpt", "split=validation",
                     cwd=trained.parents[3])
    evaluated = json.loads(proc.stdout.strip().splitlines()[-1])
    val = read_json(trained / "metrics.json")["val"]
    assert abs(evaluated["val/acc"] - val["val/acc"]) < 1e-6


def test_predict_writes_one_line_per_row_in_input_order(trained: Path, tmp_path: Path):
    rows = (DATA_ROOT / "sst2" / "dev.tsv").read_text().splitlines()[1:8]
    sentences = [r.split("\t")[0] for r in rows]
    (tmp_path / "in.tsv").write_text("sentence\n" + "\n".join(sentences) + "\n")
    out = tmp_path / "out.jsonl"
    run_lmlab("predict", f"ckpt_path={trained}/checkpoints/best.ckpt", f"input={tmp_path}/in.tsv",
              f"output={out}", cwd=tmp_path)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["sentence"] for line in lines] == sentences
    for line in lines:
        assert set(line["probs"]) == {"0", "1"}
        assert sum(line["probs"].values()) == pytest.approx(1.0, abs=1e-4)
        assert line["label"] == max(line["probs"], key=line["probs"].get)
    again = run_lmlab("predict", f"ckpt_path={trained}/checkpoints/best.ckpt", f"input={tmp_path}/in.tsv",
                      f"output={out}", cwd=tmp_path, check=False)
    assert again.returncode == 2 and "already exists" in again.stderr


def test_predict_under_bf16_gives_the_labels_of_fp32(trained: Path, tmp_path: Path):
    """precision=bf16-mixed re-runs every row whose logit gap is under recheck_margin in fp32: those rows get
    exactly fp32's output, the others bf16's (probabilities ~1e-3 off)."""
    import math
    import re

    rows = (DATA_ROOT / "sst2" / "dev.tsv").read_text().splitlines()[1:301]
    (tmp_path / "in.tsv").write_text("sentence\n" + "\n".join(r.split("\t")[0] for r in rows) + "\n")
    outputs, logs = {}, {}
    for name, overrides in (("fp32", ["precision=32-true"]), ("bf16", ["precision=bf16-mixed"]),
                            ("bf16_only", ["precision=bf16-mixed", "recheck_margin=0"])):
        out = tmp_path / f"{name}.jsonl"
        proc = run_lmlab("predict", f"ckpt_path={trained}/checkpoints/best.ckpt", f"input={tmp_path}/in.tsv",
                         f"output={out}", *overrides, cwd=tmp_path)
        outputs[name] = [json.loads(line) for line in out.read_text().splitlines()]
        logs[name] = proc.stdout + proc.stderr
    fp32, bf16, bf16_only = outputs["fp32"], outputs["bf16"], outputs["bf16_only"]
    # The 2-epoch tiny model is unsure of every sentence: all its logit gaps are below the default margin 0.1.
    gaps = [abs(math.log(r["probs"]["1"] / r["probs"]["0"])) for r in fp32]
    assert max(gaps) < 0.1
    rechecked = re.search(r"precision bf16-mixed: (\d+) of 300 rows had a near tie \(logit gap < 0.1\)",
                          logs["bf16"])
    assert rechecked and int(rechecked.group(1)) == 300
    assert bf16 == fp32  # labels and probabilities: every row was run again in fp32
    moved = [abs(a["probs"][k] - b["probs"][k]) for a, b in zip(fp32, bf16_only, strict=True) for k in a["probs"]]
    assert 0 < max(moved) < 0.02  # without the re-check, bf16 ran (the outputs moved), only by rounding
    assert "near tie" not in logs["fp32"] and "near tie" not in logs["bf16_only"]


def test_resume_continues_the_same_run_dir_to_epoch_two(workdir: Path):
    run_lmlab("train", *tiny(), cwd=workdir)
    (run,) = run_dirs(workdir)
    first = read_json(run / "metrics.json")
    assert first["global_step"] == STEPS_PER_EPOCH and first["epoch"] == 1
    wandb_id = read_json(run / "run.json")["wandb_id"]

    run_lmlab("train", f"resume={run}", "trainer.max_epochs=2", cwd=workdir)
    assert run_dirs(workdir) == [run], "resume must continue in the same run dir"
    second = read_json(run / "metrics.json")
    assert second["global_step"] == 2 * STEPS_PER_EPOCH and second["epoch"] == 2
    meta = read_json(run / "run.json")
    assert meta["resumed"] and len(meta["starts"]) == 2 and meta["wandb_id"] == wandb_id
    assert meta["resumed_from"].endswith("checkpoints/last.ckpt")
    assert list((run / ".hydra").glob("resume-*/overrides.yaml")), "the original .hydra files are kept"
    # The resumed job took the original overrides (tiny model) without the user repeating them.
    assert "model=tiny_bert" in (run / ".hydra" / "overrides.yaml").read_text()
    with open(run / "logs" / "metrics.csv") as f:
        val_steps = {int(r["step"]) for r in csv.DictReader(f) if r.get("val/acc")}
    # Validation rows of epoch 1 (before the resume) and epoch 2 (after it) are both in the file.
    assert {STEPS_PER_EPOCH - 1, 2 * STEPS_PER_EPOCH - 1} <= val_steps


def test_same_seed_twice_gives_identical_metrics_and_hits_the_cache(workdir: Path):
    env = cli_env(LMLAB_CACHE_DIR=str(workdir / "cache"))
    for _ in range(2):
        run_lmlab("train", *tiny("seed=3", "export=false"), cwd=workdir, env=env)
    first, second = run_dirs(workdir)
    m1, m2 = read_json(first / "metrics.json"), read_json(second / "metrics.json")
    assert m1["val"] == m2["val"] and m1["test"] == m2["test"] and m1["train"] == m2["train"]
    assert "[tokenized]" in (first / "train.log").read_text()
    log2 = (second / "train.log").read_text()
    assert "[tokenized]" not in log2 and log2.count("[cache hit]") == 3
    cached = sorted(p.name for p in (workdir / "cache" / "tokenized" / "sequence_classification").iterdir()
                    if not p.name.endswith(".lock"))
    assert len(cached) == 4 and {c.split("-")[0] for c in cached} == {"train", "validation", "test", "labels"}
    # The labels found in the train file are kept beside the splits: the second run did not read the file again.
    (labels,) = (workdir / "cache" / "tokenized" / "sequence_classification").glob("labels-*.json")
    assert read_json(labels)["labels"] == ["0", "1"]


def test_a_rerun_takes_the_train_labels_from_the_cache_and_a_changed_file_is_read_again(tmp_path: Path,
                                                                                        monkeypatch):
    """Listing the labels needs the whole train file; on a rerun over the same file (content hash) and options the
    list comes from the cache, so nothing reads the file. Edited labels in the file are found, not the old list."""
    import lmlab.data.base as base
    from lmlab.builders import build_datamodule, build_tokenizer

    (tmp_path / "d").mkdir()
    rows = [f"sentence number {i}\t{'pos' if i % 2 else 'neg'}" for i in range(40)]
    train = tmp_path / "d" / "train.tsv"
    train.write_text("sentence\tlabel\n" + "\n".join(rows) + "\n")
    (tmp_path / "d" / "dev.tsv").write_text("sentence\tlabel\nanother one\tpos\n")
    overrides = tiny(f"data.root={tmp_path / 'd'}", "data.files.test=null", "data.limit_train_samples=null",
                     f"paths.cache_dir={tmp_path / 'cache'}")

    def prepared():
        cfg = compose_train(overrides, tmp_path, check=True)
        dm = build_datamodule(cfg, build_tokenizer(cfg))
        dm.prepare_data()
        return dm

    assert prepared().label_names == ["neg", "pos"]
    real_load_split = base.load_split

    def no_train_reads(cfg, split, *args):
        assert split != "train", "the train file was read again"
        return real_load_split(cfg, split, *args)

    monkeypatch.setattr(base, "load_split", no_train_reads)
    again = prepared()
    assert again.label_names == ["neg", "pos"] and again.cache_hits == {"train": True, "validation": True}
    monkeypatch.setattr(base, "load_split", real_load_split)
    train.write_text(train.read_text().replace("\tpos", "\tgood"))
    (tmp_path / "d" / "dev.tsv").write_text("sentence\tlabel\nanother one\tgood\n")
    assert prepared().label_names == ["good", "neg"]


def test_overfit_tiny_model_reaches_full_train_accuracy(workdir: Path):
    run_lmlab("train", *tiny("debug=overfit", "trainer.max_epochs=30", "optimizer.lr=3e-3", "scheduler.warmup_ratio=0",
                             "export=false", "test=false"), cwd=workdir)
    (run,) = run_dirs(workdir)
    metrics = read_json(run / "metrics.json")
    assert metrics["global_step"] == 4 * 30
    assert metrics["train"]["acc"] >= 0.98
    assert metrics["train"]["loss"] < 0.1


def test_sentence_pairs_from_mrpc_with_bom_and_literal_quotes(workdir: Path):
    run_lmlab("train", *tiny("data=mrpc", "export=false"), cwd=workdir)
    (run,) = run_dirs(workdir)
    meta, metrics = read_json(run / "run.json"), read_json(run / "metrics.json")
    assert meta["label_names"] == ["0", "1"]
    assert meta["data"]["train"]["rows_in_file"] == 3668, "QUOTE_NONE keeps rows with quote characters whole"
    assert meta["data"]["validation"]["rows_in_file"] == 408
    # A pair encodes as [CLS] a [SEP] b [SEP]: far longer than either sentence alone.
    assert meta["data"]["train"]["mean_tokens"] > 40
    assert {"val/f1_pos", "val/f1", "val/acc", "val/mcc"} <= set(metrics["val"])


def test_a_previous_runs_export_is_a_model_for_the_next_run(trained: Path, workdir: Path):
    proc = run_lmlab("train", *tiny("model=pretrained", f"model.name_or_path={trained}/export",
                                    "debug=fast_dev_run")[1:], cwd=workdir)
    (run,) = run_dirs(workdir)
    assert read_json(run / "run.json")["status"] == "completed"
    assert f"name_or_path: {trained}/export" in (run / "config_resolved.yaml").read_text()
    # The export holds the classifier head too: transformers' load report lists no MISSING weights.
    assert "MISSING" not in proc.stdout + proc.stderr


def loss_trace(path: str):
    """Test-only callback (made by Hydra inside the lmlab process): every step's loss, and the steps at which the
    task module called self.log("train/loss", ...); written at fit end."""
    import lightning as L

    class Trace(L.Callback):
        def __init__(self) -> None:
            self.losses: list[float] = []
            self.logged_at: list[int] = []

        def on_fit_start(self, trainer, pl_module) -> None:
            log = pl_module.log

            def counting_log(name, *args, **kwargs):
                if name == "train/loss":
                    self.logged_at.append(len(self.losses))
                return log(name, *args, **kwargs)

            pl_module.log = counting_log

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.losses.append(float(outputs["loss"]))

        def on_fit_end(self, trainer, pl_module) -> None:
            Path(path).write_text(json.dumps({"losses": self.losses, "logged_at": self.logged_at}))

    return Trace()


def test_train_loss_is_logged_on_the_logging_steps_and_the_last_one(workdir: Path):
    """self.log costs ~1 ms a call, so per-step training values are logged only where the loggers write
    (every trainer.log_every_n_steps) and on the epoch's last batch: self.log("train/loss") runs at steps 3, 6
    and 8 (0-based 2, 5, 7) of 8, the CSV holds the losses of steps 3 and 6, metrics.json the loss of step 8,
    and train/acc stays the epoch's accuracy."""
    trace = workdir / "losses.json"
    run_lmlab("train", *tiny("trainer.log_every_n_steps=3", "+callbacks.trace._target_=tests.test_train.loss_trace",
                             f"+callbacks.trace.path={trace}", "test=false"),
              cwd=workdir, env=cli_env(PYTHONPATH=str(Path(__file__).resolve().parents[1])))
    traced = json.loads(trace.read_text())
    losses = traced["losses"]
    assert len(losses) == 8  # 128 samples, batch 16
    assert traced["logged_at"] == [2, 5, 7]
    (run,) = run_dirs(workdir)
    with open(run / "logs" / "metrics.csv", newline="") as f:
        logged = {int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")}
    assert sorted(logged) == [2, 5]
    for step, value in logged.items():
        assert value == pytest.approx(losses[step], abs=1e-6)
    train = read_json(run / "metrics.json")["train"]
    assert train["loss"] == pytest.approx(losses[-1], abs=1e-6)
    assert train["loss"] != pytest.approx(losses[5], abs=1e-6)
    assert 0.0 < train["acc"] <= 1.0


def test_no_best_checkpoint_is_explained_by_the_checkpoint_callbacks():
    """The warning when the test and export fall back to the final weights names the cause."""
    from types import SimpleNamespace

    from lmlab.train import _why_no_best

    step_only = SimpleNamespace(checkpoint_callbacks=[SimpleNamespace(monitor=None)])  # ~callbacks.checkpoint
    monitored = SimpleNamespace(checkpoint_callbacks=[SimpleNamespace(monitor=None), SimpleNamespace(monitor="val/acc")])
    assert _why_no_best(step_only).endswith("callbacks.checkpoint is off")
    assert _why_no_best(monitored).startswith("no validation ran before training stopped")
