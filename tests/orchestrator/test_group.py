"""WorkerGroup's failure text: what the store records when Ray Train gives up on a group."""

from pathlib import Path

from orchestrator.group import WorkerGroup
from store.configs import Resources


def _group(error: BaseException | None) -> WorkerGroup:
    g = WorkerGroup("r1", Resources(workers=2), Path("/nonexistent"))
    g.error = error
    return g


def test_a_failed_group_names_each_rank_and_its_own_exception():
    from ray.train import WorkerGroupError

    # Ray Train's own message puts the cause after a first line that says nothing about it
    err = WorkerGroupError("Training failed due to worker errors:\n[Rank 1 Error Snippet]:\nTraceback ...",
                           {1: ValueError("FSDP is only available on GPU.\nmore detail"),
                            0: RuntimeError("Connection closed by peer")})
    why = _group(err)._why()
    assert why == ("WorkerGroupError: rank 0: RuntimeError: Connection closed by peer; "
                   "rank 1: ValueError: FSDP is only available on GPU.")


def test_other_failures_keep_their_first_line():
    assert _group(RuntimeError("placement group timed out\nstack"))._why() == "RuntimeError: placement group timed out"
    assert _group(None)._why() == "worker group stopped"
