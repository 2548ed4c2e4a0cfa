"""The user's own preprocessing (``input.function``): ``prepare(batch) -> dict of arrays``.

``prepare`` gets a chunk's rows as the format reads them (a ``pyarrow.Table``: images as their
encoded bytes, text as strings) and returns every model input, the batch on axis 0; any other
key is per-row context for the output function. Its arrays are checked here: one entry per row,
and element types the model input takes (cast where no value changes meaning: float32 for a
float16 model). A chunk it raises for is given to it again row by row: the rows that still raise
are rejected at stage ``preprocess``, and a function that fails on every row it is given stops the
job (``inference.Health``).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
from typing import Any

import numpy as np
import pyarrow as pa

from scoring.config import Config, InputConfig
from scoring.errors import ConfigError, ScoringError
from scoring.functions import UserFunction, load
from scoring.inference import Health
from scoring.model import ModelInfo, TensorSpec
from scoring.preprocess import Prepared, unskipped
from scoring.record import Reason, Rejections
from scoring.tensors import Group, cast_rule

# Rows handed to the function at once (at least compute.batch_size are read).
CHUNK_ROWS = 1024


@dataclasses.dataclass
class Function:
    fn: UserFunction
    inputs: tuple[TensorSpec, ...]
    columns: tuple[str, ...]  # what it reads; () for every column the input gives
    chunk_rows: int = CHUNK_ROWS
    health: Health = dataclasses.field(default_factory=lambda: Health("preprocess"), compare=False)

    def prepare(
        self, data: pa.Table, skip: np.ndarray | None, pool: concurrent.futures.Executor | None
    ) -> Prepared:
        rows = unskipped(data.num_rows, skip)
        rejected = Rejections()
        if not len(rows):
            return Prepared([], rejected)
        batch = data if len(rows) == data.num_rows else data.take(pa.array(rows))
        try:
            group = self.call(batch, rows)
            self.health.succeeded = True
            return Prepared([group], rejected)
        except ScoringError:
            raise
        except Exception as exc:  # the user's code: row by row, below
            if len(rows) == 1:
                self._reject(rows, exc, rejected)
                return Prepared([], rejected)
        kept: list[Group] = []
        for i in range(len(rows)):
            try:
                kept.append(self.call(batch.slice(i, 1), rows[i : i + 1]))
                self.health.succeeded = True
            except ScoringError:
                raise
            except Exception as exc:  # this row's own failure
                self._reject(rows[i : i + 1], exc, rejected)
        return Prepared(_merged(kept), rejected)

    def _reject(self, rows: np.ndarray, exc: Exception, rejected: Rejections) -> None:
        self.health.failed(exc)  # raises ModelFailure when no row ever succeeds
        message = f"input.function {self.fn.ref} failed for this row: {type(exc).__name__}: {exc}"
        rejected.add_rows(rows, Reason("preprocess", type(exc).__name__, message))

    def call(self, batch: pa.Table, rows: np.ndarray) -> Group:
        """The function's result for ``batch`` as a group of ``rows``. Raises ``ValueError`` or
        ``TypeError`` for a result that does not fit the model (a row failing on its own)."""
        result = self.fn.get()(batch)
        if not isinstance(result, dict):
            raise TypeError(f"it returned {type(result).__name__}; expected a dict of model input -> array")
        missing = [s.name for s in self.inputs if s.name not in result]
        if missing:
            raise ValueError(
                f"it returned no {missing} (keys returned: {sorted(result)}); return every model input: "
                f"{[s.name for s in self.inputs]}"
            )
        specs = {s.name: s for s in self.inputs}
        feed, context = {}, {}
        for key, value in result.items():
            array = np.asarray(value)
            if array.ndim == 0 or len(array) != len(rows):
                found = "a scalar" if array.ndim == 0 else f"{len(array)} entries"
                raise ValueError(
                    f"'{key}' has {found} for {len(rows)} rows; give one entry per row on axis 0"
                )
            if key in specs:
                feed[key] = _cast(array, specs[key])
            else:
                context[key] = array
        return Group(rows, feed, context)

    def notes(self, data: pa.Table) -> list[str]:
        """What the function returned for these rows (``scoring validate``): for them all, else
        for the first row it takes, and what it raised."""
        lines: list[str] = []
        tries = [np.arange(data.num_rows), *(np.array([i]) for i in range(data.num_rows))]
        for rows in tries:
            part = data.take(pa.array(rows, pa.int64()))
            try:
                group = self.call(part, rows)
            except Exception as exc:  # shown, not raised: the rows' own rejections say the rest
                if not lines:
                    lines.append(f"input.function {self.fn.ref} raised {type(exc).__name__}: {exc}")
                continue
            arrays = {**group.feed, **group.context}
            which = "" if len(rows) == data.num_rows else f" for row {rows[0]}"
            shapes = ", ".join(f"{k}: {v.dtype} {list(v.shape)}" for k, v in arrays.items())
            return [*lines, f"input.function {self.fn.ref} returned{which} {shapes}"]
        return lines


def _cast(array: np.ndarray, spec: TensorSpec) -> np.ndarray:
    if spec.dtype == "str":
        if array.dtype.kind not in "OUS":
            raise TypeError(f"'{spec.name}' is {array.dtype}; the model input takes strings")
        return array.astype(object)
    found = str(array.dtype)
    rule = cast_rule(found, spec.dtype)
    if rule is None or rule == "checked":
        raise TypeError(
            f"'{spec.name}' is {found}; the model input takes {spec.dtype}, and converting could change "
            f"values: return {spec.dtype} (or a type that converts exactly)"
        )
    return np.ascontiguousarray(array, dtype=spec.dtype)


def _merged(groups: list[Group]) -> list[Group]:
    """Rows that succeeded one by one, put back together where their shapes agree."""
    by_shape: dict[tuple[Any, ...], list[Group]] = {}
    for g in groups:
        key = tuple((k, v.shape[1:], v.dtype.str) for k, v in sorted({**g.feed, **g.context}.items()))
        by_shape.setdefault(key, []).append(g)
    return [
        Group(
            np.concatenate([g.rows for g in same]),
            {k: np.concatenate([g.feed[k] for g in same]) for k in same[0].feed},
            {k: np.concatenate([g.context[k] for g in same]) for k in same[0].context},
        )
        for same in by_shape.values()
    ]


def needs(inp: InputConfig, model: ModelInfo) -> list[str] | None:
    """The values of ``input.columns`` when set (``{name: column}``: the columns it reads), else
    None: every column the input gives."""
    columns = [c for v in inp.columns.values() for c in ([v] if isinstance(v, str) else v)]
    return list(dict.fromkeys(columns)) or None


def resolve(cfg: Config, model: ModelInfo, schema: pa.Schema, where: str) -> Function:
    """Reads (a file) or finds (a module) the function; raises ``ConfigError``, also for keys of
    the built-in preprocessing it replaces."""
    given = cfg.input.model_fields_set
    replaced = [k for k in ("image", "text") if k in given and getattr(cfg.input, k) is not None]
    if replaced:
        keys = " and ".join(f"input.{k}" for k in replaced)
        raise ConfigError(
            f"input.function replaces the built-in preprocessing, so {keys} would be ignored: leave "
            f"{'them' if len(replaced) > 1 else 'it'} out, or input.function"
        )
    fn = load(cfg.input.function or "", "input.function", cfg.storage_options)
    return Function(fn, model.inputs, tuple(needs(cfg.input, model) or ()))
