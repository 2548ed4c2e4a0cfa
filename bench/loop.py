"""The baseline a user would write without scoring: one process, one ORT session, one file at a time.

    python bench/loop.py tables MODEL OUT FILE...   pyarrow read -> ORT -> a Parquet file per input file
    python bench/loop.py images MODEL OUT FILE...   PIL decode + resize + normalise -> ORT -> a file per 1,000
    python bench/loop.py text MODEL,TOKENIZER OUT FILE...   tokenizers batch encode 256 rows in input
                                                   order, pad to the batch's longest -> ORT -> mean pooling
    python bench/loop.py audio MODEL OUT FILE...    soundfile read, channels averaged, soxr to 16 kHz,
                                                   576-sample windows every 512 -> silero VAD

ORT uses every core (intra-op threads = the machine's CPUs); reading, decoding and writing run
on the main thread between ORT calls. Run as a command, so its time includes Python's start-up
and imports, like the other contenders'.
"""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.parquet as pq

THREADS = os.cpu_count() or 2
MEAN, STD = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)


def session(model: str, providers: list[str] | None = None) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = THREADS
    return ort.InferenceSession(model, opts, providers=providers or ["CPUExecutionProvider"])


def tables(model: str, out: Path, files: list[str], providers: list[str] | None = None) -> int:
    out.mkdir(parents=True, exist_ok=True)
    sess, rows = session(model, providers), 0
    for i, f in enumerate(files):
        t = pq.read_table(f)
        x = t.column("features").combine_chunks().flatten().to_numpy().reshape(-1, 64)
        probs = np.concatenate([sess.run(None, {"x": x[j : j + 4096]})[0] for j in range(0, len(x), 4096)])
        flat = pa.FixedSizeListArray.from_arrays(pa.array(probs.reshape(-1)), probs.shape[1])
        pq.write_table(pa.table({"id": t.column("id"), "probs": flat}), out / f"{i}.parquet")
        rows += len(x)
    return rows


def preprocess(data: bytes) -> np.ndarray:
    from PIL import Image

    img = Image.open(io.BytesIO(data)).convert("RGB").resize((224, 224), Image.Resampling.BILINEAR)
    x = np.asarray(img, dtype=np.float32) * np.float32(1 / 255.0)
    return ((x - MEAN) / STD).transpose(2, 0, 1)


def images(model: str, out: Path, files: list[str], providers: list[str] | None = None) -> int:
    out.mkdir(parents=True, exist_ok=True)
    sess = session(model, providers)
    for s in range(0, len(files), 1000):
        chunk = files[s : s + 1000]
        probs = []
        for i in range(0, len(chunk), 64):
            x = np.stack([preprocess(Path(f).read_bytes()) for f in chunk[i : i + 64]])
            probs.append(sess.run(None, {"image": x})[0])
        p = np.concatenate(probs)
        flat = pa.FixedSizeListArray.from_arrays(pa.array(p.reshape(-1)), p.shape[1])
        pq.write_table(pa.table({"path": chunk, "probs": flat}), out / f"{s}.parquet")
    return len(files)


def text(model: str, out: Path, files: list[str], max_length: int = 256) -> int:
    """Sentence embeddings as the model card's example computes them, 256 rows at a time."""
    from tokenizers import Tokenizer

    onnx_path, tokenizer = model.split(",")
    tok = Tokenizer.from_file(tokenizer)
    tok.enable_truncation(max_length)
    tok.enable_padding(pad_id=tok.token_to_id("[PAD]") or 0)  # to the longest row of each batch
    out.mkdir(parents=True, exist_ok=True)
    sess, rows = session(onnx_path), 0
    for i, f in enumerate(files):
        t = pq.read_table(f)
        texts = t.column("text").to_pylist()
        vectors = []
        for j in range(0, len(texts), 256):
            enc = tok.encode_batch(texts[j : j + 256])
            ids = np.array([e.ids for e in enc], np.int64)
            mask = np.array([e.attention_mask for e in enc], np.int64)
            feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
            states = sess.run(None, feed)[0]
            mean = (states * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
            vectors.append(mean / np.linalg.norm(mean, axis=1, keepdims=True))
        v = np.concatenate(vectors).astype(np.float32)
        flat = pa.FixedSizeListArray.from_arrays(pa.array(v.reshape(-1)), v.shape[1])
        pq.write_table(pa.table({"id": t.column("id"), "embedding": flat}), out / f"{i}.parquet")
        rows += len(texts)
    return rows


def audio(
    model: str, out: Path, files: list[str], rate: int = 16000, window: int = 576, hop: int = 512
) -> int:  # noqa: E501
    import soundfile as sf
    import soxr

    out.mkdir(parents=True, exist_ok=True)
    sess, rows, part = session(model), 0, []
    for i, f in enumerate(files):
        x, sr = sf.read(f, dtype="float32", always_2d=True)
        mono = (x[:, 0] + x[:, 1]) * np.float32(0.5) if x.shape[1] == 2 else x[:, 0]
        y = soxr.resample(mono, sr, rate)
        n = max(0, -(-(len(y) - window) // hop)) + 1
        padded = np.zeros((n - 1) * hop + window, np.float32)
        padded[: len(y)] = y[: len(padded)]
        windows = np.lib.stride_tricks.sliding_window_view(padded, window)[::hop]
        state = np.zeros((2, n, 128), np.float32)
        feed = {"input": np.ascontiguousarray(windows), "state": state, "sr": np.array(rate)}
        probs = sess.run(["output"], feed)[0]
        part.append(pa.table({"path": [f] * n, "window": np.arange(n), "speech": probs[:, 0]}))
        rows += n
        if len(part) == 100 or i == len(files) - 1:
            pq.write_table(pa.concat_tables(part), out / f"{i // 100}.parquet")
            part = []
    return rows


def main() -> None:
    kind, model, out, *files = sys.argv[1:]
    {"tables": tables, "images": images, "text": text, "audio": audio}[kind](model, Path(out), files)


if __name__ == "__main__":
    main()
