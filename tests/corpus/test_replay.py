import numpy as np
import pytest

from corpus.replay import ReplayBuffer, fill_buffer, stage_stream
from store.errors import DataError


def _seqs(start: int, n: int, length: int = 5) -> list[np.ndarray]:
    return [np.full(length, start + i, dtype=np.int32) for i in range(n)]


def test_reservoir_is_bounded_and_samples_the_whole_stream(tmp_path):
    buf = ReplayBuffer(tmp_path / "b", capacity_tokens=50, seq_tokens=5)  # 10 sequences
    buf.add(_seqs(0, 1000), np.random.default_rng(0))
    assert buf.tokens() == 50 and buf.seen == 1000
    ids = buf.seqs[:, 0]
    assert ids.max() > 500 and ids.min() < 500  # old and new sequences both kept
    counts = np.zeros(10)
    for seed in range(300):  # each of 10 stream blocks is equally likely to be kept
        b = ReplayBuffer(tmp_path / "x", 50, 5)
        b.add(_seqs(0, 100), np.random.default_rng(seed))
        counts += np.bincount(b.seqs[:, 0] // 10, minlength=10)
    assert counts.min() > 0.7 * counts.mean()


def test_fifo_keeps_the_latest(tmp_path):
    buf = ReplayBuffer(tmp_path / "b", capacity_tokens=15, seq_tokens=5, policy="fifo")
    buf.add(_seqs(0, 7), np.random.default_rng(0))
    assert buf.seqs[:, 0].tolist() == [4, 5, 6]
    with pytest.raises(DataError, match="policy must be"):
        ReplayBuffer(tmp_path / "c", 10, 5, policy="lifo")


def test_persistence_roundtrip_and_aligned_sampling(tmp_path, synth):
    from corpus.order import start_cursors
    from corpus.sampler import RoundSampler, SequenceSource

    src = synth["domains"]["en"]
    source = SequenceSource.open("en", str(src), 16)
    cursors = start_cursors({}, {"en": source})
    sampler = RoundSampler({"en": source}, {"en": 1.0}, cursors, 4, 6, 0, 0, 0)
    stream = list(stage_stream(source, cursors["en"], sampler.end_cursors()["en"], seed=0))
    assert len(stream) == 24 and all(len(s) == 17 for s in stream)
    # the stream is exactly what the sampler served in training, in reading order
    served = np.concatenate([sampler.batch(k)[0].numpy() for k in range(6)])
    assert sorted(map(tuple, served.tolist())) == sorted(map(tuple, np.stack(stream).tolist()))
    folder = tmp_path / "replay" / "en"
    buf = fill_buffer(folder, "replay/en", str(src), {"tokens": 17 * 10, "policy": "reservoir"}, 16,
                      iter(stream), seed=0, stage=0, tag="stage-0")
    assert buf.tokens() == 170
    again = fill_buffer(folder, "replay/en", str(src), {"tokens": 170}, 16, iter(stream), 0, 0, "stage-0")
    assert again.seen == 24  # idempotent per stage tag (a resumed run does not add twice)
    loaded = ReplayBuffer.load(folder)
    assert np.array_equal(loaded.seqs, buf.seqs) and loaded.seen == 24
    rb = SequenceSource.open("replay/en", str(folder), 16)
    assert rb.aligned and rb.n == 10 and rb.stride == 17
    ids, _ = RoundSampler({"replay/en": rb}, {"replay/en": 1.0}, start_cursors({}, {"replay/en": rb}), 8, 1,
                          0, 1, 0).batch(0)
    stored = {tuple(s) for s in buf.seqs.tolist()}
    assert all(tuple(row) in stored for row in ids.tolist())  # whole stored sequences only
    assert len({tuple(r) for r in ids.tolist()}) == 8  # without replacement: 8 distinct of the 10
