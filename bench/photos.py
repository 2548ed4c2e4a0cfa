"""``make bench`` (``--only photos``): real photos are megapixels, not 224x224.

200 JPEGs of 4000x3000 (smooth content plus sensor noise, quality 90), scored by the CNN at
224x224: the loop as users write it (Pillow decodes the whole photo, then resizes), Daft (its own
download / decode / resize), Ray Data (``read_images(size=...)``: Pillow, whole photos) and
``scoring run`` on both runners (draft decoding: the JPEG decoder
scales by 1/2-1/8 to the size the resize needs). Whole commands at 50 and 200 photos; the
steady state is the marginal rate between them.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import numpy as np

from bench import ROOT, Failed, contenders, images_job, scoring_argv, timed
from scoring.demo import make_cnn

SIZES = (50, 200)
WIDTH, HEIGHT = 4000, 3000


def photos_data() -> tuple[str, dict[int, Path]]:
    from PIL import Image

    model = make_cnn(ROOT / "cnn.onnx", size=224, classes=10)
    folders = {n: ROOT / f"photos-{n}" for n in SIZES}
    big = folders[SIZES[1]]
    if not big.exists():
        print(f"writing {SIZES[1]} photos of {WIDTH}x{HEIGHT} (once)", flush=True)
        tmp = big.with_name(big.name + ".tmp")
        (tmp / "d000").mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(11)
        yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
        for i in range(SIZES[1]):
            a, b, c = rng.uniform(0, 6.28, 3)
            img = np.stack(
                [
                    127 + 90 * np.sin(xx / (200 + 80 * a) + b),
                    127 + 90 * np.cos(yy / (150 + 60 * b) + c),
                    127 + 90 * np.sin((xx + yy) / (250 + 70 * c) + a),
                ],
                axis=-1,
            )
            noisy = np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)
            Image.fromarray(noisy).save(tmp / "d000" / f"photo-{i:04d}.jpg", quality=90)
        tmp.rename(big)
    small = folders[SIZES[0]]
    if not small.exists():
        (small / "d000").mkdir(parents=True)
        for f in sorted((big / "d000").glob("*.jpg"))[: SIZES[0]]:
            (small / "d000" / f.name).hardlink_to(f)
    return model, folders


def photos(reps: int, peers: str | None) -> None:
    model, folders = photos_data()
    out = ROOT / "out"

    def scoring(runner: str) -> Any:
        def argv(n: int) -> tuple[list[str], Path, Path]:
            target = out / f"photos-scoring-{runner}"
            cfg = images_job(str(folders[n]), model, str(target), files_per_shard=25)
            return scoring_argv(cfg, runner), target / "_job.json", target

        return argv

    peer_runs = contenders("images", model, folders, peers)
    peers_here = ("loop", "daft", "ray data")
    runs = {k: v for k, v in peer_runs.items() if k in peers_here}
    runs |= {"scoring local": scoring("local"), "scoring ray": scoring("ray")}
    walls: dict[str, dict[int, list[float]]] = {name: {n: [] for n in SIZES} for name in runs}
    for rep in range(reps):
        for n in SIZES:
            for name, make in runs.items():
                argv, job, _ = make(n)
                try:
                    walls[name][n].append(timed(argv, job).wall_s)
                except Failed as exc:
                    if name.startswith("scoring"):
                        raise
                    # A peer's crash is the peer's: reported, left out of its medians.
                    print(f"  rep {rep + 1} {n:>4} {name:<14} FAILED ({exc})", flush=True)
                    continue
                print(f"  rep {rep + 1} {n:>4} {name:<14} {walls[name][n][-1]:7.2f}s", flush=True)
    print(f"\n== photos: {WIDTH}x{HEIGHT} JPEGs to 224x224, {SIZES[0]} and {SIZES[1]} (median of {reps}) ==")
    steady = {}
    for name, by_size in walls.items():
        if not all(by_size.values()):
            print(f"{name:<15} no complete run at some size: left out")
            continue
        ts, tb = (statistics.median(by_size[n]) for n in SIZES)
        steady[name] = (SIZES[1] - SIZES[0]) / (tb - ts) if tb > ts else float("inf")
        print(f"{name:<15}{ts:8.2f}s {tb:8.2f}s  steady {steady[name]:7.1f} photos/s")
    if "scoring ray" in steady and "ray data" in steady:
        ratio = steady["scoring ray"] / steady["ray data"]
        print(f"  {'met ' if ratio >= 1 else 'MISS'} ray: steady state ahead of Ray Data's ({ratio:.2f}x)")
    mine = steady["scoring local"]
    for peer in peers_here:
        if peer in steady:
            ratio = mine / steady[peer]
            print(
                f"  {'met ' if ratio >= 3 else 'MISS'} local: steady state >= 3x the {peer}'s ({ratio:.2f}x)"
            )
