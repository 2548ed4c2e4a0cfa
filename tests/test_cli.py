"""The command line as a user runs it: exit codes and messages, config precedence, inspect."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from scoring.config_file import load_config
from scoring.demo import make_mlp, write_tables
from scoring.errors import ConfigError


def scoring(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The CLI in its own process; ``run`` on the local runner: exit codes and messages are the
    same on both, and Ray, where it is the subject, is tested in test_faults and test_cluster."""
    import os

    if args[:1] == ("run",) and "--runner" not in args:
        args = (*args, "--runner", "local")
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "scoring", *args], capture_output=True, text=True, env=full_env, timeout=300
    )


def config_file(tmp_path: Path, data: dict) -> str:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


BASE = {"model": {"uri": "m.onnx"}, "input": {"uri": "d", "format": "parquet"}, "output": {"uri": "o"}}


def test_unknown_wrong_and_missing_keys_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"unknown config key 'compute.batchsize'"):
        load_config(data={**BASE, "compute": {"batchsize": 5}}, environ={})
    with pytest.raises(ConfigError, match=r"config key 'compute.batch_size': .*integer.*found 'lots'"):
        load_config(data=BASE, overrides=["compute.batch_size=lots"], environ={})
    with pytest.raises(ConfigError, match=r"missing required config key 'input.format'"):
        load_config(data={**BASE, "input": {"uri": "d"}}, environ={})
    with pytest.raises(
        ConfigError,
        match=r"'input.format': .*expected one of parquet, webdataset, delta, iceberg, images.*'csv'",
    ):
        load_config(data={**BASE, "input": {"uri": "d", "format": "csv"}}, environ={})


@pytest.mark.parametrize(
    "path", sorted(Path(__file__).parents[1].glob("configs/*.yaml")), ids=lambda p: p.name
)
def test_example_configs_are_valid(path: Path) -> None:
    cfg = load_config(path, environ={})
    assert cfg.model.uri and cfg.input.uri and cfg.output.uri
    with pytest.raises(ConfigError, match=r"compute.shards_in_flight.*greater than or equal to 1"):
        load_config(path, overrides=["compute.shards_in_flight=0"], environ={})


def test_precedence_defaults_file_environment_set() -> None:
    cfg = load_config(data=BASE, environ={})
    assert cfg.compute.batch_size == 256
    data = {**BASE, "compute": {"batch_size": 64}}
    assert load_config(data=data, environ={}).compute.batch_size == 64
    env = {"SCORING_COMPUTE__BATCH_SIZE": "32"}
    assert load_config(data=data, environ=env).compute.batch_size == 32
    cfg = load_config(data=data, environ=env, overrides=["compute.batch_size=16", "model.providers=[cpu]"])
    assert cfg.compute.batch_size == 16 and cfg.model.providers == ["cpu"]


def test_secrets_are_redacted_whatever_their_shape() -> None:
    from scoring import redact

    key = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
    options = {
        "connection_string": f"DefaultEndpointsProtocol=https;AccountName=acct;AccountKey={key};",
        "client_kwargs": {"endpoint_url": "http://admin:hunter22@minio.internal:9000"},
        "anon": False,
    }
    cfg = load_config(
        data={**BASE, "model": {"uri": "s3://user:pa55word@host/m.onnx"}, "storage_options": options},
        environ={},
    )
    data = redact.config(cfg.model_dump(mode="json"))
    assert data["storage_options"] == {
        "connection_string": "***",
        "client_kwargs": {"endpoint_url": "***"},
        "anon": False,
    }
    assert data["model"]["uri"] == "s3://***@host/m.onnx"
    argv = redact.argv(
        [
            "scoring",
            "run",
            "c.yaml",
            "--set",
            "storage_options={key: A1B2, secret: S3CR}",
            "--set=compute.actors=2",
        ]
        + ["--set=storage_options.token=T0KEN", "--address", "ray://me:pw@head:10001"]
    )
    assert argv == [
        "scoring",
        "run",
        "c.yaml",
        "--set",
        "storage_options=***",
        "--set=compute.actors=2",
        "--set=storage_options.token=***",
        "--address",
        "ray://***@head:10001",
    ]
    message = f"cannot reach http://minio.internal:9000 with AccountKey={key}; credentials hunter22 refused"
    masked = redact.text(message, redact.values(options))
    assert key not in masked and "hunter22" not in masked and "AccountKey=***" in masked
    # Catalog properties: credentials masked, what says which catalog kept.
    catalog = {
        "type": "rest",
        "uri": "https://cat.example/api",
        "credential": "cl1ent:s3cr3t",
        "token": "T0K3N",
    }
    inp = {"uri": "db.events", "format": "iceberg", "catalog": catalog}
    cfg = load_config(data={**BASE, "input": inp}, environ={})
    data = redact.config(cfg.model_dump(mode="json"))
    assert data["input"]["catalog"] == {
        "type": "rest",
        "uri": "https://cat.example/api",
        "credential": "***",
        "token": "***",
    }
    assert "s3cr3t" not in redact.text("catalog refused cl1ent:s3cr3t", redact.config_values(cfg))
    assert redact.argv(["--set=output.catalog.token=T0K3N", "--set=input.catalog.type=rest"]) == [
        "--set=output.catalog.token=***",
        "--set=input.catalog.type=rest",
    ]


def test_bad_config_exits_2_before_ray_starts(tmp_path: Path) -> None:
    path = config_file(tmp_path, {**BASE, "compute": {"actorz": 2}})
    proc = scoring("run", path)
    assert proc.returncode == 2
    assert "Error: invalid config" in proc.stderr and "unknown config key 'compute.actorz'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_missing_and_corrupt_model_exit_2(tmp_path: Path) -> None:
    write_tables(tmp_path / "d", files=1, rows=5, features=4)
    data = {
        **BASE,
        "input": {"uri": str(tmp_path / "d"), "format": "parquet"},
        "output": {"uri": str(tmp_path / "o")},
        "model": {"uri": str(tmp_path / "nope.onnx")},
    }
    proc = scoring("validate", config_file(tmp_path, data))
    assert proc.returncode == 2 and "cannot read model" in proc.stderr and "nope.onnx" in proc.stderr
    (tmp_path / "bad.onnx").write_bytes(b"\x08\x07garbage" * 10)
    proc = scoring("inspect", str(tmp_path / "bad.onnx"))
    assert proc.returncode == 2 and "is not a valid ONNX model" in proc.stderr


def test_inspect_text_and_json(tmp_path: Path) -> None:
    model = make_mlp(tmp_path / "m.onnx", (5, 7, 3))
    proc = scoring("inspect", model, "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["inputs"] == [{"name": "x", "dtype": "float32", "shape": ["batch", 5], "kind": "tensor"}]
    assert data["outputs"][0]["shape"] == ["batch", 3] and data["opset"] == {"ai.onnx": 17}
    assert len(data["sha256"]) == 64 and "CPUExecutionProvider" in data["available_providers"]
    text = scoring("inspect", model).stdout
    assert "x                    float32    [batch, 5]" in text and "producer  scoring-demo" in text


@pytest.mark.slow
def test_run_validate_and_report_end_to_end(tmp_path: Path) -> None:
    model = make_mlp(tmp_path / "m.onnx", (4, 3))
    write_tables(tmp_path / "d", files=2, rows=50, features=4)
    path = config_file(
        tmp_path,
        {
            "model": {"uri": model},
            "input": {"uri": str(tmp_path / "d"), "format": "parquet", "columns": {"x": "features"}},
            "output": {"uri": str(tmp_path / "o")},
        },
    )
    proc = scoring("validate", path)
    assert proc.returncode == 0 and "ok: 1 shard(s)" in proc.stdout  # two small files, packed
    proc = scoring("run", path, "--set", "compute.actors=1")
    assert proc.returncode == 0, proc.stderr
    assert "status: succeeded" in proc.stdout and "rows: 100 scored" in proc.stdout
    proc = scoring("run", path)
    assert proc.returncode == 2 and "already holds a job" in proc.stderr
    proc = scoring("run", path, "--set", "compute.actors=5", "--mode", "overwrite")
    assert proc.returncode == 2 and "needs 5 CPUs but this machine has" in proc.stderr
    html = tmp_path / "r.html"
    proc = scoring("report", str(tmp_path / "o"), "--html", str(html))
    assert proc.returncode == 0 and "status: succeeded" in proc.stdout
    assert "<svg" in html.read_text() and "part-000.parquet" in html.read_text()


@pytest.mark.slow
def test_rejected_rows_past_the_limit_exit_1(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    model = make_mlp(tmp_path / "m.onnx", (3, 2))
    (tmp_path / "d").mkdir()
    pq.write_table(
        pa.table({"x": pa.array([[1.0, 2.0]] * 4, pa.list_(pa.float32()))}), tmp_path / "d" / "a.parquet"
    )
    path = config_file(
        tmp_path,
        {
            "model": {"uri": model},
            "input": {"uri": str(tmp_path / "d"), "format": "parquet"},
            "output": {"uri": str(tmp_path / "o")},
            "errors": {"max_rejected_rows": 2},
            "compute": {"actors": 1},
        },
    )
    proc = scoring("run", path)
    assert proc.returncode == 1 and "more than errors.max_rejected_rows=2" in proc.stderr


def test_validate_scores_the_first_rows_and_refuses_a_model_whose_outputs_do_not_align(
    tmp_path: Path,
) -> None:
    import models

    write_tables(tmp_path / "d", files=2, rows=50, features=4)
    model = make_mlp(tmp_path / "m.onnx", (4, 3))
    data = {
        "model": {"uri": model},
        "input": {
            "uri": str(tmp_path / "d"),
            "format": "parquet",
            "columns": {"x": "features"},
            "keep": ["id"],
        },
        "output": {"uri": str(tmp_path / "o")},
    }
    proc = scoring("validate", config_file(tmp_path, data))
    assert proc.returncode == 0, proc.stderr
    assert "ok: 1 shard(s) from 2 input file(s), 100 rows planned" in proc.stdout
    assert "8 scored, 0 rejected" in proc.stdout
    assert "probs                    fixed_size_list<item: float>[3]  shape [3]" in proc.stdout
    assert "first row: shard=" in proc.stdout and "id=0" in proc.stdout
    assert not (tmp_path / "o").exists()  # nothing written

    data["model"]["uri"] = models.transposed_output(tmp_path / "t.onnx", declare_batch=False)
    data["input"] = {"uri": str(tmp_path / "d"), "format": "parquet", "columns": {"x": "features"}}
    (tmp_path / "d2").mkdir()
    write_tables(tmp_path / "d2", files=1, rows=5, features=3)
    data["input"]["uri"] = str(tmp_path / "d2")
    proc = scoring("validate", config_file(tmp_path, data))
    assert proc.returncode == 2
    assert "model output 't' has shape [3, 2] for a batch of 2 rows" in proc.stderr
    assert "re-export the model with the batch on axis 0" in proc.stderr


@pytest.mark.slow
def test_a_model_that_cannot_be_aligned_fails_the_run_with_exit_1(tmp_path: Path) -> None:
    import models

    write_tables(tmp_path / "d", files=1, rows=5, features=3)
    data = {
        "model": {"uri": models.transposed_output(tmp_path / "t.onnx", declare_batch=False)},
        "input": {"uri": str(tmp_path / "d"), "format": "parquet", "columns": {"x": "features"}},
        "output": {"uri": str(tmp_path / "o")},
        "compute": {"actors": 1},
    }
    proc = scoring("run", config_file(tmp_path, data))
    assert proc.returncode == 1
    assert "Error: ModelFailure: model output 't' has shape [3, 2]" in proc.stderr
    assert json.loads((tmp_path / "o" / "_job.json").read_text())["status"] == "failed"


def test_refusals_before_ray_starts_say_what_is_wrong(tmp_path: Path) -> None:
    write_tables(tmp_path / "d", files=1, rows=5, features=4)
    (tmp_path / "afile").write_text("not a folder")
    data = {
        "model": {"uri": make_mlp(tmp_path / "m.onnx", (4, 3))},
        "input": {"uri": str(tmp_path / "d"), "format": "parquet", "columns": {"x": "features"}},
        "output": {"uri": str(tmp_path / "afile")},
    }
    path = config_file(tmp_path, data)
    proc = scoring("run", path)
    assert proc.returncode == 2
    assert f"output.uri {tmp_path}/afile is a regular file; it must be a folder" in proc.stderr

    proc = scoring("run", path, "--set", f"output.uri={tmp_path}/o", "--set", "compute.actors=64")
    assert proc.returncode == 2
    assert "compute.actors=64 x compute.cpus_per_actor=1 needs 64 CPUs but this machine has" in proc.stderr
    assert "Token authentication" not in proc.stderr  # refused before Ray started (it says that)
    assert not (tmp_path / "o").exists()

    proc = scoring("run", path, "--set", f"model.uri={tmp_path}/nope.onnx")
    assert proc.returncode == 2 and ".." not in proc.stderr.replace("...", "")
    assert f"cannot read model {tmp_path}/nope.onnx" in proc.stderr and "Check model.uri" in proc.stderr


@pytest.mark.slow
def test_secrets_reach_no_file_page_or_console(tmp_path: Path) -> None:
    write_tables(tmp_path / "d", files=1, rows=5, features=4)
    data = {
        "model": {"uri": make_mlp(tmp_path / "m.onnx", (4, 3))},
        "input": {"uri": str(tmp_path / "d"), "format": "parquet", "columns": {"x": "features"}},
        "output": {"uri": str(tmp_path / "o")},
        "compute": {"actors": 1, "runner": "local"},
        "storage_options": {"connection_string": "AccountName=acct;AccountKey=c2VjcmV0a2V5;"},
    }
    secret = (
        "storage_options={key: AKIAFAKE1234, secret: hunter2hunter2, endpoint_url: 'http://admin:pw1234@h:9'}"
    )
    proc = scoring("run", config_file(tmp_path, data), "--set", secret)
    assert proc.returncode == 0, proc.stderr
    html = tmp_path / "r.html"
    report = scoring("report", str(tmp_path / "o"), "--html", str(html))
    seen = [
        proc.stdout,
        proc.stderr,
        report.stdout,
        html.read_text(),
        (tmp_path / "o" / "_job.json").read_text(),
    ]
    for word in ("AKIAFAKE1234", "hunter2hunter2", "pw1234", "c2VjcmV0a2V5"):
        assert not [text for text in seen if word in text], word
    job = json.loads(seen[-1])
    assert "storage_options=***" in job["argv"]
    assert job["config"]["storage_options"] == {"key": "***", "secret": "***", "endpoint_url": "***"}
