import json
import math

import pytest

from mixers.agent import GLOBAL, PER_DOMAIN, balanced_reward, load_agent, save_agent, split_state, state_features
from mixers.agent_rewards import Step as T
from mixers.agent_train import train_agent, validation_score
from mixers.base import Observation, RoundRecord, build_mixer
from store.errors import CheckpointError, InputError


def _obs(history=(), r=0, start=None, stage=("de",), replay=("replay/en",)) -> Observation:
    return Observation(stage_index=1, round_index=r, num_rounds=4, stage_domains=list(stage),
                       replay_domains=list(replay), replay_fraction=0.0, domain_tokens={},
                       history=list(history), start_losses=start or {"de": 8.0, "en": 4.0})


def test_features_by_hand_with_a_window_of_history():
    # the last number of a row is its loss level: log(its loss / the mean loss of the stage's domains)
    assert state_features(_obs()) == pytest.approx([1, 0.5, 0.5, 0, 0, 0, 0, math.log(8 / 6),
                                                    0, 0.5, 0.5, 0, 0, 0, 0, math.log(4 / 6), 0.0, 0.5])
    h1 = RoundRecord(1, 0, {"de": 0.8, "replay/en": 0.2}, {"de": 6.0, "en": 4.4})
    f = state_features(_obs([h1], r=1))
    assert f == pytest.approx([1, 0.8, 0.8, math.log(0.75), -2.5, 0, 0, math.log(6 / 5.2),
                               0, 0.2, 0.2, math.log(1.1), 1.0, 0, 0, math.log(4.4 / 5.2), 0.25, 0.5])
    h2 = RoundRecord(1, 1, {"de": 0.6, "replay/en": 0.4}, {"de": 5.4, "en": 4.4})
    rows, glob = split_state(state_features(_obs([h1, h2], r=2)), 2)
    # newest change first
    assert rows[0] == pytest.approx([1, 0.6, 0.8, math.log(5.4 / 8), -1.0, -2.5, 0, math.log(5.4 / 4.9)])
    assert rows[1][4:7] == pytest.approx([0, 1.0, 0]) and glob == [0.5, 0.5]
    # target improved 25%, source got 10% worse -> reward 0.5 * (0.25 - 0.10)
    assert balanced_reward({"de": 8.0, "en": 4.0}, {"de": 6.0, "en": 4.4}, ["de"], ["replay/en"]) == \
        pytest.approx(0.075)
    with pytest.raises(CheckpointError, match="does not fit 3 domains"):
        split_state(f, 3)


def _synthetic(n_traj=24, ks=(2, 3), best=0.7, seed=0):
    """Reward is highest when the target (role-1 domain) gets `best` of the batch, for any K."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out, f = [], len(PER_DOMAIN)
    for i in range(n_traj):
        k = ks[i % len(ks)]
        mean = (8.0 + 4.0 * (k - 1)) / k  # the loss levels of _start(k): target 8, sources 4
        rows = [[1.0 if j == 0 else 0.0, 1 / k, 1 / k, 0, 0, 0, 0, math.log((8.0 if j == 0 else 4.0) / mean)]
                for j in range(k)]
        for r in range(3):
            a = rng.dirichlet([1.0] * k)
            state = [x for row in rows for x in row] + [r / 3, 1 / k]
            rows = [[row[0], a[j], row[1], row[3] - 0.05, -0.5, row[4], row[5], row[7]] for j, row in enumerate(rows)]
            nxt = [x for row in rows for x in row] + [(r + 1) / 3, 1 / k]
            assert len(state) == k * f + len(GLOBAL)
            out.append(T(f"run{i}", 1, r, state, a.tolist(), -abs(a[0] - best), nxt, r == 2,
                         ["tgt", *(f"replay/src{j}" for j in range(1, k))]))
    return out


def _start(k: int) -> Observation:
    stage, replay = ["tgt"], [f"replay/src{j}" for j in range(1, k)]
    return _obs(stage=stage, replay=replay, start={"tgt": 8.0, **{f"src{j}": 4.0 for j in range(1, k)}})


@pytest.mark.parametrize("method", ["awr", "cql"])
def test_one_agent_learns_the_rewarded_mixture_for_2_and_3_domains(tmp_path, method):
    proposals = {}
    for best in (0.7, 0.1):  # the target's best share: above and below uniform for K = 2 and 3
        nets, meta = train_agent(_synthetic(best=best), method=method, beta=0.05, epochs=300)
        assert meta["method"] == method and meta["domain_counts"] == "[2, 3]"
        assert int(meta["val_trajectories"]) == 6 and int(meta["trajectories"]) == 18
        assert not set(json.loads(meta["runs"])) & set(json.loads(meta["val_runs"]))
        assert float(meta["val_score"]) > 0.3  # prefers the better held-out actions
        assert json.loads(meta["pairs"]) == {"src1->tgt": 12, "src1+src2->tgt": 12}
        path = save_agent(nets, tmp_path / f"agent{best}.safetensors", meta)
        assert load_agent(path)[1] == meta
        mixer = build_mixer({"kind": "agent", "path": str(path)})
        for k in (2, 3):
            w = mixer.propose(_start(k))
            assert sum(w.values()) == pytest.approx(1.0)
            proposals[best, k] = w["tgt"]
    for k in (2, 3):
        assert proposals[0.7, k] > 1 / k + 0.05 and proposals[0.1, k] < 1 / k - 0.05, proposals


def test_domains_of_one_role_are_interchangeable(tmp_path):
    nets, meta = train_agent(_synthetic(8), epochs=20)
    path = save_agent(nets, tmp_path / "a.safetensors", meta)
    mixer = build_mixer({"kind": "agent", "path": str(path)})
    h = [RoundRecord(1, 0, {"tgt": 0.5, "replay/a": 0.3, "replay/b": 0.2}, {"tgt": 7.0, "a": 4.1, "b": 3.0})]
    start = {"tgt": 8.0, "a": 4.0, "b": 3.2}
    w1 = mixer.propose(_obs(h, 1, start, stage=["tgt"], replay=["replay/a", "replay/b"]))
    w2 = mixer.propose(_obs(h, 1, start, stage=["tgt"], replay=["replay/b", "replay/a"]))
    assert w1 == pytest.approx(w2)
    assert w1["replay/a"] != pytest.approx(w1["replay/b"])  # but they are told apart by their own rows


def test_selection_keeps_the_best_held_out_epoch():
    data = _synthetic()
    nets, meta = train_agent(data, epochs=200, eval_every=10)
    assert 10 <= int(meta["best_epoch"]) <= 200 and int(meta["best_epoch"]) % 10 == 0
    from mixers.agent_train import _tensors, _trajectories

    trajs = _trajectories(data)
    val = _tensors([trajs[(r, 1)] for r in json.loads(meta["val_runs"])], 0.9)
    assert validation_score(nets, val) == pytest.approx(float(meta["val_score"]), abs=6e-5)
    curve = json.loads(meta["val_curve"])  # every check, in order; the kept epoch is its best
    assert [e for e, _ in curve] == list(range(10, 201, 10))
    assert max(curve, key=lambda c: c[1])[0] == int(meta["best_epoch"])
    _, none_held = train_agent(data, epochs=10, val_fraction=0)
    assert none_held["val_trajectories"] == "0" and none_held["val_score"].startswith("n/a")


def test_agent_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        build_mixer({"kind": "agent", "path": str(tmp_path / "nope.safetensors")})
    (tmp_path / "bad.safetensors").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="cannot load agent"):
        load_agent(tmp_path / "bad.safetensors")
    with pytest.raises(CheckpointError, match="at least 4 transitions"):
        train_agent([])
    with pytest.raises(InputError, match="method: unknown 'ppo'; valid: awr, cql"):
        train_agent(_synthetic(4), method="ppo")
    for bad, says in (({"beta": float("nan")}, "beta: must be > 0"), ({"beta": 0}, "beta: must be > 0"),
                      ({"gamma": 1.5}, r"gamma: must be in \[0, 1\]"), ({"epochs": 0}, "epochs: must be >= 1"),
                      ({"cql_alpha": -1}, "cql_alpha: must be >= 0"), ({"val_fraction": 1}, "val_fraction")):
        with pytest.raises(InputError, match=says):  # before any training, whatever the transitions
            train_agent([], **bad)
    nets, meta = train_agent(_synthetic(4), epochs=5)
    save_agent(nets, tmp_path / "old.safetensors", {**meta, "feature_version": "1", "format": "cpt-agent/1"})
    with pytest.raises(CheckpointError, match="feature version 3 .*retrain"):
        load_agent(tmp_path / "old.safetensors")
    assert not list(tmp_path.glob(".*.tmp"))


def test_an_agent_file_is_the_specs_checked_up_front_and_pinned_by_its_hash(tmp_path, synth, monkeypatch):
    """m4: the agent's `path` resolved against the working directory (a resume or a detached job
    from elsewhere failed), a changed file was used silently on resume, and a NaN or foreign file
    was found only when its stage began, after the stages before it had trained."""
    import json

    import pytest
    import torch
    import yaml

    from conftest import tiny_spec
    from mixers.agent import AGENT_FORMAT, FEATURE_VERSION, WINDOW
    from mixers.agent_nets import MixingNets
    from orchestrator.spec import load_spec, parse_spec
    from store.errors import CheckpointError

    meta = {"format": AGENT_FORMAT, "feature_version": FEATURE_VERSION, "hidden": "8", "window": str(WINDOW)}

    def agent(seed: int, poison: bool = False):
        torch.manual_seed(seed)
        nets = MixingNets(len(PER_DOMAIN), len(GLOBAL), 8)
        if poison:
            with torch.no_grad():
                next(nets.parameters())[0] = float("nan")
        return save_agent(nets, tmp_path / "specs" / "agent.safetensors", meta)

    (tmp_path / "specs").mkdir()
    agent(0)
    raw = tiny_spec(synth)
    raw["stages"][1]["mixer"] = {"kind": "agent", "path": "agent.safetensors"}
    raw["stages"][1]["replay"] = {}
    (tmp_path / "specs" / "run.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.chdir(tmp_path)  # not the spec's folder
    spec, _ = load_spec(tmp_path / "specs" / "run.yaml")
    recorded = spec.stages[1].mixer
    assert recorded.path == str(tmp_path / "specs" / "agent.safetensors") and len(recorded.sha256) == 64
    stored = json.dumps(spec.model_dump(mode="json"))  # what the run store keeps, and a resume parses
    assert parse_spec(stored).stages[1].mixer.sha256 == recorded.sha256
    agent(1)  # another file at the same path
    with pytest.raises(CheckpointError, match="agent file changed since the run recorded it"):
        parse_spec(stored)
    agent(0, poison=True)
    with pytest.raises(CheckpointError, match="non-finite"):
        load_spec(tmp_path / "specs" / "run.yaml")
