"""Audio preprocessing: rows of samples -> the model's audio input.

The audio formats (``formats.audio``) decode, resample and window: each row arrives as mono
float32 samples at ``input.audio.sample_rate`` (a window, or a whole clip). Here they are laid out
as the model input wants them, read off its shape: ``[N, S]``, ``[N, S, 1]`` or ``[N, 1, S]``. A
model with a fixed ``S`` gets its length: whole clips are cut or padded with zeros to it (a window
of another length is refused before the job starts). Rows of equal length batch together.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses

import numpy as np
import pyarrow as pa

from scoring.config import Config, InputConfig
from scoring.errors import InputError
from scoring.formats.clips import AudioInput
from scoring.model import ModelInfo, TensorSpec
from scoring.preprocess import Prepared, unskipped
from scoring.record import Rejections
from scoring.tensors import FLOATS, Group

# Windows of a shard in memory at once (576-sample windows: 9 MB); whole clips come in fewer.
WINDOWS_PER_CHUNK = 4096
LAYOUTS = {"NS": "[N, S]", "NS1": "[N, S, 1]", "N1S": "[N, 1, S]"}


@dataclasses.dataclass(frozen=True)
class Audio:
    column: str
    input: TensorSpec
    layout: str  # NS | NS1 | N1S
    length: int | None  # the model's fixed S
    chunk_rows: int = WINDOWS_PER_CHUNK

    @property
    def columns(self) -> tuple[str, ...]:
        return (self.column,)

    def prepare(
        self, data: pa.Table, skip: np.ndarray | None, pool: concurrent.futures.Executor | None
    ) -> Prepared:
        rows = unskipped(data.num_rows, skip)
        column = data.column(self.column).combine_chunks()
        flat = column.flatten().to_numpy(zero_copy_only=False)
        if pa.types.is_fixed_size_list(column.type):
            width = column.type.list_size
            tensors = [(rows, flat.reshape(-1, width)[rows])] if len(rows) else []
        else:
            offsets = column.offsets.to_numpy()
            offsets = offsets - offsets[0]
            tensors = self._by_length(rows, flat, offsets)
        groups = [Group(r, {self.input.name: self._layout(x)}) for r, x in tensors if len(r)]
        return Prepared(groups, Rejections())

    def _by_length(
        self, rows: np.ndarray, flat: np.ndarray, offsets: np.ndarray
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Whole clips, fitted to the model's length, grouped by length (in row order)."""
        lengths = offsets[1:] - offsets[:-1]
        fitted = lengths if self.length is None else np.full_like(lengths, self.length)
        out = []
        for n in dict.fromkeys(fitted[rows].tolist()):
            members = rows[fitted[rows] == n]
            x = np.zeros((len(members), n), np.float32)
            for j, r in enumerate(members.tolist()):
                clip = flat[offsets[r] : offsets[r + 1]][:n]
                x[j, : len(clip)] = clip
            out.append((members, x))
        return out

    def _layout(self, x: np.ndarray) -> np.ndarray:
        if self.layout == "NS1":
            x = x[:, :, None]
        elif self.layout == "N1S":
            x = x[:, None, :]
        return np.ascontiguousarray(x, dtype=self.input.dtype)

    def notes(self, data: pa.Table) -> list[str]:
        return []


def needs(inp: InputConfig, model: ModelInfo) -> list[str]:
    assert isinstance(inp, AudioInput)  # input.format audio: its Options
    return [inp.audio.column or "audio"]


def resolve(cfg: Config, model: ModelInfo, schema: pa.Schema, where: str) -> Audio:
    """Raises ``InputError`` for a model that is not one audio input this config can feed."""
    inp = cfg.input
    assert isinstance(inp, AudioInput)
    if len(model.inputs) != 1:
        raise InputError(
            "an audio job feeds one model input from the data; this model has "
            f"{[i.name for i in model.inputs]}: give the others with input.constants (a number, a "
            "nested list, or zeros)"
        )
    spec = model.inputs[0]
    if spec.dtype not in FLOATS:
        raise InputError(f"model input {spec.describe()} takes {spec.dtype}; audio samples are floats")
    layout, length = _layout(spec)
    window = inp.audio.window
    if window is not None and length is not None and window != length:
        raise InputError(
            f"input.audio.window is {window} samples but model input {spec.describe()} takes {length}; "
            f"set window: {length} (or leave it out: whole clips are then cut or padded to {length})"
        )
    for name, value in inp.constants.items():
        if name.lower() in ("sr", "sample_rate", "sampling_rate") and value != inp.audio.sample_rate:
            raise InputError(
                f"input.constants.{name} tells the model the sample rate is {value}, but "
                f"input.audio.sample_rate resamples to {inp.audio.sample_rate}; make them equal"
            )
    column = inp.audio.column or "audio"
    return Audio(column, spec, layout, length)


def _layout(spec: TensorSpec) -> tuple[str, int | None]:
    """The input's layout and its fixed length (None when dynamic). Raises ``InputError``."""
    shape = spec.shape or ()
    if len(shape) == 2:
        layout, s = "NS", shape[1]
    elif len(shape) == 3 and shape[2] == 1:
        layout, s = "NS1", shape[1]
    elif len(shape) == 3 and shape[1] == 1:
        layout, s = "N1S", shape[2]
    else:
        channels = next((d for d in shape[1:] if isinstance(d, int) and 1 < d <= 8), None)
        more = (
            f": it takes {channels} channels, and input.audio.channels (mono | first) gives one"
            if channels and len(shape) == 3
            else ""
        )
        raise InputError(
            f"model input {spec.describe()} is not an audio input scoring can feed{more}; it feeds "
            f"{', '.join(LAYOUTS.values())} (N rows of S samples)"
        )
    return layout, s if isinstance(s, int) and s > 0 else None
