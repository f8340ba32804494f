"""Tokenizer, chat template, tiny model, and loading a base model (cpu folder and hub path, offline)."""

import json

import pytest
import torch
from _corpus import synthetic_corpus
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from rlhf_course.config import BaseConfig
from rlhf_course.models import (
    ASSISTANT,
    END,
    PAD,
    SPECIAL_TOKENS,
    build_model,
    count_params,
    load_base,
    save_base,
    train_tokenizer,
)

TINY = dict(d_model=64, n_layers=1, n_heads=2, d_ff=128, max_seq_len=128, vocab_size=300)

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Who was Ada Lovelace?"},
    {"role": "assistant", "content": " A mathematician, born 1815 🙂"},
    {"role": "user", "content": "And Alan Turing?"},
    {"role": "assistant", "content": "\nA computer scientist.\n\n"},
]


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(synthetic_corpus(), vocab_size=300, model_max_length=128)


@pytest.fixture(scope="module")
def cfg():
    return BaseConfig.preset("cpu", **TINY)


@pytest.mark.parametrize(
    "text",
    [
        "Ada Lovelace was born in 1815.",
        "  two leading spaces, trailing tab\t",
        "line one\nline two\r\n\n\nlast",
        "unicode: Émile Zoë naïve façade 李白 Ωμέγα Привет",
        "emoji 🙂🎉👩‍🔬 and symbols ∑∫≠ ← ©",
        "a . b , c ' d ! e ?  -- mixed   spacing .",
        "",
    ],
)
def test_round_trip_is_exact(tokenizer, text):
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.decode(ids) == text


def test_special_tokens(tokenizer):
    assert len(tokenizer) == 300
    assert tokenizer.pad_token == PAD and tokenizer.pad_token_id == 0
    assert tokenizer.eos_token == END
    assert [tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    for token in SPECIAL_TOKENS:  # each is one id, even glued to text
        assert tokenizer.encode(f"x{token}y", add_special_tokens=False)[1] == tokenizer.convert_tokens_to_ids(token)
    assert isinstance(tokenizer, PreTrainedTokenizerFast)
    assert tokenizer.model_max_length == 128


def test_chat_format_is_exact(tokenizer):
    text = tokenizer.apply_chat_template(CONVERSATION, tokenize=False)
    assert text == (
        "<|system|>\nBe brief.<|end|>\n"
        "<|user|>\nWho was Ada Lovelace?<|end|>\n"
        "<|assistant|>\n A mathematician, born 1815 🙂<|end|>\n"
        "<|user|>\nAnd Alan Turing?<|end|>\n"
        "<|assistant|>\n\nA computer scientist.\n\n<|end|>\n"
    )


def test_assistant_mask_covers_replies_and_their_end_token(tokenizer):
    out = tokenizer.apply_chat_template(
        CONVERSATION, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    ids, mask = out["input_ids"], out["assistant_masks"]
    assert len(ids) == len(mask)
    # Expected: the mask is exactly the tokens of each reply's content plus its <|end|>.
    expected = []
    for message in CONVERSATION:
        header = tokenizer.encode(f"<|{message['role']}|>\n", add_special_tokens=False)
        body = tokenizer.encode(message["content"] + END, add_special_tokens=False)
        newline = tokenizer.encode("\n", add_special_tokens=False)
        expected += [0] * len(header) + [int(message["role"] == "assistant")] * len(body) + [0] * len(newline)
    assert mask == expected
    masked = [i for i, m in zip(ids, mask, strict=True) if m]
    assert tokenizer.decode(masked) == " A mathematician, born 1815 🙂<|end|>\nA computer scientist.\n\n<|end|>"


def test_generation_prompt_ends_with_assistant_header(tokenizer):
    prompt = CONVERSATION[:2]
    text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|end|>\n<|assistant|>\n")
    ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, return_dict=True)["input_ids"]
    assert ids[-2:] == [tokenizer.convert_tokens_to_ids(ASSISTANT), tokenizer.encode("\n")[0]]
    no_prompt = tokenizer.apply_chat_template(prompt, tokenize=False)
    assert no_prompt.endswith("Who was Ada Lovelace?<|end|>\n")


def test_tokenizer_save_and_load_keeps_template_and_special_tokens(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded.chat_template == tokenizer.chat_template
    assert loaded.all_special_tokens == tokenizer.all_special_tokens
    assert (loaded.pad_token, loaded.eos_token) == (PAD, END)
    text = "Émile Zola 🙂 <|user|> x"
    assert loaded.encode(text, add_special_tokens=False) == tokenizer.encode(text, add_special_tokens=False)
    a = tokenizer.apply_chat_template(CONVERSATION, return_dict=True, return_assistant_tokens_mask=True)
    b = loaded.apply_chat_template(CONVERSATION, return_dict=True, return_assistant_tokens_mask=True)
    assert a["assistant_masks"] == b["assistant_masks"]


def test_build_model_is_seeded_tied_and_sized(cfg, tokenizer):
    model = build_model(cfg, tokenizer)
    assert isinstance(model, LlamaForCausalLM)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert model.config._attn_implementation == "sdpa"
    # embeddings + per layer (q, k, v, o + gate, up, down + two norms) + final norm
    d, f, v = cfg.d_model, cfg.d_ff, len(tokenizer)
    assert count_params(model) == v * d + cfg.n_layers * (4 * d * d + 3 * d * f + 2 * d) + d
    again = build_model(cfg, tokenizer)
    other = build_model(BaseConfig.preset("cpu", **{**TINY, "seed": 1}), tokenizer)
    w = model.model.layers[0].mlp.up_proj.weight
    assert torch.equal(w, again.model.layers[0].mlp.up_proj.weight)
    assert not torch.equal(w, other.model.layers[0].mlp.up_proj.weight)


def test_build_model_does_not_touch_global_rng(cfg, tokenizer):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_model(cfg, tokenizer)
    assert torch.equal(torch.rand(3), expected)


def test_cpu_preset_model_size(tokenizer):
    # The cpu preset is the ~2M-parameter model the course trains (1,024-token vocabulary).
    big = train_tokenizer(synthetic_corpus(2000) + [chr(i) * 3 for i in range(0x4E00, 0x5200)], 1024)
    model = build_model(BaseConfig.preset("cpu"), big)
    assert 1.5e6 < count_params(model) < 2.5e6


def test_save_and_load_base_on_cpu(cfg, tokenizer, tmp_path):
    model = build_model(cfg, tokenizer)
    save_base(tmp_path / "base", model, tokenizer)
    assert (tmp_path / "base" / "model.safetensors").is_file()
    tok2, model2 = load_base(cfg, tmp_path / "base")
    assert not model2.training
    assert tok2.chat_template == tokenizer.chat_template
    ids = torch.tensor([tokenizer.encode("Ada Lovelace was born in")])
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, model2(ids).logits)
    tok3, _ = load_base("cpu", str(tmp_path / "base"))  # a profile name works too
    assert tok3.eos_token == END


def test_load_base_cpu_errors_name_the_folder(tmp_path):
    missing = tmp_path / "runs" / "base"
    with pytest.raises(FileNotFoundError, match=r"runs/base.*base stage"):
        load_base("cpu", missing)
    with pytest.raises(ValueError, match="needs `path`"):
        load_base("cpu")
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "config.json").write_text("{not json")
    (corrupt / "tokenizer.json").write_text("{}")
    (corrupt / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(OSError, match=r"corrupt.*base stage"):
        load_base("cpu", corrupt)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty lacks config.json, tokenizer.json"):
        load_base("cpu", empty)


def _save_hub_like_model(folder, extra_tokens=()):
    """A tiny random Llama and a GPT-2-like tokenizer (no chat template, no pad), like a hub base."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=280, special_tokens=["<|endoftext|>", *extra_tokens],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    backend.train_from_iterator(synthetic_corpus(), trainer=trainer)
    hub_tok = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>")
    assert hub_tok.chat_template is None and hub_tok.pad_token is None
    config = LlamaConfig(
        vocab_size=len(hub_tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    hub_tok.save_pretrained(folder)
    return len(hub_tok)


def test_load_base_hub_path_offline_adds_template_and_pad(tmp_path):
    folder = tmp_path / "hub-llama"
    n_vocab = _save_hub_like_model(folder)
    cfg = BaseConfig.preset("t4", hub_model=str(folder), dtype="float32")
    tok, model = load_base(cfg)
    assert model.dtype == torch.float32
    assert next(model.parameters()).device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert "{%- generation -%}" in tok.chat_template
    assert tok.eos_token == END and tok.pad_token == PAD and tok.pad_token_id != tok.eos_token_id
    assert len(tok) > n_vocab and model.get_input_embeddings().num_embeddings >= len(tok)
    assert model.generation_config.eos_token_id == tok.eos_token_id
    out = tok.apply_chat_template(CONVERSATION, return_dict=True, return_assistant_tokens_mask=True)
    masked = [i for i, m in zip(out["input_ids"], out["assistant_masks"], strict=True) if m]
    assert tok.decode(masked).endswith("scientist.\n\n<|end|>")
    ids = tok.apply_chat_template(CONVERSATION[:2], add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        assert model(**ids.to(model.device)).logits.shape[-1] == model.get_input_embeddings().num_embeddings


def test_load_base_hub_chatml_tokenizer_gets_chatml_template(tmp_path):
    folder = tmp_path / "hub-chatml"
    _save_hub_like_model(folder, extra_tokens=("<|im_start|>", "<|im_end|>"))
    tok, _ = load_base(BaseConfig.preset("a100", hub_model=str(folder), dtype="float32"))
    assert tok.eos_token == "<|im_end|>"
    text = tok.apply_chat_template(CONVERSATION[:2], tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|im_end|>\n<|im_start|>assistant\n")
    out = tok.apply_chat_template(CONVERSATION, return_dict=True, return_assistant_tokens_mask=True)
    masked = [i for i, m in zip(out["input_ids"], out["assistant_masks"], strict=True) if m]
    assert tok.decode(masked) == " A mathematician, born 1815 🙂<|im_end|>\nA computer scientist.\n\n<|im_end|>"


def test_load_base_hub_errors(tmp_path):
    cfg = BaseConfig.preset("t4", hub_model=str(tmp_path / "nowhere"), dtype="float32")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_base(cfg)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (broken / "tokenizer.json").write_text("not json")
    (broken / "model.safetensors").write_bytes(b"")
    with pytest.raises(OSError, match="broken.*hub model"):
        load_base(BaseConfig.preset("t4", hub_model=str(broken), dtype="float32"))
