"""Object storage through fsspec, against a real S3 protocol server (moto) on 127.0.0.1."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from support import features_job, free_port, options, upload

from scoring import storage
from scoring.demo import make_cnn, make_mlp, write_images, write_tables
from scoring.errors import ModelError, StorageError


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
    cfg = {
        **features_job(src, model, keep=["id"]),
        "output": {"uri": out},
        "storage_options": options(endpoint),
    }
    cfg["input"]["rows_per_shard"] = 200  # a shard per file
    return cfg


def test_tables_s3_to_s3_with_the_model_in_a_bucket(run_job, s3: Any, tables: Path) -> None:
    endpoint, fs = s3
    cfg = job("s3://data/tables/", "s3://results/t1", "s3://models/mlp.onnx", endpoint)
    result = run_job({**cfg, "compute": {"runner": "ray"}})  # storage_options reach Ray's workers
    assert result.ok, result.job["error"]
    assert sorted(fs.ls("results/t1/predictions")) == [
        f"results/t1/predictions/part-00000{i}.parquet" for i in range(3)
    ]
    with fs.open("results/t1/predictions/part-000001.parquet") as f:
        preds = pq.read_table(f)
    assert preds.column("id").to_pylist() == list(range(200, 400))
    assert preds.column("shard")[0].as_py() == "s3://data/tables/part-001.parquet"
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
            "compute": {"runner": "ray"},
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
    assert [e["stage"] for e in errors] == ["decode"] and errors[0][
        "file"
    ] == "s3://data/imgs/d000/broken.jpg"


def test_webdataset_tars_streamed_from_a_bucket(run_job, s3: Any, tmp_path: Path) -> None:
    from test_formats import image_job, webdataset

    endpoint, fs = s3
    _, good = webdataset(tmp_path / "wds")
    upload(fs, tmp_path / "wds", "data/wds")
    model = make_cnn(tmp_path / "cnn.onnx", size=24, classes=3)
    cfg = image_job("s3://data/wds", str(model), "webdataset", keep=["cls"])
    result = run_job({**cfg, "output": {"uri": "s3://results/w1"}, "storage_options": options(endpoint)})
    assert result.ok, result.job["error"]
    rows = []
    for key in sorted(fs.ls("results/w1/predictions")):
        with fs.open(key) as f:
            rows += pq.read_table(f).to_pylist()
    assert [(r["file"], r["row"], r["cls"]) for r in rows] == [
        ("s3://data/wds/shard-000000.tar", 0, 3),
        ("s3://data/wds/shard-000000.tar", 1, 1),
        ("s3://data/wds/shard-000001.tar", 0, 5),
        ("s3://data/wds/shard-000001.tar", 1, 9),
    ]
    assert result.job["totals"]["rows"] == 6 and result.job["totals"]["rows_failed"] == 2


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


# -- credentials -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def s3_with_auth(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A second moto server, in its own process, that checks signatures against IAM keys.

    Set up without auth (an IAM user with an s3:* policy, a bucket, a model and data), then
    switched to authenticate every request. Yields (endpoint, the user's real keys).
    """
    import boto3
    import s3fs

    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_http(f"{endpoint}/moto-api/")
        anon = {"endpoint_url": endpoint, "region_name": "us-east-1"}
        anon |= {"aws_access_key_id": "setup", "aws_secret_access_key": "setup"}
        iam = boto3.client("iam", **anon)
        iam.create_user(UserName="scorer")
        key = iam.create_access_key(UserName="scorer")["AccessKey"]
        policy = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
        }
        iam.put_user_policy(UserName="scorer", PolicyName="s3", PolicyDocument=json.dumps(policy))
        boto3.client("s3", **anon).create_bucket(Bucket="secure")
        request = urllib.request.Request(
            f"{endpoint}/moto-api/reset-auth",
            data=b"0",
            method="POST",
            headers={"Content-Type": "text/plain"},
        )
        urllib.request.urlopen(request, timeout=10).close()  # from now on every request is checked
        keys = {"key": key["AccessKeyId"], "secret": key["SecretAccessKey"]}
        local = tmp_path_factory.mktemp("secure")
        make_mlp(local / "mlp.onnx", (8, 4))
        write_tables(local / "tables", files=2, rows=100, features=8)
        fs = s3fs.S3FileSystem(endpoint_url=endpoint, **keys)
        upload(fs, local / "mlp.onnx", "secure/mlp.onnx")
        upload(fs, local / "tables", "secure/tables")
        yield endpoint, keys
    finally:
        server.terminate()
        server.wait(timeout=30)


def _wait_http(url: str) -> None:
    deadline = time.time() + 60
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(0.2)


def test_right_keys_score_and_wrong_keys_fail_before_scoring_naming_the_uri(
    run_job, s3_with_auth: Any, tmp_path: Path
) -> None:
    endpoint, keys = s3_with_auth
    cfg = {
        **features_job("s3://secure/tables/", "s3://secure/mlp.onnx"),
        "output": {"uri": "s3://secure/out"},
        "storage_options": {"endpoint_url": endpoint, **keys},
    }
    assert run_job(json.loads(json.dumps(cfg))).ok  # the server accepts these keys

    cfg["storage_options"]["secret"] = "not-the-secret"
    with pytest.raises(ModelError) as info:
        run_job(json.loads(json.dumps(cfg)))
    message = str(info.value)
    assert "s3://secure/mlp.onnx" in message and "permission denied" in message
    assert "check credentials" in message and info.value.exit_code == 2

    cfg["model"]["uri"] = str(tmp_path / "local.onnx")  # model readable: the input is next
    make_mlp(tmp_path / "local.onnx", (8, 4))
    with pytest.raises(
        StorageError, match=r"listing s3://secure/tables/: permission denied.*check credentials"
    ):
        run_job(json.loads(json.dumps(cfg)))
    assert not (tmp_path / "out").exists()


# -- transient faults ----------------------------------------------------------------------------


SLOW_DOWN = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"


class FlakyProxy:
    """An HTTP proxy on 127.0.0.1 in front of the S3 server that injects faults into GETs.

    ``faults[suffix]`` lists what the next GETs of a key ending in ``suffix`` get: ``"drop"``
    (the connection closes with no reply), ``"503"`` (S3's SlowDown), ``"forever"`` (503 to every
    read of the whole object from then on; a footer's ranged reads pass); after the list,
    requests pass. ``gets[suffix]`` counts the GETs seen.
    """

    def __init__(self, upstream: str, faults: dict[str, list[str]]) -> None:
        import collections
        import http.client
        import http.server
        import threading

        self.faults = {k: list(v) for k, v in faults.items()}
        self.gets: collections.Counter[str] = collections.Counter()
        proxy = self
        host, port = upstream.removeprefix("http://").split(":")

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # answers "Expect: 100-continue", as S3 does

            def log_message(self, *args: Any) -> None:
                pass

            def _body(self) -> bytes | None:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while size := int(self.rfile.readline().split(b";")[0], 16):
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                    self.rfile.readline()
                    return b"".join(chunks)
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else None

            def _forward(self) -> None:
                whole = self.headers.get("Range") in (None, "bytes=0-")  # not a footer's ranged read
                if self.command == "GET" and (fault := proxy._fault(self.path.split("?")[0], whole)):
                    if fault == "drop":
                        self.close_connection = True
                        self.connection.shutdown(socket.SHUT_RDWR)
                        return
                    body = SLOW_DOWN
                    self.send_response(503)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                data = self._body()
                conn = http.client.HTTPConnection(host, int(port), timeout=30)
                skip = ("host", "connection", "keep-alive", "transfer-encoding")
                conn.request(
                    self.command,
                    self.path,
                    body=data,
                    headers={k: v for k, v in self.headers.items() if k.lower() not in skip},
                )
                reply = conn.getresponse()
                payload = reply.read()
                self.send_response(reply.status)
                for k, v in reply.getheaders():
                    if k.lower() not in ("connection", "transfer-encoding", "content-length"):
                        self.send_header(k, v)
                # A HEAD reply has no body but the object's length, which clients rely on.
                size = reply.getheader("Content-Length") if self.command == "HEAD" else len(payload)
                self.send_header("Content-Length", str(size or 0))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)
                conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def _fault(self, path: str, whole: bool) -> str | None:
        for suffix, plan in self.faults.items():
            if path.endswith(suffix):
                self.gets[suffix] += 1
                if plan and plan[0] == "forever":
                    return "503" if whole else None
                return plan.pop(0) if plan else None
        return None

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_transient_errors_are_retried_and_a_shard_that_still_fails_is_reported(
    run_job, s3: Any, tables: Path
) -> None:
    endpoint, fs = s3
    upload(fs, tables / "tables", "data/flaky")
    # s3fs tries 5 times before scoring's own retry sees an error; botocore's retries are
    # turned off here (max_attempts counts retries: 0) to keep the test short. Six faults: s3fs
    # gives up once.
    flaky = ["drop", "503", "drop", "503", "drop", "503"]
    proxy = FlakyProxy(endpoint, {"flaky/part-001.parquet": flaky, "flaky/part-002.parquet": ["forever"]})
    cfg = job("s3://data/flaky/", "s3://results/flaky", "s3://models/mlp.onnx", proxy.endpoint)
    cfg["storage_options"]["config_kwargs"] = {"retries": {"max_attempts": 0}}
    try:
        result = run_job(cfg)
    finally:
        proxy.close()
    # The footer (read when the plan is made) and the data each got past the faults: s3fs gave
    # up after five, scoring's own retry met the sixth and then got through.
    assert not proxy.faults["flaky/part-001.parquet"] and proxy.gets["flaky/part-001.parquet"] >= 8
    with fs.open("results/flaky/_shards.parquet") as f:
        shards = {s["shard"].rsplit("/", 1)[1]: s for s in pq.read_table(f).to_pylist()}
    assert shards["part-000.parquet"]["status"] == "succeeded"
    assert shards["part-001.parquet"]["status"] == "succeeded" and shards["part-001.parquet"]["rows"] == 200
    assert shards["part-002.parquet"]["status"] == "failed"
    with fs.open("results/flaky/_errors.parquet") as f:
        errors = pq.read_table(f).to_pylist()
    assert [e["row"] for e in errors] == list(range(200))  # its footer was read: every row, once
    error = errors[0]
    assert error["shard"] == "s3://data/flaky/part-002.parquet" and error["stage"] == "read"
    assert "failed after 3 attempts" in error["message"] and "reduce your request rate" in error["message"]
    preds = []
    for key in fs.ls("results/flaky/predictions"):
        with fs.open(key) as f:
            preds += pq.read_table(f).column("id").to_pylist()
    assert sorted(preds) == list(range(400))  # nothing lost, nothing twice
    assert result.job["totals"]["rows_failed"] == 200


def test_an_object_larger_than_a_block_is_fetched_in_one_get(s3: Any) -> None:
    """s3fs splits a whole-object read past its block size into parallel ranged GETs joined by a
    copy (twice the CPU on both ends, measured); a shard is read in one GET instead. The open
    range that does it is refused on an empty object (416), which still reads as empty."""
    endpoint, fs = s3
    data = np.random.default_rng(0).bytes(3 << 20)
    fs.pipe("data/blob.bin", data)
    fs.pipe("data/empty.jpg", b"")
    proxy = FlakyProxy(endpoint, {"data/blob.bin": [], "data/empty.jpg": []})
    try:
        so = {**options(proxy.endpoint), "default_block_size": 1 << 20}
        assert storage.read_bytes("s3://data/blob.bin", so) == data
        assert storage.read_bytes("s3://data/empty.jpg", so) == b""
    finally:
        proxy.close()
    assert proxy.gets["data/blob.bin"] == 1
    assert proxy.gets["data/empty.jpg"] == 1  # refused at once, not retried as if transient


def test_resume_in_a_bucket_follows_the_plan_and_refuses_a_changed_object(
    run_job, s3: Any, tables: Path, tmp_path: Path
) -> None:
    endpoint, fs = s3
    upload(fs, tables / "tables", "data/resume")
    cfg = job("s3://data/resume/", "s3://results/resume", "s3://models/mlp.onnx", endpoint)
    assert run_job(json.loads(json.dumps(cfg))).ok
    fs.rm("results/resume/_progress/part-000001.json")  # as if the job had died on that shard
    planned = {
        p["shard"]: p["versions"] for p in pq.read_table(fs.open("results/resume/_plan.parquet")).to_pylist()
    }
    assert all(v[0].startswith("ETag=") for v in planned.values())
    resumed = run_job(
        {**json.loads(json.dumps(cfg)), "output": {"uri": "s3://results/resume", "mode": "resume"}}
    )
    assert resumed.ok and resumed.job["totals"]["rows_scored_now"] == 200
    ids = []
    for key in fs.ls("results/resume/predictions"):
        with fs.open(key) as f:
            ids += pq.read_table(f).column("id").to_pylist()
    assert sorted(ids) == list(range(600))

    fs.pipe("data/resume/part-002.parquet", fs.cat("data/resume/part-000.parquet"))  # new content
    from scoring.errors import PlanChanged

    with pytest.raises(
        PlanChanged, match=r"input file s3://data/resume/part-002.parquet changed since the plan"
    ):
        run_job({**json.loads(json.dumps(cfg)), "output": {"uri": "s3://results/resume", "mode": "resume"}})
