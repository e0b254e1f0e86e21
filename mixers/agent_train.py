"""Offline training of the Data Mixing Agent on stored transitions: AWR or CQL, selected on held-out runs.

- **AWR** (advantage-weighted regression, Peng et al. 2019): fit a value baseline to discounted
  returns, then the Dirichlet policy by maximum likelihood with each logged action weighted by
  exp(advantage / beta). Two regressions, few knobs, and the policy stays near the data.
- **CQL** (conservative Q-learning, Kumar et al. 2020; the seed paper's choice): a critic Q(s, a)
  fitted to Bellman targets plus the conservative penalty (log-sum-exp of Q over sampled actions,
  importance-corrected, minus Q of the logged actions: actions never tried are not overvalued),
  and an actor that maximises Q through reparameterised Dirichlet samples, with an entropy bonus.
benchmarks/mixing.py trains both on the same transitions and evaluates both.

Model selection: trajectories (run, stage) are split into training and held-out ones by a seeded
shuffle; every `eval_every` epochs the policy is scored on the held-out trajectories and the best
epoch is kept. The score is the Pearson correlation between the policy's log-density of each
held-out logged action and that action's return-to-go, standardised among held-out actions taken
at the same round index: above 0, the policy prefers the mixtures that did better. It needs no
critic, so AWR and CQL are scored alike, and it never looks at an evaluation run.
"""

from __future__ import annotations

import copy
import json
import math
import random
from collections import Counter, defaultdict
from typing import Any

import torch

from corpus.names import source_name
from mixers.agent import AGENT_FORMAT, FEATURE_VERSION, GLOBAL, PER_DOMAIN, WINDOW, split_state
from mixers.agent_nets import Batch, MixingNets
from store.errors import CheckpointError, InputError

METHODS = ("awr", "cql")


def _trajectories(transitions: list[Any]) -> dict[tuple, list]:
    trajs: dict[tuple, list] = defaultdict(list)
    for t in transitions:
        trajs[(t.run_id, t.stage_index)].append(t)
    for steps in trajs.values():
        steps.sort(key=lambda t: t.round_index)
    return dict(trajs)


def _tensors(trajs: list[list], gamma: float) -> dict[int, dict[str, Any]]:
    """Group by number of domains K -> state/next-state batches, actions, rewards, returns, z-scores."""
    cols: dict[int, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    by_round: dict[int, list[float]] = defaultdict(list)
    for steps in trajs:
        g, rets = 0.0, []
        for t in reversed(steps):
            g = t.reward + gamma * g
            rets.append(g)
        for t, ret in zip(steps, reversed(rets), strict=True):
            k = len(t.action)
            (x, gl), (x2, g2) = split_state(t.state, k), split_state(t.next_state, k)
            c = cols[k]
            for name, v in (("x", x), ("g", gl), ("x2", x2), ("g2", g2), ("a", t.action), ("r", t.reward),
                            ("ret", ret), ("done", float(t.done)), ("round", t.round_index)):
                c[name].append(v)
            by_round[t.round_index].append(ret)
    stats = {r: (sum(v) / len(v), (sum((x - sum(v) / len(v)) ** 2 for x in v) / max(1, len(v) - 1)) ** 0.5)
             for r, v in by_round.items()}
    def f32(v: list) -> torch.Tensor:
        return torch.tensor(v, dtype=torch.float32)

    out = {}
    for k, c in cols.items():
        a, ret = f32(c["a"]).clamp_min(1e-4), f32(c["ret"])
        z = [(rt - stats[r][0]) / max(stats[r][1], 1e-8) for rt, r in zip(c["ret"], c["round"], strict=True)]
        out[k] = {"s": Batch(f32(c["x"]), f32(c["g"])), "a": a / a.sum(1, keepdim=True), "r": f32(c["r"]),
                  "ret": ret, "done": f32(c["done"]), "s2": Batch(f32(c["x2"]), f32(c["g2"])), "z": f32(z)}
    return out


def validation_score(nets: MixingNets, val: dict[int, dict[str, Any]]) -> float:
    """corr(log pi(a|s), round-standardised return) over held-out transitions (see the module doc)."""
    with torch.no_grad():
        lp = torch.cat([nets.dist(d["s"]).log_prob(d["a"]) for d in val.values()])
        z = torch.cat([d["z"] for d in val.values()])
    if len(lp) < 3 or lp.std() < 1e-8 or z.std() < 1e-8:
        return 0.0
    return float(torch.corrcoef(torch.stack([lp, z]))[0, 1])


class _Selector:
    """Keeps the policy of the epoch with the best held-out score (the last one if nothing is held out)."""

    def __init__(self, nets: MixingNets, val: dict | None):
        self.nets, self.val = nets, val
        self.best: tuple[float, int, dict] | None = None
        self.curve: list[tuple[int, float]] = []  # (epoch, held-out score) at every check

    def check(self, epoch: int) -> None:
        if not self.val:
            return
        score = validation_score(self.nets, self.val)
        self.curve.append((epoch, round(score, 6)))
        if self.best is None or score > self.best[0]:
            self.best = (score, epoch, copy.deepcopy(self.nets.policy.state_dict()))

    def finish(self, epochs: int) -> tuple[float | None, int]:
        if self.best is None:
            return None, epochs
        self.nets.policy.load_state_dict(self.best[2])
        return self.best[0], self.best[1]


def _awr(nets, train, sel, epochs, eval_every, beta, lr) -> None:
    scale = torch.cat([d["ret"] for d in train.values()]).std().clamp_min(1e-8)
    opt = torch.optim.Adam(nets.value.parameters(), lr=lr)
    for _ in range(epochs):
        loss = sum(((nets.v(d["s"]) - d["ret"] / scale) ** 2).sum() for d in train.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        w = {k: torch.exp((d["ret"] / scale - nets.v(d["s"])) / beta).clamp(max=20.0) for k, d in train.items()}
    total = sum(x.sum() for x in w.values())
    opt = torch.optim.Adam(nets.policy.parameters(), lr=lr)
    for epoch in range(1, epochs + 1):
        loss = -sum((w[k] * nets.dist(d["s"]).log_prob(d["a"])).sum() for k, d in train.items()) / total
        opt.zero_grad()
        loss.backward()
        opt.step()
        if epoch % eval_every == 0:
            sel.check(epoch)


def _cql(nets, train, sel, epochs, eval_every, gamma, alpha, lr, samples=8, entropy=0.05, tau=0.99) -> None:
    q_params = [*nets.q_row.parameters(), *nets.q_out.parameters()]
    target = copy.deepcopy(nets).requires_grad_(False)
    opt_q = torch.optim.Adam(q_params, lr=lr)
    opt_pi = torch.optim.Adam(nets.policy.parameters(), lr=lr)
    scale = torch.cat([d["r"] for d in train.values()]).std().clamp_min(1e-8)
    for epoch in range(1, epochs + 1):
        loss_q = 0.0
        for k, d in train.items():
            s, a, n = d["s"], d["a"], len(d["a"])
            with torch.no_grad():
                y = d["r"] / scale + gamma * (1 - d["done"]) * target.q(d["s2"], nets.dist(d["s2"]).sample((samples,))
                                                                        .clamp_min(1e-6)).mean(0)
                pi = nets.dist(s)
                a_pi = pi.sample((samples,)).clamp_min(1e-6)
                a_pi = a_pi / a_pi.sum(-1, keepdim=True)
                log_pi = pi.log_prob(a_pi)
            q_data = nets.q(s, a.unsqueeze(0))[0]
            a_uni = torch.distributions.Dirichlet(torch.ones(k)).sample((samples, n))
            # importance-corrected log-sum-exp: the flat Dirichlet's density is Gamma(K) everywhere
            cat = torch.cat([nets.q(s, a_uni) - math.lgamma(k), nets.q(s, a_pi) - log_pi])
            conservative = (torch.logsumexp(cat, 0) - math.log(2 * samples)).mean() - q_data.mean()
            loss_q = loss_q + ((q_data - y) ** 2).mean() + alpha * conservative
        opt_q.zero_grad()
        loss_q.backward()
        opt_q.step()
        loss_pi = 0.0
        for d in train.values():
            pi = nets.dist(d["s"])
            loss_pi = loss_pi - nets.q(d["s"], pi.rsample((1,)).clamp_min(1e-6)).mean() - entropy * pi.entropy().mean()
        opt_pi.zero_grad()
        loss_pi.backward()
        opt_pi.step()
        with torch.no_grad():
            for p, pt in zip(q_params, [*target.q_row.parameters(), *target.q_out.parameters()], strict=True):
                pt.mul_(tau).add_(p, alpha=1 - tau)
        if epoch % eval_every == 0:
            sel.check(epoch)


def _pairs(trajs: list[list]) -> dict[str, int]:
    """'src+src->tgt' per trajectory, from the stored domain names and the role feature."""
    out: Counter = Counter()
    for steps in trajs:
        t = steps[0]
        rows, _ = split_state(t.state, len(t.action))
        names = getattr(t, "domains", None) or [f"d{i}" for i in range(len(rows))]
        src = sorted(source_name(n) for n, r in zip(names, rows, strict=True) if r[0] == 0)
        tgt = sorted(source_name(n) for n, r in zip(names, rows, strict=True) if r[0] == 1)
        out[f"{'+'.join(src)}->{'+'.join(tgt)}"] += 1
    return dict(out)


def train_agent(transitions: list[Any], method: str = "awr", beta: float = 0.5, gamma: float = 0.9,
                hidden: int = 64, epochs: int = 400, seed: int = 0, val_fraction: float = 0.25,
                cql_alpha: float = 1.0, eval_every: int | None = None, lr: float = 3e-3,
                describe: dict[str, str] | None = None) -> tuple[MixingNets, dict[str, str]]:
    """Train on transitions (objects with run_id, stage_index, round_index, state, action, reward,
    next_state, done; optionally domains) -> (networks, metadata for the agent file)."""
    if method not in METHODS:
        raise InputError(f"method: unknown {method!r}; valid: {', '.join(METHODS)}")
    for name, value, ok, rule in (("val_fraction", val_fraction, 0 <= val_fraction < 1, "in [0, 1)"),
                                  ("beta", beta, 0 < beta < math.inf, "> 0"),
                                  ("gamma", gamma, 0 <= gamma <= 1, "in [0, 1]"),
                                  ("cql_alpha", cql_alpha, 0 <= cql_alpha < math.inf, ">= 0"),
                                  ("epochs", epochs, epochs >= 1, ">= 1"),
                                  ("lr", lr, 0 < lr < math.inf, "> 0")):
        if not ok:  # NaN fails every comparison, so it lands here too
            raise InputError(f"{name}: must be {rule}, got {value}")
    transitions = [t for t in transitions if len(t.action) >= 2]  # one domain: there was nothing to decide
    if len(transitions) < 4:
        raise CheckpointError(f"need at least 4 transitions of feature version {FEATURE_VERSION} to train, "
                              f"found {len(transitions)} (run `cpt agent explore` first)")
    torch.manual_seed(seed)
    trajs = _trajectories(transitions)
    keys = sorted(trajs, key=str)
    random.Random(seed).shuffle(keys)
    n_val = math.ceil(val_fraction * len(keys)) if len(keys) >= 4 and val_fraction > 0 else 0
    val_keys, train_keys = keys[:n_val], keys[n_val:]
    train = _tensors([trajs[k] for k in train_keys], gamma)
    val = _tensors([trajs[k] for k in val_keys], gamma) if val_keys else None
    nets = MixingNets(len(PER_DOMAIN), len(GLOBAL), hidden)
    nets.fit_normalisation([d["s"] for d in train.values()])
    sel = _Selector(nets, val)
    every = eval_every or max(1, epochs // 20)
    if method == "awr":
        _awr(nets, train, sel, epochs, every, beta, lr)
    else:
        _cql(nets, train, sel, epochs, every, gamma, cql_alpha, lr)
    score, best_epoch = sel.finish(epochs)
    nets.eval()
    rets = torch.cat([d["ret"] for d in train.values()])
    meta = {"format": AGENT_FORMAT, "method": method, "feature_version": FEATURE_VERSION,
            "per_domain_features": ",".join(PER_DOMAIN), "global_features": ",".join(GLOBAL),
            "window": str(WINDOW), "hidden": str(hidden), "gamma": str(gamma), "seed": str(seed),
            **({"beta": str(beta)} if method == "awr" else {"cql_alpha": str(cql_alpha)}),
            "epochs": str(epochs), "best_epoch": str(best_epoch),
            "val_score": "n/a (too few trajectories to hold any out)" if score is None else f"{score:.4f}",
            "val_curve": json.dumps(sel.curve),
            "transitions": str(sum(len(trajs[k]) for k in train_keys)),
            "val_transitions": str(sum(len(trajs[k]) for k in val_keys)),
            "trajectories": str(len(train_keys)), "val_trajectories": str(len(val_keys)),
            "domain_counts": json.dumps(sorted(train)), "pairs": json.dumps(_pairs(list(trajs.values()))),
            "mean_return": f"{float(rets.mean()):.6g}",
            "runs": json.dumps(sorted({k[0] for k in train_keys})),
            "val_runs": json.dumps(sorted({k[0] for k in val_keys})), **(describe or {})}
    return nets, meta
