"""Image preprocessing: decode, orient, convert, resize, then normalise into the model's layout.

The image comes from one column of encoded bytes (``input.image_column``): binary, or Hugging
Face's image ``struct<bytes, path>``. A null, or bytes that are no image, is a rejected row.
Decoding runs in the worker's threads (Pillow releases the GIL while it decodes and resizes).

Steps, in order (docs/preprocessing/images.md repeats them):
1. decode with Pillow; apply the EXIF orientation;
2. convert to the mode: palette and RGBA/LA images go through RGBA and lose alpha, 16-bit
   greyscale is scaled to 8 bits (>> 8), then RGB or L; BGR is RGB with channels reversed later;
3. resize to ``size`` = [height, width]: ``stretch`` resizes directly; ``center_crop`` resizes the
   short side to ``resize_short_side`` (aspect kept) then crops the centre; ``letterbox`` fits the
   image inside keeping aspect and pads with grey (114), centred;
4. to uint8 HWC;
5. per batch: float32 ``x * scale``, ``- mean``, ``/ std`` per channel, then
   NCHW or NHWC, then the model input's element type.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import io
import math
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from scoring.config import Config, ImageConfig, InputConfig
from scoring.errors import InputError
from scoring.model import ModelInfo, TensorSpec
from scoring.preprocess import Prepared, reject_nulls, unskipped
from scoring.record import Reason, Rejections
from scoring.tensors import Group

if TYPE_CHECKING:
    from PIL import Image

LETTERBOX_FILL = 114
REDUCING_GAP = 2
RESAMPLING = {"nearest": "NEAREST", "bilinear": "BILINEAR", "bicubic": "BICUBIC", "lanczos": "LANCZOS"}
# Images decoded at once: enough for a few batches, little memory (~10 MB at 224x224).
IMAGES_PER_CHUNK = 64
NULL = Reason("decode", "NullValue", "the image is null (no bytes); the row is skipped")


@dataclasses.dataclass(frozen=True)
class Images:
    column: str  # the column of encoded images
    struct: bool  # Hugging Face's struct<bytes, path>: the bytes are its field "bytes"
    image: ImageConfig
    size: tuple[int, int]
    layout: str
    input: TensorSpec
    chunk_rows: int = IMAGES_PER_CHUNK

    @property
    def columns(self) -> tuple[str, ...]:
        return (self.column,)

    def prepare(
        self, data: pa.Table, skip: np.ndarray | None, pool: concurrent.futures.Executor | None
    ) -> Prepared:
        column = data.column(self.column)
        if self.struct:
            column = pa.chunked_array([c.field("bytes") for c in column.chunks], pa.binary())
        blobs = column.to_pylist()
        rejected = Rejections()
        rows = reject_nulls(blobs, unskipped(len(blobs), skip), rejected, NULL)
        decoded = _map(pool, lambda i: self._decode(blobs[i]), rows.tolist())
        ok = []
        for row, result in zip(rows.tolist(), decoded):
            if isinstance(result, Exception):
                message = f"cannot decode image: {result}. The row is skipped; fix or remove the image."
                rejected.add(row, row + 1, Reason("decode", type(result).__name__, message))
            else:
                ok.append(row)
        if not ok:
            return Prepared([], rejected)
        batch = np.stack([d for d in decoded if not isinstance(d, Exception)])
        tensor = normalise(batch, self.image, self.layout, self.input.dtype)
        return Prepared([Group(np.asarray(ok, np.int64), {self.input.name: tensor})], rejected)

    def notes(self, data: pa.Table) -> list[str]:
        return []

    def _decode(self, blob: bytes) -> np.ndarray | Exception:
        try:
            return decode(blob, self.image, self.size)
        except Exception as exc:  # PIL raises many types for bad bytes; the row is rejected
            return exc


def needs(inp: InputConfig, model: ModelInfo) -> list[str]:
    return [inp.image_column]


def resolve(cfg: Config, model: ModelInfo, schema: pa.Schema, where: str) -> Images:
    """Raises ``InputError`` for a model that is not one image input, or a column that holds no
    encoded images."""
    inp = cfg.input
    if len(model.inputs) != 1:
        raise InputError(
            f"an image job feeds one model input; this model has {[i.name for i in model.inputs]}"
        )
    size, layout, _ = geometry(inp.image, model.inputs[0])
    column = inp.image_column
    if column not in schema.names:
        raise InputError(
            f"{where}: no column '{column}' (columns found: {schema.names}); set input.image_column to "
            "the column of encoded image bytes"
        )
    t = schema.field(column).type
    struct = pa.types.is_struct(t) and t.get_field_index("bytes") >= 0
    binary = pa.types.is_binary(t) or pa.types.is_large_binary(t)
    if not (binary or (struct and pa.types.is_binary(t.field("bytes").type))):
        raise InputError(
            f"{where}: column '{column}' holds {t}; an image column holds encoded image bytes (binary) "
            "or Hugging Face's image struct<bytes: binary, path: string>. Set input.image_column"
        )
    return Images(column, struct, inp.image, size, layout, model.inputs[0])


def _map(pool: concurrent.futures.Executor | None, fn: Any, items: list[int]) -> list[Any]:
    return list(pool.map(fn, items)) if pool is not None and len(items) > 1 else [fn(i) for i in items]


def geometry(cfg: ImageConfig, spec: TensorSpec) -> tuple[tuple[int, int], str, int]:
    """(size, layout, channels) for ``spec``, from config or read off the input's shape.

    Raises ``InputError`` when the model's shape cannot tell and the config does not say.
    """
    channels = 1 if cfg.mode == "L" else 3
    shape = spec.shape or ()
    if len(shape) != 4:
        raise InputError(
            f"model input '{spec.name}' has shape {list(shape)}; an image input needs 4 dims (NCHW or NHWC)"
        )
    layout = cfg.layout
    if layout is None:
        if shape[1] == channels or (shape[1] in (1, 3) and shape[3] not in (1, 3)):
            layout = "NCHW"
        elif shape[3] == channels or shape[3] in (1, 3):
            layout = "NHWC"
        else:
            raise InputError(
                f"cannot tell the layout of input '{spec.name}' {list(shape)}; set "
                "input.image.layout to NCHW or NHWC"
            )
    hw = shape[2:4] if layout == "NCHW" else shape[1:3]
    c = shape[1] if layout == "NCHW" else shape[3]
    if isinstance(c, int) and c > 0 and c != channels:
        raise InputError(
            f"model input '{spec.name}' takes {c} channels ({layout}) but "
            f"input.image.mode {cfg.mode} gives {channels}; set mode to "
            f"{'L' if c == 1 else 'RGB or BGR'}"
        )
    size = cfg.size
    if size is None:
        if not all(isinstance(d, int) and d > 0 for d in hw):
            raise InputError(
                f"model input '{spec.name}' has dynamic height/width {list(hw)}; "
                "set input.image.size: [height, width]"
            )
        size = (int(hw[0]), int(hw[1]))  # type: ignore[arg-type]
    for name, values in (("mean", cfg.mean), ("std", cfg.std)):
        if len(values) not in (1, channels):
            raise InputError(
                f"input.image.{name} has {len(values)} values; mode {cfg.mode} "
                f"has {channels} channels: give 1 or {channels}"
            )
    return size, layout, channels


def decode(data: bytes, cfg: ImageConfig, size: tuple[int, int]) -> np.ndarray:
    """Steps 1-4 for one encoded image: uint8 array [H, W, C] (C = 1 for mode L)."""
    from PIL import Image, ImageOps

    if not data:
        raise ValueError("empty file (0 bytes)")
    with Image.open(io.BytesIO(data)) as opened:
        if opened.format == "JPEG":
            # Decode no larger than the resize needs: the JPEG decoder scales by 1/2, 1/4 or 1/8
            # in the DCT domain (a 12 MP photo to 224x224: 45 ms instead of 145, one core), to at
            # least REDUCING_GAP times the size the resize makes, as Pillow's thumbnail() does,
            # so the resize still has the detail it averages (at most 4 levels of 255 from a full
            # decode, under 1 on average: tested).
            w, h = _needed(opened, cfg, size)
            opened.draft(
                opened.mode if opened.mode in ("RGB", "L") else "RGB", (w * REDUCING_GAP, h * REDUCING_GAP)
            )
        opened.load()
        img = ImageOps.exif_transpose(opened)
    img = _convert(img, "L" if cfg.mode == "L" else "RGB")
    img = _resize(img, cfg, size)
    arr = np.asarray(img, dtype=np.uint8)
    return arr[:, :, None] if arr.ndim == 2 else arr


def _needed(img: Image.Image, cfg: ImageConfig, size: tuple[int, int]) -> tuple[int, int]:
    """The smallest (width, height) of the stored image that the resize still reads at full
    detail: both sides of ``size`` for stretch, the scaled image for center_crop and letterbox
    (which keep the aspect); in the stored orientation (EXIF may turn it)."""
    h, w = size
    iw, ih = img.size
    if img.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # shown turned by 90 degrees
        h, w = w, h
    if cfg.resize == "stretch":
        return w, h
    if cfg.resize == "center_crop":
        scale = (cfg.resize_short_side or min(h, w)) / min(iw, ih)
        scale = max(scale, w / iw, h / ih)
    else:
        scale = min(w / iw, h / ih)
    return max(1, math.ceil(iw * scale)), max(1, math.ceil(ih * scale))


def _convert(img: Image.Image, mode: str) -> Image.Image:
    from PIL import Image

    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img).astype(np.uint32)
        img = Image.fromarray(
            (arr >> 8).clip(0, 255).astype(np.uint8)
            if img.mode != "I"
            else arr.clip(0, 255).astype(np.uint8),
            "L",
        )
    if img.mode == "P" or img.mode in ("RGBA", "LA", "PA"):
        img = img.convert("RGBA")
    return img if img.mode == mode else img.convert(mode)


def _resize(img: Image.Image, cfg: ImageConfig, size: tuple[int, int]) -> Image.Image:
    from PIL import Image

    method = getattr(Image.Resampling, RESAMPLING[cfg.interpolation])
    h, w = size
    if cfg.resize == "stretch":
        return img if img.size == (w, h) else img.resize((w, h), method)
    iw, ih = img.size
    if cfg.resize == "center_crop":
        short = cfg.resize_short_side or min(h, w)
        scale = short / min(iw, ih)
        nw, nh = max(w, round(iw * scale)), max(h, round(ih * scale))
        img = img.resize((nw, nh), method)
        left, top = (nw - w) // 2, (nh - h) // 2
        return img.crop((left, top, left + w, top + h))
    scale = min(w / iw, h / ih)
    nw, nh = max(1, round(iw * scale)), max(1, round(ih * scale))
    canvas = Image.new(img.mode, (w, h), (LETTERBOX_FILL,) * len(img.getbands()))
    canvas.paste(img.resize((nw, nh), method), ((w - nw) // 2, (h - nh) // 2))
    return canvas


def normalise(batch: np.ndarray, cfg: ImageConfig, layout: str, dtype: str) -> np.ndarray:
    """Step 5 for a uint8 batch [N, H, W, C]: scale, mean, std, layout, element type."""
    if cfg.mode == "BGR":
        batch = batch[..., ::-1]  # a view; mean and std are then given blue first
    if dtype == "uint8" and cfg.scale == 1.0 and cfg.mean == [0.0] and cfg.std == [1.0]:
        out = batch  # a model that takes raw bytes
    else:
        out = batch.astype(np.float32)
        out *= np.float32(cfg.scale)
        out -= np.asarray(cfg.mean, dtype=np.float32)
        out /= np.asarray(cfg.std, dtype=np.float32)
    if layout == "NCHW":
        out = out.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(out, dtype=dtype)
