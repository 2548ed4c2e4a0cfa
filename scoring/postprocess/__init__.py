"""Postprocessing: a batch's raw outputs (and each row's context) -> prediction columns. One seam.

A postprocessor is a module named in ``scoring.registry.POSTPROCESSORS`` by its config key under
``output`` (``postprocess``, ``embedding``, ...). The module holds ``Config`` (its section's
keys; ``load_config`` adds it to the output section) and ``resolve(cfg, model)``, which checks the
section against the model on the driver (``ConfigError``, exit 2) and returns a
``Postprocessor`` — plain data that travels to the workers — or None when the key is not set.

A ``Postprocessor`` has:

- ``key``: its config key (for messages);
- ``reads``: the model outputs it takes;
- ``replaces_outputs``: whether, with it, the raw outputs are left out unless
  ``output.outputs`` names them (an embedding replaces its token states);
- ``batch_axes`` (optional): output -> the axis its batch is on, where that is not axis 0 (a
  time-major ``[T, N, C]``); the output reaches ``decode`` with the batch moved to axis 0;
- ``fields() -> [pa.Field]``: the columns it adds, in order (their names are checked against
  every other column before the job starts; their types are those of a chunk with no row);
- ``check(outputs)``: the warm-up batch's outputs (two synthetic rows), for what can be checked
  before any row is scored (a class count against the labels). Raises ``ModelFailure``;
- ``decode(outputs, context) -> [pa.Array]``: one batch. ``outputs`` are the outputs it reads,
  aligned (the batch on axis 0, ``k`` rows); ``context`` the rows' per-row arrays from
  preprocessing (an attention mask, an image's geometry), ``k`` rows each. Returns one array of
  ``k`` values per field. Raises ``ModelFailure`` for outputs no row can be decoded from;
  anything else it raises is retried row by row by the scorer, the rows that still fail rejected
  (stage ``postprocess``).

Example, the length of a sequence output::

    @dataclasses.dataclass(frozen=True)
    class Length:
        key = "length"
        output: str
        reads = property(lambda self: (self.output,))
        replaces_outputs = False
        def fields(self): return [pa.field("length", pa.int32())]
        def check(self, outputs): pass
        def decode(self, outputs, context):
            return [pa.array([len(v) for v in outputs[self.output]], pa.int32())]
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Protocol

import numpy as np
import pyarrow as pa

from scoring import registry
from scoring.config import Config
from scoring.model import ModelInfo

Context = Mapping[str, np.ndarray]


class Postprocessor(Protocol):
    key: ClassVar[str]

    @property
    def reads(self) -> tuple[str, ...]: ...

    @property
    def replaces_outputs(self) -> bool: ...

    def fields(self) -> list[pa.Field]: ...

    def check(self, outputs: Mapping[str, Any]) -> None: ...

    def decode(self, outputs: Mapping[str, Any], context: Context) -> list[pa.Array]: ...


def resolve(cfg: Config, model: ModelInfo) -> list[Postprocessor]:
    """The job's postprocessors, in registry order, each checked against ``model``."""
    found = []
    for path in registry.POSTPROCESSORS.values():
        pp = registry.load(path).resolve(cfg, model)
        if pp is not None:
            found.append(pp)
    return found


def section(cfg: Config, key: str) -> Any:
    """The postprocessor section ``output.KEY`` of ``cfg`` (None when not set)."""
    return getattr(cfg.output, key, None)


def keys() -> list[str]:
    """Every postprocessor's config key under ``output``."""
    return list(registry.POSTPROCESSORS)
