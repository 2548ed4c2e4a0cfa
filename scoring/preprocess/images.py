"""Image preprocessing: decode, orient, convert, resize, then normalise into the model's layout.

The image comes from one column of encoded bytes (``input.image_column``): binary, or Hugging
Face's image ``struct<bytes, path>``. A null, or bytes that are no image, is a rejected row.
Decoding runs in the worker's threads (Pillow releases the GIL while it decodes and resizes).

Steps, in order (docs/preprocessing/images.md repeats them):
1. decode with Pillow; apply the EXIF orientation;
2. convert to the mode: palette and RGBA/LA images go through RGBA and lose alpha, 16-bit
   greyscale is scaled to 8 bits (>> 8), then RGB or L; BGR is RGB with channels reversed later;
3. resize to ``size`` = [height, width] (a ``null`` dim follows the source's aspect):
   ``stretch`` resizes directly; ``center_crop`` resizes the short side to ``resize_short_side``
   (aspect kept) then crops the centre; ``letterbox`` fits the image inside keeping aspect and
   pads with ``pad_value`` (114), centred or at the top left (``anchor``). ``geometry.place``
   decides it, and each row keeps it as context (``geometry.context``) for postprocessing;
4. to uint8 HWC;
5. per batch of rows of one size: float32 ``x * scale``, ``- mean``, ``/ std`` per channel, then
   NCHW or NHWC, then the model input's element type.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import io
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from scoring.config import Config, ImageConfig, InputConfig
from scoring.errors import InputError
from scoring.model import ModelInfo, TensorSpec
from scoring.preprocess import Prepared, encoded_bytes, geometry
from scoring.record import Reason
from scoring.tensors import Group

if TYPE_CHECKING:
    from PIL import Image

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
    size: geometry.Size  # [height, width]; None: follows each image's aspect
    layout: str
    input: TensorSpec
    chunk_rows: int = IMAGES_PER_CHUNK

    @property
    def columns(self) -> tuple[str, ...]:
        return (self.column,)

    def prepare(
        self, data: pa.Table, skip: np.ndarray | None, pool: concurrent.futures.Executor | None
    ) -> Prepared:
        blobs, rows, rejected = encoded_bytes(data, self.column, self.struct, skip, NULL)
        decoded = _map(pool, lambda i: self._decode(blobs[i]), rows.tolist())
        ok = []
        for row, result in zip(rows.tolist(), decoded):
            if isinstance(result, Exception):
                message = f"cannot decode image: {result}. The row is skipped; fix or remove the image."
                rejected.add(row, row + 1, Reason("decode", type(result).__name__, message))
            else:
                ok.append(row)
        placed = [d for d in decoded if not isinstance(d, Exception)]
        by_size: dict[tuple[int, ...], list[int]] = {}  # rows of one size batch together
        for i, (arr, _) in enumerate(placed):
            by_size.setdefault(arr.shape, []).append(i)
        groups = []
        for members in by_size.values():
            batch = np.stack([placed[i][0] for i in members])
            tensor = normalise(batch, self.image, self.layout, self.input.dtype)
            rows = np.asarray([ok[i] for i in members], np.int64)
            context = geometry.context([placed[i][1] for i in members])
            groups.append(Group(rows, {self.input.name: tensor}, context))
        return Prepared(groups, rejected)

    def notes(self, data: pa.Table) -> list[str]:
        return []

    def _decode(self, blob: bytes) -> tuple[np.ndarray, geometry.Placement] | Exception:
        try:
            return decode_placed(blob, self.image, self.size)
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
    size, layout, _ = input_shape(inp.image, model.inputs[0])
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


def input_shape(cfg: ImageConfig, spec: TensorSpec) -> tuple[geometry.Size, str, int]:
    """(size, layout, channels) for ``spec``, from config or read off the input's shape.

    Raises ``InputError`` when the model's shape cannot tell and the config does not say, or the
    config leaves a dim to the aspect that the model fixes.
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
    fixed = [d if isinstance(d, int) and d > 0 else None for d in hw]
    if size is None:
        if None in fixed:
            raise InputError(
                f"model input '{spec.name}' has dynamic height/width {list(hw)}; set "
                "input.image.size: [height, width], or [null, null] to keep each image's size "
                "(rounded up to input.image.multiple_of), or one dim null to keep its aspect"
            )
        size = (fixed[0], fixed[1])
    for given, dim, name in zip(size, fixed, ("height", "width")):
        if given is None and dim is not None:
            raise InputError(
                f"input.image.size leaves the {name} to the image's aspect (null) but model input "
                f"'{spec.name}' {list(shape)} takes a fixed {name} of {dim}; give {dim}"
            )
    for name, values in (("mean", cfg.mean), ("std", cfg.std)):
        if len(values) not in (1, channels):
            raise InputError(
                f"input.image.{name} has {len(values)} values; mode {cfg.mode} "
                f"has {channels} channels: give 1 or {channels}"
            )
    return size, layout, channels


def decode(data: bytes, cfg: ImageConfig, size: geometry.Size) -> np.ndarray:
    """Steps 1-4 for one encoded image: uint8 array [H, W, C] (C = 1 for mode L)."""
    return decode_placed(data, cfg, size)[0]


def decode_placed(
    data: bytes, cfg: ImageConfig, size: geometry.Size
) -> tuple[np.ndarray, geometry.Placement]:
    """Steps 1-4 for one encoded image, and where the source landed in it."""
    from PIL import Image, ImageOps

    if not data:
        raise ValueError("empty file (0 bytes)")
    with Image.open(io.BytesIO(data)) as opened:
        turned = opened.getexif().get(0x0112, 1) in (5, 6, 7, 8)  # shown turned by 90 degrees
        iw, ih = opened.size
        placement = geometry.place(ih if turned else iw, iw if turned else ih, cfg, size)
        if opened.format == "JPEG":
            # Decode no larger than the resize needs: the JPEG decoder scales by 1/2, 1/4 or 1/8
            # in the DCT domain (a 12 MP photo to 224x224: 45 ms instead of 145, one core), to at
            # least REDUCING_GAP times the size the resize makes, as Pillow's thumbnail() does,
            # so the resize still has the detail it averages (at most 4 levels of 255 from a full
            # decode, under 1 on average: tested).
            w, h = placement.resized[::-1] if turned else placement.resized
            opened.draft(
                opened.mode if opened.mode in ("RGB", "L") else "RGB", (w * REDUCING_GAP, h * REDUCING_GAP)
            )
        opened.load()
        img = ImageOps.exif_transpose(opened)
    img = _convert(img, "L" if cfg.mode == "L" else "RGB")
    img = _resize(img, cfg, placement)
    arr = np.asarray(img, dtype=np.uint8)
    return (arr[:, :, None] if arr.ndim == 2 else arr), placement


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


def _resize(img: Image.Image, cfg: ImageConfig, placement: geometry.Placement) -> Image.Image:
    """Resize to ``placement.resized`` and put it at ``placement.offset`` in the model input (a
    crop where the offset is negative, padding with ``pad_value`` where the image does not reach)."""
    from PIL import Image

    method = getattr(Image.Resampling, RESAMPLING[cfg.interpolation])
    h, w = placement.size
    if img.size != placement.resized:
        img = img.resize(placement.resized, method)
    if img.size == (w, h):
        return img
    x, y = placement.offset
    if x <= 0 and y <= 0 and img.width + x >= w and img.height + y >= h:
        return img.crop((-x, -y, w - x, h - y))
    canvas = Image.new(img.mode, (w, h), (cfg.pad_value,) * len(img.getbands()))
    canvas.paste(img, (x, y))
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
