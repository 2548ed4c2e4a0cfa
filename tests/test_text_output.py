"""Greedy CTC decoding (output.text) against exact strings and an independent reference, the
real PaddleOCR line recogniser on a rendered line, and the refusals before scoring. (Text as a
model input is tests/test_text.py.)"""

from __future__ import annotations

from pathlib import Path

import models
import numpy as np
import pyarrow as pa
import pytest
import wild
from PIL import Image, ImageDraw, ImageFont
from support import read_predictions, write_parquet

from scoring.errors import ConfigError

# Class ids per step (blank 0; charset "abc"; 4 is the space past the charset). Rows of several
# lengths: they batch by length and come back in order.
ROWS = [
    ([1, 1, 0, 1, 2, 4, 3, 3], "aab c"),
    ([0, 0, 0, 0], ""),
    ([3, 3, 3, 0, 3, 2, 2, 0, 0, 1], "ccba"),
    ([4, 4, 1], " a"),
    ([2], "b"),
    ([1, 0, 1, 0, 1, 1, 1], "aaa"),
]


def reference(ids: list[int], charset: str, blank: int, classes: int) -> tuple[str, float]:
    """Greedy CTC written out step by step, and the mean top probability of the kept steps."""
    names = [*charset[:blank], "", *charset[blank:]]
    names += [" "] * (classes - len(names))
    text, kept, previous = "", [], None
    for i in ids:
        z = -4.0 * (i - np.arange(classes, dtype=np.float64)) ** 2
        top = 1.0 / np.exp(z - z.max()).sum()
        if i != previous and i != blank:
            text += names[i]
            kept.append(top)
        previous = i
    return text, float(np.mean(kept)) if kept else 0.0


def data(tmp_path: Path, rows: list[tuple[list[int], str]]) -> Path:
    ids = pa.array([[float(i) for i in r] for r, _ in rows], pa.list_(pa.float32()))
    write_parquet(tmp_path / "d" / "p.parquet", {"id": np.arange(len(rows)), "ids": ids})
    return tmp_path / "d"


def job(model: str, folder: Path, **output: object) -> dict:
    return {
        "model": {"uri": model},
        "input": {"uri": str(folder), "format": "parquet", "keep": ["id"]},
        "output": output,
        "compute": {"batch_size": 2},
    }


def test_greedy_ctc_gives_the_exact_strings_and_scores(run_job, tmp_path: Path) -> None:
    model = models.ctc(tmp_path / "ctc.onnx", classes=5)
    result = run_job(job(model, data(tmp_path, ROWS), text={"charset": ["a", "b", "c"]}))
    assert result.ok, result.job["error"]
    preds = read_predictions(result.out)
    # output.outputs defaults to {}: the per-step scores are not written.
    assert preds.column_names == ["shard", "file", "row", "id", "text", "text_score"]
    assert preds.schema.field("text").type == pa.string()
    assert preds.schema.field("text_score").type == pa.float32()
    assert preds.column("text").to_pylist() == [text for _, text in ROWS]
    expected = [reference(ids, "abc", 0, 5) for ids, _ in ROWS]
    assert [t for t, _ in expected] == [text for _, text in ROWS]
    np.testing.assert_allclose(preds.column("text_score").to_numpy(), [s for _, s in expected], rtol=1e-5)
    assert preds.column("text_score")[1].as_py() == 0.0  # an empty text


def test_time_major_logits_a_charset_file_and_the_blank_last_on_ray(run_job, tmp_path: Path) -> None:
    """[T, N, C] logits whose declared dims do not say where the batch is: layout says it."""
    model = models.ctc(tmp_path / "tnc.onnx", classes=5, layout="TNC", logits=True)
    (tmp_path / "chars.txt").write_text("x\n \ny\nz\n")  # a class may be a space
    # Blank is class 4 (the last): classes 0..3 are x, ' ', y, z.
    rows = [([0, 0, 1, 2, 4, 2, 3], "x yyz"), ([4, 4], ""), ([3, 1, 1, 0], "z x")]
    result = run_job(
        {
            **job(
                model,
                data(tmp_path, rows),
                outputs={"scores": "scores"},
                text={"layout": "TNC", "charset": str(tmp_path / "chars.txt"), "blank": 4, "softmax": True},
            ),
            "compute": {"runner": "ray", "batch_size": 8},
        }
    )
    assert result.ok, result.job["error"]
    preds = read_predictions(result.out)
    assert preds.column("text").to_pylist() == [text for _, text in rows]
    expected = [reference(ids, "x yz", 4, 5)[1] for ids, _ in rows]
    np.testing.assert_allclose(preds.column("text_score").to_numpy(), expected, rtol=1e-5)
    # The raw output named in output.outputs is kept, each row's [T, C] (the batch moved first).
    first = np.asarray(preds.column("scores")[0].as_py(), np.float32).reshape(7, 5)
    assert first.argmax(1).tolist() == rows[0][0]


def test_text_mistakes_are_refused_before_scoring(run_job, tmp_path: Path) -> None:
    model = models.ctc(tmp_path / "ctc.onnx", classes=5)
    folder = data(tmp_path, ROWS[:2])
    with pytest.raises(
        ConfigError,
        match=r"'output.text.charset': model output scores: float32 \[batch, steps, 5\] declares 5 "
        r"classes but the charset has 2 characters; expected 3 .* or 4",
    ):
        run_job(job(model, folder, text={"charset": ["a", "b"]}))
    with pytest.raises(ConfigError, match=r"metadata has no key 'character' \(keys: \[\]\)"):
        run_job(job(model, folder, text={"charset": "metadata:character"}))
    with pytest.raises(ConfigError, match=r"'output.text.output' names 'probs', which is not a model output"):
        run_job(job(model, folder, text={"output": "probs", "charset": ["a", "b", "c"]}))
    with pytest.raises(ConfigError, match=r"'output.text.charset': cannot read .*nowhere.txt"):
        run_job(job(model, folder, text={"charset": str(tmp_path / "nowhere.txt")}))
    with pytest.raises(ConfigError, match=r"'output.text.layout'"):
        run_job(job(model, folder, text={"charset": ["a", "b", "c"], "layout": "NCT"}))
    # An output of [N] per step, not [T, C]: the job stops before any row is scored.
    seq = models.sequence_mean(tmp_path / "seq.onnx")
    write_parquet(tmp_path / "s" / "p.parquet", {"tokens": pa.array([[1.0, 2.0]], pa.list_(pa.float32()))})
    result = run_job(
        {
            "model": {"uri": seq},
            "input": {"uri": str(tmp_path / "s"), "format": "parquet"},
            "output": {"uri": str(tmp_path / "o"), "text": {"output": "m", "charset": ["a"]}},
        }
    )
    assert not result.ok
    assert result.job["error"].startswith(
        "ModelFailure: output.text: model output 'm' gave shape [] per row; CTC decoding needs [T, C]"
    )


LINES = ["Hello World 123", "ONNX 2024", "scoring", "Ray & ONNX, 7.5%", ""]
FONT_PX = 36


def line(text: str) -> Image.Image:
    """A black line on white, 48 px high and as wide as the text, as a crop from a page."""
    font = ImageFont.load_default(size=FONT_PX)
    img = Image.new("RGB", (int(font.getlength(text)) + 16, 48), "white")
    ImageDraw.Draw(img).text((8, 4), text, fill="black", font=font)
    return img


def padded(text: str) -> Image.Image:
    """The line right-padded to 320 px with mid-grey, as rapidocr feeds a batch: it pads with 0
    after (x/255 - 0.5)/0.5 (a white margin may read as a trailing space)."""
    canvas = Image.new("RGB", (320, 48), (128, 128, 128))
    canvas.paste(line(text), (0, 0))
    return canvas


def test_paddleocr_recogniser_reads_rendered_lines(run_job, tmp_path: Path) -> None:
    """PP-OCRv4's recogniser (rapidocr-onnxruntime 1.4.4): its charset in metadata 'character',
    classes = blank + 6623 + space; BGR, (x/255 - 0.5)/0.5, as rapidocr feeds it. Lines padded
    to one width, and lines of their own widths (the width follows the aspect: size [48, null])."""
    model = str(wild.paddle_rec())
    for name, draw, size in (("padded", padded, [48, 320]), ("own", line, [48, None])):
        folder = tmp_path / name
        folder.mkdir()
        for i, text in enumerate(LINES):
            draw(text).save(folder / f"{i}.png")
        image = {"size": size, "mode": "BGR", "mean": [0.5], "std": [0.5]}
        result = run_job(
            {
                "model": {"uri": model},
                "input": {"uri": str(folder), "format": "images", "image": image},
                "output": {"uri": str(tmp_path / f"out-{name}"), "text": {"charset": "metadata:character"}},
            }
        )
        assert result.ok, result.job["error"]
        preds = read_predictions(result.out).sort_by("path")
        texts = preds.column("text").to_pylist()
        assert (texts if name == "padded" else [t.rstrip() for t in texts]) == LINES
        scores = preds.column("text_score").to_pylist()
        assert min(scores[:-1]) > 0.9 and scores[-1] == 0.0  # an empty line: no text, score 0
