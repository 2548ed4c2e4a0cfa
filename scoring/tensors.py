"""Feeding the model: Arrow columns -> numpy tensors for each model input.

``plan_feeds`` checks a shard's schema against the model once (column names, element types) and
raises ``InputError`` for what no row could satisfy. ``prepare`` turns a table into groups of
rows with equal tensor shapes, casting where no value changes meaning and rejecting, row by row,
what does not fit (nulls, out-of-range integers, lengths that fit no declared shape).
Fixed-size lists and scalar columns without nulls become tensors without copies.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from scoring.errors import ConfigError, InputError
from scoring.model import ModelInfo, TensorSpec
from scoring.record import Reason, Rejections

FLOATS = ("float16", "float32", "float64")
MANTISSA = {"float16": 11, "float32": 24, "float64": 53}
NUMBERS = (*FLOATS, "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")


@dataclasses.dataclass(frozen=True)
class Feed:
    """Model input ``spec`` fed from ``columns`` (several columns are stacked into [N, k])."""

    spec: TensorSpec
    columns: tuple[str, ...]
    stacked: bool
    cast: str  # "same" | "safe" | "checked"


@dataclasses.dataclass
class Group:
    """Rows (indices into the chunk) that share one shape per input, their tensors, and their
    context: per-row arrays that preprocessing hands to postprocessing (the attention mask of
    padded text rows, an image's size and placement), one entry per row."""

    rows: np.ndarray
    feed: dict[str, np.ndarray]
    context: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    # Fed one row per call, without the batch axis (a model of no batch dim that decodes a row's
    # encoded bytes itself); each tensor's axis 0 is still the group's rows.
    unbatched: bool = False


def input_columns(spec: TensorSpec, columns: Mapping[str, str | list[str]]) -> tuple[str, ...]:
    """The column(s) feeding model input ``spec``: its ``input.columns`` entry, else its own name."""
    mapped = columns.get(spec.name, spec.name)
    return (mapped,) if isinstance(mapped, str) else tuple(mapped)


def feed_columns(info: ModelInfo, columns: Mapping[str, str | list[str]]) -> list[str]:
    """Every column some model input reads, in input order, without repeats."""
    return list(dict.fromkeys(c for spec in info.inputs for c in input_columns(spec, columns)))


def plan_feeds(
    info: ModelInfo,
    columns: Mapping[str, str | list[str]],
    schema: pa.Schema,
    where: str,
) -> list[Feed]:
    """Map every model input to its column(s) in ``schema`` and check element types.

    Raises ``ConfigError`` for ``input.columns`` keys that name no model input and
    ``InputError`` (naming ``where``, the column and the input) for missing or unconvertible columns.
    """
    names = {s.name for s in info.inputs}
    unknown = sorted(set(columns) - names)
    if unknown:
        raise ConfigError(
            f"config key 'input.columns' maps {unknown}, which are not model inputs; "
            f"the model's inputs are {sorted(names)}"
        )
    feeds = []
    for spec in info.inputs:
        if spec.kind != "tensor":
            raise InputError(f"model input '{spec.name}' is a {spec.kind}; only tensor inputs can be fed")
        if spec.shape is not None and len(spec.shape) == 0:
            raise InputError(
                f"model input '{spec.name}' is a scalar with no batch axis; scoring "
                "feeds rows along axis 0. Re-export the model with a batch dimension."
            )
        cols = input_columns(spec, columns)
        stacked = isinstance(columns.get(spec.name), list)  # scalar columns stacked into one input
        rules = []
        for col in cols:
            if col not in schema.names:
                raise InputError(
                    f"{where}: no column '{col}' for model input '{spec.name}' (columns found: "
                    f"{schema.names}). Map the input with input.columns: {{{spec.name}: <column>}}."
                )
            found = _element_type(schema.field(col).type)
            if stacked and not _is_scalar(schema.field(col).type):
                raise InputError(
                    f"{where}: column '{col}' is {schema.field(col).type}; columns "
                    f"stacked into input '{spec.name}' must be scalars"
                )
            rule = cast_rule(_numpy_name(found), spec.dtype)
            if rule is None:
                raise InputError(
                    f"{where}: column '{col}' holds {found} but model input '{spec.name}' expects "
                    f"{spec.dtype}; converting would change values. Convert the column upstream, "
                    "or feed this input from another column with input.columns."
                )
            rules.append(rule)
        cast = "checked" if "checked" in rules else "safe" if "safe" in rules else "same"
        feeds.append(Feed(spec, cols, stacked, cast))
    return feeds


def cast_rule(src: str, dst: str) -> str | None:
    """How ``src`` values become ``dst``: "same", "safe", "checked" (per value) or None."""
    if src == dst:
        return "same"
    if src not in NUMBERS or dst not in NUMBERS:
        return None
    if src in FLOATS:
        return "safe" if dst in FLOATS else None  # float64 -> float32 is allowed by contract
    if dst in FLOATS:  # integers: exact only up to the float's mantissa
        return "safe" if np.iinfo(src).bits < MANTISSA[dst] else "checked"
    s, d = np.iinfo(src), np.iinfo(dst)
    return "safe" if d.min <= s.min and s.max <= d.max else "checked"


def _element_type(t: pa.DataType) -> pa.DataType:
    while pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        t = t.value_type
    return t


def _numpy_name(t: pa.DataType) -> str:
    """The numpy name of an Arrow element type ("float32", "str", ...); its Arrow name otherwise.
    (Not ``to_pandas_dtype``: it imports pandas, 0.14 s of every start.)"""
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "str"
    if pa.types.is_boolean(t):
        return "bool"
    if pa.types.is_integer(t):
        return f"{'u' if pa.types.is_unsigned_integer(t) else ''}int{t.bit_width}"
    if pa.types.is_floating(t):
        return f"float{t.bit_width}"
    return str(t)


@dataclasses.dataclass
class _Column:
    values: np.ndarray  # every element of every row, flat, already cast
    lengths: np.ndarray | int  # elements per row (an int when all rows agree)
    offsets: np.ndarray | None  # start of each row in values (None when lengths is an int)


class _Rejecter:
    """Rejected rows of one table: the first reason found for a row is the one it keeps."""

    def __init__(self, n: int) -> None:
        self.bad = np.zeros(n, dtype=bool)
        self.rejections = Rejections()

    def reject(self, rows: np.ndarray, error: str, message: str) -> None:
        rows = np.asarray(rows, dtype=np.int64)
        rows = np.unique(rows[~self.bad[rows]])
        self.bad[rows] = True
        self.rejections.add_rows(rows, Reason("preprocess", error, message))


def prepare(
    table: pa.Table, feeds: Sequence[Feed], skip: np.ndarray | None = None
) -> tuple[list[Group], Rejections]:
    """Tensors for every input, grouped by shape, plus the rows rejected (row = index in ``table``).
    Rows in ``skip`` were rejected before: they are left out, not rejected again."""
    n = table.num_rows
    rejected = _Rejecter(n)
    if skip is not None:
        rejected.bad |= skip
    columns = [_column(table, f, rejected) for f in feeds]
    shapes: list[dict[int, tuple[int, ...]]] = []  # per input: row length -> row shape
    for feed, col in zip(feeds, columns):
        table_shapes = {}
        distinct = [col.lengths] if isinstance(col.lengths, int) else np.unique(col.lengths).tolist()
        for length in distinct:
            shape, reason = fit_row_shape(int(length), feed.spec)
            if shape is not None:
                table_shapes[int(length)] = shape
                continue
            bad = np.arange(n) if isinstance(col.lengths, int) else np.flatnonzero(col.lengths == length)
            rejected.reject(bad, "ShapeMismatch", f"column {'/'.join(feed.columns)} row has {reason}")
        shapes.append(table_shapes)
    rows_ok = np.flatnonzero(~rejected.bad)
    if rows_ok.size == 0:
        return [], rejected.rejections
    if all(isinstance(col.lengths, int) for col in columns):
        # Every row has the same shape (scalars, fixed-size lists): one group, no sorting.
        keys = np.array([[col.lengths for col in columns]], dtype=np.int64)
        members = [rows_ok]
    else:
        per_row = np.stack([np.broadcast_to(col.lengths, n) for col in columns], axis=1)
        keys, inverse = np.unique(per_row[rows_ok], axis=0, return_inverse=True)
        inverse = inverse.reshape(-1)
        members = [rows_ok[inverse == g] for g in range(len(keys))]
    groups = []
    for key, rows in zip(keys, members):
        feed_arrays = {}
        for j, (feed, col) in enumerate(zip(feeds, columns)):
            shape = shapes[j][int(key[j])]
            feed_arrays[feed.spec.name] = _gather(col, rows, n, int(key[j]), shape)
        groups.append(Group(rows, feed_arrays))
    return groups, rejected.rejections


def fit_row_shape(length: int, spec: TensorSpec) -> tuple[tuple[int, ...] | None, str]:
    """The per-row shape ``length`` values take for ``spec``, or None and why not."""
    if spec.shape is None:
        return ((), "") if length == 1 else ((length,), "")
    template = spec.row_shape
    static = math.prod(d for d in template if isinstance(d, int) and d > 0)
    dynamic = [i for i, d in enumerate(template) if not (isinstance(d, int) and d > 0)]
    want = "[" + ", ".join(str(d) if isinstance(d, int) and d > 0 else "?" for d in template) + "]"
    why = f"{length} values; input '{spec.name}' takes rows of shape {want}"
    if not dynamic:
        return (tuple(int(d) for d in template), "") if length == static else (None, why)  # type: ignore[arg-type]
    if len(dynamic) == 1 and length > 0 and length % static == 0:
        shape = [d if isinstance(d, int) and d > 0 else length // static for d in template]
        return tuple(int(d) for d in shape), ""  # type: ignore[arg-type]
    if len(dynamic) > 1:
        why += " (several dynamic dims cannot be read off a flat list)"
    return None, why


def _gather(col: _Column, rows: np.ndarray, n: int, length: int, shape: tuple[int, ...]) -> np.ndarray:
    k = len(rows)
    if col.offsets is None:
        block = col.values.reshape(n, length)
        if k != n:
            block = block[rows]
        return block.reshape((k, *shape))
    idx = col.offsets[rows][:, None] + np.arange(length)
    return col.values[idx].reshape((k, *shape))


def _column(table: pa.Table, feed: Feed, rejected: _Rejecter) -> _Column:
    dst = feed.spec.dtype
    if feed.stacked:
        parts = [_flat(table.column(c), dst, feed, c, rejected) for c in feed.columns]
        return _Column(np.stack([p.values for p in parts], axis=1).reshape(-1), len(parts), None)
    return _flat(table.column(feed.columns[0]), dst, feed, feed.columns[0], rejected)


def _flat(chunked: pa.ChunkedArray, dst: str, feed: Feed, name: str, rejected: _Rejecter) -> _Column:
    arr = chunked.combine_chunks() if chunked.num_chunks != 1 else chunked.chunk(0)
    n = len(arr)
    if arr.null_count:
        nulls = np.flatnonzero(arr.is_null().to_numpy(zero_copy_only=False))
        rejected.reject(nulls, "NullValue", f"column {name} is null; input '{feed.spec.name}' needs a value")
    lengths: np.ndarray | int = 1
    offsets = None
    values = arr
    while not _is_scalar(values.type):
        if pa.types.is_fixed_size_list(values.type):
            size = values.type.list_size
            # Not flatten(): it drops the slots of null rows, and every row must keep its place.
            values = values.values.slice(values.offset * size, len(values) * size)
            lengths = lengths * size
        else:
            if not isinstance(lengths, int) or offsets is not None:
                raise InputError(
                    f"column {name}: nested variable-length lists are not supported; "
                    "use fixed_size_list for inner dimensions"
                )
            off = values.offsets.to_numpy()
            row_len = np.diff(off) * lengths
            # The child values between the first and last offset, null rows' slots included.
            lengths, values = row_len, values.values.slice(int(off[0]), int(off[-1] - off[0]) if n else 0)
            offsets = np.concatenate([[0], np.cumsum(row_len[:-1])]) if n else np.zeros(0, np.int64)
    row_of_element = None
    if values.null_count:
        row_of_element = _row_of_element(lengths, n)
        rejected.reject(
            row_of_element[values.is_null().to_numpy(zero_copy_only=False)],
            "NullValue",
            f"column {name} holds a null element; input '{feed.spec.name}' needs every value",
        )
        values = pc.fill_null(values, "" if dst == "str" else 0)
    np_values = values.to_numpy(zero_copy_only=False)
    if feed.cast == "checked" and np_values.size:
        bad = _unrepresentable(np_values, dst)
        if bad.any():
            rows = (row_of_element if row_of_element is not None else _row_of_element(lengths, n))[bad]
            rejected.reject(
                rows,
                "Unrepresentable",
                f"column {name} holds a value that {dst} input '{feed.spec.name}' cannot represent exactly",
            )
    if dst != "str" and np_values.dtype != np.dtype(dst):
        np_values = np_values.astype(dst)
    return _Column(np_values, lengths, offsets if not isinstance(lengths, int) else None)


def _is_scalar(t: pa.DataType) -> bool:
    return not (pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t))


def _row_of_element(lengths: np.ndarray | int, n: int) -> np.ndarray:
    return np.repeat(np.arange(n), lengths if not isinstance(lengths, int) else np.full(n, lengths))


def _unrepresentable(values: np.ndarray, dst: str) -> np.ndarray:
    if dst in FLOATS:
        limit = 2 ** MANTISSA[dst]
        return np.abs(values.astype(np.float64)) > limit
    info = np.iinfo(dst)
    return (values < info.min) | (values > info.max)
