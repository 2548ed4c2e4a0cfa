"""Every seam's implementations by name: plain data, imported only when a job uses them.

Adding an input format, an output, a preprocessor, a postprocessor or a runner is a module of its
own and one line here (docs/architecture.md). Names are what users write in a config:
``input.format``, ``output.format``, ``compute.runner``; the postprocessors by their key under
``output``. A module is imported by ``load`` the first time a job needs it, so importing
``scoring`` imports no format, no ONNX Runtime, no Ray (as fsspec's ``registry`` does).

This module imports nothing of scoring's: every layer may read it.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any

# Format name -> "module:Class": how files become shards and shards become rows (scoring.formats).
FORMATS = {
    "parquet": "scoring.formats.parquet:Parquet",
    "image_files": "scoring.formats.image_files:ImageFiles",
    "webdataset": "scoring.formats.webdataset:WebDataset",
    "delta": "scoring.formats.delta:Delta",
    "iceberg": "scoring.formats.iceberg:Iceberg",
}


@dataclasses.dataclass(frozen=True)
class Input:
    """What an ``input.format`` name means: the formats that may read ``input.uri`` (tried in
    order on the listing; the first one's ``Options`` is the input section's class), and what a
    row holds for the model by default (its preprocessor: columns, images, ...)."""

    formats: tuple[str, ...]
    data: str


INPUTS = {
    "parquet": Input(("parquet",), "columns"),
    "webdataset": Input(("webdataset",), "images"),
    "delta": Input(("delta",), "columns"),
    "iceberg": Input(("iceberg",), "columns"),
    "images": Input(("image_files", "parquet"), "images"),
}

# Preprocessor name -> module (with ``needs`` and ``resolve``): a chunk's columns -> model inputs.
PREPROCESSORS = {
    "columns": "scoring.preprocess.columns",
    "images": "scoring.preprocess.images",
    "text": "scoring.preprocess.text",
}

# Postprocessor -> module (with ``Config`` and ``resolve``): raw outputs of a batch -> prediction
# columns. The key is its config key under ``output``; they run in this order, each adding columns.
POSTPROCESSORS = {
    "postprocess": "scoring.postprocess.classify",
    "embedding": "scoring.postprocess.embedding",
    "detections": "scoring.postprocess.detections",
    "text": "scoring.postprocess.text",
    "mask": "scoring.postprocess.mask",
}

# output.format -> "module:Class": what the prediction files become once the job is complete.
OUTPUTS = {
    "parquet": "scoring.outputs.parquet:Files",
    "delta": "scoring.outputs.delta:Delta",
    "iceberg": "scoring.outputs.iceberg:Iceberg",
}

# compute.runner -> "module:Class": where the workers run and how shards reach them.
RUNNERS = {
    "ray": "scoring.runners.ray:RayRunner",
    "local": "scoring.runners.local:LocalRunner",
}


def load(path: str) -> Any:
    """The object a registry entry names: ``"module:Name"``, or a module alone."""
    module, _, name = path.partition(":")
    loaded = importlib.import_module(module)
    return getattr(loaded, name) if name else loaded
