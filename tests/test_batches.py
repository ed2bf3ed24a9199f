import numpy as np
from conftest import synthetic_lines

from textjepa.data.batches import TrainSampler, count_split, is_validation, iter_split_batches
from textjepa.data.lines import LineStats, iter_latent_texts
from textjepa.data.tokens import build_or_open_token_store, file_hash, train_tokenizer


def make_store(tmp_path, corpus):
    tokenizer = train_tokenizer(synthetic_lines(200), 400)
    stats = LineStats()
    return build_or_open_token_store(
        ((t,) for t in iter_latent_texts(corpus, 10_000, stats)),
        ("text",),
        tokenizer,
        file_hash(corpus),
        tmp_path / "cache",
        "latent",
        2,
        stats,
        10_000,
    )


def test_split_is_deterministic_and_close_to_the_fraction():
    index = np.arange(100_000)
    held = is_validation(index, 0.1, seed=3)
    assert np.array_equal(held, is_validation(index, 0.1, seed=3))
    assert 0.09 < held.mean() < 0.11
    assert not np.array_equal(held, is_validation(index, 0.1, seed=4))
    assert not is_validation(index, 0.0, seed=3).any()


def test_train_batches_never_contain_validation_records(tmp_path, corpus):
    store = make_store(tmp_path, corpus)
    sampler = TrainSampler(store, 16, 32, 0.2, seed=0)
    for _ in range(30):
        batch = sampler.next_batch()
        assert not is_validation(batch.index, 0.2, 0).any()
    val = [b.index for b in iter_split_batches(store, 8, 32, "val", 0.2, 0, drop_last=False)]
    assert sum(len(v) for v in val) == count_split(store, "val", 0.2, 0)
    assert all(is_validation(v, 0.2, 0).all() for v in val)


def test_bucketing_cuts_padding(tmp_path, corpus):
    store = make_store(tmp_path, corpus)

    def padding_share(bucket: bool) -> float:
        sampler = TrainSampler(store, 16, 64, 0.1, seed=1, bucket_by_length=bucket)
        batches = [sampler.next_batch() for _ in range(40)]
        return 1 - sum(b.real_tokens for b in batches) / sum(b.padded_tokens for b in batches)

    assert padding_share(True) < 0.5 * padding_share(False)


def test_sampler_state_resumes_the_same_stream(tmp_path, corpus):
    store = make_store(tmp_path, corpus)
    first = TrainSampler(store, 8, 32, 0.1, seed=2)
    for _ in range(5):
        first.next_batch()
    state = first.state_dict()
    expected = [first.next_batch().index.tolist() for _ in range(25)]
    second = TrainSampler(store, 8, 32, 0.1, seed=2)
    second.load_state_dict(state)
    assert [second.next_batch().index.tolist() for _ in range(25)] == expected


def test_ranks_draw_disjoint_shards(tmp_path, corpus):
    store = make_store(tmp_path, corpus)
    seen = []
    for rank in range(2):
        sampler = TrainSampler(store, 8, 32, 0.1, seed=0, rank=rank, world_size=2)
        seen.append({int(i) for _ in range(20) for i in sampler.next_batch().index})
        assert all(i % 2 == rank for i in seen[rank])
    assert not seen[0] & seen[1]
