"""Fuzzing the run spec: any YAML document gives a RunSpec or one CptError, never a traceback."""

import contextlib

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import tiny_spec
from orchestrator.spec import parse_spec
from store.errors import CptError

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**12), st.floats(allow_nan=True),
                    st.text(max_size=12))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                      st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                      max_leaves=8)
PATHS = [("name",), ("seed",), ("seq_len",), ("batch_size",), ("domains",), ("stages",), ("model",),
         ("model", "hidden_size"), ("stages", 0), ("stages", 0, "tokens"), ("stages", 0, "rounds"),
         ("stages", 0, "schedule"), ("stages", 0, "schedule", "kind"), ("stages", 1, "mixer"),
         ("stages", 1, "mixer", "weights"), ("stages", 1, "replay", "fraction"), ("resources", "cpus"),
         ("tracking",), ("eval_batches",), ("optimizer", "betas")]


def _set(doc, path, value):
    for key in path[:-1]:
        doc = doc[key]
    doc[path[-1]] = value


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=st.lists(st.tuples(st.sampled_from(PATHS), values), min_size=1, max_size=3))
def test_mutated_specs_never_raise_anything_but_cpt_errors(synth, edits):
    doc = tiny_spec(synth)
    for path, value in edits:
        # an earlier edit may have replaced the parent: the document is still worth parsing
        with contextlib.suppress(KeyError, IndexError, TypeError):
            _set(doc, path, value)
    try:
        parse_spec(yaml.safe_dump(doc))
    except CptError as exc:
        assert str(exc).strip()


@settings(max_examples=150, deadline=None)
@given(text=st.text(max_size=200))
def test_arbitrary_text_never_raises_anything_but_cpt_errors(text):
    try:
        parse_spec(text)
    except CptError as exc:
        assert str(exc).strip()


NUMBERS = [("seed",), ("seq_len",), ("batch_size",), ("micro_batch_size",), ("eval_batches",),
           ("model", "hidden_size"), ("model", "num_layers"), ("stages", 0, "tokens"), ("stages", 0, "rounds"),
           ("stages", 0, "schedule", "peak_lr"), ("stages", 0, "schedule", "min_lr"),
           ("stages", 0, "schedule", "warmup"), ("stages", 1, "replay", "fraction"), ("optimizer", "eps"),
           ("optimizer", "weight_decay"), ("optimizer", "grad_clip"), ("resources", "cpus"),
           ("resources", "workers"), ("resources", "max_attempts"), ("stages", 1, "sample_loss", "r")]
BAD = st.sampled_from([float("nan"), float("inf"), float("-inf"), 1e300, -1e300, -1, 10**30])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(NUMBERS), value=BAD)
def test_bad_numbers_are_rejected_naming_the_field(synth, path, value):
    from store.errors import SpecError

    doc = tiny_spec(synth)
    doc["stages"][1]["sample_loss"] = {"kind": "linupper"}
    target = doc
    for key in path[:-1]:
        target = target[key] if isinstance(key, int) else target.setdefault(key, {})
    target[path[-1]] = value
    try:
        parse_spec(yaml.safe_dump(doc))
    except SpecError as exc:
        # the field is named: its full path, or its parent's path and its own name (a cross-field check)
        parent, name = ".".join(str(p) for p in path[:-1]), str(path[-1]).replace("cpus", "cpus_per_worker")
        assert f"{parent}.{name}" in str(exc) or (parent in str(exc) and name in str(exc)), str(exc)
    else:
        raise AssertionError(f"{path} = {value!r} was accepted")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(weights=st.lists(st.sampled_from([float("nan"), float("inf"), -0.5, 2.0]), min_size=2, max_size=2))
def test_bad_mixer_weights_are_rejected(synth, weights):
    from store.errors import SpecError

    doc = tiny_spec(synth)
    doc["stages"][1]["mixer"] = {"kind": "static", "weights": {"de": weights[0], "en": weights[1]}}
    try:
        parse_spec(yaml.safe_dump(doc))
    except SpecError as exc:
        assert "stages.1.mixer" in str(exc)
    else:
        raise AssertionError(f"weights {weights} accepted")
