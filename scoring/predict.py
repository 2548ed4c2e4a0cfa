"""Running prepared rows through a session in batches, and turning outputs into Arrow columns.

Outputs are checked to give one entry per row before they are kept: an output whose batch axis
is not axis 0 is moved when the model declares where it is, and rejected otherwise, never
silently misaligned. Numeric tensors become fixed-size lists (per-row shape in the field's
metadata, key ``shape``), string tensors strings, sequences of maps (ZipMap) map columns.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from scoring.model import ModelInfo, TensorSpec
from scoring.session import Session
from scoring.tensors import Group


@dataclasses.dataclass
class Predictions:
    rows: np.ndarray  # row index in the shard, ascending
    fields: list[pa.Field]
    columns: list[pa.Array]
    rejected: dict[int, str]  # row -> reason, stage "infer"
    infer_s: float


def output_columns(info: ModelInfo, mapping: Mapping[str, str]) -> dict[str, TensorSpec]:
    """Column name -> model output: ``output.outputs`` or every output under its own name."""
    by_name = {o.name: o for o in info.outputs}
    if not mapping:
        return dict(by_name)
    from scoring.errors import ConfigError

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
    columns: Mapping[str, TensorSpec],
    batch_size: int,
) -> Predictions:
    """Score every group in batches of ``batch_size`` (or the model's fixed batch size)."""
    specs = list(columns.values())
    names = list(dict.fromkeys(s.name for s in specs))
    fixed = info.inputs[0].batch_dim if info.inputs else None
    step = fixed if isinstance(fixed, int) and fixed > 0 else batch_size
    batch_symbol = fixed if isinstance(fixed, str) else None
    kept_rows: list[np.ndarray] = []
    kept: dict[str, list[Any]] = {name: [] for name in names}
    rejected: dict[int, str] = {}
    infer_s = 0.0
    for group in groups:
        for start in range(0, len(group.rows), step):
            rows = group.rows[start : start + step]
            feed = {
                k: _pad(v[start : start + step], step if fixed == step else len(rows))
                for k, v in group.feed.items()
            }
            t0 = time.perf_counter()
            try:
                values = session.run(names, feed)
            except Exception as exc:  # ORT's own error types; the rows become data, not a crash
                infer_s += time.perf_counter() - t0
                reason = f"ONNX Runtime failed on this batch: {type(exc).__name__}: {exc}"
                rejected.update(dict.fromkeys(rows.tolist(), reason))
                continue
            infer_s += time.perf_counter() - t0
            aligned, problem = _align(values, names, info, batch_symbol, len(rows))
            if problem:
                rejected.update(dict.fromkeys(rows.tolist(), problem))
                continue
            kept_rows.append(rows)
            for name, value in zip(names, aligned):
                kept[name].append(value)
    order_rows = np.concatenate(kept_rows) if kept_rows else np.zeros(0, np.int64)
    order = np.argsort(order_rows, kind="stable")
    fields, arrays = [], []
    for col, spec in columns.items():
        field, array = to_arrow(col, spec, kept[spec.name], order)
        fields.append(field)
        arrays.append(array)
    return Predictions(order_rows[order], fields, arrays, rejected, infer_s)


def _pad(arr: np.ndarray, size: int) -> np.ndarray:
    """Repeat the last row up to ``size`` rows (for models with a fixed batch dimension)."""
    if len(arr) >= size:
        return arr
    return np.concatenate([arr, np.repeat(arr[-1:], size - len(arr), axis=0)])


def _align(
    values: list[Any], names: list[str], info: ModelInfo, batch_symbol: str | None, k: int
) -> tuple[list[Any], str | None]:
    specs = {o.name: o for o in info.outputs}
    out: list[Any] = []
    for name, value in zip(names, values):
        if isinstance(value, np.ndarray):
            if value.ndim and value.shape[0] >= k and _batch_axis_ok(specs[name], 0, batch_symbol):
                out.append(value[:k])
                continue
            axis = _declared_batch_axis(specs[name], batch_symbol)
            if axis is not None and axis < value.ndim and value.shape[axis] >= k:
                out.append(np.moveaxis(value, axis, 0)[:k])
                continue
            return [], (
                f"model output '{name}' has shape {list(value.shape)}, which does not "
                f"give one entry per row of this batch of {k} rows (axis 0 should be the "
                "batch). Leave it out with output.outputs, or re-export the model with "
                "the batch on axis 0."
            )
        else:
            seq = list(value)
            if len(seq) < k:
                return [], (
                    f"model output '{name}' has {len(seq)} entries for a batch of {k} rows. "
                    "Leave it out with output.outputs."
                )
            out.append(seq[:k])
    return out, None


def _declared_batch_axis(spec: TensorSpec, batch_symbol: str | None) -> int | None:
    if batch_symbol is None or not spec.shape:
        return None
    return next((i for i, d in enumerate(spec.shape) if d == batch_symbol), None)


def _batch_axis_ok(spec: TensorSpec, axis: int, batch_symbol: str | None) -> bool:
    declared = _declared_batch_axis(spec, batch_symbol)
    return declared is None or declared == axis


def to_arrow(col: str, spec: TensorSpec, chunks: list[Any], order: np.ndarray) -> tuple[pa.Field, pa.Array]:
    """One output's chunks, in ``order``, as an Arrow column and its field."""
    if spec.kind == "sequence<map>" or (chunks and isinstance(chunks[0], list)):
        maps = [m for chunk in chunks for m in chunk]
        maps = [maps[i] for i in order.tolist()]
        key = pa.int64() if maps and isinstance(next(iter(maps[0]), ""), (int, np.integer)) else pa.string()
        typ = pa.map_(key, pa.float32())
        return pa.field(col, typ), pa.array([list(m.items()) for m in maps], type=typ)
    if not chunks:
        return _empty(col, spec)
    shapes = {c.shape[1:] for c in chunks}
    if len(shapes) == 1:
        data = chunks[0] if len(chunks) == 1 and _is_identity(order) else np.concatenate(chunks)[order]
        return _tensor_column(col, data)
    rows = [row.reshape(-1) for c in chunks for row in c]
    rows = [rows[i] for i in order.tolist()]
    ragged = [
        max(s[i] for s in shapes) if len({s[i] for s in shapes}) == 1 else -1
        for i in range(len(next(iter(shapes))))
    ]
    array = pa.array(rows, type=pa.list_(pa.from_numpy_dtype(chunks[0].dtype)))
    return pa.field(col, array.type, metadata={"shape": json.dumps(ragged)}), array


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
    if row_shape and all(isinstance(d, int) and d > 0 for d in row_shape):
        typ = pa.list_(typ, int(np.prod(row_shape)))  # type: ignore[arg-type]
        meta = {"shape": json.dumps(list(row_shape))}
        return pa.field(col, typ, metadata=meta), pa.array([], type=typ)
    return pa.field(col, typ), pa.array([], type=typ)
