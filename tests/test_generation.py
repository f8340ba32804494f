"""Sampling replies: stop token, length limit, order, determinism, multi-turn, and the KV cache."""

import random
from types import SimpleNamespace

import pytest
import torch
from _corpus import synthetic_corpus

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
    without relying on what a trained model happens to say.
    """

    def __init__(self, vocab: int, end_id: int):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.vocab, self.end_id, self.training = vocab, end_id, False

    def forward(self, input_ids, attention_mask, past_key_values=None, **kwargs):
        if past_key_values is None:  # prefill: remember each row's reply length
            past_key_values = {"left": attention_mask.sum(-1) % 7}
        left = past_key_values["left"]
        logits = torch.full((input_ids.shape[0], 1, self.vocab), -1e9)
        logits[:, 0, 100] = torch.where(left > 0, 0.0, -1e9)
        logits[:, 0, self.end_id] = torch.where(left > 0, -1e9, 0.0)
        past_key_values["left"] = left - 1
        return SimpleNamespace(logits=logits, past_key_values=past_key_values)


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
