"""The Python API: scoring.run, and scoring.predict on Ray Datasets, on a real local Ray."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import models
import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pytest
import yaml
from support import features_job, fixed_list, write_parquet

import scoring
from scoring.demo import make_mlp, write_tables
from scoring.errors import ConfigError, InputError


def test_run_takes_a_file_or_a_dict_and_overrides(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = make_mlp(tmp_path / "m.onnx", (8, 3))
    write_tables(tmp_path / "d", files=2, rows=100, features=8)
    cfg = {**features_job(tmp_path / "d", model, keep=["id"]), "output": {"uri": str(tmp_path / "o")}}
    cfg["compute"] = {"runner": "local"}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(cfg))
    result = scoring.run(path, overrides={"compute.batch_size": 7})
    assert result.ok and result.job["totals"]["rows"] == 200
    assert result.job["config"]["compute"]["batch_size"] == 7 and result.out == str(tmp_path / "o")
    assert capsys.readouterr() == ("", "")  # nothing printed unless asked
    again = scoring.run(
        cfg, overrides={"output.mode": "overwrite", "output.outputs": {"p": "probs"}}, progress=True
    )
    assert again.ok and again.records[0].rows == 200
    shown = capsys.readouterr().out
    assert "checking the config" in shown and "[1/1]" in shown and "status: " not in shown
    with pytest.raises(InputError, match="no column 'nope'"):
        scoring.run(cfg, overrides={"input.columns": {"x": "nope"}, "output.mode": "overwrite"})


QUIET = """
import pyarrow as pa, ray, scoring
ray.init(logging_level="ERROR", log_to_driver=False)  # Ray's own start-up notices: the user's call
ds = ray.data.from_arrow(pa.table({"id": list(range(64)), "x": [[1.0] * 8] * 64}))
scored = scoring.predict(ds, model=MODEL, keep=["id"], batch_size=16, actors=1)
print(len(scored.take_all()))
"""


def test_predict_prints_nothing_unless_asked(tmp_path: Path) -> None:
    """In a fresh process, as a user's script: scoring.predict and the run of its Dataset add no
    line — no Ray Data bars or execution lines, no warning about actor arguments."""
    model = make_mlp(tmp_path / "m.onnx", (8, 3))
    code = QUIET.replace("MODEL", repr(model))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "64\n" and proc.stderr == "", proc.stdout + proc.stderr


def test_predict_on_a_dataset_with_the_job_rules_and_postprocess(ray_session: Any, tmp_path: Path) -> None:
    model = models.classifier(tmp_path / "c.onnx", metadata={"character": "0,90,180,270"})
    x = np.random.default_rng(3).standard_normal((300, 8))  # float64: cast to the model's float32
    write_parquet(tmp_path / "d" / "a.parquet", {"id": np.arange(300), "feats": fixed_list(x)})
    ds = ray_session.data.read_parquet(str(tmp_path / "d"))
    scored = scoring.predict(
        ds,
        model=model,
        columns={"x": "feats"},
        keep=["id", {"source_id": "id"}],
        outputs={"probs": "probs"},
        postprocess={"output": "probs", "labels": "metadata:character"},
        batch_size=64,
        actors=1,
    )
    table = pa.Table.from_pylist(scored.take_all()).sort_by("id")
    assert table.column_names == ["id", "source_id", "probs", "label", "score"]
    assert table.column("source_id").to_pylist() == list(range(300))
    (probs,) = ort.InferenceSession(model).run(["probs"], {"x": x.astype(np.float32)})
    np.testing.assert_allclose(
        np.stack(table.column("probs").to_numpy(zero_copy_only=False)), probs, rtol=1e-5
    )
    assert table.column("label").to_pylist() == [["0", "90", "180", "270"][i] for i in probs.argmax(1)]


def test_predict_rows_that_cannot_be_scored_raise_or_come_back_null(ray_session: Any, tmp_path: Path) -> None:
    model = make_mlp(tmp_path / "m.onnx", (4, 2))
    rows = [[1.0, 2.0, 3.0, 4.0], None, [1.0, 2.0], [0.5, 0.5, 0.5, 0.5]]
    write_parquet(
        tmp_path / "d" / "a.parquet", {"id": [0, 1, 2, 3], "x": pa.array(rows, pa.list_(pa.float32()))}
    )
    ds = ray_session.data.read_parquet(str(tmp_path / "d"))
    lenient = scoring.predict(ds, model=model, keep=["id"], on_error="null", actors=1)
    table = pa.Table.from_pylist(lenient.take_all()).sort_by("id")
    assert table.column_names == ["id", "probs", "error"]
    assert [p is None for p in table.column("probs").to_pylist()] == [False, True, True, False]
    errors = table.column("error").to_pylist()
    assert (
        errors[0] is None
        and "null" in errors[1]
        and "2 values; input 'x' takes rows of shape [4]" in errors[2]
    )
    with pytest.raises(ConfigError, match=r"input.keep \(\{error: id\}\) and on_error='null'"):
        scoring.predict(ds, model=model, keep=[{"error": "id"}], on_error="null", actors=1)
    with pytest.raises(Exception) as info:
        scoring.predict(ds, model=model, keep=["id"], actors=1).take_all()
    # Ray Data raises its own error around the UDF's; its text carries ours, with the reason.
    text = str(info.value)
    assert "RowsRejected: 2 row(s) of a batch of 4 cannot be scored; the first: preprocess (row 1)" in text
    assert "column x is null" in text and "on_error='null'" in text
    with pytest.raises(InputError, match=r"the dataset: no column 'x' for model input 'x'"):
        scoring.predict(ds.select_columns(["id"]), model=model)


def test_predict_embeds_a_text_column(ray_session: Any, tmp_path: Path) -> None:
    from test_text import reference

    from scoring.demo import make_text_model, make_tokenizer, sentences

    texts = sentences(40, seed=5)
    tokenizer = make_tokenizer(tmp_path / "tokenizer.json", texts)
    model = make_text_model(tmp_path / "bert.onnx", vocab=120)
    write_parquet(tmp_path / "d" / "a.parquet", {"id": np.arange(40), "body": texts})
    ds = ray_session.data.read_parquet(str(tmp_path / "d"))
    scored = scoring.predict(
        ds,
        model=model,
        text={"column": "body", "tokenizer": tokenizer, "max_length": 16},
        embedding={"pooling": "mean"},
        keep=["id"],
        batch_size=8,
        actors=1,
    )
    table = pa.Table.from_pylist(scored.take_all()).sort_by("id")
    assert table.column_names == ["id", "embedding"]
    got = np.stack(table.column("embedding").to_numpy(zero_copy_only=False))
    np.testing.assert_allclose(got, reference(model, tokenizer, texts, 16), atol=2e-6)
