"""Image preprocessing against an independent PIL + numpy reference, and image jobs end to end."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageOps
from support import RUNNERS, read_errors, read_predictions, write_parquet

from scoring.config import ImageConfig
from scoring.demo import make_cnn
from scoring.preprocess import images

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def reference(
    data: bytes, size: tuple[int, int], resize: str, mode: str, layout: str, short: int | None = None
) -> np.ndarray:
    """Written from the README's steps, without scoring's code."""
    img = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    if img.mode.startswith("I;16"):  # 16-bit greyscale: keep the high byte
        img = Image.fromarray((np.asarray(img) // 256).astype(np.uint8))
    img = (
        img.convert("RGBA").convert("L" if mode == "L" else "RGB")
        if img.mode in ("P", "RGBA", "LA")
        else img.convert("L" if mode == "L" else "RGB")
    )
    h, w = size
    if resize == "stretch":
        img = img.resize((w, h), Image.Resampling.BILINEAR)
    elif resize == "center_crop":
        s = (short or min(h, w)) / min(img.size)
        nw, nh = max(w, round(img.width * s)), max(h, round(img.height * s))
        img = img.resize((nw, nh), Image.Resampling.BILINEAR)
        img = img.crop(((nw - w) // 2, (nh - h) // 2, (nw - w) // 2 + w, (nh - h) // 2 + h))
    else:
        s = min(w / img.width, h / img.height)
        nw, nh = round(img.width * s), round(img.height * s)
        canvas = Image.new(img.mode, (w, h), 114 if img.mode == "L" else (114, 114, 114))
        canvas.paste(img.resize((nw, nh), Image.Resampling.BILINEAR), ((w - nw) // 2, (h - nh) // 2))
        img = canvas
    x = np.asarray(img, dtype=np.float64) / 255.0
    if mode == "L":
        x = (x[..., None] - 0.5) / 0.25
    else:
        if mode == "BGR":
            x = x[..., ::-1]
        x = (x - np.array(MEAN)) / np.array(STD)
    return (x.transpose(2, 0, 1) if layout == "NCHW" else x).astype(np.float32)


def encode(arr: np.ndarray, fmt: str = "PNG", mode: str | None = None, exif_rotate: bool = False) -> bytes:
    img = Image.fromarray(arr, mode) if mode else Image.fromarray(arr)
    buf = io.BytesIO()
    if exif_rotate:
        exif = Image.Exif()
        exif[0x0112] = 6  # orientation: rotate 90 CW to display
        img.save(buf, fmt, exif=exif)
    else:
        img.save(buf, fmt)
    return buf.getvalue()


def samples() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (37, 53, 3), dtype=np.uint8)
    return {
        "rgb.png": encode(rgb),
        "photo.jpg": encode(rgb, "JPEG"),
        "grey.png": encode(rgb[..., 0]),
        "rgba.png": encode(rng.integers(0, 255, (30, 20, 4), dtype=np.uint8)),
        "rotated.jpg": encode(rgb, "JPEG", exif_rotate=True),
        "palette.png": encode(np.asarray(Image.fromarray(rgb).convert("P"))[..., None].squeeze(), mode="P"),
        "deep.png": encode(rng.integers(0, 65535, (25, 25), dtype=np.uint16)),
    }


@pytest.mark.parametrize("resize", ["stretch", "center_crop", "letterbox"])
@pytest.mark.parametrize("mode,layout", [("RGB", "NCHW"), ("BGR", "NHWC"), ("L", "NCHW")])
def test_preprocessing_matches_an_independent_reference(resize: str, mode: str, layout: str) -> None:
    mean, std = ([0.5], [0.25]) if mode == "L" else (MEAN, STD)
    cfg = ImageConfig(resize=resize, mode=mode, layout=layout, mean=mean, std=std)
    for name, data in samples().items():
        if name == "deep.png":
            continue  # 16-bit: checked on its own below
        got = images.normalise(images.decode(data, cfg, (24, 32))[None], cfg, layout, "float32")[0]
        np.testing.assert_allclose(
            got, reference(data, (24, 32), resize, mode, layout), atol=1e-6, err_msg=name
        )


def test_exif_orientation_16_bit_and_center_crop_short_side() -> None:
    data = samples()["rotated.jpg"]
    assert images.decode(data, ImageConfig(), (53, 37)).shape == (53, 37, 3)  # 37x53 stored, shown rotated
    deep = images.decode(samples()["deep.png"], ImageConfig(mode="L"), (25, 25))[..., 0]
    raw = np.asarray(Image.open(io.BytesIO(samples()["deep.png"])))
    np.testing.assert_array_equal(deep, (raw.astype(np.uint32) >> 8).astype(np.uint8))
    cfg = ImageConfig(resize="center_crop", resize_short_side=40, mean=MEAN, std=STD)
    got = images.normalise(images.decode(samples()["rgb.png"], cfg, (24, 24))[None], cfg, "NCHW", "float32")[
        0
    ]
    expected = reference(samples()["rgb.png"], (24, 24), "center_crop", "RGB", "NCHW", short=40)
    np.testing.assert_allclose(got, expected, atol=1e-6)


def broken_files() -> dict[str, bytes]:
    jpeg = samples()["photo.jpg"]
    return {"truncated.jpg": jpeg[: len(jpeg) // 3], "empty.png": b"", "notes.jpg": b"just some text"}


@RUNNERS
def test_image_folder_job_scores_every_file_once_and_rejects_broken_ones(
    run_job, tmp_path: Path, runner: str
) -> None:
    folder = tmp_path / "imgs"
    good = samples()
    for i, (name, data) in enumerate({**good, **broken_files()}.items()):
        sub = folder / f"d{i % 2}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / name.upper() if name == "photo.jpg" else sub / name).write_bytes(data)
    (folder / "d0" / "readme.txt").write_text("not listed")
    model = make_cnn(tmp_path / "cnn.onnx", size=32, classes=4)
    result = run_job(
        {
            "model": {"uri": model},
            "input": {
                "uri": str(folder),
                "format": "images",
                "files_per_shard": 4,
                "image": {"mean": MEAN, "std": STD},
            },
            "compute": {"batch_size": 3, "runner": runner},
        }
    )
    assert result.ok, result.job["error"]
    preds = read_predictions(result.out)
    errors = read_errors(result.out)
    paths = sorted(str(p) for p in folder.rglob("*") if p.suffix.lower() in (".png", ".jpg"))
    assert len(paths) == 10
    assert sorted(preds.column("path").to_pylist()) == sorted(
        p for p in paths if Path(p).name not in broken_files()
    )
    assert preds.num_rows + errors.num_rows == 10  # every file exactly once
    assert sorted(e["stage"] for e in errors.to_pylist()) == ["decode"] * 3
    assert all("cannot decode image" in e["message"] for e in errors.to_pylist())
    shards = pq.read_table(Path(result.out) / "_shards.parquet").to_pylist()
    assert [s["rows"] for s in shards] == [4, 4, 2]
    assert shards[0]["shard"] == f"{folder}[0:4]"
    assert all(s["preprocess_s"] > 0 for s in shards)
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    for row in preds.to_pylist():
        x = reference(Path(row["path"]).read_bytes(), (32, 32), "stretch", "RGB", "NCHW")
        np.testing.assert_allclose(row["probs"], session.run(None, {"image": x[None]})[0][0], atol=1e-5)


def test_parquet_image_shards_keep_columns(run_job, tmp_path: Path) -> None:
    good = list(samples().values())[:4] + [broken_files()["truncated.jpg"]]
    write_parquet(
        tmp_path / "shards" / "a.parquet",
        {"img": pa.array(good, pa.binary()), "key": pa.array(list("abcde"))},
    )
    model = make_cnn(tmp_path / "cnn.onnx", size=16, classes=2)
    result = run_job(
        {
            "model": {"uri": model},
            "input": {
                "uri": str(tmp_path / "shards"),
                "format": "images",
                "image_column": "img",
                "keep": ["key"],
                "image": {"resize": "letterbox"},
            },
        }
    )
    assert result.ok, result.job["error"]
    preds = read_predictions(result.out)
    assert preds.column_names == ["shard", "file", "row", "key", "probs"]
    assert preds.column("key").to_pylist() == list("abcd")
    assert read_errors(result.out).column("row").to_pylist() == [4]


def test_an_unreadable_parquet_image_shard_is_a_failed_shard_not_a_crash(run_job, tmp_path: Path) -> None:
    write_parquet(
        tmp_path / "shards" / "a.parquet", {"img": pa.array(list(samples().values())[:2], pa.binary())}
    )
    (tmp_path / "shards" / "b.parquet").write_bytes(b"PAR1 this is not parquet PAR1")
    result = run_job(
        {
            "model": {"uri": make_cnn(tmp_path / "cnn.onnx", size=16, classes=2)},
            "input": {"uri": str(tmp_path / "shards"), "format": "images", "image_column": "img"},
        }
    )
    assert result.ok, result.job["error"]  # one unreadable file: within max_rejected_rows
    (shard,) = pq.read_table(Path(result.out) / "_shards.parquet").to_pylist()
    assert Path(shard["shard"]).name == "a.parquet+1" and shard["status"] == "partial"
    (error,) = read_errors(result.out).to_pylist()
    assert error["stage"] == "read" and error["file"].endswith("b.parquet") and error["row"] is None
    assert "b.parquet: cannot read Parquet file" in error["message"]
    assert read_predictions(result.out).num_rows == 2


def photo(width: int, height: int, exif_rotate: bool = False) -> bytes:
    """A camera-like JPEG: smooth content plus sensor noise, quality 90."""
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.stack(
        [127 + 90 * np.sin(xx / 97), 127 + 90 * np.cos(yy / 83), 127 + 90 * np.sin((xx + yy) / 131)], -1
    )
    return encode(
        np.clip(img + rng.normal(0, 10, img.shape), 0, 255).astype(np.uint8), "JPEG", exif_rotate=exif_rotate
    )


@pytest.mark.parametrize("resize", ["stretch", "center_crop", "letterbox"])
@pytest.mark.parametrize("rotated", [False, True])
def test_photos_are_decoded_small_and_match_a_full_decode(resize: str, rotated: bool) -> None:
    """JPEGs larger than needed are decoded at 1/2-1/8 scale (draft mode): within what resizing
    already changes of a full decode (a couple of levels of 255 at most)."""
    data = photo(1600, 1200, exif_rotate=rotated)
    cfg = ImageConfig(resize=resize, mean=MEAN, std=STD)
    got = images.normalise(images.decode(data, cfg, (96, 128))[None], cfg, "NCHW", "float32")[0]
    expected = reference(data, (96, 128), resize, "RGB", "NCHW")
    assert got.shape == expected.shape == (3, 96, 128)
    levels = np.abs(got - expected) * np.array(STD, np.float32)[:, None, None] * 255
    assert levels.max() <= 4 and levels.mean() < 1, (levels.max(), levels.mean())


@pytest.mark.parametrize(
    "resize,anchor,size",
    [
        ("stretch", "center", (48, 40)),
        ("center_crop", "center", (40, 40)),
        ("letterbox", "center", (48, 48)),
        ("letterbox", "top_left", (48, 48)),
        ("stretch", "center", (None, 48)),
        ("letterbox", "center", (None, None)),
    ],
)
def test_each_row_keeps_where_its_source_landed(resize: str, anchor: str, size: tuple) -> None:
    """A white rectangle drawn at known source pixels is found in the model input where
    x * scale + pad says, for every resize; the context holds the source's size after EXIF."""
    h, w, (x1, y1, x2, y2) = 60, 90, (30, 12, 60, 42)
    src = np.zeros((h, w, 3), np.uint8)
    src[y1:y2, x1:x2] = 255
    data = encode(src)
    prep = images.Images(
        "img",
        False,
        ImageConfig(resize=resize, anchor=anchor, pad_value=7, scale=1.0),
        size,
        "NHWC",
        images.TensorSpec("x", "uint8", (None, None, None, 3)),
    )
    (group,) = prep.prepare(pa.table({"img": pa.array([data], pa.binary())}), None, None).groups
    x = group.feed["x"][0, ..., 0]
    ctx = {k: float(v[0]) for k, v in group.context.items()}
    assert (ctx["image_width"], ctx["image_height"]) == (w, h)
    assert {k: v.dtype for k, v in group.context.items()} == {
        "image_width": np.int32,
        "image_height": np.int32,
        "scale_x": np.float32,
        "scale_y": np.float32,
        "pad_x": np.float32,
        "pad_y": np.float32,
    }
    ys, xs = np.nonzero(x > 128)
    found = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
    expected = (
        x1 * ctx["scale_x"] + ctx["pad_x"],
        y1 * ctx["scale_y"] + ctx["pad_y"],
        x2 * ctx["scale_x"] + ctx["pad_x"],
        y2 * ctx["scale_y"] + ctx["pad_y"],
    )
    np.testing.assert_allclose(found, expected, atol=1.01)
    if size == (None, 48):
        assert x.shape == (32, 48)  # 48 * 60/90 = 32, a multiple of 32
    if size == (None, None):
        assert x.shape == (64, 96)  # 60x90 rounded up to multiples of 32
    if resize == "letterbox" and size == (48, 48):
        edge = x[-1, -1] if anchor == "top_left" else x[0, 0]
        assert edge == 7  # pad_value


def test_dynamic_sizes_batch_rows_of_equal_shape_together() -> None:
    wide, tall = encode(np.zeros((40, 100, 3), np.uint8)), encode(np.zeros((100, 40, 3), np.uint8))
    prep = images.Images(
        "img",
        False,
        ImageConfig(),
        (64, None),
        "NCHW",
        images.TensorSpec("x", "float32", (None, 3, None, None)),
    )
    table = pa.table({"img": pa.array([wide, tall, wide, None, tall], pa.binary())})
    prepared = prep.prepare(table, None, None)
    shapes = {tuple(g.rows): g.feed["x"].shape for g in prepared.groups}
    assert shapes == {(0, 2): (2, 3, 64, 160), (1, 4): (2, 3, 64, 32)}
    assert [g.context["image_width"].tolist() for g in prepared.groups] == [[100, 100], [40, 40]]


def test_a_null_dim_the_model_fixes_is_refused() -> None:
    spec = images.TensorSpec("images", "float32", (1, 3, 416, 416))
    with pytest.raises(images.InputError, match=r"fixed height of 416; give 416"):
        images.input_shape(ImageConfig(size=(None, 416)), spec)
    dynamic = images.TensorSpec("x", "float32", (1, 3, "h", "w"))
    with pytest.raises(images.InputError, match=r"\[null, null\]"):
        images.input_shape(ImageConfig(), dynamic)
