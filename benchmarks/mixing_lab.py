"""A lean continual-pre-training loop for many mixing runs: cpt's model, mixers and agent features,
without a controller, store or checkpoint per round.

benchmarks/mixing_many.py needs ~500 runs on 2 vCPUs; a cpt run (controller, Ray Train group,
checkpoint per round, store) costs ~20-40 s of overhead each here, the training itself ~2-10 s.
This loop keeps what decides a mixing result and drops the rest:
  - the same model family and init (workers/model.build_model), AdamW, a cosine LR re-warmed and
    re-decayed over the stage (store/schedules);
  - the same mixers, called with the same Observation a run's planner builds (history of
    RoundRecords with per-domain validation losses, per-domain training losses and loss traces,
    stage-start losses, token counts, reference losses), checked by mixers.base.check_weights;
  - the agent's state features (mixers.agent.state_features) and reward (balanced_reward), so
    its transitions are what `cpt agent explore` would store;
  - batches drawn per row by the round's weights from random windows of each domain's tokens
    (not cpt's exact cursors: nothing here resumes mid-stage), validation on fixed held-out windows.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

SEQ, BATCH, VAL_WINDOWS = 64, 16, 32
COSINE = {"kind": "cosine", "peak_lr": 3e-3, "min_lr": 3e-4, "warmup": 0.05}


@dataclass
class Lab:
    """Token arrays per domain, and the model sizes runs are made of."""

    data: dict[str, dict[str, np.ndarray]]
    vocab: int
    models: dict[str, dict[str, Any]]
    work: Path
    threads: int = 1
    _val: dict[str, torch.Tensor] = field(default_factory=dict)

    def val(self, d: str) -> torch.Tensor:
        if d not in self._val:
            ids = self.data[d]["val"].astype(np.int64)
            n = min(VAL_WINDOWS, (len(ids) - 1) // SEQ)
            self._val[d] = torch.from_numpy(ids[: n * SEQ].reshape(n, SEQ))
        return self._val[d]

    def model(self, size: str, seed: int):
        from workers.model import build_model

        torch.set_num_threads(self.threads)
        return build_model(self.models[size], self.vocab, SEQ, seed)

    @torch.no_grad()
    def losses(self, model, domains: list[str]) -> dict[str, float]:
        model.eval()
        out = {}
        for d in domains:
            ids = self.val(d)
            logits = model(input_ids=ids).logits[:, :-1]
            out[d] = float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                             ids[:, 1:].reshape(-1)))
        model.train()
        return out

    def train(self, model, opt, weights: dict[str, float], steps: int, lrs: list[float],
              rng: np.random.Generator) -> tuple[dict[str, float], dict[str, list[float | None]]]:
        """`steps` steps on batches drawn by `weights` -> (mean training loss per domain, per-step trace)."""
        from workers.model import token_losses

        doms = list(weights)
        p = np.array([weights[d] for d in doms])
        sums = {d: 0.0 for d in doms}
        counts = {d: 0 for d in doms}
        trace: dict[str, list[float | None]] = {d: [] for d in doms}
        for step in range(steps):
            pick = rng.choice(len(doms), size=BATCH, p=p / p.sum())
            rows = []
            for j in pick:
                arr = self.data[doms[j]]["train"]
                start = int(rng.integers(0, len(arr) - SEQ - 1))
                rows.append(arr[start:start + SEQ + 1].astype(np.int64))
            ids = torch.from_numpy(np.stack(rows))
            for g in opt.param_groups:
                g["lr"] = lrs[step]
            per_row = token_losses(model, ids)  # cpt's training loss, op for op
            loss = per_row.mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            vals = per_row.detach().tolist()
            for j, d in enumerate(doms):
                mine = [v for v, k in zip(vals, pick, strict=True) if k == j]
                if mine:
                    sums[d] += sum(mine)
                    counts[d] += len(mine)
                trace[d].append(sum(mine) / len(mine) if mine else None)
        return {d: sums[d] / counts[d] for d in doms if counts[d]}, trace


def optimizer(model) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=0.0, betas=(0.9, 0.95), weight_decay=0.1)


def lr_list(steps: int) -> list[float]:
    from pydantic import TypeAdapter

    from store.schedules import ScheduleSpec, stage_lrs

    return stage_lrs(TypeAdapter(ScheduleSpec).validate_python(COSINE), steps)


def base_model(lab: Lab, size: str, seed: int, domains: list[str], steps: int):
    """The stage-1 model (pre-trained on the source field, uniform), cached per (size, seed, steps)."""
    path = lab.work / f"base-{size}-{seed}-{steps}.pt"
    model = lab.model(size, seed)
    if path.exists():
        model.load_state_dict(torch.load(path))
        return model
    lab.train(model, optimizer(model), {d: 1 / len(domains) for d in domains}, steps, lr_list(steps),
              np.random.default_rng(seed))
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save(model.state_dict(), tmp)
    tmp.replace(path)
    return model


def run_stage(lab: Lab, setting, mixer, size: str, seed: int, rounds: int, steps: int, base_steps: int,
              base_domains: list[str], reference: dict[str, float] | None = None, base_seed: int | None = None,
              replay_fraction: float = 0.0) -> dict[str, Any]:
    """Stage 2 of one run from the base model of `base_seed` (default `seed`): `rounds` rounds of
    `steps`, the mixer choosing each round's weights; `seed` draws the batches.
    -> {start, final (losses), balanced, weights per round, transitions, seconds}."""
    from mixers.agent import balanced_reward, split_state, state_features
    from mixers.base import Observation, RoundRecord, check_weights

    t0 = time.perf_counter()
    torch.manual_seed(seed)
    model = base_model(lab, size, seed if base_seed is None else base_seed, base_domains, base_steps)
    opt = optimizer(model)
    rng = np.random.default_rng(seed * 1_000_003 + 17)
    doms = setting.domains
    start = lab.losses(model, doms)
    lrs = lr_list(rounds * steps)
    history: list[RoundRecord] = []
    tokens = {d: int(len(lab.data[d]["train"])) for d in doms}

    def obs(r: int) -> Observation:
        return Observation(stage_index=1, round_index=r, num_rounds=rounds, stage_domains=setting.new,
                           replay_domains=list(setting.sources), replay_fraction=replay_fraction, domain_tokens=tokens,
                           history=list(history), start_losses=dict(start), reference_losses=dict(reference or {}),
                           seed=seed)

    transitions, chosen = [], []
    for r in range(rounds):
        o = obs(r)
        state = state_features(o)
        weights = check_weights(mixer.propose(o), doms, "proposal")
        full = {d: weights.get(d, 0.0) for d in doms}
        train_losses, trace = lab.train(model, opt, {d: w for d, w in full.items() if w > 0}, steps,
                                        lrs[r * steps:(r + 1) * steps], rng)
        before = o.latest_losses()
        after = lab.losses(model, doms)
        history.append(RoundRecord(1, r, weights, after, train_losses, trace))
        nxt = state_features(obs(r + 1))
        split_state(nxt, len(doms))  # the shapes `cpt agent train` checks
        transitions.append({"round": r, "domains": o.domains, "state": state, "action": [full[d] for d in o.domains],
                            "reward": balanced_reward(before, after, list(setting.targets), list(setting.sources)),
                            "next_state": nxt, "done": r + 1 == rounds})
        chosen.append(full)
    final = history[-1].eval_losses
    return {"start": start, "final": final, "weights": chosen, "transitions": transitions,
            "balanced": balanced_reward(start, final, list(setting.targets), list(setting.sources)),
            "seconds": time.perf_counter() - t0}


def params(lab: Lab, size: str) -> int:
    return sum(p.numel() for p in lab.model(size, 0).parameters())


def mean_std(xs: list[float]) -> tuple[float, float]:
    m = sum(xs) / len(xs)
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
