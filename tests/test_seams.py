"""One contract per seam, run over every registered implementation (as fsspec tests every
filesystem): a format, an output, a preprocessor, a postprocessor or a runner added to
``scoring.registry`` is held to the same rules as the ones before it. A new input format or
output must bring a sample here (the tests fail until it does): that is how it joins.

Runners are held to theirs by every test parametrized with ``support.RUNNERS`` (all of them
registered): the same job gives the same predictions on each.
"""

from __future__ import annotations

import io
import pickle
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
from PIL import Image

from scoring import registry
from scoring.config import InputConfig, OutputConfig, Section
from scoring.config_file import load_config
from scoring.demo import make_mlp
from scoring.record import Reason

ROWS = 11  # every sample holds this many rows, ids 0..10, in at least two files


def _features(ids: range) -> pa.Table:
    x = np.random.default_rng(ids.start).standard_normal((len(ids), 4)).astype(np.float32)
    return pa.table(
        {
            "id": pa.array(list(ids), pa.int64()),
            "x": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), 4),
        }
    )


def _png(i: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8 + i, 6), (i * 20, 0, 0)).save(buf, "PNG")
    return buf.getvalue()


def parquet(tmp: Path) -> dict[str, Any]:
    (tmp / "d").mkdir()
    pq.write_table(_features(range(0, 5)), tmp / "d" / "a.parquet")
    pq.write_table(_features(range(5, ROWS)), tmp / "d" / "b.parquet", row_group_size=2)
    return {"uri": str(tmp / "d"), "format": "parquet", "columns": {"x": "x"}, "keep": ["id"]}


def image_files(tmp: Path) -> dict[str, Any]:
    for i in range(ROWS):
        folder = tmp / "d" / f"part={i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i:03d}.png").write_bytes(_png(i))
    return {"uri": str(tmp / "d"), "format": "images"}


def webdataset(tmp: Path) -> dict[str, Any]:
    (tmp / "d").mkdir()
    for t, ids in enumerate((range(0, 6), range(6, ROWS))):
        with tarfile.open(tmp / "d" / f"shard-{t:04d}.tar", "w") as tar:
            for i in ids:
                for ext, data in ((".png", _png(i)), (".cls", str(i).encode())):
                    info = tarfile.TarInfo(f"sample{i:04d}{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return {"uri": str(tmp / "d"), "format": "webdataset", "keep": ["cls"]}


def delta(tmp: Path) -> dict[str, Any]:
    from deltalake import write_deltalake

    uri = str(tmp / "t")
    write_deltalake(uri, _features(range(0, 6)))
    write_deltalake(uri, _features(range(6, ROWS)), mode="append")
    return {"uri": uri, "format": "delta", "columns": {"x": "x"}, "keep": ["id"]}


def iceberg(tmp: Path) -> dict[str, Any]:
    from pyiceberg.catalog import load_catalog

    props = {"type": "sql", "uri": f"sqlite:///{tmp / 'c.db'}", "warehouse": f"file://{tmp / 'wh'}"}
    catalog = load_catalog("default", **props)
    catalog.create_namespace("db")
    table = catalog.create_table("db.t", schema=_features(range(0, 1)).schema)
    table.append(_features(range(0, 6)))
    table.append(_features(range(6, ROWS)))
    return {"uri": "db.t", "format": "iceberg", "catalog": props, "columns": {"x": "x"}, "keep": ["id"]}


def _sound(i: int, fmt: str = "WAV") -> bytes:
    import soundfile

    buf = io.BytesIO()
    x = np.sin(np.arange(1600 + 160 * i, dtype=np.float32) * 0.05 * (i + 1))
    soundfile.write(buf, x, 16000, format=fmt)
    return buf.getvalue()


AUDIO = {"format": "audio", "audio": {"sample_rate": 16000}}


def audio_files(tmp: Path) -> dict[str, Any]:
    for i in range(ROWS):
        folder = tmp / "d" / f"day={i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i:03d}.wav").write_bytes(_sound(i))
    return {"uri": str(tmp / "d"), **AUDIO}


def audio_parquet(tmp: Path) -> dict[str, Any]:
    (tmp / "d").mkdir()
    for name, ids in (("a", range(0, 5)), ("b", range(5, ROWS))):
        table = pa.table({"id": list(ids), "audio": pa.array([_sound(i, "FLAC") for i in ids], pa.binary())})
        pq.write_table(table, tmp / "d" / f"{name}.parquet")
    return {"uri": str(tmp / "d"), "keep": ["id"], **AUDIO}


def audio_webdataset(tmp: Path) -> dict[str, Any]:
    (tmp / "d").mkdir()
    for t, ids in enumerate((range(0, 6), range(6, ROWS))):
        with tarfile.open(tmp / "d" / f"shard-{t:04d}.tar", "w") as tar:
            for i in ids:
                data = _sound(i, "FLAC")
                info = tarfile.TarInfo(f"clip{i:04d}.flac")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return {"uri": str(tmp / "d"), **AUDIO}


# Format name -> a sample of it, and the columns a job asks it for (a preprocessor's ``needs``
# and ``input.keep``). A format of registry.FORMATS without one fails below.
SAMPLES: dict[str, tuple[Callable[[Path], dict[str, Any]], list[str]]] = {
    "parquet": (parquet, ["id", "x"]),
    "image_files": (image_files, ["image"]),
    "webdataset": (webdataset, ["cls", "image"]),
    "delta": (delta, ["id", "x"]),
    "iceberg": (iceberg, ["id", "x"]),
    "audio_files": (audio_files, ["audio"]),
    "audio_parquet": (audio_parquet, ["audio", "id"]),
    "audio_webdataset": (audio_webdataset, ["audio"]),
}


def test_every_registered_format_has_a_sample() -> None:
    assert set(SAMPLES) == set(registry.FORMATS), "add a sample of the new format to SAMPLES"


def _config(inp: dict[str, Any], out: dict[str, Any] | None = None) -> Any:
    data = {"model": {"uri": "m.onnx"}, "input": inp, "output": out or {"uri": "o"}}
    return load_config(data=data, environ={})


@pytest.mark.parametrize("name", sorted(registry.FORMATS))
def test_a_format_lists_plans_and_reads_every_row_once_naming_where_it_came_from(
    name: str, tmp_path: Path
) -> None:
    from scoring.formats import list_input

    sample, columns = SAMPLES[name]
    cfg = _config(sample(tmp_path))
    fmt, files = list_input(cfg.input, {}, None)
    assert fmt.name == name and files
    assert issubclass(fmt.Options, InputConfig) and isinstance(cfg.input, fmt.Options)
    fmt = pickle.loads(pickle.dumps(fmt))  # it travels to the workers
    shards = fmt.plan(files, 7, 0)
    assert [s.index for s in shards] == list(range(7, 7 + len(shards)))
    assert all(s.format == name for s in shards)
    schema = fmt.schema(files, columns)
    assert set(columns) <= set(schema.names)
    schema = pa.schema([schema.field(c) for c in columns])
    names = [n for n, _ in fmt.provenance]
    seen: list[tuple[Any, ...]] = []
    for shard in shards:
        in_shard = 0
        for chunk in fmt.read(shard, schema, 4, None):
            assert chunk.data.schema == schema
            assert chunk.rejected.count == 0
            where = fmt.where(chunk, np.arange(chunk.data.num_rows))
            assert [f.name for f, _ in where] == names
            assert all(len(values) == chunk.data.num_rows for _, values in where)
            seen += zip(*(values.to_pylist() for _, values in where))
            in_shard += chunk.data.num_rows
        assert shard.rows in (None, in_shard)
        whole = fmt.every_row(shard, Reason("read", "Broken", "the whole shard"))
        if all(start >= 0 for _, start, _, _ in whole.ranges):
            assert whole.count == in_shard, "every_row names each row of the shard"
        else:  # a packed shard's rows per file are known once read: each of its files, whole
            assert {file for file, *_ in whole.ranges} == set(shard.files)
    assert len(seen) == ROWS and len(set(seen)) == ROWS, "each row once, told apart by its provenance"


# -- outputs ------------------------------------------------------------------------------------


def _iceberg_output(tmp: Path) -> dict[str, Any]:
    props = {"type": "sql", "uri": f"sqlite:///{tmp / 'out.db'}", "warehouse": f"file://{tmp / 'owh'}"}
    return {"format": "iceberg", "table": "scores.t", "catalog": props}


OUTPUT_SAMPLES: dict[str, Callable[[Path], dict[str, Any]]] = {
    "parquet": lambda tmp: {"format": "parquet"},  # the sample input: parquet()
    "delta": lambda tmp: {"format": "delta"},
    "iceberg": _iceberg_output,
}


def _committed(name: str, out: dict[str, Any], uri: Path) -> pa.Table:
    """The predictions as the output's own library reads them back."""
    if name == "delta":
        from deltalake import DeltaTable

        return pa.table(DeltaTable(str(uri / "predictions")).to_pyarrow_table())
    if name == "iceberg":
        from pyiceberg.catalog import load_catalog

        return load_catalog("default", **out["catalog"]).load_table(out["table"]).scan().to_arrow()
    return pads.dataset(uri / "predictions", format="parquet").to_table()


def test_every_registered_output_has_a_sample() -> None:
    assert set(OUTPUT_SAMPLES) == set(registry.OUTPUTS), "add a sample of the new output to OUTPUT_SAMPLES"


@pytest.mark.parametrize("name", sorted(registry.OUTPUTS))
def test_an_output_commits_every_row_once_readable_by_its_own_library(
    run_job, name: str, tmp_path: Path
) -> None:
    model = make_mlp(tmp_path / "m.onnx", (4, 3))
    out = {**OUTPUT_SAMPLES[name](tmp_path), "uri": str(tmp_path / "out")}
    cls = registry.load(registry.OUTPUTS[name])
    assert issubclass(cls.Options, OutputConfig) and cls.name == name
    cfg = {"model": {"uri": model}, "input": parquet(tmp_path), "output": out}
    result = run_job(cfg)
    assert result.ok, result.job["error"]
    for _ in range(2):  # the Parquet files under predictions/ are readable at every moment
        files = pads.dataset(tmp_path / "out" / "predictions").to_table().column("id").to_pylist()
        # A versioned output keeps the files of the table's earlier versions: the table says which.
        assert sorted(set(files) if cls.versioned else files) == list(range(ROWS))
        table = _committed(name, out, tmp_path / "out")
        assert sorted(table.column("id").to_pylist()) == list(range(ROWS))
        result = run_job({**cfg, "output": {**out, "mode": "overwrite"}})  # a second run: still once
        assert result.ok, result.job["error"]


# -- preprocessors and postprocessors ----------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(registry.PREPROCESSORS))
def test_a_preprocessor_module_has_the_seams_functions(name: str) -> None:
    module = registry.load(registry.PREPROCESSORS[name])
    assert callable(module.needs) and callable(module.resolve)
    assert (module.__doc__ or "").strip(), "its docstring is what docs and --help say of it"
    # What preprocess.name picks: input.function, input.text, a model of encoded bytes, or what
    # the input's rows hold.
    used = {entry.data for entry in registry.INPUTS.values()} | {"function", "text", "encoded"}
    assert name in used, f"no input.format reads rows as {name!r}"


@pytest.mark.parametrize("key", sorted(registry.POSTPROCESSORS))
def test_a_postprocessor_has_a_documented_section_and_is_off_unless_set(key: str, tmp_path: Path) -> None:
    from scoring.model import load_model_info
    from scoring.postprocess import resolve

    module = registry.load(registry.POSTPROCESSORS[key])
    if isinstance(module.Config, type) and issubclass(module.Config, Section):
        undocumented = [n for n, f in module.Config.model_fields.items() if not f.description]
        assert not undocumented, f"output.{key}: describe {undocumented} (the config reference shows it)"
    else:  # a key of one value (output.function: FILE.py:NAME): its docstring describes it
        assert module.Config in (str, int, float, bool), module.Config
    assert (module.__doc__ or "").strip()
    cfg = _config(parquet(tmp_path))
    assert getattr(cfg.output, key) is None
    info, _ = load_model_info(make_mlp(tmp_path / "m.onnx", (4, 3)), {})
    assert [p.key for p in resolve(cfg, info)] == []


def test_postprocessor_keys_are_no_other_output_key() -> None:
    plain = set(OutputConfig.model_fields)
    assert not plain & set(registry.POSTPROCESSORS)


@pytest.mark.parametrize("name", sorted(registry.RUNNERS))
def test_a_runner_has_the_runner_protocol(name: str) -> None:
    from scoring.runners import Runner

    cls = registry.load(registry.RUNNERS[name])
    for method in [m for m in dir(Runner) if not m.startswith("_")]:
        assert callable(getattr(cls, method, None)), f"{name} runner lacks {method}"
