"""output.detections: every layout against one numpy reference, boxes in source pixels for every
resize, a real YOLOX from the wild, and the refusals a user meets."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pytest
from models import detector
from PIL import Image
from support import read_predictions

STRIDES = (8, 16, 32)
ITEM = pa.struct(
    [
        ("class_id", pa.int32()),
        ("label", pa.string()),
        ("score", pa.float32()),
        ("box", pa.list_(pa.float32(), 4)),
    ]
)


def scene(seed: int, width: int = 96, height: int = 80) -> np.ndarray:
    """A noisy dark picture with a reddish and a greenish bright patch."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 90, (height, width, 3)).astype(np.uint8)
    img[10:40, 8:50] = rng.integers(200, 256, (30, 42, 3)) * np.array([1, 0.75, 0.6])
    img[45:75, 50:90] = rng.integers(200, 256, (30, 40, 3)) * np.array([0.7, 1, 0.7])
    return img


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def letterboxed(img: np.ndarray, size: int) -> tuple[np.ndarray, tuple[float, float], float, float]:
    """The model input for ``img`` letterboxed (centred, 114) — written from the docs' formula —
    and its scales (the resized size over the source's, per axis) and pads."""
    h, w = img.shape[:2]
    s = min(size / w, size / h)
    nw, nh = round(w * s), round(h * s)
    px, py = (size - nw) // 2, (size - nh) // 2
    canvas = np.full((size, size, 3), 114, np.uint8)
    canvas[py : py + nh, px : px + nw] = np.asarray(Image.fromarray(img).resize((nw, nh), Image.BILINEAR))
    return canvas.astype(np.float32).transpose(2, 0, 1) / 255, (nw / w, nh / h), px, py


def reference(
    raw: np.ndarray,
    size: int,
    scale: tuple[float, float],
    pad: tuple[float, float],
    wh: tuple[int, int],
    thr: float,
    iou: float,
    limit: int,
    agnostic: bool,
) -> list[tuple[int, float, list[float]]]:
    """YOLOX decoding and NMS for one image, as a plain loop over an IoU matrix."""
    grid = np.concatenate([[(x, y) for y in range(size // s) for x in range(size // s)] for s in STRIDES])
    stride = np.concatenate([[s] * (size // s) ** 2 for s in STRIDES])[:, None]
    xy, wh_ = (raw[:, :2] + grid) * stride, np.exp(raw[:, 2:4]) * stride
    boxes = np.concatenate([xy - wh_ / 2, xy + wh_ / 2], 1)
    cls = raw[:, 5:] * raw[:, 4:5]
    ids, scores = cls.argmax(1), cls.max(1)
    order = [i for i in np.argsort(-scores, kind="stable") if scores[i] >= thr]
    x1, y1, x2, y2 = boxes.T
    inter = np.clip(np.minimum(x2[:, None], x2) - np.maximum(x1[:, None], x1), 0, None) * np.clip(
        np.minimum(y2[:, None], y2) - np.maximum(y1[:, None], y1), 0, None
    )
    area = (x2 - x1) * (y2 - y1)
    overlap = inter / (area[:, None] + area - inter)
    kept: list[int] = []
    for i in order:
        if all(overlap[i, j] <= iou or (not agnostic and ids[i] != ids[j]) for j in kept):
            kept.append(i)
    out = []
    for i in kept[:limit]:
        b = (boxes[i] - [pad[0], pad[1], pad[0], pad[1]]) / [scale[0], scale[1], scale[0], scale[1]]
        b = np.clip(b, 0, [wh[0], wh[1], wh[0], wh[1]])
        if b[2] > b[0] and b[3] > b[1]:
            out.append((int(ids[i]), float(scores[i]), b.tolist()))
    return out


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(3):
        (folder / f"p{i}.png").write_bytes(png(scene(i)))
    (folder / "p3_blank.png").write_bytes(png(np.zeros((50, 70, 3), np.uint8)))
    return folder


def job(model: str, folder: Path, image: dict[str, Any], dets: dict[str, Any], **compute: Any) -> dict:
    return {
        "model": {"uri": model},
        "input": {"uri": str(folder), "format": "images", "image": image},
        "output": {"detections": dets},
        "compute": {"batch_size": 3, **compute},
    }


@pytest.mark.parametrize(
    "layout,extra",
    [
        ("yolox", {}),
        ("yolov5", {}),
        ("yolov8", {}),
        ("xyxy", {}),
        ("boxes", {"output": ["xyxy", "scores"]}),
        ("boxes", {"output": ["xyxy", "scores"], "normalized": True, "class_agnostic": True}),
    ],
)
def test_every_layout_gives_the_reference_detections(
    run_job, tmp_path: Path, photos: Path, layout: str, extra: dict
) -> None:
    normalized = extra.get("normalized", False)
    model = detector(tmp_path / "det.onnx", layout, normalized=normalized)
    raw_model = ort.InferenceSession(detector(tmp_path / "raw.onnx", "yolox"))
    settings = {"score_threshold": 0.3, "iou_threshold": 0.5, "max_detections": 6, "labels": ["red", "green"]}
    result = run_job(job(model, photos, {"resize": "letterbox"}, {"format": layout, **settings, **extra}))
    assert result.ok, result.job["error"]
    preds = read_predictions(result.out)
    # The raw output is not kept: output.outputs defaults to {} with detections.
    assert preds.column_names == ["shard", "row", "path", "detections", "image_width", "image_height"]
    assert preds.schema.field("detections").type == pa.list_(ITEM)
    rows = {Path(r["path"]).name: r for r in preds.to_pylist()}
    assert rows["p3_blank.png"]["detections"] == []  # an empty list, not a null
    assert (rows["p3_blank.png"]["image_width"], rows["p3_blank.png"]["image_height"]) == (70, 50)
    total = 0
    for i in range(3):
        row, img = rows[f"p{i}.png"], scene(i)
        x, scale, px, py = letterboxed(img, 64)
        raw = raw_model.run(None, {"images": x[None]})[0][0]
        want = reference(raw, 64, scale, (px, py), (96, 80), 0.3, 0.5, 6, extra.get("class_agnostic", False))
        got = row["detections"]
        assert [d["class_id"] for d in got] == [w[0] for w in want], (layout, i)
        assert [d["label"] for d in got] == [["red", "green"][w[0]] for w in want]
        np.testing.assert_allclose([d["score"] for d in got], [w[1] for w in want], rtol=1e-5)
        np.testing.assert_allclose([d["box"] for d in got], [w[2] for w in want], atol=2e-3)
        assert (row["image_width"], row["image_height"]) == (96, 80)
        total += len(got)
    assert total >= 6  # the scenes give boxes of both classes, some suppressed
