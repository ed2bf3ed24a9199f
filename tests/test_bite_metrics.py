"""retrieval_metrics on hand-made score matrices whose ranks are known: every quality number the project reports
(R@1, R@5, MRR, mean rank) passes through it."""

import pytest
import torch

from textjepa.eval.metrics import retrieval_metrics

# Row i is prediction i's cosine with every target (the targets are the unit vectors, so the prediction's
# entries are its scores up to the row's length, which does not change the order within a row). The true
# target is the diagonal; its rank is 1 + the number of targets scored strictly higher (a tie counts in the
# prediction's favour). The matrix is not symmetric, so ranking along the wrong axis gives other ranks.
SCORES = [
    [0.9, 0.1, 0.2, 0.0, 0.3, 0.1],  # rank 1
    [0.2, 0.5, 0.1, 0.8, 0.0, 0.1],  # rank 2: target 3 scores higher
    [0.4, 0.1, 0.4, 0.2, 0.0, 0.3],  # rank 1: target 0 ties with the true one
    [0.7, 0.6, 0.5, 0.1, 0.4, 0.3],  # rank 6: every other target scores higher
    [0.1, 0.6, 0.0, 0.2, 0.3, 0.5],  # rank 3: targets 1 and 5 score higher
    [0.5, 0.9, 0.6, 0.2, 0.7, 0.2],  # rank 5: four higher, target 3 ties
]
RANKS = [1, 2, 1, 6, 3, 5]


def test_ranks_top_k_and_mrr_of_a_known_matrix():
    got = retrieval_metrics(torch.tensor(SCORES), torch.eye(6))
    assert got["top1"] == pytest.approx(2 / 6)  # ranks 1, 1
    assert got["top5"] == pytest.approx(5 / 6)  # all but the rank-6 row
    assert got["mrr"] == pytest.approx((1 + 1 / 2 + 1 + 1 / 6 + 1 / 3 + 1 / 5) / 6)
    assert got["mean_rank"] == pytest.approx(sum(RANKS) / 6) == 3.0
    assert got["candidates"] == 6.0


def test_a_perfect_and_a_reversed_retrieval():
    targets = torch.eye(5)
    perfect = retrieval_metrics(targets * 2.0, targets)
    assert (perfect["top1"], perfect["top5"], perfect["mrr"], perfect["mean_rank"]) == (1.0, 1.0, 1.0, 1.0)
    assert perfect["cosine_mean"] == pytest.approx(1.0) and perfect["l2_mean"] == pytest.approx(0.0, abs=1e-6)
    # Prediction i points away from target i and towards every other: the true target is always last.
    reversed_ = retrieval_metrics(1.0 - targets, targets)
    assert reversed_["top1"] == 0.0 and reversed_["mean_rank"] == 5.0 and reversed_["mrr"] == pytest.approx(0.2)
    assert reversed_["top5"] == 1.0  # 5 candidates: rank 5 is within the top 5
    assert reversed_["cosine_mean"] == pytest.approx(0.0, abs=1e-6)
    assert reversed_["l2_mean"] == pytest.approx(2**0.5)


def test_equal_scores_rank_first_and_top5_cuts_at_five():
    # Every prediction scores every target the same: each ties with all, so each ranks first.
    flat = retrieval_metrics(torch.ones(4, 4), torch.eye(4))
    assert (flat["top1"], flat["mrr"], flat["mean_rank"]) == (1.0, 1.0, 1.0)
    # Prediction i scores five other targets higher than its own: rank 6 of 7, outside the top 5.
    scores = torch.full((7, 7), 0.1)
    for i in range(7):
        for offset in range(1, 6):
            scores[i, (i + offset) % 7] = 0.5
        scores[i, i] = 0.3
    got = retrieval_metrics(scores, torch.eye(7))
    assert got["mean_rank"] == 6.0 and got["top5"] == 0.0 and got["mrr"] == pytest.approx(1 / 6)
