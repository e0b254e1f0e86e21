import numpy as np
import pytest
import torch

from corpus.order import start_cursors
from corpus.sampler import RoundSampler, SequenceSource, ValBatches
from corpus.shards import DomainData
from store.errors import DataError


def _sources(synth, seq_len=16):
    return {n: SequenceSource.open(n, str(p), seq_len) for n, p in synth["domains"].items()}


def _sampler(sources, weights, batch=8, steps=20, seed=0, rnd=0):
    cursors = start_cursors({}, {d: sources[d] for d in weights if weights[d] > 0})
    return RoundSampler(sources, weights, cursors, batch, steps, seed, 0, rnd)


def test_sequences_are_packed_windows_at_stride_seq_len_covering_every_token(synth):
    src = _sources(synth)["en"]
    stream = src.data.train[0]
    assert len(src.data.train) == 1 and src.n == (len(stream) - 17) // 16 + 1
    rows = src.rows(np.arange(src.n))
    assert rows.shape == (src.n, 17)
    assert np.array_equal(rows[:, 1:].reshape(-1), stream[1:1 + 16 * src.n])  # each token a target once
    assert np.array_equal(rows[3], stream[48:65])
    assert src.tokens_dropped == len(stream) - (16 * src.n + 1)
    with pytest.raises(DataError, match="out of range"):
        src.rows(np.array([src.n]))


def test_batches_are_pure_and_rank_slices_partition_the_global_batch(synth):
    sources = _sources(synth)
    w = {"en": 0.6, "de": 0.4}
    a, b = _sampler(sources, w), _sampler(sources, w)
    for k in (0, 3, 17):
        full_ids, full_dom = a.batch(k)
        assert torch.equal(full_ids, b.batch(k)[0])
        for world in (2, 4):
            parts = [a.batch(k, r, world) for r in range(world)]
            assert torch.equal(torch.cat([p[0] for p in parts]), full_ids)
            assert torch.equal(torch.cat([p[1] for p in parts]), full_dom)
    assert not torch.equal(a.batch(0)[0], a.batch(1)[0])
    assert not torch.equal(a.batch(0)[0], _sampler(sources, w, seed=1).batch(0)[0])


def test_rows_come_from_their_domain_and_batches_match_the_weights(synth):
    sources = _sources(synth)
    s = _sampler(sources, {"en": 0.75, "de": 0.25, "code": 0.0}, batch=8)
    assert s.names == ["de", "en"]  # zero-weight domains are never read
    for k in range(5):
        ids, dom = s.batch(k)
        assert np.bincount(dom.numpy(), minlength=2).tolist() == [2, 6]
        seq_ids, _ = s.step_ids(k)
        for row, i, sid in zip(ids.numpy(), dom.numpy(), seq_ids, strict=True):
            assert np.array_equal(row, sources[s.names[i]].rows(np.array([sid]))[0])


def test_changed_shards_are_refused_and_a_refilled_buffer_restarts(synth):
    sources = _sources(synth)
    stale = {"en": {"epoch": 0, "pos": 5, "data": "something-else"}}
    with pytest.raises(DataError, match="changed since the run last read it"):
        start_cursors(stale, {"en": sources["en"]})
    fresh = start_cursors(stale, {"en": sources["en"]}, restart_changed={"en"})
    assert fresh["en"] == {"epoch": 0, "pos": 0, "data": sources["en"].data_id}


def test_val_batches_fixed_and_from_val_split(synth):
    d = DomainData.open("en", synth["domains"]["en"])
    a, b = ValBatches(d, 16, 4, 3), ValBatches(d, 16, 4, 3)
    assert len(a) == 3 and all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert a[0].shape == (4, 17)
    assert np.array_equal(a[0][0].numpy(), d.val[0][:17])
