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
from models import bright_box, detector
from PIL import Image, ImageDraw, ImageFont
from support import read_predictions

from scoring.config_file import load_config
from scoring.errors import ConfigError

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


def rectangle(width: int, height: int, box: tuple[int, int, int, int]) -> bytes:
    img = np.zeros((height, width, 3), np.uint8)
    img[box[1] : box[3], box[0] : box[2]] = 255
    return png(img)


@pytest.mark.parametrize(
    "image,dynamic",
    [
        ({"resize": "stretch"}, False),
        ({"resize": "center_crop", "resize_short_side": 72}, False),
        ({"resize": "letterbox"}, False),
        ({"resize": "letterbox", "anchor": "top_left", "pad_value": 0}, False),
        ({"size": [None, None]}, True),
        ({"size": [64, None], "resize": "letterbox"}, True),
    ],
)
def test_boxes_land_in_source_pixels_whatever_the_resize(
    run_job, tmp_path: Path, image: dict, dynamic: bool
) -> None:
    """A white rectangle drawn at known pixels is found there by a model that boxes the bright
    pixels of its input, however the image was placed (and at its own aspect when dynamic)."""
    folder = tmp_path / "rects"
    folder.mkdir()
    # Both rectangles lie inside what center_crop keeps.
    truth = {"wide.png": (120, 90, (30, 20, 70, 60)), "tall.png": (70, 110, (10, 30, 60, 80))}
    for name, (w, h, box) in truth.items():
        (folder / name).write_bytes(rectangle(w, h, box))
    model = bright_box(tmp_path / "bb.onnx", ("h", "w") if dynamic else (64, 64))
    dets = {"format": "xyxy", "iou_threshold": None, "score_threshold": 0.5}
    result = run_job(job(model, folder, image, dets))
    assert result.ok, result.job["error"]
    for row in read_predictions(result.out).to_pylist():
        w, h, box = truth[Path(row["path"]).name]
        ((found,),) = [[d["box"] for d in row["detections"]]]
        assert (row["image_width"], row["image_height"]) == (w, h)
        # The resize blurs an edge by a model pixel: that many source pixels, and a half.
        np.testing.assert_allclose(found, box, atol=max(w, h) / 64 + 0.5)


def test_labels_from_a_file_or_the_models_metadata_and_nms_across_classes(
    run_job, tmp_path: Path, photos: Path
) -> None:
    import onnx

    model = detector(tmp_path / "det.onnx", "yolox")
    proto = onnx.load(model)
    onnx.helper.set_model_props(proto, {"names": "{0: 'warm', 1: 'cool'}"})
    onnx.save(proto, model)
    (tmp_path / "labels.txt").write_text("warm\ncool\n")
    found = {}
    for labels, agnostic in (("metadata:names", False), (str(tmp_path / "labels.txt"), True)):
        dets = {"format": "yolox", "labels": labels, "class_agnostic": agnostic, "iou_threshold": 0.3}
        config = job(model, photos, {"resize": "letterbox"}, dets)
        config["output"]["mode"] = "overwrite"
        result = run_job(config)
        assert result.ok, result.job["error"]
        rows = read_predictions(result.out).to_pylist()
        found[agnostic] = [d for r in rows for d in r["detections"]]
    assert {d["label"] for d in found[False]} == {"warm", "cool"}
    assert 0 < len(found[True]) < len(found[False])  # across classes, overlaps of two classes go too


def text_scene() -> Image.Image:
    img = Image.new("RGB", (640, 480), (235, 230, 220))
    ImageDraw.Draw(img).text((60, 180), "HELLO 2024", fill=(20, 20, 60), font=ImageFont.load_default(size=64))
    return img


def ddddocr_reference(session: ort.InferenceSession, img: Image.Image) -> np.ndarray:
    """ddddocr 1.6.1's own pipeline (core/detection_engine.py), restated with PIL and numpy: BGR
    0-255, letterbox at the top left on 114, YOLOX decoding, class-agnostic NMS 0.45 with its
    +1 pixel areas, score 0.1, boxes divided by the ratio and clipped."""
    bgr = np.asarray(img)[..., ::-1]
    r = min(416 / img.height, 416 / img.width)
    resized = np.asarray(img.resize((int(img.width * r), int(img.height * r)), Image.BILINEAR))[..., ::-1]
    padded = np.full((416, 416, 3), 114, np.float32)
    padded[: resized.shape[0], : resized.shape[1]] = resized
    del bgr
    out = session.run(None, {"images": padded.transpose(2, 0, 1)[None]})[0][0]
    grids, strides = [], []
    for s in STRIDES:
        yv, xv = np.meshgrid(np.arange(416 // s), np.arange(416 // s), indexing="ij")
        grids.append(np.stack((xv, yv), 2).reshape(-1, 2))
        strides.append(np.full((grids[-1].shape[0], 1), s))
    grid, stride = np.concatenate(grids), np.concatenate(strides)
    out[:, :2] = (out[:, :2] + grid) * stride
    out[:, 2:4] = np.exp(out[:, 2:4]) * stride
    boxes = np.concatenate([out[:, :2] - out[:, 2:4] / 2, out[:, :2] + out[:, 2:4] / 2], 1) / r
    scores = out[:, 4] * out[:, 5]
    order = np.argsort(-scores)
    order = order[scores[order] > 0.1]
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        w = np.maximum(0, np.minimum(x2[i], x2[order[1:]]) - np.maximum(x1[i], x1[order[1:]]) + 1)
        h = np.maximum(0, np.minimum(y2[i], y2[order[1:]]) - np.maximum(y1[i], y1[order[1:]]) + 1)
        ovr = w * h / (areas[i] + areas[order[1:]] - w * h)
        order = order[1:][ovr <= 0.45]
    return np.clip(boxes[keep], 0, [640, 480, 640, 480])


def test_a_real_yolox_from_the_wild_finds_the_characters_its_own_code_finds(run_job, tmp_path: Path) -> None:
    """ddddocr's character detector (a YOLOX at 416x416, fixed batch 1), configured as its
    quirks need, gives the boxes of ddddocr's own pre- and postprocessing."""
    from wild import ddddocr_det

    model = ddddocr_det()
    folder = tmp_path / "scenes"
    folder.mkdir()
    text_scene().save(folder / "hello.png")
    image = {"mode": "BGR", "scale": 1.0, "resize": "letterbox", "anchor": "top_left"}  # pad_value 114
    dets = {"format": "yolox", "score_threshold": 0.1, "class_agnostic": True, "labels": ["char"]}
    result = run_job(job(str(model), folder, image, dets))
    assert result.ok, result.job["error"]
    (row,) = read_predictions(result.out).to_pylist()
    got = np.array([d["box"] for d in row["detections"]])
    want = ddddocr_reference(ort.InferenceSession(str(model)), text_scene())
    assert len(got) == len(want) >= 7  # one box a glyph, nearly every glyph
    for box in want:  # each of ddddocr's boxes is one of ours, to a pixel or two
        assert np.abs(got - box).max(axis=1).min() < 2.5, box
    assert all(180 < b[1] and b[3] < 250 and 55 < b[0] and b[2] < 435 for b in got)  # on the text line
    assert {d["label"] for d in row["detections"]} == {"char"}


def test_the_ray_runner_gives_the_local_runners_detections(run_job, tmp_path: Path, photos: Path) -> None:
    model = detector(tmp_path / "det.onnx", "yolov8")
    found = []
    for runner in ("local", "ray"):
        config = job(model, photos, {"resize": "letterbox"}, {"format": "yolov8"}, runner=runner)
        config["output"]["uri"] = str(tmp_path / runner)
        result = run_job(config)
        assert result.ok, result.job["error"]
        found.append(sorted(read_predictions(result.out).to_pylist(), key=lambda r: r["path"]))
    assert found[0] == found[1] and sum(len(r["detections"]) for r in found[0]) > 0


def config_error(tmp_path: Path, model: str, dets: dict[str, Any], image: dict | None = None) -> str:
    from scoring.spec import check

    data = job(model, tmp_path, image or {}, dets)
    data["output"]["uri"] = str(tmp_path / "out")
    (tmp_path / "a.png").write_bytes(png(scene(0)))
    with pytest.raises(ConfigError) as err:
        check(load_config(data=data, environ={}))
    return str(err.value)


def test_configs_that_cannot_fit_the_model_are_refused_saying_what_to_set(tmp_path: Path) -> None:
    v8 = detector(tmp_path / "v8.onnx", "yolov8")
    two = detector(tmp_path / "two.onnx", "boxes")
    msg = config_error(tmp_path, v8, {"format": "yolov8", "output": "boxes"})
    assert "names 'boxes', which is not a model output; the model's outputs are ['out']" in msg
    msg = config_error(tmp_path, v8, {"format": "yolov5"})
    assert "expects [N, K, 5 + C]" in msg and "out: float32 [batch, 6, 84]" in msg
    assert "looks like the yolov8 layout" in msg and "Set output.detections.format" in msg
    msg = config_error(tmp_path, two, {"format": "boxes", "output": "xyxy"})
    assert "names 1 output(s) ['xyxy']; format boxes reads two outputs: boxes [N, K, 4]" in msg
    msg = config_error(tmp_path, two, {"format": "xyxy"})
    assert "is not set and the model has 2 outputs" in msg and "set output.detections.output" in msg
    msg = config_error(tmp_path, two, {"format": "yolov8", "output": "xyxy"})
    assert "expects [N, 4 + C, K]" in msg and "xyxy: float32 [batch, 84, 4]" in msg
    yolox = detector(tmp_path / "x.onnx", "yolox", size=(64, 64))
    msg = config_error(tmp_path, yolox, {"format": "yolox", "strides": [8, 16]}, {"size": [64, 64]})
    assert "a 64x64 input makes 80 grid cells" in msg and "set strides to the model's" in msg
    msg = config_error(tmp_path, v8, {"format": "yolov8", "labels": ["a", "b", "c"]})
    assert "3 labels for model output out: float32 [batch, 6, 84] of 2 classes" in msg


def test_outputs_that_do_not_fit_the_layout_stop_the_job_saying_why(
    run_job, tmp_path: Path, photos: Path
) -> None:
    """A model that declares no sizes is checked on its first outputs: a wrong stride list is a
    model problem, not every row's."""
    model = detector(tmp_path / "dyn.onnx", "yolox", size=("h", "w"))
    dets = {"format": "yolox", "strides": [8, 16]}
    result = run_job(job(model, photos, {"size": [64, 64], "resize": "letterbox"}, dets))
    assert not result.ok
    message = result.job["error"]
    assert "has 84 candidates, but a 64x64 input with strides [8, 16] makes 80 grid cells" in message
    assert "set output.detections.strides" in result.job["error"]
