"""Inputs that no column feeds: ``input.constants``, one value for every batch.

A value is a number, a nested list, or ``zeros``: the input's declared shape with its batch dim
set to the batch's rows (a recurrent model's initial state, say silero VAD's ``state [2, N,
128]``; its sample rate ``sr`` is a number). ``resolve`` checks them against the model on the
driver (names, element types, shapes) and raises ``ConfigError``; the workers add ``feed(rows)``
to every batch (``inference.Batches``). Preprocessors never see these inputs (``fed``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from scoring.errors import ConfigError
from scoring.model import ModelInfo, TensorSpec

ZEROS = "zeros"


@dataclasses.dataclass(frozen=True)
class Constants:
    fixed: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # the same every batch
    zeros: dict[str, tuple[tuple[int, ...], int, str]] = dataclasses.field(
        default_factory=dict
    )  # input -> (shape, its batch axis, element type)

    def feed(self, rows: int) -> dict[str, np.ndarray]:
        """The constant inputs of a batch of ``rows`` rows."""
        out = dict(self.fixed)
        for name, (shape, axis, dtype) in self.zeros.items():
            dims = list(shape)
            dims[axis] = rows
            out[name] = np.zeros(dims, dtype)
        return out


def fed(model: ModelInfo, constants: Mapping[str, Any]) -> ModelInfo:
    """``model`` with only the inputs that columns feed (those ``constants`` does not)."""
    if not constants:
        return model
    return dataclasses.replace(model, inputs=tuple(i for i in model.inputs if i.name not in constants))


def resolve(values: Mapping[str, Any], model: ModelInfo) -> Constants:
    """``input.constants`` checked against ``model``. Raises ``ConfigError`` naming the input."""
    if not values:
        return Constants()
    names = [i.name for i in model.inputs]
    unknown = [n for n in values if n not in names]
    if unknown:
        raise ConfigError(
            f"input.constants names {unknown}, which are not model inputs; the model's inputs are {names}"
        )
    rest = [i for i in model.inputs if i.name not in values]
    if not rest:
        raise ConfigError(
            f"input.constants gives every model input ({names}); at least one must be fed by the data"
        )
    batch = rest[0].batch_dim
    fixed, zeros = {}, {}
    for name, value in values.items():
        spec = model.input(name)
        if isinstance(value, str):
            if value != ZEROS:
                raise ConfigError(
                    f"input.constants.{name} is {value!r}; expected a number, a nested list or 'zeros'"
                )
            shape, axis = _zeros_shape(spec, batch)
            if axis is None:
                fixed[name] = np.zeros(shape, spec.dtype)
            else:
                zeros[name] = (shape, axis, spec.dtype)
        else:
            fixed[name] = _value(spec, value)
    return Constants(fixed, zeros)


def _value(spec: TensorSpec, value: Any) -> np.ndarray:
    where = f"input.constants.{spec.name}"
    if spec.dtype == "str":
        raise ConfigError(f"{where}: model input '{spec.name}' takes strings; give it from a column")
    try:
        given = np.asarray(value)
        arr = given.astype(spec.dtype)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where} is {value!r}: not numbers of one shape ({exc})") from exc
    # floats to a float input as float64 -> float32 is fed from columns; anything else must survive
    exact = arr.dtype.kind == "f" or np.array_equal(arr.astype(given.dtype), given)
    if given.dtype.kind not in "biuf" or not exact:
        raise ConfigError(
            f"{where} is {value!r}, but model input '{spec.name}' takes {spec.dtype}: the value "
            f"would change. Give {spec.dtype} values"
        )
    if spec.shape is not None:
        ok = len(spec.shape) == arr.ndim and all(
            not isinstance(d, int) or d <= 0 or d == n for d, n in zip(spec.shape, arr.shape)
        )
        if not ok:
            raise ConfigError(
                f"{where} has shape {list(arr.shape)}, but model input {spec.describe()} declares another; "
                "give a value of the declared shape (or 'zeros')"
            )
    return arr


def _zeros_shape(spec: TensorSpec, batch: Any) -> tuple[tuple[int, ...], int | None]:
    """The declared shape (dynamic dims as 1) and the batch axis: the dim named like the first
    fed input's batch dim, else the only dynamic dim; None when every dim is fixed."""
    where = f"input.constants.{spec.name}: zeros"
    if spec.shape is None:
        raise ConfigError(
            f"{where} needs a declared shape, and model input '{spec.name}' has none; give a nested list"
        )
    dynamic = [i for i, d in enumerate(spec.shape) if not (isinstance(d, int) and d > 0)]
    named = [i for i in dynamic if isinstance(batch, str) and spec.shape[i] == batch]
    axis = named[0] if named else dynamic[0] if len(dynamic) == 1 else None
    if dynamic and axis is None:
        raise ConfigError(
            f"{where}: model input {spec.describe()} has {len(dynamic)} dynamic dims and none is named "
            f"like the batch dim of the data's input ({batch!r}), so which one is the batch is unclear; "
            "give the value as a nested list, or fix the dims with model.dims"
        )
    others = [i for i in dynamic if i != axis]
    if others:
        raise ConfigError(
            f"{where}: model input {spec.describe()} has dynamic dims besides the batch; their size is "
            "unknown, so give the value as a nested list"
        )
    shape = tuple(d if isinstance(d, int) and d > 0 else 1 for d in spec.shape)
    return shape, axis
