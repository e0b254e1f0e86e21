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


class StopAfter(SilentReporter):
    def __init__(self, store, run_id, at: tuple[int, int]):
        self.store, self.run_id, self.at = store, run_id, at

    def round_finished(self, plan, result):
        if (plan.stage_index, plan.round_index) == self.at:
            self.store.request_cancel(self.run_id)


def _losses(store, run_id):
    done = [r.result for r in store.rounds(run_id, status="finished")]
    return [x for r in done for x in r.train_losses], done[-1].eval_losses, [r.workers for r in done]


def test_a_run_checkpointed_on_n_ranks_resumes_on_m_with_the_uninterrupted_losses(tmp_path, synth, ray_local):
    """One run on 2 ranks, stopped after stage 1 and resumed on 1: per-step and final losses equal a
    1-rank run that was never stopped (1 -> 2: the elastic scale-up in tests/orchestrator/test_nodes.py)."""
    home, store, run_id = recorded_run(tmp_path / "resized", _spec(synth, 2))
    stop = StopAfter(store, run_id, (0, 1))
    assert Controller(store, home, run_id, stop, tracking=False, groups=GROUPS).run() == "cancelled"
    resize_run(store, run_id, 1)
    assert Controller(store, home, run_id, tracking=False, groups=GROUPS).run() == "finished"
    steps, final, workers = _losses(store, run_id)
    # the reference after: it takes over the resumed run's idle 1-rank group (one group start fewer)
    ref_home, ref_store, ref = recorded_run(tmp_path / "ref", _spec(synth, 1))
    assert Controller(ref_store, ref_home, ref, tracking=False, groups=GROUPS).run() == "finished"
    ref_steps, ref_eval, _ = _losses(ref_store, ref)
    assert workers == [2, 2, 1, 1]
    cut = Path(store.rounds(run_id, status="finished")[1].checkpoint_uri)  # what the resume read
    assert json.loads((cut / "meta.json").read_text())["world_size"] == 2
    assert len(list(cut.glob("__*_0.distcp"))) == 2  # each rank its own part
    assert steps == pytest.approx(ref_steps, rel=1e-4)
    assert final == pytest.approx(ref_eval, rel=1e-4)
    assert "resources.workers 2 -> 1" in [e.message for e in store.events(run_id)]


def test_a_resize_the_batch_cannot_take_is_refused(tmp_path, synth):
    home, store, run_id = recorded_run(tmp_path, _spec(synth, 1))
    with pytest.raises(SpecError, match="batch_size 4 must divide evenly over resources.workers 3"):
        resize_run(store, run_id, 3)
    assert store.get_run(run_id).spec_json["resources"]["workers"] == 1
