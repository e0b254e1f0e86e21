"""PNG plots: the whole run's LR schedule and the mixture weights over rounds."""

from __future__ import annotations

from pathlib import Path

from orchestrator.spec import RunSpec
from store.schedules import stage_lrs

MAX_POINTS = 4000  # a plot samples the schedule: its memory never scales with a user's token budget


def run_lrs(spec: RunSpec) -> list[float]:
    """LR at every global step of the run (stages concatenated, each re-warmed)."""
    out: list[float] = []
    for i, st in enumerate(spec.stages):
        out += stage_lrs(st.schedule, spec.stage_steps(i))
    return out


def sampled_lrs(spec: RunSpec, max_points: int = MAX_POINTS) -> tuple[list[int], list[float]]:
    """(global step, LR) at no more than ~max_points steps: evenly spaced, plus each stage's first,
    second and last step (where re-warming shows)."""
    total = spec.total_steps()
    starts = spec.stage_starts()
    if total <= max_points:
        picked = set(range(total))
    else:
        picked = {round(k * (total - 1) / (max_points - 1)) for k in range(max_points)}
    for i, s in enumerate(starts):
        picked |= {s, min(s + 1, total - 1), s + spec.stage_steps(i) - 1}
    steps = sorted(picked)
    out = []
    for g in steps:
        i = max(j for j, s in enumerate(starts) if s <= g)
        out.append(spec.stages[i].schedule.lr(g - starts[i], spec.stage_steps(i)))
    return steps, out


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:
    from store.files import output_file

    fig.tight_layout()
    try:
        with output_file(path) as tmp:
            fig.savefig(tmp, dpi=110, format="png")
    finally:
        _plt().close(fig)
    return Path(path)


def plot_lr(spec: RunSpec, path: str | Path) -> Path:
    plt = _plt()
    steps, lrs = sampled_lrs(spec)
    fig, ax = plt.subplots(figsize=(8, 3))
    ax.plot(steps, lrs, lw=1.5)
    for start, st in zip(spec.stage_starts(), spec.stages, strict=True):
        ax.axvline(start, color="grey", ls=":", lw=1)
        ax.text(start, max(lrs) * 1.02, f" {st.name} ({st.schedule.kind})", fontsize=8, va="bottom")
    ax.set_xlabel("global step")
    ax.set_ylabel("learning rate")
    ax.set_title(f"{spec.name}: LR schedule")
    return _save(fig, path)


MAX_BARS = 60


def plot_mixture(rounds: list[dict], path: str | Path, title: str = "mixture weights") -> Path:
    """rounds: [{'label': str, 'weights': {domain: w}}] in order; a stacked bar per round, or past
    MAX_BARS rounds a stacked area over the round index (the figure's size and drawing time stay
    bounded: 5,000 bars made a 300,000-pixel-wide image)."""
    plt = _plt()
    domains = sorted({d for r in rounds for d in r["weights"]})
    series = [[r["weights"].get(d, 0.0) for r in rounds] for d in domains]
    if len(rounds) > MAX_BARS:
        fig, ax = plt.subplots(figsize=(10, 3))
        ax.stackplot(range(len(rounds)), *series, labels=domains)
        ticks = list(range(0, len(rounds), max(1, len(rounds) // 10)))
        ax.set_xticks(ticks, [rounds[i]["label"] for i in ticks], rotation=45, ha="right", fontsize=7)
        ax.set_xlim(0, len(rounds) - 1)
    else:
        fig, ax = plt.subplots(figsize=(max(4, 0.6 * len(rounds) + 2), 3))
        bottom = [0.0] * len(rounds)
        for d, vals in zip(domains, series, strict=True):
            ax.bar(range(len(rounds)), vals, bottom=bottom, label=d)
            bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
        ax.set_xticks(range(len(rounds)), [r["label"] for r in rounds], rotation=45, ha="right", fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_ylabel("weight")
    ax.set_title(title)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1, 1))
    return _save(fig, path)
