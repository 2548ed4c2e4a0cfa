"""A row's encoded bytes, fed as they are to a model that decodes them itself: one input of one
dynamic dim and no batch dim, uint8 (``exported.takes_encoded_bytes``; onnxruntime-extensions'
``DecodeImage`` takes an image file's bytes so). Each row is fed alone, in a call of its own.

The bytes come from the image column for image inputs (``input.image_column``), else from the
binary column that feeds the input (``input.columns``, default its own name). An image whose
header Pillow does not recognise is rejected before the model sees it (stage ``decode``): some
in-graph decoders end the whole process on bytes that are no image, instead of raising.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import io

import numpy as np
import pyarrow as pa

from scoring.config import Config, InputConfig
from scoring.errors import InputError
from scoring.model import ModelInfo
from scoring.preprocess import Prepared, encoded_bytes
from scoring.record import Reason
from scoring.tensors import Group, input_columns

CHUNK_ROWS = 64
NULL = Reason("decode", "NullValue", "the value is null (no bytes); the row is skipped")


@dataclasses.dataclass(frozen=True)
class Encoded:
    column: str
    struct: bool  # Hugging Face's image struct<bytes, path>
    input: str
    images: bool  # check each image's header first
    chunk_rows: int = CHUNK_ROWS

    @property
    def columns(self) -> tuple[str, ...]:
        return (self.column,)

    def prepare(
        self, data: pa.Table, skip: np.ndarray | None, pool: concurrent.futures.Executor | None
    ) -> Prepared:
        blobs, rows, rejected = encoded_bytes(data, self.column, self.struct, skip, NULL)
        groups = []
        for row in rows.tolist():
            blob = blobs[row]
            why = _not_an_image(blob) if self.images else None
            if why is not None:
                message = f"cannot decode image: {why}. The row is skipped; fix or remove the image."
                rejected.add(row, row + 1, Reason("decode", "UnidentifiedImageError", message))
                continue
            tensor = np.frombuffer(blob, np.uint8)[None]
            groups.append(Group(np.array([row], np.int64), {self.input: tensor}, unbatched=True))
        return Prepared(groups, rejected)

    def notes(self, data: pa.Table) -> list[str]:
        return [f"model input '{self.input}' takes a row's encoded bytes: one row per call"]


def _not_an_image(blob: bytes) -> str | None:
    """Why Pillow cannot read the header of ``blob`` (None when it can; nothing is decoded)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(blob)):
            return None
    except Exception:  # PIL raises many kinds for bytes that are no image
        return f"{len(blob)} bytes that are no image file Pillow knows (they start {blob[:8]!r})"


def needs(inp: InputConfig, model: ModelInfo) -> list[str]:
    if inp.data == "images":
        return [inp.image_column]
    return list(input_columns(model.inputs[0], inp.columns))


def resolve(cfg: Config, model: ModelInfo, schema: pa.Schema, where: str) -> Encoded:
    """Raises ``InputError`` for a column that holds no bytes."""
    spec = model.inputs[0]
    images = cfg.input.data == "images"
    column = needs(cfg.input, model)[0]
    if column not in schema.names:
        raise InputError(
            f"{where}: no column '{column}' for model input '{spec.name}' (columns found: {schema.names}); "
            f"map it with input.columns: {{{spec.name}: <column>}}"
        )
    t = schema.field(column).type
    struct = pa.types.is_struct(t) and t.get_field_index("bytes") >= 0
    if not (pa.types.is_binary(t) or pa.types.is_large_binary(t) or struct):
        raise InputError(
            f"{where}: column '{column}' holds {t}, but model input {spec.describe()} takes one row's "
            "encoded bytes per call (no batch dim): feed it a binary column"
        )
    return Encoded(column, struct, spec.name, images)
