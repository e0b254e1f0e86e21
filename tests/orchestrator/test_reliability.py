"""Fault injection on real runs: worker SIGKILL, disk full during checkpointing, concurrent runs."""

import os
import signal
import subprocess
import threading
from pathlib import Path

import pytest
import yaml

from conftest import GROUPS, recorded_run, tiny_spec
from orchestrator.controller import Controller, SilentReporter
from orchestrator.home import Home
from orchestrator.spec import parse_spec
from orchestrator.submit import create_run
from store.errors import TrainingError
from store.runs import RunStore

pytestmark = pytest.mark.e2e
LONG = {"tokens": 32 * 4 * 60}  # 30 steps per round: long enough to kill mid-round


def _spec(synth, **stage_over):
    spec = tiny_spec(synth)
    for st in spec["stages"]:
        st.update(stage_over)
    return spec


_create = recorded_run


class KillWorkerOnce(SilentReporter):
    """SIGKILLs the (only) rank of the worker group in (stage, round) attempt 1 once it reports progress."""

    def __init__(self, stage: int, rnd: int):
        self.target, self.plan, self.killed, self.ctl = (stage, rnd), None, [], None

    def round_started(self, plan, stage):
        self.plan = plan

    def progress(self, step, total, loss, lr):
        p = self.plan
        if (p.stage_index, p.round_index) != self.target or p.attempt != 1 or self.killed:
            return
        pid = self.ctl.group.pids()[0]
        os.kill(pid, signal.SIGKILL)
        self.killed.append(pid)


def _controller(store, home, run_id, reporter):
    ctl = Controller(store, home, run_id, reporter, tracking=False, poll_s=0.02, groups=GROUPS)
    reporter.ctl = ctl
    return ctl


def test_worker_sigkill_mid_round_is_retried_with_identical_result(tmp_path, synth, long_reference):
    spec = _spec(synth, **LONG)
    ref_store, ref, _ = long_reference

    home, store, run_id = _create(tmp_path / "faulty", spec)
    killer = KillWorkerOnce(0, 1)
    assert _controller(store, home, run_id, killer).run() == "finished"
    assert killer.killed, "the worker finished before it could be killed"
    rounds = store.rounds(run_id)
    assert [(r.stage_index, r.round_index, r.attempt, r.status) for r in rounds][:3] == [
        (0, 0, 1, "finished"), (0, 1, 1, "failed"), (0, 1, 2, "finished")]
    assert "GroupFailed" in rounds[1].error or "WorkerGroupError" in rounds[1].error, rounds[1].error
    assert rounds[1].checkpoint_uri is None
    final = store.rounds(run_id, status="finished")[-1].eval_losses
    assert final == pytest.approx(ref_store.rounds(ref, status="finished")[-1].eval_losses, abs=1e-5)


def test_worker_that_keeps_dying_fails_the_run_after_max_attempts(tmp_path, synth, ray_local):
    spec = _spec(synth, **LONG)
    spec["resources"]["max_attempts"] = 2
    home, store, run_id = _create(tmp_path, spec)

    class KillAlways(KillWorkerOnce):
        def progress(self, step, total, loss, lr):
            p = self.plan
            if (p.stage_index, p.round_index) == (0, 0) and p.attempt not in {k for k, _ in self.killed}:
                pid = self.ctl.group.pids()[0]
                os.kill(pid, signal.SIGKILL)
                self.killed.append((p.attempt, pid))

    with pytest.raises(TrainingError, match="failed 2 times"):
        _controller(store, home, run_id, KillAlways(0, 0)).run()
    assert store.get_run(run_id).status == "failed"
    assert [r.status for r in store.rounds(run_id)] == ["failed", "failed"]


def test_disk_full_while_checkpointing_fails_cleanly(tmp_path, synth, ray_local):
    home, store, run_id = _create(tmp_path, tiny_spec(synth))
    ckpts = Path(store.get_run(run_id).workdir) / "checkpoints"
    ckpts.mkdir(parents=True)
    # room for one tiny checkpoint (~0.3 MB) but not two
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=450k", "tmpfs", str(ckpts)], capture_output=True)
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tiny tmpfs here: {mount.stderr.decode().strip()}")
    try:
        with pytest.raises(TrainingError, match="No space left on device"):
            Controller(store, home, run_id, tracking=False, groups=GROUPS).run()
        rounds = store.rounds(run_id)
        assert [r.status for r in rounds] == ["finished", "failed"]
        assert "No space left on device" in rounds[1].error and store.get_run(run_id).status == "failed"
        assert sorted(p.name for p in ckpts.iterdir()) == ["s0-r0-a1"]  # no partial folder left behind
        assert (ckpts / "s0-r0-a1" / "meta.json").is_file()
        assert rounds[0].checkpoint_uri == str(ckpts / "s0-r0-a1")  # still the latest
    finally:
        subprocess.run(["umount", "-l", str(ckpts)], check=False)


def test_resume_ignores_and_removes_half_written_checkpoints(tmp_path, synth, ray_local):
    home, store, run_id = _create(tmp_path, tiny_spec(synth))
    ckpts = Path(store.get_run(run_id).workdir) / "checkpoints"
    partial = ckpts / ".s0-r0-a1.tmp-deadbeef"
    partial.mkdir(parents=True)
    (partial / "model.safetensors").write_bytes(b"half")
    assert Controller(store, home, run_id, tracking=False, groups=GROUPS).run() == "finished"
    assert not partial.exists()


def test_concurrent_runs_share_one_ray_and_one_store(tmp_path, synth, ray_local):
    home = Home.from_env(tmp_path)
    RunStore(home.store_url)
    ids, errors = [], []

    def one(i: int) -> None:
        try:
            store = RunStore(home.store_url)
            # half a CPU per rank: the runs' groups fit the 2-CPU test cluster side by side
            text = yaml.safe_dump(tiny_spec(synth, name=f"conc{i}", seed=i, resources={"cpus_per_worker": 0.5}))
            run_id = create_run(store, home, parse_spec(text), text)
            ids.append(run_id)
            Controller(store, home, run_id, groups=GROUPS).run()
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not errors, errors
    store = RunStore(home.store_url)
    for run_id in ids:
        assert store.get_run(run_id).status == "finished"
        assert len(store.rounds(run_id, status="finished")) == 4
    assert len(store.list_runs()) == 2
