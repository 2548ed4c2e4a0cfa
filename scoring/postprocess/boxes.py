"""Detector outputs, in numpy: the layouts' shapes (checked against the model on the driver),
YOLOX's grid and greedy non-maximum suppression.

Used by ``scoring.postprocess.detections``; plain functions of arrays, so a user's own
``output.function`` can call them too.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Literal

import numpy as np

from scoring.errors import ConfigError
from scoring.model import TensorSpec

# What each layout's output looks like (N = batch, K = candidates, C = classes), for messages.
LAYOUTS = {
    "yolov5": "[N, K, 5 + C] (cx, cy, w, h, objectness, C class scores)",
    "yolov8": "[N, 4 + C, K] (cx, cy, w, h, C class scores)",
    "yolox": "[N, K, 5 + C] before grid decoding (x, y, log w, log h, objectness, C class scores)",
    "xyxy": "[N, K, 6] (x1, y1, x2, y2, score, class)",
    "boxes": "two outputs: boxes [N, K, 4] (x1, y1, x2, y2) and scores [N, K, C] or [N, K]",
}
Format = Literal["yolov5", "yolov8", "yolox", "xyxy", "boxes"]


@functools.lru_cache(maxsize=16)
def grid(height: int, width: int, strides: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """YOLOX's grid cells (x, y) [K, 2] and their strides [K, 1], finest grid first."""
    cells, steps = [], []
    for s in strides:
        ys, xs = np.mgrid[0 : height // s, 0 : width // s]
        cells.append(np.stack([xs.ravel(), ys.ravel()], 1))
        steps.append(np.full((cells[-1].shape[0], 1), s))
    return np.concatenate(cells).astype(np.float32), np.concatenate(steps).astype(np.float32)


def nms(boxes: np.ndarray, classes: np.ndarray | None, iou: float, limit: int) -> np.ndarray:
    """Greedy NMS of ``boxes`` [m, 4] (x1, y1, x2, y2) sorted by score, highest first: the indices
    kept, at most ``limit``. A box is dropped when it overlaps a kept one by more than ``iou``;
    with ``classes``, only boxes of one class suppress each other (each class is shifted apart).
    Each round keeps one box, so it runs at most ``limit`` rounds of vector work."""
    b = boxes.astype(np.float64)
    if classes is not None:
        b = b + (classes.astype(np.float64) * (b.max() - b.min() + 1))[:, None]
    x1, y1, x2, y2 = b.T
    areas = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    order, keep = np.arange(len(b)), list[int]()
    while order.size and len(keep) < limit:
        i, rest = order[0], order[1:]
        keep.append(i)
        w = np.clip(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), 0, None)
        h = np.clip(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), 0, None)
        inter = w * h
        order = rest[inter <= iou * (areas[i] + areas[rest] - inter)]
    return np.asarray(keep, np.int64)


def classes(
    fmt: str, strides: Sequence[int], specs: list[TensorSpec], size: tuple[int | None, int | None]
) -> int | None:
    """C from the declared shapes (None when dynamic); ``ConfigError`` when they cannot fit."""
    shapes = [s.shape for s in specs]
    if any(shape is None for shape in shapes):
        return None
    dims = [[d if isinstance(d, int) and d > 0 else None for d in shape or ()] for shape in shapes]
    first = dims[0]
    hint = ""
    if fmt == "yolov8" and len(first) == 3 and first[1] and first[2] and first[1] > first[2]:
        hint = " (K before 4 + C: this looks like the yolov5 layout [N, K, 5 + C])"
    if fmt in ("yolov5", "yolox") and len(first) == 3 and first[1] and first[2] and first[2] > first[1]:
        hint = " (4 + C before K: this looks like the yolov8 layout [N, 4 + C, K])"
    fits = {
        "yolov5": len(first) == 3 and (first[2] is None or first[2] >= 6) and not hint,
        "yolox": len(first) == 3 and (first[2] is None or first[2] >= 6) and not hint,
        "yolov8": len(first) == 3 and (first[1] is None or first[1] >= 5) and not hint,
        "xyxy": len(first) == 3 and first[2] in (None, 6),
        "boxes": len(first) == 3 and first[2] in (None, 4) and len(dims) == 2 and len(dims[1]) in (2, 3),
    }[fmt]
    if not fits:
        found = " and ".join(s.describe() for s in specs)
        raise ConfigError(
            f"config key 'output.detections.format' is {fmt}, which expects {LAYOUTS[fmt]}; found "
            f"{found}{hint}. Set output.detections.format to the model's layout"
        )
    h, w = size
    if fmt == "yolox" and first[1] is not None and h is not None and w is not None:
        cells = sum((h // s) * (w // s) for s in strides)
        if cells != first[1]:
            raise ConfigError(
                f"config key 'output.detections.strides' is {list(strides)}: a {h}x{w} input makes "
                f"{cells} grid cells, but model output {specs[0].describe()} has {first[1]} candidates; "
                "set strides to the model's"
            )
    last = dims[-1]
    c = {
        "yolov5": first[2] and first[2] - 5,
        "yolox": first[2] and first[2] - 5,
        "yolov8": first[1] and first[1] - 4,
        "xyxy": None,
        "boxes": (last[2] if len(last) == 3 else 1),
    }[fmt]
    return c or None
