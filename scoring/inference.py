"""Running prepared rows through a session in batches, and turning outputs into Arrow columns.

Outputs are checked to give one entry per row before they are kept: an output whose batch axis
is not axis 0 is moved when the model declares where it is. One that cannot be aligned is a
property of the model, not of the data: ``ModelFailure``, never silently misaligned rows.

A batch that ONNX Runtime fails on is split in halves and retried, down to single rows, so only
the rows that fail alone are rejected. A session that has never scored a row and fails on
``FAILURES_BEFORE_STOP`` rows one at a time, all with the same error, has a model problem: the
job stops instead of rejecting every row.

Numeric tensors become fixed-size lists (per-row shape in the field's metadata, key ``shape``),
string tensors strings, sequences of maps (ZipMap) map columns.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from scoring.embedding import Embedding
from scoring.errors import ConfigError, ModelFailure
from scoring.model import ModelInfo, TensorSpec
from scoring.record import Reason, Rejections
from scoring.session import Session
from scoring.tensors import Group

FAILURES_BEFORE_STOP = 3
POOLED = "\x00embedding"  # where run_groups keeps pooled vectors, apart from any output's name


@dataclasses.dataclass
class Health:
    """What a session has shown so far: whether any batch succeeded, and the single-row failures
    seen while none had."""

    succeeded: bool = False
    failures: int = 0
    kinds: set[str] = dataclasses.field(default_factory=set)

    def failed(self, exc: Exception) -> None:
        """Count a row that failed alone; raise ``ModelFailure`` once it is clearly the model."""
        if self.succeeded:
            return
        self.failures += 1
        self.kinds.add(type(exc).__name__)
        if self.failures >= FAILURES_BEFORE_STOP and len(self.kinds) == 1:
            raise ModelFailure(
                f"ONNX Runtime failed on each of the first {self.failures} rows it was given, one at "
                f"a time, and has not scored any row: {type(exc).__name__}: {exc}. This is a problem "
                "of the model or of how it is fed, not of the data; `scoring validate CONFIG` scores "
                "the first rows here and shows the error"
            ) from exc


def output_columns(info: ModelInfo, mapping: Mapping[str, str] | None) -> dict[str, TensorSpec]:
    """Column name -> model output: ``output.outputs``, or every output under its own name when
    it is not set (``None``); ``{}`` keeps no raw output."""
    by_name = {o.name: o for o in info.outputs}
    if mapping is None:
        return dict(by_name)
    unknown = sorted(v for v in mapping.values() if v not in by_name)
    if unknown:
        raise ConfigError(
            f"config key 'output.outputs' names {unknown}, which are not model "
            f"outputs; the model's outputs are {sorted(by_name)}"
        )
    return {col: by_name[out] for col, out in mapping.items()}


def run_groups(
    session: Session,
    info: ModelInfo,
    groups: Sequence[Group],
    names: Sequence[str],
    batch_size: int,
    health: Health,
    embedding: Embedding | None = None,
) -> tuple[np.ndarray, dict[str, list[Any]], Rejections, float]:
    """Score every group in batches of ``batch_size`` (or the model's fixed batch size).

    Returns the rows scored (ascending), each output in ``names`` as per-batch values in that
    order (with ``embedding``, its vectors under ``POOLED``: pooled per batch, before reordering),
    the rows rejected and the time spent in ORT. Raises ``ModelFailure`` (see the module
    docstring).
    """
    fixed = info.inputs[0].batch_dim if info.inputs else None
    step = fixed if isinstance(fixed, int) and fixed > 0 else batch_size
    fetch = list(dict.fromkeys([*names, *([embedding.output] if embedding else [])]))
    run = _Runner(session, info, fetch, fixed if isinstance(fixed, int) and fixed > 0 else None, health)
    run.embedding, run.raw = embedding, set(names)
    for group in groups:
        for start in range(0, len(group.rows), step):
            run.batch(group, start, min(start + step, len(group.rows)))
    order_rows = np.concatenate(run.kept_rows) if run.kept_rows else np.zeros(0, np.int64)
    order = np.argsort(order_rows, kind="stable")
    kept = [*names, *([POOLED] if embedding else [])]
    values = {name: _reorder(run.kept.get(name, []), order) for name in kept}
    return order_rows[order], values, run.rejected, run.infer_s


@dataclasses.dataclass
class _Runner:
    session: Session
    info: ModelInfo
    names: list[str]
    fixed: int | None  # the model's fixed batch size: batches are padded to it
    health: Health
    kept_rows: list[np.ndarray] = dataclasses.field(default_factory=list)
    kept: dict[str, list[Any]] = dataclasses.field(default_factory=dict)
    rejected: Rejections = dataclasses.field(default_factory=Rejections)
    infer_s: float = 0.0
    embedding: Embedding | None = None
    raw: set[str] = dataclasses.field(default_factory=set)  # outputs kept as they are

    def batch(self, group: Group, a: int, b: int) -> None:
        """Score rows ``a:b`` of ``group``; on failure, each half again (see the module docstring)."""
        rows = group.rows[a:b]
        size = self.fixed or len(rows)
        feed = {k: _pad(v[a:b], size) for k, v in group.feed.items()}
        t0 = time.perf_counter()
        try:
            values = self.session.run(self.names, feed)
        except Exception as exc:  # ORT's own error types: bisect, then the rows become data
            self.infer_s += time.perf_counter() - t0
            if b - a > 1:
                mid = (a + b) // 2
                self.batch(group, a, mid)
                self.batch(group, mid, b)
                return
            self.health.failed(exc)
            reason = Reason("infer", type(exc).__name__, f"ONNX Runtime failed on this row: {exc}")
            self.rejected.add_rows(rows, reason)
            return
        self.infer_s += time.perf_counter() - t0
        aligned = align(values, self.names, self.info, size, len(rows))
        self.health.succeeded = True
        self.kept_rows.append(rows)
        for name, value in zip(self.names, aligned):
            if name in self.raw:
                self.kept.setdefault(name, []).append(value)
        if self.embedding is not None:
            states = aligned[self.names.index(self.embedding.output)]
            mask = group.mask[a:b] if group.mask is not None else None
            self.kept.setdefault(POOLED, []).append(self.embedding.pool(np.asarray(states), mask))


def _reorder(chunks: list[Any], order: np.ndarray) -> list[Any]:
    """Chunks in row order: as they are when already sorted (the common case), else one chunk."""
    if _is_identity(order):
        return chunks
    if chunks and isinstance(chunks[0], list):
        flat = [m for c in chunks for m in c]
        return [[flat[i] for i in order.tolist()]]
    return (
        [np.concatenate(chunks)[order]] if len({c.shape[1:] for c in chunks}) == 1 else _ragged(chunks, order)
    )


def _ragged(chunks: list[np.ndarray], order: np.ndarray) -> list[Any]:
    rows = [row for c in chunks for row in c]
    return [[rows[i] for i in order.tolist()]]


def _pad(arr: np.ndarray, size: int) -> np.ndarray:
    """Repeat the last row up to ``size`` rows (for models with a fixed batch dimension)."""
    if len(arr) >= size:
        return arr
    return np.concatenate([arr, np.repeat(arr[-1:], size - len(arr), axis=0)])


def align(values: list[Any], names: Sequence[str], info: ModelInfo, fed: int, k: int) -> list[Any]:
    """Each output's first ``k`` entries along its batch axis, for a batch of ``fed`` rows (``k``
    real, the rest padding). Raises ``ModelFailure`` naming an output that cannot be aligned."""
    specs = {o.name: o for o in info.outputs}
    batch_symbol = info.inputs[0].batch_dim if info.inputs else None
    symbol = batch_symbol if isinstance(batch_symbol, str) else None
    out: list[Any] = []
    for name, value in zip(names, values):
        if isinstance(value, np.ndarray):
            if value.ndim and value.shape[0] == fed and _batch_axis_ok(specs[name], 0, symbol):
                out.append(value[:k])
                continue
            axis = _declared_batch_axis(specs[name], symbol)
            if axis is not None and axis < value.ndim and value.shape[axis] == fed:
                out.append(np.moveaxis(value, axis, 0)[:k])
                continue
            raise ModelFailure(
                f"model output '{name}' has shape {list(value.shape)} for a batch of {fed} rows "
                f"(declared {specs[name].describe().split(': ', 1)[1]}): it does not give one entry "
                f"per row along axis 0, so its values cannot be matched with rows. {_fix(name, info)}"
            )
        seq = list(value)
        if len(seq) != fed:
            raise ModelFailure(
                f"model output '{name}' has {len(seq)} entries for a batch of {fed} rows, so its "
                f"values cannot be matched with rows. {_fix(name, info)}"
            )
        out.append(seq[:k])
    return out


def _fix(name: str, info: ModelInfo) -> str:
    others = [o.name for o in info.outputs if o.name != name]
    if not others:
        return "It is the model's only output: re-export the model with the batch on axis 0"
    keep = ", ".join(f"{o}: {o}" for o in others)
    return f"Leave it out with output.outputs: {{{keep}}}, or re-export the model with the batch on axis 0"


def _declared_batch_axis(spec: TensorSpec, batch_symbol: str | None) -> int | None:
    if batch_symbol is None or not spec.shape:
        return None
    return next((i for i, d in enumerate(spec.shape) if d == batch_symbol), None)


def _batch_axis_ok(spec: TensorSpec, axis: int, batch_symbol: str | None) -> bool:
    declared = _declared_batch_axis(spec, batch_symbol)
    return declared is None or declared == axis


def to_arrow(col: str, spec: TensorSpec, chunks: list[Any]) -> tuple[pa.Field, pa.Array]:
    """One output's chunks (in row order) as an Arrow column and its field.

    The type follows the model's declaration, so every chunk, shard and file of a job has the
    same one: a scalar for ``[N]``, a fixed-size list for a static per-row shape, a list of the
    flattened row where a dim is dynamic (sequences of different lengths), with the per-row shape
    in the field's metadata (``shape``, -1 where dynamic). A declaration without a shape follows
    the values.
    """
    if spec.kind == "sequence<map>" or (chunks and isinstance(chunks[0], list) and _holds_maps(chunks[0])):
        maps = [m for chunk in chunks for m in chunk]
        key = pa.int64() if maps and isinstance(next(iter(maps[0]), ""), (int, np.integer)) else pa.string()
        typ = pa.map_(key, pa.float32())
        return pa.field(col, typ), pa.array([list(m.items()) for m in maps], type=typ)
    declared = spec.row_shape if spec.shape is not None else None
    dynamic = declared is not None and not all(isinstance(d, int) and d > 0 for d in declared)
    if not chunks:
        return _empty(col, spec)
    if isinstance(chunks[0], list):  # rows of different shapes, put in row order by _ragged
        rows = [np.asarray(r) for r in chunks[0]]
    elif dynamic or len({c.shape[1:] for c in chunks}) > 1:
        rows = [row for c in chunks for row in c]
    else:
        return _tensor_column(col, chunks[0] if len(chunks) == 1 else np.concatenate(chunks))
    if declared is not None:
        shape = [d if isinstance(d, int) and d > 0 else -1 for d in declared]
    else:
        shapes = {r.shape for r in rows}
        shape = [next(iter(dims)) if len(dims) == 1 else -1 for dims in map(set, zip(*shapes))]
    flat = [r.reshape(-1) for r in rows]
    item = pa.string() if spec.dtype == "str" else pa.from_numpy_dtype(rows[0].dtype)
    array = pa.array(flat, type=pa.list_(item))
    return pa.field(col, array.type, metadata={"shape": json.dumps(shape)}), array


def _holds_maps(chunk: list[Any]) -> bool:
    return bool(chunk) and isinstance(chunk[0], dict)


def _is_identity(order: np.ndarray) -> bool:
    return bool(np.array_equal(order, np.arange(len(order))))


def _tensor_column(col: str, data: np.ndarray) -> tuple[pa.Field, pa.Array]:
    if data.dtype == object or data.dtype.kind in "US":
        flat = pa.array(data.reshape(-1).tolist(), type=pa.string())
    else:
        flat = pa.array(np.ascontiguousarray(data).reshape(-1))
    if data.ndim == 1:
        return pa.field(col, flat.type), flat
    size = int(np.prod(data.shape[1:]))
    array = pa.FixedSizeListArray.from_arrays(flat, size)
    return pa.field(col, array.type, metadata={"shape": json.dumps(list(data.shape[1:]))}), array


def _empty(col: str, spec: TensorSpec) -> tuple[pa.Field, pa.Array]:
    if spec.dtype == "str":
        typ: pa.DataType = pa.string()
    elif spec.dtype in ("object",) or spec.kind != "tensor":
        typ = pa.null()
    else:
        typ = pa.from_numpy_dtype(np.dtype(spec.dtype))
    row_shape = spec.row_shape
    if not row_shape:
        return pa.field(col, typ), pa.array([], type=typ)
    shape = [d if isinstance(d, int) and d > 0 else -1 for d in row_shape]
    meta = {"shape": json.dumps(shape)}
    typ = pa.list_(typ, int(np.prod(shape))) if -1 not in shape else pa.list_(typ)
    return pa.field(col, typ, metadata=meta), pa.array([], type=typ)
