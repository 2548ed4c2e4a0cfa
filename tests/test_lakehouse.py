"""Lakehouse tables in and out, on tables that ``deltalake`` and ``pyiceberg`` write here: a
write, an overwrite, an append, a delete, a renamed column, a column added later, partitions of
several types. What a job scores is compared with what those libraries' own readers give for the
same version — never with scoring's reader — and predictions are committed as tables that those
libraries read back.
"""

from __future__ import annotations

import datetime
import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from scoring import storage, store_options
from scoring.demo import make_mlp
from scoring.errors import InputError, PlanChanged

deltalake = pytest.importorskip("deltalake")
pyiceberg_catalog = pytest.importorskip("pyiceberg.catalog")

PARTITIONS = ["day", "region", "bucket"]
REGIONS = ["eu west/1", "us-east", "a=b%c"]  # a slash, a space, an equals sign and a percent


def rows(first: int, stop: int) -> pa.Table:
    """Rows ``first..stop``: an id, 8 features, and partition columns of three types."""
    ids = np.arange(first, stop)
    x = np.random.default_rng(first).standard_normal((stop - first, 8)).astype(np.float32)
    return pa.table(
        {
            "id": pa.array(ids, pa.int64()),
            "features": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), 8),
            "day": pa.array([datetime.date(2024, 1, 1 + int(i) % 3) for i in ids]),
            "region": pa.array([REGIONS[int(i) % 3] for i in ids]),
            "bucket": pa.array(ids % 2, pa.int32()),
        }
    )


def job(uri: str, fmt: str, model: str, out: Path, keep: list[Any], **inp: Any) -> dict[str, Any]:
    return {
        "model": {"uri": model},
        "input": {"uri": uri, "format": fmt, "columns": {"x": "features"}, "keep": keep, **inp},
        "output": {"uri": str(out)},
        "compute": {"batch_size": 64},
    }


def scored(out: Path) -> pa.Table:
    """Every prediction row, read as one dataset, by id."""
    return pads.dataset(out / "predictions", format="parquet").to_table().sort_by("id")


def check_against(
    preds: pa.Table, expected: pa.Table, model: str, kept: list[str], so: dict[str, Any] | None = None
) -> None:
    """The predictions are the expected rows, once each, with their kept values and the model's
    outputs for their features; ``file`` and ``row`` find each row in its data file."""
    expected, preds = expected.sort_by("id"), preds.sort_by("id")
    assert preds.column("id").to_pylist() == expected.column("id").to_pylist()
    for name in kept:
        assert preds.column(name).type == expected.column(name).type, name
        assert preds.column(name).to_pylist() == expected.column(name).to_pylist(), name
    x = np.stack(expected.column("features").to_numpy(zero_copy_only=False)).astype(np.float32)
    (probs,) = ort.InferenceSession(model).run(None, {"x": x})
    np.testing.assert_allclose(
        np.stack(preds.column("probs").to_numpy(zero_copy_only=False)), probs, rtol=1e-5
    )
    for r in preds.slice(0, 5).to_pylist():  # file and row: its position in the data file
        data = pq.read_table(pa.BufferReader(storage.read_bytes(r["file"], so or {})))
        found = data.slice(r["row"], 1).to_pylist()[0]
        assert r["id"] in found.values()  # the id, under its name or column mapping's physical one


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> str:
    return make_mlp(tmp_path_factory.mktemp("model") / "mlp.onnx", (8, 4))


# -- Delta ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def delta(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A column-mapped, partitioned table (write, overwrite, append, delete: versions 0-3) and a
    plain one whose later files add a column."""
    from deltalake import DeltaTable, write_deltalake

    folder = tmp_path_factory.mktemp("delta")
    mapped = str(folder / "events")
    write_deltalake(
        mapped, rows(0, 300), partition_by=PARTITIONS, configuration={"delta.columnMapping.mode": "name"}
    )
    write_deltalake(mapped, rows(1000, 1300), partition_by=PARTITIONS, mode="overwrite")
    write_deltalake(mapped, rows(2000, 2200), partition_by=PARTITIONS, mode="append")
    DeltaTable(mapped).delete("id % 10 = 0")
    plain = str(folder / "plain")
    write_deltalake(plain, rows(0, 200), partition_by=["bucket"])
    later = rows(200, 260).append_column("hint", pa.array(np.arange(60, dtype=np.float64)))
    write_deltalake(plain, later, partition_by=["bucket"], mode="append", schema_mode="merge")
    return {"mapped": mapped, "plain": plain}


def delta_rows(uri: str, version: int | None = None) -> pa.Table:
    """The table as delta-rs itself reads it (its DataFusion scan)."""
    from deltalake import DeltaTable

    return plain(pa.table(DeltaTable(uri, version=version).scan()))


def plain(table: pa.Table) -> pa.Table:
    """``table`` with the view types DataFusion reads strings as, as plain ones."""
    views = {pa.string_view(): pa.string(), pa.binary_view(): pa.binary()}
    return table.cast(pa.schema([f.with_type(views.get(f.type, f.type)) for f in table.schema]))


def test_a_delta_table_is_scored_at_its_version_and_nothing_else(
    run_job, tmp_path: Path, delta: dict[str, Any], model: str
) -> None:
    mapped = delta["mapped"]
    result = run_job(job(mapped, "delta", model, tmp_path / "latest", ["id", *PARTITIONS]))
    assert result.ok, result.job["error"]
    expected = delta_rows(mapped)
    assert expected.num_rows == 450  # 300 overwritten, 500 written since, 50 deleted
    check_against(scored(tmp_path / "latest"), expected, model, PARTITIONS)
    assert result.job["input"] | {"table": None} == {
        "format": "delta",
        "table": None,
        "version": 3,
        "files": len(deltalake.DeltaTable(mapped).file_uris()),
        "rows": 450,
        "files_with_deletes": 0,
        "rows_deleted": 0,
    }
    # Delta has no fixed-size list: a table made of files that store one (pyarrow's, converted)
    # reads them as the files store them, as a Parquet folder would (no copy on the way to ORT).
    from scoring.config_file import load_config
    from scoring.formats import list_input

    converted = tmp_path / "converted"
    converted.mkdir()
    pq.write_table(rows(0, 50), converted / "part-0.parquet")
    deltalake.convert_to_deltalake(str(converted))
    cfg = load_config(data=job(str(converted), "delta", model, tmp_path / "x", []), environ={})
    fmt, files = list_input(cfg.input, {})
    assert fmt.schema(files, ["features"]).field("features").type == pa.list_(pa.float32(), 8)
    old = run_job(job(mapped, "delta", model, tmp_path / "v1", ["id", "day"], version=1))
    assert old.ok and old.job["input"]["version"] == 1
    check_against(scored(tmp_path / "v1"), delta_rows(mapped, 1), model, ["day"])
    # A column added later is null in the files written before it.
    plain = run_job(job(delta["plain"], "delta", model, tmp_path / "plain", ["id", "hint", "bucket"]))
    assert plain.ok, plain.job["error"]
    check_against(scored(tmp_path / "plain"), delta_rows(delta["plain"]), model, ["hint", "bucket"])
    # The same folder listed as Parquet would score every version's files: refused.
    for uri in (mapped, str(Path(mapped).parent)):
        with pytest.raises(
            InputError, match=r"events is a Delta table .* Read it at one version with input.format: delta"
        ):
            run_job(job(uri, "parquet", model, tmp_path / "wrong", ["id"]))
    assert not (tmp_path / "wrong").exists()


def test_ray_workers_read_a_table_as_the_driver_planned_it(
    run_job, tmp_path: Path, delta: dict[str, Any], model: str
) -> None:
    """The format travels to Ray actors with what the log said of each file (partition values,
    physical names)."""
    cfg = job(delta["mapped"], "delta", model, tmp_path / "out", ["id", *PARTITIONS])
    result = run_job({**cfg, "compute": {"runner": "ray", "actors": 2, "batch_size": 64}})
    assert result.ok, result.job["error"]
    check_against(scored(tmp_path / "out"), delta_rows(delta["mapped"]), model, PARTITIONS)
    import ray

    assert ray.data.read_parquet(str(tmp_path / "out" / "predictions")).count() == 450


def test_validate_shows_the_table_version_files_and_rows(
    delta: dict[str, Any], model: str, tmp_path: Path
) -> None:
    from scoring.config_file import load_config
    from scoring.validate import format_preview, validate

    cfg = load_config(data=job(delta["mapped"], "delta", model, tmp_path / "o", ["id"]), environ={})
    text = format_preview(validate(cfg))
    files = len(deltalake.DeltaTable(delta["mapped"]).file_uris())
    assert f"delta table {delta['mapped']} at version 3: {files} live data file(s), 450 live row(s)" in text


def add_deletion_vector(uri: str, positions: list[int]) -> str:
    """Delete rows of the table's first data file by a deletion vector; the file's path.

    delta-rs reads deletion vectors but writes none (its DELETE rewrites files), and no Spark
    runs here, so the vector is written as the Delta protocol lays it out — a RoaringBitmapArray
    (magic, one 32-bit bucket) in a file of format version 1 with its size and CRC, named by
    absolute path (storage type ``p``) in a remove + add commit. delta-rs' own scan is the check
    that it is one."""
    import struct
    import uuid
    import zlib

    from pyroaring import BitMap

    version = deltalake.DeltaTable(uri).version()
    adds: dict[str, Any] = {}
    for v in range(version + 1):
        for line in Path(f"{uri}/_delta_log/{v:020d}.json").read_text().splitlines():
            action = json.loads(line)
            adds.pop((action.get("remove") or {}).get("path"), None)
            if "add" in action:
                adds[action["add"]["path"]] = action["add"]
    path, add = sorted(adds.items())[0]
    data = struct.pack("<Iq", 1681511377, 1) + struct.pack("<I", 0) + BitMap(positions).serialize()
    vector = Path(uri) / f"deletion_vector_{uuid.uuid4()}.bin"
    vector.write_bytes(bytes([1]) + struct.pack(">i", len(data)) + data + struct.pack(">I", zlib.crc32(data)))
    dv = {"storageType": "p", "pathOrInlineDv": f"file://{vector}", "offset": 1, "sizeInBytes": len(data)}
    now = int(time.time() * 1000)
    actions = [
        {"commitInfo": {"timestamp": now, "operation": "DELETE", "operationParameters": {}}},
        {"remove": {"path": path, "deletionTimestamp": now, "dataChange": True, "size": add["size"]}},
        {"add": add | {"dataChange": True, "deletionVector": dv | {"cardinality": len(positions)}}},
    ]
    with open(f"{uri}/_delta_log/{version + 1:020d}.json", "x") as f:
        f.write("\n".join(json.dumps(a) for a in actions) + "\n")
    return path


def test_deletion_vectors_leave_their_rows_out_wherever_the_file_is_cut(
    run_job, tmp_path: Path, model: str
) -> None:
    from deltalake import DeltaTable, TableFeatures, WriterProperties, write_deltalake

    uri = str(tmp_path / "dv")
    write_deltalake(uri, rows(0, 4000), writer_properties=WriterProperties(max_row_group_size=500))
    DeltaTable(uri).alter.add_feature([TableFeatures.DeletionVectors], allow_protocol_versions_increase=True)
    gone = [3, 5, 7, 1200, 1201, 3999]
    add_deletion_vector(uri, gone)
    expected = delta_rows(uri)
    assert expected.num_rows == 4000 - len(gone)  # delta-rs applies the vector
    for name, per_shard in (("whole", 10_000), ("split", 1000)):  # one shard, and row ranges
        result = run_job(job(uri, "delta", model, tmp_path / name, ["id"], rows_per_shard=per_shard))
        assert result.ok, result.job["error"]
        check_against(scored(tmp_path / name), expected, model, [])
        assert result.job["input"]["files_with_deletes"] == 1 and result.job["input"]["rows_deleted"] == 6
        assert sum(s["rows"] for s in pq.read_table(tmp_path / name / "_shards.parquet").to_pylist()) == 3994
    assert pq.read_table(tmp_path / "split" / "_shards.parquet").num_rows == 4
    rows_of = {r["id"]: r["row"] for r in scored(tmp_path / "split").to_pylist()}
    assert rows_of[8] == 8 and rows_of[1202] == 1202  # rows keep their place in the file


def test_a_tables_image_column_is_decoded_when_named(run_job, tmp_path: Path) -> None:
    from deltalake import write_deltalake
    from test_formats import cnn_probs
    from test_images import samples

    from scoring.demo import make_cnn

    pics = [samples()[k] for k in ("photo.jpg", "rgb.png", "grey.png")]
    uri = str(tmp_path / "photos")
    write_deltalake(uri, pa.table({"id": [1, 2, 3], "image": pa.array(pics, pa.binary())}))
    cnn = make_cnn(tmp_path / "cnn.onnx", size=24, classes=3)
    from test_images import MEAN, STD

    cfg = {
        "model": {"uri": cnn},
        "input": {
            "uri": uri,
            "format": "delta",
            "image_column": "image",
            "keep": ["id"],
            "image": {"mean": MEAN, "std": STD},
        },
    }
    result = run_job(cfg)
    assert result.ok, result.job["error"]
    got = np.stack(scored(Path(result.out)).column("probs").to_numpy(zero_copy_only=False))
    np.testing.assert_allclose(got, cnn_probs(cnn, pics, 24), atol=2e-3)


# -- Iceberg ----------------------------------------------------------------------------------


def sql_catalog(folder: Path, warehouse: str | None = None, **io: str) -> dict[str, str]:
    """pyiceberg's SQL catalog on SQLite: the properties a job config names."""
    return {
        "type": "sql",
        "uri": f"sqlite:///{folder / 'catalog.db'}",
        "warehouse": warehouse or f"file://{folder / 'wh'}",
        **io,
    }


@pytest.fixture(scope="module")
def iceberg(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """db.events: identity partitions of three types; append, overwrite, append, delete (the
    snapshot ``before_delete`` pinned), then ``region`` renamed ``area`` and ``hint`` added, and
    one more append that has it."""
    folder = tmp_path_factory.mktemp("iceberg")
    props = sql_catalog(folder)
    catalog = pyiceberg_catalog.load_catalog("default", **props)
    catalog.create_namespace("db")
    first = rows(0, 300)
    table = catalog.create_table("db.events", schema=first.schema)
    with table.update_spec() as spec:
        for name in PARTITIONS:
            spec.add_identity(name)
    table.append(first)
    table.overwrite(rows(1000, 1300))
    table.append(rows(2000, 2200))
    before = table.current_snapshot().snapshot_id
    table.delete("id < 1100")
    with table.update_schema() as schema:
        schema.rename_column("region", "area")
        schema.add_column("hint", pyiceberg_types().DoubleType())
    later = rows(3000, 3060).rename_columns(["id", "features", "day", "area", "bucket"])
    table = catalog.load_table("db.events")
    table.append(later.append_column("hint", pa.array(np.ones(60))))
    table = catalog.load_table("db.events")
    return {"catalog": props, "table": table, "before_delete": before, "folder": folder}


def pyiceberg_types() -> Any:
    import pyiceberg.types

    return pyiceberg.types


def test_an_iceberg_table_by_its_catalog_metadata_or_folder(
    run_job, tmp_path: Path, iceberg: dict[str, Any], model: str
) -> None:
    table = iceberg["table"]
    expected = table.scan().to_arrow()  # pyiceberg's own reader
    assert expected.num_rows == 460 and expected.column("hint").null_count == 400
    keep = ["id", "day", "area", "bucket", "hint"]
    by_catalog = run_job(job("db.events", "iceberg", model, tmp_path / "c", keep, catalog=iceberg["catalog"]))
    assert by_catalog.ok, by_catalog.job["error"]
    check_against(scored(tmp_path / "c"), expected, model, ["day", "area", "bucket", "hint"])
    assert by_catalog.job["input"]["version"] == table.current_snapshot().snapshot_id
    folder = str(Path(table.location().removeprefix("file://")))
    for i, uri in enumerate((table.metadata_location.removeprefix("file://"), folder)):
        result = run_job(job(uri, "iceberg", model, tmp_path / f"s{i}", keep))
        assert result.ok, result.job["error"]
        assert (
            scored(tmp_path / f"s{i}").column("id").to_pylist()
            == scored(tmp_path / "c").column("id").to_pylist()
        )
    # An older snapshot reads with its own schema (region, before the rename), deletes not yet made.
    before = iceberg["before_delete"]
    old = run_job(
        job(
            "db.events",
            "iceberg",
            model,
            tmp_path / "old",
            ["id", "region"],
            catalog=iceberg["catalog"],
            version=before,
        )
    )
    assert old.ok, old.job["error"]
    check_against(scored(tmp_path / "old"), table.scan(snapshot_id=before).to_arrow(), model, ["region"])
    with pytest.raises(InputError, match=r"is an Iceberg table .* input.format: iceberg"):
        run_job(job(folder + "/data", "parquet", model, tmp_path / "wrong", ["id"]))


# -- resume: the pinned version, and what a table appended since ------------------------------


def test_resume_reads_the_pinned_version_and_latest_adds_what_was_appended(
    run_job, tmp_path: Path, model: str
) -> None:
    from deltalake import DeltaTable, write_deltalake

    uri = str(tmp_path / "growing")
    write_deltalake(uri, rows(0, 100))
    write_deltalake(uri, rows(100, 200), mode="append")
    cfg = job(uri, "delta", model, tmp_path / "out", ["id"], rows_per_shard=100)  # a shard a file
    first = run_job(cfg)
    assert first.ok and first.job["input"]["version"] == 1
    write_deltalake(uri, rows(200, 260), mode="append")  # version 2
    messages: list[str] = []
    cfg["output"]["mode"] = "resume"
    pinned = run_job(cfg, echo=messages.append)
    assert (
        pinned.ok and pinned.job["input"]["version"] == 1 and "scoring 0 of 2 shard(s)" in " ".join(messages)
    )
    assert scored(tmp_path / "out").num_rows == 200
    messages.clear()
    latest = run_job({**cfg, "input": {**cfg["input"], "version": "latest"}}, echo=messages.append)
    assert latest.ok and latest.job["input"]["version"] == 2
    assert (
        f"{uri} moved from version 1 to 2: 1 new data file(s), 60 new row(s), in 1 new shard(s)" in messages
    )
    check_against(scored(tmp_path / "out"), delta_rows(uri), model, [])
    DeltaTable(uri).delete("id = 150")  # version 3 rewrites a planned file
    with pytest.raises(
        PlanChanged, match=r"is not in delta table .* at version 3: a newer version removed or rewrote it"
    ):
        run_job({**cfg, "input": {**cfg["input"], "version": "latest"}})
    vacuumed = [f for f in DeltaTable(uri, version=2).file_uris() if f not in DeltaTable(uri).file_uris()]
    os.remove(vacuumed[0])  # what VACUUM does to a file no longer in the latest version
    with pytest.raises(InputError, match=r"at version 2 lists 1 data file\(s\) that are gone from storage"):
        run_job(cfg)


# -- predictions as a table -------------------------------------------------------------------


def delta_commits(uri: Path) -> list[dict[str, Any]]:
    """The table's commits, oldest first, as delta-rs reports them."""
    return list(reversed(deltalake.DeltaTable(str(uri)).history()))


def test_predictions_are_committed_into_a_delta_table_once_per_completing_run(
    run_job, tmp_path: Path, model: str
) -> None:
    from deltalake import DeltaTable, write_deltalake

    uri = str(tmp_path / "input")
    write_deltalake(uri, rows(0, 100))
    write_deltalake(uri, rows(100, 150), mode="append")
    cfg = job(uri, "delta", model, tmp_path / "out", ["id"], rows_per_shard=50)  # a shard a file
    cfg["output"]["format"] = "delta"
    first = run_job(cfg)
    assert first.ok, first.job["error"]
    table = tmp_path / "out" / "predictions"
    check_against(plain(pa.table(DeltaTable(str(table)).scan())), delta_rows(uri), model, [])
    (create,) = delta_commits(table)
    assert create["scoring.job-id"] == first.job["job_id"] and create["scoring.input-version"] == "1"
    assert create["scoring.model-sha256"] == first.job["model"]["sha256"]
    from scoring.report import summary

    assert f"committed: 2 file(s), 150 row(s) to the delta table {table} (version 0)" in summary(
        first.record, []
    )
    assert f"input: delta table {uri} at version 1" in summary(first.record, [])
    assert first.job["output"]["committed"] == {
        "format": "delta",
        "table": str(table),
        "version": 0,
        "files": 2,
        "rows": 150,
    }
    # An incremental resume commits its new shard in one more; nothing is committed twice.
    write_deltalake(uri, rows(150, 190), mode="append")
    cfg["output"]["mode"] = "resume"
    again = run_job({**cfg, "input": {**cfg["input"], "version": "latest"}})
    assert again.ok and again.job["output"]["committed"]["files"] == 1
    assert again.job["output"]["committed"]["version"] == 1 == DeltaTable(str(table)).version()
    assert [c["operation"] for c in delta_commits(table)] == ["CREATE TABLE", "WRITE"]
    assert len(DeltaTable(str(table)).file_uris()) == 3
    check_against(plain(pa.table(DeltaTable(str(table)).scan())), delta_rows(uri), model, [])
    assert run_job(cfg).job["output"]["committed"] is None  # a resume with nothing new commits nothing
    # --mode overwrite: the table's contents replaced in one commit; its old files stay readable
    # to readers of its old versions until the new one lands.
    cfg["output"]["mode"] = "overwrite"
    replaced = run_job(cfg)
    assert replaced.ok, replaced.job["error"]
    commits = delta_commits(table)
    assert [c["operation"] for c in commits] == ["CREATE TABLE", "WRITE", "WRITE"]
    assert commits[-1]["operationParameters"]["mode"] == "Overwrite"
    check_against(plain(pa.table(DeltaTable(str(table)).scan())), delta_rows(uri), model, [])
    assert pa.table(DeltaTable(str(table), version=1).scan()).num_rows == 190  # time travel still reads


def test_predictions_are_committed_into_an_iceberg_table(
    run_job, tmp_path: Path, delta: dict[str, Any], model: str
) -> None:
    catalog = sql_catalog(tmp_path)
    cfg = job(delta["plain"], "delta", model, tmp_path / "out", ["id", "bucket"])
    cfg["output"] |= {"format": "iceberg", "table": "scores.events", "catalog": catalog}
    first = run_job(cfg)
    assert first.ok, first.job["error"]
    table = pyiceberg_catalog.load_catalog("default", **catalog).load_table("scores.events")
    check_against(table.scan().to_arrow(), delta_rows(delta["plain"]), model, ["bucket"])
    summary = table.current_snapshot().summary
    assert summary["scoring.job-id"] == first.job["job_id"] and summary["scoring.input-version"] == "1"
    assert summary["scoring.input-format"] == "delta"
    cfg["output"]["mode"] = "overwrite"
    assert run_job(cfg).ok
    table = pyiceberg_catalog.load_catalog("default", **catalog).load_table("scores.events")
    check_against(table.scan().to_arrow(), delta_rows(delta["plain"]), model, ["bucket"])
    assert [s.summary.operation.value for s in table.snapshots()] == ["append", "delete", "append"]
    assert (
        json.loads((tmp_path / "out" / "_job.json").read_text())["output"]["committed"]["table"]
        == "scores.events"
    )


# -- faults: a signal before the commit, a commit that fails ----------------------------------


def test_ctrl_c_before_the_commit_leaves_no_table_and_resume_commits_every_row_once(tmp_path: Path) -> None:
    from deltalake import DeltaTable, write_deltalake
    from support import run_to_end, start_run

    heavy = make_mlp(tmp_path / "heavy.onnx", (8, 512, 512, 4))  # ~0.3 s a shard: time to stop it
    uri = str(tmp_path / "input")
    for i in range(6):
        write_deltalake(uri, rows(i * 20_000, (i + 1) * 20_000), mode="append")
    cfg = job(uri, "delta", heavy, tmp_path / "out", ["id"], rows_per_shard=20_000)
    cfg["output"]["format"] = "delta"
    cfg["compute"] |= {"runner": "local", "actors": 1, "shards_in_flight": 1, "batch_size": 4096}
    path = tmp_path / "job.yaml"
    path.write_text(json.dumps(cfg))
    proc = start_run(path)
    progress = tmp_path / "out" / "_progress"
    deadline = time.monotonic() + 120
    while len(list(progress.glob("*.json")) if progress.exists() else []) < 2:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    table = tmp_path / "out" / "predictions"
    assert not DeltaTable.is_deltatable(str(table))  # nothing visible to a table reader
    assert pads.dataset(table, format="parquet").to_table().num_rows >= 2 * 20_000  # the files are
    resumed = run_to_end(path, "--mode", "resume")
    assert resumed.returncode == 0, resumed.stderr
    ids = pa.table(DeltaTable(str(table)).scan()).column("id").to_numpy()
    np.testing.assert_array_equal(np.sort(ids), np.arange(6 * 20_000))
    assert len(DeltaTable(str(table)).file_uris()) == 6 and DeltaTable(str(table)).version() == 0


def test_a_commit_the_store_refuses_fails_the_run_and_resume_commits(
    run_job, tmp_path: Path, s3: Any, model: str
) -> None:
    """The store goes down at the commit (every shard scored): the run fails saying so, the files
    stay, and the resume commits them — in one commit, all of them."""
    from deltalake import DeltaTable, write_deltalake
    from deltalake.exceptions import TableNotFoundError
    from support import TcpProxy, options

    endpoint, fs = s3
    uri = str(tmp_path / "input")
    write_deltalake(uri, rows(0, 300))
    out = "s3://results/tables-commit"
    proxy = TcpProxy(endpoint)
    commit = b"PUT /results/tables-commit/predictions/_delta_log/00000000000000000000.json"
    proxy.stall_at(commit, mode="refuse")
    back = threading.Thread(
        target=lambda: (wait_until(lambda: proxy.stalled_at), time.sleep(3), proxy.set("pass"))
    )
    back.start()
    cfg = job(uri, "delta", model, tmp_path / "unused", ["id"])
    cfg["output"] = {"uri": out, "format": "delta"}
    cfg["storage_options"] = options(proxy.endpoint)
    try:
        failed = run_job(cfg)
        back.join()
        assert not failed.ok and failed.job["status"] == "failed"
        assert (
            "committing 1 prediction file(s) to the Delta table s3://results/tables-commit/predictions"
            in failed.job["error"]
        )
        assert "run again with --mode resume to commit them" in failed.job["error"]
        so = storage_options(options(endpoint), out)
        with pytest.raises(TableNotFoundError):  # nothing visible to a table reader
            DeltaTable(f"{out}/predictions", storage_options=so)
        resumed = run_job({**cfg, "output": {**cfg["output"], "mode": "resume"}})
        assert resumed.ok, resumed.job["error"]
        assert resumed.job["output"]["committed"]["files"] == 1
        ids = pa.table(DeltaTable(f"{out}/predictions", storage_options=so).scan()).column("id").to_numpy()
        np.testing.assert_array_equal(np.sort(ids), np.arange(300))
    finally:
        proxy.close()


def wait_until(condition: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def storage_options(fsspec: dict[str, Any], uri: str) -> dict[str, str]:

    return store_options.object_store_options(uri, fsspec)


# -- in object storage ------------------------------------------------------------------------


def test_tables_in_a_bucket_are_read_and_written(run_job, tmp_path: Path, s3: Any, model: str) -> None:
    """A Delta and an Iceberg table on the loopback S3 server, read at their versions with the job's
    storage_options; predictions committed as a Delta table and into an Iceberg table there."""
    from deltalake import DeltaTable, write_deltalake
    from support import options

    endpoint, fs = s3
    so = options(endpoint)
    lake = "s3://data/lake/events"
    write_deltalake(lake, rows(0, 200), partition_by=["bucket"], storage_options=storage_options(so, lake))
    write_deltalake(
        lake,
        rows(200, 300),
        partition_by=["bucket"],
        mode="overwrite",
        storage_options=storage_options(so, lake),
    )
    cfg = job(lake, "delta", model, tmp_path / "unused", ["id", "bucket"])
    cfg["output"] = {"uri": "s3://results/tables-delta", "format": "delta"}
    cfg["storage_options"] = so
    result = run_job(cfg)
    assert result.ok, result.job["error"]
    written = DeltaTable("s3://results/tables-delta/predictions", storage_options=storage_options(so, lake))
    check_against(
        plain(pa.table(written.scan())),
        plain(pa.table(DeltaTable(lake, storage_options=storage_options(so, lake)).scan())),
        model,
        ["bucket"],
        so,
    )

    io = {
        "s3.endpoint": endpoint,
        "s3.access-key-id": "testing",
        "s3.secret-access-key": "testing",
        "s3.region": "us-east-1",
    }
    catalog = sql_catalog(tmp_path, warehouse="s3://data/wh")
    created = pyiceberg_catalog.load_catalog("default", **catalog, **io)
    created.create_namespace("db")
    table = created.create_table("db.events", schema=rows(0, 1).schema)
    table.append(rows(0, 150))
    table.delete("id < 50")
    cfg = job("db.events", "iceberg", model, tmp_path / "unused", ["id", "region"], catalog=catalog)
    cfg["output"] = {
        "uri": "s3://results/tables-iceberg",
        "format": "iceberg",
        "table": "db.scores",
        "catalog": catalog,
    }
    cfg["storage_options"] = so
    result = run_job(cfg)
    assert result.ok, result.job["error"]
    scores = pyiceberg_catalog.load_catalog("default", **catalog, **io).load_table("db.scores")
    check_against(
        scores.scan().to_arrow(), created.load_table("db.events").scan().to_arrow(), model, ["region"], so
    )
