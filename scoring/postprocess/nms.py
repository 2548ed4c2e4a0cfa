"""Box arithmetic for detectors, in numpy: YOLOX's grid and greedy non-maximum suppression.

Used by ``scoring.postprocess.detections``; plain functions of arrays, so a user's own
``output.function`` can call them too.
"""

from __future__ import annotations

import functools

import numpy as np


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
