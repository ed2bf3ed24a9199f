import numpy as np
import pytest
from conftest import synthetic_lines

from textjepa.data.lines import LineStats, iter_latent_texts
from textjepa.data.tokens import build_or_open_token_store, file_hash, train_tokenizer
from textjepa.data.vocab import MASK_ID, PAD_ID, UNK_ID
from textjepa.errors import TextJepaError


def test_tokenizer_special_ids_and_no_unknown_on_any_unicode():
    tokenizer = train_tokenizer(synthetic_lines(200), 400)
    assert [tokenizer.token_to_id(t) for t in ("<pad>", "<unk>", "<mask>")] == [PAD_ID, UNK_ID, MASK_ID]
    text = "naïve café — 東京 😀 \u0000\u2028 Ω≈ç√∫"
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    assert UNK_ID not in ids
    assert tokenizer.decode(ids) == text
    assert tokenizer.get_vocab_size() <= 400


def test_vocab_smaller_than_specials_plus_bytes_is_an_error():
    with pytest.raises(TextJepaError, match="too small"):
        train_tokenizer(["a b c"], 10)


def store_for(path, tokenizer, cache, stats=None):
    stats = stats or LineStats()
    return build_or_open_token_store(
        ((t,) for t in iter_latent_texts(path, 10_000, stats)),
        ("text",),
        tokenizer,
        file_hash(path),
        cache,
        "latent",
        2,
        stats,
        10_000,
    )


def test_token_store_round_trips_and_is_reused(tmp_path, corpus):
    tokenizer = train_tokenizer(synthetic_lines(200), 400)
    store = store_for(corpus, tokenizer, tmp_path / "cache")
    lines = corpus.read_text().splitlines()
    assert len(store) == len(lines)
    for i in (0, 17, len(lines) - 1):
        assert tokenizer.decode(store.fields["text"].record(i).tolist()) == lines[i]
    assert isinstance(store.fields["text"].ids, np.memmap)
    stamp = (store.path / "text.ids.bin").stat().st_mtime_ns
    again = store_for(corpus, tokenizer, tmp_path / "cache", LineStats())
    assert again.path == store.path
    assert (again.path / "text.ids.bin").stat().st_mtime_ns == stamp  # not re-tokenised
    assert again.stats.used == store.stats.used


def test_changed_corpus_or_tokenizer_gets_a_new_store(tmp_path, corpus):
    tokenizer = train_tokenizer(synthetic_lines(200), 400)
    first = store_for(corpus, tokenizer, tmp_path / "cache")
    other_tokenizer = train_tokenizer(synthetic_lines(200, seed=5), 330)
    assert store_for(corpus, other_tokenizer, tmp_path / "cache").path != first.path
    corpus.write_text(corpus.read_text() + "one more line of text\n")
    assert store_for(corpus, tokenizer, tmp_path / "cache").path != first.path


def test_stale_temporary_store_is_not_trusted(tmp_path, corpus):
    tokenizer = train_tokenizer(synthetic_lines(200), 400)
    store = store_for(corpus, tokenizer, tmp_path / "cache")
    # Simulate an interrupted build: a half-written temp dir and no finished store.
    import shutil

    tmp = store.path.with_name(store.path.name + ".tmp-99999")
    shutil.move(str(store.path), tmp)
    (tmp / "meta.json").unlink()
    rebuilt = store_for(corpus, tokenizer, tmp_path / "cache")
    assert rebuilt.path == store.path and len(rebuilt) == len(store)
    assert not tmp.exists()


def test_records_with_too_few_tokens_are_counted(tmp_path):
    path = tmp_path / "short.txt"
    path.write_text("a\nthis line has enough tokens\nb\n")
    tokenizer = train_tokenizer(synthetic_lines(100), 300)
    stats = LineStats()
    store = store_for(path, tokenizer, tmp_path / "cache", stats)
    assert len(store) == 1
    assert store.stats.skipped["too few tokens"] == 2
