"""The token store holds exactly the ids the tokenizer's full encode_batch gives (the store encodes through
encode_batch_fast, which skips the offsets)."""

from conftest import synthetic_lines

from textjepa.data.lines import LineStats, iter_latent_texts
from textjepa.data.tokens import build_or_open_token_store, file_hash, train_tokenizer


def test_store_ids_equal_encode_batch_on_mixed_unicode(tmp_path):
    lines = synthetic_lines(300) + [
        "naïve café — 東京 😀 Ω≈ç√∫ and some more words",
        "tabs\tand  double  spaces, trailing spaces   ",
        "emoji 🙂🙂 between words, ZWJ 👩‍💻 and a combining é",
    ]
    corpus = tmp_path / "mixed.txt"
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tokenizer = train_tokenizer(synthetic_lines(200), 400)
    stats = LineStats()
    store = build_or_open_token_store(
        ((t,) for t in iter_latent_texts(corpus, 10_000, stats)),
        ("text",),
        tokenizer,
        file_hash(corpus),
        tmp_path / "cache",
        "latent",
        1,
        stats,
        10_000,
    )
    texts = list(iter_latent_texts(corpus, 10_000, LineStats()))
    expected = [encoding.ids for encoding in tokenizer.encode_batch(texts, add_special_tokens=False)]
    assert len(store) == len(texts) == len(lines)
    assert [store.fields["text"].record(i).tolist() for i in range(len(store))] == expected
