"""Training a tokenizer on the task's own training texts, for models built from scratch.

`model.train_tokenizer` (WordPiece for BERT, byte-level BPE for GPT-2, Unigram for T5) is a step of the
run: trained with the `tokenizers` library, saved with save_pretrained under
`${paths.cache_dir}/tokenizers/<key>/` and reused by every later run (and by evaluate/predict) whose
training file and tokenizer options are the same. The run's export carries the tokenizer too.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from filelock import FileLock

log = logging.getLogger(__name__)

# Special tokens per algorithm, in id order (the models' configs expect these ids: BERT pad=0, T5 pad=0 eos=1).
SPECIAL = {
    "wordpiece": {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]",
                  "mask_token": "[MASK]"},
    "bpe": {"eos_token": "<|endoftext|>", "bos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
            "pad_token": "<|endoftext|>"},
    "unigram": {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"},
}
INPUT_NAMES = {"wordpiece": ["input_ids", "token_type_ids", "attention_mask"],
               "bpe": ["input_ids", "attention_mask"], "unigram": ["input_ids", "attention_mask"]}
ALGORITHMS = tuple(SPECIAL)


def _build(algorithm: str, vocab_size: int, min_frequency: int, lowercase: bool) -> tuple[Any, Any]:
    """(untrained tokenizers.Tokenizer, its trainer) for one algorithm."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    specials = list(dict.fromkeys(SPECIAL[algorithm].values()))
    # Uncased BERT-style (lowercase, accents stripped) or cased with Unicode compatibility folding.
    norm = [normalizers.NFD(), normalizers.Lowercase(), normalizers.StripAccents()] if lowercase else [normalizers.NFKC()]
    if algorithm == "wordpiece":
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                            special_tokens=specials, show_progress=False)
    elif algorithm == "bpe":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=specials,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    else:
        tok = Tokenizer(models.Unigram())
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=specials, unk_token="<unk>",
                                          show_progress=False)
    tok.normalizer = normalizers.Sequence(norm)
    return tok, trainer


def _made_up_scores_start(pieces: list[tuple[str, float]]) -> int:
    """Index where the single characters a Unigram trainer appends (with made-up, lowest scores) start."""
    start = len(pieces)
    while start > 0 and len(pieces[start - 1][0]) == 1:
        start -= 1
    return start


def _canonical(tok: Any, algorithm: str) -> Any:
    """The trained tokenizer with its vocabulary in a fixed order.

    The `tokenizers` trainers return the same pieces in a different id order from run to run (ties broken by
    hash-map order), so two runs with the same seed would get different embeddings rows. (On a tiny corpus
    even the piece set can differ, through ties between merges: the cache keeps the first one trained.) Specials keep the
    first ids; WordPiece pieces follow in string order, Unigram pieces by score (rounded to 1e-6, whose
    summation order varies too), then string.
    """
    from tokenizers import Tokenizer

    state = json.loads(tok.to_str())
    model = state["model"]
    specials = list(dict.fromkeys(SPECIAL[algorithm].values()))
    if algorithm == "wordpiece":
        rest = sorted(t for t in model["vocab"] if t not in specials)
        model["vocab"] = {t: i for i, t in enumerate([*specials, *rest])}
    elif algorithm == "unigram":
        pieces = [(p, score) for p, score in model["vocab"] if p not in specials]
        tail = _made_up_scores_start(pieces)
        # The characters the trainer must keep come last with made-up scores handed out in hash-map order:
        # one shared score for them, so that only their string order counts.
        tail_score = pieces[tail][1] if tail < len(pieces) else 0.0
        scores = {p: round(tail_score if i >= tail else score, 6) for i, (p, score) in enumerate(pieces)}
        rest = sorted(scores, key=lambda p: (-scores[p], p))
        scores.update({p: score for p, score in model["vocab"] if p in specials})
        model["vocab"] = [[p, scores[p]] for p in [*specials, *rest]]
        model["unk_id"] = specials.index("<unk>")
    else:
        return tok  # byte-level BPE training is already deterministic (merges in frequency, then pair order)
    return Tokenizer.from_str(json.dumps(state))


def _add_post_processor(tok: Any, algorithm: str) -> None:
    """[CLS] a [SEP] b [SEP] for BERT, `a </s>` for T5; GPT-2 adds nothing."""
    from tokenizers import processors

    if algorithm == "wordpiece":
        cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    elif algorithm == "unigram":
        tok.post_processor = processors.TemplateProcessing(
            single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", tok.token_to_id("</s>"))])


def tokenizer_key(spec: dict[str, Any], source_fingerprint: str) -> str:
    body = json.dumps({"spec": spec, "source": source_fingerprint, "format": 2}, sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()[:16]


def train_tokenizer(spec: dict[str, Any], texts: Callable[[], Iterator[str]], source_fingerprint: str,
                    cache_root: Path) -> Any:
    """A transformers fast tokenizer trained on ``texts()`` (or loaded from the cache when trained before).

    ``spec``: model.train_tokenizer as a dict (algorithm, vocab_size, min_frequency, lowercase).
    """
    from transformers import PreTrainedTokenizerFast

    algorithm = spec["algorithm"]
    out = Path(cache_root) / f"{algorithm}-{tokenizer_key(spec, source_fingerprint)}"
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock"):  # DDP ranks and parallel jobs train it once
        if (out / "tokenizer.json").is_file():
            log.info("tokenizer: %s [cache hit]", out)
            return PreTrainedTokenizerFast.from_pretrained(str(out))
        tok, trainer = _build(algorithm, int(spec["vocab_size"]), int(spec["min_frequency"]),
                              bool(spec["lowercase"]))
        tok.train_from_iterator(texts(), trainer=trainer)
        tok = _canonical(tok, algorithm)
        _add_post_processor(tok, algorithm)
        fast = PreTrainedTokenizerFast(tokenizer_object=tok, model_input_names=INPUT_NAMES[algorithm],
                                       **SPECIAL[algorithm])
        tmp = out.with_name(out.name + f".tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        fast.save_pretrained(str(tmp))
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
        log.info("tokenizer: trained %s, %d tokens, saved to %s", algorithm, fast.vocab_size, out)
        return PreTrainedTokenizerFast.from_pretrained(str(out))
