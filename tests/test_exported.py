"""Models as exported: dims declared too strictly (CenterFace), custom operators (in-graph image
decoding), external data on disk and in S3, fp16, and validate's hint for huge raw outputs."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pyarrow as pa
import pytest
import wild
from onnx import TensorProto, helper, numpy_helper
from PIL import Image
from support import fixed_list, options, read_errors, read_predictions, upload, write_parquet

from scoring.config_file import load_config
from scoring.errors import ConfigError, ModelError
from scoring.exported import read_model
from scoring.validate import format_preview, validate

DATA = Path(__file__).parent / "data"
FACES = '''
import numpy as np

def faces(outputs, context):
    """CenterFace's maps -> each row's faces [x1, y1, x2, y2, score], best first."""
    heat, scale, offset = outputs["537"][:, 0], outputs["538"], outputs["539"]
    found = []
    for i in range(len(heat)):
        ys, xs = np.nonzero(heat[i] > 0.5)
        h, w = np.exp(scale[i, 0, ys, xs]) * 4, np.exp(scale[i, 1, ys, xs]) * 4
        cy, cx = (ys + offset[i, 0, ys, xs] + 0.5) * 4, (xs + offset[i, 1, ys, xs] + 0.5) * 4
        boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2, heat[i, ys, xs]], axis=1)
        found.append(boxes[np.argsort(-boxes[:, 4])].tolist())
    return {"faces": found}
'''


def save(model: onnx.ModelProto, path: Path) -> str:
    model.ir_version = 8
    onnx.save(model, str(path))
    return str(path)


def decode_image(path: Path, domain: str = "com.microsoft.extensions") -> str:
    """image_bytes uint8 [num_bytes] -> DecodeImage (onnxruntime-extensions) -> bgr [H, W, 3],
    its shape [3] and its mean per channel [3]: no batch dim (/work/wild/build_decode_model.py)."""
    nodes = [
        helper.make_node("DecodeImage", ["image_bytes"], ["bgr"], domain=domain),
        helper.make_node("Shape", ["bgr"], ["shape"]),
        helper.make_node("Cast", ["bgr"], ["bgr_f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["bgr_f", "axes"], ["mean_bgr"], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "decode",
        [helper.make_tensor_value_info("image_bytes", TensorProto.UINT8, ["num_bytes"])],
        [
            helper.make_tensor_value_info("shape", TensorProto.INT64, [3]),
            helper.make_tensor_value_info("mean_bgr", TensorProto.FLOAT, [3]),
        ],
        [numpy_helper.from_array(np.array([0, 1], np.int64), "axes")],
    )
    opsets = [helper.make_opsetid("", 18), helper.make_opsetid(domain, 1)]
    return save(helper.make_model(graph, opset_imports=opsets), path)


def matmul(
    path: Path, k: int, out: int, dtype: int = TensorProto.FLOAT, domains: tuple[str, ...] = ()
) -> str:
    """x [batch, k] -> y [batch, out] = x @ W, in ``dtype``; ``domains`` listed in opset_import
    and used by no node (as paddle2onnx lists Paddle)."""
    np_type = helper.tensor_dtype_to_np_dtype(dtype)
    w = np.random.default_rng(k).standard_normal((k, out)).astype(np_type)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "matmul",
        [helper.make_tensor_value_info("x", dtype, ["batch", k])],
        [helper.make_tensor_value_info("y", dtype, ["batch", out])],
        [numpy_helper.from_array(w, "w")],
    )
    opsets = [helper.make_opsetid("", 17), *(helper.make_opsetid(d, 1) for d in domains)]
    return save(helper.make_model(graph, opset_imports=opsets), path)


def png(size: tuple[int, int], colour: tuple[int, int, int], fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format=fmt)
    return buf.getvalue()


def job(model: str, data: str, out: Path, fmt: str = "parquet", **model_keys: Any) -> dict[str, Any]:
    return {
        "model": {"uri": model, **model_keys},
        "input": {"uri": data, "format": fmt},
        "output": {"uri": str(out), "mode": "overwrite"},
    }


# -- model.dims ------------------------------------------------------------------------------


def centerface_reference(model: Path, image: np.ndarray) -> list[float]:
    """The best face, from ONNX Runtime alone on a copy with free dims, decoded here again."""
    proto = onnx.load(str(model))
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    for d, v in zip(dims, ["n", 3, "h", "w"]):
        d.Clear()
        if isinstance(v, int):
            d.dim_value = v
        else:
            d.dim_param = v
    sess = ort.InferenceSession(proto.SerializeToString())
    x = image.astype(np.float32).transpose(2, 0, 1)[None]
    heat, scale, offset, _ = sess.run(None, {"input.1": x})
    y, x_ = np.unravel_index(heat[0, 0].argmax(), heat[0, 0].shape)
    h, w = np.exp(scale[0, 0, y, x_]) * 4, np.exp(scale[0, 1, y, x_]) * 4
    cy, cx = (y + offset[0, 0, y, x_] + 0.5) * 4, (x_ + offset[0, 1, y, x_] + 0.5) * 4
    return [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2, heat[0, 0, y, x_]]


def test_centerface_declares_fixed_dims_and_runs_with_model_dims(run_job: Any, tmp_path: Path) -> None:
    model = wild.centerface()
    images = tmp_path / "images"
    images.mkdir()
    (images / "astronaut.jpg").write_bytes((DATA / "astronaut.jpg").read_bytes())
    (tmp_path / "faces.py").write_text(FACES)
    cfg = job(str(model), str(images), tmp_path / "out", "images")
    cfg["input"]["image"] = {"size": [256, 256], "scale": 1.0}  # RGB 0-255, no mean or std
    cfg["output"]["function"] = f"{tmp_path}/faces.py:faces"
    refused = run_job(cfg)
    assert not refused.ok
    assert "Expected: 32" in refused.job["error"]
    assert "model.dims: {input.1: [batch, 3, d2, d3]}" in refused.job["error"]

    cfg["model"]["dims"] = {"input.1": ["batch", 3, "height", "width"]}
    assert run_job(cfg).ok
    faces = read_predictions(tmp_path / "out").column("faces").to_pylist()[0]
    image = np.asarray(Image.open(images / "astronaut.jpg").convert("RGB"))
    np.testing.assert_allclose(faces[0], centerface_reference(model, image), rtol=1e-4)
    x1, y1, x2, y2, score = faces[0]
    assert score > 0.8 and 80 < x1 < x2 < 145 and 10 < y1 < y2 < 95  # her face, at 256x256
    assert read_model(load_config(data=cfg, environ={}).model, {}).inputs[0].shape == (
        "batch",
        3,
        "height",
        "width",
    )
    with pytest.raises(
        ConfigError, match=r"model.dims' names 'input', which is no tensor input.*\['input.1'\]"
    ):
        run_job({**cfg, "model": {"uri": str(model), "dims": {"input": [1]}}})


# -- custom operators, one row per call ------------------------------------------------------


def test_a_model_that_decodes_images_in_graph_needs_custom_ops_and_gets_one_row_per_call(
    run_job: Any, tmp_path: Path
) -> None:
    model = decode_image(tmp_path / "decode.onnx")
    images = tmp_path / "images"
    images.mkdir()
    blobs = {"a.png": png((40, 30), (200, 20, 40)), "b.jpg": png((64, 48), (10, 120, 230), "JPEG")}
    blobs["c.png"] = png((17, 5), (1, 2, 3))
    for name, blob in {**blobs, "not-an-image.png": b"not an image at all"}.items():
        (images / name).write_bytes(blob)
    cfg = job(model, str(images), tmp_path / "out", "images")
    with pytest.raises(ModelError) as err:
        run_job(cfg)
    assert "uses operators of domain 'com.microsoft.extensions' (DecodeImage)" in str(err.value)
    assert "model.custom_ops: [onnxruntime_extensions]" in str(err.value)

    cfg["model"]["custom_ops"] = ["onnxruntime_extensions"]
    assert run_job(cfg).ok
    table = read_predictions(tmp_path / "out")
    assert table.schema.field("shape").type == pa.list_(pa.int64(), 3)
    for row in table.to_pylist():
        bgr = np.asarray(Image.open(io.BytesIO(blobs[Path(row["path"]).name])).convert("RGB"))[..., ::-1]
        assert row["shape"] == list(bgr.shape)
        np.testing.assert_allclose(row["mean_bgr"], bgr.reshape(-1, 3).mean(0), atol=2.0)  # libjpeg vs PIL
    (bad,) = read_errors(tmp_path / "out").to_pylist()
    assert bad["file"].endswith("not-an-image.png") and bad["stage"] == "decode"
    assert "no image file Pillow knows (they start b'not an i')" in bad["message"]

    # From a binary column, to an output function that gets each row's outputs as ORT returns them.
    data = write_parquet(tmp_path / "d" / "a.parquet", {"image_bytes": pa.array(list(blobs.values()))})
    (tmp_path / "sizes.py").write_text(
        "def sizes(outputs, context):\n"
        "    assert outputs['shape'].shape == (3,), outputs['shape'].shape  # no batch axis\n"
        "    return {'pixels': [int(outputs['shape'][0] * outputs['shape'][1])]}\n"
    )
    cfg = job(model, data, tmp_path / "out2", custom_ops=["onnxruntime_extensions"])
    cfg["output"]["function"] = f"{tmp_path}/sizes.py:sizes"
    assert run_job(cfg).ok
    assert read_predictions(tmp_path / "out2").column("pixels").to_pylist() == [1200, 3072, 85]


def test_custom_ops_come_from_local_files_and_only_used_domains_count(run_job: Any, tmp_path: Path) -> None:
    x = np.random.default_rng(0).standard_normal((10, 4)).astype(np.float32)
    data = write_parquet(tmp_path / "d" / "a.parquet", {"x": fixed_list(x)})
    listed = matmul(tmp_path / "paddle.onnx", 4, 2, domains=("Paddle",))  # listed, used by no node
    assert run_job(job(listed, data, tmp_path / "out")).ok
    for entry, message in [
        ("s3://ops/libops.so", "never one fetched from a URI"),
        (str(tmp_path / "missing.so"), "no file"),
    ]:
        with pytest.raises(ConfigError, match="model.custom_ops") as err:
            run_job(job(listed, data, tmp_path / "out", custom_ops=[entry]))
        assert message in str(err.value)
    own = decode_image(tmp_path / "own.onnx", domain="my.company.ops")
    with pytest.raises(ModelError, match="domain 'my.company.ops' .*local path of the shared library"):
        run_job(job(own, data, tmp_path / "out", custom_ops=["onnxruntime_extensions"]))


# -- external data ---------------------------------------------------------------------------


def with_external_data(model: str, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    onnx.save(
        onnx.load(model), str(path), save_as_external_data=True, location="model.onnx.data", size_threshold=0
    )
    return path


def test_external_data_is_read_beside_the_model_on_disk_and_in_s3(
    run_job: Any, tmp_path: Path, s3: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SCORING_CACHE_DIR", str(tmp_path / "cache"))
    single = matmul(tmp_path / "single.onnx", 64, 300)
    x = np.random.default_rng(1).standard_normal((50, 64)).astype(np.float32)
    data = write_parquet(tmp_path / "d" / "a.parquet", {"x": fixed_list(x)})
    split = with_external_data(single, tmp_path / "split")
    assert (split.parent / "model.onnx.data").stat().st_size > split.stat().st_size
    (want,) = ort.InferenceSession(single).run(None, {"x": x})

    assert run_job(job(str(split), data, tmp_path / "out")).ok
    got = np.stack(read_predictions(tmp_path / "out").column("y").to_numpy(zero_copy_only=False))
    np.testing.assert_array_equal(got, want)

    endpoint, fs = s3
    upload(fs, split.parent, "models/split")
    remote = {
        **job("s3://models/split/model.onnx", data, tmp_path / "out-s3"),
        "storage_options": options(endpoint),
    }
    assert run_job(remote).ok
    got = np.stack(read_predictions(tmp_path / "out-s3").column("y").to_numpy(zero_copy_only=False))
    np.testing.assert_array_equal(got, want)
    cached = list((tmp_path / "cache" / "models").glob("*/model.onnx*"))
    assert sorted(p.name for p in cached) == ["model.onnx", "model.onnx.data"]

    info = read_model(load_config(data=remote, environ={}).model, options(endpoint))
    assert info.external == ("model.onnx.data",) and info.size == sum(p.stat().st_size for p in cached)
    fs.pipe("models/split/model.onnx.data", b"\0" * 16 + fs.cat("models/split/model.onnx.data")[16:])
    assert read_model(load_config(data=remote, environ={}).model, options(endpoint)).sha256 != info.sha256
    fs.rm("models/split/model.onnx.data")
    with pytest.raises(
        ModelError, match="keeps weights in 'model.onnx.data', which cannot be read beside it"
    ):
        run_job(remote)


# -- fp16, huge raw outputs ------------------------------------------------------------------


def test_fp16_models_take_float32_columns_and_images_and_write_float16(run_job: Any, tmp_path: Path) -> None:
    model = matmul(tmp_path / "half.onnx", 4, 3, TensorProto.FLOAT16)
    x = np.random.default_rng(2).standard_normal((20, 4)).astype(np.float32)
    data = write_parquet(tmp_path / "d" / "a.parquet", {"x": fixed_list(x)})
    assert run_job(job(model, data, tmp_path / "out")).ok
    y = read_predictions(tmp_path / "out").column("y")
    assert y.type == pa.list_(pa.float16(), 3)
    (want,) = ort.InferenceSession(model).run(None, {"x": x.astype(np.float16)})
    np.testing.assert_array_equal(np.stack(y.to_numpy(zero_copy_only=False)), want)

    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["x", "axes"], ["mean"], keepdims=0)],
        "half_image",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("mean", TensorProto.FLOAT16, ["batch", 3])],
        [numpy_helper.from_array(np.array([2, 3], np.int64), "axes")],
    )
    image_model = save(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), tmp_path / "hi.onnx"
    )
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.png").write_bytes(png((8, 8), (255, 0, 51)))
    assert run_job(job(image_model, str(tmp_path / "img"), tmp_path / "out-img", "images")).ok
    mean = read_predictions(tmp_path / "out-img").column("mean").to_pylist()[0]
    np.testing.assert_allclose(mean, [1.0, 0.0, 0.2], atol=1e-3)


def test_validate_says_how_big_raw_outputs_are_and_past_64_kb_what_to_do(tmp_path: Path) -> None:
    x = np.random.default_rng(3).standard_normal((8, 4)).astype(np.float32)
    data = write_parquet(tmp_path / "d" / "a.parquet", {"x": fixed_list(x)})
    small = validate(
        load_config(data=job(matmul(tmp_path / "s.onnx", 4, 3), data, tmp_path / "o"), environ={})
    )
    assert "raw outputs: 12 bytes a row (y)" in format_preview(small)
    big = validate(
        load_config(data=job(matmul(tmp_path / "b.onnx", 4, 20000), data, tmp_path / "o"), environ={})
    )
    text = format_preview(big)
    assert "raw outputs: 80,000 bytes a row (y): 74.5 GiB a million rows" in text
    assert "output.detections, output.mask or output.function, or keep fewer with output.outputs" in text
