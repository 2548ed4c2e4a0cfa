"""Raw model outputs as prediction columns: which outputs become columns, and as what Arrow type.

Numeric tensors become fixed-size lists (per-row shape in the field's metadata, key ``shape``),
string tensors strings, sequences of maps (ZipMap) map columns. The type follows the model's
declaration, so every chunk, shard and file of a job has the same one.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa

from scoring.errors import ConfigError
from scoring.model import ModelInfo, TensorSpec


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


def reorder(chunks: list[Any], order: np.ndarray) -> list[Any]:
    """Per-batch values of one output in row order (``order``: the argsort of the batches'
    rows): as they are when already sorted (the common case), else one chunk."""
    if is_identity(order):
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


def is_identity(order: np.ndarray) -> bool:
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
