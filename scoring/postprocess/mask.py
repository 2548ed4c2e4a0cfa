"""Masks from a segmenter's per-pixel scores (``output.mask``), in the source image's pixels: the
columns ``mask`` (a PNG, or COCO run-length encodings), ``mask_area``, and ``image_width`` /
``image_height``.

``resolve`` checks the section against the model on the driver and returns a ``Mask``, plain
data that travels to the workers. ``decode`` takes a batch ``[n, C, H, W]``, ``[n, 1, H, W]`` or
``[n, H, W]`` (integer class ids, or one channel of scores): the activation first, then per row
the scores are mapped back to the source through the row's geometry (docs/preprocessing/
images.md#where-each-row-came-from): a source pixel's centre goes to model-input coordinates
(``x * scale_x + pad_x``), then to the output's grid (an output smaller than the input, a
stride-4 head, covers it), so letterbox padding is dropped, a crop's outside stays 0 and the
source's size comes back. One channel is resampled bilinearly then thresholded; several are
decided by argmax on the output's grid, then sampled nearest (class ids do not interpolate).
Without image geometry (a tensor input) the mask keeps the output's grid.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from scoring.config import Config as JobConfig
from scoring.config import Section
from scoring.errors import ConfigError, ModelFailure
from scoring.model import ModelInfo, TensorSpec
from scoring.postprocess import Context
from scoring.preprocess import geometry

KEY = "mask"
FLOATS = ("float16", "float32", "float64")
INTEGERS = ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")
RLE = pa.list_(pa.struct([("class_id", pa.int32()), ("size", pa.list_(pa.int32())), ("counts", pa.string())]))


class Config(Section):
    output: str | None = Field(
        default=None, description="[N, C, H, W], [N, 1, H, W] or [N, H, W]; default: the only output"
    )
    activation: Literal["none", "sigmoid", "softmax"] = Field(
        default="none", description="applied first; softmax over the channels"
    )
    threshold: float = Field(default=0.5, description="one channel: foreground where >= threshold")
    encoding: Literal["png", "rle"] = Field(
        default="png", description="png: a greyscale PNG of the source's size; rle: COCO RLE per class"
    )


@dataclasses.dataclass(frozen=True)
class Mask:
    output: str
    activation: str
    threshold: float
    encoding: str
    size: geometry.Size | None  # the model input's [height, width] as images are fed; None: unknown
    multiple_of: int
    sizes: bool  # add image_width and image_height (output.detections adds them when it is set)
    several: bool | None  # several classes, as the output is declared (None: read off the data)
    key = KEY
    replaces_outputs = True

    @property
    def reads(self) -> tuple[str, ...]:
        return (self.output,)

    def fields(self) -> list[pa.Field]:
        fields = [pa.field("mask", pa.binary() if self.encoding == "png" else RLE)]
        fields.append(pa.field("mask_area", pa.list_(pa.float32()) if self.several else pa.float32()))
        if self.sizes:
            fields += [pa.field("image_width", pa.int32()), pa.field("image_height", pa.int32())]
        return fields

    def check(self, outputs: Mapping[str, Any]) -> None:
        self._maps(outputs)

    def decode(self, outputs: Mapping[str, Any], context: Context) -> list[pa.Array]:
        scores, several = self._maps(outputs)
        masks: list[Any] = []
        areas: list[Any] = []
        widths, heights = [], []
        for i in range(len(scores)):
            mask = self.to_source(scores[i], several, {k: v[i] for k, v in context.items()})
            masks.append(self._encode(mask, several))
            if several:
                counts = np.bincount(mask.reshape(-1), minlength=int(scores.shape[1]))
                areas.append((counts / mask.size).astype(np.float32))
            else:
                areas.append(np.float32(np.count_nonzero(mask) / mask.size))
            heights.append(mask.shape[0])
            widths.append(mask.shape[1])
        columns = [
            pa.array(masks, pa.binary()) if self.encoding == "png" else pa.array(masks, RLE),
            pa.array(areas, pa.list_(pa.float32()) if several else pa.float32()),
        ]
        if self.sizes:
            columns += [pa.array(widths, pa.int32()), pa.array(heights, pa.int32())]
        return columns

    def _maps(self, outputs: Mapping[str, Any]) -> tuple[np.ndarray, bool]:
        """The batch as ``[n, C, H, W]`` float32 after the activation (class ids: ``[n, 1, H,
        W]`` of int64, several), and whether it has several classes."""
        x = np.asarray(outputs[self.output])
        if x.ndim == 3:
            x = x[:, None]
        if x.ndim != 4:
            raise ModelFailure(
                f"output.mask: model output '{self.output}' gave shape {list(x.shape[1:])} per row; a "
                "mask output is [C, H, W], [1, H, W] or [H, W] per row. Check output.mask.output"
            )
        if x.dtype.kind in "iub":
            return x.astype(np.int64), True
        x = x.astype(np.float32, copy=False)
        if self.activation == "sigmoid":
            x = 1.0 / (1.0 + np.exp(-x))
        elif self.activation == "softmax":
            e = np.exp(x - x.max(axis=1, keepdims=True))
            x = e / e.sum(axis=1, keepdims=True)
        return x, x.shape[1] > 1

    def to_source(self, scores: np.ndarray, several: bool, where: Mapping[str, Any]) -> np.ndarray:
        """One row's mask ``[H, W]`` uint8 in the source's pixels: 0/1, or class ids."""
        if several and scores.dtype != np.int64:
            scores = scores.argmax(axis=0)[None]
        grid = scores[0]
        hm, wm = grid.shape
        if not all(k in where for k in geometry.KEYS):  # no image geometry: the output's grid
            return _labels(grid, several, self.threshold)
        width, height = int(where["image_width"]), int(where["image_height"])
        h_in, w_in = geometry.target(self.size, width, height, self.multiple_of) if self.size else (hm, wm)
        ys, y_in = _axis(height, float(where["scale_y"]), float(where["pad_y"]), h_in, hm)
        xs, x_in = _axis(width, float(where["scale_x"]), float(where["pad_x"]), w_in, wm)
        if several:
            rows = np.floor(ys).astype(np.int64).clip(0, hm - 1)
            labels = _labels(grid[rows][:, np.floor(xs).astype(np.int64).clip(0, wm - 1)], True, 0.0)
        else:
            labels = _labels(_bilinear(grid, ys - 0.5, xs - 0.5), False, self.threshold)
        labels[~y_in] = 0
        labels[:, ~x_in] = 0
        return labels

    def _encode(self, mask: np.ndarray, several: bool) -> Any:
        if self.encoding == "rle":
            return _rle(mask, several)
        from PIL import Image

        if several and mask.max(initial=0) > 255:
            img = Image.fromarray(mask.astype(np.uint16))  # 16-bit greyscale: class ids past 255
        else:
            img = Image.fromarray((mask * 255 if not several else mask).astype(np.uint8), "L")
        buf = io.BytesIO()
        img.save(buf, "PNG", compress_level=1)  # 1: 3x faster than the default 6, masks stay small
        return buf.getvalue()


def _axis(n: int, scale: float, pad: float, n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """For ``n`` source pixels along one axis: their centres on the output's grid (in its pixel
    units, edges at integers), and whether each falls inside the model input."""
    model = (np.arange(n, dtype=np.float64) + 0.5) * scale + pad
    return model * (n_out / n_in), (model >= 0) & (model < n_in)


def _bilinear(grid: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """``grid`` [h, w] sampled at pixel-centre coordinates ``ys`` x ``xs``, edges clamped."""
    h, w = grid.shape
    y0 = np.floor(ys).astype(np.int64)
    x0 = np.floor(xs).astype(np.int64)
    wy = (ys - y0).astype(np.float32)[:, None]
    wx = (xs - x0).astype(np.float32)[None, :]
    y0c, y1c = y0.clip(0, h - 1), (y0 + 1).clip(0, h - 1)
    x0c, x1c = x0.clip(0, w - 1), (x0 + 1).clip(0, w - 1)
    rows = grid[y0c] * (1 - wy) + grid[y1c] * wy  # [H, w]
    return rows[:, x0c] * (1 - wx) + rows[:, x1c] * wx  # type: ignore[no-any-return]


def _labels(grid: np.ndarray, several: bool, threshold: float) -> np.ndarray:
    if several:
        return grid.astype(np.uint16 if grid.max(initial=0) > 255 else np.uint8)
    return (grid >= threshold).astype(np.uint8)


def _rle(mask: np.ndarray, several: bool) -> list[dict[str, Any]]:
    """COCO compressed RLE (pycocotools), one entry per class present (one channel: class 1)."""
    from pycocotools import mask as coco

    present = np.flatnonzero(np.bincount(mask.reshape(-1))).tolist() if several else [1] * bool(mask.any())
    out = []
    for c in present:
        rle = coco.encode(np.asfortranarray(mask == c, dtype=np.uint8))
        size = [int(s) for s in rle["size"]]
        out.append({"class_id": int(c), "size": size, "counts": rle["counts"].decode()})
    return out


def resolve(job: JobConfig, info: ModelInfo) -> Mask | None:
    """Check ``output.mask`` against the model. Raises ``ConfigError`` naming the key, what was
    expected and what was found."""
    cfg: Config | None = getattr(job.output, KEY, None)
    if cfg is None:
        return None
    spec = _mask_output(cfg.output, info)
    if cfg.encoding == "rle":
        try:
            import pycocotools.mask  # noqa: F401
        except ImportError as exc:
            raise ConfigError(
                "config key 'output.mask.encoding' is 'rle', which needs the pycocotools package "
                f"({exc}); install it with: pip install 'scoring[masks]', or set encoding: png"
            ) from exc
    size: geometry.Size | None = None
    inp = job.input
    if inp.text is None and inp.data == "images" and len(info.inputs) == 1:
        from scoring.preprocess.images import input_shape

        size = input_shape(inp.image, info.inputs[0])[0]
    sizes = getattr(job.output, "detections", None) is None
    several = _several(spec)
    return Mask(
        spec.name, cfg.activation, cfg.threshold, cfg.encoding, size, inp.image.multiple_of, sizes, several
    )


def _several(spec: TensorSpec) -> bool | None:
    """Whether ``spec`` as declared has several classes: [N, C>1, H, W], or class ids [N, H, W]."""
    if spec.shape is None:
        return None
    if len(spec.shape) == 3:
        return spec.dtype in INTEGERS
    c = spec.shape[1]
    return c > 1 if isinstance(c, int) and c > 0 else None


def _mask_output(name: str | None, info: ModelInfo) -> TensorSpec:
    outputs = {o.name: o for o in info.outputs}
    if name is None:
        if len(info.outputs) != 1:
            raise ConfigError(
                f"config key 'output.mask.output' is not set and the model has {len(info.outputs)} "
                f"outputs ({[o.describe() for o in info.outputs]}); set it to the output of "
                "per-pixel scores"
            )
        spec = info.outputs[0]
    elif name not in outputs:
        raise ConfigError(
            f"config key 'output.mask.output' names '{name}', which is not a model output; "
            f"the model's outputs are {sorted(outputs)}"
        )
    else:
        spec = outputs[name]
    rank = len(spec.shape) if spec.shape is not None else None
    if spec.kind != "tensor" or spec.dtype not in FLOATS + INTEGERS or rank not in (None, 3, 4):
        raise ConfigError(
            f"config key 'output.mask.output': model output {spec.describe()} is not a mask; "
            "expected [N, C, H, W] or [N, 1, H, W] scores, or [N, H, W] scores or class ids"
        )
    return spec
