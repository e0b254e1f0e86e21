from dataclasses import dataclass

import pytest

from mixers.agent import balanced_reward, load_agent, save_agent, state_features, train_agent
from mixers.base import Observation, RoundRecord, build_mixer
from store.errors import CheckpointError


@dataclass
class T:
    run_id: str
    stage_index: int
    round_index: int
    state: list
    action: list
    reward: float


def _obs(history=(), r=0, start=None) -> Observation:
    return Observation(stage_index=1, round_index=r, num_rounds=4, stage_domains=["de"],
                       replay_domains=["replay/en"], replay_fraction=0.0, domain_tokens={},
                       history=list(history), start_losses=start or {"de": 8.0, "en": 4.0})


def test_features_and_reward_by_hand():
    assert state_features(_obs()) == [0.5, 0.5, 1.0, 1.0, 0.0, 0.0, 0.0]
    hist = [RoundRecord(1, 0, {"de": 0.8, "replay/en": 0.2}, {"de": 6.0, "en": 4.4})]
    f = state_features(_obs(hist, r=1))
    assert f == pytest.approx([0.8, 0.2, 0.75, 1.1, (6.0 - 8.0) / 8.0, (4.4 - 4.0) / 4.0, 0.25])
    # target improved 25%, source got 10% worse -> reward 0.5 * (0.25 - 0.10)
    assert balanced_reward({"de": 8.0, "en": 4.0}, {"de": 6.0, "en": 4.4}, ["de"], ["replay/en"]) == \
        pytest.approx(0.075)


def _synthetic_transitions(n=60):
    """Reward is highest when the action puts ~70% on domain 0."""
    import numpy as np

    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        a = rng.dirichlet([1.0, 1.0])
        out.append(T(f"run{i // 3}", 1, i % 3, [0.5, 0.5, 1, 1, 0, 0, (i % 3) / 3], a.tolist(),
                      -abs(a[0] - 0.7)))
    return out


def test_awr_moves_policy_to_good_actions_and_roundtrips(tmp_path):
    policy, meta = train_agent(_synthetic_transitions(), num_domains=2, beta=0.05, epochs=300)
    path = save_agent(policy, tmp_path / "agent.safetensors", meta)
    loaded, meta2 = load_agent(path)
    assert meta2["method"] == "awr" and meta2["num_domains"] == "2" and meta2["transitions"] == "60"
    mixer = build_mixer({"kind": "agent", "path": str(path)})
    w = mixer.propose(_obs())
    assert abs(w["de"] - 0.7) < abs(0.5 - 0.7)  # closer to the rewarded mixture than uniform
    assert sum(w.values()) == pytest.approx(1.0)


def test_agent_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        build_mixer({"kind": "agent", "path": str(tmp_path / "nope.safetensors")})
    (tmp_path / "bad.safetensors").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="cannot load agent"):
        load_agent(tmp_path / "bad.safetensors")
    with pytest.raises(CheckpointError, match="at least 4 transitions"):
        train_agent([], 2)
    policy, meta = train_agent(_synthetic_transitions(12), 2, epochs=5)
    path = save_agent(policy, tmp_path / "a.safetensors", meta)
    three = Observation(stage_index=1, round_index=0, num_rounds=2, stage_domains=["a", "b"],
                        replay_domains=["c"], replay_fraction=0, domain_tokens={})
    with pytest.raises(CheckpointError, match="trained for 2 domains"):
        build_mixer({"kind": "agent", "path": str(path)}).propose(three)
