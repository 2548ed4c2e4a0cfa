"""Classifier columns from a model's class scores (``output.postprocess``): ``label``, ``score``,
and for ``top_k > 1`` ``top_labels`` and ``top_scores``.

``resolve`` checks the section against the model on the driver — the output exists and is
``[N, C]``, the labels (a file, a list, or the model's metadata) number ``C`` — and returns a
``Classify``, plain data that travels to the workers; ``decode`` computes a batch's columns.
"""

from __future__ import annotations

import ast
import dataclasses
import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa
from pydantic import Field

from scoring import storage
from scoring.config import Config as JobConfig
from scoring.config import Section
from scoring.errors import ConfigError, ModelFailure, StorageError
from scoring.model import ModelInfo, TensorSpec
from scoring.postprocess import Context

FLOATS = ("float16", "float32", "float64")
KEY = "postprocess"


class Config(Section):
    output: str | None = Field(
        default=None, description="the output holding class scores [N, C]; default: the only one"
    )
    softmax: bool = Field(default=False, description="apply softmax first (logits -> probabilities)")
    top_k: int = Field(default=1, ge=1, description="k > 1 adds top_labels and top_scores")
    labels: str | list[str] | None = Field(
        default=None,
        description="class names: a text file (one per line, any URI), a list, or metadata:KEY",
    )


@dataclasses.dataclass(frozen=True)
class Classify:
    output: str  # the model output holding class scores, [N, C]
    softmax: bool
    top_k: int
    labels: tuple[str, ...] | None  # None: the class index as a string (C may then be dynamic)
    key = KEY
    replaces_outputs = False

    @property
    def reads(self) -> tuple[str, ...]:
        return (self.output,)

    def check(self, outputs: Mapping[str, Any]) -> None:
        """The class count against the labels, before the first shard."""
        self.columns(np.asarray(outputs[self.output]))

    def decode(self, outputs: Mapping[str, Any], context: Context) -> list[pa.Array]:
        return self.columns(np.asarray(outputs[self.output]))

    def fields(self) -> list[pa.Field]:
        fields = [pa.field("label", pa.string()), pa.field("score", pa.float32())]
        if self.top_k > 1:
            fields += [
                pa.field("top_labels", pa.list_(pa.string())),
                pa.field("top_scores", pa.list_(pa.float32())),
            ]
        return fields

    def columns(self, scores: np.ndarray) -> list[pa.Array]:
        """The columns for ``scores`` [n, C] (rows in order). Raises ``ModelFailure`` when the
        output does not have the number of classes the labels name."""
        if scores.ndim != 2:
            raise ModelFailure(
                f"output.postprocess: model output '{self.output}' gave shape {list(scores.shape)}; "
                "class scores must be [N, C]"
            )
        if self.labels is not None and len(scores) and scores.shape[1] != len(self.labels):
            raise ModelFailure(
                f"output.postprocess: model output '{self.output}' has {scores.shape[1]} classes but "
                f"{len(self.labels)} labels were given; give one label per class"
            )
        probs = _softmax(scores) if self.softmax else scores.astype(np.float32, copy=False)
        k = min(self.top_k, probs.shape[1]) if len(probs) else self.top_k
        top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        top_scores = np.take_along_axis(probs, top, axis=1).astype(np.float32)
        names = np.array(self.labels if self.labels is not None else [str(i) for i in range(probs.shape[1])])
        top_names = names[top] if len(probs) else np.zeros((0, k), dtype=str)
        out: list[pa.Array] = [
            pa.array(top_names[:, 0] if len(probs) else [], pa.string()),
            pa.array(top_scores[:, 0] if len(probs) else [], pa.float32()),
        ]
        if self.top_k > 1:
            offsets = pa.array(np.arange(0, (len(probs) + 1) * k, k, dtype=np.int32))
            out.append(pa.ListArray.from_arrays(offsets, pa.array(top_names.reshape(-1), pa.string())))
            out.append(pa.ListArray.from_arrays(offsets, pa.array(top_scores.reshape(-1), pa.float32())))
        return out


def _softmax(x: np.ndarray) -> np.ndarray:
    z = x.astype(np.float64) - x.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def resolve(job: JobConfig, info: ModelInfo) -> Classify | None:
    """Check ``output.postprocess`` against the model and read its labels. Raises
    ``ConfigError`` (exit 2) naming the key, what was expected and what was found."""
    cfg: Config | None = getattr(job.output, KEY, None)
    if cfg is None:
        return None
    spec = _scores_output(cfg.output, info)
    classes = spec.row_shape[0] if spec.row_shape else None
    labels = _labels(cfg.labels, info, job.storage_options)
    if labels is not None and isinstance(classes, int) and classes > 0 and len(labels) != classes:
        raise ConfigError(
            f"config key 'output.postprocess.labels': {len(labels)} labels for model output "
            f"'{spec.name}' of {classes} classes; give one label per class"
        )
    if isinstance(classes, int) and classes > 0 and cfg.top_k > classes:
        raise ConfigError(
            f"config key 'output.postprocess.top_k' is {cfg.top_k} but model output '{spec.name}' has "
            f"{classes} classes"
        )
    return Classify(spec.name, cfg.softmax, cfg.top_k, labels)


def _scores_output(name: str | None, info: ModelInfo) -> TensorSpec:
    outputs = {o.name: o for o in info.outputs}
    if name is None:
        candidates = [o for o in info.outputs if _is_scores(o)]
        if len(candidates) != 1:
            found = [o.describe() for o in info.outputs]
            raise ConfigError(
                "config key 'output.postprocess.output' is not set and the model has "
                f"{'no' if not candidates else 'several'} float output(s) of shape [N, C] "
                f"(outputs: {found}); set it to the output holding class scores"
            )
        return candidates[0]
    if name not in outputs:
        raise ConfigError(
            f"config key 'output.postprocess.output' names '{name}', which is not a model output; "
            f"the model's outputs are {sorted(outputs)}"
        )
    if not _is_scores(outputs[name]):
        raise ConfigError(
            f"config key 'output.postprocess.output': model output {outputs[name].describe()} is not "
            "class scores; expected a float tensor of shape [N, C]"
        )
    return outputs[name]


def _is_scores(spec: TensorSpec) -> bool:
    return spec.kind == "tensor" and spec.dtype in FLOATS and spec.shape is not None and len(spec.shape) == 2


def _labels(
    given: str | list[str] | None,
    info: ModelInfo,
    storage_options: dict[str, Any],
    key: str = "output.postprocess.labels",
) -> tuple[str, ...] | None:
    """Names from ``given``: a list, ``metadata:KEY``, or a text file (one a line) at any URI.
    Raises ``ConfigError`` naming the config ``key``."""
    if given is None:
        return None
    if isinstance(given, list):
        return tuple(str(x) for x in given)
    if given.startswith("metadata:"):
        key = given.removeprefix("metadata:")
        if key not in info.metadata:
            raise ConfigError(
                f"config key '{key}' is {given!r} but the model's metadata has no "
                f"key '{key}' (keys: {sorted(info.metadata)}); see `scoring inspect MODEL`"
            )
        return _split(info.metadata[key])
    try:
        text = storage.read_bytes(given, storage_options).decode()
    except (StorageError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config key '{key}': cannot read {given}: {exc}") from exc
    return tuple(line.strip() for line in text.strip().splitlines())


def _split(text: str) -> tuple[str, ...]:
    """Labels from a metadata value: a JSON list or object, a Python dict (Ultralytics' exports
    write ``names`` as ``{0: 'person', 1: 'bicycle', ...}``), one per line, or comma-separated."""
    try:
        value = json.loads(text)
    except ValueError:
        try:
            value = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            value = None
    if isinstance(value, list):
        return tuple(str(v) for v in value)
    if isinstance(value, dict):  # {"0": "cat", "1": "dog"}, as some exporters write
        return tuple(str(value[k]) for k in sorted(value, key=lambda k: int(k) if str(k).isdigit() else k))
    parts = text.splitlines() if "\n" in text.strip() else text.split(",")
    return tuple(p.strip() for p in parts if p.strip())
