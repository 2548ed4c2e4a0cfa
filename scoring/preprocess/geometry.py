"""Where each image row came from: the source's size and how it was placed in the model input.

For every image, ``place`` decides the model input's size (``input.image.size``, a ``null`` dim
following the source's aspect) and the placement ``x_model = x_source * scale_x + pad_x`` (the
same for y) that ``stretch``, ``center_crop`` and ``letterbox`` make; the image preprocessor
resizes by it, and hands it to postprocessing as the rows' context (``context``): ``image_width``,
``image_height`` (int32, the source after EXIF orientation), ``scale_x``, ``scale_y``, ``pad_x``,
``pad_y`` (float32). Coordinates are continuous pixel edges: the source's ``[0, width]`` maps to
the resized image's ``[0, resized_width]``, so a box maps back exactly by ``(x - pad_x) / scale_x``.
Pure arithmetic: no Pillow, no I/O (docs/preprocessing/images.md#where-each-row-came-from).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from scoring.config import ImageConfig

# The context keys, as postprocessors and users' functions read them (SPEC "Where each image row
# came from").
SIZES = ("image_width", "image_height")
PLACEMENT = ("scale_x", "scale_y", "pad_x", "pad_y")
KEYS = SIZES + PLACEMENT

Size = tuple[int | None, int | None]  # [height, width]; None follows the source's aspect


@dataclasses.dataclass(frozen=True)
class Placement:
    """One image in the model input: the source's ``width`` x ``height``, the model input's
    ``size`` (height, width), the size the source is resized to (``resized``: width, height) and
    where that lands (``offset``: x, y of its top-left corner; negative where a crop cuts)."""

    width: int
    height: int
    size: tuple[int, int]
    resized: tuple[int, int]
    offset: tuple[int, int]

    @property
    def scale_x(self) -> float:
        return self.resized[0] / self.width

    @property
    def scale_y(self) -> float:
        return self.resized[1] / self.height


def target(size: Size, width: int, height: int, multiple: int) -> tuple[int, int]:
    """The model input's (height, width) for a source of ``width`` x ``height``: a dim given is
    kept; a ``None`` one is the other dim times the source's aspect, rounded up to ``multiple``;
    both ``None`` keep the source's size, rounded up."""
    h, w = size
    if h is not None and w is not None:
        return h, w
    if w is not None:
        return _round_up(w * height / width, multiple), w
    if h is not None:
        return h, _round_up(h * width / height, multiple)
    return _round_up(height, multiple), _round_up(width, multiple)


def _round_up(x: float, multiple: int) -> int:
    # 1e-9: an exact product (416 * 3/4 = 312.0000001 in floats) is not a step up.
    return max(multiple, math.ceil(x / multiple - 1e-9) * multiple)


def place(width: int, height: int, cfg: ImageConfig, size: Size) -> Placement:
    """How a ``width`` x ``height`` source (after EXIF orientation) is placed by ``cfg.resize``."""
    h, w = target(size, width, height, cfg.multiple_of)
    if cfg.resize == "stretch":
        return Placement(width, height, (h, w), (w, h), (0, 0))
    if cfg.resize == "center_crop":
        scale = (cfg.resize_short_side or min(h, w)) / min(width, height)
        nw, nh = max(w, round(width * scale)), max(h, round(height * scale))
        return Placement(width, height, (h, w), (nw, nh), (-((nw - w) // 2), -((nh - h) // 2)))
    scale = min(w / width, h / height)
    nw, nh = max(1, round(width * scale)), max(1, round(height * scale))
    offset = ((w - nw) // 2, (h - nh) // 2) if cfg.anchor == "center" else (0, 0)
    return Placement(width, height, (h, w), (nw, nh), offset)


def context(placements: Sequence[Placement]) -> dict[str, np.ndarray]:
    """The rows' context arrays, one value per placement (see the module docstring)."""
    return {
        "image_width": np.array([p.width for p in placements], np.int32),
        "image_height": np.array([p.height for p in placements], np.int32),
        "scale_x": np.array([p.scale_x for p in placements], np.float32),
        "scale_y": np.array([p.scale_y for p in placements], np.float32),
        "pad_x": np.array([p.offset[0] for p in placements], np.float32),
        "pad_y": np.array([p.offset[1] for p in placements], np.float32),
    }
