"""The reward model's pure parts against hand-computed numbers, and the stage on a tiny run."""

import math

import pytest
import torch

from rlhf_course.rankings import pairwise_accuracy
from rlhf_course.reward import gold_accuracy, length_slope, ranking_loss
from rlhf_course.training import warmup_cosine


def _nls(x):  # -log sigmoid(x), by hand
    return math.log(1 + math.exp(-x))


def test_ranking_loss_k2_is_the_pairwise_logistic_loss():
    loss = ranking_loss(torch.tensor([[1.0, 0.0]]), torch.tensor([2]))
    assert loss.item() == pytest.approx(0.3132617, abs=1e-6)
    assert loss.item() == pytest.approx(_nls(1.0), abs=1e-6)
    # The wrong order costs more: -log sigmoid(-1) = log(1 + e)
    assert ranking_loss(torch.tensor([[0.0, 1.0]]), torch.tensor([2])).item() == pytest.approx(1.3132617, abs=1e-6)


def test_ranking_loss_k3_averages_its_three_pairs():
    # rank order best first: r = (2, 1, 0); pairs (0,1): 1, (0,2): 2, (1,2): 1
    loss = ranking_loss(torch.tensor([[2.0, 1.0, 0.0]]), torch.tensor([3]))
    assert loss.item() == pytest.approx((2 * 0.3132617 + 0.1269280) / 3, abs=1e-6)
    assert loss.item() == pytest.approx(0.2511505, abs=1e-6)


def test_ranking_loss_ignores_padding_and_weighs_rankings_equally():
    rewards = torch.tensor([[1.0, 0.0, 99.0], [2.0, 1.0, 0.0]])  # 99 is padding of a K=2 ranking
    loss = ranking_loss(rewards, torch.tensor([2, 3]))
    assert loss.item() == pytest.approx((0.3132617 + 0.2511505) / 2, abs=1e-6)


def test_ranking_loss_gradient_pushes_the_better_reply_up():
    r = torch.zeros(1, 2, requires_grad=True)
    ranking_loss(r, torch.tensor([2])).backward()
    # d/dr0 of -log sigmoid(r0 - r1) at 0 is -sigmoid(0) = -0.5, and +0.5 for r1
    assert r.grad[0].tolist() == pytest.approx([-0.5, 0.5])


def test_ranking_loss_rejects_bad_shapes_and_k():
    with pytest.raises(ValueError, match="2..3"):
        ranking_loss(torch.zeros(1, 3), torch.tensor([1]))
    with pytest.raises(ValueError, match="2..3"):
        ranking_loss(torch.zeros(1, 3), torch.tensor([4]))
    with pytest.raises(ValueError, match=r"\(G, K_max\)"):
        ranking_loss(torch.zeros(3), torch.tensor([3]))


def test_pairwise_accuracy_counts_every_pair_and_ties_half():
    # ranking best first 0 > 1 > 2; scores order 0 > 2 > 1: pairs (0,1) ok, (0,2) ok, (1,2) wrong
    assert pairwise_accuracy([[3.0, 1.0, 2.0]], [[0, 1, 2]]) == pytest.approx(2 / 3)
    assert pairwise_accuracy([[1.0, 1.0]], [[1, 0]]) == pytest.approx(0.5)


def test_gold_accuracy_uses_only_pairs_with_a_clear_gold_gap():
    scores = [[0.1, 0.9, 0.5]]
    golds = [[1.0, 0.0, 0.95]]
    # margin 0.2: pairs (0,1) gap 1.0 -> wrong, (1,2) gap 0.95 -> wrong; (0,2) gap 0.05 skipped
    assert gold_accuracy(scores, golds, 0.2) == (0.0, 2)
    # every pair gold tells apart: (0,2) is now counted and also wrong
    assert gold_accuracy(scores, golds, 1e-9) == (0.0, 3)
    assert gold_accuracy([[2.0, 1.0]], [[0.9, 0.1]], 0.2) == (1.0, 1)
    with pytest.raises(ValueError, match="margin"):
        gold_accuracy(scores, golds, 0.0)


def test_length_slope_is_measured_at_equal_gold():
    # Within each gold bin the score rises 0.5 per token; between bins gold alone moves it.
    lengths = [10, 20, 10, 20]
    golds = [0.0, 0.0, 1.0, 1.0]
    scores = [0.0, 5.0, 10.0, 15.0]
    assert length_slope(scores, lengths, golds) == pytest.approx(0.5)
    # A naive slope over everything would mix gold in; the binned one does not see it.
    assert length_slope([0.0, 0.0, 10.0, 10.0], lengths, golds) == pytest.approx(0.0)


def test_lr_warms_up_then_decays_to_zero():
    # The reward model's schedule: warm-up over warmup_ratio of the steps, cosine to 0.
    def lr_at(step, total=100):
        return warmup_cosine(step, total, 1.0, max(1, round(0.1 * total)))

    assert lr_at(0) == pytest.approx(0.1)
    assert lr_at(9) == pytest.approx(1.0)
    assert lr_at(10) == pytest.approx(1.0)
    assert lr_at(100) == pytest.approx(0.0, abs=1e-9)


def test_family_table_counts_clear_pairs_per_family_for_the_rm_the_annotators_and_their_utility():
    from rlhf_course.reward import family_table
    from rlhf_course.world import Annotators

    def row(group, index, family, score, gold, reply, place):
        return {"group": group, "index": index, "family": family, "score": score, "gold": gold,
                "reply": reply, "annotator_place": place}

    rows = [
        # fact: gold prefers reply 0 (1.0 vs 0.0); the RM gets it wrong, the annotators right.
        row(0, 0, "fact", 0.1, 1.0, "one", 0), row(0, 1, "fact", 0.9, 0.0, "a b c d e f g h i j k l", 1),
        # harmful: a clear pair (0.5 gap) the RM gets right and a near tie (0.1) that is not judged;
        # the annotators put the longer reply first, and so would a strong length taste.
        row(1, 0, "harmful", 0.8, 0.9, "x", 1), row(1, 1, "harmful", 0.2, 0.4, "x " * 80, 0),
        row(1, 2, "harmful", 0.5, 0.8, "y", 2),
    ]
    table = family_table(rows, 0.2, Annotators(sharpness=8.0, length_bias=0.08))
    assert table["fact"] == {"rm": 0.0, "annotators": 1.0, "utility": 1.0, "pairs": 1}
    # harmful's clear pairs: (0 vs 1) and (2 vs 1); utility of the 80-word reply 8*0.4+6.4 = 9.6
    # beats 8*0.9+0.08 = 7.28 and 8*0.8+0.08 = 6.48: its length taste gets both wrong.
    assert table["harmful"] == {"rm": 1.0, "annotators": 0.0, "utility": 0.0, "pairs": 2}
    assert set(table) == {"fact", "harmful"} and "utility" not in family_table(rows, 0.2)["fact"]
