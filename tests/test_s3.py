"""Object storage through fsspec, against a real S3 protocol server (moto) on 127.0.0.1."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from scoring.demo import make_cnn, make_mlp, write_images, write_tables
from scoring.errors import ModelError, StorageError

KEYS = {"key": "testing", "secret": "testing"}


@pytest.fixture(scope="module")
def s3() -> Any:
    """A moto S3 server on a free loopback port; yields (endpoint, s3fs filesystem)."""
    import s3fs
    from moto.server import ThreadedMotoServer

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    fs = s3fs.S3FileSystem(endpoint_url=endpoint, **KEYS)
    for bucket in ("models", "data", "results"):
        fs.mkdir(bucket)
    yield endpoint, fs
    server.stop()


def options(endpoint: str) -> dict[str, Any]:
    return {"endpoint_url": endpoint, **KEYS}


def upload(fs: Any, local: Path, remote: str) -> None:
    fs.put(str(local), remote, recursive=local.is_dir())


@pytest.fixture(scope="module")
def tables(s3: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    _, fs = s3
    local = tmp_path_factory.mktemp("s3src")
    make_mlp(local / "mlp.onnx", (8, 4))
    write_tables(local / "tables", files=3, rows=200, features=8)
    upload(fs, local / "mlp.onnx", "models/mlp.onnx")
    upload(fs, local / "tables", "data/tables")
    return local


def job(src: str, out: str, model: str, endpoint: str) -> dict[str, Any]:
    return {
        "model": {"uri": model},
        "input": {"uri": src, "format": "parquet", "columns": {"x": "features"}, "keep": ["id"]},
        "output": {"uri": out},
        "storage_options": options(endpoint),
    }


def test_tables_s3_to_s3_with_the_model_in_a_bucket(run_job, s3: Any, tables: Path) -> None:
    endpoint, fs = s3
    result = run_job(job("s3://data/tables/", "s3://results/t1", "s3://models/mlp.onnx", endpoint))
    assert result.ok, result.job["error"]
    assert sorted(fs.ls("results/t1/predictions")) == [
        f"results/t1/predictions/part-00000{i}.parquet" for i in range(3)
    ]
    with fs.open("results/t1/predictions/part-000001.parquet") as f:
        preds = pq.read_table(f)
    assert preds.column("id").to_pylist() == list(range(200, 400))
    assert preds.column("shard")[0].as_py() == "s3://data/tables/part-001.parquet"
    import json

    job_json = json.loads(fs.cat_file("results/t1/_job.json"))
    assert job_json["status"] == "succeeded" and job_json["totals"]["rows"] == 600
    assert job_json["config"]["storage_options"]["secret"] == "***"
    sha = job_json["model"]["sha256"]
    assert (Path.home() / ".cache" / "scoring" / "models" / f"{sha}.onnx").exists()  # cached per node
    assert not [p for p in fs.find("results/t1") if "_scoring_probe" in p or p.endswith(".tmp")]


def test_local_to_s3_and_s3_to_local(run_job, s3: Any, tables: Path, tmp_path: Path) -> None:
    endpoint, fs = s3
    up = run_job(job(str(tables / "tables"), "s3://results/t2", str(tables / "mlp.onnx"), endpoint))
    assert up.ok and len(fs.ls("results/t2/predictions")) == 3
    down = run_job(
        job("s3://data/tables/*.parquet", str(tmp_path / "local-out"), "s3://models/mlp.onnx", endpoint)
    )
    assert down.ok
    local = pq.read_table(tmp_path / "local-out" / "predictions")
    with fs.open("results/t2/predictions/part-000002.parquet") as f:
        remote = pq.read_table(f)
    assert local.num_rows == 600
    ids = local.column("id").to_numpy()
    np.testing.assert_allclose(
        np.stack(local.column("probs").to_numpy(zero_copy_only=False))[ids >= 400],
        np.stack(remote.column("probs").to_numpy(zero_copy_only=False)),
        rtol=1e-6,
    )


def test_images_s3_to_s3(run_job, s3: Any, tmp_path: Path) -> None:
    endpoint, fs = s3
    make_cnn(tmp_path / "cnn.onnx", size=32, classes=3)
    write_images(tmp_path / "imgs", count=12, size=(40, 40), per_folder=6)
    (tmp_path / "imgs" / "d000" / "broken.jpg").write_bytes(b"nope")
    upload(fs, tmp_path / "imgs", "data/imgs")
    result = run_job(
        {
            "model": {"uri": str(tmp_path / "cnn.onnx")},
            "input": {"uri": "s3://data/imgs", "format": "images", "files_per_shard": 5},
            "output": {"uri": "s3://results/i1"},
            "storage_options": options(endpoint),
        }
    )
    assert result.ok, result.job["error"]
    paths = []
    for key in fs.ls("results/i1/predictions"):
        with fs.open(key) as f:
            paths += pq.read_table(f).column("path").to_pylist()
    assert len(paths) == 12 and all(p.startswith("s3://data/imgs/") for p in paths)
    with fs.open("results/i1/_errors.parquet") as f:
        errors = pq.read_table(f).to_pylist()
    assert [e["stage"] for e in errors] == ["decode"] and "broken.jpg" in errors[0]["message"]


def test_missing_bucket_prefix_and_model_fail_before_scoring(run_job, s3: Any, tables: Path) -> None:
    endpoint, _ = s3
    with pytest.raises(StorageError, match=r"s3://data/nothing-here/: no such file or folder"):
        run_job(job("s3://data/nothing-here/", "s3://results/x", "s3://models/mlp.onnx", endpoint))
    with pytest.raises(StorageError, match=r"s3://no-such-bucket/t: no such file or folder"):
        run_job(job("s3://no-such-bucket/t", "s3://results/x", "s3://models/mlp.onnx", endpoint))
    with pytest.raises(ModelError, match=r"cannot read model s3://models/missing.onnx"):
        run_job(job("s3://data/tables/", "s3://results/x", "s3://models/missing.onnx", endpoint))
    with pytest.raises(StorageError, match=r"cannot write to output.uri s3://no-such-bucket/out"):
        run_job(job("s3://data/tables/", "s3://no-such-bucket/out", "s3://models/mlp.onnx", endpoint))


def test_process_local_filesystems_are_refused(run_job, tables: Path) -> None:
    with pytest.raises(StorageError, match=r"memory:// filesystem lives inside one process"):
        run_job(job(str(tables / "tables"), "memory://out", str(tables / "mlp.onnx"), "http://127.0.0.1:1"))
