"""Running prepared rows through a session in batches, and lining its outputs up with rows.

Outputs are checked to give one entry per row before they are kept: an output whose batch axis
is not axis 0 is moved when the model declares where it is. One that cannot be aligned is a
property of the model, not of the data: ``ModelFailure``, never silently misaligned rows.

A batch that ONNX Runtime fails on is split in halves and retried, down to single rows, so only
the rows that fail alone are rejected. A session that has never scored a row and fails on
``FAILURES_BEFORE_STOP`` rows one at a time, all with the same error, has a model problem: the
job stops instead of rejecting every row (``Health``, which the postprocessing stage uses too).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from scoring.constants import Constants
from scoring.errors import ModelFailure
from scoring.model import ModelInfo, TensorSpec
from scoring.record import Reason, Rejections
from scoring.session import Session
from scoring.tensors import Group

FAILURES_BEFORE_STOP = 3
# What failing on every row means, by stage: what failed, and where to look.
FAILING = {
    "preprocess": (
        "the input function failed",
        "This is a problem of input.function, not of the data; `scoring validate CONFIG` runs it on "
        "the first rows here and shows the error",
    ),
    "infer": (
        "ONNX Runtime failed",
        "This is a problem of the model or of how it is fed, not of the data; `scoring validate "
        "CONFIG` scores the first rows here and shows the error",
    ),
    "postprocess": (
        "decoding the model's outputs failed",
        "This is a problem of the postprocessing config or function, or of the model's outputs, not "
        "of the data; `scoring validate CONFIG` decodes the first rows here and shows the error",
    ),
}


@dataclasses.dataclass
class Health:
    """What a stage (``infer``, ``postprocess``) has shown so far: whether any row succeeded, and
    the single-row failures seen while none had."""

    stage: str = "infer"
    succeeded: bool = False
    failures: int = 0
    kinds: set[str] = dataclasses.field(default_factory=set)

    def failed(self, exc: Exception) -> None:
        """Count a row that failed alone; raise ``ModelFailure`` once it is clearly not the data."""
        if self.succeeded:
            return
        self.failures += 1
        self.kinds.add(type(exc).__name__)
        if self.failures >= FAILURES_BEFORE_STOP and len(self.kinds) == 1:
            what, fix = FAILING[self.stage]
            raise ModelFailure(
                f"{what} on each of the first {self.failures} rows it was given, one at a time, and no "
                f"row succeeded: {type(exc).__name__}: {exc}. {fix}"
            ) from exc


@dataclasses.dataclass
class Batch:
    """Rows of a group scored together: their indices in the chunk, the outputs asked for (the
    batch on axis 0, one entry per row), and the rows' context."""

    rows: np.ndarray
    outputs: dict[str, Any]
    context: dict[str, np.ndarray]


@dataclasses.dataclass
class Batches:
    """Cuts groups of rows into batches of ``batch_size`` (or the model's fixed batch size),
    runs each through ``session`` for the outputs ``names``, and yields the batches that
    succeeded; rows that failed alone gather in ``rejected``, ORT's time in ``infer_s``."""

    session: Session
    info: ModelInfo
    names: list[str]
    batch_size: int
    health: Health
    axes: dict[str, int] = dataclasses.field(default_factory=dict)  # output -> its batch axis
    constants: Constants = dataclasses.field(default_factory=Constants)  # input.constants
    rejected: Rejections = dataclasses.field(default_factory=Rejections)
    infer_s: float = 0.0

    @property
    def fixed(self) -> int | None:
        """The model's fixed batch size: batches are padded to it."""
        dim = self.info.inputs[0].batch_dim if self.info.inputs else None
        return dim if isinstance(dim, int) and dim > 0 else None

    def run(self, groups: Sequence[Group]) -> Iterator[Batch]:
        for group in groups:
            step = 1 if group.unbatched else self.fixed or self.batch_size
            for start in range(0, len(group.rows), step):
                yield from self._batch(group, start, min(start + step, len(group.rows)))

    def _batch(self, group: Group, a: int, b: int) -> Iterator[Batch]:
        """Rows ``a:b`` of ``group``; on failure, each half again (see the module docstring)."""
        rows = group.rows[a:b]
        size = 1 if group.unbatched else self.fixed or len(rows)
        if group.unbatched:  # one row, as the model takes it: no batch axis
            feed = {k: v[a] for k, v in group.feed.items()}
        else:
            feed = {k: _pad(v[a:b], size) for k, v in group.feed.items()}
        feed.update(self.constants.feed(size))
        t0 = time.perf_counter()
        try:
            values = self.session.run(self.names, feed)
        except Exception as exc:  # ORT's own error types: bisect, then the rows become data
            self.infer_s += time.perf_counter() - t0
            if b - a > 1:
                mid = (a + b) // 2
                yield from self._batch(group, a, mid)
                yield from self._batch(group, mid, b)
                return
            self.health.failed(exc)
            message = f"ONNX Runtime failed on this row: {exc}{_dims_hint(exc, self.info)}"
            reason = Reason("infer", type(exc).__name__, message)
            self.rejected.add_rows(rows, reason)
            return
        self.infer_s += time.perf_counter() - t0
        if group.unbatched:  # the row's outputs, given the batch axis of one row
            aligned = [v[None] if isinstance(v, np.ndarray) else [v] for v in values]
        else:
            aligned = align(values, self.names, self.info, size, len(rows), self.axes)
        self.health.succeeded = True
        context = {k: v[a:b] for k, v in group.context.items()}
        yield Batch(rows, dict(zip(self.names, aligned)), context)


def _dims_hint(exc: Exception, info: ModelInfo) -> str:
    """What to try when ORT refuses a row's dims that the model declares fixed: old exports
    declare sizes (a dummy batch of 10, 32x32) their graph does not need."""
    if "invalid dimensions" not in str(exc):
        return ""
    fixed = [s for s in info.inputs if s.shape and all(isinstance(d, int) and d > 0 for d in s.shape)]
    if not fixed:
        return ""
    spec = fixed[0]
    # Channels (a few) stay as they are; sizes become symbols.
    dims = [int(d) for d in spec.shape or () if isinstance(d, int)]
    names = ["batch", *(str(d) if d <= 4 else f"d{i}" for i, d in enumerate(dims) if i)]
    return (
        f". The model declares {spec.describe()}; if its graph does not need those sizes, make them "
        f"free with model.dims: {{{spec.name}: [{', '.join(names)}]}} (docs/models/exported.md)"
    )


def _pad(arr: np.ndarray, size: int) -> np.ndarray:
    """Repeat the last row up to ``size`` rows (for models with a fixed batch dimension)."""
    if len(arr) >= size:
        return arr
    return np.concatenate([arr, np.repeat(arr[-1:], size - len(arr), axis=0)])


def align(
    values: list[Any],
    names: Sequence[str],
    info: ModelInfo,
    fed: int,
    k: int,
    axes: Mapping[str, int] | None = None,
) -> list[Any]:
    """Each output's first ``k`` entries along its batch axis, for a batch of ``fed`` rows (``k``
    real, the rest padding): axis 0, the axis the model declares, or the one ``axes`` names (a
    postprocessor's layout says it: ``[T, N, C]``). Raises ``ModelFailure`` naming an output that
    cannot be aligned."""
    specs = {o.name: o for o in info.outputs}
    batch_symbol = info.inputs[0].batch_dim if info.inputs else None
    symbol = batch_symbol if isinstance(batch_symbol, str) else None
    out: list[Any] = []
    for name, value in zip(names, values):
        if isinstance(value, np.ndarray):
            given = (axes or {}).get(name)
            if given is not None and given < value.ndim and value.shape[given] == fed:
                out.append(np.moveaxis(value, given, 0)[:k])
                continue
            on_0 = value.ndim and value.shape[0] == fed and _batch_axis_ok(specs[name], 0, symbol)
            if given is None and on_0:
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
