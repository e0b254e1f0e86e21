"""One downstream evaluation of a round checkpoint with lm-evaluation-harness, in a Ray task.

The checkpoint is loaded as the Hugging Face model `cpt export` would write (workers/export.py:
load_hf, in memory: nothing is written) and evaluated by `lm_eval.simple_evaluate` through
lm-eval's HF model on the task's device, so the scores are the ones `lm_eval --model hf
--model_args pretrained=EXPORT` gives for an export of it. A task folder (local YAML and data) is
added to lm-eval's task index; datasets are read offline (`HF_DATASETS_OFFLINE=1`) unless the task
is a Hub name.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from store.evals import Score, is_task_path


def task_names(task: str) -> list[str]:
    """The lm-eval tasks a spec's `task` names: itself, or every task a folder's YAML files define."""
    if not is_task_path(task):
        return [task]
    import yaml

    names = []
    for f in sorted(Path(task).glob("*.yaml")):
        try:
            doc = yaml.safe_load(f.read_text()) or {}
        except yaml.YAMLError:
            continue
        if isinstance(doc, dict) and isinstance(doc.get("task"), str):
            names.append(doc["task"])
    return names


def scores_of(results: dict[str, Any], task: str) -> list[Score]:
    """lm-eval's results for one task as Scores: `metric,filter` keys, their `_stderr` beside them."""
    got = results.get("results", {}).get(task, {})
    samples = results.get("n-samples", {}).get(task, {}).get("effective")
    out = []
    for key, value in sorted(got.items()):
        metric, _, filt = key.partition(",")
        if not filt or metric.endswith("_stderr") or not isinstance(value, int | float):
            continue
        stderr = got.get(f"{metric}_stderr,{filt}")
        out.append(Score(key, float(value), float(stderr) if isinstance(stderr, int | float) else None, samples))
    return out


def evaluate(checkpoint: str, tokenizer: str, task: str, limit: int | None, num_fewshot: int,
             seed: int, gpus: float = 0) -> dict[str, Any]:
    """Scores of every lm-eval task `task` names on the checkpoint: {task: [Score...]}, seconds."""
    import torch

    from workers.checkpoint import local_folder
    from workers.export import load_hf

    t0 = time.perf_counter()
    # the ranks are the workload: on a node they share, an evaluation takes only the CPU they leave
    # (its worker process ends with the task, max_calls=1: no later task inherits the priority)
    os.nice(max(0, 19 - os.nice(0)))
    if "OMP_NUM_THREADS" in os.environ:  # a reused Ray worker: the threads this task was given
        torch.set_num_threads(max(1, int(os.environ["OMP_NUM_THREADS"])))
    local = is_task_path(task)
    if local:
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    from corpus.fs import cache_root

    os.environ.setdefault("HF_DATASETS_CACHE", str(cache_root() / "hf-datasets"))  # not ~/.cache
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    model, tok = load_hf(local_folder(checkpoint), tokenizer)  # a checkpoint URI: a local cached copy
    device = "cuda" if gpus and torch.cuda.is_available() else "cpu"
    names = task_names(task)
    out = lm_eval.simple_evaluate(
        model=HFLM(pretrained=model.to(device), tokenizer=tok, batch_size=8), tasks=names,
        num_fewshot=num_fewshot, limit=limit, log_samples=False,
        task_manager=TaskManager(include_path=task) if local else TaskManager(), random_seed=seed,
        numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed)
    return {"scores": {name: scores_of(out, name) for name in names}, "seconds": time.perf_counter() - t0}
