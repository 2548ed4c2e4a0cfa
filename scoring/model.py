"""The model file: fetching, hashing, caching per node, and reading its signature.

``ModelInfo`` is plain data (picklable, JSON-able) read with ``onnx`` on the driver, so the job
can check the config against the model before Ray starts and without an ORT session.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import os
from pathlib import Path
from typing import Any

from scoring import storage
from scoring.errors import ModelError, StorageError

Dim = int | str | None  # static size, symbolic name, or unnamed dynamic

# ONNX TensorProto element type -> numpy dtype name ("str" for strings).
ONNX_TO_NUMPY = {
    1: "float32",
    2: "uint8",
    3: "int8",
    4: "uint16",
    5: "int16",
    6: "int32",
    7: "int64",
    8: "str",
    9: "bool",
    10: "float16",
    11: "float64",
    12: "uint32",
    13: "uint64",
}


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """One model input or output. ``kind`` is "tensor", "sequence<map>" or "map"."""

    name: str
    dtype: str
    shape: tuple[Dim, ...] | None
    kind: str = "tensor"

    @property
    def batch_dim(self) -> Dim:
        return self.shape[0] if self.shape else None

    @property
    def row_shape(self) -> tuple[Dim, ...]:
        return tuple(self.shape[1:]) if self.shape else ()

    def describe(self) -> str:
        dims = ", ".join("?" if d is None else str(d) for d in self.shape or ())
        shape = f"[{dims}]" if self.shape is not None else "(unknown shape)"
        return f"{self.name}: {self.kind if self.kind != 'tensor' else self.dtype} {shape}"


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    uri: str
    sha256: str
    size: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    opset: dict[str, int]
    producer: str
    metadata: dict[str, str]
    # Rows of the embedding table that ``input_ids`` index (text models), when the graph shows it.
    vocab_rows: int | None = None
    # Files beside the .onnx that hold its weights (external data), by their names in the model;
    # ``sha256`` and ``size`` then cover them too (``scoring.exported``).
    external: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def input(self, name: str) -> TensorSpec:
        return next(t for t in self.inputs if t.name == name)


def load_model_info(uri: str, storage_options: dict[str, Any]) -> tuple[ModelInfo, bytes]:
    """Fetch the model, parse it and return its signature and bytes.

    Raises ``ModelError`` if it is missing, unreadable or not an ONNX model.
    """
    try:
        data = storage.read_bytes(uri, storage_options)
    except StorageError as exc:
        raise ModelError(f"cannot read model {uri}: {exc}. Check model.uri.") from exc
    return parse_model(uri, data), data


def parse_model(uri: str, data: bytes) -> ModelInfo:
    import onnx
    from google.protobuf.message import DecodeError

    try:
        proto = onnx.load_model_from_string(data)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise ModelError(
            f"{uri} is not a valid ONNX model ({type(exc).__name__}: {exc}). "
            "Re-export it, or check model.uri points at the .onnx file."
        ) from exc
    if not proto.graph.node and not proto.graph.output:
        raise ModelError(
            f"{uri} parsed as ONNX but has an empty graph; it is probably not an ONNX model. Check model.uri."
        )
    initializers = {i.name for i in proto.graph.initializer}
    inputs = tuple(_spec(v) for v in proto.graph.input if v.name not in initializers)
    outputs = tuple(_spec(v) for v in proto.graph.output)
    return ModelInfo(
        uri=uri,
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        inputs=inputs,
        outputs=outputs,
        opset={o.domain or "ai.onnx": o.version for o in proto.opset_import},
        producer=f"{proto.producer_name} {proto.producer_version}".strip(),
        metadata={p.key: p.value for p in proto.metadata_props},
        vocab_rows=_table_rows(proto.graph, "input_ids") if "input_ids" in {i.name for i in inputs} else None,
    )


# Ops between a stored table and the Gather that indexes it (quantised exports dequantise first).
TABLE_PATH = ("Cast", "Identity", "Mul", "Div", "Add", "DequantizeLinear")


def _table_rows(graph: Any, name: str) -> int | None:
    """The rows of the table that the first Gather indexed by ``name`` reads: its vocabulary."""
    indices = {name}
    producers = {out: node for node in graph.node for out in node.output}
    tables = {t.name: t for t in graph.initializer}
    for node in graph.node:  # topological order: casts of the ids come before their Gather
        if node.op_type in ("Cast", "Identity", "Unsqueeze", "Reshape") and node.input[0] in indices:
            indices.update(node.output)
        elif node.op_type == "Gather" and len(node.input) == 2 and node.input[1] in indices:
            data = node.input[0]
            for _ in range(8):
                if data in tables:
                    dims = tables[data].dims
                    return int(dims[0]) if dims else None
                producer = producers.get(data)
                if producer is None or producer.op_type not in TABLE_PATH:
                    return None
                data = producer.input[0]
            return None
    return None


def _spec(value: Any) -> TensorSpec:
    t = value.type
    which = t.WhichOneof("value")
    if which == "tensor_type":
        dtype = ONNX_TO_NUMPY.get(t.tensor_type.elem_type, f"onnx:{t.tensor_type.elem_type}")
        shape = None
        if t.tensor_type.HasField("shape"):
            shape = tuple(
                d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                for d in t.tensor_type.shape.dim
            )
        return TensorSpec(value.name, dtype, shape)
    if which == "sequence_type" and t.sequence_type.elem_type.WhichOneof("value") == "map_type":
        return TensorSpec(value.name, _map_dtype(t.sequence_type.elem_type.map_type), None, "sequence<map>")
    if which == "map_type":
        return TensorSpec(value.name, _map_dtype(t.map_type), None, "map")
    return TensorSpec(value.name, "object", None, which or "unknown")


def _map_dtype(map_type: Any) -> str:
    key = ONNX_TO_NUMPY.get(map_type.key_type, "?")
    val = ONNX_TO_NUMPY.get(map_type.value_type.tensor_type.elem_type, "?")
    return f"map<{key},{val}>"


def cache_dir() -> Path:
    return Path(os.environ.get("SCORING_CACHE_DIR", Path.home() / ".cache" / "scoring"))


def local_model_path(uri: str, sha256: str, storage_options: dict[str, Any]) -> str:
    """A local path holding the model with this sha256, fetched at most once per node."""
    return local_copy(uri, sha256, storage_options, "models", ".onnx")


def local_copy(uri: str, sha256: str, storage_options: dict[str, Any], folder: str, suffix: str) -> str:
    """A local path holding the file at ``uri`` with this sha256, fetched at most once per node.

    Local files are used in place. Remote ones are copied into
    ``cache_dir()/FOLDER/<sha256>SUFFIX`` under a file lock, so the workers of one node share one
    download; the copy is verified.
    """
    fs, path = storage.split_uri(uri, storage_options)
    if storage.is_local(fs):
        return path
    target = cache_dir() / folder / f"{sha256}{suffix}"
    if target.exists():
        return str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one fetch per node; the others wait, then reuse it
        if not target.exists():
            data = storage.read_bytes(uri, storage_options)
            found = hashlib.sha256(data).hexdigest()
            if found != sha256:
                raise ModelError(
                    f"{uri} changed while the job started: sha256 {found}, "
                    f"expected {sha256}. Do not overwrite it during a job."
                )
            tmp = target.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, target)
    return str(target)
