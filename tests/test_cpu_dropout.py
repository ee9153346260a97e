"""model.cpu_dropout=fast (techniques/cpu_dropout.py): dropout's distribution and gradient, attention's math path
against transformers' sdpa, the module swap through the real builders, and the config choice."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lmlab.errors import ConfigError
from lmlab.techniques import cpu_dropout
from lmlab.techniques.cpu_dropout import ATTENTION, attention, fast_dropout, keep_mask, use_fast_cpu_dropout

from .conftest import compose_train


@pytest.mark.parametrize("p", [0.1, 0.5, 0.03])
def test_masks_keep_1_minus_p_and_scale_keeps_the_expectation(p: float):
    torch.manual_seed(0)
    n = 1_000_000
    keep, scale = keep_mask((1000, 1000), p)
    assert keep.dtype == torch.bool and keep.shape == (1000, 1000)
    kept_p = 1 - round(p * 65536) / 65536
    assert abs(kept_p - (1 - p)) < 1e-5 and scale == pytest.approx(1 / kept_p, rel=1e-12)
    sigma = (kept_p * (1 - kept_p) / n) ** 0.5
    assert abs(keep.float().mean().item() - kept_p) < 5 * sigma
    # The four 16-bit uniforms of one 64-bit draw are independent: neighbours agree as often as chance says.
    flat = keep.flatten()
    agree = (flat[0::4] == flat[1::4]).float().mean().item()
    assert abs(agree - (kept_p ** 2 + (1 - kept_p) ** 2)) < 0.01
    out = fast_dropout(torch.ones(n, dtype=torch.float64), p)
    values = torch.unique(out).tolist()
    assert len(values) == 2 and values[0] == 0.0 and values[1] == pytest.approx(scale)
    assert abs(out.mean().item() - 1.0) < 5 * sigma * scale


def test_masks_follow_torch_seed_and_the_gradient_uses_the_forward_mask():
    x = torch.randn(64, 33, 48, requires_grad=True)
    torch.manual_seed(3)
    a = fast_dropout(x, 0.1)
    torch.manual_seed(3)
    b = fast_dropout(x, 0.1)
    c = fast_dropout(x, 0.1)
    assert torch.equal(a, b) and not torch.equal(b, c)
    a.backward(torch.full_like(a, 2.0))
    kept = a != 0
    scale = 65536 / (65536 - round(0.1 * 65536))
    assert torch.equal(x.grad, torch.where(kept, 2.0 * scale, 0.0))
    assert torch.allclose(a, torch.where(kept, x * scale, 0.0))


def test_no_dropout_cases_return_the_input_or_torch_results():
    x = torch.randn(8, 8)
    assert fast_dropout(x, 0.0) is x and fast_dropout(x, 0.3, training=False) is x
    assert torch.equal(fast_dropout(x, 1.0), torch.zeros_like(x))  # torch's own p=1 result
    module = cpu_dropout.Dropout(0.2).eval()
    assert module(x) is x


class _Attn(torch.nn.Module):
    def __init__(self, causal: bool, groups: int = 1):
        super().__init__()
        self.is_causal, self.num_key_value_groups = causal, groups


@pytest.mark.parametrize("case", ["bool_mask", "float_mask", "causal", "causal_longer_keys", "position_bias", "gqa"])
def test_attention_math_path_equals_sdpa_without_the_dropout(case: str, monkeypatch: pytest.MonkeyPatch):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    torch.manual_seed(0)
    heads_kv = 2 if case == "gqa" else 4
    kv_len = 11 if case == "causal_longer_keys" else 7
    q = torch.randn(2, 4, 7, 8)
    k, v = torch.randn(2, heads_kv, kv_len, 8), torch.randn(2, heads_kv, kv_len, 8)
    module = _Attn(causal=case.startswith("causal"), groups=4 // heads_kv)
    mask, kwargs = None, {}
    if case in ("bool_mask", "gqa", "position_bias"):
        mask = torch.ones(2, 1, 7, kv_len, dtype=torch.bool)
        mask[0, ..., 5:] = False
    elif case == "float_mask":
        mask = torch.zeros(2, 1, 7, kv_len)
        mask[1, ..., 4:] = torch.finfo(torch.float32).min
    if case == "position_bias":
        kwargs = {"position_bias": torch.randn(1, 4, 7, kv_len), "scaling": 1.0}
    expected, _ = sdpa_attention_forward(module, q, k, v, mask, dropout=0.0, **kwargs)
    monkeypatch.setattr(cpu_dropout, "fast_dropout", lambda x, p, training=True: x)  # the math path, no noise
    got, _ = attention(module, q, k, v, mask, dropout=0.1, **kwargs)
    assert got.shape == expected.shape == (2, 7, 4, 8)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_attention_without_dropout_is_sdpa_itself():
    q, k, v = (torch.randn(1, 2, 5, 4) for _ in range(3))
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    assert torch.equal(attention(_Attn(False), q, k, v, None, dropout=0.0)[0],
                       sdpa_attention_forward(_Attn(False), q, k, v, None, dropout=0.0)[0])


RECIPES = {  # model config -> (task, data, label names)
    "tiny_bert": ("sequence_classification", "sst2", ["negative", "positive"]),
    "tiny_gpt2": ("causal_lm", "tinyshakespeare", None),
    "tiny_t5": ("seq2seq", "multi30k", None),
}


def _build(tmp_path: Path, model: str, *overrides: str) -> torch.nn.Module:
    from lmlab.builders import build_task_module
    from lmlab.run_dir import plain_config

    task, data, labels = RECIPES[model]
    cfg = compose_train([f"model={model}", f"task={task}", f"data={data}", *overrides], tmp_path)
    return build_task_module(cfg, plain_config(cfg), labels).model


def _dropouts(model: torch.nn.Module) -> list[str]:
    return [type(m).__module__ + "." + type(m).__name__ for m in model.modules() if isinstance(m, torch.nn.Dropout)]


def _inputs(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    ids = torch.randint(5, 90, (3, 12))
    mask = torch.ones_like(ids)
    mask[0, 7:] = 0  # padding: it must stay masked with the swapped attention
    extra = {"decoder_input_ids": ids[:, :6]} if model.config.is_encoder_decoder else {}
    return {"input_ids": ids, "attention_mask": mask, **extra}


@pytest.mark.parametrize("model_name", list(RECIPES))
def test_builders_swap_dropout_by_default_and_evaluation_is_unchanged(tmp_path: Path, model_name: str):
    fast = _build(tmp_path / "fast", model_name)
    plain = _build(tmp_path / "torch", model_name, "model.cpu_dropout=torch")
    n = len(_dropouts(plain))
    assert n > 0 and _dropouts(fast) == ["lmlab.techniques.cpu_dropout.Dropout"] * n
    assert set(_dropouts(plain)) == {"torch.nn.modules.dropout.Dropout"}
    assert fast.config._attn_implementation == ATTENTION and plain.config._attn_implementation == "sdpa"
    assert fast.state_dict().keys() == plain.state_dict().keys()
    plain.load_state_dict(fast.state_dict())
    inputs = _inputs(fast)
    fast.eval(), plain.eval()
    with torch.no_grad():  # no dropout: sdpa with the same masks, the same logits bit for bit
        assert torch.equal(fast(**inputs).logits, plain(**inputs).logits)
        if model_name != "tiny_bert":  # generation: cached keys/values and their masks, as under sdpa
            prompt = {k: v for k, v in inputs.items() if not k.startswith("decoder")}
            kw = {"max_new_tokens": 6, "do_sample": False, "pad_token_id": 0}
            assert torch.equal(fast.generate(**prompt, **kw), plain.generate(**prompt, **kw))
    fast.train()
    torch.manual_seed(0)
    a = fast(**inputs).logits
    torch.manual_seed(0)
    b = fast(**inputs).logits
    assert torch.equal(a, b)  # reproducible by seed
    with torch.no_grad():
        assert not torch.equal(a, fast.eval()(**inputs).logits)  # and dropout is on in training
    a.float().square().mean().backward()
    assert all(p.grad is not None for p in fast.parameters())


def test_compiled_models_keep_torch_dropout(tmp_path: Path):
    compiled = _build(tmp_path, "tiny_bert", "model.compile=true", "model.compile_backend=aot_eager")
    assert set(_dropouts(compiled)) == {"torch.nn.modules.dropout.Dropout"}  # inductor draws its own masks
    assert compiled.config._attn_implementation == "sdpa"


def test_swap_counts_every_dropout_of_a_peft_wrapped_model():
    from peft import LoraConfig, get_peft_model
    from transformers import BertConfig, BertForSequenceClassification

    model = BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2,
                                                     num_attention_heads=2, intermediate_size=32))
    model = get_peft_model(model, LoraConfig(r=2, target_modules=["query", "value"], lora_dropout=0.1))
    before = len([m for m in model.modules() if type(m) is torch.nn.Dropout])
    assert use_fast_cpu_dropout(model) == before > 4  # LoRA's own dropouts included
    assert not [m for m in model.modules() if type(m) is torch.nn.Dropout]
    assert model.base_model.model.config._attn_implementation == ATTENTION


def test_cpu_dropout_choice_is_checked_at_validation(tmp_path: Path):
    with pytest.raises(ConfigError) as err:
        compose_train(["model=tiny_bert", "task=sequence_classification", "data=sst2", "model.cpu_dropout=fastest"],
                      tmp_path, check=True)
    assert "model.cpu_dropout='fastest' is not a valid choice" in str(err.value) and "fast, torch" in str(err.value)


def test_a_run_resumed_in_its_own_dir_keeps_the_dropout_it_started_with(tmp_path: Path):
    from omegaconf import OmegaConf

    from lmlab.train import settle_cpu_dropout

    cfg = OmegaConf.create({"model": {"cpu_dropout": "fast"}})
    assert settle_cpu_dropout(cfg, None) == "fast"  # a new run: the config's choice
    assert settle_cpu_dropout(cfg, {"precision": {"used": "32-true"}, "cpu_dropout": "fast"}) == "fast"
    # run.json of a run that began before model.cpu_dropout existed: it drew torch's masks
    assert settle_cpu_dropout(cfg, {"precision": {"used": "32-true"}}) == "torch" == cfg.model.cpu_dropout
