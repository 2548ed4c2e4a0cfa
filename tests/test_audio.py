"""Audio inputs: sound files, Hugging Face audio Parquet and WebDataset tars, decoded, resampled and
windowed, scored by the real silero VAD (fed with input.constants) and checked against an
independent soundfile + soxr + ORT reference."""

from __future__ import annotations

import io
import math
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import soxr
from models import linear, sequence_mean
from support import RUNNERS, read_errors, read_predictions

from scoring.config_file import load_config
from scoring.errors import ConfigError, InputError
from scoring.formats import clips
from scoring.formats.sound import Cutter, count
from scoring.validate import format_preview, validate

VAD = str(Path(__file__).parent / "data" / "silero_vad" / "silero_vad_16k_op15.onnx")
RATE, WINDOW, HOP = 16000, 576, 512  # silero: 512 new samples and 64 of the window before


def speech(seconds: float, rate: int, channels: int = 1, seed: int = 0) -> np.ndarray:
    """Voiced bursts (a 140 Hz buzz with harmonics under a syllable envelope, plus noise) and silence."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    voice = sum(np.sin(2 * np.pi * 140 * k * t) / k for k in range(1, 12))
    envelope = np.clip(np.sin(2 * np.pi * 0.8 * t), 0, None) ** 0.5  # on half the time
    x = 0.3 * voice * envelope + 0.01 * rng.standard_normal(len(t))
    x = (x / np.abs(x).max() * 0.8).astype(np.float32)
    return np.stack([x, x * 0.5], axis=1) if channels == 2 else x


def encoded(x: np.ndarray, rate: int, fmt: str) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x, rate, format=fmt)
    return buf.getvalue()


def reference(data: bytes, rate: int = RATE) -> np.ndarray:
    """Speech probabilities of every window, written without scoring's code: decode whole,
    average the channels, resample in one call, cut, zero state per window."""
    x, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    x = soxr.resample(x.mean(axis=1), sr, rate)
    n = max(0, math.ceil((len(x) - WINDOW) / HOP)) + 1
    windows = np.zeros((n, WINDOW), np.float32)
    for i in range(n):
        piece = x[i * HOP : i * HOP + WINDOW]
        windows[i, : len(piece)] = piece
    session = ort.InferenceSession(VAD, providers=["CPUExecutionProvider"])
    state = np.zeros((2, n, 128), np.float32)
    return session.run(["output"], {"input": windows, "state": state, "sr": np.array(rate)})[0][:, 0]


def vad_job(uri: Path, runner: str = "local", **audio: Any) -> dict[str, Any]:
    return {
        "model": {"uri": VAD},
        "input": {
            "uri": str(uri),
            "format": "audio",
            "audio": {"sample_rate": RATE, "window": WINDOW, "hop": HOP, **audio},
            "constants": {"sr": RATE, "state": "zeros"},
        },
        "output": {"outputs": {"speech": "output"}},
        "compute": {"runner": runner, "batch_size": 64},
    }


def recordings(folder: Path) -> dict[str, bytes]:
    """Sound files at 8-48 kHz, mono and stereo, WAV, FLAC and MP3, in Hive partitions, and
    three broken ones: garbage, a FLAC cut in half, a WAV with no frames."""
    files = {
        "lang=en/a.wav": encoded(speech(3.0, 16000), 16000, "WAV"),
        "lang=en/b.flac": encoded(speech(2.5, 44100, 2, seed=1), 44100, "FLAC"),
        "lang=fr/c.mp3": encoded(speech(1.7, 8000, seed=2), 8000, "MP3"),
        "lang=fr/d.wav": encoded(speech(2.0, 48000, 2, seed=3), 48000, "WAV"),
        "lang=fr/e.flac": encoded(speech(0.02, 22050, seed=4), 22050, "FLAC"),  # shorter than a window
        "lang=fr/f.ogg": encoded(speech(1.1, 24000, 2, seed=6), 24000, "OGG"),
    }
    broken = {
        "lang=en/garbage.wav": b"RIFF, but not really" * 20,
        "lang=en/cut.flac": encoded(speech(3.0, 44100, seed=5), 44100, "FLAC")[:20000],
        "lang=fr/empty.wav": encoded(np.zeros(0, np.float32), 16000, "WAV"),
        "lang=fr/half.mp3": encoded(speech(4.0, 16000, seed=7), 16000, "MP3")[:12000],
    }
    for name, data in {**files, **broken}.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return files


def windows_of(data: bytes) -> int:
    info = sf.info(io.BytesIO(data))
    return count(math.floor(info.frames * RATE / info.samplerate + 0.5), WINDOW, HOP)


# -- windows ---------------------------------------------------------------------------------


def test_cutter_gives_every_window_once_whatever_the_pieces() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        n, w, h = int(rng.integers(1, 3000)), int(rng.integers(1, 300)), int(rng.integers(1, 400))
        x = rng.random(n).astype(np.float32)
        cut, got, at = Cutter(w, h), [], 0
        while at < n:
            step = int(rng.integers(1, 700))
            got.append(cut.feed(x[at : at + step]))
            at += step
        got.append(cut.finish())
        k = math.ceil((n - w) / h) + 1 if n > w else 1
        expected = np.zeros((k, w), np.float32)
        for i in range(k):
            piece = x[i * h : i * h + w]
            expected[i, : len(piece)] = piece
        np.testing.assert_array_equal(np.concatenate(got), expected)


# -- a VAD over a folder of recordings ----------------------------------------------------------


@RUNNERS
def test_vad_over_a_folder_scores_every_window_once_and_rejects_broken_files(
    run_job, tmp_path: Path, runner: str
) -> None:
    folder = tmp_path / "calls"
    files = recordings(folder)
    job = vad_job(folder, runner)
    job["input"]["keep"] = ["lang"]
    job["input"]["files_per_shard"] = 3
    result = run_job(job)
    assert result.ok, result.job["error"]
    preds = read_predictions(result.out)
    errors = read_errors(result.out).to_pylist()
    for name, data in files.items():
        mine = preds.filter(pa.compute.equal(preds.column("path"), str(folder / name)))
        mine = mine.sort_by("window")
        assert mine.num_rows == windows_of(data), name  # ceil((samples - window) / hop) + 1
        assert mine.column("window").to_pylist() == list(range(mine.num_rows))
        assert mine.column("start_s").to_pylist() == [i * HOP / RATE for i in range(mine.num_rows)]
        assert set(mine.column("lang").to_pylist()) == {name[5:7]}
        got = np.array([s[0] for s in mine.column("speech").to_pylist()])
        np.testing.assert_allclose(got, reference(data), atol=2e-5)
    names = ["cut.flac", "empty.wav", "garbage.wav", "half.mp3"]
    assert sorted(Path(e["file"]).name for e in errors) == names
    assert {e["stage"] for e in errors} == {"decode"}
    by_name = {Path(e["file"]).name: e for e in errors}
    assert "Format not recognised" in by_name["garbage.wav"]["message"]
    assert by_name["empty.wav"]["error"] == "NoFrames"
    assert by_name["cut.flac"]["error"] == "LibsndfileError"
    assert (
        by_name["half.mp3"]["error"] == "Truncated"
        and "the header declares 64000 frames" in by_name["half.mp3"]["message"]
    )
    # the VAD hears the bursts: speech in the voiced half of the first second, none in silence
    a = preds.filter(pa.compute.equal(preds.column("path"), str(folder / "lang=en/a.wav"))).sort_by("window")
    probs = np.array([s[0] for s in a.column("speech").to_pylist()])
    assert (
        probs[5:20].max() > 0.5
        and probs[(a.column("start_s").to_numpy() > 0.65) & (a.column("start_s").to_numpy() < 1.15)].max()
        < 0.2
    )


def test_validate_shows_rates_channels_durations_and_rows_per_file(tmp_path: Path) -> None:
    folder = tmp_path / "calls"
    recordings(folder)
    text = format_preview(
        validate(load_config(data={**vad_job(folder), "output": {"uri": str(tmp_path / "o")}}))
    )
    assert "lang=en/a.wav: WAV 16000 Hz, 1 channel(s) -> mono, 3.00 s, 94 row(s)" in text
    assert "lang=en/b.flac: FLAC 44100 Hz -> 16000 Hz, 2 channel(s) -> mono, 2.50 s, 78 row(s)" in text
    assert "garbage.wav: cannot decode: Error opening" in text


def test_a_long_clip_is_windowed_in_pieces_with_the_same_rows(run_job, tmp_path: Path, monkeypatch) -> None:
    folder = tmp_path / "long"
    folder.mkdir()
    data = encoded(speech(25.0, 44100, 2), 44100, "FLAC")
    (folder / "long.flac").write_bytes(data)
    monkeypatch.setattr(clips, "LONG_SAMPLES", 16000)  # past one second: in pieces
    monkeypatch.setattr("scoring.formats.sound.BLOCK_S", 2)
    job = vad_job(folder)
    job["compute"]["batch_size"] = 100
    result = run_job(job)
    assert result.ok, result.job["error"]
    preds = read_predictions(result.out).sort_by("window")
    assert preds.column("window").to_pylist() == list(range(windows_of(data)))
    got = np.array([s[0] for s in preds.column("speech").to_pylist()])
    np.testing.assert_allclose(got, reference(data), atol=2e-5)


# -- Parquet and WebDataset ---------------------------------------------------------------------


def test_hugging_face_audio_parquet_and_webdataset_tars(run_job, tmp_path: Path) -> None:
    clips = [
        encoded(speech(s, r, c, seed=i), r, f)
        for i, (s, r, c, f) in enumerate(
            [(1.0, 16000, 1, "WAV"), (2.0, 48000, 2, "FLAC"), (1.3, 8000, 1, "MP3"), (0.5, 22050, 1, "WAV")]
        )
    ]
    (tmp_path / "pq").mkdir()
    (tmp_path / "sounds").mkdir()
    (tmp_path / "sounds" / "side.wav").write_bytes(clips[3])
    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    rows = [
        {"bytes": clips[0], "path": "a.wav"},  # what datasets' embed_storage writes
        {"bytes": clips[1], "path": None},
        None,
        {"bytes": None, "path": "../sounds/side.wav"},  # relative to the Parquet's folder
        {"bytes": clips[2], "path": "c.mp3"},
        {"bytes": b"not audio", "path": "x.wav"},
    ]
    meta = {b"huggingface": b'{"info": {"features": {"audio": {"_type": "Audio"}}}}'}
    table = pa.table({"audio": pa.array(rows, struct), "id": list(range(6))}).replace_schema_metadata(meta)
    pq.write_table(table, tmp_path / "pq" / "train.parquet")
    job = vad_job(tmp_path / "pq")
    job["input"]["keep"] = ["id"]
    result = run_job(job)
    assert result.ok, result.job["error"]
    preds = read_predictions(result.out)
    counts = {
        r["row"]: r["window_count"]
        for r in preds.group_by("row").aggregate([("window", "count")]).to_pylist()
    }
    assert counts == {
        0: windows_of(clips[0]),
        1: windows_of(clips[1]),
        3: windows_of(clips[3]),
        4: windows_of(clips[2]),
    }
    assert preds.column("id").to_pylist() == preds.column("row").to_pylist()
    errors = {e["row"]: e for e in read_errors(result.out).to_pylist()}
    assert errors[2]["error"] == "NullValue" and errors[5]["stage"] == "decode"
    assert "Format not recognised" in errors[5]["message"]

    tars = tmp_path / "tars"
    tars.mkdir()
    with tarfile.open(tars / "000.tar", "w") as tar:
        for key, ext, data in [("s0", "flac", clips[1]), ("s1", "mp3", clips[2]), ("s2", "txt", b"no audio")]:
            for e, d in ((ext, data), ("cls", b"3")):
                info = tarfile.TarInfo(f"{key}.{e}")
                info.size = len(d)
                tar.addfile(info, io.BytesIO(d))
    job = vad_job(tars)
    job["input"]["keep"] = ["cls", "key"]
    job["output"]["uri"] = str(tmp_path / "out-tars")
    result = run_job(job)
    assert result.ok, result.job["error"]
    preds = read_predictions(result.out)
    counts = {
        r["key"]: r["window_count"]
        for r in preds.group_by("key").aggregate([("window", "count")]).to_pylist()
    }
    assert counts == {"s0": windows_of(clips[1]), "s1": windows_of(clips[2])}
    s0 = preds.filter(pa.compute.equal(preds.column("key"), "s0")).sort_by("window")
    np.testing.assert_allclose(
        [s[0] for s in s0.column("speech").to_pylist()], reference(clips[1]), atol=2e-5
    )
    (error,) = read_errors(result.out).to_pylist()
    assert error["row"] == 2 and error["error"] == "MissingMember"


# -- whole clips, layouts, refusals --------------------------------------------------------------


def test_whole_clips_get_a_fixed_length_model_its_length(run_job, tmp_path: Path) -> None:
    folder = tmp_path / "clips"
    folder.mkdir()
    long, short = speech(1.0, 16000), speech(0.25, 32000, seed=1)
    sf.write(folder / "long.wav", long, 16000, subtype="FLOAT")
    sf.write(folder / "short.wav", short, 32000, subtype="FLOAT")
    model = linear(tmp_path / "lin.onnx", ["N", 1, 8000], out=2)  # [N, 1, S], S fixed: 0.5 s
    result = run_job(
        {
            "model": {"uri": model},
            "input": {"uri": str(folder), "format": "audio", "audio": {"sample_rate": 16000}},
        }
    )
    assert result.ok, result.job["error"]
    preds = {Path(r["path"]).name: r["y"] for r in read_predictions(result.out).to_pylist()}
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    cut = long[:8000]
    padded = np.zeros(8000, np.float32)
    resampled = soxr.resample(short, 32000, 16000)
    padded[: len(resampled)] = resampled
    for name, x in (("long.wav", cut), ("short.wav", padded)):
        expected = session.run(None, {"x": x[None, None, :]})[0][0]
        np.testing.assert_allclose(preds[name], expected, rtol=1e-4, atol=1e-4)
    # a dynamic length: each clip whole, rows of equal length batched together
    result = run_job(
        {
            "model": {"uri": sequence_mean(tmp_path / "mean.onnx")},
            "input": {
                "uri": str(folder),
                "format": "audio",
                "audio": {"sample_rate": 8000, "column": "tokens"},
            },
            "output": {"uri": str(tmp_path / "out2")},
        }
    )
    assert result.ok, result.job["error"]
    means = {Path(r["path"]).name: r["m"] for r in read_predictions(result.out).to_pylist()}
    assert means["long.wav"] == pytest.approx(float(soxr.resample(long, 16000, 8000).mean()), abs=1e-6)


def test_configs_that_cannot_be_served_are_refused_before_scoring(run_job, tmp_path: Path) -> None:
    folder = tmp_path / "calls"
    folder.mkdir()
    sf.write(folder / "a.wav", speech(1.0, 16000), 16000)
    fixed = linear(tmp_path / "lin.onnx", ["N", 1, 8000], out=2)
    stereo = linear(tmp_path / "st.onnx", ["N", 2, 8000], out=2)

    def plain(model: str, **audio: Any) -> dict[str, Any]:
        spec = {"uri": str(folder), "format": "audio", "audio": {"sample_rate": RATE, **audio}}
        return {"model": {"uri": model}, "input": spec}

    def vad(**constants: Any) -> dict[str, Any]:
        job = vad_job(folder)
        job["input"]["constants"] = constants
        return job

    cases = [
        (plain(fixed, window=4000), InputError, "window is 4000 samples .* set window: 8000"),
        (plain(stereo), InputError, "it takes 2 channels, and input.audio.channels"),
        (vad(state="zeros"), InputError, "give the others with input.constants"),
        (vad(sr=8000, state="zeros"), InputError, "sample rate is 8000, but input.audio.sample_rate"),
        (vad(rate=1, sr=RATE, state="zeros"), ConfigError, r"names \['rate'\], which are not model inputs"),
        (vad(sr=1.5, state="zeros"), ConfigError, "takes int64: the value would change"),
    ]
    for job, error, message in cases:
        with pytest.raises(error, match=message):
            run_job(job)
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_resume_scores_each_window_exactly_once(run_job, tmp_path: Path) -> None:
    folder = tmp_path / "calls"
    folder.mkdir()
    first = {f"{i}.wav": encoded(speech(1.0 + i / 3, 16000, seed=i), 16000, "WAV") for i in range(3)}
    for name, data in first.items():
        (folder / name).write_bytes(data)
    job = vad_job(folder)
    job["input"]["files_per_shard"] = 2
    assert run_job(job).ok
    later = encoded(speech(2.2, 44100, 2, seed=9), 44100, "FLAC")
    (folder / "9.flac").write_bytes(later)
    job["output"]["mode"] = "resume"
    result = run_job(job)
    assert result.ok, result.job["error"]
    preds = read_predictions(result.out)
    pairs = list(zip(preds.column("path").to_pylist(), preds.column("window").to_pylist()))
    assert len(pairs) == len(set(pairs))
    expected = {**first, "9.flac": later}
    assert len(pairs) == sum(windows_of(d) for d in expected.values())


def test_recordings_in_a_bucket(run_job, s3: Any, tmp_path: Path) -> None:
    from support import options, upload

    endpoint, fs = s3
    folder = tmp_path / "calls"
    files = recordings(folder)
    upload(fs, folder, "data/calls")
    job = vad_job(folder)
    job["input"]["uri"] = "s3://data/calls"
    job["storage_options"] = options(endpoint)
    result = run_job(job)
    assert result.ok, result.job["error"]
    preds = read_predictions(result.out)
    assert preds.num_rows == sum(windows_of(d) for d in files.values())
    mine = preds.filter(pa.compute.equal(preds.column("path"), "s3://data/calls/lang=en/b.flac")).sort_by(
        "window"
    )
    got = np.array([s[0] for s in mine.column("speech").to_pylist()])
    np.testing.assert_allclose(got, reference(files["lang=en/b.flac"]), atol=2e-5)
    assert len(read_errors(result.out)) == 4


def test_constants_numbers_lists_and_zeros_are_checked_against_the_model() -> None:
    from scoring.constants import resolve
    from scoring.model import ModelInfo, TensorSpec

    inputs = (
        TensorSpec("x", "float32", ("batch", 576)),
        TensorSpec("sr", "int64", ()),
        TensorSpec("thresholds", "float32", (2,)),
        TensorSpec("state", "float32", (2, "batch", 128)),
        TensorSpec("h", "float32", (1, None, 64)),  # unnamed: the only dynamic dim is the batch
    )
    info = ModelInfo("m.onnx", "0" * 64, 0, inputs, (), {}, "", {})
    c = resolve({"sr": 16000, "thresholds": [0.25, 0.45], "state": "zeros", "h": "zeros"}, info)
    feed = c.feed(5)
    assert feed["sr"].dtype == np.int64 and feed["sr"].shape == () and int(feed["sr"]) == 16000
    np.testing.assert_array_equal(feed["thresholds"], np.array([0.25, 0.45], np.float32))
    assert feed["state"].shape == (2, 5, 128) and not feed["state"].any()
    assert feed["h"].shape == (1, 5, 64)
    with pytest.raises(ConfigError, match="has shape \\[3\\]"):
        resolve({"thresholds": [0.1, 0.2, 0.3]}, info)
    with pytest.raises(ConfigError, match="expected a number, a nested list or 'zeros'"):
        resolve({"state": "ones"}, info)
    with pytest.raises(ConfigError, match="every model input"):
        resolve({n.name: "zeros" for n in inputs}, info)
