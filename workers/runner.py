"""RoundRunner: what one rank of the persistent group does with each RoundPlan.

setup (restore the in-memory model/optimizer to the plan's starting point, only if they are not
there already) -> fit (rank-sliced global batches, accumulation, per-step LR) -> per-domain eval
-> atomic checkpoint (rank 0 writes, every rank learns the outcome) -> RoundResult.

MFU (model FLOPs utilisation) = 6 * P * tokens_per_s / (peak_flops_per_device * devices), with P
the parameter count (embedding included) and 6 = forward (2) + backward (4) multiply-adds per
parameter per token; attention's quadratic term is left out, as PaLM's appendix B does for short
contexts. Reported on GPUs with a known peak (bf16 dense); None on CPU.
"""

from __future__ import annotations

import os
import threading
import time
from functools import partial
from typing import Any

import torch

from corpus.sampler import RoundSampler, SequenceSource, ValBatches
from corpus.shards import DomainData
from store.configs import Resources, SampleLossConfig
from store.errors import TrainingError
from store.records import RoundPlan, RoundResult
from workers import sharded
from workers.checkpoint import full_state, is_sharded, read_checkpoint, read_meta, restore_state, save_state
from workers.fabric import make_fabric, make_optimizer, prepare_model
from workers.init import fsdp_param_init
from workers.model import (
    build_empty,
    build_model,
    eval_losses,
    eval_losses_whole,
    is_cpt_checkpoint,
    model_signature,
    token_losses,
)
from workers.sample_weights import sample_weights

PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12, "L4": 121e12}


class RoundRunner:
    def __init__(self, resources: Resources, mailbox):
        self.res, self.mailbox = resources, mailbox
        self.fabric = make_fabric(resources)
        self.rank, self.world = self.fabric.global_rank, self.fabric.world_size
        self.ckpt_group = _checkpoint_group()
        self.writing: threading.Thread | None = None  # an asynchronous save in flight
        self.staging: dict = {}  # host memory an asynchronous save copies into, reused round after round
        self.model = self.optimizer = None
        self.built: str | None = None  # the model config (and data shape) the in-memory model was built from
        self.at: str | None = None  # the checkpoint the in-memory state is (fresh(seed): a seeded init)
        self.signature: str | None = None

    # ---- setup --------------------------------------------------------------------------------
    @staticmethod
    def _blueprint(plan: RoundPlan) -> str:
        return f"{plan.model.model_dump_json()}|{plan.vocab_size}|{plan.seq_len}"

    def _init_device(self):
        """Where a fresh whole model is initialised (DDP, one rank): the rank's GPU, or the host."""
        return self.fabric.device if self.fabric.device.type == "cuda" else None

    def _build(self, plan: RoundPlan) -> None:
        fsdp = self.res.strategy == "fsdp"
        if fsdp:  # nothing full-size on any rank: FSDP materialises one unit (a block) at a time, then shards it
            raw, weights = build_empty(plan.model, plan.vocab_size, plan.seq_len)  # an HF folder: read unit by unit
            self.fabric.strategy._fsdp_kwargs["param_init_fn"] = fsdp_param_init(raw, plan.seed, self.fabric.device,
                                                                                 weights)
        else:
            raw = build_model(plan.model, plan.vocab_size, plan.seq_len, plan.seed, self._init_device())
        self.signature = model_signature(raw)
        self.n_params = sum(p.numel() for p in raw.parameters())
        self.tied = bool(getattr(raw.config, "tie_word_embeddings", False))
        self.model = self.fabric.setup_module(prepare_model(raw, self.res))
        self.optimizer = self.fabric.setup_optimizers(make_optimizer(self.model, plan.optimizer))
        if fsdp and plan.model.path and is_cpt_checkpoint(plan.model.path):  # into this rank's shards (DCP)
            self._load(plan.model.path, with_optimizer=False)
        self.built, self.at = self._blueprint(plan), _fresh(plan)

    def _restore(self, plan: RoundPlan) -> None:
        if self.model is None or self.built != self._blueprint(plan):  # a group shared by runs of other models
            self.model = self.optimizer = None
            self._build(plan)
        target = plan.init_checkpoint or _fresh(plan)
        if target != self.at:  # a retry, a resume, or a group that never saw this checkpoint
            self.finish_writes()  # a checkpoint still being written is never read half-done
            if plan.init_checkpoint is None and self.res.strategy == "fsdp":
                self.model = self.optimizer = None  # a fresh start: built again, unit by unit
                self._build(plan)
            elif plan.init_checkpoint is None:
                fresh = build_model(plan.model, plan.vocab_size, plan.seq_len, plan.seed, self._init_device())
                restore_state(self.model, self.optimizer, fresh.state_dict(), None, self.tied)
            else:
                self._load(target, plan.load_optimizer)
            self.at = target
        elif not plan.load_optimizer:
            self.optimizer.state.clear()  # a stage that starts with fresh AdamW state

    def _load(self, target: str, with_optimizer: bool) -> None:
        if is_sharded(read_meta(target, self.signature)):  # any world size wrote it: DCP reshards
            sharded.read(target, self.model, self.optimizer, with_optimizer, self.ckpt_group)
            self._evict(target)
        else:  # the full format: restore_state starts the optimizer empty, loads its state if asked
            weights, opt_state = read_checkpoint(target, self.signature, with_optimizer)
            restore_state(self.model, self.optimizer, weights, opt_state, self.tied)

    # ---- the round ----------------------------------------------------------------------------
    def run(self, plan: RoundPlan, seq: int = 0) -> RoundResult:
        t0, started_at = time.perf_counter(), time.time()
        cuda = self.fabric.device.type == "cuda"
        if cuda:
            torch.cuda.reset_peak_memory_stats(self.fabric.device)
        self._restore(plan)
        names = sorted(set(plan.weights) | set(plan.eval_domains))
        domains = {n: DomainData.open(n, plan.domain_paths[n], plan.tokenizer_hash) for n in names}
        before = self.evaluate(domains, plan) if plan.eval_before else None
        t_fit = time.perf_counter()
        fit = self.fit(plan, {n: SequenceSource(domains[n], plan.seq_len) for n in plan.weights
                              if plan.weights[n] > 0})
        fit_s = time.perf_counter() - t_fit
        t_eval = time.perf_counter()
        eval_losses = self.evaluate(domains, plan)
        t_save = time.perf_counter()
        pending = self.save(plan, seq)
        save_s = time.perf_counter() - t_save
        tokens = plan.num_steps * plan.batch_size * plan.seq_len
        return RoundResult(
            checkpoint=plan.checkpoint_dir, eval_losses=eval_losses, eval_before=before, train_losses=fit["losses"],
            domain_train_losses=fit["domain_losses"], lrs=fit["lrs"], tokens=tokens,
            domain_tokens=fit["domain_tokens"], tokens_per_s=tokens / max(fit_s, 1e-9),
            wall_s=time.perf_counter() - t0, domain_loss_trace=fit["trace"], workers=self.world, fit_s=fit_s,
            eval_s=t_save - t_eval, save_s=save_s, mfu=self._mfu(tokens / max(fit_s, 1e-9)),
            cursors=fit["cursors"], grad_norms=fit["grad_norms"], step_times=fit["step_times"],
            started_at=started_at, ended_at=time.time(), checkpoint_pending=pending, checkpoint_stall_s=save_s,
            checkpoint_write_s=None if pending else save_s,
            peak_mem_gb=torch.cuda.max_memory_allocated(self.fabric.device) / 1e9 if cuda else None)

    def fit(self, plan: RoundPlan, sources: dict[str, SequenceSource]) -> dict[str, Any]:
        """Train the round's steps; returns globally reduced per-step and per-domain statistics."""
        fabric, model, opt = self.fabric, self.model, self.optimizer
        lr_fn = partial(plan.schedule.lr, total=plan.stage_steps)
        sampler = RoundSampler(sources, plan.weights, plan.cursors, plan.batch_size, plan.num_steps, plan.seed,
                               plan.stage_index, plan.round_index)
        B, N = plan.batch_size, self.world
        per_rank = B // N
        micro = plan.micro_batch_size or per_rank
        reweight = plan.sample_loss.kind != "uniform"
        D, steps = len(sampler.names), plan.num_steps
        # per-step sums stay on the device until a log point or the round's end: a host read per
        # micro-batch would make the CPU wait for the GPU and stop it queueing the next kernels
        dev = fabric.device
        sums = torch.zeros(steps, dtype=torch.float64, device=dev)
        dsum = torch.zeros(steps, D, dtype=torch.float64, device=dev)
        dcnt = torch.zeros(steps, D, dtype=torch.float64, device=dev)
        norms = torch.zeros(steps, dtype=torch.float64, device=dev)
        lrs, step_times = [], []
        live: dict[int, torch.Tensor] = {}  # steps reduced early for live metrics (their values are final)
        every = max(1, plan.log_every)
        clip = plan.optimizer.grad_clip or float("inf")  # inf: measure the norm, change nothing
        t_last, k_last = time.perf_counter(), -1
        # fault injection for tests: slow every step so that a test can signal a round while it trains,
        # however fast the machine (the store's live progress lags the ranks by up to a second)
        step_delay = float(os.environ.get("CPT_STEP_DELAY_S") or 0)
        model.train()
        for k in range(steps):
            step = plan.stage_step_start + k
            ids, dom = sampler.batch(k, self.rank, N)  # only this rank's rows are read
            ids, dom = ids.to(dev, non_blocking=True), dom.to(dev, non_blocking=True)
            lr = lr_fn(step)
            for group in opt.param_groups:
                group["lr"] = lr
            lrs.append(lr)
            w = torch.full((per_rank,), 1.0 / B, device=dev)
            if reweight and step >= plan.sample_loss.burn_in:
                w = self._global_weights(ids, micro, plan.sample_loss)
            for m in range(0, per_rank, micro):
                rows = slice(m, m + micro)
                with fabric.no_backward_sync(model, enabled=m + micro < per_rank):
                    per_seq = token_losses(model, ids[rows])
                    # this rank's share of the global objective: DDP's gradient mean over N ranks
                    # then equals the gradient of sum_i w_i l_i over the whole batch
                    fabric.backward(N * (w[rows] * per_seq).sum())
                with torch.no_grad():
                    d = per_seq.detach().double()
                    sums[k] += d.sum()
                    dsum[k].index_add_(0, dom[rows], d)
                    dcnt[k].index_add_(0, dom[rows], torch.ones_like(d))
            norms[k] = fabric.clip_gradients(model, opt, max_norm=clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            if step_delay:
                time.sleep(step_delay)
            logged = k % every == every - 1 or k == steps - 1  # the same steps on every rank: a collective
            if not logged:
                step_times.append(time.time())  # when the step was queued (a GPU may still be running it)
            else:
                row = torch.cat([sums[k:k + 1], dsum[k], dcnt[k]])
                live[k] = fabric.all_reduce(row, reduce_op="sum").cpu().double()
                step_times.append(time.time())  # after the read: when the step was done on the device
                if self.rank == 0:
                    now = time.perf_counter()
                    self.mailbox.progress.remote(self._live_record(plan, k, live[k], sampler.names, lr,
                                                                   float(norms[k]), step_times[-1],
                                                                   (k - k_last) / max(now - t_last, 1e-9)))
                    t_last, k_last = now, k
        packed = fabric.all_reduce(torch.cat([sums[:, None], dsum, dcnt], 1), reduce_op="sum")
        packed = packed.cpu().double()
        grad_norms = norms.tolist()
        for k, row in live.items():  # a live point and the round's final record agree to the last bit
            packed[k] = row
        sums, dsum, dcnt = packed[:, 0], packed[:, 1:1 + D], packed[:, 1 + D:]
        losses = (sums / B).tolist()
        if not all(map(_finite, losses)):  # every rank sees the same reduced numbers: all raise together
            raise TrainingError(f"training loss became non-finite at stage {plan.stage_index} "
                                f"round {plan.round_index}")
        names, total, count = sampler.names, dsum.sum(0), dcnt.sum(0)
        return {"losses": losses, "lrs": lrs, "cursors": sampler.end_cursors(), "grad_norms": grad_norms,
                "step_times": step_times,
                "trace": {n: [float(dsum[k, i] / dcnt[k, i]) if dcnt[k, i] else None for k in range(steps)]
                          for i, n in enumerate(names)},
                "domain_losses": {n: float(total[i] / count[i]) for i, n in enumerate(names) if count[i]},
                "domain_tokens": {n: int(count[i]) * plan.seq_len for i, n in enumerate(names) if count[i]}}

    @staticmethod
    def _live_record(plan: RoundPlan, k: int, row: torch.Tensor, names: list[str], lr: float, grad_norm: float,
                     t: float, steps_per_s: float) -> dict[str, Any]:
        """What the controller logs while the round runs: round step k's global loss (the value the
        round's result will carry), LR, grad norm, per-domain loss, throughput, real time."""
        D = len(names)
        return {"k": k, "step": plan.stage_step_start + k + 1, "loss": float(row[0]) / plan.batch_size, "lr": lr,
                "grad_norm": grad_norm, "t": t, "tokens_per_s": steps_per_s * plan.batch_size * plan.seq_len,
                "domain_losses": {n: float(row[1 + i] / row[1 + D + i]) for i, n in enumerate(names)
                                  if row[1 + D + i] > 0}}

    def _global_weights(self, ids: torch.Tensor, micro: int, spec: SampleLossConfig) -> torch.Tensor:
        """Sample weights over the whole global batch (not per rank): a no-grad pass, gathered."""
        with torch.no_grad():
            local = torch.cat([token_losses(self.model, ids[m:m + micro]) for m in range(0, len(ids), micro)])
        everyone = self.fabric.all_gather(local.float()).reshape(-1)
        w = sample_weights(everyone, spec.kind, spec.r)
        return w[self.rank * len(ids):(self.rank + 1) * len(ids)].to(ids.device)

    @torch.no_grad()
    def evaluate(self, domains: dict[str, DomainData], plan: RoundPlan) -> dict[str, float]:
        """Mean per-domain validation loss over fixed batches. Ranks split the batches (batch j goes
        to rank j % N) and run them in micro-batches of the training micro-batch size, the loss
        computed a slice of positions at a time (workers/model.py: eval_losses): memory does not
        grow with the global batch or the vocabulary. Under FSDP every rank runs the same number of
        forwards (a rank without a batch in the last pass repeats one and drops it)."""
        sharded = self.res.strategy == "fsdp" and self.world > 1
        module, losses_of = eval_forward(self.model, self.res.strategy == "fsdp")
        module.eval()
        names = list(plan.eval_domains)
        micro = plan.micro_batch_size or max(1, plan.batch_size // self.world)
        acc = torch.zeros(len(names), 2, dtype=torch.float64)
        for i, name in enumerate(names):
            batches = ValBatches(domains[name], plan.seq_len, plan.batch_size, plan.eval_batches)
            passes = -(-len(batches) // self.world)  # ceil: the same on every rank
            for p in range(passes):
                j = p * self.world + self.rank
                if j >= len(batches) and not sharded:
                    break
                batch = batches[min(j, len(batches) - 1)]
                for m in range(0, len(batch), micro):
                    losses = losses_of(module, batch[m:m + micro].to(self.fabric.device)).double().cpu()
                    if j < len(batches):
                        acc[i, 0] += losses.sum()
                        acc[i, 1] += len(losses)
        if self.world > 1:
            acc = self.fabric.all_reduce(acc.to(self.fabric.device), reduce_op="sum").cpu()
        self.model.train()
        return {n: float(acc[i, 0] / acc[i, 1]) for i, n in enumerate(names)}

    def _evict(self, target: str) -> None:
        """A remote checkpoint's copy on this node, once every rank has read it: dropped."""
        from corpus import fs

        if not fs.is_remote(target):
            return
        if self.ckpt_group is not None:
            import torch.distributed as dist

            dist.barrier(group=self.ckpt_group)
        import ray.train

        if ray.train.get_context().get_local_rank() == 0:
            fs.evict(target)

    def save(self, plan: RoundPlan, seq: int) -> bool:
        """The round's checkpoint. Sharded (each rank writes its part, DCP): synchronously, or with
        `checkpoints.asynchronous` staged to host memory here and written by a thread while the next
        round trains (returns True: rank 0 reports to the mailbox when it is durable; the previous
        write always finishes before the next starts). Full (`checkpoints.format: full`): gathered to
        rank 0 and written by it. Every rank learns the outcome."""
        self.finish_writes()
        meta = {"run_id": plan.run_id, "stage": plan.stage_index, "round": plan.round_index,
                "attempt": plan.attempt, "global_step": plan.global_step_start + plan.num_steps,
                "model_signature": self.signature, "tokenizer_hash": plan.tokenizer_hash,
                "model_config": self.model.module.config.to_dict()}
        if plan.checkpoint_format == "sharded":
            state = sharded.mine(sharded.state_of(self.model, self.optimizer), self.rank, self.world)
            if not plan.checkpoint_async:
                sharded.write(plan.checkpoint_dir, state, meta, self.rank, self.ckpt_group)
                self.at = plan.checkpoint_dir
                return False
            self.at = plan.checkpoint_dir  # what the memory holds; a failed write fails the run
            staged = sharded.staged(state, self.staging)  # the stall: training goes on once the copy is made
            self.writing = threading.Thread(target=self._write, args=(plan.checkpoint_dir, staged, meta, seq),
                                            name=f"cpt-checkpoint-{seq}", daemon=True)
            self.writing.start()
            return True
        model_sd, opt_tensors, opt_steps = full_state(self.model, self.optimizer)
        error = None
        if self.rank == 0:
            try:
                save_state(plan.checkpoint_dir, model_sd, opt_tensors, opt_steps, meta, self.tied)
            except Exception as exc:  # OSError, or safetensors' own error type for a full disk
                error = f"saving checkpoint {plan.checkpoint_dir} failed: {type(exc).__name__}: {exc}"
        error = self.fabric.broadcast(error, src=0)
        if error:
            raise TrainingError(error)
        self.at = plan.checkpoint_dir
        return False

    def _write(self, folder: str, state: dict, meta: dict[str, Any], seq: int) -> None:
        """An asynchronous save, on its own thread and process group; rank 0 reports the outcome."""
        import ray

        # fault injection for tests: hold the write so that a test can kill the controller in the middle of it
        time.sleep(float(os.environ.get("CPT_CHECKPOINT_WRITE_DELAY_S") or 0))
        t0, error = time.perf_counter(), None
        try:
            sharded.write(folder, state, meta, self.rank, self.ckpt_group)
        except BaseException as exc:  # reported, never raised into a thread nobody joins for errors
            error = f"{type(exc).__name__}: {exc}"
        if self.rank == 0:  # synchronous: delivered before this thread ends, so before the next round's result
            ray.get(self.mailbox.saved.remote(seq, time.perf_counter() - t0, error))

    def finish_writes(self) -> None:
        """Wait for an asynchronous save still running (before the next save, a restore or the end)."""
        if self.writing is not None:
            self.writing.join()
            self.writing = None

    def _mfu(self, tokens_per_s: float) -> float | None:
        if self.fabric.device.type != "cuda":
            return None
        return mfu(self.n_params, tokens_per_s, torch.cuda.get_device_name(self.fabric.device), self.world)

    def close(self) -> None:
        self.finish_writes()
        self.model = self.optimizer = None


def mfu(params: int, tokens_per_s: float, device_name: str, devices: int = 1) -> float | None:
    """6 * params * tokens/s over the devices' dense bf16 peak (the module docstring); None for a
    device without a known peak."""
    peak = next((v for k, v in PEAK_BF16_FLOPS.items() if k in device_name), None)
    return None if peak is None else 6 * params * tokens_per_s / (peak * devices)


def eval_forward(model, fsdp: bool):
    """(module, loss function) evaluation runs, the loss a slice of positions at a time either way.
    Under FSDP the wrapped root, run whole: its nested units, one per block, may only run inside
    the root's forward, and a call on an inner module (the base model, the output layer) before the
    first training step breaks that step (first seen on an H200). Otherwise the unwrapped module
    (no DDP hooks), its base model and output layer called apart."""
    if fsdp:
        return model, eval_losses_whole
    return getattr(model, "module", model), eval_losses


def _checkpoint_group():
    """A gloo process group of all ranks for checkpoint collectives (None in one process): separate
    from the training group, so a save can run beside training, and on CPU whatever the device."""
    import torch.distributed as dist

    return dist.new_group(backend="gloo") if dist.is_available() and dist.is_initialized() else None


def _fresh(plan: RoundPlan) -> str:
    """The in-memory state of a seeded fresh model (a run's start)."""
    return f"<fresh:{plan.seed}>"


def _finite(x: float) -> bool:
    return x == x and abs(x) != float("inf")
