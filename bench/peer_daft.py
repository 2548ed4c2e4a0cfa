"""The same jobs with Daft (native runner), as a Daft user would write them; run in .venv-peers.

    python bench/peer_daft.py tables MODEL DATA OUT   read_parquet -> ORT class UDF -> write_parquet
    python bench/peer_daft.py images MODEL DATA OUT   glob, download, decode, resize -> ORT class UDF -> write

One ORT session per UDF instance (``@daft.cls`` + ``@daft.method.batch``), as many instances as
cores, one intra-op thread each; images decoded and resized by Daft's own expressions, normalised
in the UDF exactly as the loop does. Daft 0.7 pins pyarrow<26 and ray<2.58, hence its own venv.
"""

from __future__ import annotations

import os
import sys

import daft
import numpy as np
import onnxruntime as ort
import pyarrow as pa
from daft import DataType, col

CORES = os.cpu_count() or 2
MEAN, STD = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)


def _session(model: str) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


@daft.cls(max_concurrency=CORES)
class Tables:
    def __init__(self, model: str) -> None:
        self.sess = _session(model)

    @daft.method.batch(return_dtype=DataType.fixed_size_list(DataType.float32(), 10), batch_size=4096)
    def predict(self, features: daft.Series) -> pa.Array:
        x = features.to_arrow().flatten().to_numpy().reshape(-1, 64)
        probs = self.sess.run(None, {"x": x})[0]
        return pa.FixedSizeListArray.from_arrays(pa.array(probs.reshape(-1)), 10)


@daft.cls(max_concurrency=CORES)
class Images:
    def __init__(self, model: str) -> None:
        self.sess = _session(model)

    @daft.method.batch(return_dtype=DataType.fixed_size_list(DataType.float32(), 10), batch_size=64)
    def predict(self, image: daft.Series) -> pa.Array:
        x = np.stack(image.to_pylist()).astype(np.float32) * np.float32(1 / 255.0)
        x = ((x - MEAN) / STD).transpose(0, 3, 1, 2)
        probs = self.sess.run(None, {"image": np.ascontiguousarray(x)})[0]
        return pa.FixedSizeListArray.from_arrays(pa.array(probs.reshape(-1)), 10)


def main() -> None:
    kind, model, data, out = sys.argv[1:5]
    daft.set_runner_native()
    if kind == "tables":
        df = daft.read_parquet(f"{data}/*.parquet")
        df = df.with_column("probs", Tables(model).predict(col("features"))).select("id", "probs")
    else:
        df = daft.from_glob_path(f"{data}/**/*.jpg").select("path")
        df = df.with_column("image", col("path").download().decode_image(mode="RGB").resize(224, 224))
        df = df.with_column("probs", Images(model).predict(col("image"))).select("path", "probs")
    df.write_parquet(out, write_mode="overwrite")


if __name__ == "__main__":
    main()
