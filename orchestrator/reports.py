"""Comparisons and reports built from the run store: final losses, forgetting, curves, HTML."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

from store.runs import RunStore
from store.secrets import redacted_yaml


def curve(store: RunStore, run_id: str) -> list[dict[str, Any]]:
    """[(tokens seen, global step, eval losses)] at the start (if measured) and after every round."""
    done = store.rounds(run_id, status="finished")
    return _curve(done, done[0].result.eval_before if done else None)


def _curve(done: list, before: dict[str, float] | None) -> list[dict[str, Any]]:
    """Points after every round of `done` (light rows will do), from `before` (the losses measured
    before the first round) when known."""
    points, tokens = [], 0
    if done and before:
        points.append({"tokens": 0, "step": done[0].step_start, "stage": -1, "losses": before})
    for r in done:
        tokens += r.tokens or 0
        points.append({"tokens": tokens, "step": r.step_end, "stage": r.stage_index, "losses": r.eval_losses})
    return points


def summary(store: RunStore, run_id: str, domains: list[str] | None = None) -> dict[str, Any]:
    """Final per-domain loss, their average, forgetting of the first stage's domains, compute."""
    run = store.get_run(run_id)
    spec = run.spec_json
    done = store.rounds(run_id, status="finished")
    pts = _curve(done, done[0].result.eval_before if done else None)
    final = pts[-1]["losses"] if pts else {}
    # forgetting: how much the last stage raised the loss of domains it does not train as new data,
    # measured from just before it (the previous stage's end, or the loaded checkpoint's eval)
    last_stage = len(spec["stages"]) - 1
    old = [d for d in final if d not in spec["stages"][-1]["domains"]]
    before_last = [p for p in pts if p["stage"] < last_stage]
    base = before_last[-1]["losses"] if before_last and (last_stage > 0 or spec["model"].get("path")) else None
    forgetting = {d: final[d] - base[d] for d in old if d in base} if base else None
    return {
        "run_id": run_id, "name": run.name, "status": run.status,
        **_restrict(final, domains or sorted(final)),
        "forgetting": forgetting,
        "tokens": sum(r.tokens or 0 for r in done),
        "wall_s": sum(r.result.wall_s for r in done),
        "rounds": len(done),
        "evals": eval_summary(store, run_id),
    }


def eval_curves(store: RunStore, run_id: str) -> dict[str, list[tuple[int, int, float]]]:
    """Each downstream score (`task` `metric`) over the run: (stage, round, value), in round order."""
    from store.evals import results, score_key

    out: dict[str, list[tuple[int, int, float]]] = {}
    for e in results(store, run_id):
        if e.error is None and e.value is not None:
            out.setdefault(score_key(e.task, e.metric), []).append((e.stage_index, e.round_index, e.value))
    return out


def eval_summary(store: RunStore, run_id: str) -> dict[str, dict[str, float]]:
    """Per downstream score: its first and last value and the change (a source task's drop is
    forgetting, a target task's rise is gain)."""
    return {k: {"first": v[0][2], "final": v[-1][2], "change": v[-1][2] - v[0][2]}
            for k, v in eval_curves(store, run_id).items()}


def _restrict(final: dict[str, float], doms: list[str]) -> dict[str, Any]:
    """The final losses over `doms` and their average (over the domains the run measured)."""
    measured = [final[d] for d in doms if d in final]
    return {"final": {d: final.get(d) for d in doms},
            "average": sum(measured) / len(measured) if measured else None}  # None: nothing measured yet


def compare(store: RunStore, run_ids: list[str], domains: list[str] | None = None) -> list[dict[str, Any]]:
    """Summaries side by side, over the given domains or the union of every run's domains."""
    rows = [summary(store, r) for r in run_ids]
    doms = domains or sorted({d for r in rows for d in r["final"]})
    return [{**r, **_restrict(r["final"], doms)} for r in rows]


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def plot_curves(series: dict[str, list[dict[str, Any]]], domains: list[str], path: Path | None = None,
                title: str = "validation loss"):
    """One panel per domain, one line per run/condition: eval loss over tokens seen."""
    from orchestrator.plots import _plt

    plt = _plt()
    fig, axes = plt.subplots(1, len(domains), figsize=(4.5 * len(domains), 3.4), squeeze=False)
    for ax, d in zip(axes[0], domains, strict=True):
        for label, pts in series.items():
            xs = [p["tokens"] for p in pts if d in p["losses"]]
            ys = [p["losses"][d] for p in pts if d in p["losses"]]
            ax.plot(xs, ys, marker="o", ms=3, lw=1.2, label=label)
        ax.set_title(f"{d}")
        ax.set_xlabel("tokens")
        ax.set_ylabel("val loss")
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1, 1))
    fig.suptitle(title)
    fig.tight_layout()
    if path:
        fig.savefig(path, dpi=110)
    return fig


def write_report(store: RunStore, run_id: str, out: Path) -> Path:
    """A self-contained HTML report: summary, per-round table, loss curves, LR and mixture plots."""
    from orchestrator.plots import _plt
    from store.errors import InputError
    from store.files import output_file

    plt = _plt()
    s = summary(store, run_id)
    done = store.rounds(run_id, status="finished")
    if not done:
        raise InputError(f"run {run_id} ({s['status']}) has no finished round yet: nothing to report")
    pts = curve(store, run_id)
    doms = sorted(s["final"])
    imgs = {"validation loss over tokens": _png(plot_curves({s["name"]: pts}, doms))}
    lrs, steps = [], []
    for r in done:
        res = r.result
        lrs += res.lrs
        steps += list(range(r.step_start, r.step_start + len(res.lrs)))
    fig, ax = plt.subplots(figsize=(8, 3))
    ax.plot(steps, lrs)
    ax.set_xlabel("global step")
    ax.set_ylabel("learning rate (as trained)")
    imgs["learning rate"] = _png(fig)
    fig, ax = plt.subplots(figsize=(8, 3))
    for d in sorted({d for r in done for d in r.weights}):
        ax.step([r.step_start for r in done], [r.weights.get(d, 0.0) for r in done], where="post", label=d)
    ax.set_xlabel("global step")
    ax.set_ylabel("mixture weight")
    ax.legend(fontsize=7)
    imgs["mixture weights"] = _png(fig)
    scores = eval_curves(store, run_id)
    if scores:  # downstream scores per task over rounds
        steps_of = {(r.stage_index, r.round_index): r.step_end for r in done}
        fig, ax = plt.subplots(figsize=(8, 3))
        for name, pts_ in sorted(scores.items()):
            xs = [(steps_of.get((st, rd)), v) for st, rd, v in pts_ if (st, rd) in steps_of]
            ax.plot([x for x, _ in xs], [v for _, v in xs], marker="o", label=name)
        ax.set_xlabel("global step")
        ax.set_ylabel("downstream score")
        ax.legend(fontsize=7)
        imgs["downstream scores"] = _png(fig)

    esc = html.escape
    rows = "".join(
        f"<tr><td>{r.stage_index}</td><td>{r.round_index}</td><td>{r.attempt}</td><td>{r.step_start}-{r.step_end}</td>"
        f"<td>{esc(' '.join(f'{d}={w:.3f}' for d, w in sorted(r.weights.items())))}</td>"
        f"<td>{r.train_loss:.4f}</td>"
        f"<td>{esc(' '.join(f'{d}={v:.4f}' for d, v in sorted(r.eval_losses.items())))}</td>"
        f"<td>{r.tokens_per_s:,.0f}</td></tr>" for r in done)
    forgetting = s["forgetting"] or {}
    final = "".join(f"<tr><td>{esc(d)}</td><td>{v:.4f}</td>"
                    f"<td>{'' if d not in forgetting else f'{forgetting[d]:+.4f}'}</td></tr>"
                    for d, v in s["final"].items() if v is not None)
    figures = "".join(f"<h2>{esc(k)}</h2><img src='data:image/png;base64,{v}'/>" for k, v in imgs.items())
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>cpt report {esc(run_id)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 8px;font-size:13px}}img{{max-width:100%}}</style></head><body>
<h1>{esc(s['name'])} <small>({esc(run_id)}, {esc(s['status'])})</small></h1>
<p>{s['rounds']} rounds, {s['tokens']:,} tokens, {s['wall_s']:.0f} s of round wall time.
Average final validation loss {s['average']:.4f}.</p>
<h2>final validation loss</h2><table><tr><th>domain</th><th>loss</th><th>forgetting</th></tr>{final}</table>
<h2>rounds</h2><table><tr><th>stage</th><th>round</th><th>try</th><th>steps</th><th>weights</th><th>train loss</th>
<th>eval loss</th><th>tok/s</th></tr>{rows}</table>{figures}
<h2>spec</h2><pre>{esc(redacted_yaml(store.get_run(run_id).spec_json))}</pre></body></html>"""
    with output_file(out) as tmp:
        tmp.write_text(page)
    return Path(out)


def stage_summary(store: RunStore, run_id: str) -> list[dict[str, Any]]:
    """Per-domain eval losses before the run and after each stage (from finished rounds)."""
    rows: list[dict[str, Any]] = []
    done = store.rounds(run_id, status="finished")
    before = done[0].result.eval_before if done else None
    if before:
        rows.append({"point": "start", "losses": before})
    for stage in store.stages(run_id):
        last = [x for x in done if x.stage_index == stage.index]
        if last:
            rows.append({"point": f"after {stage.name}", "losses": last[-1].eval_losses})
    return rows
