"""Back-translation augmentation (issue 5, technique 6): cached paraphrases through two tiny random T5 models."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.conftest import DATA_ROOT, compose_train, read_json, run_dirs, run_lmlab, tiny

SETTINGS = {"forward_prefix": "", "backward_prefix": "", "num_beams": 2, "do_sample": False, "temperature": 1.0,
            "max_new_tokens": 8, "batch_size": 8}


def _sst2(n: int, start: int = 0) -> list[str]:
    lines = (DATA_ROOT / "sst2" / "train.tsv").read_text().splitlines()[1 + start:1 + start + n]
    return [line.split("\t")[0].strip() for line in lines]


def _save_tiny_t5(out: Path, tokenizer, seed: int) -> Path:
    """A 1+1-layer random T5 (d_model 32) and its tokenizer, saved as a from_pretrained directory."""
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(seed)
    config = T5Config(vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_heads=4, num_layers=1,
                      num_decoder_layers=1, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    T5ForConditionalGeneration(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Two different random tiny T5 models sharing a 300-piece Unigram vocabulary trained on SST-2 text."""
    from lmlab.tokenizer_training import train_tokenizer

    root = tmp_path_factory.mktemp("bt_models")
    spec = {"algorithm": "unigram", "vocab_size": 300, "min_frequency": 2, "lowercase": False}
    tokenizer = train_tokenizer(spec, lambda: iter(_sst2(500)), "test-bt", root / "tok")
    return {"forward_model": str(_save_tiny_t5(root / "fwd", tokenizer, 1)),
            "backward_model": str(_save_tiny_t5(root / "bwd", tokenizer, 2))}


def _augment(models: dict[str, str], prob: float = 1.0, **overrides) -> dict:
    return {"method": "back_translation", "prob": prob, **models, **SETTINGS, **overrides}


def _generate(path: str, texts: list[str]) -> list[str]:
    """Each text alone (no batch, no padding) through one model, independently of lmlab, as SETTINGS say."""
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModelForSeq2SeqLM.from_pretrained(path).eval()
    out = []
    for text in texts:
        with torch.no_grad():
            ids = model.generate(**tokenizer([text], return_tensors="pt"), num_beams=2, do_sample=False,
                                 max_new_tokens=8)
        out.append(tokenizer.decode(ids[0], skip_special_tokens=True).strip())
    return out


def test_paraphrases_equal_an_independent_generate_and_the_second_prepare_is_a_cache_hit(
        models: dict[str, str], tmp_path: Path, caplog: pytest.LogCaptureFixture):
    from lmlab.data.back_translation import prepare_paraphrases

    texts = [*_sst2(12), "", _sst2(1)[0]]  # an empty row and a duplicate stay aligned
    with caplog.at_level(logging.INFO, logger="lmlab.data.back_translation"):
        paraphrases, path, hit = prepare_paraphrases(texts, _augment(models), tmp_path, seed=0)
    assert not hit and "[generated]" in caplog.text and len(paraphrases) == len(texts)
    assert paraphrases[12] == "" and paraphrases[13] == paraphrases[0]
    # Batched (8 per call, padded) and cached = one text at a time; random models paraphrase poorly but surely.
    assert paraphrases[:12] == _generate(models["backward_model"], _generate(models["forward_model"], texts[:12]))
    assert len(set(paraphrases[:12])) >= 2 and all(p != t for p, t in zip(paraphrases, texts, strict=True) if t)

    mtime = path.stat().st_mtime_ns
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="lmlab.data.back_translation"):
        again, same_path, hit = prepare_paraphrases(texts, _augment(models), tmp_path, seed=7)
    assert hit and same_path == path and again == paraphrases and path.stat().st_mtime_ns == mtime
    assert "[cache hit]" in caplog.text
    # Settings, texts and models are all part of the key.
    _, other, _ = prepare_paraphrases(texts[:3], _augment(models, max_new_tokens=4), tmp_path, seed=0)
    swapped = {"forward_model": models["backward_model"], "backward_model": models["forward_model"]}
    _, reverse, _ = prepare_paraphrases(texts[:3], _augment(swapped), tmp_path, seed=0)
    assert len({path, other, reverse}) == 3 and not list(tmp_path.rglob("*.tmp-*"))


def test_sampling_is_seeded_and_the_seed_is_part_of_its_key(models: dict[str, str], tmp_path: Path):
    from lmlab.data.back_translation import prepare_paraphrases

    texts = _sst2(8)
    sample = _augment(models, do_sample=True, num_beams=1, temperature=2.0)
    first, path, _ = prepare_paraphrases(texts, sample, tmp_path / "a", seed=0)
    again, again_path, hit = prepare_paraphrases(texts, sample, tmp_path / "b", seed=0)  # generated anew
    other, other_path, _ = prepare_paraphrases(texts, sample, tmp_path / "b", seed=1)
    assert not hit and again == first and again_path.name == path.name
    assert other_path != again_path and other != first


def _datamodule(tmp_path: Path, seed: int = 0):
    from lmlab.builders import build_datamodule, build_tokenizer

    cfg = compose_train(tiny(f"seed={seed}", "data.limit_train_samples=24", "data.batch_size=8"), tmp_path, check=True)
    dm = build_datamodule(cfg, build_tokenizer(cfg))
    dm.prepare_data()
    return dm


def _epoch_texts(dm, epoch: int) -> list[str]:
    """The train loader's texts of ``epoch``, by row, checked against the token ids the loader serves."""
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(epoch)
    texts = [loader.dataset.text(epoch, row) for row in range(len(loader.dataset))]
    served = [ids[mask.bool()].tolist() for batch in loader
              for ids, mask in zip(batch["input_ids"], batch["attention_mask"], strict=True)]
    order = [row for _, row in loader.sampler]  # the rows of this epoch, in loader order
    assert served == [dm.tokenizer(texts[row], truncation=True, max_length=dm.cfg.max_length)["input_ids"]
                      for row in order]
    return texts


def test_rows_use_their_paraphrase_with_prob_per_seed_and_epoch(models: dict[str, str], tmp_path: Path):
    dm = _datamodule(tmp_path, seed=0)
    dm.augment = _augment(models, prob=1.0)
    always = _epoch_texts(dm, 0)
    originals, paraphrases = dm.train_dataloader().dataset.texts, always
    assert always == _epoch_texts(dm, 1) and all(a != o for a, o in zip(always, originals, strict=True))
    dm.augment = _augment(models, prob=0.5)
    epoch0, epoch1 = _epoch_texts(dm, 0), _epoch_texts(dm, 1)
    for texts in (epoch0, epoch1):  # each row is its text or its paraphrase, about half of each
        assert all(t in (o, p) for t, o, p in zip(texts, originals, paraphrases, strict=True))
        assert 6 <= sum(t == p for t, p in zip(texts, paraphrases, strict=True)) <= 18
    assert epoch0 != epoch1
    same = _datamodule(tmp_path, seed=0)
    same.augment = _augment(models, prob=0.5)
    assert _epoch_texts(same, 1) == epoch1


def test_eval_loaders_are_never_augmented_and_a_run_reads_augment_from_its_config(models, tmp_path: Path):
    import torch

    dm = _datamodule(tmp_path)
    plain = {split: list(getattr(dm, f"{split}_dataloader")()) for split in ("val", "test")}
    dm.trainer = SimpleNamespace(lightning_module=SimpleNamespace(config={"augment": _augment(models)}))
    assert type(dm.train_dataloader().dataset).__name__ == "AugmentedRows"
    for split, batches in plain.items():
        again = list(getattr(dm, f"{split}_dataloader")())
        assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(batches, again, strict=True))


@pytest.mark.parametrize(("overrides", "expected"), [
    (["augment.forward_model=/no/such/dir"], "augment.forward_model=/no/such/dir: no such directory"),
    (["augment.forward_model=null"], "augment.method=back_translation needs augment.forward_model"),
    (["augment.forward_model=Helsinki-NLP/opus-mt-en-de"], "augment.forward_model=Helsinki-NLP/opus-mt-en-de is not "
                                                             "a local directory and is not in the Hugging Face cache"),
    (["augment.num_beams=0"], "augment.num_beams=0 must be > 0"),
])
def test_bad_back_translation_values_fail_validation(overrides: list[str], expected: str, models, tmp_path: Path):
    from lmlab.errors import ConfigError

    base = ["augment=back_translation", f"augment.forward_model={models['forward_model']}",
            f"augment.backward_model={models['backward_model']}"]
    compose_train(base, tmp_path, check=True)  # the models themselves are fine
    with pytest.raises(ConfigError) as info:
        compose_train([*base, *overrides], tmp_path, check=True)
    assert expected in str(info.value) and "Fix:" in str(info.value)


def test_not_a_model_directory_names_the_key(tmp_path: Path, models):
    from lmlab.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        compose_train(["augment=back_translation", f"augment.forward_model={models['forward_model']}",
                       f"augment.backward_model={tmp_path}"], tmp_path, check=True)
    assert f"augment.backward_model={tmp_path}: {tmp_path} has no config.json" in str(info.value)


def _train_args(models: dict[str, str], *extra: str) -> list[str]:
    return tiny("augment=back_translation", f"augment.forward_model={models['forward_model']}",
                f"augment.backward_model={models['backward_model']}", "augment.max_new_tokens=8",
                "augment.num_beams=2", "data.limit_train_samples=64", "data.limit_val_samples=32",
                "test=false", "export=false", *extra)


def test_train_with_back_translation_reports_the_cache(models: dict[str, str], workdir: Path):
    run_lmlab("train", *_train_args(models, "augment.batch_size=16"), cwd=workdir)
    (run,) = run_dirs(workdir)
    log = (run / "train.log").read_text()
    assert "augment=back_translation: translated 64 train rows" in log and "[generated]" in log
    assert "train texts replaced by their paraphrase on the fly (prob 0.5)" in log
    assert read_json(run / "metrics.json")["status"] == "completed"


@pytest.mark.slow
def test_second_run_is_a_cache_hit_with_two_workers_and_epochs(models: dict[str, str], workdir: Path):
    args = _train_args(models, "trainer.max_epochs=2", "data.num_workers=2")
    run_lmlab("train", *args, cwd=workdir)
    run_lmlab("train", *args, cwd=workdir)
    first, second = run_dirs(workdir)
    logs = [(run / "train.log").read_text() for run in (first, second)]
    assert "augment=back_translation: translated 64 train rows" in logs[0] and "[generated]" in logs[0]
    assert "augment=back_translation: paraphrases of 64 train rows from" in logs[1] and "[cache hit]" in logs[1]
    assert all(read_json(run / "metrics.json")["epoch"] == 2 for run in (first, second))
