import numpy as np
import torch

from store.datasets import DomainData
from workers.data import MixtureSampler, val_batches


def _domains(synth):
    return {n: DomainData.open(n, p) for n, p in synth["domains"].items()}


def _sampler(synth, weights, seed=0, stage=0, rnd=0, batch=8):
    return MixtureSampler(_domains(synth), weights, seq_len=16, batch_size=batch, seed=seed, stage=stage,
                          round_=rnd)


def test_batches_are_a_pure_function_of_seed_stage_round_step_weights(synth):
    w = {"en": 0.5, "de": 0.5}
    a, b = _sampler(synth, w), _sampler(synth, w)
    for step in (0, 3, 17):
        assert all(torch.equal(x, y) for x, y in zip(a.batch(step), b.batch(step), strict=True))
    assert not torch.equal(a.batch(0)[0], a.batch(1)[0])
    for other in (_sampler(synth, w, seed=1), _sampler(synth, w, stage=1), _sampler(synth, w, rnd=1),
                  _sampler(synth, {"en": 0.6, "de": 0.4})):
        assert not torch.equal(a.batch(0)[0], other.batch(0)[0])


def test_windows_come_from_the_chosen_domain_and_weights_hold(synth):
    doms = _domains(synth)
    s = _sampler(synth, {"en": 0.8, "de": 0.2, "code": 0.0}, batch=64)
    assert s.names == ["de", "en"]  # zero-weight domains are never drawn
    counts = np.zeros(2)
    for step in range(20):
        ids, which = s.batch(step)
        assert ids.shape == (64, 17)
        counts += np.bincount(which.numpy(), minlength=2)
        row, name = ids[0].numpy(), s.names[int(which[0])]
        stream = np.concatenate(doms[name].train)
        # the window is a contiguous slice of that domain's train stream
        hits = np.flatnonzero(stream[: len(stream) - 16] == row[0])
        assert any(np.array_equal(stream[h:h + 17], row) for h in hits)
    share = counts / counts.sum()
    assert abs(share[1] - 0.8) < 0.05


def test_val_batches_fixed_and_from_val_split(synth):
    d = DomainData.open("en", synth["domains"]["en"])
    a, b = val_batches(d, 16, 4, 3), val_batches(d, 16, 4, 3)
    assert len(a) == 3 and all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert a[0].shape == (4, 17)
