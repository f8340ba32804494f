"""Pretraining: packing, schedule, optimizer groups, determinism, learning; and the live plot."""

import math

import pytest
import torch
from _corpus import synthetic_corpus

import rlhf_course.pretrain as pretrain_module
from rlhf_course.config import BaseConfig
from rlhf_course.models import build_model, train_tokenizer
from rlhf_course.plots import LiveLossPlot
from rlhf_course.pretrain import PretrainResult, make_optimizer, pack_documents, pretrain
from rlhf_course.training import bf16_is_fast, warmup_cosine

TINY = dict(
    d_model=64, n_layers=1, n_heads=2, d_ff=128, max_seq_len=64, vocab_size=300,
    block_size=32, batch_size=8, steps=6, lr=1e-2, warmup_steps=2,
)


@pytest.fixture(scope="module")
def corpus():
    return synthetic_corpus(400, names=["Ada Lovelace", "Alan Turing", "Émile Zola", "Grace Hopper", "Nikola Tesla"])


@pytest.fixture(scope="module")
def tokenizer(corpus):
    return train_tokenizer(corpus, vocab_size=300, model_max_length=64)


def test_pack_documents_joins_with_end_and_overlaps_by_one(tokenizer):
    docs = ["Ada was born in 1815.", "Alan was born in 1912.", "Grace was born in 1906."] * 10
    blocks = pack_documents(tokenizer, docs, block_size=16)
    end = tokenizer.eos_token_id
    stream = [end]
    for doc in docs:
        stream += tokenizer.encode(doc, add_special_tokens=False) + [end]
    n = (len(stream) - 1) // 16
    assert blocks.shape == (n, 17) and blocks.dtype == torch.long
    assert blocks[:, -1][:-1].tolist() == blocks[1:, 0].tolist()  # targets continue the next inputs
    assert torch.cat([blocks[:, :-1].flatten(), blocks[-1:, -1]]).tolist() == stream[: n * 16 + 1]
    with pytest.raises(ValueError, match="block_size"):
        pack_documents(tokenizer, ["hi"], block_size=64)


def test_lr_warms_up_then_decays_to_a_tenth():
    # Pretraining's schedule: warm-up over warmup_steps, cosine to 10% of the peak.
    cfg = BaseConfig.preset("cpu", steps=100, warmup_steps=10, lr=1e-3)

    def lr_at(step):
        return warmup_cosine(step, cfg.steps, cfg.lr, cfg.warmup_steps, floor=0.1)

    lrs = [lr_at(s) for s in range(cfg.steps)]
    assert lrs[0] == pytest.approx(1e-4)
    assert lrs[9] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:], strict=False))
    assert lr_at(cfg.steps) == pytest.approx(1e-4)
    assert lr_at(cfg.steps + 50) == pytest.approx(1e-4)  # it stays at the floor
    assert lr_at(55) == pytest.approx(1e-3 * (0.1 + 0.45 * (1 + math.cos(math.pi * 0.5))))


def test_lr_without_warm_up_starts_at_the_peak():
    assert warmup_cosine(0, 100, 1e-3, 0) == pytest.approx(1e-3)
    assert warmup_cosine(50, 100, 1e-3, 0) == pytest.approx(5e-4)


def test_weight_decay_on_matrices_only(tokenizer):
    cfg = BaseConfig.preset("cpu", **TINY)
    model = build_model(cfg, tokenizer)
    decay, no_decay = make_optimizer(model, cfg).param_groups
    assert decay["weight_decay"] == cfg.weight_decay and no_decay["weight_decay"] == 0.0
    assert all(p.dim() == 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def _run(tokenizer, corpus, **overrides):
    cfg = BaseConfig.preset("cpu", **{**TINY, **overrides})
    model = build_model(cfg, tokenizer)
    return model, pretrain(model, tokenizer, corpus, cfg, progress=False)


def test_pretrain_is_deterministic(tokenizer, corpus):
    model_a, a = _run(tokenizer, corpus)
    model_b, b = _run(tokenizer, corpus)
    assert a.losses == b.losses
    for pa, pb in zip(model_a.parameters(), model_b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    _, c = _run(tokenizer, corpus, seed=1)
    assert c.losses != a.losses


def test_pretrain_learns_and_reports(tokenizer, corpus):
    calls = []
    cfg = BaseConfig.preset("cpu", **{**TINY, "steps": 45})
    model = build_model(cfg, tokenizer)
    result = pretrain(model, tokenizer, corpus, cfg, progress=True, live_plot=lambda s, v: calls.append((s, v)))
    assert isinstance(result, PretrainResult)
    assert len(result.losses) == 45
    assert result.losses[0] == pytest.approx(math.log(len(tokenizer)), rel=0.1)  # uniform at init
    assert sum(result.losses[-5:]) / 5 < result.losses[0] - 2.0
    assert result.tokens_seen == 45 * cfg.batch_size * cfg.block_size
    assert result.tokens_per_second == pytest.approx(result.tokens_seen / result.seconds)
    every = pretrain_module.PLOT_EVERY
    assert [s for s, _ in calls] == [*range(every - 1, 45, every), 44]
    assert calls[0][1] == pytest.approx(sum(result.losses[:every]) / every)
    # Ready to sample: eval mode, cache back on, the attention it was built with.
    assert not model.training and model.config.use_cache
    assert model.config._attn_implementation == "sdpa"


def test_pretrain_in_float32(tokenizer, corpus, monkeypatch):
    monkeypatch.setattr(pretrain_module, "bf16_is_fast", lambda device: False)
    _, result = _run(tokenizer, corpus, steps=3)
    assert result.precision == "float32" and len(result.losses) == 3


def test_bf16_detection_is_a_bool():
    assert bf16_is_fast("cpu") in (True, False)
    assert bf16_is_fast("meta") is False


def test_live_plot_headless_records_and_saves(tmp_path):
    plot = LiveLossPlot(title="pretraining loss")
    for step in range(5):
        plot(step, 5.0 / (step + 1))
    plot(4, 1.5, name="eval")
    assert plot.series["loss"] == ([0.0, 1.0, 2.0, 3.0, 4.0], [5.0, 2.5, 5 / 3, 1.25, 1.0])
    path = plot.save(tmp_path / "plots" / "loss.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_live_plot_updates_one_display_in_a_notebook(monkeypatch):
    import IPython.display

    shown = []

    class Handle:
        def update(self, obj):
            shown.append(("update", obj))

    def fake_display(obj, display_id=False):
        shown.append(("display", obj))
        return Handle()

    monkeypatch.setattr(IPython.display, "display", fake_display)
    plot = LiveLossPlot()
    plot._show = True  # as inside a kernel
    plot(0, 3.0)
    plot(1, 2.0)
    assert [kind for kind, _ in shown] == ["display", "update"]
    assert shown[-1][1].data[:4] == b"\x89PNG"
