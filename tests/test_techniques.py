"""Auxiliary MLM loss, adversarial training (FGM/PGD) and train-split augmentation (EDA): issue 5, items 4-6."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
from omegaconf import OmegaConf

from tests.conftest import REPO, compose_train, read_json, run_dirs, run_lmlab, tiny

TASK_DATA = {"sequence_classification": "sst2", "token_classification": "wnut17", "masked_lm": "wikitext2",
             "causal_lm": "tinyshakespeare", "seq2seq": "multi30k"}
TASKS = sorted(p.stem for p in (REPO / "conf" / "task").glob("*.yaml"))
OPTIONS = ["adversarial=fgm", "adversarial=pgd", "augment=eda", "augment=back_translation", "task.aux_mlm_weight=0.5"]
APPLIES = {"adversarial": ("sequence_classification", "token_classification"), "augment": ("sequence_classification",),
           "task.aux_mlm_weight": ("sequence_classification",)}


def _csv_rows(run: Path) -> list[dict[str, str]]:
    with open(run / "logs" / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def _column(rows: list[dict[str, str]], name: str) -> list[float]:
    return [float(r[name]) for r in rows if r.get(name)]


# -- compose / validate -----------------------------------------------------------------------------
@pytest.mark.parametrize("option", OPTIONS)
@pytest.mark.parametrize("task", TASKS)
def test_every_option_composes_with_every_task_it_applies_to(task: str, option: str, tmp_path: Path):
    """Where an option applies the config composes and validates; elsewhere the error names option and task."""
    from hydra.errors import ConfigCompositionException

    from lmlab.errors import ConfigError

    overrides = [f"task={task}", f"data={TASK_DATA.get(task, 'sst2')}", option]
    if option == "augment=back_translation":  # validate checks that both model dirs exist (nothing is loaded)
        (tmp_path / "config.json").write_text("{}")
        overrides += [f"augment.forward_model={tmp_path}", f"augment.backward_model={tmp_path}"]
    key = option.split("=")[0]
    if task in APPLIES[key]:
        cfg = compose_train(overrides, tmp_path, check=True)
        assert OmegaConf.select(cfg, key.replace("=", ".")) is not None
        return
    with pytest.raises((ConfigError, ConfigCompositionException)) as info:
        compose_train(overrides, tmp_path, check=True)
    message = str(info.value) + str(info.value.__cause__ or "")
    assert option.split("=")[0].split(".")[-1] in message  # adversarial / augment / aux_mlm_weight
    task_class = "".join(part.title() for part in task.split("_"))
    assert f"task={task}" in message or task_class.replace("Lm", "LM") in message


@pytest.mark.parametrize(("overrides", "expected"), [
    (["adversarial=fgm", "adversarial.steps=3"], "adversarial.steps=3: FGM takes exactly one step"),
    (["adversarial=pgd", "adversarial.epsilon=0"], "adversarial.epsilon=0.0 must be > 0"),
    (["adversarial=pgd", "adversarial.method=vat"], "adversarial.method='vat' is not a valid choice"),
    (["augment=eda", "augment.operations=[swap,shout]"], "augment.operations=['swap', 'shout']"),
    (["augment=eda", "augment.prob=1.5"], "augment.prob=1.5 must be in (0, 1]"),
    (["augment=eda", "augment.synonyms=/no/such/file.txt"], "augment.synonyms=/no/such/file.txt: no such file"),
    (["task.aux_mlm_weight=-0.1"], "task.aux_mlm_weight=-0.1 must be >= 0"),
])
def test_bad_technique_values_fail_validation(overrides: list[str], expected: str, tmp_path: Path):
    from lmlab.errors import ConfigError

    with pytest.raises(ConfigError, match=None) as info:
        compose_train(overrides, tmp_path, check=True)
    assert expected in str(info.value)


# -- adversarial --------------------------------------------------------------------------------------
def test_fgm_perturbation_has_norm_epsilon_along_the_gradient():
    import torch

    from lmlab.techniques.adversarial import Adversarial

    grad = torch.randn(3, 5, 8, generator=torch.Generator().manual_seed(0)) * torch.tensor([1e-4, 1.0, 50.0]).view(3, 1, 1)
    fgm = Adversarial("fgm", epsilon=0.7, alpha=0.7, steps=1, loss_weight=1.0)
    r = fgm.perturbation(grad, loss_at=None)
    norms = r.flatten(1).norm(dim=1)
    assert torch.allclose(norms, torch.full((3,), 0.7), atol=1e-6)
    cosine = torch.nn.functional.cosine_similarity(r.flatten(1), grad.flatten(1))
    assert torch.allclose(cosine, torch.ones(3), atol=1e-6)


def test_pgd_steps_stay_inside_the_epsilon_ball_and_climb_the_loss():
    """On loss(r) = <w, r> PGD moves along w each step; the projection keeps ||r|| <= epsilon."""
    import torch

    from lmlab.techniques.adversarial import Adversarial

    w = torch.randn(2, 4, 6, generator=torch.Generator().manual_seed(1))
    calls = []

    def loss_at(r: torch.Tensor) -> torch.Tensor:
        calls.append(r.detach().clone())
        return (w * r).sum()

    pgd = Adversarial("pgd", epsilon=1.0, alpha=0.4, steps=4, loss_weight=1.0)
    r = pgd.perturbation(w, loss_at)
    assert len(calls) == 3  # the first step uses the clean gradient
    assert [round(float(c.flatten(1).norm(dim=1)[0]), 4) for c in calls] == [0.4, 0.8, 1.0]
    assert torch.allclose(r.flatten(1).norm(dim=1), torch.ones(2), atol=1e-6)
    assert torch.allclose(torch.nn.functional.cosine_similarity(r.flatten(1), w.flatten(1)), torch.ones(2), atol=1e-5)


def _tiny_classifier():
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, num_labels=2)
    batch = {"input_ids": torch.randint(5, 50, (4, 7), generator=torch.Generator().manual_seed(0)),
             "attention_mask": torch.ones(4, 7, dtype=torch.long), "labels": torch.tensor([0, 1, 1, 0])}
    return BertForSequenceClassification(config).eval(), batch


def test_adversarial_losses_perturb_the_embeddings_without_touching_parameter_grads():
    """The adversarial loss is higher than the clean one (no dropout: eval mode), FGM's r changes the loss by
    about its first-order gain, and no parameter gradient is accumulated before Lightning's backward."""
    import torch

    from lmlab.techniques.adversarial import Adversarial, embedding_hook

    model, batch = _tiny_classifier()
    fgm = Adversarial("fgm", epsilon=0.05, alpha=0.05, steps=1, loss_weight=1.0)
    out, clean, adv = fgm.losses(model, lambda: model(**batch))
    clean, adv = clean.detach(), adv.detach()
    assert all(p.grad is None for p in model.parameters())
    assert float(adv) > float(clean)
    with embedding_hook(model) as embeds:
        again = model(**batch).loss
    (grad,) = torch.autograd.grad(again, embeds[0])
    gain = 0.05 * grad.flatten(1).norm(dim=1).sum()  # <grad, r> summed over examples
    assert float(adv - clean) == pytest.approx(float(gain), rel=0.1)
    assert torch.equal(out.logits, model(**batch).logits)
    # The hook is gone afterwards: a plain forward gives the clean loss again.
    assert float(model(**batch).loss.detach()) == pytest.approx(float(clean))


# -- auxiliary MLM ------------------------------------------------------------------------------------
def _task_module(tmp_path: Path, *overrides: str, weights: bool = True):
    from lmlab.builders import build_task_module, build_tokenizer
    from lmlab.run_dir import plain_config

    cfg = compose_train(tiny(*overrides), tmp_path, check=True)
    tokenizer = build_tokenizer(cfg)
    return build_task_module(cfg, plain_config(cfg), ["0", "1"], weights=weights, tokenizer=tokenizer), tokenizer


def test_aux_mlm_shares_the_encoder_masks_deterministically_and_restores(tmp_path: Path):
    import torch

    module, tokenizer = _task_module(tmp_path, "task.aux_mlm_weight=0.5")
    aux = module.aux_mlm
    # The head sits on the task model's own encoder, its decoder tied to the task model's word embeddings.
    assert aux._mlm[0].base_model is module.model.base_model
    assert aux._mlm[0].get_output_embeddings().weight is module.model.get_input_embeddings().weight
    keys = [k for k in module.state_dict() if k.startswith("aux_mlm.")]
    assert keys and all(k.startswith("aux_mlm.heads.cls.") for k in keys)  # the encoder is not saved twice
    enc = tokenizer(["a gorgeous , witty , seductive movie .", "it 's a bad sign"] * 8, padding=True,
                    return_tensors="pt")
    batch = {**enc, "labels": torch.zeros(16, dtype=torch.long)}
    masked, labels = aux.mask(batch["input_ids"], epoch=0, batch_idx=3)
    again, _ = aux.mask(batch["input_ids"], epoch=0, batch_idx=3)
    other, _ = aux.mask(batch["input_ids"], epoch=0, batch_idx=4)
    assert torch.equal(masked, again) and not torch.equal(masked, other)
    special = torch.isin(batch["input_ids"], torch.tensor(tokenizer.all_special_ids))
    assert not (labels[special] != -100).any()  # [CLS]/[SEP]/[PAD] are never masked
    share = float((labels != -100).sum() / (~special).sum())
    assert 0.05 < share < 0.3  # ~15 % of the real tokens
    assert torch.equal(labels[labels != -100], batch["input_ids"][labels != -100])
    loss = aux(batch, epoch=0, batch_idx=3)
    assert math.isfinite(float(loss)) and float(loss) > math.log(len(tokenizer)) * 0.5  # untrained: ~ln(vocab)
    loss.backward()
    assert module.model.base_model.encoder.layer[0].attention.self.query.weight.grad is not None
    assert aux.heads["cls"].predictions.transform.dense.weight.grad is not None
    # `lmlab evaluate` builds with weights=False from the saved config and loads the state dict strictly.
    restored, _ = _task_module(tmp_path, "task.aux_mlm_weight=0.5", weights=False)
    restored.load_state_dict(module.state_dict())
    module.eval(), restored.eval()
    assert torch.equal(module.aux_mlm(batch, 0, 3), restored.aux_mlm(batch, 0, 3))


def test_train_with_pgd_and_aux_mlm_logs_every_loss(workdir: Path):
    """A TINY run with adversarial=pgd and task.aux_mlm_weight=0.5: the CSV log holds the clean, adversarial,
    task and MLM losses, finite, and train/loss = loss_clean + loss_adv + 0.5 * loss_mlm at every step."""
    run_lmlab("train", *tiny("adversarial=pgd", "task.aux_mlm_weight=0.5", "trainer.log_every_n_steps=1"),
              cwd=workdir)
    (run,) = run_dirs(workdir)
    rows = [r for r in _csv_rows(run) if r.get("train/loss")]
    assert len(rows) == 8  # 128 rows / batch 16
    for r in rows:
        values = {k: float(r[f"train/{k}"]) for k in ("loss", "loss_clean", "loss_adv", "loss_task", "loss_mlm")}
        assert all(math.isfinite(v) for v in values.values()), values
        assert values["loss_adv"] > 0 and values["loss_mlm"] > 1.0
        assert values["loss_task"] == pytest.approx(values["loss_clean"] + values["loss_adv"], abs=1e-4)
        assert values["loss"] == pytest.approx(values["loss_task"] + 0.5 * values["loss_mlm"], abs=1e-4)
    assert read_json(run / "metrics.json")["status"] == "completed"


@pytest.mark.slow
def test_fgm_token_classification_and_aux_mlm_checkpoint_evaluate(workdir: Path):
    """FGM on NER logs both losses; an aux-MLM checkpoint re-scores identically through `lmlab evaluate`."""
    run_lmlab("train", *tiny("task=token_classification", "data=wnut17", "adversarial=fgm",
                             "trainer.log_every_n_steps=1"), cwd=workdir)
    (ner,) = run_dirs(workdir, "token_classification")
    rows = _csv_rows(ner)
    clean, adv = _column(rows, "train/loss_clean"), _column(rows, "train/loss_adv")
    assert len(clean) == len(adv) == 8 and all(math.isfinite(v) for v in clean + adv)

    run_lmlab("train", *tiny("task.aux_mlm_weight=0.5", "trainer.log_every_n_steps=1"), cwd=workdir)
    (run,) = run_dirs(workdir)
    assert len(_column(_csv_rows(run), "train/loss_mlm")) >= 1
    proc = run_lmlab("evaluate", f"ckpt_path={run / 'checkpoints' / 'best.ckpt'}", cwd=workdir)
    test = read_json(run / "metrics.json")["test"]
    assert f'"test/acc": {test["test/acc"]}' in proc.stdout + proc.stderr


# -- augmentation -------------------------------------------------------------------------------------
EDA_ON = {"method": "eda", "prob": 1.0, "operations": ["synonym", "insert", "swap", "delete"], "alpha": 0.1,
          "synonyms": None}


def _datamodule(tmp_path: Path, seed: int = 0, workers: int = 0, *overrides: str):
    from lmlab.builders import build_datamodule, build_tokenizer

    cfg = compose_train(tiny(f"seed={seed}", f"data.num_workers={workers}", "data.limit_train_samples=48",
                             "data.batch_size=8", *overrides), tmp_path, check=True)
    tokenizer = build_tokenizer(cfg)
    dm = build_datamodule(cfg, tokenizer)
    dm.prepare_data()
    return dm, tokenizer


def _epoch_texts(dm, tokenizer, epoch: int) -> list[str]:
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(epoch)
    return [tokenizer.decode(ids[mask.bool()], skip_special_tokens=True)
            for batch in loader for ids, mask in zip(batch["input_ids"], batch["attention_mask"], strict=True)]


def test_eda_operations_follow_the_synonym_list():
    import numpy as np

    from lmlab.data.augment import build_augmenter, load_synonyms

    table = load_synonyms(None)
    assert "film" in table["movie"] and "movie" in table["film"]
    text = "The movie was great , but the ending felt very boring ."
    words = text.split()
    rng = lambda: np.random.default_rng(3)  # noqa: E731
    out = {op: build_augmenter({**EDA_ON, "operations": [op], "alpha": 0.2})(text, rng()).split()
           for op in ("synonym", "insert", "swap", "delete")}
    changed = [(a, b) for a, b in zip(words, out["synonym"], strict=True) if a != b]
    assert len(changed) == 2 and all(b.lower() in table[a.lower()] for a, b in changed)
    assert changed[0][1][0].isupper() or changed[0][0][0].islower()  # case kept
    assert len(out["insert"]) == len(words) + 2 and sorted(set(out["insert"]) - set(words))
    assert sorted(out["swap"]) == sorted(words) and out["swap"] != words
    assert len(out["delete"]) < len(words) and all(w in words for w in out["delete"])
    off = build_augmenter({**EDA_ON, "prob": 0.0})
    assert off(text, rng()) == text


def test_augmented_train_texts_differ_by_epoch_and_seed_and_repeat_for_the_same_seed(tmp_path: Path):
    dm, tokenizer = _datamodule(tmp_path, seed=0)
    original = _epoch_texts(dm, tokenizer, 0)  # augment off: the cached encodings
    dm.augment = EDA_ON
    epoch0, epoch1 = _epoch_texts(dm, tokenizer, 0), _epoch_texts(dm, tokenizer, 1)
    assert len(epoch0) == len(original) == 48
    assert sum(a != b for a, b in zip(epoch0, original, strict=True)) > 24  # synonym/insert need a listed word
    assert epoch0 != epoch1
    same, _ = _datamodule(tmp_path, seed=0)
    same.augment = EDA_ON
    assert _epoch_texts(same, tokenizer, 1) == epoch1
    other, _ = _datamodule(tmp_path, seed=1)
    other.augment = EDA_ON
    assert _epoch_texts(other, tokenizer, 1) != epoch1


def test_augmentation_differs_across_workers_and_does_not_depend_on_their_number(tmp_path: Path):
    """Every row is the same sentence: with 2 loader workers, each worker's rows get different augmentations
    (no copied RNG state), and the texts equal those of a single-process loader (seeded per row, not per
    worker)."""
    data = tmp_path / "same.tsv"
    data.write_text("text\tlabel\n" + "".join(f"a gorgeous , witty , seductive movie that is good .\t{i % 2}\n"
                                                  for i in range(32)))
    files = [f"data.files.train={data}", f"data.files.validation={data}", f"data.files.test={data}"]
    single, tokenizer = _datamodule(tmp_path, 0, 0, "data=local", *files)
    workers, _ = _datamodule(tmp_path, 0, 2, "data=local", *files)
    for dm in (single, workers):
        dm.augment = EDA_ON
    texts = _epoch_texts(workers, tokenizer, 0)
    assert texts == _epoch_texts(single, tokenizer, 0)
    per_batch = [texts[i : i + 8] for i in range(0, 32, 8)]  # batches 0, 2 from worker 0; 1, 3 from worker 1
    assert per_batch[0] != per_batch[1] and per_batch[2] != per_batch[3]
    assert len(set(texts)) > 20


def test_eval_data_is_never_augmented(tmp_path: Path):
    """Validation/test loaders serve the cached encodings of the original texts, also with augment on, and a
    run's train loader reads augment from the run config the task module carries."""
    import torch

    from lmlab.data.loading import resolve_file

    dm, tokenizer = _datamodule(tmp_path)
    plain = {split: list(getattr(dm, f"{split}_dataloader")()) for split in ("val", "test")}
    dm.trainer = SimpleNamespace(lightning_module=SimpleNamespace(config={"augment": EDA_ON}))
    assert type(dm.train_dataloader().dataset).__name__ == "AugmentedRows"
    for split, batches in plain.items():
        again = list(getattr(dm, f"{split}_dataloader")())
        assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(batches, again, strict=True))
    first = next(iter(plain["val"]))  # longest dev sentences first
    dev = [line.split("\t")[0] for line in resolve_file(dm.cfg, "validation").read_text().splitlines()[1:65]]
    expected = tokenizer(dev, truncation=True, max_length=dm.cfg.max_length)["input_ids"]
    longest = sorted(expected, key=len, reverse=True)[: len(first["input_ids"])]  # stable, as by_length
    assert [row[: len(ids)].tolist() for row, ids in zip(first["input_ids"], longest, strict=True)] == longest
    dm.trainer = SimpleNamespace(lightning_module=SimpleNamespace(config={"augment": {"method": None}}))
    assert type(dm.train_dataloader().dataset).__name__ != "AugmentedRows"


@pytest.mark.slow
def test_train_with_eda_runs_two_epochs(workdir: Path):
    run_lmlab("train", *tiny("augment=eda", "trainer.max_epochs=2", "data.num_workers=2"), cwd=workdir)
    (run,) = run_dirs(workdir)
    metrics = read_json(run / "metrics.json")
    assert metrics["status"] == "completed" and metrics["epoch"] == 2
    assert "augment=eda: train texts augmented on the fly" in (run / "train.log").read_text()
