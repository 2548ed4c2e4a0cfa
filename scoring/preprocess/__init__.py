"""Preprocessing: the columns a shard's rows give -> the tensors the model takes. One seam.

A preprocessor is resolved on the driver, against the model and the job's schema, before
anything starts (``resolve`` raises ``InputError`` or ``ConfigError``, exit 2), and travels to
the workers as plain data. It has one job there:

- ``prepare(data, skip, pool) -> Prepared``: the rows of ``data`` (a chunk of a shard; ``skip``
  marks rows already rejected) as groups of rows with equal tensor shapes, and the rows it
  rejected (indices into ``data``, with the reason); ``pool`` (or None) lends threads;
- ``notes(data) -> [str]``: what ``scoring validate`` says about the first rows (token counts).

Besides it, ``columns`` (the input columns it reads) and ``chunk_rows`` (rows worth reading at
once). Which one a job gets (``name``): ``function`` when ``input.function`` is set, ``text`` when
``input.text`` is, ``encoded`` for a model that takes one row's encoded bytes per call
(``exported.takes_encoded_bytes``), else what the input says its rows hold
(``InputConfig.data``: ``columns``, ``images``, ...). Each is a module named in
``scoring.registry.PREPROCESSORS`` with ``needs(inp, model)`` (the columns to ask the input for;
None for every column it gives) and ``resolve(cfg, model, schema, where)``. Example, a
preprocessor that feeds one column as is::

    @dataclasses.dataclass(frozen=True)
    class Raw:
        column: str
        input: str
        columns = property(lambda self: (self.column,))
        chunk_rows = 4096
        def prepare(self, data, skip, pool):
            rows = unskipped(data.num_rows, skip)
            x = data.column(self.column).to_numpy()[rows]
            return Prepared([Group(rows, {self.input: x})], Rejections())
        def notes(self, data): return []
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

from scoring import registry
from scoring.config import Config, InputConfig
from scoring.constants import fed
from scoring.model import ModelInfo
from scoring.record import Rejections
from scoring.tensors import Group


@dataclasses.dataclass
class Prepared:
    groups: list[Group]
    rejected: Rejections  # rows of the chunk (indices into its data)


class Preprocessor(Protocol):
    @property
    def columns(self) -> tuple[str, ...]: ...

    @property
    def chunk_rows(self) -> int: ...

    def prepare(
        self, data: pa.Table, skip: np.ndarray | None, pool: concurrent.futures.Executor | None
    ) -> Prepared: ...

    def notes(self, data: pa.Table) -> list[str]: ...


def name(inp: InputConfig, model: ModelInfo) -> str:
    """The job's preprocessor (see the module docstring)."""
    from scoring.exported import takes_encoded_bytes

    if inp.function is not None:
        return "function"
    if inp.text is not None:
        return "text"
    return "encoded" if takes_encoded_bytes(model) else inp.data


def _module(inp: InputConfig, model: ModelInfo) -> Any:
    return registry.load(registry.PREPROCESSORS[name(inp, model)])


def needs(inp: InputConfig, model: ModelInfo) -> list[str] | None:
    """The input columns the job's preprocessor reads; None for every column the input gives."""
    model = fed(model, inp.constants)
    found = _module(inp, model).needs(inp, model)
    return None if found is None else list(found)


def resolve(cfg: Config, model: ModelInfo, schema: pa.Schema, where: str) -> Preprocessor:
    """The job's preprocessor, checked against ``model`` and ``schema`` (read from ``where``);
    it feeds the model's inputs but those ``input.constants`` gives."""
    model = fed(model, cfg.input.constants)
    return _module(cfg.input, model).resolve(cfg, model, schema, where)  # type: ignore[no-any-return]


def unskipped(n: int, skip: np.ndarray | None) -> np.ndarray:
    """The rows of a chunk of ``n`` that are not already rejected."""
    return np.arange(n, dtype=np.int64) if skip is None else np.flatnonzero(~skip).astype(np.int64)


def encoded_bytes(
    data: pa.Table, column: str, struct: bool, skip: np.ndarray | None, why: Any
) -> tuple[list[Any], np.ndarray, Rejections]:
    """The encoded values of ``column`` (Hugging Face's ``struct<bytes, path>``: its ``bytes``
    when ``struct``), the rows to decode, and the null ones rejected with ``why``."""
    values = data.column(column)
    if struct:
        values = pa.chunked_array([c.field("bytes") for c in values.chunks], pa.binary())
    blobs = values.to_pylist()
    rejected = Rejections()
    rows = reject_nulls(blobs, unskipped(len(blobs), skip), rejected, why)
    return blobs, rows, rejected


def reject_nulls(values: Sequence[Any], rows: np.ndarray, rejected: Rejections, why: Any) -> np.ndarray:
    """``rows`` whose value is not None; the others are added to ``rejected`` with ``why``."""
    null = np.array([values[i] is None for i in rows.tolist()], dtype=bool)
    rejected.add_rows(rows[null], why)
    return rows[~null]
