import math

import pytest
import torch
from pydantic import ValidationError
from transformers import optimization as hf

from store.schedules import WSD, Constant, Cosine, Infinite, Linear, stage_lrs


def _hf_lrs(make, total: int, peak: float) -> list[float]:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=peak)
    sched = make(opt)
    out = []
    for _ in range(total):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_cosine_hand_table():
    s = Cosine(peak_lr=1.0, min_lr=0.1, warmup=0.2)  # 10 steps: 2 warmup, 8 decay
    expected = [0.0, 0.5] + [0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * n / 8)) for n in range(8)]
    assert stage_lrs(s, 10) == pytest.approx(expected)
    assert s.lr(2, 10) == pytest.approx(1.0) and s.lr(10, 10) == pytest.approx(0.1)


def test_cosine_matches_transformers():
    s = Cosine(peak_lr=3e-3, min_lr=3e-4, warmup=0.05)
    hf_lrs = _hf_lrs(lambda o: hf.get_cosine_with_min_lr_schedule_with_warmup(o, 5, 100, min_lr=3e-4), 100, 3e-3)
    assert stage_lrs(s, 100) == pytest.approx(hf_lrs, rel=1e-9, abs=1e-12)


def test_linear_matches_transformers():
    s = Linear(peak_lr=1e-3, min_lr=0.0, warmup=0.1)
    hf_lrs = _hf_lrs(lambda o: hf.get_linear_schedule_with_warmup(o, 5, 50), 50, 1e-3)
    assert stage_lrs(s, 50) == pytest.approx(hf_lrs, abs=1e-12)


@pytest.mark.parametrize("shape", ["1-sqrt", "linear", "cosine"])
def test_wsd_matches_transformers(shape):
    s = WSD(peak_lr=2e-3, min_lr=2e-4, warmup=0.0, decay=0.2, shape=shape)
    hf_lrs = _hf_lrs(lambda o: hf.get_wsd_schedule(o, 0, num_decay_steps=20, num_training_steps=100,
                                                   decay_type=shape, min_lr_ratio=0.1), 100, 2e-3)
    assert stage_lrs(s, 100) == pytest.approx(hf_lrs, rel=1e-9)


def test_wsd_exponential_hand_values():
    s = WSD(peak_lr=1.0, min_lr=0.01, warmup=0.0, decay=0.5, shape="exp")  # 10 steps: 5 stable, 5 decay
    assert stage_lrs(s, 10) == pytest.approx([1.0] * 5 + [0.01 ** (k / 5) for k in range(5)])
    assert s.lr(10, 10) == pytest.approx(0.01)


def test_infinite_phases_hand_table():
    # 20 steps: 2 warmup, 6 cosine cooldown 1 -> 0.5, 6 constant, 6 exponential anneal 0.5 -> 0.05
    s = Infinite(peak_lr=1.0, const_lr=0.5, min_lr=0.05, warmup=0.1, cooldown=0.3, constant=0.3)
    lrs = stage_lrs(s, 20)
    assert lrs[:2] == pytest.approx([0.0, 0.5])
    assert lrs[2:9] == pytest.approx([0.5 + 0.25 * (1 + math.cos(math.pi * n / 6)) for n in range(7)])
    assert lrs[8:14] == pytest.approx([0.5] * 6)
    assert lrs[14:] == pytest.approx([0.5 * (0.1 ** (m / 6)) for m in range(6)])
    assert s.lr(20, 20) == pytest.approx(0.05)


def test_infinite_inv_sqrt_cooldown_ends_at_const():
    s = Infinite(peak_lr=1.0, const_lr=0.4, min_lr=0.1, warmup=0.0, cooldown=0.5, constant=0.5,
                 cooldown_shape="inv_sqrt", timescale=4.0)
    lrs = stage_lrs(s, 10)
    assert lrs[0] == pytest.approx(1.0) and s.lr(5, 10) == pytest.approx(0.4)
    assert all(a >= b for a, b in zip(lrs, lrs[1:], strict=False))


def test_constant_and_rewarm_is_per_stage(synth):
    from orchestrator.plots import run_lrs
    from orchestrator.spec import parse_spec
    from tests_helpers import dump

    assert stage_lrs(Constant(peak_lr=3e-4), 4) == [3e-4] * 4
    # a two-stage run: the LR decays to min_lr at the end of stage 1, then re-warms from 0 in stage 2
    spec = parse_spec(dump(synth))
    lrs, first = run_lrs(spec), spec.stage_steps(0)
    assert len(lrs) == spec.total_steps() == first + spec.stage_steps(1)
    assert lrs[0] == 0.0 and lrs[first] == 0.0 and 3e-4 <= lrs[first - 1] < 5e-4 < lrs[first - 2]
    assert max(lrs[:first]) == pytest.approx(3e-3) and max(lrs[first:]) == pytest.approx(3e-3)


@pytest.mark.parametrize("bad", [
    {"kind": "wsd", "shape": "exp", "min_lr": 0.0},
    {"kind": "infinite", "warmup": 0.5, "cooldown": 0.5, "constant": 0.5},
    {"kind": "cosine", "peak_lr": -1},
])
def test_invalid_schedules_rejected(bad):
    from pydantic import TypeAdapter

    from store.schedules import ScheduleSpec

    with pytest.raises(ValidationError):
        TypeAdapter(ScheduleSpec).validate_python(bad)


def test_inv_sqrt_timescale_drops_faster_early():
    def first_drop(alpha: float) -> float:
        s = Infinite(peak_lr=1.0, const_lr=0.4, min_lr=0.1, warmup=0.0, cooldown=0.5, constant=0.5,
                     cooldown_shape="inv_sqrt", timescale=alpha)
        return 1.0 - s.lr(1, 10)

    assert first_drop(8.0) > first_drop(1.0)


@pytest.mark.parametrize("kind,fields,match", [
    ("cosine", {"peak_lr": 1e-4, "min_lr": 3e-4}, "min_lr 0.0003 must not exceed peak_lr 0.0001"),
    ("linear", {"peak_lr": 1e-4, "min_lr": 3e-4}, "must not exceed peak_lr"),
    ("wsd", {"peak_lr": 1e-3, "min_lr": 2e-3}, "must not exceed peak_lr"),
    ("infinite", {"peak_lr": 1e-3, "const_lr": 2e-3, "min_lr": 1e-4}, "min_lr <= const_lr <= peak_lr"),
    ("infinite", {"peak_lr": 1e-3, "const_lr": 5e-4, "min_lr": 6e-4}, "min_lr <= const_lr <= peak_lr"),
    ("cosine", {"peak_lr": 1e-3, "min_lr": 1e-5, "min_lr_ratio": 0.1}, "min_lr or min_lr_ratio, not both"),
])
def test_schedule_fields_are_checked_against_each_other(kind, fields, match):
    from pydantic import ValidationError

    from store.schedules import SCHEDULES

    with pytest.raises(ValidationError, match=match):
        SCHEDULES[kind](**fields)


def test_min_lr_ratio_sets_min_lr_and_survives_a_dump():
    from store.schedules import SCHEDULES, Cosine

    s = Cosine(peak_lr=3e-3, min_lr_ratio=0.1)
    assert s.min_lr == pytest.approx(3e-4)
    again = SCHEDULES["cosine"](**s.model_dump())  # plans carry the dump; it must validate again
    assert again == s


def test_every_registered_schedule_warms_up_stays_in_bounds_and_is_in_the_spec_union():
    """Each kind the registry knows validates through the spec's union and computes its own LR:
    linear warmup from 0 to peak (transformers' convention, written out here), never above peak or
    below 0, and a decaying schedule ends the stage at its min_lr."""
    from pydantic import TypeAdapter

    from store.schedules import SCHEDULES, Decaying, ScheduleSpec

    assert set(SCHEDULES) == {"cosine", "linear", "wsd", "infinite", "constant"}
    for kind in SCHEDULES:
        sched = TypeAdapter(ScheduleSpec).validate_python({"kind": kind, "warmup": 0.1})
        assert type(sched) is SCHEDULES[kind]
        lrs = [sched.lr(step, 50) for step in range(51)]
        assert lrs[:5] == pytest.approx([sched.peak_lr * t / 5 for t in range(5)]), kind
        assert lrs[5] == pytest.approx(sched.peak_lr), kind
        assert all(0 <= x <= sched.peak_lr for x in lrs), kind
        if isinstance(sched, Infinite):  # the default phases fill the stage: it ends at its constant LR
            assert lrs[-1] == pytest.approx(sched.const_lr)
        elif isinstance(sched, Decaying):
            assert lrs[-1] == pytest.approx(sched.min_lr), kind


def test_a_schedule_without_its_own_lr_or_tag_is_refused_when_registered():
    from typing import Literal

    from store.schedules import Decaying, register

    with pytest.raises(TypeError, match="must define its own lr"):
        @register
        class Forgot(Decaying):
            kind: Literal["forgot"] = "forgot"

    with pytest.raises(TypeError, match="needs a `kind"):
        @register
        class Untagged(Decaying):
            def lr(self, step: int, total: int) -> float:
                return self.peak_lr
