"""Classifier columns (output.postprocess) against an independent numpy reference, and the
refusals before scoring."""

from __future__ import annotations

from pathlib import Path

import models
import numpy as np
import pyarrow as pa
import pytest
from support import fixed_list, read_predictions, write_parquet

from scoring.errors import ConfigError

LABELS = ["0", "90", "180", "270"]


def data(tmp_path: Path, n: int = 50) -> tuple[Path, np.ndarray]:
    x = np.random.default_rng(8).standard_normal((n, 8)).astype(np.float32)
    write_parquet(tmp_path / "d" / "p.parquet", {"id": np.arange(n), "x": fixed_list(x)})
    return tmp_path / "d", x


def job(model: str, folder: Path, **output: object) -> dict:
    return {
        "model": {"uri": model},
        "input": {"uri": str(folder), "format": "parquet", "keep": ["id"]},
        "output": output,
    }


def test_labels_from_the_model_metadata_top_k_and_no_raw_output(run_job, tmp_path: Path) -> None:
    model = models.classifier(tmp_path / "c.onnx", metadata={"character": "0,90,180,270"})
    folder, x = data(tmp_path)
    result = run_job(
        job(
            model,
            folder,
            outputs={},
            postprocess={"output": "probs", "top_k": 2, "labels": "metadata:character"},
        )
    )
    assert result.ok, result.job["error"]
    preds = read_predictions(result.out).sort_by("id")
    assert preds.column_names == ["shard", "file", "row", "id", "label", "score", "top_labels", "top_scores"]
    logits = x.astype(np.float64) @ np.asarray(_weights(model), np.float64)
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    order = np.argsort(-probs, axis=1)
    assert preds.column("label").to_pylist() == [LABELS[i] for i in order[:, 0]]
    np.testing.assert_allclose(preds.column("score").to_numpy(), probs.max(1), rtol=1e-5)
    assert preds.column("top_labels").to_pylist() == [[LABELS[i] for i in row[:2]] for row in order]
    np.testing.assert_allclose(
        np.array(preds.column("top_scores").to_pylist()),
        np.take_along_axis(probs, order[:, :2], 1),
        rtol=1e-5,
    )


def test_softmax_over_logits_labels_from_a_file_and_the_default_output(run_job, tmp_path: Path) -> None:
    model = models.classifier(tmp_path / "c.onnx", classes=3)
    folder, x = data(tmp_path)
    (tmp_path / "labels.txt").write_text("cat\ndog\nbird\n")
    result = run_job(
        job(
            model,
            folder,
            outputs={"logits": "logits"},
            postprocess={"output": "logits", "softmax": True, "labels": str(tmp_path / "labels.txt")},
        )
    )
    assert result.ok, result.job["error"]
    preds = read_predictions(result.out).sort_by("id")
    logits = np.stack(preds.column("logits").to_numpy(zero_copy_only=False)).astype(np.float64)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    assert preds.column("label").to_pylist() == [["cat", "dog", "bird"][i] for i in p.argmax(1)]
    np.testing.assert_allclose(preds.column("score").to_numpy(), p.max(1), rtol=1e-5)
    assert "top_labels" not in preds.column_names

    # Two float [N, C] outputs: which one holds the class scores must be said.
    with pytest.raises(
        ConfigError, match=r"'output.postprocess.output' is not set and the model has several"
    ):
        run_job(
            job(model, folder, postprocess={}),
        )
    # Without labels the class index is the label.
    two = models.classifier(tmp_path / "c2.onnx", classes=2)
    result = run_job(
        {
            **job(two, folder, postprocess={"output": "probs"}),
            "output": {"uri": str(tmp_path / "o2"), "postprocess": {"output": "probs"}},
        }
    )
    assert set(read_predictions(result.out).column("label").to_pylist()) <= {"0", "1"}


def test_postprocess_mistakes_are_refused_before_scoring(run_job, tmp_path: Path) -> None:
    model = models.classifier(tmp_path / "c.onnx", metadata={"character": "0,90,180,270"})
    folder, _ = data(tmp_path, 5)
    with pytest.raises(
        ConfigError, match=r"3 labels for model output 'probs' of 4 classes; give one label per class"
    ):
        run_job(job(model, folder, postprocess={"output": "probs", "labels": ["a", "b", "c"]}))
    with pytest.raises(ConfigError, match=r"metadata has no key 'classes' \(keys: \['character'\]\)"):
        run_job(job(model, folder, postprocess={"output": "probs", "labels": "metadata:classes"}))
    with pytest.raises(ConfigError, match=r"names 'scores', which is not a model output"):
        run_job(job(model, folder, postprocess={"output": "scores"}))
    with pytest.raises(ConfigError, match=r"unknown config key 'output.postprocess.topk'"):
        run_job(job(model, folder, postprocess={"output": "probs", "topk": 2}))
    with pytest.raises(
        ConfigError, match=r"'output.postprocess.top_k' is 5 but model output 'probs' has 4 classes"
    ):
        run_job(job(model, folder, postprocess={"output": "probs", "top_k": 5}))
    seq = models.sequence_mean(tmp_path / "seq.onnx")  # m [batch]: not class scores
    write_parquet(tmp_path / "s" / "p.parquet", {"tokens": pa.array([[1.0, 2.0]], pa.list_(pa.float32()))})
    with pytest.raises(ConfigError, match=r"model output m: float32 \[batch\] is not class scores; expected"):
        run_job(
            {
                "model": {"uri": seq},
                "input": {"uri": str(tmp_path / "s"), "format": "parquet"},
                "output": {"postprocess": {"output": "m"}},
            }
        )
    with pytest.raises(
        ConfigError,
        match=r"'output.outputs' is \{\} \(no raw output\) and neither output.postprocess nor",
    ):
        run_job(job(model, folder, outputs={}))


def _weights(model: str) -> np.ndarray:
    import onnx
    from onnx import numpy_helper

    return numpy_helper.to_array(next(i for i in onnx.load(model).graph.initializer if i.name == "w"))
