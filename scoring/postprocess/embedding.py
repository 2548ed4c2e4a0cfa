"""Sentence embeddings from a text model's token states (``output.embedding``): the column
``embedding``.

``resolve`` checks the section against the model on the driver — which output, and that its
shape suits the pooling — and returns an ``Embedding``, plain data that travels to the workers.
``pool`` turns one batch's token states ``[n, T, D]`` into vectors ``[n, D]``: ``mean`` over the
tokens the attention mask keeps (the batch's context ``attention_mask``, from the text
preprocessor), ``cls`` (the first token), ``max`` (over kept tokens), or ``none`` for a model that
already gives ``[n, D]``; then L2-normalised when ``normalize``. It runs per batch, before rows
are put back in order, so padding never reaches a vector.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from scoring.config import Config as JobConfig
from scoring.config import Section
from scoring.errors import ConfigError
from scoring.model import ModelInfo, TensorSpec
from scoring.postprocess import Context

COLUMN = "embedding"
KEY = "embedding"
MASK = "attention_mask"  # the context key of the rows' real tokens
FLOATS = ("float16", "float32", "float64")


class Config(Section):
    output: str | None = Field(
        default=None, description="default: the only float output shaped [N, T, D] or [N, D]"
    )
    pooling: Literal["mean", "cls", "max", "none"] = Field(
        default="mean", description="mean: over the attention mask; none: the output is [N, D] already"
    )
    normalize: bool = Field(default=True, description="L2-normalise each vector")


@dataclasses.dataclass(frozen=True)
class Embedding:
    output: str  # the model output holding token states [N, T, D] (or vectors [N, D])
    pooling: str
    normalize: bool
    dim: int  # the vectors' size when the model declares it, else 0
    key = KEY
    replaces_outputs = True

    @property
    def reads(self) -> tuple[str, ...]:
        return (self.output,)

    def fields(self) -> list[pa.Field]:
        return [pa.field(COLUMN, pa.list_(pa.float32(), self.dim))]

    def check(self, outputs: Mapping[str, Any]) -> None:
        pass

    def decode(self, outputs: Mapping[str, Any], context: Context) -> list[pa.Array]:
        vectors = self.pool(np.asarray(outputs[self.output]), context.get(MASK))
        return [self.column(vectors)[1]]

    def pool(self, states: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
        """``[n, D]`` float32 vectors of one batch; ``mask`` [n, T] marks the real tokens."""
        x = states.astype(np.float32, copy=False)
        if self.pooling == "none" or x.ndim == 2:
            vectors = x
        elif self.pooling == "cls":
            vectors = x[:, 0, :]
        else:
            keep = np.ones(x.shape[:2], bool) if mask is None else mask[:, : x.shape[1]].astype(bool)
            if self.pooling == "mean":
                count = np.maximum(keep.sum(axis=1, keepdims=True), 1).astype(np.float32)
                vectors = (x * keep[..., None]).sum(axis=1) / count
            else:
                vectors = np.where(keep[..., None], x, -np.inf).max(axis=1)
                vectors = np.where(np.isfinite(vectors), vectors, 0.0)
        if self.normalize:
            norms = np.linalg.norm(vectors, axis=1, keepdims=True)
            vectors = vectors / np.maximum(norms, 1e-12)
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def column(self, vectors: np.ndarray) -> tuple[pa.Field, pa.Array]:
        """The ``embedding`` column: fixed_size_list<float32>[D]."""
        dim = int(vectors.shape[1]) if vectors.ndim == 2 else 0
        array = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float32()), dim)
        return pa.field(COLUMN, array.type), array


def resolve(job: JobConfig, info: ModelInfo) -> Embedding | None:
    """Check ``output.embedding`` against the model. Raises ``ConfigError`` naming the key, what
    was expected and what was found."""
    cfg: Config | None = getattr(job.output, KEY, None)
    if cfg is None:
        return None
    spec = _states_output(cfg.output, info, 2 if cfg.pooling == "none" else 3)
    rank = len(spec.shape) if spec.shape is not None else None
    if cfg.pooling == "none" and rank not in (None, 2):
        raise ConfigError(
            f"config key 'output.embedding.pooling' is none but model output {spec.describe()} is not "
            "[N, D]; pool it with mean, cls or max"
        )
    if cfg.pooling != "none" and rank not in (None, 3):
        raise ConfigError(
            f"config key 'output.embedding.pooling' is {cfg.pooling} but model output {spec.describe()} "
            "is not token states [N, T, D]; use pooling: none for an output that is already [N, D]"
        )
    last = spec.shape[-1] if spec.shape else None
    dim = last if isinstance(last, int) and last > 0 else 0
    return Embedding(spec.name, cfg.pooling, cfg.normalize, dim)


def _states_output(name: str | None, info: ModelInfo, rank: int) -> TensorSpec:
    outputs = {o.name: o for o in info.outputs}
    if name is not None:
        if name not in outputs:
            raise ConfigError(
                f"config key 'output.embedding.output' names '{name}', which is not a model output; "
                f"the model's outputs are {sorted(outputs)}"
            )
        return outputs[name]
    candidates = [o for o in info.outputs if _is_states(o, rank)]
    if len(candidates) != 1:
        found = [o.describe() for o in info.outputs]
        shape = "[N, D]" if rank == 2 else "[N, T, D]"
        raise ConfigError(
            "config key 'output.embedding.output' is not set and the model has "
            f"{'no' if not candidates else 'several'} float output(s) shaped {shape} "
            f"(outputs: {found}); set it to the output to pool"
        )
    return candidates[0]


def _is_states(spec: TensorSpec, rank: int) -> bool:
    return (
        spec.kind == "tensor" and spec.dtype in FLOATS and spec.shape is not None and len(spec.shape) == rank
    )
