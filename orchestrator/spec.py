"""The run spec: a typed model of a multi-stage CPT run, loaded from YAML.

`load_spec` checks structure and values (SpecError naming the field); the stage, resource,
checkpoint and tracking parts are in spec_parts.py; `orchestrator.data_check.check_data` checks
that domains, tokenizer and checkpoint on disk fit the spec (DataError naming the file).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from corpus.fs import is_uri, scheme_problem
from corpus.names import buffer_name
from orchestrator.spec_parts import MAX_STAGE_STEPS, CheckpointSpec, EvalSpec, StageSpec, TrackingSpec
from store.configs import Config, ModelConfig, OptimizerConfig, Resources
from store.errors import SpecError
from store.evals import is_task_path
from store.names import NAME_PATTERN, NAME_RULE, is_name


class RunSpec(Config):
    """A continual pre-training run: stages of rounds over domains of token shards."""

    name: str = Field(pattern=NAME_PATTERN)
    """Run name: 1-64 letters, digits, `.`, `_`, `-`, starting with a letter or digit (store/names.py)."""
    seed: int = Field(0, ge=0, le=2**63 - 1)
    """Seed for model init and data order."""
    model: ModelConfig = Field(default_factory=ModelConfig)
    """The model to train."""
    tokenizer: str
    """Path of the tokenizers JSON every domain was prepared with."""
    seq_len: int = Field(128, ge=8, le=32768)
    """Tokens per training sequence."""
    batch_size: int = Field(16, gt=0, le=1 << 20)
    """Sequences per optimizer step: the global batch, the same for any number of workers."""
    micro_batch_size: int | None = Field(None, gt=0, le=1 << 20)
    """Sequences per rank per forward/backward (gradient accumulation when the rank's share of the
    global batch does not fit); None = the whole share at once."""
    domains: dict[str, str] = Field(min_length=1)
    """Domain name -> shard folder or URI (made by `cpt data prepare`). Names follow the name
    grammar of store/names.py (`replay/<domain>` is how a domain's replay buffer is named)."""

    @field_validator("domains")
    @classmethod
    def _domain_names(cls, v: dict[str, str]) -> dict[str, str]:
        bad = [d for d in v if not is_name(d)]
        if bad:
            raise ValueError(f"domain name(s) {bad} are not valid names ({NAME_RULE})")
        for d, location in v.items():
            if why := scheme_problem(location):
                raise ValueError(f"domain {d!r}: {why}")
        return v
    stages: list[StageSpec] = Field(min_length=1)
    """Stages in order."""
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    """AdamW settings shared by all stages."""
    eval_batches: int = Field(4, gt=0, le=10_000)
    """Validation batches per domain after each round."""
    resources: Resources = Field(default_factory=Resources)
    """The worker group on Ray (ranks, CPUs/GPUs per rank, strategy, precision)."""
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)
    """MLflow settings."""
    checkpoints: CheckpointSpec = Field(default_factory=CheckpointSpec)
    """Checkpoint retention."""
    evals: list[EvalSpec] = Field(default_factory=list, max_length=64)
    """Downstream evaluations (lm-evaluation-harness) of committed rounds, run beside training."""

    @model_validator(mode="after")
    def _cross(self) -> RunSpec:
        from mixers.base import build_mixer
        from workers.families import problem

        self._check_batch()
        if why := problem(self.model):
            raise SpecError(why)
        seen: set[str] = set()
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique, got {names}")
        for i, st in enumerate(self.stages):
            for d in st.domains:
                if d not in self.domains:
                    raise SpecError(f"stages.{i}.domains: unknown domain {d!r}; "
                                    f"defined: {sorted(self.domains)}")
            for d in st.replay.sources or []:
                if d not in self.domains:
                    raise SpecError(f"stages.{i}.replay.sources: unknown domain {d!r}; "
                                    f"defined: {sorted(self.domains)}")
                if st.replay.buffer is not None and d not in seen:
                    raise SpecError(f"stages.{i}.replay.sources: {d!r} is replayed from a buffer but no earlier "
                                    f"stage trains it, so its buffer would stay empty; trained before: "
                                    f"{sorted(seen)}")
            steps = self.stage_steps(i)
            if steps > MAX_STAGE_STEPS:
                raise SpecError(f"stages.{i}.tokens: {st.tokens:,} tokens are {steps:,} steps of "
                                f"{self.tokens_per_step():,} tokens; at most {MAX_STAGE_STEPS:,} steps per stage "
                                f"(raise batch_size or seq_len, or split the stage)")
            if st.rounds > steps:
                raise SpecError(f"stages.{i}.rounds: {st.rounds} rounds but only {steps} steps "
                                f"({st.tokens} tokens / {self.batch_size * self.seq_len} per step)")
            if getattr(st.schedule, "resume_const", False):
                self._check_resume_const(i)
            mixer = build_mixer(st.mixer, where=f"stages.{i}.mixer")
            if type(mixer.config) is type(st.mixer) and mixer.config.kind == st.mixer.kind:
                st.mixer = mixer.config  # what building it fills in (an agent file's sha256) is recorded
            if st.mixer.kind == "static":
                known = [*st.domains, *self.replay_domains(i)]
                unknown = sorted(set(st.mixer.weights) - set(known))
                if unknown:
                    raise SpecError(f"stages.{i}.mixer.weights: domain(s) {unknown} are not trained in "
                                    f"this stage; valid: {known}")
            if st.replay.fraction > 0 and not mixer.reads_replay_fraction():
                raise SpecError(f"stages.{i}.replay.fraction: {st.replay.fraction} would be ignored: mixer "
                                f"{st.mixer.kind!r} (as configured) sets the replay share itself; remove "
                                f"replay.fraction, or use fixed_replay / temperature / proportional without their "
                                f"own fraction or pool")
            known = [*st.domains, *self.replay_domains(i)]
            for d in st.max_epochs:
                if d not in known:
                    raise SpecError(f"stages.{i}.max_epochs: domain {d!r} is not trained in this stage; "
                                    f"valid: {known}")
            seen.update(st.domains)
        return self

    def _check_batch(self) -> None:
        res = self.resources
        if res.elastic:  # the bounds must be usable sizes; sizes between them that are not are skipped
            for n, bound in ((res.workers, "max"), (res.min_workers, "min")):
                if problem := self.batch_problem(n):
                    raise SpecError(f"resources.workers.{bound}: {problem}")
        elif problem := self.batch_problem(res.workers):
            raise SpecError(problem)
        if self.model.dtype == "bfloat16" and self.resources.precision != "bf16-mixed":
            raise SpecError("model.dtype bfloat16 is now resources.precision: bf16-mixed (weights stay float32)")

    def batch_problem(self, n: int) -> str | None:
        """Why the global batch cannot run on n ranks (it must split evenly, in whole micro-batches)."""
        b = self.batch_size
        if b % n:
            return (f"batch_size {b} must divide evenly over resources.workers {n} (each rank trains "
                    f"batch_size / workers sequences of every step)")
        share, micro = b // n, self.micro_batch_size
        if micro is not None and share % micro:
            return f"micro_batch_size {micro} must divide each rank's share of the batch ({b} / {n} workers = {share})"
        return None

    def _check_resume_const(self, i: int) -> None:
        """An infinite stage that continues at the previous stage's constant LR needs a previous
        infinite stage that ends in its constant phase (not annealed) at the same const_lr."""
        where = f"stages.{i}.schedule.resume_const"
        prev = self.stages[i - 1].schedule if i else None
        if prev is None or prev.kind != "infinite":
            raise SpecError(f"{where}: the previous stage must have an infinite schedule"
                            + (f" (it has {prev.kind})" if prev is not None else " (this is the first stage)"))
        if prev.warmup + prev.cooldown + prev.constant < 1 - 1e-9:
            raise SpecError(f"{where}: stage {i - 1} anneals to min_lr at its end (warmup + cooldown + constant = "
                            f"{prev.warmup + prev.cooldown + prev.constant:g} < 1), so it does not end at const_lr; "
                            f"make its phases sum to 1 (no anneal) to continue at its constant LR")
        if not math.isclose(prev.const_lr, self.stages[i].schedule.const_lr, rel_tol=1e-9):
            raise SpecError(f"{where}: const_lr {self.stages[i].schedule.const_lr:g} differs from stage {i - 1}'s "
                            f"{prev.const_lr:g}; continuing means the same constant LR")

    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len

    def stage_steps(self, i: int) -> int:
        return max(1, math.ceil(self.stages[i].tokens / self.tokens_per_step()))

    def stage_starts(self) -> list[int]:
        starts, acc = [], 0
        for i in range(len(self.stages)):
            starts.append(acc)
            acc += self.stage_steps(i)
        return starts

    def total_steps(self) -> int:
        return sum(self.stage_steps(i) for i in range(len(self.stages)))

    def round_bounds(self, i: int) -> list[tuple[int, int]]:
        """(first stage step, steps) of each round of stage i; the remainder goes to early rounds."""
        steps, rounds = self.stage_steps(i), self.stages[i].rounds
        base, extra = divmod(steps, rounds)
        out, start = [], 0
        for r in range(rounds):
            n = base + (1 if r < extra else 0)
            out.append((start, n))
            start += n
        return out

    def replay_sources(self, i: int) -> list[str]:
        """Earlier domains stage i replays (by their own names)."""
        st = self.stages[i]
        if st.replay.sources is not None:
            return [d for d in st.replay.sources if d not in st.domains]
        earlier = [d for s in self.stages[:i] for d in s.domains]
        return [d for d in dict.fromkeys(earlier) if d not in st.domains]

    def replay_domains(self, i: int) -> list[str]:
        """What stage i samples replay from: the sources, or their buffers (`replay/<domain>`)."""
        if self.stages[i].replay.buffer is None:
            return self.replay_sources(i)
        return [buffer_name(d) for d in self.replay_sources(i)]

    def buffered_domains(self) -> list[str]:
        """Domains some stage replays from a buffer: their buffers are filled as stages finish."""
        return sorted({d for i, st in enumerate(self.stages) if st.replay.buffer for d in self.replay_sources(i)})


def _format_error(exc: ValidationError) -> str:
    lines = []
    from store.schedules import SCHEDULES

    for err in exc.errors():
        parts = list(err["loc"])
        # pydantic puts the union tag in the location (stages.0.schedule.cosine.peak_lr): not a field
        parts = [p for k, p in enumerate(parts) if not (k and parts[k - 1] == "schedule" and p in SCHEDULES)]
        loc = ".".join(str(p) for p in parts) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
        if msg.startswith("."):  # a nested config named the failing field below this location
            sub, _, msg = msg.partition(": ")
            loc += sub
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        elif err["type"] == "string_pattern_mismatch":
            msg = f"{err.get('input')!r} is not a valid name ({NAME_RULE})"
        lines.append(f"{loc}: {msg}")
    return "invalid run spec:\n  " + "\n  ".join(lines)


def _resolve_paths(raw: dict[str, Any], base: Path) -> dict[str, Any]:
    def fix(p: Any) -> Any:
        if not isinstance(p, str) or is_uri(p):  # s3://, gs://, file://...: read by corpus.fs as given
            return p
        p = os.path.expanduser(os.path.expandvars(p))
        return str(p if os.path.isabs(p) else (base / p).resolve())

    raw = dict(raw)
    if "tokenizer" in raw:
        raw["tokenizer"] = fix(raw["tokenizer"])
    if isinstance(raw.get("domains"), dict):
        raw["domains"] = {k: fix(v) for k, v in raw["domains"].items()}
    if isinstance(raw.get("model"), dict) and raw["model"].get("path"):
        raw["model"] = {**raw["model"], "path": fix(raw["model"]["path"])}
    if isinstance(raw.get("checkpoints"), dict) and raw["checkpoints"].get("uri"):
        raw["checkpoints"] = {**raw["checkpoints"], "uri": fix(raw["checkpoints"]["uri"])}
    if isinstance(raw.get("stages"), list):  # a mixer's file (the agent's) is the spec's, like the data
        raw["stages"] = [{**st, "mixer": {**st["mixer"], "path": fix(st["mixer"]["path"])}}
                         if isinstance(st, dict) and isinstance(st.get("mixer"), dict)
                         and isinstance(st["mixer"].get("path"), str) else st for st in raw["stages"]]
    if isinstance(raw.get("evals"), list):  # a task folder (a path, not an lm-eval task name) is the spec's too
        raw["evals"] = [{**e, "task": fix(e["task"])} if isinstance(e, dict) and isinstance(e.get("task"), str)
                        and is_task_path(e["task"]) else e for e in raw["evals"]]
    return raw


MAX_SPEC_BYTES = 1 << 20
MAX_DEPTH = 32


class _StrictLoader(yaml.SafeLoader):
    """safe_load without aliases (a billion-laughs document is small as YAML and enormous once
    anything walks it) and with a nesting limit."""

    depth = 0

    def compose_node(self, parent, index):  # noqa: ANN001 (PyYAML's signature)
        from yaml.composer import ComposerError

        if self.check_event(yaml.AliasEvent):
            raise ComposerError(None, None, "aliases (*name) are not allowed in a run spec",
                                self.peek_event().start_mark)
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                raise ComposerError(None, None, f"nested deeper than {MAX_DEPTH} levels",
                                    self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def parse_spec(text: str, source: str = "<spec>", base: Path | None = None) -> RunSpec:
    """Parse YAML text into a RunSpec; relative paths resolve against `base` ($VARS expand)."""
    if len(text) > MAX_SPEC_BYTES:
        raise SpecError(f"{source}: {len(text):,} characters; a run spec may have at most {MAX_SPEC_BYTES:,}")
    try:
        raw = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SpecError(f"{source}: malformed YAML at{where}: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{source}: the run spec must be a YAML mapping, got {type(raw).__name__}")
    raw = _resolve_paths(raw, base or Path.cwd())
    try:
        return RunSpec.model_validate(raw)
    except ValidationError as exc:
        raise SpecError(f"{source}: {_format_error(exc)}") from None


def load_spec(path: str | Path) -> tuple[RunSpec, str]:
    """Load a YAML spec file; returns the spec and the YAML text (stored with the run)."""
    import stat

    path = Path(path)
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            kind = "a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file (a device, pipe or socket)"
            raise SpecError(f"{path}: is {kind}; give a YAML file")
        if info.st_size > MAX_SPEC_BYTES:
            raise SpecError(f"{path}: {info.st_size:,} bytes; a run spec may have at most {MAX_SPEC_BYTES:,}")
        with open(path, "rb") as f:
            data = f.read(MAX_SPEC_BYTES + 1)
    except FileNotFoundError:
        raise SpecError(f"{path}: spec file does not exist") from None
    except OSError as exc:
        raise SpecError(f"{path}: cannot read spec ({exc.strerror or exc})") from None
    if b"\x00" in data:
        raise SpecError(f"{path}: is a binary file, not a YAML run spec")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(f"{path}: not UTF-8 text (byte {exc.start}); a run spec is a YAML file") from None
    return parse_spec(text, str(path), path.resolve().parent), text
