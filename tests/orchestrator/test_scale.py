"""The persistent Ray Train worker group: N ranks give the single-process result, ranks survive rounds."""

import os
import signal

import pytest

from conftest import GROUPS, long_spec, recorded_run
from orchestrator import cluster
from orchestrator.controller import Controller, SilentReporter

pytestmark = pytest.mark.e2e


class GroupWatcher(SilentReporter):
    """Records the ranks' pids at every round end; optionally SIGKILLs one rank mid-round once."""

    def __init__(self, kill_rank: int | None = None, at: tuple[int, int] = (0, 1)):
        self.ctl, self.plan, self.pids, self.killed, self.niceness = None, None, [], [], set()
        self.kill_rank, self.at = kill_rank, at

    def round_started(self, plan, stage):
        self.plan = plan

    def progress(self, step, total, loss, lr):
        p = self.plan
        if self.kill_rank is None or self.killed or (p.stage_index, p.round_index) != self.at or p.attempt != 1:
            return
        pid = self.ctl.group.pids()[self.kill_rank]
        os.kill(pid, signal.SIGKILL)
        self.killed.append(pid)

    def round_finished(self, plan, result):
        self.pids.append(self.ctl.group.pids())
        self.niceness |= {os.getpriority(os.PRIO_PROCESS, pid) for pid in self.pids[-1].values()}


def _run(root, spec, reporter=None):
    home, store, run_id = recorded_run(root, spec)
    ctl = Controller(store, home, run_id, reporter, tracking=False, poll_s=0.05, groups=GROUPS)
    if reporter is not None:
        reporter.ctl = ctl
    assert ctl.run() == "finished"
    rounds = store.rounds(run_id, status="finished")
    return store, run_id, [r.result for r in rounds]


def _flat(results):
    return [x for r in results for x in r.train_losses]


TWO = {"resources": {"workers": 2, "cpus_per_worker": 1}, "micro_batch_size": 1}


@pytest.fixture(scope="module")
def one_and_two(tmp_path_factory, synth, long_reference):
    """The same run on 1 process and on 2 ranks x 2 sequences each in micro-batches of 1 (accumulation)."""
    watch = GroupWatcher()
    _, _, two = _run(tmp_path_factory.mktemp("scale") / "two", long_spec(synth, **TWO), watch)
    return long_reference[2], two, watch


def test_two_ranks_with_accumulation_match_one_process_and_the_group_persists(one_and_two):
    one, two, watch = one_and_two
    assert [r.workers for r in two] == [2, 2, 2, 2] and [r.workers for r in one] == [1, 1, 1, 1]
    assert len(_flat(two)) == len(_flat(one)) == 120
    assert _flat(two) == pytest.approx(_flat(one), rel=1e-4)
    for a, b in zip(one, two, strict=True):
        assert b.eval_losses == pytest.approx(a.eval_losses, rel=1e-4)
        assert b.domain_tokens == a.domain_tokens
    # one group for the whole run: the same two rank processes trained every round of both stages
    assert len(watch.pids) == 4 and all(p == watch.pids[0] for p in watch.pids) and len(watch.pids[0]) == 2
    assert all(r.fit_s and r.fit_s < r.wall_s <= r.round_s for r in two)
    # ranks of a cluster cpt started run at the priority of Ray's daemons, not Ray's worker default of 15
    assert watch.niceness == {cluster.WORKER_NICENESS} == {0}


def test_sigkill_of_one_rank_rebuilds_the_group_and_matches_an_uninterrupted_run(tmp_path, synth, one_and_two):
    _, ref, _ = one_and_two
    watch = GroupWatcher(kill_rank=1, at=(0, 1))
    store, run_id, got = _run(tmp_path / "faulty", long_spec(synth, **TWO), watch)
    assert watch.killed, "the round finished before a rank could be killed"
    attempts = [(r.stage_index, r.round_index, r.attempt, r.status) for r in store.rounds(run_id)]
    assert attempts[:3] == [(0, 0, 1, "finished"), (0, 1, 1, "failed"), (0, 1, 2, "finished")]
    assert store.rounds(run_id)[1].checkpoint_uri is None
    assert watch.killed[0] not in watch.pids[1].values()  # attempt 2 ran on a new group
    assert got[-1].eval_losses == pytest.approx(ref[-1].eval_losses, rel=1e-4)
    assert _flat(got) == pytest.approx(_flat(ref), rel=1e-4)


class CorruptRankOnesRows(SilentReporter):
    """At round 0.0's start, overwrite a token inside each sequence that rank 1 (of 2) reads at step
    2 with an id outside the vocabulary: a corrupt row that only rank 1 ever reads."""

    def __init__(self):
        self.hit: list[str] = []

    def round_started(self, plan, stage):
        import numpy as np

        from corpus.sampler import RoundSampler, SequenceSource

        if (plan.stage_index, plan.round_index, plan.attempt) != (0, 0, 1):
            return
        live = {d: SequenceSource.open(d, plan.domain_paths[d], plan.seq_len) for d, w in plan.weights.items() if w}
        sampler = RoundSampler(live, plan.weights, plan.cursors, plan.batch_size, plan.num_steps, plan.seed, 0, 0)
        ids, dom = sampler.step_ids(2)
        per = plan.batch_size // 2
        for i, d in zip(ids[per:], dom[per:], strict=True):
            src = live[sampler.names[d]]
            shard = int(np.searchsorted(src.offsets, i, side="right") - 1)
            path, base = src.data.where(int(shard))
            with open(path, "r+b") as f:  # a token inside the sequence: its neighbours share only the ends
                f.seek(base + 4 * (int(i - src.offsets[shard]) * src.stride + 3))
                f.write(np.int32(src.data.manifest["vocab_size"] + 7).tobytes())
            self.hit.append(path)


def test_a_data_error_on_one_rank_fails_the_round_at_once_and_is_not_retried(tmp_path, synth):
    """M2: rank 1 alone hits a corrupt row. Before, it went on to wait for the next plan while rank 0
    waited in the step's all-reduce until the process-group timeout (30 min), and rank failures at
    group start were retried max_attempts times."""
    import shutil
    import threading
    import time

    from store.errors import DataError

    domains = {}
    for d in ("en", "de"):
        domains[d] = str(shutil.copytree(synth["domains"][d], tmp_path / "data" / d))
    spec = long_spec(synth, **TWO, domains=domains)
    spec["resources"]["max_attempts"] = 3
    home, store, run_id = recorded_run(tmp_path / "home", spec)
    corrupt = CorruptRankOnesRows()
    ctl = Controller(store, home, run_id, corrupt, tracking=False, poll_s=0.05, groups=GROUPS)
    outcome: list[BaseException | str] = []

    def drive():
        try:
            outcome.append(ctl.run())
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            outcome.append(exc)

    t0 = time.monotonic()
    driver = threading.Thread(target=drive, daemon=True)
    driver.start()
    driver.join(180)
    assert not driver.is_alive(), "the round hung: rank 0 waits in a collective for rank 1"
    assert corrupt.hit and isinstance(outcome[0], DataError), outcome
    assert time.monotonic() - t0 < 120
    attempts = store.rounds(run_id)
    assert [(r.stage_index, r.round_index, r.attempt, r.status) for r in attempts] == [(0, 0, 1, "failed")]
    assert "rank 1: DataError" in attempts[0].error and "outside the vocabulary" in attempts[0].error
    assert corrupt.hit[0] in attempts[0].error
    assert store.get_run(run_id).status == "failed"
