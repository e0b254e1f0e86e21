from pathlib import Path

import pytest
import yaml

from conftest import GROUPS
from orchestrator.data_check import check_data
from orchestrator.spec import load_spec, parse_spec
from store.errors import DataError, RegistryError, SpecError
from tests_helpers import dump

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_tiny_spec_resolves(spec_file):
    spec, text = load_spec(spec_file())
    assert spec.stage_steps(0) == 8 and spec.round_bounds(0) == [(0, 4), (4, 4)]
    assert spec.stage_starts() == [0, 8] and spec.replay_domains(1) == ["en"]
    assert "name: tiny" in text
    check_data(spec)


def test_relative_paths_resolve_against_spec_folder(tmp_path, synth):
    (tmp_path / "sub").mkdir()
    spec = parse_spec(dump(synth, tokenizer="tok.json"), base=tmp_path / "sub")
    assert spec.tokenizer == str(tmp_path / "sub" / "tok.json")


@pytest.mark.parametrize("example", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_examples_parse(example, monkeypatch, tmp_path):
    monkeypatch.setenv("CPT_HOME", str(tmp_path))
    spec, _ = load_spec(example)
    assert spec.total_steps() > 0


@pytest.mark.parametrize("mutate,match", [
    (lambda s: s.update(bogus=1), r"bogus: unknown field"),
    (lambda s: s["stages"][0].update(domains=["fr"]), r"stages\.0\.domains: unknown domain 'fr'"),
    (lambda s: s["stages"][1].update(mixer={"kind": "magic"}), r"stages\.1\.mixer\.kind: unknown mixer 'magic'"),
    (lambda s: s["stages"][1].update(mixer={"kind": "static", "weights": {"de": 1.2, "en": -0.2}}),
     r"stages\.1\.mixer\.weights"),
    (lambda s: s["stages"][1].update(mixer={"kind": "static", "weights": {"de": 0.5, "en": 0.3}}),
     r"sum to 1"),
    (lambda s: s["stages"][1].update(mixer={"kind": "static", "weights": {"de": 0.5, "code": 0.5}}),
     r"not trained in this stage"),
    (lambda s: s["stages"][1].update(mixer={"kind": "temperature", "temperature": -1}),
     r"stages\.1\.mixer\.temperature: .*greater than 0"),
    (lambda s: s["stages"][1].update(mixer={"kind": "temperature", "beta": 1}),
     r"stages\.1\.mixer\.beta: unknown field"),
    (lambda s: s["stages"][1].update(mixer={"fraction": 0.5}), r"stages\.1\.mixer\.kind: a mixer needs a kind"),
    (lambda s: s["stages"][1].update(mixer={"kind": ["static"]}),
     r"stages\.1\.mixer\.kind: unknown mixer \['static'\]"),
    (lambda s: s["stages"][1].update(mixer="static"), r"stages\.1\.mixer: expected a mapping"),
    (lambda s: s["stages"][0].update(rounds=100), r"stages\.0\.rounds: 100 rounds but only 8 steps"),
    (lambda s: s["stages"][0].update(schedule={"kind": "zigzag"}), r"stages\.0\.schedule"),
    (lambda s: s["stages"][0]["schedule"].update(peak_lr=-1), r"stages\.0\.schedule\.peak_lr"),
    (lambda s: s["model"].update(hidden_size=33), r"model: .*divisible"),
    (lambda s: s["stages"][1]["replay"].update(fraction=1.5), r"stages\.1\.replay\.fraction"),
    (lambda s: s.update(name="bad name!"), r"name: "),
    (lambda s: s.pop("tokenizer"), r"tokenizer: Field required"),
    (lambda s: s.update(stages=[]), r"stages: "),
    (lambda s: s.update(resources={"workers": {"min": 3, "max": 2}}), r"resources: .*min 3 is above max 2"),
    (lambda s: s.update(resources={"workers": {"min": 1, "most": 2}}), r"resources: .*\{min: A, max: B\}"),
    (lambda s: s.update(resources={"workers": {"min": 3, "max": 4}}),
     r"resources\.workers\.min: batch_size 4 must divide evenly over resources\.workers 3"),
    (lambda s: s.update(resources={"workers": {"min": 1, "max": 3}}), r"resources\.workers\.max: batch_size 4"),
])
def test_spec_errors_name_the_field(synth, mutate, match):
    from conftest import tiny_spec

    raw = tiny_spec(synth)
    mutate(raw)
    with pytest.raises((SpecError, RegistryError), match=match):
        parse_spec(yaml.safe_dump(raw))


@pytest.mark.parametrize("text,match", [
    ("name: [unclosed", r"malformed YAML at line 1"),
    ("- a\n- b\n", r"must be a YAML mapping"),
    ("", r"must be a YAML mapping"),
])
def test_bad_yaml(text, match):
    with pytest.raises(SpecError, match=match):
        parse_spec(text, "run.yaml")


def test_data_errors_name_the_file(tmp_path, synth):
    spec = parse_spec(dump(synth, domains={"en": str(tmp_path / "missing"), "de": str(synth["domains"]["de"])},
                           stages=[{"name": "a", "domains": ["en"], "tokens": 1024}]))
    with pytest.raises(DataError, match="missing: shard folder does not exist"):
        check_data(spec)
    spec = parse_spec(dump(synth, tokenizer=str(tmp_path / "none.json")))
    with pytest.raises(DataError, match="none.json: tokenizer file does not exist"):
        check_data(spec)


def test_missing_spec_file(tmp_path):
    with pytest.raises(SpecError, match="spec file does not exist"):
        load_spec(tmp_path / "nope.yaml")


def test_resources_old_names_map_to_per_worker(synth):
    spec = parse_spec(dump(synth, resources={"cpus": 2, "gpus": 0}))
    assert (spec.resources.workers, spec.resources.cpus_per_worker, spec.resources.gpus_per_worker) == (1, 2, 0)


@pytest.mark.parametrize("over,match", [
    ({"resources": {"cpus": 1, "cpus_per_worker": 2}}, r"resources: .*cpus_per_worker .* or the older cpus, not both"),
    ({"resources": {"workers": 3}}, r"batch_size 4 must divide evenly over resources.workers 3"),
    ({"resources": {"workers": 2}, "micro_batch_size": 3}, r"micro_batch_size 3 must divide each rank's share .*= 2"),
    ({"resources": {"precision": "bf16-mixed"}}, r"resources: .*bf16-mixed needs gpus_per_worker > 0"),
    ({"resources": {"strategy": "tp"}}, r"resources.strategy: .*'ddp' or 'fsdp'"),
    ({"resources": {"workers": 2, "strategy": "fsdp"}}, r"resources: .*strategy fsdp needs gpus_per_worker > 0"),
    ({"resources": {"placement": "around"}}, r"resources.placement: .*'pack' or 'spread'"),
    ({"resources": {"workers": 0}}, r"resources.workers: .*greater than or equal to 1"),
])
def test_resource_conflicts_are_explained(synth, over, match):
    with pytest.raises(SpecError, match=match):
        parse_spec(dump(synth, **over))


@pytest.mark.parametrize("over,match", [
    ({"checkpoints": {"uri": "ftp://host/ckpt"}}, r"checkpoints.uri: unsupported URI scheme 'ftp://'; use a path or "
                                                  r"one of: file://, s3://"),
    ({"tracking": {"mlflow_uri": "bogus://x"}}, r"tracking.mlflow_uri: unsupported URI scheme 'bogus://'.*http://"),
    ({"domains": {"en": "http://host/en"}}, r"domains: domain 'en': unsupported URI scheme 'http://'"),
])
def test_locations_with_a_scheme_nothing_opens_are_refused_up_front(synth, over, match):
    """Before: a checkpoints.uri of ftp:// failed after the first round had trained, and an MLflow
    URI of an unknown scheme was a traceback at submit."""
    with pytest.raises(SpecError, match=match):
        parse_spec(dump(synth, **over))


@pytest.mark.parametrize("over", [{"checkpoints": {"uri": "s3://bucket/prefix?endpoint_override=h:9000"}},
                                  {"tracking": {"mlflow_uri": "postgresql+psycopg2://u@host/db"}},
                                  {"tracking": {"mlflow_uri": "http://127.0.0.1:5000"}}])
def test_locations_with_known_schemes_parse(synth, over):
    parse_spec(dump(synth, **over))


def _epoch_spec(synth, mixer: dict, max_epochs: dict, tokens: int = 32 * 4 * 100) -> str:
    from conftest import tiny_spec

    spec = tiny_spec(synth)
    spec["stages"] = [{"name": "s1", "domains": ["en"], "tokens": tokens, "rounds": 2, "mixer": mixer,
                       "max_epochs": max_epochs}]
    return yaml.safe_dump(spec)


def test_max_epochs_known_at_validation_is_exit_2_naming_the_field(synth):
    with pytest.raises(SpecError, match=r"stages.0.max_epochs: domain 'de' is not trained in this stage"):
        parse_spec(_epoch_spec(synth, {"kind": "fixed_replay"}, {"de": 1}))
    with pytest.raises(SpecError, match=r"max_epochs must be >= 1"):
        parse_spec(_epoch_spec(synth, {"kind": "fixed_replay"}, {"en": 0}))
    # 400 sequences of a domain that holds far fewer: more than 1 epoch, whatever came before
    spec = parse_spec(_epoch_spec(synth, {"kind": "static", "weights": {"en": 1.0}}, {"en": 1}))
    with pytest.raises(SpecError, match=r"stages.0.max_epochs.en: the stage reads 400 sequences of 'en'"):
        check_data(spec)
    check_data(parse_spec(_epoch_spec(synth, {"kind": "static", "weights": {"en": 1.0}}, {"en": 1}, 32 * 4 * 4)))
    check_data(parse_spec(_epoch_spec(synth, {"kind": "temperature"}, {"en": 1})))  # not knowable: run time


@pytest.mark.e2e
def test_max_epochs_exceeded_at_run_time_fails_before_training(tmp_path, synth, ray_local):
    from conftest import recorded_run
    from orchestrator.controller import Controller

    home, store, run_id = recorded_run(tmp_path / "home", yaml.safe_load(  # round 0 alone reads > 1 epoch
        _epoch_spec(synth, {"kind": "temperature"}, {"en": 1}, 32 * 4 * 200)))
    with pytest.raises(DataError, match=r"stages.0.max_epochs.en: round 0.0 would read domain 'en' into epoch 2"):
        Controller(store, home, run_id, tracking=False, groups=GROUPS).run()
    assert store.get_run(run_id).status == "failed" and store.rounds(run_id) == []


def test_a_run_whose_data_vanished_before_it_started_is_failed_not_pending(tmp_path, synth):
    import shutil

    from conftest import recorded_run, tiny_spec
    from orchestrator.controller import Controller

    spec = tiny_spec(synth)
    spec["domains"]["en"] = str(shutil.copytree(synth["domains"]["en"], tmp_path / "en"))
    home, store, run_id = recorded_run(tmp_path / "home", spec)
    shutil.rmtree(tmp_path / "en")
    with pytest.raises(DataError, match="shard folder does not exist"):
        Controller(store, home, run_id, tracking=False, groups=GROUPS).run()
    run = store.get_run(run_id)
    assert run.status == "failed" and "does not exist" in run.error


@pytest.mark.parametrize("mixer", [
    {"kind": "doremi", "reference": {"en": 3.0, "de": 3.0}},
    {"kind": "static", "weights": {"de": 0.75, "en": 0.25}},
    {"kind": "fixed_replay", "fraction": 0.1},
    {"kind": "temperature", "pool": True},
    {"kind": "dirichlet"},
])
def test_a_replay_fraction_a_mixer_would_ignore_is_rejected(synth, mixer):
    from conftest import tiny_spec

    spec = tiny_spec(synth)
    spec["stages"][1]["mixer"] = mixer  # stage 2 has replay.fraction 0.25
    with pytest.raises(SpecError, match=r"stages.1.replay.fraction: 0.25 would be ignored"):
        parse_spec(yaml.safe_dump(spec))
    spec["stages"][1]["replay"]["fraction"] = 0.0
    parse_spec(yaml.safe_dump(spec))


def test_the_mixers_that_read_the_replay_fraction_give_it_to_replay(synth):
    from conftest import tiny_spec

    for mixer in ({"kind": "fixed_replay"}, {"kind": "temperature"}, {"kind": "proportional"}):
        spec = tiny_spec(synth)
        spec["stages"][1]["mixer"] = mixer
        run_spec = parse_spec(yaml.safe_dump(spec))
        from mixers.base import Observation, build_mixer

        obs = Observation(stage_index=1, round_index=0, num_rounds=2, stage_domains=["de"], replay_domains=["en"],
                          replay_fraction=run_spec.stages[1].replay.fraction, domain_tokens={"de": 10, "en": 30})
        assert build_mixer(mixer).propose(obs)["en"] == pytest.approx(0.25)


def test_a_buffer_of_a_domain_no_earlier_stage_trains_is_rejected(synth):
    from conftest import tiny_spec

    spec = tiny_spec(synth)
    spec["stages"][1]["replay"] = {"fraction": 0.25, "sources": ["code"], "buffer": {"tokens": 10_000}}
    with pytest.raises(SpecError, match=r"stages.1.replay.sources: 'code' is replayed from a buffer but no earlier"):
        parse_spec(yaml.safe_dump(spec))


def test_mixer_is_a_typed_config_that_round_trips(synth):
    """The mixer is validated into its registered config class (a union over the registry), and
    the resolved spec (what is stored and logged) carries its kind and every parameter."""
    from conftest import tiny_spec
    from mixers.static import TemperatureConfig

    raw = tiny_spec(synth)
    raw["stages"][1]["mixer"] = {"kind": "temperature", "temperature": 2.0}
    raw["stages"][1]["replay"] = {"fraction": 0.0}
    spec = parse_spec(yaml.safe_dump(raw))
    mixer = spec.stages[1].mixer
    assert isinstance(mixer, TemperatureConfig) and mixer.kind == "temperature" and mixer.temperature == 2.0
    dumped = spec.model_dump(mode="json")["stages"][1]["mixer"]
    assert dumped["kind"] == "temperature" and dumped["temperature"] == 2.0 and set(dumped) == set(
        TemperatureConfig.model_fields)
    assert parse_spec(yaml.safe_dump(spec.model_dump(mode="json"))).stages[1].mixer == mixer
    assert type(spec.stages[0].mixer).__name__ == "FixedReplayConfig"  # the default, typed too


def _infinite_pair(synth, first: dict, second: dict) -> dict:
    from conftest import tiny_spec

    raw = tiny_spec(synth)
    raw["stages"][0]["schedule"] = {"kind": "infinite", "peak_lr": 3e-3, "const_lr": 1e-3, "min_lr": 1e-4, **first}
    raw["stages"][1]["schedule"] = {"kind": "infinite", "peak_lr": 3e-3, "const_lr": 1e-3, "min_lr": 1e-4, **second}
    return raw


def test_an_infinite_stage_continues_at_the_previous_constant_lr(synth):
    """resume_const: the second stage starts where the first ended (its constant LR), no re-warm."""
    raw = _infinite_pair(synth, {"warmup": 0.1, "cooldown": 0.4, "constant": 0.5},
                         {"resume_const": True, "constant": 0.5})
    spec = parse_spec(yaml.safe_dump(raw))
    first, second = spec.stages[0].schedule, spec.stages[1].schedule
    assert first.lr(spec.stage_steps(0), spec.stage_steps(0)) == pytest.approx(1e-3)
    lrs = [second.lr(t, spec.stage_steps(1)) for t in range(spec.stage_steps(1))]
    assert lrs[:4] == pytest.approx([1e-3] * 4) and lrs[-1] < 1e-3  # constant from step 0, then the anneal


@pytest.mark.parametrize("first,second,match", [
    ({"warmup": 0.1, "cooldown": 0.4, "constant": 0.3}, {"resume_const": True}, r"anneals to min_lr"),
    ({"warmup": 0.1, "cooldown": 0.4, "constant": 0.5}, {"resume_const": True, "const_lr": 2e-3},
     r"differs from stage 0's"),
    ({"warmup": 0.1, "cooldown": 0.4, "constant": 0.5}, {"resume_const": True, "warmup": 0.1},
     r"warmup must be 0"),
])
def test_resume_const_is_checked_at_validation(synth, first, second, match):
    with pytest.raises(SpecError, match=match):
        parse_spec(yaml.safe_dump(_infinite_pair(synth, first, second)))


def test_resume_const_needs_an_infinite_stage_before(synth):
    from conftest import tiny_spec

    raw = tiny_spec(synth)
    raw["stages"][1]["schedule"] = {"kind": "infinite", "resume_const": True}
    with pytest.raises(SpecError, match=r"stages\.1\.schedule\.resume_const: the previous stage must have an "
                                        r"infinite schedule \(it has cosine\)"):
        parse_spec(yaml.safe_dump(raw))


def test_every_spec_field_is_documented():
    """Every field a spec can hold, mixer configs included, carries a docstring (pydantic reads it as
    the field's description: what `cpt validate --json` and the docs show)."""
    import typing

    from pydantic import BaseModel

    from mixers.base import MIXERS, mixer_names
    from orchestrator.spec import RunSpec

    def models(annotation: object) -> list[type[BaseModel]]:
        found = [annotation] if isinstance(annotation, type) and issubclass(annotation, BaseModel) else []
        return found + [m for arg in typing.get_args(annotation) for m in models(arg)]

    mixer_names()
    seen: set[type[BaseModel]] = set()
    todo = [RunSpec, *(cls.Config for cls in MIXERS.values())]
    undocumented = []
    while todo:
        model = todo.pop()
        if model in seen:
            continue
        seen.add(model)
        for name, field in model.model_fields.items():
            if not field.description:
                undocumented.append(f"{model.__name__}.{name}")
            todo += models(field.annotation)
    assert len(seen) > 20  # the walk reached the nested parts, not only RunSpec
    assert undocumented == []
