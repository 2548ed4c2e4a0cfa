"""The exception tree, and the one place foreign exceptions are translated.

::

    ScoringError                 anything the user can act on; exit_code says how the CLI exits
    ├── ConfigError              bad or missing config key (exit 2)
    ├── ModelError               model missing, corrupt or unusable (exit 2)
    ├── StorageError             a URI that cannot be listed, read or written (exit 2)
    ├── InputError               the data does not fit the model: column, type, shape (exit 2)
    ├── PlanChanged              resume refused: the model, a config key or an input file changed
    │                            since the plan was made (exit 2)
    ├── ProviderError            a session did not get the execution provider it needs (exit 1)
    ├── ModelFailure             the model fails on every batch, or gives outputs that cannot be
    │                            aligned with the rows: a property of the model, not the data (exit 1)
    ├── RowError                 a whole shard rejected (unreadable); becomes _errors.parquet rows
    ├── RowsRejected             scoring.predict met rows it cannot score (on_error="raise")
    ├── JobFailed                the job ran but failed: too many rejected rows, a crash (exit 1)
    └── Interrupted              SIGINT or SIGTERM stopped the job; resume finishes it (exit 130)

Anything that is not a ``ScoringError`` is a bug in scoring and keeps its traceback.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


class ScoringError(Exception):
    """Base of every error a user can act on."""

    exit_code = 1


class ConfigError(ScoringError):
    exit_code = 2


class ModelError(ScoringError):
    exit_code = 2


class StorageError(ScoringError):
    exit_code = 2


class InputError(ScoringError):
    exit_code = 2


class PlanChanged(ScoringError):
    exit_code = 2


class ProviderError(ScoringError):
    exit_code = 1


class ModelFailure(ScoringError):
    exit_code = 1


class RowsRejected(ScoringError):
    exit_code = 1


class JobFailed(ScoringError):
    exit_code = 1


class Interrupted(ScoringError):
    exit_code = 130


class RowError(ScoringError):
    """Rows ``[row_start, row_stop)`` of a shard are rejected at ``stage`` (-1, -1: a file whose
    row count is unknown).

    ``error`` is a short machine-friendly kind (the class name of the cause, say), the message
    says what was expected, what was found and what to do.
    """

    def __init__(
        self, stage: str, message: str, error: str = "", row_start: int = -1, row_stop: int = -1
    ) -> None:
        super().__init__(message)
        self.stage = stage
        self.message = message
        self.error = error or type(self).__name__
        self.row_start = row_start
        self.row_stop = row_stop

    def __reduce__(self) -> tuple[Any, ...]:
        # It travels from a Ray worker to the driver (a shard that could not be read); the
        # default pickling would call __init__ with the message alone.
        return (type(self), (self.stage, self.message, self.error, self.row_start, self.row_stop))


@contextlib.contextmanager
def translated(kind: type[ScoringError], what: str) -> Iterator[None]:
    """Re-raise foreign exceptions (ORT, pyarrow, PIL, fsspec, OS) as ``kind``.

    ``what`` says where, e.g. ``"reading model s3://b/m.onnx"``; the message keeps the cause.
    A ``ScoringError`` passes through unchanged.
    """
    try:
        yield
    except ScoringError:
        raise
    except FileNotFoundError as exc:
        raise kind(f"{what}: not found ({exc}); check the path or URI") from exc
    except PermissionError as exc:
        raise kind(f"{what}: permission denied ({exc}); check credentials") from exc
    except Exception as exc:  # foreign library errors only; re-raised, never swallowed
        raise kind(f"{what}: {type(exc).__name__}: {exc}") from exc
