"""A lexical baseline for next-turn retrieval: TF-IDF fitted on the training split, scored like the models.

Every context is scored against the same candidates the world model ranks (the batch's true next turns) by
the cosine of their TF-IDF vectors. Bag-of-words scores tie often (a context sharing no word with any
candidate scores 0 against all of them), so ranks here are expected ranks under a random tie-break: a tie
is never counted in the baseline's favour.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from textjepa.data.batches import is_validation
from textjepa.data.contract import DataContract
from textjepa.data.sources import WORLD_RECORDS, load_corpus, recorded_data
from textjepa.data.tokens import TokenStore
from textjepa.errors import TextJepaError
from textjepa.io import RunKind

# Fitting reads at most this many training pairs (bounded time and memory on a large corpus).
MAX_FIT_PAIRS = 200_000


class TfidfScorer:
    """TF-IDF with sublinear term frequency over the contexts and replies of the training pairs."""

    def __init__(self, training_texts: Iterable[str]) -> None:
        # Imported here: scikit-learn takes ~1.5 s to import, and eval-world needs it only once the baseline's
        # training data is found (every command that imports this module but fits nothing skips it).
        from sklearn.feature_extraction.text import TfidfVectorizer

        self.vectorizer = TfidfVectorizer(sublinear_tf=True)
        try:
            self.vectorizer.fit(training_texts)
        except ValueError as exc:  # scikit-learn's "empty vocabulary"
            raise TextJepaError(f"cannot fit TF-IDF on the training texts: {exc}") from exc

    def scores(self, contexts: Sequence[str], candidates: Sequence[str]) -> np.ndarray:
        """[len(contexts), len(candidates)] cosine similarities (rows are L2-normalised by the vectorizer)."""
        queries = self.vectorizer.transform(contexts)
        documents = self.vectorizer.transform(candidates)
        return np.asarray((queries @ documents.T).todense(), dtype=np.float64)


def ranking_metrics(scores: np.ndarray) -> dict[str, float]:
    """Row i's true candidate is column i: R@1, R@5, MRR and mean rank, ties broken at random (in expectation).

    With g candidates scoring strictly higher than the true one and e scoring equal (itself included), the true
    candidate's rank is uniform on g+1 .. g+e.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[0] != scores.shape[1] or scores.shape[0] == 0:
        raise ValueError(f"expected a square, non-empty score matrix, got shape {scores.shape}")
    true = np.diag(scores)[:, None]
    higher = (scores > true).sum(1)
    equal = (scores == true).sum(1)  # >= 1: the true candidate itself
    top1 = np.where(higher < 1, np.minimum(equal, 1 - higher) / equal, 0.0)
    top5 = np.clip(5 - higher, 0, equal) / equal
    reciprocal = np.array([np.mean(1.0 / np.arange(g + 1, g + e + 1)) for g, e in zip(higher.tolist(), equal.tolist())])
    return {
        "top1": float(top1.mean()),
        "top5": float(top5.mean()),
        "mrr": float(reciprocal.mean()),
        "mean_rank": float((higher + (equal + 1) / 2).mean()),
        "candidates": float(scores.shape[1]),
    }


def record_texts(store: TokenStore, tokenizer: Tokenizer, field_name: str, index: Iterable[int]) -> list[str]:
    """The texts of records as stored (byte-level BPE decodes to the exact text, up to the store's length cap)."""
    field = store.fields[field_name]
    return tokenizer.decode_batch([field.record(int(i)).tolist() for i in index], skip_special_tokens=False)


def fit_training_split(store: TokenStore, tokenizer: Tokenizer, val_fraction: float, seed: int) -> TfidfScorer:
    """TF-IDF fitted on the contexts and next turns of the training split (the held-out split excluded)."""
    index = np.arange(len(store), dtype=np.int64)
    index = index[~is_validation(index, val_fraction, seed)][:MAX_FIT_PAIRS]
    return TfidfScorer(record_texts(store, tokenizer, "context", index) + record_texts(store, tokenizer, "next", index))


def tfidf_for_checkpoint(
    contract: DataContract,
    tokenizer: Tokenizer,
    vocab_size: int,
    data_dir: str,
    eval_path: Path,
    eval_store: TokenStore,
) -> tuple[TfidfScorer | None, str]:
    """TF-IDF fitted on the training split of a world checkpoint's training data (its recorded data contract),
    and a note on what it was fitted on; (None, reason) when that data is no longer there or has no word to fit
    on (the baseline is then left out, not guessed)."""
    seed = contract.seed
    try:
        path, data = recorded_data(None, contract, RunKind.WORLD, data_dir)
    except TextJepaError as exc:
        return None, f"tf-idf baseline left out: {exc}"
    store = eval_store
    if path.resolve() != eval_path.resolve():
        _, store = load_corpus(path, WORLD_RECORDS, data, tokenizer, vocab_size)
    try:
        scorer = fit_training_split(store, tokenizer, data.val_fraction, seed)
    except TextJepaError as exc:  # no word to fit on (a corpus of symbols): the other rows still stand
        return None, f"tf-idf baseline left out: {exc}"
    return scorer, f"tf-idf baseline fitted on the training split of {path}"
