import pytest

from mixers.base import Observation, build_mixer, check_weights, mixer_names, with_replay
from store.errors import InputError, RegistryError, SpecError


def _obs(**kw) -> Observation:
    base = dict(stage_index=1, round_index=0, num_rounds=2, stage_domains=["de", "code"], replay_domains=["en"],
                replay_fraction=0.05, domain_tokens={"de": 300, "code": 100, "en": 1000})
    base.update(kw)
    return Observation(**base)


def test_fixed_replay_splits_new_and_replay():
    w = build_mixer({"kind": "fixed_replay"}).propose(_obs())
    assert w == pytest.approx({"de": 0.475, "code": 0.475, "en": 0.05})
    w = build_mixer({"kind": "fixed_replay", "fraction": 0.25}).propose(_obs())
    assert w["en"] == pytest.approx(0.25)
    assert build_mixer({"kind": "fixed_replay"}).propose(_obs(replay_domains=[])) == {"de": 0.5, "code": 0.5}


def test_proportional_and_temperature():
    w = build_mixer({"kind": "proportional", "fraction": 0.0}).propose(_obs())
    assert w == pytest.approx({"de": 0.75, "code": 0.25})
    hot = build_mixer({"kind": "temperature", "temperature": 1000.0, "fraction": 0.0}).propose(_obs())
    assert hot["de"] == pytest.approx(0.5, abs=1e-3)
    pooled = build_mixer({"kind": "proportional", "pool": True}).propose(_obs())
    assert pooled == pytest.approx({"de": 300 / 1400, "code": 100 / 1400, "en": 1000 / 1400})
    tau2 = build_mixer({"kind": "temperature", "temperature": 2.0, "pool": True}).propose(_obs())
    z = 300**0.5 + 100**0.5 + 1000**0.5
    assert tau2["en"] == pytest.approx(1000**0.5 / z)


def test_static_checks_domains():
    m = build_mixer({"kind": "static", "weights": {"de": 0.9, "en": 0.1}})
    assert m.propose(_obs()) == {"de": 0.9, "en": 0.1}
    with pytest.raises(InputError, match="unknown domain"):
        build_mixer({"kind": "static", "weights": {"fr": 1.0}}).propose(_obs())


def test_registry_errors_list_valid_names():
    with pytest.raises(RegistryError, match="valid: .*fixed_replay.*static"):
        build_mixer({"kind": "nope"})
    with pytest.raises(SpecError, match=r"mixer\.weights: .*sum to 1"):
        build_mixer({"kind": "static", "weights": {"a": 0.5}})
    with pytest.raises(SpecError, match="mixer.bogus"):
        build_mixer({"kind": "fixed_replay", "bogus": 1})
    assert {"static", "fixed_replay", "proportional", "temperature"} <= set(mixer_names())


@pytest.mark.parametrize("weights,match", [
    ({"a": -0.1, "b": 1.1}, "finite number >= 0"),
    ({"a": 0.3, "b": 0.3}, "sum to 1"),
    ({"a": float("nan"), "b": 1.0}, "finite"),
])
def test_check_weights(weights, match):
    with pytest.raises(InputError, match=match):
        check_weights(weights, ["a", "b"])


def test_with_replay_sums_to_one():
    w = with_replay({"x": 2.0, "y": 2.0}, {"z": 5.0}, 0.1)
    assert sum(w.values()) == pytest.approx(1.0) and w["z"] == pytest.approx(0.1)
