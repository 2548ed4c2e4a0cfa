"""input.function and output.function: the user's own code before and after the model, with
what a job gives everywhere else (rejects, stops, validate, both runners, scoring.predict)."""

from __future__ import annotations

import io
import textwrap
from pathlib import Path
from typing import Any

import models
import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pytest
import yaml
from PIL import Image
from support import read_errors, read_predictions, write_parquet

import scoring
from scoring.config_file import load_config
from scoring.errors import ConfigError
from scoring.validate import format_preview, validate

# A pair that decodes what no built-in does: from a word and a number, features for a linear
# model; from its scores, the best class and its margin over the runner-up, with the word's
# length passed through the context.
PAIR = textwrap.dedent(
    """
    import numpy as np

    def prepare(batch):
        words = batch["word"].to_pylist()
        if any(w == "boom" for w in words):
            raise ValueError("cannot read boom")
        n = batch["n"].to_numpy().astype("float32")
        length = np.array([len(w) for w in words], dtype="int64")
        x = np.stack([n, length.astype("float32"), n * 2, np.ones_like(n)], axis=1)
        return {"x": x, "length": length}

    def decode(outputs, context):
        y = outputs["y"]
        if (context["length"] == 7).any():
            raise RuntimeError("seven letters")
        top = np.sort(y, axis=1)
        return {
            "best": y.argmax(axis=1).astype("int32"),
            "margin": top[:, -1] - top[:, -2],
            "length": context["length"],
        }
    """
)


def reference(words: list[str], n: np.ndarray, model: str) -> tuple[np.ndarray, np.ndarray]:
    """The same features and decoding, written again here, with ONNX Runtime alone."""
    length = np.array([len(w) for w in words], np.float32)
    x = np.stack([n, length, n * 2, np.ones_like(n)], axis=1).astype(np.float32)
    (y,) = ort.InferenceSession(model).run(["y"], {"x": x})
    top = np.sort(y, axis=1)
    return y.argmax(1), top[:, -1] - top[:, -2]


@pytest.fixture
def words(tmp_path: Path) -> dict[str, Any]:
    model = models.linear(tmp_path / "m.onnx", ["batch", 4], out=3)
    names = ["ant", "bee", "boom", "cicada", "dragonfly", "earwig", "firefly", "gnat"] * 4
    n = np.arange(len(names), dtype=np.float32)
    data = write_parquet(tmp_path / "d" / "a.parquet", {"id": np.arange(len(names)), "word": names, "n": n})
    (tmp_path / "fns.py").write_text(PAIR)
    job = {
        "model": {"uri": model},
        "input": {"uri": data, "format": "parquet", "keep": ["id"], "function": "fns.py:prepare"},
        "output": {"uri": str(tmp_path / "out"), "function": "fns.py:decode"},
        "compute": {"runner": "local", "actors": 1, "batch_size": 8},
    }
    return {"model": model, "names": names, "n": n, "job": job, "dir": tmp_path}


def write_config(where: Path, job: dict[str, Any]) -> Path:
    path = where / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def test_a_function_pair_scores_rows_and_rejects_the_rows_it_raises_for(words: dict[str, Any]) -> None:
    from scoring.job import run_job

    cfg = load_config(write_config(words["dir"], words["job"]), environ={})  # fns.py: beside it
    result = run_job(cfg, echo=lambda _: None)
    assert result.ok, result.job["error"]
    table = read_predictions(words["dir"] / "out")
    names, n = words["names"], words["n"]
    kept = [i for i, w in enumerate(names) if w not in ("boom", "firefly")]
    assert table.column_names == ["shard", "file", "row", "id", "best", "margin", "length"]
    assert table.column("id").to_pylist() == kept
    best, margin = reference([names[i] for i in kept], n[kept], words["model"])
    assert table.column("best").to_pylist() == best.tolist()
    np.testing.assert_allclose(table.column("margin").to_numpy(), margin, rtol=1e-6)
    assert table.column("length").to_pylist() == [len(names[i]) for i in kept]
    errors = read_errors(words["dir"] / "out").sort_by("row")
    by_row = {r["row"]: r for r in errors.to_pylist()}
    assert sorted(by_row) == [i for i, w in enumerate(names) if w in ("boom", "firefly")]
    boom, firefly = by_row[names.index("boom")], by_row[names.index("firefly")]
    assert (boom["stage"], boom["error"]) == ("preprocess", "ValueError")
    assert "fns.py:prepare failed for this row: ValueError: cannot read boom" in boom["message"]
    assert (firefly["stage"], firefly["error"]) == ("postprocess", "RuntimeError")
    assert "seven letters" in firefly["message"]


def test_a_function_that_fails_on_every_row_stops_the_job(words: dict[str, Any]) -> None:
    from scoring.job import run_job

    (words["dir"] / "fns.py").write_text(PAIR.replace('w == "boom"', "True"))
    result = run_job(load_config(write_config(words["dir"], words["job"]), environ={}), echo=lambda _: None)
    assert not result.ok
    error = result.job["error"]
    assert "ModelFailure" in error and "the input function failed on each of the first 3 rows" in error
    assert "cannot read boom" in error and "input.function" in error

    (words["dir"] / "fns.py").write_text(PAIR.replace('(context["length"] == 7).any()', "True"))
    words["job"]["output"]["mode"] = "overwrite"
    result = run_job(load_config(write_config(words["dir"], words["job"]), environ={}), echo=lambda _: None)
    assert not result.ok
    assert "decoding the model's outputs failed on each of the first 3 rows" in result.job["error"]
    assert "seven letters" in result.job["error"]


def test_validate_shows_what_the_functions_returned(words: dict[str, Any]) -> None:
    cfg = load_config(write_config(words["dir"], words["job"]), environ={})
    text = format_preview(validate(cfg))
    assert "fns.py:prepare raised ValueError: cannot read boom" in text  # row 2 of the first 8
    assert "fns.py:prepare returned for row 0 x: float32 [1, 4], length: int64 [1]" in text
    assert "best                     int32" in text and "margin" in text
    assert "rejected" in text and "cannot read boom" in text


def test_a_relative_file_is_read_beside_the_config_and_travels_to_ray_workers(
    ray_session: Any, words: dict[str, Any]
) -> None:
    from scoring.job import run_job

    words["job"]["compute"] = {"runner": "ray", "actors": 1}
    cfg = load_config(write_config(words["dir"], words["job"]), environ={})
    assert cfg.input.function == f"{words['dir']}/fns.py:prepare"
    assert run_job(cfg, echo=lambda _: None).ok
    assert read_predictions(words["dir"] / "out").num_rows == 24


def test_a_module_function_and_what_cannot_be_run_is_refused_before_scoring(
    run_job: Any, words: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    (words["dir"] / "user_fns_mod.py").write_text(PAIR)
    monkeypatch.syspath_prepend(str(words["dir"]))
    job = {**words["job"], "input": {**words["job"]["input"], "function": "user_fns_mod:prepare"}}
    job["output"] = {**job["output"], "function": "user_fns_mod:decode"}
    assert run_job(job).ok
    for ref, message in [
        ("fns.py", "expected FILE.py:NAME"),
        (
            f"{words['dir']}/fns.py:nope",
            "defines no function 'nope' (functions found: ['decode', 'prepare'])",
        ),
        (f"{words['dir']}/missing.py:prepare", "cannot read"),
        ("no_such_module_here:prepare", "no module 'no_such_module_here' is installed here"),
    ]:
        bad = {**words["job"], "input": {**words["job"]["input"], "function": ref}}
        with pytest.raises(ConfigError, match="input.function") as err:
            run_job(bad)
        assert message in str(err.value)


def test_prepare_must_return_every_input_in_a_type_it_takes(run_job: Any, words: dict[str, Any]) -> None:
    words["job"]["input"]["function"] = f"{words['dir']}/fns.py:prepare"
    words["job"]["output"].pop("function")
    for returned, message in [
        ('{"length": length}', "it returned no ['x'] (keys returned: ['length'])"),
        ('{"x": x.astype("int64"), "length": length}', "'x' is int64; the model input takes float32"),
        ('{"x": x[:0], "length": length}', "'x' has 0 entries for 1 rows"),
    ]:
        fns = PAIR.replace('w == "boom"', "False").replace('{"x": x, "length": length}', returned)
        (words["dir"] / "fns.py").write_text(fns)
        words["job"]["output"]["mode"] = "overwrite"
        result = run_job(words["job"])
        assert not result.ok and message in result.job["error"], result.job["error"]


def images_with_a_function(tmp_path: Path) -> tuple[str, list[bytes]]:
    """Images decoded by prepare itself (PIL, grey, 8x8), summed by a linear model."""
    blobs = []
    for i in range(6):
        buf = io.BytesIO()
        Image.new("RGB", (20 + i, 10), (40 * i, 10, 200)).save(buf, format="PNG")
        blobs.append(buf.getvalue())
    return write_parquet(
        tmp_path / "img" / "a.parquet", {"id": list(range(6)), "image": pa.array(blobs)}
    ), blobs


def test_predict_runs_both_functions_on_a_dataset(ray_session: Any, tmp_path: Path) -> None:
    model = models.linear(tmp_path / "m.onnx", ["batch", 64], out=2)
    data, blobs = images_with_a_function(tmp_path)
    (tmp_path / "img_fns.py").write_text(
        textwrap.dedent(
            """
            import io
            import numpy as np
            from PIL import Image

            def prepare(batch):
                grey = [np.asarray(Image.open(io.BytesIO(b)).convert("L").resize((8, 8)), "float32")
                        for b in batch["image"].to_pylist()]
                return {"x": np.stack(grey).reshape(-1, 64) / 255, "width": np.array(
                    [Image.open(io.BytesIO(b)).width for b in batch["image"].to_pylist()])}

            def decode(outputs, context):
                return {"score": outputs["y"][:, 0], "width": context["width"]}
            """
        )
    )
    ds = ray_session.data.read_parquet(data)
    scored = scoring.predict(
        ds,
        model=model,
        keep=["id"],
        input_function=str(tmp_path / "img_fns.py") + ":prepare",
        output_function=str(tmp_path / "img_fns.py") + ":decode",
        actors=1,
    )
    table = pa.Table.from_pylist(scored.take_all()).sort_by("id")
    assert table.column_names == ["id", "score", "width"]
    assert table.column("width").to_pylist() == [20 + i for i in range(6)]
    grey = np.stack(
        [np.asarray(Image.open(io.BytesIO(b)).convert("L").resize((8, 8)), np.float32) for b in blobs]
    )
    (y,) = ort.InferenceSession(model).run(["y"], {"x": grey.reshape(-1, 64) / 255})
    np.testing.assert_allclose(table.column("score").to_numpy(), y[:, 0], rtol=1e-5)


def test_the_docs_show_the_example_file_as_it_is() -> None:
    root = Path(__file__).resolve().parents[1]
    assert (root / "configs" / "functions.py").read_text() in (
        root / "docs" / "models" / "functions.md"
    ).read_text()


def test_decode_gives_new_columns_of_one_value_per_row_and_prepare_replaces_the_builtins(
    run_job: Any, words: dict[str, Any]
) -> None:
    words["job"]["input"]["function"] = f"{words['dir']}/fns.py:prepare"
    words["job"]["output"]["function"] = f"{words['dir']}/fns.py:decode"
    words["job"]["output"]["mode"] = "overwrite"
    for returned, message in [
        ('"id": context["length"]', "decode returned ['id'], which the job adds already"),
        ('"length": []', "column 'length' has 0 values for 1 rows"),
    ]:
        fns = PAIR.replace('w == "boom"', "False").replace('"length": context["length"]', returned)
        (words["dir"] / "fns.py").write_text(fns)
        result = run_job(words["job"])
        assert not result.ok and message in result.job["error"], result.job["error"]
    words["job"]["input"]["image"] = {"size": [8, 8]}
    with pytest.raises(
        ConfigError, match="input.function replaces the built-in preprocessing, so input.image"
    ):
        run_job(words["job"])
