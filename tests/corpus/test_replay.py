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


def _row_by_row(capacity: int, stream: list[np.ndarray], rng, seqs=None, seen: int = 0):
    """The rule before streamed fills (Algorithm R over the rows themselves): the reference."""
    buf = list(seqs) if seqs is not None else []
    for row in stream:
        seen += 1
        if len(buf) < capacity:
            buf.append(row)
        else:
            j = int(rng.integers(0, seen))
            if j < capacity:
                buf[j] = row
    return np.stack(buf), seen


def test_a_streamed_fill_keeps_the_sequences_the_row_by_row_rule_kept(synth):
    """Positions are drawn first and only the kept rows read: the same buffer as adding every row
    of the stage's stream one by one, for a buffer filling up and for one already full."""
    from corpus.order import advance, new_cursor
    from corpus.sampler import SequenceSource

    source = SequenceSource.open("en", str(synth["domains"]["en"]), 16)
    start = new_cursor(source.data_id)
    end = advance(start, 3 * source.n + 5, source.n)  # several epochs of the domain
    stream = stage_stream(source, start, end, seed=3)
    rows = list(stream)
    assert len(stream) == len(rows) == 3 * source.n + 5
    for capacity in (7, len(rows) + 10):  # full long before the end; never full
        buf = ReplayBuffer("unused", capacity * 17, 17)
        buf.add(stage_stream(source, start, end, seed=3), np.random.default_rng(11))
        want, seen = _row_by_row(capacity, rows, np.random.default_rng(11))
        assert np.array_equal(buf.seqs, want) and buf.seen == seen
        more = rows[: 2 * capacity]  # a second stage into the same buffer
        buf.add(more, np.random.default_rng(12))
        want, seen = _row_by_row(capacity, more, np.random.default_rng(12), want, seen)
        assert np.array_equal(buf.seqs, want) and buf.seen == seen
    fifo = ReplayBuffer("unused", 5 * 17, 17, policy="fifo")
    fifo.add(stage_stream(source, start, end, seed=3), np.random.default_rng(0))
    assert np.array_equal(fifo.seqs, np.stack(rows[-5:])) and fifo.seen == len(rows)


class _Synthetic:
    """A domain of `n` sequences whose row i is i repeated (nothing on disk): big without bytes."""

    name, data_id = "big", "synthetic"

    def __init__(self, n: int, window: int):
        self.n, self.window, self.read = n, window, 0

    def rows(self, ids):
        self.read += len(ids)
        return np.repeat(np.asarray(ids, dtype=np.int64)[:, None], self.window, axis=1)


def test_filling_from_a_200m_token_stage_costs_the_buffer_not_the_stage():
    """A stage that read 200M tokens (1.55M sequences of 129) into an 8M-token reservoir: peak
    traced memory stays under 4x the buffer's own 32 MB (stacking the stream, as fills did before,
    took 800 MB), and only the kept rows are read."""
    import tracemalloc

    from corpus.order import advance, new_cursor

    window = 129
    source = _Synthetic(200_000_000 // window, window)
    start = new_cursor("synthetic")
    end = advance(start, source.n, source.n)
    buf = ReplayBuffer("unused", 8_000_000, window)
    tracemalloc.start()
    try:
        buf.add(stage_stream(source, start, end, seed=0), np.random.default_rng(0))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert buf.seen == source.n and len(buf.seqs) == buf.capacity == 8_000_000 // window
    assert source.read == buf.capacity  # each kept row read once, nothing else
    assert peak < 4 * buf.seqs.nbytes, f"{peak / 1e6:.0f} MB for a {buf.seqs.nbytes / 1e6:.0f} MB buffer"
    ids = buf.seqs[:, 0]
    assert len(np.unique(ids)) == len(ids) and ids.min() < source.n // 10 and ids.max() > source.n * 9 // 10


def test_a_fill_stopped_midway_leaves_the_buffer_as_it_was_and_runs_again(tmp_path, synth):
    """`check` (the controller's cancel/SIGTERM test) stops a long fill between chunks; nothing is
    written, and the resumed run's fill gives the buffer an uninterrupted fill gives."""
    import corpus.replay as replay
    from corpus.order import advance, new_cursor
    from corpus.sampler import SequenceSource
    from store.errors import Cancelled

    src = str(synth["domains"]["en"])
    source = SequenceSource.open("en", src, 16)
    end = advance(new_cursor(source.data_id), 4 * source.n, source.n)
    calls = []

    def stop_on_the_second_chunk():
        calls.append(1)
        if len(calls) == 2:
            raise Cancelled("cancelled while filling")

    spec = {"tokens": 17 * 5, "policy": "reservoir"}
    folder = tmp_path / "replay" / "en"
    original = replay.DRAW_CHUNK
    replay.DRAW_CHUNK = 16  # several chunks on a small domain
    try:
        with pytest.raises(Cancelled):
            fill_buffer(folder, "replay/en", src, spec, 16, stage_stream(source, None, end, 0), 0, 0, "stage-0",
                        stop_on_the_second_chunk)
        assert not folder.exists() and not list(folder.parent.glob(".*"))
        buf = fill_buffer(folder, "replay/en", src, spec, 16, stage_stream(source, None, end, 0), 0, 0, "stage-0")
    finally:
        replay.DRAW_CHUNK = original
    ref = fill_buffer(tmp_path / "ref", "replay/en", src, spec, 16, stage_stream(source, None, end, 0), 0, 0,
                      "stage-0")
    assert np.array_equal(buf.seqs, ref.seqs) and ReplayBuffer.load(folder).seen == 4 * source.n
