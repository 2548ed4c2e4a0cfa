"""Models as exported (docs/models/exported.md): custom operators, weights in external data
files, declared dims too strict for the graph, an input of one row's encoded bytes.

On the driver, ``read_model`` reads the model with ``model.*`` applied: its sha256 and size cover
its external data files; ``model.dims`` replaces the declared dims of the inputs (and outputs) it
names; a node of an operator domain that no registered library provides is refused, naming the
domain and the setting. ``onnx`` is imported only for a model whose graph must be read: one that
lists a domain beyond ONNX Runtime's own, one that may name external data, or ``model.dims``.

On a worker, ``local_model`` gives a local path to the model with its data files beside it
(fetched once per node, verified), ``session_model`` what ORT loads (the path, or the graph with
its dims replaced, as bytes, and the folder holding its data), ``libraries`` the custom-op
libraries to register.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import importlib.util
import os
import posixpath
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from scoring import storage
from scoring.config import ModelConfig
from scoring.errors import ConfigError, ModelError
from scoring.model import (
    Dim,
    ModelInfo,
    TensorSpec,
    cache_dir,
    load_model_info,
    local_model_path,
    parse_model,
)

# Operator domains ONNX Runtime has built in: any other needs a library (model.custom_ops).
ORT_DOMAINS = frozenset(
    {
        "",
        "ai.onnx",
        "ai.onnx.ml",
        "ai.onnx.training",
        "ai.onnx.preview.training",
        "com.microsoft",
        "com.microsoft.nchwc",
        "com.microsoft.mlfeaturizers",
        "com.microsoft.experimental",
        "com.ms.internal.nhwc",
        "org.pytorch.aten",
    }
)
EXTENSIONS = "onnxruntime_extensions"
# Measured with onnxruntime-extensions 0.15.2: DecodeImage is in com.microsoft.extensions only.
EXTENSION_DOMAINS = ("ai.onnx.contrib", "com.microsoft.extensions")
EXTENSIONS_HINT = "model.custom_ops: [onnxruntime_extensions] (pip install 'scoring[extensions]')"


def read_model(cfg: ModelConfig, storage_options: dict[str, Any]) -> ModelInfo:
    """The model at ``cfg.uri`` as a job sees it. Raises ``ModelError`` (unreadable, external data
    missing, an operator domain nothing provides) or ``ConfigError`` (``model.custom_ops``,
    ``model.dims``)."""
    info, data = load_model_info(cfg.uri, storage_options)
    libraries(cfg, here=False)
    if b"location" in data:  # every external data entry has the key "location"; a cheap look first
        files = external_files(data, cfg.uri)
        if files:
            info = _with_external(info, data, files, storage_options)
    if cfg.dims:
        rewritten = parse_model(cfg.uri, with_dims(data, cfg.dims, cfg.uri))
        info = dataclasses.replace(rewritten, sha256=info.sha256, size=info.size, external=info.external)
    if set(info.opset) - ORT_DOMAINS:
        check_domains(cfg, node_domains(data), cfg.uri)
    if takes_encoded_bytes(info):  # fed one row per call: a row's outputs get a batch axis of 1
        info = dataclasses.replace(info, outputs=tuple(_batched(o) for o in info.outputs))
    return info


def takes_encoded_bytes(info: ModelInfo) -> bool:
    """A model of one input with one dynamic dim and no batch dim, uint8: it decodes a row's
    encoded bytes itself (onnxruntime-extensions' DecodeImage), one row per call."""
    if len(info.inputs) != 1:
        return False
    spec = info.inputs[0]
    dims = spec.shape
    return (
        spec.kind == "tensor"
        and spec.dtype == "uint8"
        and dims is not None
        and len(dims) == 1
        and not (isinstance(dims[0], int) and dims[0] > 0)
    )


def _batched(spec: TensorSpec) -> TensorSpec:
    shape = None if spec.shape is None else (1, *spec.shape)
    return dataclasses.replace(spec, shape=shape)


# -- custom operators ------------------------------------------------------------------------


def libraries(cfg: ModelConfig, here: bool = True) -> list[str]:
    """The shared libraries ``model.custom_ops`` names, as local paths (``here``: found in this
    process; else only checked). Raises ``ConfigError`` for a URI, a missing file, or
    onnxruntime-extensions not installed."""
    paths = []
    for entry in cfg.custom_ops:
        if entry == EXTENSIONS:
            if importlib.util.find_spec(EXTENSIONS) is None:
                raise ConfigError(
                    "config key 'model.custom_ops' names onnxruntime_extensions, which is not installed: "
                    "pip install 'scoring[extensions]'"
                )
            if here:
                from onnxruntime_extensions import get_library_path

                paths.append(get_library_path())
        elif "://" in entry:
            raise ConfigError(
                f"config key 'model.custom_ops' names {entry!r}: a custom-op library runs as native code "
                "in every worker, so scoring loads local files only, never one fetched from a URI. "
                "Install it on every node and give its local path"
            )
        elif not os.path.isfile(entry):
            raise ConfigError(
                f"config key 'model.custom_ops': no file {entry!r}; give onnxruntime_extensions or the "
                "local path of a shared library (.so) that implements the model's custom operators"
            )
        else:
            paths.append(entry)
    return paths


def node_domains(data: bytes) -> dict[str, set[str]]:
    """Operator domain -> the op types the model's nodes use from it (subgraphs and local
    functions included; not ``opset_import``, which may list domains no node uses)."""
    import onnx

    proto = onnx.load_model_from_string(data)
    local = {f.domain for f in proto.functions}
    found: dict[str, set[str]] = {}
    graphs = [proto.graph, *proto.functions]
    while graphs:
        graph = graphs.pop()
        for node in graph.node:
            if node.domain not in local:
                found.setdefault(node.domain or "ai.onnx", set()).add(node.op_type)
            for attr in node.attribute:
                graphs += [attr.g] if attr.HasField("g") else []
                graphs += list(attr.graphs)
    return found


def check_domains(cfg: ModelConfig, used: Mapping[str, set[str]], uri: str) -> None:
    """Raises ``ModelError`` naming an operator domain the model's nodes use that neither ONNX
    Runtime nor a library of ``model.custom_ops`` provides."""
    custom = {d: ops for d, ops in used.items() if d not in ORT_DOMAINS}
    if not custom or any(lib != EXTENSIONS for lib in cfg.custom_ops):
        return  # a library of the user's own: ONNX Runtime says at load time what it lacks
    provided = EXTENSION_DOMAINS if EXTENSIONS in cfg.custom_ops else ()
    for domain, ops in sorted(custom.items()):
        if domain in provided:
            continue
        fix = (
            f"set {EXTENSIONS_HINT}"
            if domain in EXTENSION_DOMAINS
            else "set model.custom_ops to the local path of the shared library that implements them "
            "(model.custom_ops: [/path/to/libops.so])"
        )
        raise ModelError(
            f"{uri} uses operators of domain {domain!r} ({', '.join(sorted(ops))}), which ONNX Runtime "
            f"does not have built in: {fix}"
        )


# -- declared dims ---------------------------------------------------------------------------


def with_dims(data: bytes, dims: Mapping[str, Sequence[Dim]], uri: str) -> bytes:
    """The model with the declared dims of the inputs and outputs in ``dims`` replaced (an int is
    a size, a string a symbolic dim, None an unnamed one). Raises ``ConfigError`` for a name that
    is no input or output."""
    import onnx

    proto = onnx.load_model_from_string(data)
    values = {v.name: v for v in [*proto.graph.input, *proto.graph.output]}
    for name, wanted in dims.items():
        value = values.get(name)
        if value is None or not value.type.HasField("tensor_type"):
            names = sorted(v.name for v in proto.graph.input if v.name not in _initializers(proto))
            raise ConfigError(
                f"config key 'model.dims' names {name!r}, which is no tensor input or output of {uri}; "
                f"its inputs are {names}, its outputs {[o.name for o in proto.graph.output]}"
            )
        shape = value.type.tensor_type.shape
        shape.ClearField("dim")
        for d in wanted:
            dim = shape.dim.add()
            if isinstance(d, int):
                dim.dim_value = d
            elif d is not None:
                dim.dim_param = d
    return proto.SerializeToString()  # type: ignore[no-any-return]


def _initializers(proto: Any) -> set[str]:
    return {i.name for i in proto.graph.initializer}


def session_model(path: str, cfg: ModelConfig) -> tuple[str | bytes, str | None]:
    """What ORT loads for the model at ``path``: the path itself, or, with ``model.dims``, the
    rewritten graph as bytes and the folder its external data is read from."""
    if not cfg.dims:
        return path, None
    return with_dims(Path(path).read_bytes(), cfg.dims, path), os.path.dirname(os.path.abspath(path))


# -- external data ---------------------------------------------------------------------------


def external_files(data: bytes, uri: str) -> list[str]:
    """The files that hold the model's external data, by their names beside it. Raises
    ``ModelError`` for one outside the model's folder."""
    import onnx

    proto = onnx.load_model_from_string(data)
    tensors = list(proto.graph.initializer)
    graphs = [proto.graph]
    while graphs:
        graph = graphs.pop()
        tensors += list(graph.initializer)
        for node in graph.node:
            for attr in node.attribute:
                tensors += ([attr.t] if attr.HasField("t") else []) + list(attr.tensors)
                graphs += ([attr.g] if attr.HasField("g") else []) + list(attr.graphs)
    names = set()
    for t in tensors:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            name = {e.key: e.value for e in t.external_data}.get("location", "")
            if not name or name.startswith("/") or ".." in Path(name).parts:
                raise ModelError(
                    f"{uri}: tensor {t.name!r} keeps its data in {name!r}, which is not a file beside "
                    "the model; save the model with its data files in its own folder"
                )
            names.add(name)
    return sorted(names)


def _with_external(info: ModelInfo, data: bytes, files: list[str], so: dict[str, Any]) -> ModelInfo:
    folder = posixpath.dirname(info.uri)
    blobs = {}
    for name in files:
        uri = posixpath.join(folder, name) if folder else name
        try:
            blobs[name] = storage.read_bytes(uri, so)
        except Exception as exc:  # StorageError and what fsspec raises for a missing file
            raise ModelError(
                f"{info.uri} keeps weights in {name!r}, which cannot be read beside it ({uri}: {exc}); "
                "copy the model's data files into the same folder"
            ) from exc
    return dataclasses.replace(
        info,
        sha256=_digest(data, blobs),
        size=len(data) + sum(map(len, blobs.values())),
        external=tuple(files),
    )


def _digest(data: bytes, blobs: Mapping[str, bytes]) -> str:
    """The sha256 of a model and its data files (names included, in order)."""
    h = hashlib.sha256(data)
    for name in sorted(blobs):
        h.update(name.encode())
        h.update(blobs[name])
    return h.hexdigest()


def local_model(info: ModelInfo, storage_options: dict[str, Any]) -> str:
    """A local path of the model, its external data files beside it. Local files are used in
    place; remote ones are copied into ``cache_dir()/models/<sha256>/`` once per node, under a
    lock, and verified. Raises ``ModelError`` when they changed since the job started."""
    if not info.external:
        return local_model_path(info.uri, info.sha256, storage_options)
    fs, path = storage.split_uri(info.uri, storage_options)
    if storage.is_local(fs):
        return str(path)
    folder = cache_dir() / "models" / info.sha256
    target = folder / posixpath.basename(path)
    if target.exists():
        return str(target)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one fetch per node; the others wait, then reuse it
        if not target.exists():
            data = storage.read_bytes(info.uri, storage_options)
            base = posixpath.dirname(info.uri)
            blobs = {n: storage.read_bytes(posixpath.join(base, n), storage_options) for n in info.external}
            if _digest(data, blobs) != info.sha256:
                raise ModelError(
                    f"{info.uri} or its data files changed while the job started. Do not overwrite them "
                    "during a job"
                )
            tmp = folder.with_suffix(f".{os.getpid()}.tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            for name, blob in {posixpath.basename(path): data, **blobs}.items():
                (tmp / name).parent.mkdir(parents=True, exist_ok=True)
                (tmp / name).write_bytes(blob)
            os.replace(tmp, folder)
    return str(target)
