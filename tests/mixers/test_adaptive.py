import math

import pytest

from mixers.base import Observation, RoundRecord, build_mixer, mixer_names


def _obs(history=(), stage_domains=("tgt",), replay=("src",), r=1, **kw) -> Observation:
    return Observation(stage_index=1, round_index=r, num_rounds=4, stage_domains=list(stage_domains),
                       replay_domains=list(replay), replay_fraction=0.0, domain_tokens={"tgt": 10, "src": 10},
                       history=list(history), **kw)


def _rec(r, weights, losses, train=None, trace=None, stage=1):
    return RoundRecord(stage, r, weights, losses, train or {}, trace or {})


def test_doremi_exponentiated_gradient_on_excess_loss():
    m = build_mixer({"kind": "doremi", "eta": 1.0, "smoothing": 0.0, "reference": {"tgt": 2.0, "src": 3.0}})
    # no history yet: uniform
    assert m.propose(_obs(r=0)) == pytest.approx({"tgt": 0.5, "src": 0.5})
    # excess: tgt 1.0 (3.0 - 2.0), src 0 (2.5 < 3.0 is clipped at 0) -> weights ~ softmax([1, 0])
    w = m.propose(_obs([_rec(0, {"tgt": .5, "src": .5}, {"tgt": 3.0, "src": 2.5})]))
    assert w["tgt"] == pytest.approx(math.e / (math.e + 1))
    # log-weights accumulate across rounds, and survive a state round-trip
    m2 = build_mixer({"kind": "doremi", "eta": 1.0, "smoothing": 0.0, "reference": {"tgt": 2.0, "src": 3.0}})
    m2.load_state_dict(m.state_dict())
    w2 = m2.propose(_obs([_rec(1, w, {"tgt": 3.0, "src": 2.5})], r=2))
    assert w2["tgt"] == pytest.approx(math.exp(2) / (math.exp(2) + 1))
    smoothed = build_mixer({"kind": "doremi", "smoothing": 0.5, "reference": {"tgt": 0.0, "src": 0.0}})
    smoothed.propose(_obs(r=0))
    assert min(smoothed.propose(_obs([_rec(0, {}, {"tgt": 50.0, "src": 0.0})])).values()) >= 0.25


def test_doremi_reference_from_observation():
    m = build_mixer({"kind": "doremi", "smoothing": 0.0})
    m.propose(_obs(r=0))
    w = m.propose(_obs([_rec(0, {}, {"tgt": 1.0, "src": 2.0})], reference_losses={"tgt": 1.0, "src": 1.0}))
    assert w["src"] > w["tgt"]


def test_odm_exp3_update_by_hand():
    m = build_mixer({"kind": "odm", "reward_scale": 0.1})
    k = 2
    w0 = m.propose(_obs(r=0))
    assert w0 == pytest.approx({"tgt": 0.5, "src": 0.5})
    w1 = m.propose(_obs([_rec(0, w0, {}, train={"tgt": 4.0, "src": 2.0})]))
    r_hat = {"tgt": 0.1 * 4.0 / 0.5, "src": 0.1 * 2.0 / 0.5}
    eps_prev = min(1 / k, math.sqrt(math.log(k) / (k * 1)))
    eps = min(1 / k, math.sqrt(math.log(k) / (k * 2)))
    z = {d: math.exp(eps_prev * v) for d, v in r_hat.items()}
    expected = {d: (1 - k * eps) * z[d] / sum(z.values()) + eps for d in z}
    assert w1 == pytest.approx(expected)
    assert w1["tgt"] > w1["src"]  # the higher-loss domain is sampled more


def test_recap_scores_convergence_and_instability():
    m = build_mixer({"kind": "recap", "window": 2, "temperature": 1.0})
    flat = [2.0, 2.0, 2.0, 2.0]  # converged: c = 1, i = 0 -> score 1
    falling = [4.0, 4.0, 2.0, 2.0]  # still improving: c = 0.5 -> score 0.5
    assert m.score(flat) == pytest.approx(1.0) and m.score(falling) == pytest.approx(0.5)
    noisy = [2.0, 2.0, 1.0, 3.0]  # c = 1, i = 1 / 4
    assert m.score(noisy) == pytest.approx(1.25)
    w = m.propose(_obs([_rec(0, {}, {}, trace={"tgt": falling, "src": flat})]))
    assert w["src"] == pytest.approx(math.exp(1) / (math.exp(1) + math.exp(0.5)))
    assert m.propose(_obs([_rec(0, {}, {}, trace={"tgt": [1.0]})])) == pytest.approx({"tgt": .5, "src": .5})


def test_dirichlet_is_deterministic_per_round_and_floored():
    m = build_mixer({"kind": "dirichlet", "concentration": 0.3, "seed": 1, "min_weight": 0.1})
    a, b = m.propose(_obs(r=0, seed=5)), m.propose(_obs(r=0, seed=5))
    assert a == b and sum(a.values()) == pytest.approx(1) and min(a.values()) >= 0.05
    assert m.propose(_obs(r=1, seed=5)) != a


def test_all_mixers_registered():
    assert set(mixer_names()) >= {"static", "fixed_replay", "proportional", "temperature", "doremi", "odm",
                                  "recap", "dirichlet", "agent"}
