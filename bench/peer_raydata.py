"""The same jobs with Ray Data, as Ray 2.60's batch-inference guide writes them.

    python bench/peer_raydata.py tables MODEL DATA OUT   read_parquet -> map_batches(ORT class) -> write
    python bench/peer_raydata.py images MODEL DATA OUT   read_images(size=224x224) -> map_batches -> write
    python bench/peer_raydata.py text MODEL,TOKENIZER DATA OUT   read_parquet -> tokenize + ORT + mean pooling

One ORT session per actor of an ``ActorPoolStrategy(size=N)`` pool, its intra-op threads set to
the actor's CPUs; Ray started in the command (``ray.init``), as a user's script does.

The guide's pattern as written (N actors of 1 CPU each on N cores) never finishes on a small
machine: the actors hold every CPU and the read tasks (1 CPU each) are never scheduled
(ray-project/ray#44687; NOTES.md; seen again here with 2 actors of 0.75 CPU). So the pool is
N = cores actors of ``(cores - 1) / N`` CPU each, one ORT thread each: one CPU left to Ray
Data's reads and writes. ``RAYDATA_ACTORS`` and ``RAYDATA_CPUS`` change that.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import numpy as np

CORES = os.cpu_count() or 2
ACTORS = int(os.environ.get("RAYDATA_ACTORS", CORES))
CPUS = float(os.environ.get("RAYDATA_CPUS", max(CORES - 1, 1) / ACTORS))
THREADS = max(1, round(CPUS))  # the actor's CPUs, as ORT threads
MEAN, STD = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)


def _session(model: str) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = THREADS  # ORT ignores OMP_NUM_THREADS
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


class Tables:
    def __init__(self, model: str) -> None:
        self.sess = _session(model)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = np.stack(batch["features"]).astype(np.float32)  # Ray hands a fixed-size list as objects
        return {"id": batch["id"], "probs": self.sess.run(None, {"x": x})[0]}


class Images:
    def __init__(self, model: str) -> None:
        self.sess = _session(model)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = batch["image"].astype(np.float32) * np.float32(1 / 255.0)
        x = ((x - MEAN) / STD).transpose(0, 3, 1, 2)
        return {"path": batch["path"], "probs": self.sess.run(None, {"image": np.ascontiguousarray(x)})[0]}


class Text:
    def __init__(self, model: str, max_length: int = 256) -> None:
        from tokenizers import Tokenizer

        onnx_path, tokenizer = model.split(",")
        self.tok = Tokenizer.from_file(tokenizer)
        self.tok.enable_truncation(max_length)
        self.tok.enable_padding(pad_id=self.tok.token_to_id("[PAD]") or 0)
        self.sess = _session(onnx_path)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        enc = self.tok.encode_batch([str(t) for t in batch["text"]])
        ids = np.array([e.ids for e in enc], np.int64)
        mask = np.array([e.attention_mask for e in enc], np.int64)
        feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        states = self.sess.run(None, feed)[0]
        mean = (states * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
        return {
            "id": batch["id"],
            "embedding": (mean / np.linalg.norm(mean, axis=1, keepdims=True)).astype(np.float32),
        }


def main() -> None:
    import ray
    from ray.data import ActorPoolStrategy

    kind, model, data, out = sys.argv[1:5]
    ray.init(include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    if kind == "images":
        ds = ray.data.read_images(data, size=(224, 224), mode="RGB", include_paths=True)
        udf, batch_size = Images, 64
    else:
        ds = ray.data.read_parquet(data)
        udf, batch_size = (Tables, 4096) if kind == "tables" else (Text, 256)
    ds = ds.map_batches(
        udf,
        fn_constructor_args=(model,),
        compute=ActorPoolStrategy(size=ACTORS),
        num_cpus=CPUS,
        batch_size=batch_size,
        batch_format="numpy",
    )
    ds.write_parquet(out)
    ray.shutdown()


if __name__ == "__main__":
    main()
