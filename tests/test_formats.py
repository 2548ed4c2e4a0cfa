"""Inputs as real pipelines leave them, on real files made here: a Spark output folder, Hive
partitions, a Hugging Face image Parquet, WebDataset tars, thousands of small files, files that
disagree on a column's type. After each: every row exactly once (predictions or errors), and
``predictions/`` readable as one dataset by pyarrow (and Ray Data where Ray ran).
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
from support import RUNNERS, features_job, fixed_list, read_errors, read_predictions, write_parquet
from test_images import MEAN, STD, broken_files, samples

from scoring.demo import make_cnn, make_mlp, write_tables
from scoring.errors import InputError, ModelError


def readable(out: str | Path, runner: str = "local") -> pa.Table:
    """``predictions/`` as one dataset: pyarrow always, Ray Data too where the job ran on Ray."""
    table = pads.dataset(Path(out) / "predictions", format="parquet").to_table()
    if runner == "ray":
        import ray

        assert ray.data.read_parquet(str(Path(out) / "predictions")).count() == table.num_rows
    return table


def image_reference(data: bytes, size: int) -> np.ndarray:
    """What the CNN is fed for one image, without scoring's code: stretch, ImageNet normalisation."""
    from PIL import Image

    img = Image.open(io.BytesIO(data)).convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
    x = (np.asarray(img, np.float64) / 255.0 - MEAN) / STD
    return x.transpose(2, 0, 1).astype(np.float32)


def cnn_probs(model: str, images: list[bytes], size: int) -> np.ndarray:
    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    return sess.run(None, {"image": np.stack([image_reference(b, size) for b in images])})[0]


def image_job(uri: Path, model: str, fmt: str, **inp: Any) -> dict[str, Any]:
    return {
        "model": {"uri": model},
        "input": {"uri": str(uri), "format": fmt, "image": {"mean": MEAN, "std": STD}, **inp},
    }


# -- Spark and Hive folders ---------------------------------------------------------------------


@RUNNERS
def test_a_spark_folder_is_scored_without_its_hidden_files_and_failed_attempts(
    run_job, tmp_path: Path, runner: str
) -> None:
    model = make_mlp(tmp_path / "m.onnx", (8, 4))
    out = tmp_path / "spark"
    write_tables(out, files=3, rows=100, features=8)
    (out / "_SUCCESS").write_bytes(b"")
    for part in out.glob("part-*.parquet"):
        (out / f".{part.name}.crc").write_bytes(b"crc")
    # A failed task attempt left a complete file, and a truncated one, under _temporary/.
    attempt = out / "_temporary" / "0" / "_temporary" / "attempt_202401010000_0001_m_000001_1"
    write_tables(attempt, files=1, rows=100, features=8, seed=9)
    (attempt / "part-001.parquet").write_bytes((out / "part-001.parquet").read_bytes()[:300])
    (out / ".staging").mkdir()
    (out / ".staging" / "part-009.parquet").write_bytes((out / "part-000.parquet").read_bytes())
    result = run_job(features_job(out, model, keep=["id"], runner=runner, actors=1))
    assert result.ok, result.job["error"]
    preds = readable(result.out, runner)
    assert sorted(preds.column("id").to_pylist()) == list(range(300))  # each part file once, no attempt
    assert {Path(f).name for f in preds.column("file").to_pylist()} == {
        f"part-00{i}.parquet" for i in range(3)
    }
    assert not (Path(result.out) / "_errors").exists()
    planned = pq.read_table(Path(result.out) / "_plan.parquet").column("files").to_pylist()
    assert all("_temporary" not in f and "/." not in f for files in planned for f in files)


def test_hive_partitions_become_string_columns_to_keep(run_job, tmp_path: Path) -> None:
    model = make_mlp(tmp_path / "m.onnx", (8, 4))
    root = tmp_path / "events"
    for i, (date, region) in enumerate(
        [
            ("2024-01-01", "eu%2Fwest"),
            ("2024-01-02", "us%20east"),
            ("2024-01-02", "__HIVE_DEFAULT_PARTITION__"),
        ]
    ):
        write_tables(root / f"date={date}" / f"region={region}", files=1, rows=10, features=8, seed=i)
    cfg = features_job(root, model, keep=["id", "date", "region"])
    result = run_job(cfg)
    assert result.ok, result.job["error"]
    preds = readable(result.out)
    assert preds.schema.field("date").type == pa.string() and preds.schema.field("region").type == pa.string()
    got = {
        (r["file"].split("/events/")[1].split("/part")[0], r["date"], r["region"]) for r in preds.to_pylist()
    }
    assert got == {
        ("date=2024-01-01/region=eu%2Fwest", "2024-01-01", "eu/west"),
        ("date=2024-01-02/region=us%20east", "2024-01-02", "us east"),
        ("date=2024-01-02/region=__HIVE_DEFAULT_PARTITION__", "2024-01-02", None),
    }
    with pytest.raises(InputError, match=r"no column \['month'\] listed in input.keep"):
        run_job({**cfg, "input": {**cfg["input"], "keep": ["month"]}, "output": {"mode": "overwrite"}})


# -- image Parquet as Hugging Face datasets writes it -------------------------------------------


def test_a_hugging_face_image_parquet_is_read_as_images(run_job, tmp_path: Path) -> None:
    good = [samples()[k] for k in ("photo.jpg", "rgb.png", "grey.png")]
    images = [good[0], None, good[1], broken_files()["notes.jpg"], good[2]]
    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    column = pa.array(
        [{"bytes": b, "path": f"img{i}.jpg"} for i, b in enumerate(images)], struct
    )  # what datasets.Image() stores; a null "bytes" is an image that was never embedded
    table = pa.table({"image": column, "label": pa.array([3, 1, 4, 1, 5], pa.int64())})
    features = {"image": {"_type": "Image"}, "label": {"dtype": "int64", "_type": "Value"}}
    table = table.replace_schema_metadata({"huggingface": json.dumps({"info": {"features": features}})})
    (tmp_path / "hf" / "data").mkdir(parents=True)
    pq.write_table(table, tmp_path / "hf" / "data" / "train-00000-of-00001.parquet")
    model = make_cnn(tmp_path / "cnn.onnx", size=24, classes=3)
    result = run_job(image_job(tmp_path / "hf", model, "images", keep=["label"]))
    assert result.ok, result.job["error"]
    preds = readable(result.out)
    assert preds.column_names == ["shard", "file", "row", "label", "probs"]
    assert preds.column("row").to_pylist() == [0, 2, 4] and preds.column("label").to_pylist() == [3, 4, 5]
    np.testing.assert_allclose(
        np.stack(preds.column("probs").to_numpy(zero_copy_only=False)),
        cnn_probs(model, good, 24),
        atol=2e-3,  # resizing differs from the reference in the last bit of some pixels
    )
    errors = {e["row"]: e for e in read_errors(result.out).to_pylist()}
    assert sorted(errors) == [1, 3]
    assert (errors[1]["stage"], errors[1]["error"]) == ("decode", "NullValue")
    assert errors[3]["stage"] == "decode" and "cannot decode image" in errors[3]["message"]


# -- WebDataset --------------------------------------------------------------------------------


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return str(path)


def webdataset(folder: Path) -> tuple[list[str], list[bytes]]:
    """Two tars as webdataset's writers make them: jpg + cls + json per sample, a broken image,
    a sample without one; the images that should score, in order."""
    pics = [samples()[k] for k in ("photo.jpg", "rgb.png", "grey.png", "rgba.png")]
    first = [
        ("train/s000.jpg", pics[0]),
        ("train/s000.cls", b"3"),
        ("train/s000.json", b'{"w": 53}'),
        ("train/s001.png", pics[1]),
        ("train/s001.cls", b"1"),
        ("train/s002.jpg", broken_files()["truncated.jpg"]),
        ("train/s002.cls", b"4"),
        ("train/s003.cls", b"1"),  # no image
        ("train/s003.json", b"{}"),
    ]
    second = [("s100.jpeg", pics[2]), ("s100.cls", b"5"), ("s101.png", pics[3]), ("s101.cls", b"9")]
    tars = [write_tar(folder / "shard-000000.tar", first), write_tar(folder / "shard-000001.tar", second)]
    return tars, [pics[0], pics[1], pics[2], pics[3]]


@RUNNERS
def test_webdataset_tars_score_a_row_per_sample(run_job, tmp_path: Path, runner: str) -> None:
    tars, good = webdataset(tmp_path / "wds")
    model = make_cnn(tmp_path / "cnn.onnx", size=24, classes=3)
    cfg = image_job(tmp_path / "wds", model, "webdataset", keep=["key", "cls", "json"])
    result = run_job({**cfg, "compute": {"runner": runner, "actors": 1}})
    assert result.ok, result.job["error"]
    preds = readable(result.out, runner)
    assert preds.column_names == ["shard", "file", "row", "key", "cls", "json", "probs"]
    rows = read_predictions(result.out).to_pylist()
    assert [(r["file"], r["row"], r["key"], r["cls"]) for r in rows] == [
        (tars[0], 0, "train/s000", 3),
        (tars[0], 1, "train/s001", 1),
        (tars[1], 0, "s100", 5),
        (tars[1], 1, "s101", 9),
    ]
    assert rows[0]["json"] == '{"w": 53}' and rows[2]["json"] is None
    got = np.stack([r["probs"] for r in rows])
    np.testing.assert_allclose(got, cnn_probs(model, good, 24), atol=2e-3)
    errors = read_errors(result.out).to_pylist()
    assert [(e["file"], e["row"], e["stage"], e["error"]) for e in errors] == [
        (tars[0], 2, "decode", "OSError"),
        (tars[0], 3, "read", "MissingMember"),
    ]
    assert (
        "sample train/s003 has no jpg or jpeg or png or webp member (members: cls, json)"
        in errors[1]["message"]
    )
    shards = pq.read_table(Path(result.out) / "_shards.parquet").to_pylist()
    assert [(s["shard"], s["rows"], s["rows_failed"]) for s in shards] == [(tars[0], 4, 2), (tars[1], 2, 0)]


def test_webdataset_members_of_one_key_apart_fail_their_shard(run_job, tmp_path: Path) -> None:
    pic = samples()["photo.jpg"]
    write_tar(tmp_path / "wds" / "a.tar", [("k1.jpg", pic), ("k2.jpg", pic), ("k1.cls", b"0")])
    write_tar(tmp_path / "wds" / "b.tar", [("k3.jpg", pic), ("k3.cls", b"2")])
    model = make_cnn(tmp_path / "cnn.onnx", size=24, classes=3)
    result = run_job(image_job(tmp_path / "wds", model, "webdataset", keep=["cls"], image_column="jpg"))
    assert result.ok, result.job["error"]
    statuses = {
        Path(s["shard"]).name: s["status"]
        for s in pq.read_table(Path(result.out) / "_shards.parquet").to_pylist()
    }
    assert statuses == {"a.tar": "failed", "b.tar": "succeeded"}
    (error,) = read_errors(result.out).to_pylist()
    assert error["error"] == "NonAdjacentKey" and "members of sample k1 are not adjacent" in error["message"]
    assert readable(result.out).column("cls").to_pylist() == [2]  # nothing of a.tar, never merged


def test_webdataset_members_are_learnt_past_the_first_samples_and_errors_met_say_so(
    run_job, tmp_path: Path
) -> None:
    """The schema comes from the first samples; an extension they lack but a later sample has is
    a column (null where absent), one no sample has is refused naming the tar, and an error met
    while sampling is the error reported, not a column said to be missing."""
    from scoring.config_file import load_config
    from scoring.validate import validate

    pic = samples()["rgb.png"]
    model = make_cnn(tmp_path / "cnn.onnx", size=24, classes=3)
    late = [(f"s{i:03d}.png", pic) for i in range(40)] + [("s040.png", pic), ("s040.cls", b"7")]
    write_tar(tmp_path / "late" / "a.tar", late)
    cfg = image_job(tmp_path / "late", model, "webdataset", keep=["key", "cls"])
    preview = validate(load_config(data={**cfg, "output": {"uri": str(tmp_path / "v")}}, environ={}))
    assert preview.predictions.column("cls").to_pylist() == [None] * 8
    result = run_job(cfg)
    assert result.ok, result.job["error"]
    assert readable(result.out).column("cls").to_pylist() == [None] * 40 + [7]

    write_tar(tmp_path / "none" / "a.tar", late[:40])
    with pytest.raises(InputError, match=r"a.tar: no sample has a member \['cls'\] \(the extensions its"):
        run_job(image_job(tmp_path / "none", model, "webdataset", keep=["key", "cls"]))

    write_tar(tmp_path / "apart" / "a.tar", [("a.jpg", pic), ("b.jpg", pic), ("a.cls", b"0")])
    apart = image_job(tmp_path / "apart", model, "webdataset", keep=["key", "cls"])
    for check in (run_job, lambda c: validate(load_config(data={**c, "output": {"uri": "o"}}, environ={}))):
        with pytest.raises(InputError, match="the members of sample a are not adjacent") as refused:
            check(apart)
        assert "the 2 sample(s) read have no member ['cls']" in str(refused.value)


# -- thousands of small files ----------------------------------------------------------------


@RUNNERS
def test_thousands_of_small_files_are_packed_into_few_shards(run_job, tmp_path: Path, runner: str) -> None:
    folder, n, rows = tmp_path / "small", 2100, 5
    folder.mkdir()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n * rows, 8)).astype(np.float32)
    for i in range(n):
        part = slice(i * rows, (i + 1) * rows)
        pq.write_table(
            pa.table({"id": np.arange(n * rows)[part], "features": fixed_list(x[part])}),
            folder / f"part-{i:05d}.parquet",
        )
    model = make_mlp(tmp_path / "m.onnx", (8, 4))
    cfg = features_job(folder, model, keep=["id"], runner=runner, actors=2)
    cfg["input"]["files_per_shard"] = 1000
    result = run_job(cfg)
    assert result.ok, result.job["error"]
    shards = pq.read_table(Path(result.out) / "_shards.parquet").to_pylist()
    first = [folder / f"part-{i:05d}.parquet" for i in (0, 1000, 2000)]
    assert [(s["shard"], s["rows"]) for s in shards] == [
        (f"{first[0]}+999", 5000),
        (f"{first[1]}+999", 5000),
        (f"{first[2]}+99", 500),
    ]
    assert len(list((Path(result.out) / "predictions").iterdir())) == 3
    preds = readable(result.out, runner).sort_by("id")
    assert preds.column("id").to_pylist() == list(range(n * rows))
    files = [int(Path(f).stem[5:]) for f in preds.column("file").to_pylist()]
    assert [f * rows + r for f, r in zip(files, preds.column("row").to_pylist())] == list(range(n * rows))
    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(
        np.stack(preds.column("probs").to_numpy(zero_copy_only=False)), sess.run(None, {"x": x})[0], rtol=1e-5
    )
    planned = pq.read_table(Path(result.out) / "_plan.parquet").to_pylist()
    assert [len(p["files"]) for p in planned] == [1000, 1000, 100]
    assert [p["rows"] for p in planned] == [None] * 3  # too many files to open each one to plan
    assert all(p["rows_estimate"] for p in planned)


# -- one schema per job ------------------------------------------------------------------------


def test_kept_columns_get_one_type_over_files_that_disagree_safely(
    run_job, ray_session: Any, tmp_path: Path
) -> None:
    model = make_mlp(tmp_path / "m.onnx", (8, 4))
    x = np.ones((3, 8), np.float32)
    write_parquet(
        tmp_path / "d" / "a.parquet",
        {"id": pa.array([1, 2, 3], pa.int32()), "name": pa.array(["a", "b", "c"]), "features": fixed_list(x)},
    )
    write_parquet(
        tmp_path / "d" / "b.parquet",
        {
            "id": pa.array([4, 5, 6], pa.int64()),
            "name": pa.array(["d", "e", "f"]).dictionary_encode(),
            "features": fixed_list(x),
        },
    )
    write_parquet(
        tmp_path / "d" / "c.parquet",
        {
            "id": pa.array([7, 8, 9], pa.int16()),
            "name": pa.array(["g", "h", "i"], pa.large_string()),
            "features": fixed_list(x.astype(np.float64)),
        },
    )
    cfg = features_job(tmp_path / "d", model, keep=["id", "name"])
    cfg["input"]["rows_per_shard"] = 3  # a shard, and a predictions file, per input file
    result = run_job(cfg)
    assert result.ok, result.job["error"]
    for part in sorted((Path(result.out) / "predictions").iterdir()):
        schema = pq.read_schema(part)
        assert (schema.field("id").type, schema.field("name").type) == (pa.int64(), pa.large_string())
    preds = readable(result.out, "ray")
    assert sorted(preds.column("id").to_pylist()) == list(range(1, 10))

    write_parquet(
        tmp_path / "d" / "d.parquet",
        {"id": pa.array(["user-49"] * 3), "name": pa.array(["j"] * 3), "features": fixed_list(x)},
    )
    with pytest.raises(InputError) as info:
        run_job({**cfg, "output": {"mode": "overwrite"}})
    message = str(info.value)
    assert "input files disagree on column 'id'" in message
    assert (
        f"int64 in {tmp_path / 'd' / 'b.parquet'}" in message
        and f"string in {tmp_path / 'd' / 'd.parquet'}" in message
    )


# -- a job that scores nothing -------------------------------------------------------------------


def test_a_job_that_scores_nothing_has_failed_and_stops_early(run_job, tmp_path: Path) -> None:
    model = make_cnn(tmp_path / "cnn.onnx", size=16, classes=2)
    for i in range(5):  # "images" that are text: every row undecodable
        write_parquet(
            tmp_path / "d" / f"{i}.parquet", {"image": pa.array([b"not an image"] * 4, pa.binary())}
        )
    cfg = image_job(tmp_path / "d", model, "images")
    cfg["input"]["rows_per_shard"] = 4  # five shards
    cfg["compute"] = {"shards_in_flight": 1, "actors": 1}
    result = run_job(cfg)
    assert not result.ok and result.job["status"] == "failed"
    error = result.job["error"]
    assert error.startswith("the job stopped early: all 12 rows of 3 shard(s) were rejected at stage decode")
    assert "input.image_column" in error
    assert result.job["totals"]["shards"] == 3  # not the other two

    one = run_job({**cfg, "input": {**cfg["input"], "rows_per_shard": 100}, "output": {"mode": "overwrite"}})
    assert not one.ok and one.job["error"].startswith("no row was scored: all 20 rows of 1 shard(s)")

    from scoring.config_file import load_config
    from scoring.validate import validate

    with pytest.raises(ModelError, match="none of the first rows can be scored: they were rejected"):
        validate(load_config(data={**cfg, "output": {"uri": str(tmp_path / "v")}}, environ={}))


def test_validate_looks_past_empty_files(tmp_path: Path) -> None:
    from scoring.config_file import load_config
    from scoring.validate import format_preview, validate

    model = make_mlp(tmp_path / "m.onnx", (8, 4))
    empty = pa.table({"id": pa.array([], pa.int64()), "features": fixed_list(np.zeros((0, 8), np.float32))})
    (tmp_path / "d").mkdir()
    pq.write_table(empty, tmp_path / "d" / "part-000.parquet")  # Spark writes such files
    write_tables(tmp_path / "d" / "later", files=1, rows=20, features=8)
    cfg = features_job(tmp_path / "d", model, keep=["id"])
    preview = validate(load_config(data={**cfg, "output": {"uri": str(tmp_path / "o")}}, environ={}))
    assert preview.predictions.num_rows == 8 and preview.predictions.column("id").to_pylist() == list(
        range(8)
    )
    assert "8 scored, 0 rejected" in format_preview(preview)


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_the_tar_reader_reads_what_tarfile_writes(tmp_path: Path, fmt: int) -> None:
    from scoring.formats.webdataset import tar_files

    deep = "/".join(["a-rather-long-folder-name"] * 5)  # 129 characters: past ustar's 100
    members = [(f"{deep}/s0.jpg", b"x" * 700), ("s1.cls", b"7"), (f"{deep}/s2.ünïcode.txt", "é".encode())]
    path = tmp_path / "t.tar"
    with tarfile.open(path, "w", format=fmt) as tar:
        folder = tarfile.TarInfo("a-folder")
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)  # a folder entry: not a member
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 1700000000.5
            tar.addfile(info, io.BytesIO(data))
    with open(path, "rb") as f:
        assert list(tar_files(f)) == members
    with open(path, "rb") as f:
        cut = io.BytesIO(f.read()[:1500])  # the first member's data cut short
    with pytest.raises(tarfile.ReadError, match="unexpected end of data"):
        list(tar_files(cut))
    with pytest.raises(tarfile.ReadError, match="bad header"):
        list(tar_files(io.BytesIO(b"PK\x03\x04 a zip file, not a tar" + b"\0" * 600)))
