"""Boxes from a detector's raw outputs (``output.detections``): the columns ``detections``,
``image_width`` and ``image_height``.

``resolve`` checks the section against the model on the driver — which output(s), that their
declared shapes fit the layout, the labels — and returns a ``Detections``, plain data that travels
to the workers. ``decode`` takes one batch, all in numpy: the layout's candidates (cx, cy, w, h or
x1, y1, x2, y2 in model-input pixels; YOLOX's grid decoded), each candidate's best class and its
score (× objectness where the layout has one), the score threshold, greedy NMS per image (per
class, or across classes), the ``max_detections`` best, then back to the source image's pixels
through the row's geometry (``scoring.preprocess.geometry``: ``x = (x_model - pad_x) / scale_x``)
and clipped to it. See docs/models/detections.md.
"""

from __future__ import annotations

import dataclasses
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
from scoring.postprocess.classify import _labels
from scoring.postprocess.nms import grid, nms
from scoring.preprocess import geometry

KEY = "detections"
BOX = pa.list_(pa.float32(), 4)
ITEM = pa.struct([("class_id", pa.int32()), ("label", pa.string()), ("score", pa.float32()), ("box", BOX)])
COLUMN = pa.list_(ITEM)
# What each layout's output looks like (N = batch, K = candidates, C = classes), for messages.
LAYOUTS = {
    "yolov5": "[N, K, 5 + C] (cx, cy, w, h, objectness, C class scores)",
    "yolov8": "[N, 4 + C, K] (cx, cy, w, h, C class scores)",
    "yolox": "[N, K, 5 + C] before grid decoding (x, y, log w, log h, objectness, C class scores)",
    "xyxy": "[N, K, 6] (x1, y1, x2, y2, score, class)",
    "boxes": "two outputs: boxes [N, K, 4] (x1, y1, x2, y2) and scores [N, K, C] or [N, K]",
}
Format = Literal["yolov5", "yolov8", "yolox", "xyxy", "boxes"]


class Config(Section):
    format: Format = Field(description="the output's layout: yolov5 | yolov8 | yolox | xyxy | boxes")
    output: str | list[str] | None = Field(
        default=None,
        description="the output holding boxes (boxes: [BOXES, SCORES]); default: the model's only output",
    )
    score_threshold: float = Field(default=0.25, ge=0, description="candidates scoring less are dropped")
    iou_threshold: float | None = Field(
        default=0.45, gt=0, le=1, description="NMS overlap; null: no NMS (the model did it)"
    )
    max_detections: int = Field(default=100, gt=0, description="per image, highest scores first")
    class_agnostic: bool = Field(default=False, description="NMS across classes")
    normalized: bool = Field(default=False, description="box coordinates are fractions of the model input")
    strides: list[int] = Field(default=[8, 16, 32], description="yolox: the grids' strides, in output order")
    labels: str | list[str] | None = Field(
        default=None, description="class names: a list, a text file (one a line, any URI) or metadata:KEY"
    )


@dataclasses.dataclass(frozen=True)
class Detections:
    format: str
    outputs: tuple[str, ...]  # the output read (boxes: boxes, scores)
    score_threshold: float
    iou_threshold: float | None
    max_detections: int
    class_agnostic: bool
    normalized: bool
    strides: tuple[int, ...]
    labels: tuple[str, ...] | None  # None: the class id as a string
    size: geometry.Size  # the model input's [height, width]; None: follows each image (multiple_of)
    multiple_of: int
    fixed: bool  # the model declares its input's height and width (the warm-up batch has that size)
    key = KEY
    replaces_outputs = True

    @property
    def reads(self) -> tuple[str, ...]:
        return self.outputs

    def fields(self) -> list[pa.Field]:
        return [
            pa.field("detections", COLUMN),
            pa.field("image_width", pa.int32()),
            pa.field("image_height", pa.int32()),
        ]

    def check(self, outputs: Mapping[str, Any]) -> None:
        """The warm-up batch's outputs against the layout (and the grid, when the model fixes
        its input's size: otherwise the warm-up images are 1x1)."""
        h, w = self.size
        self.candidates(outputs, (h, w) if h is not None and w is not None else None, grid=self.fixed)

    def decode(self, outputs: Mapping[str, Any], context: Context) -> list[pa.Array]:
        n = len(np.asarray(outputs[self.outputs[0]]))
        size = self.input_size(context)
        boxes, scores, classes = self.candidates(outputs, size)
        if "scale_x" in context:
            scale = np.stack([context["scale_x"], context["scale_y"]] * 2, axis=1)
            pad = np.stack([context["pad_x"], context["pad_y"]] * 2, axis=1)
            width, height = context["image_width"], context["image_height"]
        else:  # no image geometry (a tensor input): boxes stay in the model input's pixels
            scale, pad = np.ones((n, 4), np.float32), np.zeros((n, 4), np.float32)
            width = height = np.full(n, -1, np.int32)
            if size is not None:
                width, height = np.full(n, size[1], np.int32), np.full(n, size[0], np.int32)
        found = [
            self._row(boxes[i], scores[i], classes[i], scale[i], pad[i], width[i], height[i])
            for i in range(n)
        ]
        sizes = [pa.array(v, pa.int32(), mask=v < 0) for v in (np.asarray(width), np.asarray(height))]
        return [self.column(found), *sizes]

    def input_size(self, context: Context) -> tuple[int, int] | None:
        """The model input's (height, width) for a batch (one shape: see geometry.target)."""
        h, w = self.size
        if h is not None and w is not None:
            return h, w
        if "image_width" in context and len(context["image_width"]):
            return geometry.target(
                self.size, int(context["image_width"][0]), int(context["image_height"][0]), self.multiple_of
            )
        return None

    def candidates(
        self, outputs: Mapping[str, Any], size: tuple[int, int] | None, grid: bool = True
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every candidate of a batch: boxes [n, K, 4] x1, y1, x2, y2 in model-input pixels, its
        best class's score [n, K] and that class [n, K]. Raises ``ModelFailure`` for outputs
        that do not fit the layout."""
        a = np.asarray(outputs[self.outputs[0]], np.float32)
        fmt, shape = self.format, list(a.shape)
        if fmt == "boxes":
            s = np.asarray(outputs[self.outputs[1]], np.float32)
            if a.ndim != 3 or a.shape[2] != 4 or s.ndim not in (2, 3) or s.shape[:2] != a.shape[:2]:
                raise self._misfit(f"{shape} and {list(s.shape)}")
            xyxy, obj, cls = a, None, s if s.ndim == 3 else s[..., None]
        elif fmt == "xyxy":
            if a.ndim != 3 or a.shape[2] != 6:
                raise self._misfit(shape)
            xyxy, obj, cls = a[..., :4], None, None
        else:
            if fmt == "yolov8":
                if a.ndim != 3 or a.shape[1] < 5:
                    raise self._misfit(shape)
                a = a.transpose(0, 2, 1)
            elif a.ndim != 3 or a.shape[2] < 6:
                raise self._misfit(shape)
            xywh = a[..., :4]
            if fmt == "yolox" and grid:
                cells, stride = self._grid(a.shape[1], size)
                xywh = np.concatenate([(xywh[..., :2] + cells) * stride, np.exp(xywh[..., 2:]) * stride], -1)
            half = xywh[..., 2:] / 2
            xyxy = np.concatenate([xywh[..., :2] - half, xywh[..., :2] + half], -1)
            obj, cls = (None, a[..., 4:]) if fmt == "yolov8" else (a[..., 4], a[..., 5:])
        if cls is None:
            scores, classes = a[..., 4], np.rint(a[..., 5]).astype(np.int64)
        else:
            if self.labels is not None and cls.shape[-1] != len(self.labels):
                raise ModelFailure(
                    f"output.detections: model output '{self.outputs[-1]}' has {cls.shape[-1]} classes "
                    f"but {len(self.labels)} labels were given; give one label per class"
                )
            classes = cls.argmax(-1)
            scores = np.take_along_axis(cls, classes[..., None], -1)[..., 0]
            if obj is not None:
                scores = scores * obj
        if self.normalized:
            if size is None:
                raise ModelFailure(
                    "output.detections.normalized needs the model input's size; set input.image.size"
                )
            xyxy = xyxy * np.array([size[1], size[0]] * 2, np.float32)
        return xyxy, scores, classes

    def _grid(self, k: int, size: tuple[int, int] | None) -> tuple[np.ndarray, np.ndarray]:
        if size is None:  # square inputs only: K = side² × Σ 1/stride²
            side = round((k / sum(1 / s**2 for s in self.strides)) ** 0.5)
            size = (side, side)
        cells, stride = grid(size[0], size[1], self.strides)
        if len(cells) != k:
            raise ModelFailure(
                f"output.detections (yolox): model output '{self.outputs[0]}' has {k} candidates, but a "
                f"{size[0]}x{size[1]} input with strides {list(self.strides)} makes {len(cells)} grid "
                "cells; set output.detections.strides to the model's (or input.image.size)"
            )
        return cells, stride

    def _misfit(self, found: Any) -> ModelFailure:
        return ModelFailure(
            f"output.detections: format {self.format} expects {LAYOUTS[self.format]}; model output(s) "
            f"{list(self.outputs)} gave {found}. Set output.detections.format (or .output) to match the model"
        )

    def _row(
        self,
        boxes: np.ndarray,
        scores: np.ndarray,
        classes: np.ndarray,
        scale: np.ndarray,
        pad: np.ndarray,
        width: int,
        height: int,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One image's detections: (boxes [m, 4] in source pixels, scores [m], classes [m])."""
        idx = np.flatnonzero(scores >= self.score_threshold)
        idx = idx[np.argsort(-scores[idx], kind="stable")]
        if self.iou_threshold is not None and len(idx) > 1:
            keep = nms(
                boxes[idx],
                None if self.class_agnostic else classes[idx],
                self.iou_threshold,
                self.max_detections,
            )
            idx = idx[keep]
        idx = idx[: self.max_detections]
        out = (boxes[idx] - pad) / scale
        if width >= 0:
            out = np.clip(out, 0, np.array([width, height] * 2, np.float32))
        real = (out[:, 2] > out[:, 0]) & (out[:, 3] > out[:, 1])  # boxes wholly in the padding go
        return out[real].astype(np.float32), scores[idx][real].astype(np.float32), classes[idx][real]

    def column(self, found: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> pa.Array:
        """The ``detections`` column: one list per row (empty, never null, for no box)."""
        counts = np.array([len(f[1]) for f in found], np.int32)
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
        boxes = np.concatenate([f[0] for f in found]) if found else np.zeros((0, 4), np.float32)
        scores = np.concatenate([f[1] for f in found]) if found else np.zeros(0, np.float32)
        classes = np.concatenate([f[2] for f in found]).astype(np.int32) if found else np.zeros(0, np.int32)
        if self.labels is not None:
            bad = (classes < 0) | (classes >= len(self.labels))
            if bad.any():
                first = int(classes[bad][0])
                raise ValueError(f"class id {first} has no label ({len(self.labels)} labels given)")
            names = pa.array(np.asarray(self.labels, dtype=object)[classes], pa.string())
        else:
            names = pa.array(classes.astype(str).astype(object), pa.string())
        box = pa.FixedSizeListArray.from_arrays(pa.array(boxes.reshape(-1), pa.float32()), 4)
        items = pa.StructArray.from_arrays(
            [pa.array(classes, pa.int32()), names, pa.array(scores, pa.float32()), box], fields=list(ITEM)
        )
        return pa.ListArray.from_arrays(pa.array(offsets), items, type=COLUMN)


def resolve(job: JobConfig, info: ModelInfo) -> Detections | None:
    """Check ``output.detections`` against the model and read its labels. Raises ``ConfigError``
    (exit 2) naming the key, what was expected and what was found."""
    cfg: Config | None = getattr(job.output, KEY, None)
    if cfg is None:
        return None
    specs = _outputs(cfg, info)
    size: geometry.Size = (None, None)
    fixed = False
    if job.input.data == "images" and info.inputs:
        from scoring.preprocess.images import input_shape

        size, layout, _ = input_shape(job.input.image, info.inputs[0])
        shape = info.inputs[0].shape or ()
        fixed = all(isinstance(d, int) and d > 0 for d in (shape[2:4] if layout == "NCHW" else shape[1:3]))
    labels = _labels(cfg.labels, info, job.storage_options, key=f"output.{KEY}.labels")
    classes = _classes(cfg, specs, size)
    if labels is not None and classes is not None and classes != len(labels):
        raise ConfigError(
            f"config key 'output.detections.labels': {len(labels)} labels for model output "
            f"{specs[-1].describe()} of {classes} classes; give one label per class"
        )
    return Detections(
        cfg.format,
        tuple(s.name for s in specs),
        cfg.score_threshold,
        cfg.iou_threshold,
        cfg.max_detections,
        cfg.class_agnostic,
        cfg.normalized,
        tuple(cfg.strides),
        labels,
        size,
        job.input.image.multiple_of,
        fixed,
    )


def _outputs(cfg: Config, info: ModelInfo) -> list[TensorSpec]:
    by_name = {o.name: o for o in info.outputs}
    want = 2 if cfg.format == "boxes" else 1
    names = [cfg.output] if isinstance(cfg.output, str) else cfg.output
    if names is None:
        if len(info.outputs) != want:
            raise ConfigError(
                f"config key 'output.detections.output' is not set and the model has {len(info.outputs)} "
                f"outputs ({[o.describe() for o in info.outputs]}); format {cfg.format} reads "
                f"{LAYOUTS[cfg.format]}: set output.detections.output to "
                f"{'[BOXES, SCORES]' if want == 2 else 'the one holding boxes'}"
            )
        # Boxes (the output whose last dim is 4) before scores, whichever order the model has.
        names = sorted((o.name for o in info.outputs), key=lambda n: (by_name[n].shape or [0])[-1] != 4)
    if len(names) != want:
        raise ConfigError(
            f"config key 'output.detections.output' names {len(names)} output(s) {names}; format "
            f"{cfg.format} reads {LAYOUTS[cfg.format]}"
        )
    for name in names:
        if name not in by_name:
            raise ConfigError(
                f"config key 'output.detections.output' names '{name}', which is not a model output; "
                f"the model's outputs are {sorted(by_name)}"
            )
    return [by_name[n] for n in names]


def _classes(cfg: Config, specs: list[TensorSpec], size: geometry.Size) -> int | None:
    """C from the declared shapes (None when dynamic); ``ConfigError`` when they cannot fit."""
    shapes = [s.shape for s in specs]
    if any(shape is None for shape in shapes):
        return None
    dims = [[d if isinstance(d, int) and d > 0 else None for d in shape or ()] for shape in shapes]
    first, fmt = dims[0], cfg.format
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
        cells = sum((h // s) * (w // s) for s in cfg.strides)
        if cells != first[1]:
            raise ConfigError(
                f"config key 'output.detections.strides' is {cfg.strides}: a {h}x{w} input makes "
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
