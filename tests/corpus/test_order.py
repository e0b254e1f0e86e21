"""Data order properties: permutations, batch composition, and no repeat / no skip across rounds."""

import json

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from corpus import order


class FakeSource:
    """Only what RoundSampler needs for ids (no tokens): a domain of n sequences."""

    def __init__(self, name: str, n: int):
        self.name, self.n, self.data_id, self.window, self.where = name, n, f"id-{name}", 9, name


@given(n=st.integers(1, 3000), seed=st.integers(0, 2**31), epoch=st.integers(0, 50))
@settings(max_examples=60, deadline=None)
def test_permute_is_a_bijection_of_range_n(n, seed, epoch):
    ids = order.permute(np.arange(n), n, seed, "en", epoch)
    assert sorted(ids.tolist()) == list(range(n))
    assert np.array_equal(ids, order.permute(np.arange(n), n, seed, "en", epoch))  # pure


def test_permutations_differ_by_epoch_domain_and_seed():
    n = 1000
    base = order.permute(np.arange(n), n, 0, "en", 0)
    for other in (order.permute(np.arange(n), n, 0, "en", 1), order.permute(np.arange(n), n, 0, "de", 0),
                  order.permute(np.arange(n), n, 1, "en", 0)):
        assert (base != other).mean() > 0.9
    assert abs(np.corrcoef(np.arange(n), base)[0, 1]) < 0.15  # no visible trace of the identity


def test_permute_is_cheap_for_a_corpus_sized_domain():
    n = 8_000_000_000 // 129  # sequences of a billion-token-scale domain, no table built
    ids = order.permute(np.arange(10_000, 20_000), n, 3, "web", 2)
    assert len(set(ids.tolist())) == 10_000 and ids.max() < n and ids.min() >= 0


@given(w=st.lists(st.floats(0, 1), min_size=1, max_size=8).filter(lambda x: sum(x) > 1e-3),
       b=st.integers(1, 64), steps=st.integers(1, 40))
@settings(max_examples=300, deadline=None)
def test_batch_counts_track_the_weights(w, b, steps):
    names = [f"d{i}" for i in range(len(w))]
    weights = dict(zip(names, w, strict=True))
    c = order.batch_counts(weights, names, b, steps)
    assert (c >= 0).all() and (c.sum(1) == b).all()
    share = np.array(w) / sum(w) * b
    # after every step each total is its ideal rounded down or up (the round's end included)
    behind = np.cumsum(c, 0) - np.outer(np.arange(1, steps + 1), share)
    assert (np.abs(behind) < 1 + 1e-9).all()
    assert (np.abs(c - share) < 2 + 1e-9).all()  # so every batch is within two rows of its weights
    assert (c[:, np.array(w) == 0] == 0).all()


def test_batch_counts_keep_the_quota_where_largest_remainder_did_not():
    """Found by the property above (an earlier version gave each step's spare rows by largest
    remainder): three equal domains and two small ones, one row a step; one of the equal domains
    ended 1.008 rows behind its share."""
    w = {"d0": 0.625, "d1": 0.625, "d2": 0.625, "d3": 0.078125, "d4": 0.07421875}
    c = order.batch_counts(w, list(w), 1, 13)
    ideal = np.array(list(w.values())) / sum(w.values()) * 13
    assert (np.abs(c.sum(0) - ideal) < 1).all(), (c.sum(0), ideal)


def test_a_single_batch_is_largest_remainder():
    c = order.batch_counts({"a": 0.5, "b": 0.3, "c": 0.2}, ["a", "b", "c"], 8, 1)
    assert c.tolist() == [[4, 2, 2]]  # 4, 2.4, 1.6: floors 4,2,1; spare row (both due next) to the larger fraction


def _chain(sizes: dict[str, int], rounds: list[dict[str, float]], b: int, steps: int, seed: int = 0,
           stored: bool = True):
    """Run the samplers of a sequence of rounds (cursors handed on through JSON, as the store does)."""
    from corpus.order import start_cursors
    from corpus.sampler import RoundSampler

    sources = {d: FakeSource(d, n) for d, n in sizes.items()}
    cursors: dict = {}
    read = {d: [] for d in sizes}
    for r, w in enumerate(rounds):
        live = {d: s for d, s in sources.items() if w.get(d, 0) > 0}
        cursors = {**cursors, **start_cursors(cursors, live)}
        s = RoundSampler(sources, w, cursors, b, steps, seed, 0, r)
        for d, ids in s.round_ids().items():
            read[d].extend(ids.tolist())
        per_step = {d: [] for d in s.names}
        for k in range(steps):
            ids, dom = s.step_ids(k)
            for i, d in enumerate(s.names):
                per_step[d].extend(sorted(ids[dom == i].tolist()))
        for d, ids in s.round_ids().items():  # the batches serve exactly the round's ids
            assert sorted(per_step[d]) == sorted(ids.tolist())
        cursors = s.end_cursors()
        # the controller's closed-form cursors (no sampler, no tokens) are the ranks' cursors
        assert order.end_cursors(s.cursors, w, sizes, b, steps) == cursors
        if stored:
            cursors = json.loads(json.dumps(cursors))
    return read, cursors


@given(data=st.data(), sizes=st.dictionaries(st.sampled_from(["en", "de", "code"]), st.integers(1, 60),
                                             min_size=1),
       b=st.integers(1, 16), steps=st.integers(1, 6))
@settings(max_examples=80, deadline=None)
def test_no_sequence_repeats_or_is_skipped_within_an_epoch_under_changing_weights(data, sizes, b, steps):
    names = sorted(sizes)
    weight = st.lists(st.floats(0, 1), min_size=len(names), max_size=len(names)).filter(lambda x: sum(x) > 0.01)
    rounds = [dict(zip(names, data.draw(weight), strict=True)) for _ in range(data.draw(st.integers(1, 6)))]
    read, cursors = _chain(sizes, rounds, b, steps)
    for d, ids in read.items():
        n = sizes[d]
        for e in range(0, len(ids), n):  # each epoch: a permutation of range(n); the last one a prefix
            block = ids[e:e + n]
            assert len(set(block)) == len(block) and set(block) <= set(range(n))
        if ids:
            assert cursors[d]["epoch"] * n + cursors[d]["pos"] == len(ids)  # the cursor counts exactly


def test_resume_and_retry_read_the_same_sequences():
    sizes, rounds = {"en": 37, "de": 11}, [{"en": 0.7, "de": 0.3}, {"en": 0.2, "de": 0.8}, {"en": 1.0, "de": 0}]
    straight, _ = _chain(sizes, rounds, 8, 5)
    # a resumed controller computes round 2's plan from round 1's stored cursors: same ids
    first, cursors = _chain(sizes, rounds[:2], 8, 5)
    from corpus.sampler import RoundSampler

    s = RoundSampler({d: FakeSource(d, n) for d, n in sizes.items()}, rounds[2], cursors, 8, 5, 0, 0, 2)
    assert first["en"] + s.round_ids()["en"].tolist() == straight["en"]
    again = RoundSampler({d: FakeSource(d, n) for d, n in sizes.items()}, rounds[2], cursors, 8, 5, 0, 0, 2)
    assert all(np.array_equal(s.step_ids(k)[0], again.step_ids(k)[0]) for k in range(5))  # a retry


def test_epoch_rollover_uses_a_new_permutation_and_is_counted():
    read, cursors = _chain({"en": 10}, [{"en": 1.0}] * 3, 4, 2)  # 24 reads of 10 sequences
    ids = read["en"]
    assert sorted(ids[:10]) == sorted(ids[10:20]) == list(range(10))
    assert ids[:10] != ids[10:20]
    assert cursors["en"]["epoch"] == 2 and cursors["en"]["pos"] == 4
    assert order.epochs_used(cursors["en"]) == 3 and order.epochs_used({"epoch": 1, "pos": 0}) == 1


def test_a_weight_change_only_changes_how_many_each_domain_contributes():
    a, _ = _chain({"en": 100, "de": 100}, [{"en": 0.5, "de": 0.5}, {"en": 0.5, "de": 0.5}], 8, 4)
    b, _ = _chain({"en": 100, "de": 100}, [{"en": 0.5, "de": 0.5}, {"en": 0.25, "de": 0.75}], 8, 4)
    assert b["en"] == a["en"][:len(b["en"])]  # the same order, just fewer of them
    assert b["de"][:len(a["de"])] == a["de"]
