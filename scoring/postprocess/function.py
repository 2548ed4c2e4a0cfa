"""A function of the user's decodes the model's outputs (``output.function: FILE.py:NAME`` or
``package.module:NAME``): ``decode(outputs, context) -> dict of columns``, in place of the raw
outputs.

``outputs`` are every model output of the batch as ONNX Runtime returned them (the batch on axis 0;
a model fed one row per call: that row's, as returned); ``context`` the rows' per-row arrays (image
geometry, what ``input.function`` returned beside the model inputs). It returns columns of one
value per row: lists, numpy arrays (a row of several dims becomes a fixed-size list) or pyarrow
arrays. Their names and types are the first batch's; a later batch's values are cast to them. A
batch it raises for is decoded again row by row (``scorer``), and a function that fails on every
row stops the job.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa

from scoring.config import Config as JobConfig
from scoring.exported import takes_encoded_bytes
from scoring.functions import UserFunction, load
from scoring.model import ModelInfo
from scoring.postprocess import Context

KEY = "function"
Config = str  # output.function: the reference itself


@dataclasses.dataclass
class Decode:
    fn: UserFunction
    outputs: tuple[str, ...]
    taken: tuple[str, ...]  # column names the job adds otherwise (input.keep, shard, file, ...)
    unbatched: bool  # the model is fed one row per call: its outputs have no batch axis
    learned: list[pa.Field] | None = None  # the columns, from the first batch decoded here
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, compare=False, repr=False)
    key = KEY
    replaces_outputs = True

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if k != "lock"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        vars(self).update(state, lock=threading.Lock())

    @property
    def reads(self) -> tuple[str, ...]:
        return self.outputs

    def fields(self) -> list[pa.Field]:
        return list(self.learned or [])

    def check(self, outputs: Mapping[str, Any]) -> None:
        pass

    def decode(self, outputs: Mapping[str, Any], context: Context) -> list[pa.Array]:
        first = outputs[self.outputs[0]]
        k = 1 if self.unbatched else (first.shape[0] if isinstance(first, np.ndarray) else len(first))
        given = {n: v[0] for n, v in outputs.items()} if self.unbatched else dict(outputs)
        result = self.fn.get()(given, dict(context))
        if not isinstance(result, dict) or not result:
            found = type(result).__name__ if not isinstance(result, dict) else "an empty dict"
            raise TypeError(
                f"output.function {self.fn.ref} returned {found}; expected a dict of column -> values"
            )
        arrays = [_column(name, value, k) for name, value in result.items()]
        with self.lock:
            return self._typed(list(result), arrays)

    def _typed(self, names: list[str], arrays: list[pa.Array]) -> list[pa.Array]:
        """``arrays`` in the learned types; the first batch (or one that knows a type the first
        did not: a list of nulls) teaches them. Raises ``ValueError`` for other columns."""
        if self.learned is None:
            clash = [n for n in names if n in self.taken]
            if clash:
                raise ValueError(
                    f"output.function {self.fn.ref} returned {clash}, which the job adds already; name "
                    "them otherwise"
                )
            self.learned = [pa.field(n, a.type) for n, a in zip(names, arrays)]
            return arrays
        known = [f.name for f in self.learned]
        if names != known:
            raise ValueError(
                f"output.function {self.fn.ref} returned columns {names}; before it returned {known}"
            )
        out = []
        for i, (field, array) in enumerate(zip(self.learned, arrays)):
            if array.type != field.type:
                if _holds_null(field.type) and not _holds_null(array.type):
                    self.learned[i] = field.with_type(array.type)
                else:
                    array = array.cast(field.type)  # raises for values that do not fit
            out.append(array)
        return out


def _holds_null(t: pa.DataType) -> bool:
    return pa.types.is_null(t) or "null" in str(t)


def _column(name: str, value: Any, k: int) -> pa.Array:
    """One returned column as an Arrow array of ``k`` values. Raises ``ValueError``."""
    if isinstance(value, pa.ChunkedArray):
        array = value.combine_chunks()
    elif isinstance(value, pa.Array):
        array = value
    elif isinstance(value, np.ndarray) and value.ndim > 1 and value.dtype != object:
        flat = pa.array(np.ascontiguousarray(value).reshape(-1))
        array = pa.FixedSizeListArray.from_arrays(flat, int(np.prod(value.shape[1:])))
    elif isinstance(value, np.ndarray):
        array = pa.array(value if value.dtype != object else value.tolist())
    else:
        array = pa.array([v.tolist() if isinstance(v, np.ndarray) else v for v in value])
    if len(array) != k:
        raise ValueError(f"column {name!r} has {len(array)} values for {k} rows; give one value per row")
    return array


def resolve(job: JobConfig, info: ModelInfo) -> Decode | None:
    """The function ``output.function`` names, read (a file) or found (a module) here; None when
    it is not set. Raises ``ConfigError``."""
    ref: str | None = getattr(job.output, KEY, None)
    if ref is None:
        return None
    fn = load(ref, "output.function", job.storage_options)
    # The provenance columns formats add (file, row, path) are refused for every format: simpler
    # to say, and a function's columns are learned only as it runs, when the format is not known.
    taken = ("shard", "file", "row", "path", *(name for name, _ in job.input.kept))
    return Decode(fn, tuple(o.name for o in info.outputs), taken, takes_encoded_bytes(info))
