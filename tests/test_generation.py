"""Sampling replies: stop token, length limit, order, determinism, multi-turn, and the KV cache."""

import logging
import random
import warnings
from types import SimpleNamespace

import pytest
import torch
from _corpus import synthetic_corpus
from transformers import LlamaConfig, LlamaForCausalLM

from rlhf_course.config import BaseConfig
from rlhf_course.generation import generate_replies, sample_tokens
from rlhf_course.models import END, build_model, train_tokenizer
from rlhf_course.pretrain import pretrain

NAMES = ["Ada Lovelace", "Alan Turing", "Grace Hopper", "Nikola Tesla", "Marie Curie"]


def ask(name: str) -> list[dict]:
    return [{"role": "user", "content": f"When was {name} born?"}]


@pytest.fixture(scope="module")
def trained():
    """A 2-layer model pretrained for ~2 s: it answers in the corpus' format and ends its turn."""
    corpus = synthetic_corpus(600, chat_every=2, names=NAMES)
    tokenizer = train_tokenizer(corpus, vocab_size=320, model_max_length=128)
    cfg = BaseConfig.preset(
        "cpu", d_model=64, n_layers=2, n_heads=2, d_ff=192, max_seq_len=128,
        block_size=64, batch_size=16, steps=100, lr=1e-2, warmup_steps=10,
    )
    model = build_model(cfg, tokenizer)
    pretrain(model, tokenizer, corpus, cfg, progress=False)
    return tokenizer, model


def test_replies_stop_at_end_token(trained):
    tokenizer, model = trained
    replies = generate_replies(model, tokenizer, [ask(n) for n in NAMES], 40, 0.7, 8, seed=0)
    assert len(replies) == len(NAMES)
    for reply in replies:
        assert "was born in" in reply and reply.endswith(".")
        assert END not in reply and "<|" not in reply


def test_deterministic_for_a_seed(trained):
    tokenizer, model = trained
    conversations = [ask(n) for n in NAMES * 4]
    a = generate_replies(model, tokenizer, conversations, 24, 1.0, 8, seed=3)
    b = generate_replies(model, tokenizer, conversations, 24, 1.0, 8, seed=3)
    c = generate_replies(model, tokenizer, conversations, 24, 1.0, 8, seed=4)
    assert a == b and a != c


def test_leaves_global_rng_and_training_mode_alone(trained):
    tokenizer, model = trained
    model.train()
    torch.manual_seed(0)
    expected = torch.rand(2)
    torch.manual_seed(0)
    generate_replies(model, tokenizer, [ask("Ada Lovelace")], 8, 1.0, 4, seed=0)
    assert torch.equal(torch.rand(2), expected)
    assert model.training
    model.eval()


def test_max_new_tokens_respected(trained):
    tokenizer, model = trained
    replies = generate_replies(model, tokenizer, [ask(n) for n in NAMES], 3, 0.7, 8, seed=0)
    for reply in replies:
        assert 1 <= len(tokenizer.encode(reply, add_special_tokens=False)) <= 3


def test_multi_turn_conversations(trained):
    tokenizer, model = trained
    conversation = [
        *ask("Ada Lovelace"),
        {"role": "assistant", "content": "Ada Lovelace was born in 1815."},
        *ask("Alan Turing"),
    ]
    (reply,) = generate_replies(model, tokenizer, [conversation], 40, 0.0, 4, seed=0)
    assert "was born in" in reply


def test_greedy_matches_hf_generate(trained):
    """The hand-written KV-cache loop reproduces `model.generate` token for token."""
    tokenizer, model = trained
    for name in NAMES[:3]:
        enc = tokenizer.apply_chat_template(ask(name), add_generation_prompt=True, return_tensors="pt", return_dict=True)
        ours = sample_tokens(model, enc["input_ids"], enc["attention_mask"], 20, 0.0, tokenizer.eos_token_id, tokenizer.pad_token_id)
        ref = model.generate(**enc, max_new_tokens=20, do_sample=False)[:, enc["input_ids"].shape[1] :]
        assert ours.tolist() == ref.tolist()
    # Left padding must not change a greedy reply (position ids count real tokens only).
    convs = [ask("Ada Lovelace"), [{"role": "user", "content": "Tell me, please, when was Alan Turing born?"}]]
    together = generate_replies(model, tokenizer, convs, 20, 0.0, 2, seed=0)
    alone = [generate_replies(model, tokenizer, [c], 20, 0.0, 1, seed=0)[0] for c in convs]
    assert together == alone


class ScriptedModel(torch.nn.Module):
    """Replies to a prompt of L real tokens with (L mod 7) copies of token 100, then END.

    It lets the tests know each conversation's exact reply, so order and stopping are checked
    without relying on what a trained model happens to say. It uses the cache it is handed as a
    model does: an empty cache means the prompt (prefill), and each call appends its tokens.
    """

    def __init__(self, vocab: int, end_id: int):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.config = LlamaConfig(vocab_size=vocab, num_hidden_layers=1)
        self.vocab, self.end_id, self.training = vocab, end_id, False

    def forward(self, input_ids, attention_mask, cache, **kwargs):
        if cache.get_seq_length() == 0:  # prefill: remember each row's reply length
            self.left = attention_mask.sum(-1) % 7
        seen = torch.zeros(input_ids.shape[0], 1, input_ids.shape[1], 1)
        cache.update(seen, seen, layer_idx=0)
        logits = torch.full((input_ids.shape[0], 1, self.vocab), -1e9)
        logits[:, 0, 100] = torch.where(self.left > 0, 0.0, -1e9)
        logits[:, 0, self.end_id] = torch.where(self.left > 0, -1e9, 0.0)
        self.left = self.left - 1
        return SimpleNamespace(logits=logits)


def test_order_restored_and_rows_stop_independently():
    tokenizer = train_tokenizer(synthetic_corpus(200), vocab_size=300)
    model = ScriptedModel(len(tokenizer), tokenizer.eos_token_id)
    token = tokenizer.decode([100])
    # Prompts of many lengths, shuffled, so that sorting by length really reorders them.
    contents = [" ".join(["word"] * k) for k in random.Random(0).sample(range(1, 30), 20)]
    conversations = [[{"role": "user", "content": c}] for c in contents]
    replies = generate_replies(model, tokenizer, conversations, 5, 0.7, 4, seed=0)
    for conversation, reply in zip(conversations, replies, strict=True):
        prompt = tokenizer.apply_chat_template(conversation, add_generation_prompt=True, return_dict=True)
        expected = len(prompt["input_ids"]) % 7
        assert reply == token * min(expected, 5)  # max_new_tokens=5 cuts the longer ones


def test_sample_tokens_pads_after_end_and_stops_early():
    model = ScriptedModel(200, end_id=4)
    ids = torch.tensor([[0, 0, 9, 9], [9, 9, 9, 9]])  # real lengths 2 and 4
    mask = (ids != 0).long()
    out = sample_tokens(model, ids, mask, max_new_tokens=10, temperature=1.0, eos_token_id=4, pad_token_id=0)
    assert out.tolist() == [[100, 100, 4, 0, 0], [100, 100, 100, 100, 4]]


def test_empty_input():
    assert generate_replies(None, None, [], 8, 0.7, 4, seed=0) == []


def test_right_pad_puts_tokens_first_and_keeps_a_column_for_empty_rows():
    from rlhf_course.generation import right_pad

    ids, mask = right_pad([[5, 6, 7], [8], []], pad_token_id=0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0], [0, 0, 0]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0], [0, 0, 0]]
    ids, mask = right_pad([[], []], pad_token_id=9)
    assert ids.tolist() == [[9], [9]] and mask.tolist() == [[0], [0]]


# --------------------------------------------------------------------------- the sampled ids stay put

# Left-padded prompts of three lengths for the tiny model below (pad 0, end token 1).
PROMPTS = [[5, 9, 14, 22, 3, 17, 30], [8, 2, 40], [11, 6, 25, 33, 19]]


def tiny_llama() -> LlamaForCausalLM:
    """A 2-layer Llama (grouped-query attention, tied embeddings, SDPA) with weights drawn from
    a seeded generator at a scale that makes its next-token distributions peaked, so that a
    change in the sampling loop's numerics shows up as different ids."""
    config = LlamaConfig(
        vocab_size=48, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        tie_word_embeddings=True, pad_token_id=0, eos_token_id=1, bos_token_id=None,
        attn_implementation="sdpa",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
    g = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:  # norms keep their ones
                p.copy_(torch.randn(p.shape, generator=g) * 0.6)
    return model.eval()


def padded_prompts() -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, PROMPTS))
    ids = torch.zeros(len(PROMPTS), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(PROMPTS):
        ids[i, width - len(row) :], mask[i, width - len(row) :] = torch.tensor(row), 1
    return ids, mask


# What `sample_tokens` returned for these prompts with transformers 5.25 before it moved from
# `past_key_values=` to `cache=` (the step logits were also compared, and were bit-identical).
# The reported figures depend on these ids; if they change, so does every sample in the course.
SAVED_IDS = {
    (0.0, None, 12): [[37, 11, 37, 18, 11, 39, 11, 46, 4, 41, 11, 39],
                      [36, 13, 28, 15, 10, 36, 13, 18, 5, 1, 0, 0],
                      [29, 40, 47, 29, 29, 29, 11, 43, 8, 13, 36, 36]],
    # Every row ends by step 12 of 16, so the loop stops early.
    (1.0, 0, 16): [[37, 11, 31, 17, 2, 41, 11, 46, 11, 1, 0, 0],
                   [36, 13, 36, 19, 2, 11, 12, 16, 1, 0, 0, 0],
                   [8, 47, 25, 10, 8, 19, 17, 47, 47, 32, 26, 1]],
    (0.7, 5, 12): [[40, 9, 30, 47, 2, 28, 8, 6, 22, 40, 25, 25],
                   [23, 46, 47, 40, 33, 47, 37, 0, 1, 0, 0, 0],
                   [29, 39, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]],
}


@pytest.mark.parametrize("temperature,seed,max_new_tokens", list(SAVED_IDS))
def test_sample_tokens_reproduces_the_saved_ids(temperature, seed, max_new_tokens):
    ids, mask = padded_prompts()
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    out = sample_tokens(tiny_llama(), ids, mask, max_new_tokens, temperature, 1, 0, generator)
    assert out.tolist() == SAVED_IDS[temperature, seed, max_new_tokens]


class RecordLogs(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record):
        if record.levelno >= logging.WARNING:
            self.messages.append(record.getMessage())


def run_quietly(fn) -> tuple[list[str], list[str]]:
    """Run `fn()`; returns `(warnings raised, warnings transformers logged)`.

    transformers logs some deprecations through its own logger, once per process
    (`warning_once`), so that cache is cleared first: an earlier test cannot hide one.
    """
    logging.Logger.warning_once.cache_clear()
    handler, logger = RecordLogs(), logging.getLogger("transformers")
    logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fn()
    finally:
        logger.removeHandler(handler)
    return [f"{w.category.__name__}: {w.message}" for w in caught], handler.messages


def test_sampling_raises_no_warning():
    model = tiny_llama()
    ids, mask = padded_prompts()
    caught, logged = run_quietly(lambda: [
        sample_tokens(model, ids, mask, 6, t, 1, 0, torch.Generator().manual_seed(0)) for t in (0.0, 1.0)
    ])
    assert caught == [] and logged == []
