"""World size is a runtime choice: a run checkpointed on N ranks resumes on M (`cpt runs resume
--workers M`), and gives the losses of an uninterrupted run: the global batch, the data order and
the sharded checkpoints do not depend on N."""

import json
from pathlib import Path

import pytest

from conftest import GROUPS, recorded_run, tiny_spec
from orchestrator.controller import Controller, SilentReporter
from orchestrator.submit import resize_run
from store.errors import SpecError


def _spec(synth, workers: int) -> dict:
    return tiny_spec(synth, resources={"workers": workers, "cpus_per_worker": 1})


class StopAfterStage1(SilentReporter):
    def __init__(self, store, run_id):
        self.store, self.run_id = store, run_id

    def round_finished(self, plan, result):
        if (plan.stage_index, plan.round_index) == (0, 1):
            self.store.request_cancel(self.run_id)


def _losses(store, run_id):
    done = [r.result for r in store.rounds(run_id, status="finished")]
    return [x for r in done for x in r.train_losses], done[-1].eval_losses, [r.workers for r in done]


def test_a_run_checkpointed_on_n_ranks_resumes_on_m_with_the_uninterrupted_losses(tmp_path, synth, ray_local):
    home, store, ref = recorded_run(tmp_path / "ref", _spec(synth, 1))
    assert Controller(store, home, ref, tracking=False, groups=GROUPS).run() == "finished"
    ref_steps, ref_eval, _ = _losses(store, ref)

    for first, then in ((2, 1), (1, 2)):
        home, store, run_id = recorded_run(tmp_path / f"{first}-{then}", _spec(synth, first))

        stop = StopAfterStage1(store, run_id)
        assert Controller(store, home, run_id, stop, tracking=False, groups=GROUPS).run() == "cancelled"
        resize_run(store, run_id, then)
        assert Controller(store, home, run_id, tracking=False, groups=GROUPS).run() == "finished"
        steps, final, workers = _losses(store, run_id)
        assert workers == [first, first, then, then]
        cut = store.rounds(run_id, status="finished")[1].checkpoint_uri
        assert json.loads((Path(cut) / "meta.json").read_text())["world_size"] == first
        assert len(list(Path(cut).glob("__*_0.distcp"))) == first  # each rank wrote its own part
        assert steps == pytest.approx(ref_steps, rel=1e-4), (first, then)
        assert final == pytest.approx(ref_eval, rel=1e-4), (first, then)
        assert f"resources.workers {first} -> {then}" in [e.message for e in store.events(run_id)]


def test_a_resize_the_batch_cannot_take_is_refused(tmp_path, synth):
    home, store, run_id = recorded_run(tmp_path, _spec(synth, 1))
    with pytest.raises(SpecError, match="batch_size 4 must divide evenly over resources.workers 3"):
        resize_run(store, run_id, 3)
    assert store.get_run(run_id).spec_json["resources"]["workers"] == 1
