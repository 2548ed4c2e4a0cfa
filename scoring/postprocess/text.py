"""Text from a line recogniser's or a speech model's per-step class scores (``output.text``): greedy
CTC decoding into the columns ``text`` and ``text_score``.

``resolve`` checks the section against the model on the driver — which output, the charset (a
list, a text file with one class a line, or the model's metadata), its length against the
declared classes — and returns a ``Ctc``, plain data that travels to the workers. ``decode`` takes
a batch ``[n, T, C]`` (a ``TNC`` output arrives with the batch moved to axis 0, see
``batch_axes``): the best class of each step, repeats collapsed, blanks dropped, each class looked
up in ``blank + charset + space`` (PaddleOCR appends a space class past its charset), all in numpy
and Arrow, no loop over rows.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from scoring.config import Config as JobConfig
from scoring.config import Section
from scoring.errors import ConfigError, ModelFailure
from scoring.model import ModelInfo, TensorSpec
from scoring.postprocess import Context, names

KEY = "text"
FLOATS = ("float16", "float32", "float64")


class Config(Section):
    output: str | None = Field(
        default=None, description="the output holding per-step class scores; default: the only one"
    )
    layout: Literal["NTC", "TNC"] = Field(
        default="NTC", description="NTC: [N, T, C]; TNC: [T, N, C] (time-major exports)"
    )
    charset: str | list[str] = Field(
        description="the non-blank classes in order: a list, a text file (one a line, any URI), "
        "or metadata:KEY"
    )
    blank: int = Field(default=0, ge=0, description="the CTC blank class")
    softmax: bool = Field(
        default=False, description="apply softmax first (logits -> probabilities, for text_score)"
    )


@dataclasses.dataclass(frozen=True)
class Ctc:
    output: str  # the model output holding class scores per step
    layout: str  # "NTC" | "TNC"
    charset: tuple[str, ...]  # the non-blank classes, in class order
    blank: int
    softmax: bool
    key = KEY
    replaces_outputs = True

    @property
    def reads(self) -> tuple[str, ...]:
        return (self.output,)

    @property
    def batch_axes(self) -> dict[str, int]:
        """Where the batch is in the outputs it reads, when not on axis 0."""
        return {self.output: 1} if self.layout == "TNC" else {}

    def fields(self) -> list[pa.Field]:
        return [pa.field("text", pa.string()), pa.field("text_score", pa.float32())]

    def check(self, outputs: Mapping[str, Any]) -> None:
        """The output's rank and class count, on the warm-up batch."""
        self._scores(outputs)

    def decode(self, outputs: Mapping[str, Any], context: Context) -> list[pa.Array]:
        return self.columns(self._scores(outputs))

    def columns(self, scores: np.ndarray) -> list[pa.Array]:
        """``text`` and ``text_score`` of ``scores`` [n, T, C]. The score is the mean of the kept
        steps' top probability, 0 for an empty text (as PaddleOCR has it)."""
        n, steps, classes = scores.shape
        best = scores.argmax(axis=2)
        top = np.take_along_axis(scores, best[..., None], axis=2)[..., 0].astype(np.float32)
        if self.softmax:  # the top class's probability: 1 / sum(exp(x - max))
            top = 1.0 / np.exp(scores - top[..., None]).sum(axis=2, dtype=np.float32)
        keep = best != self.blank
        keep[:, 1:] &= best[:, 1:] != best[:, :-1]
        counts = keep.sum(axis=1)
        text_score = np.where(counts > 0, (top * keep).sum(axis=1) / np.maximum(counts, 1), 0.0)
        table = _classes(self.charset, self.blank, classes)
        offsets = np.zeros(n + 1, np.int32)
        np.cumsum(counts, out=offsets[1:])
        chars = pa.array(table[best[keep]], pa.string())
        text = pc.binary_join(pa.ListArray.from_arrays(pa.array(offsets), chars), "")
        return [text, pa.array(text_score.astype(np.float32), pa.float32())]

    def _scores(self, outputs: Mapping[str, Any]) -> np.ndarray:
        scores = np.asarray(outputs[self.output])
        if scores.ndim != 3:
            raise ModelFailure(
                f"output.text: model output '{self.output}' gave shape {list(scores.shape[1:])} per "
                f"row; CTC decoding needs [T, C] per row (layout {self.layout}: "
                f"{'[N, T, C]' if self.layout == 'NTC' else '[T, N, C]'}). Check output.text.output "
                "and output.text.layout"
            )
        wrong = _wrong_classes(scores.shape[2], self, f"model output '{self.output}' gives")
        if wrong:
            raise ModelFailure(f"output.text: {wrong}")
        return scores


@functools.lru_cache(maxsize=8)
def _classes(charset: tuple[str, ...], blank: int, classes: int) -> np.ndarray:
    """The string of every class: the blank '', the charset around it, then spaces."""
    names = list(charset[:blank]) + [""] + list(charset[blank:])
    names += [" "] * max(0, classes - len(names))
    return np.array(names[:classes], dtype=object)


def _wrong_classes(classes: int, ctc: Ctc, found: str) -> str | None:
    """Why ``classes`` does not fit the charset: it must be the charset plus the blank, and at
    most one space class past it (None when it fits)."""
    n = len(ctc.charset)
    if n + 1 <= classes <= n + 2 and ctc.blank < classes:
        return None
    return (
        f"{found} {classes} classes but the charset has {n} characters; expected {n + 1} (the "
        f"blank at {ctc.blank} and the charset) or {n + 2} (and a space, as PaddleOCR appends). "
        "Give the charset without the blank, one class a line"
    )


def resolve(job: JobConfig, info: ModelInfo) -> Ctc | None:
    """Check ``output.text`` against the model and read its charset. Raises ``ConfigError``
    (exit 2) naming the key, what was expected and what was found."""
    cfg: Config | None = getattr(job.output, KEY, None)
    if cfg is None:
        return None
    spec = _scores_output(cfg.output, info)
    charset = names.charset(cfg.charset, info, job.storage_options, "output.text.charset")
    ctc = Ctc(spec.name, cfg.layout, charset, cfg.blank, cfg.softmax)
    dims = spec.shape if spec.shape is not None and len(spec.shape) == 3 else None
    classes = dims[2] if dims else None
    if isinstance(classes, int) and classes > 0:
        wrong = _wrong_classes(classes, ctc, f"model output {spec.describe()} declares")
        if wrong:
            raise ConfigError(f"config key 'output.text.charset': {wrong}")
    return ctc


def _scores_output(name: str | None, info: ModelInfo) -> TensorSpec:
    outputs = {o.name: o for o in info.outputs}
    if name is not None and name not in outputs:
        raise ConfigError(
            f"config key 'output.text.output' names '{name}', which is not a model output; "
            f"the model's outputs are {sorted(outputs)}"
        )
    if name is None:
        floats = [o for o in info.outputs if o.kind == "tensor" and o.dtype in FLOATS]
        ranked = [o for o in floats if o.shape is not None and len(o.shape) == 3]
        # Exports that declare a wrong rank (ddddocr's [1, seqlen] for [T, 1, C]) are the only output.
        candidates = ranked if ranked else floats if len(info.outputs) == 1 else []
        if len(candidates) != 1:
            raise ConfigError(
                "config key 'output.text.output' is not set and the model has "
                f"{'no' if not candidates else 'several'} float output(s) shaped [N, T, C] "
                f"(outputs: {[o.describe() for o in info.outputs]}); set it to the output of "
                "per-step class scores"
            )
        return candidates[0]
    spec = outputs[name]
    if spec.kind != "tensor" or spec.dtype not in FLOATS:
        raise ConfigError(
            f"config key 'output.text.output': model output {spec.describe()} is not class scores; "
            "expected a float tensor [N, T, C] or [T, N, C]"
        )
    return spec  # its declared rank may be wrong (old exports): checked on the warm-up batch
