"""The persistent worker group's training loop: one process per rank, alive across rounds.

Ray Train's `TorchTrainer` starts the ranks, places them, sets up the process group (gloo on
CPU, NCCL on GPU) and watches for failures; `train_loop` then serves rounds until the controller
says stop. Between rounds nothing restarts: the model, the optimizer and its state stay in
memory, and a round whose `init_checkpoint` is the one this group wrote last continues from
memory without reloading. A plan that starts elsewhere (a retry, a resume, a stage that resets
the optimizer) reloads or resets exactly what it says.

Why Lightning Fabric and not Lightning's Trainer: a Trainer owns the loop and is built per `fit`,
so keeping the model, the optimizer and the DDP/FSDP wrapping alive across rounds fights it;
Fabric gives the same strategies, precision plugins, `backward`, `no_backward_sync` and gradient
clipping while the loop (rank slicing, accumulation, per-step LR) stays ours and readable.

Per step the global batch (`batch_size` sequences, a pure function of the plan) is the same for
any number of ranks; rank r trains on rows [r*B/N, (r+1)*B/N) only, in micro-batches of
`micro_batch_size` with gradient accumulation. Each rank's loss is its share of the global mean,
so DDP's gradient average equals the single-process gradient of the whole batch.
"""

from __future__ import annotations

import os
from typing import Any

from store.errors import CptError


def train_loop(config: dict[str, Any]) -> None:
    """Ray Train entry point: set up this rank, then run each plan the mailbox hands out."""
    import ray
    import ray.train
    import torch

    # Ray reuses worker processes and sets OMP_NUM_THREADS to the worker's CPUs
    if os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    from workers.runner import RoundRunner

    mailbox = config["mailbox"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    ray.get(mailbox.register.remote(rank, os.getpid(), ray.get_runtime_context().current_actor))

    def failed(seq: int, exc: CptError) -> None:
        # Every rank reports its own failure: one rank's data error must fail the round at once, not
        # leave the others blocked in a collective until the process-group timeout (30 min).
        where = f"rank {rank}: " if world > 1 else ""
        ray.get(mailbox.report.remote(seq, None, f"{where}{type(exc).__name__}: {exc}", type(exc).__name__))

    try:
        runner, setup_error = RoundRunner(config["resources"], mailbox), None
    except CptError as exc:  # deterministic (a device that is not there, ...): each plan fails with it, no retry
        runner, setup_error = None, exc
    seq = 0
    while True:
        item = ray.get(mailbox.next_plan.remote(seq))
        if item is None:
            break
        plan, seq = item
        try:
            if setup_error is not None:
                raise setup_error
            result = runner.run(plan, seq)
        except CptError as exc:  # our own, deterministic: the controller fails the run, the group is torn down
            failed(seq, exc)
            seq += 1
            continue
        if rank == 0:
            ray.get(mailbox.report.remote(seq, result, None, None))
        seq += 1
    if runner is not None:
        runner.close()
