"""One small exception tree; the CLI maps each class to an exit code.

Input errors (exit 2) are the user's to fix: they name the field or file at fault.
Everything else is ours or the environment's (exit 1).
"""

from __future__ import annotations


class CptError(Exception):
    """Base of every error cpt raises on purpose."""

    exit_code: int = 1


class InputError(CptError):
    """Bad input from the user: spec, paths, weights, names, data files."""

    exit_code = 2


class SpecError(InputError):
    """The run spec (YAML) is malformed or invalid; the message names the field."""


class DataError(InputError):
    """A data source, shard, manifest or tokenizer is missing, corrupt or inconsistent."""


class CheckpointError(InputError):
    """A checkpoint is missing, incomplete or does not fit the run's model."""


class RegistryError(InputError):
    """An unknown name was asked of a registry; the message lists the valid names."""


class StoreError(CptError):
    """The run store cannot be reached, or a state change is not allowed."""


class StoreUnreachable(StoreError):
    """The store URL cannot be opened; the user must fix the URL or the server."""

    exit_code = 2


class StoreBusy(StoreError):
    """The store stayed locked by another process for longer than CPT_STORE_TIMEOUT_S, or is corrupt."""

    exit_code = 2


class StoreBehind(StoreError):
    """A shared (non-SQLite) store whose schema is older than this cpt: `cpt db upgrade` migrates it."""

    exit_code = 2


class NotFound(StoreError):
    """A run, stage or round id that is not in the store."""

    exit_code = 2


class InvalidTransition(StoreError):
    """A state change the run/round state machine does not allow."""


class ClusterError(CptError):
    """The Ray cluster (or its job server) cannot be reached or refused the work."""

    exit_code = 2


class TrackingError(CptError):
    """The MLflow tracking store named by the spec cannot be reached (or refused the run) at its start."""

    exit_code = 2


class TrainingError(CptError):
    """A round failed while training, evaluating or saving its checkpoint."""


class Cancelled(CptError):
    """The run was cancelled by the user (cpt runs cancel, Ctrl-C); not a failure."""

    exit_code = 130


class Preempted(CptError):
    """The controller got SIGTERM (a spot node going away, `ray job stop`): the run is resumable."""

    exit_code = 143


class LeaseLost(CptError):
    """Another controller took this run over; this one stops without writing anything more."""


def first_line(exc: BaseException, limit: int = 500) -> str:
    """The first line of another library's exception, for a one-line message ("" if it has none)."""
    lines = str(exc).strip().splitlines()
    return lines[0][:limit] if lines else ""
