"""Scoring prepared rows: one ORT session, then the columns each batch gives. No I/O.

``Scorer`` takes groups of rows with their tensors (from a preprocessor) through the session in
batches (``inference``), keeps the raw outputs asked for as Arrow columns (``raw``), and hands
each batch to the job's postprocessors (``postprocess``), which add their columns. The shard
loop (``worker``), ``scoring validate`` and the Python API all score through it, so a row gets the
same treatment everywhere.

A postprocessor that raises for a batch (anything but ``ModelFailure``) is called again row by
row: the rows that still fail are rejected at stage ``postprocess``, the others kept; one that
fails on every row it is given stops the job (``inference.Health``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from scoring.constants import Constants
from scoring.errors import ScoringError
from scoring.inference import Batch, Batches, Health, align
from scoring.model import ModelInfo
from scoring.postprocess import Postprocessor
from scoring.raw import is_identity, output_columns, reorder, to_arrow
from scoring.record import Reason, Rejections
from scoring.session import Session, warm_up
from scoring.tensors import Group


@dataclasses.dataclass
class Scored:
    """What a chunk of rows gave: the prediction columns of the rows scored (``rows``, ascending
    indices into the chunk), the rows rejected by the session or the postprocessors, and the
    time ORT took."""

    rows: np.ndarray
    fields: list[pa.Field]
    columns: list[pa.Array]
    rejected: Rejections
    infer_s: float = 0.0


def raw_outputs(
    model: ModelInfo, outputs: Mapping[str, str] | None, postprocessors: Sequence[Postprocessor]
) -> dict[str, Any]:
    """Column -> model output kept as it is: ``output.outputs``, or every output when it is not
    set, unless a postprocessor replaces them (then none)."""
    replaced = outputs is None and any(pp.replaces_outputs for pp in postprocessors)
    return output_columns(model, {} if replaced else outputs)


def prediction_columns(
    model: ModelInfo, outputs: Mapping[str, str] | None, postprocessors: Sequence[Postprocessor]
) -> list[tuple[str, str]]:
    """The columns a ``Scorer`` adds to each row, in order, each with what adds it (for messages)."""
    cols = [(c, f"model output '{s.name}'") for c, s in raw_outputs(model, outputs, postprocessors).items()]
    for pp in postprocessors:
        cols += [(f.name, f"output.{pp.key}") for f in pp.fields()]
    return cols


class Scorer:
    """Scores groups of rows with ``session``: ``outputs`` maps prediction columns to model
    outputs (``output.outputs``), then each postprocessor's columns. Raises ``ModelFailure`` at
    construction when the warm-up batch already shows an output that cannot be aligned with
    rows, or that a postprocessor cannot use."""

    def __init__(
        self,
        model: ModelInfo,
        session: Session,
        outputs: Mapping[str, str] | None,
        postprocessors: Sequence[Postprocessor],
        batch_size: int,
        constants: Constants | None = None,
    ) -> None:
        self.model, self.session, self.batch_size = model, session, batch_size
        self.constants = constants or Constants()
        self.postprocessors = list(postprocessors)
        self.outputs = raw_outputs(model, outputs, self.postprocessors)
        self.raw = [s.name for s in self.outputs.values()]
        reads = [name for pp in self.postprocessors for name in pp.reads]
        self.fetch = list(dict.fromkeys([*self.raw, *reads]))
        # Outputs whose batch is not on axis 0, as a postprocessor's layout says ([T, N, C]).
        self.axes = {n: a for pp in self.postprocessors for n, a in getattr(pp, "batch_axes", {}).items()}
        self.health = Health("infer")
        self.decoding = Health("postprocess")
        rows, values = warm_up(session, model, self.fetch, self.constants)
        if values is not None:
            # align names an output that cannot be matched with rows.
            aligned = dict(zip(self.fetch, align(values, self.fetch, model, rows, rows, self.axes)))
            for pp in self.postprocessors:
                pp.check({name: aligned[name] for name in pp.reads})

    def run(self, groups: Sequence[Group]) -> Scored:
        batches = Batches(
            self.session, self.model, self.fetch, self.batch_size, self.health, self.axes, self.constants
        )
        kept_rows: list[np.ndarray] = []
        raw: dict[str, list[Any]] = {name: [] for name in self.raw}
        decoded: list[list[pa.Array]] = []  # per batch: every postprocessor's columns
        rejected = batches.rejected
        for batch in batches.run(groups):
            columns, keep = self._decode(batch, rejected)
            if not keep.any():
                continue
            whole = bool(keep.all())
            kept_rows.append(batch.rows if whole else batch.rows[keep])
            for name in self.raw:
                value = batch.outputs[name]
                raw[name].append(value if whole else _take(value, keep))
            decoded.append(columns)
        rows = np.concatenate(kept_rows) if kept_rows else np.zeros(0, np.int64)
        order = np.argsort(rows, kind="stable")
        fields, arrays = [], []
        for col, spec in self.outputs.items():
            field, array = to_arrow(col, spec, reorder(raw[spec.name], order))
            fields.append(field)
            arrays.append(array)
        for i, field in enumerate(f for pp in self.postprocessors for f in pp.fields()):
            # A part may hold a type the field learned later (a user function's list of nulls).
            parts = [c[i] if c[i].type == field.type else c[i].cast(field.type) for c in decoded]
            array = pa.concat_arrays(parts) if parts else pa.array([], field.type)
            if not is_identity(order):
                array = array.take(pa.array(order))
            fields.append(field.with_type(array.type))
            arrays.append(array)
        return Scored(rows[order], fields, arrays, rejected, batches.infer_s)

    def _decode(self, batch: Batch, rejected: Rejections) -> tuple[list[pa.Array], np.ndarray]:
        """Every postprocessor's columns for the rows of ``batch`` that it can decode, and which
        rows those are; the others are rejected (see the module docstring)."""
        k = len(batch.rows)
        if not self.postprocessors:
            return [], np.ones(k, bool)
        try:
            columns = self._columns(batch.outputs, batch.context)
            self.decoding.succeeded = True
            return columns, np.ones(k, bool)
        except ScoringError:
            raise
        except Exception as exc:  # a postprocessor's, or a user's function: row by row, below
            if k == 1:
                self.decoding.failed(exc)
                message = f"decoding the model's outputs failed for this row: {type(exc).__name__}: {exc}"
                rejected.add_rows(batch.rows, Reason("postprocess", type(exc).__name__, message))
                return [], np.zeros(1, bool)
        parts, keep = [], np.zeros(k, bool)
        for i in range(k):
            one = Batch(
                batch.rows[i : i + 1],
                {n: _take(v, slice(i, i + 1)) for n, v in batch.outputs.items()},
                {n: v[i : i + 1] for n, v in batch.context.items()},
            )
            columns, ok = self._decode(one, rejected)
            if ok[0]:
                keep[i] = True
                parts.append(columns)
        merged = [pa.concat_arrays([p[j] for p in parts]) for j in range(len(parts[0]))] if parts else []
        return merged, keep

    def _columns(self, outputs: Mapping[str, Any], context: Mapping[str, np.ndarray]) -> list[pa.Array]:
        columns: list[pa.Array] = []
        for pp in self.postprocessors:
            columns += pp.decode({name: outputs[name] for name in pp.reads}, context)
        return columns


def _take(value: Any, which: Any) -> Any:
    """Rows of one output's batch value: a numpy array, or a list (sequences of maps)."""
    if isinstance(value, np.ndarray):
        return value[which]
    if isinstance(which, slice):
        return value[which]
    return [v for v, keep in zip(value, which) if keep]
