"""The round planner without Ray, MLflow or SQL: plans, resume, retries, observations, mixer state.

A run is simulated round by round: each plan's "result" carries the end cursors the ranks would
report (corpus.order is the same pure function they use) and made-up losses, so what the
planner does with a run's history is checked exactly, in milliseconds.
"""

from pathlib import Path

import pytest
import yaml

from corpus import order
from mixers.base import build_mixer, mixer_names
from orchestrator.planner import DataInfo, DomainSize, Finished, RoundPlanner
from orchestrator.spec import parse_spec
from store.errors import DataError
from store.records import RoundResult

SIZES = {"en": 400, "de": 300, "code": 50}


def _spec(**stage2) -> dict:
    return {
        "name": "plan", "seed": 3, "tokenizer": "/data/tok.json", "seq_len": 8, "batch_size": 4,
        "domains": {d: f"/data/{d}" for d in SIZES},
        "stages": [
            {"name": "s1", "domains": ["en"], "tokens": 8 * 4 * 6, "rounds": 2},
            {"name": "s2", "domains": ["de"], "tokens": 8 * 4 * 9, "rounds": 3, "replay": {"fraction": 0.25},
             **stage2},
        ],
    }


def _planner(raw: dict, workdir: Path = Path("/runs/r1")) -> RoundPlanner:
    spec = parse_spec(yaml.safe_dump(raw))
    data = DataInfo("tok", 64, {d: n * 8 for d, n in SIZES.items()})
    return RoundPlanner(spec, "r1", workdir, data, lambda name: f"{workdir}/checkpoints/{name}")


def _size(planner: RoundPlanner, changed: frozenset = frozenset()):
    def size(d: str) -> DomainSize:
        n = SIZES.get(d.removeprefix("replay/"), 0)
        return DomainSize(n, f"{d}-{'v2' if d in changed else 'v1'}", planner.domain_paths()[d])

    return size


def _result(plan, losses: dict[str, float]) -> RoundResult:
    """What the ranks would report: the cursors after the round (the pure function they use too)."""
    sizes = {d: SIZES[d.removeprefix("replay/")] for d in plan.weights}
    end = order.end_cursors(plan.cursors, plan.weights, sizes, plan.batch_size, plan.num_steps)
    return RoundResult(checkpoint=plan.checkpoint_dir, eval_losses=losses,
                       eval_before={d: 5.0 for d in losses} if plan.eval_before else None,
                       train_losses=[1.0] * plan.num_steps, domain_train_losses=dict(losses), lrs=[],
                       tokens=plan.num_steps * plan.batch_size * plan.seq_len, domain_tokens={}, tokens_per_s=1.0,
                       wall_s=1.0, cursors=end, domain_loss_trace={d: [losses.get(d, 1.0)] * plan.num_steps
                                                                    for d in plan.weights})


def _simulate(planner: RoundPlanner, until: int | None = None, done: list[Finished] | None = None):
    """Plan and 'run' every round (stopping after `until` rounds); returns the finished records."""
    done = list(done or [])
    spec = planner.spec
    todo = [(i, r) for i in range(len(spec.stages)) for r in range(spec.stages[i].rounds)][len(done):]
    mixers = {}
    for i, r in todo[:until]:
        if i not in mixers:
            mixers[i] = build_mixer(spec.stages[i].mixer)
            planner.restore(mixers[i], i, done)
        obs = planner.observation(i, r, done, {})
        weights = planner.propose(mixers[i], obs)
        plan = planner.plan(i, r, weights, 1, done, _size(planner))
        k = len(done)
        res = _result(plan, {d: 4.0 - 0.1 * k - (0.05 * k if d in spec.stages[i].domains else 0) for d in SIZES})
        done.append(Finished(i, r, weights, res.eval_losses, plan.checkpoint_dir, plan, res,
                             mixers[i].state_dict()))
    return done


def test_a_run_plans_rounds_that_hand_on_cursors_checkpoints_and_optimizer_state():
    planner = _planner(_spec())
    done = _simulate(planner)
    plans = [x.plan for x in done]
    assert [(p.stage_index, p.round_index, p.stage_step_start, p.num_steps) for p in plans] == [
        (0, 0, 0, 3), (0, 1, 3, 3), (1, 0, 0, 3), (1, 1, 3, 3), (1, 2, 6, 3)]
    assert [p.global_step_start for p in plans] == [0, 3, 6, 9, 12]
    assert [p.eval_before for p in plans] == [True, False, False, False, False]
    assert [p.init_checkpoint for p in plans] == [None, *[x.checkpoint for x in done[:-1]]]
    assert [p.load_optimizer for p in plans] == [False, True, False, True, True]  # reset at the stage start
    assert plans[2].checkpoint_dir == "/runs/r1/checkpoints/s1-r0-a1"
    for prev, nxt in zip(done[:-1], plans[1:], strict=True):  # each round starts exactly where the last ended
        assert {d: nxt.cursors[d] for d in prev.result.cursors} == prev.result.cursors
    assert plans[0].cursors == {"en": {"epoch": 0, "pos": 0, "data": "en-v1"}}
    assert plans[2].weights == pytest.approx({"de": 0.75, "en": 0.25})  # fixed_replay at 25%
    assert planner.lr_segment(plans[3]) == {**plans[3].schedule.model_dump(), "stage_steps": 9, "first": 3,
                                            "count": 3}


def test_resume_and_retry_plan_the_same_round():
    planner = _planner(_spec())
    whole = _simulate(planner)
    resumed = _simulate(_planner(_spec()), done=_simulate(planner, until=3))  # a new controller after 3 rounds
    assert [x.plan for x in resumed] == [x.plan for x in whole]
    done = whole[:3]
    obs = planner.observation(1, 1, done, {})
    first = planner.plan(1, 1, planner.propose(build_mixer(planner.spec.stages[1].mixer), obs), 1, done,
                         _size(planner))
    retry = planner.plan(1, 1, first.weights, 2, done, _size(planner))
    assert retry.checkpoint_dir.endswith("s1-r1-a2") and retry.attempt == 2
    assert {k: v for k, v in vars(retry).items() if k not in ("attempt", "checkpoint_dir")} == \
           {k: v for k, v in vars(first).items() if k not in ("attempt", "checkpoint_dir")}


def test_the_observation_carries_history_stage_start_and_replay_sizes():
    planner = _planner(_spec())
    done = _simulate(planner, until=3)
    first = planner.observation(0, 0, [], {})
    assert first.history == [] and first.start_losses == {}
    in_stage_1 = planner.observation(0, 1, done[:1], {})
    assert in_stage_1.start_losses == {d: 5.0 for d in SIZES}  # measured before any training
    obs = planner.observation(1, 1, done, {"de": 2.0})
    assert obs.start_losses == done[1].eval_losses  # where stage 1 ended
    assert [(h.stage_index, h.round_index) for h in obs.history] == [(0, 0), (0, 1), (1, 0)]
    assert obs.history[-1].domain_loss_trace == done[2].result.domain_loss_trace
    assert (obs.stage_domains, obs.replay_domains, obs.replay_fraction) == (["de"], ["en"], 0.25)
    assert obs.reference_losses == {"de": 2.0} and obs.seed == 3
    buffered = _planner(_spec(replay={"buffer": {"tokens": 9 * 8}}, mixer={"kind": "proportional"}))
    assert buffered.observation(1, 0, done, {}).domain_tokens["replay/en"] == SIZES["en"] * 8


@pytest.mark.parametrize("kind", [k for k in mixer_names() if k != "static"])
def test_every_mixer_continues_the_same_policy_after_a_resume(kind, tmp_path):
    config = {"kind": kind}
    if kind == "agent":
        config["path"] = str(_tiny_agent(tmp_path))
    if kind == "doremi":
        config["reference"] = {"en": 3.0, "de": 3.0}
    stage2 = {"mixer": config}
    if kind in ("fixed_replay", "temperature", "proportional"):
        stage2["replay"] = {"fraction": 0.25}
    else:
        stage2["replay"] = {"fraction": 0.0}
    planner = _planner(_spec(**stage2))
    whole = _simulate(planner)
    for cut in range(1, len(whole)):  # a controller that stopped after any round
        again = _simulate(_planner(_spec(**stage2)), done=whole[:cut])
        assert [x.weights for x in again] == [x.weights for x in whole], cut
        assert [x.mixer_state for x in again] == [x.mixer_state for x in whole], cut


def test_static_weights_and_a_commit_record():
    planner = _planner(_spec(mixer={"kind": "static", "weights": {"de": 0.6, "en": 0.4}}, replay={}))
    done = _simulate(planner)
    assert [x.weights for x in done[2:]] == [{"de": 0.6, "en": 0.4}] * 3
    obs = planner.observation(1, 2, done[:4], {})
    record = planner.commit(obs, done[4].weights, done[4].result, "static")
    assert record["domains"] == ["de", "en"] and record["action"] == [0.6, 0.4]
    assert record["done"] and record["num_domains"] == 2 and record["mixer"] == "static"
    # balanced: the mean relative change of the target (de: 3.55 -> 3.4) and source (en: 3.7 -> 3.6) losses
    assert record["reward"] == pytest.approx(-0.5 * ((3.4 - 3.55) / 3.55 + (3.6 - 3.7) / 3.7))


def test_max_epochs_and_changed_shards_are_refused_before_a_round_runs():
    planner = _planner(_spec())
    done = _simulate(planner, until=2)
    small = {**_spec(), "stages": [_spec()["stages"][0], {**_spec()["stages"][1], "max_epochs": {"en": 1}}]}
    tight = _planner(small)
    weights = {"de": 0.5, "en": 0.5}
    with pytest.raises(DataError, match=r"stages\.1\.max_epochs\.en: round 1\.0 would read"):
        tight.plan(1, 0, weights, 1, done, lambda d: DomainSize(6, "en-v1" if d == "en" else "de-v1", d))
    with pytest.raises(DataError, match="'en' .* changed since the run last read it"):
        planner.plan(1, 0, weights, 1, done, _size(planner, changed=frozenset({"en"})))


def test_replay_buffers_restart_when_refilled_and_take_their_own_stage_spec():
    raw = _spec(replay={"buffer": {"tokens": 9 * 16}})
    raw["stages"].append({"name": "s3", "domains": ["code"], "tokens": 8 * 4 * 3,
                          "replay": {"buffer": {"tokens": 9 * 4, "policy": "fifo"}, "sources": ["de"],
                                     "fraction": 0.5}})
    planner = _planner(raw)
    done = _simulate(planner, until=2)
    fills = planner.replay_fill(0, done)
    assert [(f.domain, str(f.folder)) for f in fills] == [("en", "/runs/r1/replay/en")]
    assert fills[0].before == done[0].plan.cursors["en"] and fills[0].after == done[1].result.cursors["en"]
    assert planner.buffer_spec("en", 0).tokens == 9 * 16
    assert planner.buffer_spec("de", 1).model_dump() == {"tokens": 9 * 4, "policy": "fifo"}
    assert planner.domain_paths()["replay/de"] == "/runs/r1/replay/de"
    plan = planner.plan(1, 0, {"de": 0.5, "replay/en": 0.5}, 1, done,
                        _size(planner, changed=frozenset({"replay/en"})))
    assert plan.cursors["replay/en"] == {"epoch": 0, "pos": 0, "data": "replay/en-v2"}


def _tiny_agent(folder: Path) -> Path:
    import torch

    from mixers.agent import AGENT_FORMAT, FEATURE_VERSION, GLOBAL, PER_DOMAIN, WINDOW, save_agent
    from mixers.agent_nets import MixingNets

    torch.manual_seed(0)
    nets = MixingNets(len(PER_DOMAIN), len(GLOBAL), 8)
    return save_agent(nets, folder / "agent.safetensors", {
        "format": AGENT_FORMAT, "feature_version": FEATURE_VERSION, "hidden": "8", "window": str(WINDOW)})
