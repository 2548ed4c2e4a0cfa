"""End-to-end jobs on column data, on both runners: predictions, exactly-once, bad input, modes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import models
import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
from onnx import TensorProto
from PIL import Image
from support import RUNNERS, features_job, fixed_list, read_errors, read_predictions, write_parquet

from scoring.demo import make_cnn, make_mlp, write_tables
from scoring.errors import ConfigError, InputError, StorageError


def direct(model: str, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    return ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, feed)


@RUNNERS
def test_predictions_equal_a_direct_ort_run_row_by_row(run_job, tmp_path: Path, runner: str) -> None:
    model = make_mlp(tmp_path / "m.onnx", (8, 16, 4))
    write_tables(tmp_path / "data", files=3, rows=1000, features=8)
    result = run_job(
        features_job(tmp_path / "data", model, keep=["id"], actors=2, batch_size=128, runner=runner)
    )
    assert result.ok, result.job["error"]
    preds = read_predictions(result.out)
    assert preds.num_rows == 3000
    assert sorted(preds.column("id").to_pylist()) == list(range(3000))  # every row exactly once
    source = pq.read_table(tmp_path / "data")
    x = np.stack(source.column("features").to_numpy(zero_copy_only=False)).astype(np.float32)
    (expected,) = direct(model, {"x": x})
    got = np.stack(preds.sort_by("id").column("probs").to_numpy(zero_copy_only=False))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert json.loads(preds.schema.field("probs").metadata[b"shape"]) == [4]
    shards = pq.read_table(Path(result.out) / "_shards.parquet").to_pylist()
    # Three files far smaller than rows_per_shard: packed into one shard, named by its first file.
    first = tmp_path / "data" / "part-000.parquet"
    assert [(s["shard"], s["rows"]) for s in shards] == [(f"{first}+2", 3000)]
    files = [Path(f).name for f in preds.column("file").to_pylist()]  # where each row comes from
    assert [int(f[5:8]) * 1000 + r for f, r in zip(files, preds.column("row").to_pylist())] == preds.column(
        "id"
    ).to_pylist()
    assert all(
        s["status"] == "succeeded" and s["infer_s"] > 0 and s["wall_s"] >= s["infer_s"] for s in shards
    )
    job = json.loads((Path(result.out) / "_job.json").read_text())
    assert job["status"] == "succeeded" and job["totals"]["rows"] == 3000
    assert job["model"]["sha256"] and job["providers"] == ["CPUExecutionProvider"]
    assert read_errors(result.out).num_rows == 0


def test_stacked_columns_several_inputs_and_int_cast(run_job, tmp_path: Path) -> None:
    model = models.two_inputs(tmp_path / "two.onnx")
    a0, a1 = np.arange(5, dtype=np.float64), np.arange(5, dtype=np.float64) * 10
    b = np.arange(5, dtype=np.int32)  # int32 -> int64: allowed
    write_parquet(tmp_path / "d" / "p.parquet", {"a0": a0, "a1": a1, "b": b})
    result = run_job(
        {
            "model": {"uri": model},
            "input": {"uri": str(tmp_path / "d"), "format": "parquet", "columns": {"a": ["a0", "a1"]}},
            "output": {"outputs": {"total": "s"}},
        }
    )
    assert result.ok
    preds = read_predictions(result.out)
    assert preds.column_names == ["shard", "file", "row", "total"]
    np.testing.assert_allclose(preds.column("total").to_numpy(), a0 + a1 + b)


def test_string_input_and_zipmap_output_from_sklearn(run_job, tmp_path: Path) -> None:
    import pandas as pd

    model, pipe = models.sklearn_mixed(tmp_path / "skl.onnx")
    rng = np.random.default_rng(3)
    frame = pd.DataFrame(
        {
            "colour": rng.choice(["red", "green", "blue"], 50),
            "n0": rng.standard_normal(50),
            "n1": rng.standard_normal(50),
        }
    )
    write_parquet(tmp_path / "d" / "p.parquet", {c: frame[c].to_numpy() for c in frame})
    result = run_job({"model": {"uri": model}, "input": {"uri": str(tmp_path / "d"), "format": "parquet"}})
    assert result.ok, result.job["error"]
    preds = read_predictions(result.out)
    assert preds.column("output_label").to_pylist() == pipe.predict(frame).tolist()
    probs = preds.column("output_probability")
    assert pa.types.is_map(probs.type)
    got = np.array([[dict(m)[0], dict(m)[1]] for m in probs.to_pylist()])
    np.testing.assert_allclose(got, pipe.predict_proba(frame), atol=1e-5)


def test_reshape_to_per_row_shape_and_fixed_batch_of_one(run_job, tmp_path: Path) -> None:
    model = models.linear(tmp_path / "img.onnx", [1, 1, 4, 4])  # fixed batch 1, rows of 16 values
    x = np.random.default_rng(0).standard_normal((7, 16)).astype(np.float32)
    write_parquet(tmp_path / "d" / "p.parquet", {"pixels": fixed_list(x)})
    result = run_job(
        {
            "model": {"uri": model},
            "input": {"uri": str(tmp_path / "d"), "format": "parquet", "columns": {"x": "pixels"}},
            "compute": {"batch_size": 4},
        }
    )
    assert result.ok, result.job["error"]
    got = np.stack(read_predictions(result.out).column("y").to_numpy(zero_copy_only=False))
    expected = np.concatenate([direct(model, {"x": r.reshape(1, 1, 4, 4)})[0] for r in x])
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_variable_lengths_are_batched_by_shape_and_misfits_rejected(run_job, tmp_path: Path) -> None:
    model = models.sequence_mean(tmp_path / "seq.onnx")
    seqs = [[1.0, 2.0], [3.0], [4.0, 5.0, 6.0], [], [7.0, 8.0], None]
    write_parquet(tmp_path / "d" / "p.parquet", {"tokens": pa.array(seqs, pa.list_(pa.float32()))})
    result = run_job({"model": {"uri": model}, "input": {"uri": str(tmp_path / "d"), "format": "parquet"}})
    assert result.ok
    preds = read_predictions(result.out)
    assert preds.column("row").to_pylist() == [0, 1, 2, 4]
    np.testing.assert_allclose(preds.column("m").to_numpy(), [1.5, 3.0, 5.0, 7.5])
    errors = read_errors(result.out).sort_by("row").to_pylist()
    assert [(e["row"], e["stage"]) for e in errors] == [(3, "preprocess"), (5, "preprocess")]
    assert "0 values" in errors[0]["message"] and "null" in errors[1]["message"]


def test_bad_rows_are_rejected_with_reasons_and_every_row_lands_once(run_job, tmp_path: Path) -> None:
    model = models.linear(tmp_path / "m.onnx", ["batch", 3], dtype=TensorProto.INT32)
    vals = [[1, 2, 3], [1, 2], [2**40, 0, 0], [4, 5, 6], None]
    write_parquet(tmp_path / "d" / "p.parquet", {"x": pa.array(vals, pa.list_(pa.int64()))})
    result = run_job({"model": {"uri": model}, "input": {"uri": str(tmp_path / "d"), "format": "parquet"}})
    assert result.ok
    assert read_predictions(result.out).column("row").to_pylist() == [0, 3]
    errors = {e["row"]: e["message"] for e in read_errors(result.out).to_pylist()}
    assert set(errors) == {1, 2, 4}
    assert "2 values; input 'x' takes rows of shape [3]" in errors[1]
    assert "cannot represent exactly" in errors[2] and "null" in errors[4]
    shard = pq.read_table(Path(result.out) / "_shards.parquet").to_pylist()[0]
    assert (shard["rows"], shard["rows_failed"], shard["status"]) == (5, 3, "partial")


def test_corrupt_file_and_schema_drift_are_rejected_and_the_job_goes_on(run_job, tmp_path: Path) -> None:
    model = make_mlp(tmp_path / "m.onnx", (4, 2))
    x = np.ones((10, 4), np.float32)
    write_parquet(tmp_path / "d" / "a.parquet", {"x": fixed_list(x)})
    write_parquet(tmp_path / "d" / "b.parquet", {"other": fixed_list(x[:6])})
    (tmp_path / "d" / "c.parquet").write_bytes(b"PAR1 this is not parquet PAR1")
    cfg = {"model": {"uri": model}, "input": {"uri": str(tmp_path / "d"), "format": "parquet"}}
    for per_shard in (1_000_000, 6):  # the three files packed into one shard, then a shard each
        cfg["input"]["rows_per_shard"] = per_shard
        result = run_job(cfg | {"output": {"mode": "overwrite"}})
        assert result.ok
        assert read_predictions(result.out).num_rows == 10
        errors = read_errors(result.out).to_pylist()
        drift = [e for e in errors if e["file"].endswith("b.parquet")]
        assert [e["row"] for e in drift] == list(range(6)) and "no column ['x']" in drift[0]["message"]
        corrupt = [e for e in errors if e["file"].endswith("c.parquet")]
        assert len(corrupt) == 1 and corrupt[0]["row"] is None and corrupt[0]["stage"] == "read"
        statuses = {
            Path(s["shard"]).name: s["status"]
            for s in pq.read_table(Path(result.out) / "_shards.parquet").to_pylist()
        }
        if per_shard > 10:
            assert statuses == {"a.parquet+2": "partial"}
        else:
            assert statuses == {"a.parquet": "succeeded", "b.parquet": "failed", "c.parquet": "failed"}


def test_too_many_rejected_rows_fail_the_job(run_job, tmp_path: Path) -> None:
    model = make_mlp(tmp_path / "m.onnx", (2, 2))
    for i in range(3):
        write_parquet(tmp_path / "d" / f"{i}.parquet", {"x": pa.array([[1.0]] * 5, pa.list_(pa.float32()))})
    result = run_job(
        {
            "model": {"uri": model},
            "input": {"uri": str(tmp_path / "d"), "format": "parquet"},
            "errors": {"max_rejected_rows": 4},
        }
    )
    assert not result.ok
    assert "more than errors.max_rejected_rows=4" in result.job["error"]
    job = json.loads((Path(result.out) / "_job.json").read_text())
    assert job["status"] == "failed" and read_errors(result.out).num_rows >= 5


def test_up_front_errors_name_file_column_and_input(run_job, tmp_path: Path) -> None:
    model = make_mlp(tmp_path / "m.onnx", (2, 2))
    write_parquet(tmp_path / "d" / "p.parquet", {"x": pa.array(["a", "b"])})
    with pytest.raises(
        InputError, match=r"p.parquet: column 'x' holds string but model input 'x' expects float32"
    ):
        run_job({"model": {"uri": model}, "input": {"uri": str(tmp_path / "d"), "format": "parquet"}})
    write_parquet(tmp_path / "e" / "p.parquet", {"feat": pa.array([1.0, 2.0])})
    with pytest.raises(InputError, match=r"no column 'x' for model input 'x' \(columns found: \['feat'\]\)"):
        run_job({"model": {"uri": model}, "input": {"uri": str(tmp_path / "e"), "format": "parquet"}})
    write_parquet(tmp_path / "f" / "p.parquet", {"x": pa.array([1.5, 2.0])})
    int_model = models.linear(tmp_path / "i.onnx", ["batch", 1], dtype=7)
    with pytest.raises(InputError, match="holds double but model input 'x' expects int64; converting would"):
        run_job({"model": {"uri": int_model}, "input": {"uri": str(tmp_path / "f"), "format": "parquet"}})


def test_a_kept_column_named_like_one_scoring_adds_is_refused_or_renamed(run_job, tmp_path: Path) -> None:
    """Datasets carry columns named file, row, label...: kept as they are, predictions/ would
    hold two fields of one name, which no reader opens. Refused before scoring, naming both and
    the rename that resolves it; kept under a new name, they land as they were."""
    model = models.classifier(tmp_path / "c.onnx", classes=3)
    added = ["shard", "file", "row", "logits", "probs", "label", "score", "top_labels", "top_scores"]
    x = np.random.default_rng(0).standard_normal((6, 8)).astype(np.float32)
    columns = {"x": fixed_list(x)} | {name: pa.array([f"{name}-{i}" for i in range(6)]) for name in added}
    write_parquet(tmp_path / "d" / "p.parquet", columns)
    job = {
        "model": {"uri": model},
        "input": {"uri": str(tmp_path / "d"), "format": "parquet"},
        "output": {"uri": str(tmp_path / "out"), "postprocess": {"output": "probs", "top_k": 2}},
    }
    for name in added:
        job["input"]["keep"] = [name]
        with pytest.raises(ConfigError) as refused:
            run_job(job)
        message = str(refused.value)
        assert f"input.keep ('{name}') and " in message and f"would both add the column '{name}'" in message
        assert f"input.keep: [{{input_{name}: {name}}}]" in message, message
    assert not (tmp_path / "out").exists()  # refused before anything was written
    job["input"]["keep"] = [{"input_file": "file"}, {"input_row": "row"}, {"input_label": "label"}]
    result = run_job(job)
    assert result.ok, result.job["error"]
    table = pads.dataset(tmp_path / "out" / "predictions", format="parquet").to_table()
    assert table.column_names[:6] == ["shard", "file", "row", "input_file", "input_row", "input_label"]
    assert table.column("input_file").to_pylist() == [f"file-{i}" for i in range(6)]
    assert table.column("file").to_pylist() == [str(tmp_path / "d" / "p.parquet")] * 6
    job["input"]["keep"] = ["row", {"row": "label"}]
    with pytest.raises(ConfigError, match=r"input.keep \('row'\) and input.keep \(\{row: label\}\) both"):
        run_job(job | {"output": {"uri": str(tmp_path / "o2")}})
    # An image folder's path, and the Python API's error column, are columns scoring adds too.
    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "imgs" / "a.png")
    cnn = make_cnn(tmp_path / "cnn.onnx", size=8, classes=2)
    images = {"uri": str(tmp_path / "imgs"), "format": "images", "keep": ["path"]}
    with pytest.raises(ConfigError, match="'path'.* and scoring \\(the image file\\) would both add"):
        run_job({"model": {"uri": cnn}, "input": images, "output": {"uri": str(tmp_path / "o3")}})


def test_output_modes(run_job, tmp_path: Path) -> None:
    model = make_mlp(tmp_path / "m.onnx", (4, 2))
    write_tables(tmp_path / "d", files=2, rows=10, features=4)
    cfg = features_job(tmp_path / "d", model)
    cfg["input"]["rows_per_shard"] = 10  # a shard per file
    assert run_job(dict(cfg)).ok
    with pytest.raises(StorageError, match="already holds a job.*--mode overwrite"):
        run_job(dict(cfg))
    # resume: drop one shard's marker and predictions, as if the job had died there
    out = tmp_path / "out"
    (out / "_progress" / "part-000001.json").unlink()
    (out / "predictions" / "part-000001.parquet").unlink()
    resumed = run_job({**cfg, "output": {"mode": "resume"}})
    assert resumed.ok and read_predictions(out).num_rows == 20 and len(resumed.records) == 2
    again = run_job({**cfg, "output": {"mode": "overwrite"}})
    assert again.ok and read_predictions(out).num_rows == 20


@pytest.mark.parametrize("declare", [True, False])
def test_output_with_batch_on_axis_one(run_job, tmp_path: Path, declare: bool) -> None:
    model = models.transposed_output(tmp_path / "t.onnx", declare_batch=declare)
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    write_parquet(tmp_path / "d" / "p.parquet", {"x": fixed_list(x)})
    result = run_job({"model": {"uri": model}, "input": {"uri": str(tmp_path / "d"), "format": "parquet"}})
    if declare:  # the model says where the batch is: moved to axis 0
        got = np.stack(read_predictions(result.out).column("t").to_numpy(zero_copy_only=False))
        np.testing.assert_array_equal(got, x)
    else:  # it does not: a model problem that stops the job, never misaligned rows
        assert not result.ok and result.job["status"] == "failed"
        assert "model output 't' has shape [3, 2] for a batch of 2 rows" in result.job["error"]
        assert "only output: re-export the model with the batch on axis 0" in result.job["error"]
        assert read_errors(result.out).num_rows == 0


def test_a_shard_larger_than_a_chunk_is_scored_in_pieces_with_rows_in_place(run_job, tmp_path: Path) -> None:
    from scoring.preprocess.columns import CHUNK_ROWS

    n = 2 * CHUNK_ROWS + 1000  # three chunks
    rng = np.random.default_rng(3)
    x = rng.normal(size=(n, 8)).astype(np.float32)
    bad = [5, CHUNK_ROWS + 7, 2 * CHUNK_ROWS + 999]  # a null row in every chunk
    values = [None if i in bad else row for i, row in enumerate(x.tolist())]
    write_parquet(
        tmp_path / "data" / "big.parquet",
        {"id": np.arange(n) * 10, "features": pa.array(values, pa.list_(pa.float32(), 8))},
    )
    model = make_mlp(tmp_path / "m.onnx", (8, 16, 4))
    result = run_job(features_job(tmp_path / "data", model, keep=["id"], batch_size=1000))
    assert result.ok, result.job["error"]
    preds = read_predictions(result.out)
    good = np.setdiff1d(np.arange(n), bad)
    assert preds.column("row").to_pylist() == good.tolist()
    assert preds.column("id").to_pylist() == (good * 10).tolist()  # keep columns stay aligned
    (expected,) = direct(model, {"x": x[good]})
    got = np.stack(preds.column("probs").to_numpy(zero_copy_only=False))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    errors = read_errors(result.out)
    assert errors.column("row").to_pylist() == bad and set(errors.column("stage").to_pylist()) == {
        "preprocess"
    }
    (shard,) = pq.read_table(Path(result.out) / "_shards.parquet").to_pylist()
    assert shard["rows"] == n and shard["rows_failed"] == 3 and shard["status"] == "partial"


@RUNNERS
@pytest.mark.parametrize("in_flight", [None, 1])
def test_a_worker_reads_its_next_shard_while_it_scores_one(
    run_job, tmp_path: Path, in_flight: int | None, runner: str
) -> None:
    """Two shards in flight per actor by default: the second waits for the session
    (``wait_s``), not for the first shard's whole call; the predictions are a serial run's.
    ``compute.shards_in_flight: 1`` takes them strictly one at a time."""
    rng = np.random.default_rng(5)
    xs = [rng.normal(size=(30_000, 8)).astype(np.float32) for _ in range(4)]
    for i, x in enumerate(xs):
        write_parquet(tmp_path / "data" / f"{i}.parquet", {"features": fixed_list(x)})
    model = make_mlp(tmp_path / "m.onnx", (8, 512, 512, 4))  # inference outlasts reading a shard
    compute = {} if in_flight is None else {"shards_in_flight": in_flight}
    cfg = features_job(tmp_path / "data", model, runner=runner, **compute)
    cfg["input"]["rows_per_shard"] = 30_000  # a shard per file
    result = run_job(cfg)
    assert result.ok, result.job["error"]
    preds = read_predictions(result.out)
    got = np.stack(preds.column("probs").to_numpy(zero_copy_only=False))
    (expected,) = direct(model, {"x": np.concatenate(xs)})
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    shards = pq.read_table(Path(result.out) / "_shards.parquet").to_pylist()
    assert len({s["actors"] for s in shards}) == 1
    spans = sorted((s["started_at"], s["finished_at"]) for s in shards)
    overlapping = max(sum(a <= t < b for a, b in spans) for t, _ in spans)
    assert overlapping == (in_flight or 2)
    waited = [s for s in shards if s["wait_s"] > 0.01]
    assert bool(waited) == (in_flight is None), shards
    for s in waited:  # its wall time holds the wait, beside the work
        work = s["read_s"] + s["preprocess_s"] + s["infer_s"] + s["write_s"]
        assert s["wall_s"] >= work + s["wait_s"] - 0.01


@RUNNERS
def test_a_big_file_is_split_into_row_ranges_scored_by_both_workers(
    run_job, tmp_path: Path, runner: str
) -> None:
    n = 100_000
    x = np.random.default_rng(2).standard_normal((n, 8)).astype(np.float32)
    path = tmp_path / "data" / "big.parquet"
    path.parent.mkdir()
    pq.write_table(pa.table({"id": np.arange(n) * 3, "features": fixed_list(x)}), path, row_group_size=12_500)
    model = make_mlp(tmp_path / "m.onnx", (8, 64, 4))
    cfg = features_job(tmp_path / "data", model, keep=["id"], actors=2, batch_size=4096, runner=runner)
    cfg["input"]["rows_per_shard"] = 25_000
    result = run_job(cfg)
    assert result.ok, result.job["error"]
    shards = pq.read_table(Path(result.out) / "_shards.parquet").to_pylist()
    assert [s["shard"] for s in shards] == [f"{path}#rows={a}-{a + 25_000}" for a in range(0, n, 25_000)]
    assert [s["rows"] for s in shards] == [25_000] * 4
    if runner == "local":  # every worker is ready at once: each takes a range before any takes two
        assert len({s["actors"] for s in shards}) == 2
    preds = read_predictions(result.out).sort_by("row")
    assert preds.column("row").to_pylist() == list(range(n))  # the row's index in its file
    assert preds.column("id").to_pylist() == list(range(0, 3 * n, 3))
    (expected,) = direct(model, {"x": x})
    np.testing.assert_allclose(
        np.stack(preds.column("probs").to_numpy(zero_copy_only=False)), expected, rtol=1e-4
    )
    planned = pq.read_table(Path(result.out) / "_plan.parquet").to_pylist()
    assert [(p["row_start"], p["row_stop"], p["row_groups"]) for p in planned] == [
        (a, a + 25_000, [a // 12_500, a // 12_500 + 1]) for a in range(0, n, 25_000)
    ]


@RUNNERS
def test_a_model_that_fails_on_every_row_stops_the_job(run_job, tmp_path: Path, runner: str) -> None:
    model = models.fails_at_runtime(tmp_path / "bad.onnx")
    write_parquet(tmp_path / "d" / "p.parquet", {"x": fixed_list(np.ones((500, 3), np.float32))})
    data = tmp_path / "d"
    result = run_job(
        {
            "model": {"uri": model},
            "input": {"uri": str(data), "format": "parquet"},
            "compute": {"runner": runner},
        }
    )
    assert not result.ok and result.job["status"] == "failed"
    error = result.job["error"]
    assert error.startswith("ModelFailure: ONNX Runtime failed on each of the first 3 rows it was given")
    assert "cannot be reshaped" in error and "scoring validate" in error
    assert not (Path(result.out) / "_progress").exists() or not list(
        (Path(result.out) / "_progress").iterdir()
    )

    # Two rows only: too few to tell on the worker, but a job that scored nothing is not a success.
    write_parquet(tmp_path / "e" / "p.parquet", {"x": fixed_list(np.ones((2, 3), np.float32))})
    small = run_job(
        {
            "model": {"uri": model},
            "input": {"uri": str(tmp_path / "e"), "format": "parquet"},
            "output": {"uri": str(tmp_path / "out-small")},
        }
    )
    assert (
        not small.ok
        and "no row was scored: all 2 rows of 1 shard(s) were rejected at stage infer" in (small.job["error"])
    )
    assert "scoring validate CONFIG" in small.job["error"]
    assert read_errors(small.out).column("error").to_pylist() == ["Fail", "Fail"]


def test_rejected_rows_stay_out_of_the_record_that_reaches_the_driver(run_job, tmp_path: Path) -> None:
    n = 200_000
    values = pa.array([None if i % 2 else [0.5] * 4 for i in range(n)], pa.list_(pa.float32(), 4))
    write_parquet(tmp_path / "d" / "p.parquet", {"x": values})
    model = make_mlp(tmp_path / "m.onnx", (4, 2))
    result = run_job(
        {
            "model": {"uri": model},
            "input": {"uri": str(tmp_path / "d"), "format": "parquet"},
            "errors": {"max_rejected_rows": n},
        }
    )
    assert result.ok, result.job["error"]
    marker = Path(result.out) / "_progress" / "part-000000.json"
    assert marker.stat().st_size < 2000  # 100,000 rejected rows, a record of a few hundred bytes
    (rec,) = result.records
    assert rec.rows_failed == n // 2 and rec.rejected_by_stage == {"preprocess": n // 2}
    part = pq.read_table(Path(result.out) / "_errors" / "part-000000.parquet")
    merged = read_errors(result.out)
    assert part.num_rows == merged.num_rows == n // 2
    assert merged.column("row").to_pylist() == list(range(1, n, 2))
    assert set(merged.column("error").to_pylist()) == {"NullValue"}
    assert read_predictions(result.out).column("row").to_pylist() == list(range(0, n, 2))


def test_a_run_that_lost_the_output_folder_cannot_commit_into_it(tmp_path: Path) -> None:
    """The fence: a worker of an earlier run (its driver killed) finishing a shard after a new
    run claimed OUT writes nothing, and cannot overwrite the new run's files."""
    from scoring.fence import Fenced
    from scoring.folder import JobFolder
    from scoring.record import Reason, Rejections, ShardRecord

    out = str(tmp_path / "out")
    old, new = JobFolder(out, {}, "old-run"), JobFolder(out, {}, "new-run")
    old.fence.claim()
    with old.shard(0, "a") as late:
        late.write(pa.table({"x": [1]}))
        new.fence.claim()  # the old driver died; a resumed run takes over
        with new.shard(0, "a") as fresh:
            fresh.write(pa.table({"x": [2]}))
            fresh.commit(ShardRecord(0, "a"), Rejections(), "succeeded")
        rejected = Rejections()
        rejected.add(0, 1, Reason("infer", "X", "late"))
        with pytest.raises(Fenced, match="no longer held by run old-run"):
            late.commit(ShardRecord(0, "a"), rejected, "partial")
    assert pq.read_table(tmp_path / "out" / "predictions" / "part-000000.parquet").column(
        "x"
    ).to_pylist() == [2]
    assert not (tmp_path / "out" / "_errors").exists()
    assert (
        json.loads((tmp_path / "out" / "_progress" / "part-000000.json").read_text())["status"] == "succeeded"
    )
    assert os.listdir(tmp_path / "out" / "predictions") == ["part-000000.parquet"]  # no temp left
    new.fence.revoke()
    with pytest.raises(Fenced):
        with new.shard(1, "b") as after:
            after.commit(ShardRecord(1, "b"), Rejections(), "succeeded")
