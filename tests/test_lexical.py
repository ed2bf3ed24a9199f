"""eval-world's lexical baseline: TF-IDF fitted on the training split, ranked with honest tie-breaking."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from conftest import TINY, main_checkpoint, run_cli

from textjepa.eval.lexical import TfidfScorer, ranking_metrics


def test_ranking_metrics_break_ties_at_random_in_expectation():
    # Row 0: the true candidate is the unique best. Row 1: one candidate scores higher. Row 2: all four tie.
    scores = np.array(
        [
            [0.9, 0.1, 0.0, 0.0],
            [0.5, 0.4, 0.0, 0.0],
            [0.0, 0.0, 0.0, 0.0],
            [0.0, 0.0, 0.3, 0.3],  # a tie for first place between the truth and one other
        ]
    )
    metrics = ranking_metrics(scores)
    assert metrics["top1"] == pytest.approx((1 + 0 + 1 / 4 + 1 / 2) / 4)
    assert metrics["top5"] == pytest.approx(1.0)
    expected_mrr = (1 + 1 / 2 + np.mean([1, 1 / 2, 1 / 3, 1 / 4]) + np.mean([1, 1 / 2])) / 4
    assert metrics["mrr"] == pytest.approx(expected_mrr)
    assert metrics["mean_rank"] == pytest.approx((1 + 2 + 2.5 + 1.5) / 4)
    with pytest.raises(ValueError):
        ranking_metrics(np.zeros((2, 3)))


def overlapping_pairs(count: int, seed: int) -> list[tuple[str, str]]:
    """Each reply repeats two rare words of its context among common filler: lexically matchable. The rare
    words come from a pool small enough that a training split of a few hundred pairs has seen them (TF-IDF
    fitted on the training split knows no other word)."""
    rng = random.Random(seed)
    filler = "the a of and to in is it that was for on are with as".split()
    pairs = []
    for _ in range(count):
        rare = [f"w{rng.randrange(400)}" for _ in range(3)]
        context = "User: tell me about " + " ".join(rare + rng.sample(filler, 4))
        reply = " ".join(rng.sample(filler, 5) + rare[:2])
        pairs.append((context, reply))
    return pairs


def test_tfidf_scorer_finds_lexical_matches_and_not_shuffled_ones():
    train = overlapping_pairs(300, 0)
    scorer = TfidfScorer([c for c, _ in train] + [r for _, r in train])
    test = overlapping_pairs(64, 1)
    contexts, replies = [c for c, _ in test], [r for _, r in test]
    matched = ranking_metrics(scorer.scores(contexts, replies))
    shuffled_replies = replies[1:] + replies[:1]
    shuffled = ranking_metrics(scorer.scores(contexts, shuffled_replies))
    assert matched["top1"] > 0.9
    assert shuffled["top1"] < 0.1


def _write(path, pairs):
    path.write_text("".join(f"{c}\t{r}\n" for c, r in pairs), encoding="utf-8")


@pytest.mark.slow
def test_eval_world_prints_a_tfidf_row_fitted_on_the_training_split(tmp_path):
    train, test = overlapping_pairs(400, 0), overlapping_pairs(96, 1)
    _write(tmp_path / "train.txt", train)
    _write(tmp_path / "test.txt", test)
    shuffled = [(c, test[(i + 1) % len(test)][1]) for i, (c, _) in enumerate(test)]
    _write(tmp_path / "shuffled.txt", shuffled)
    cache = tmp_path / "cache"
    trained = run_cli(
        "train-world", tmp_path / "train.txt", *TINY, "--steps", "10", "--batch", "16", "--eval-every", "10",
        "--out-dir", tmp_path / "world", "--data-dir", cache, "--no-progress",
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    model = main_checkpoint(tmp_path / "world", "world")
    reports = {}
    for name in ("test", "shuffled"):
        result = run_cli(
            "eval-world", model, tmp_path / f"{name}.txt", "--split", "all", "--batch", "32", "--data-dir", cache,
            "--json", tmp_path / f"{name}.json",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert "tf-idf baseline" in result.stdout
        assert f"fitted on the training split of {tmp_path / 'train.txt'}" in result.stdout
        reports[name] = json.loads((tmp_path / f"{name}.json").read_text())
    for report in reports.values():
        assert report["pairs"] == 96
        assert set(report["baseline_tfidf"]) >= {"R@1", "R@5", "MRR"}
    assert reports["test"]["baseline_tfidf"]["R@1"] > 0.8
    assert reports["shuffled"]["baseline_tfidf"]["R@1"] < 0.2
    # On its own training data the row is scored on the held-out split, fitted on the rest.
    own = run_cli("eval-world", model, "--batch", "8", "--data-dir", cache, "--json", tmp_path / "own.json")
    assert own.returncode == 0, own.stderr
    assert json.loads((tmp_path / "own.json").read_text())["baseline_tfidf"]["R@1"] > 0.8
