"""The Ray stages: ``ShardScorer`` (an actor holding one ORT session) and ``decode_images``
(a stateless CPU task for image shards).

Each shard travels as one row, so one actor scores a whole shard, in ``compute.batch_size``
batches, and writes its predictions itself: no shard's rows are split across actors, nothing
large goes back through the driver, and the record it returns is a few hundred bytes of JSON.
Timing is measured here, where the work happens (see README "How timing is attributed").
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pickle
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa

from scoring import images, sink, sources, storage
from scoring.config import Config
from scoring.errors import InputError, RowError
from scoring.model import ModelInfo, local_model_path
from scoring.predict import output_columns, run_groups
from scoring.tensors import Feed, Group, feed_columns, plan_feeds, prepare

# Rows of a table shard in memory at once (at least compute.batch_size): an actor's memory
# stays flat whatever the file size.
CHUNK_ROWS = 65536


@dataclasses.dataclass(frozen=True)
class JobSpec:
    """Everything a stage needs, checked on the driver; plain data, cheap to pickle."""

    config: Config
    model: ModelInfo
    image_size: tuple[int, int] | None = None
    image_layout: str | None = None


def decode_images(batch: dict[str, np.ndarray], spec: JobSpec) -> dict[str, np.ndarray]:
    """Read and decode image shards (one per row) into uint8 arrays; broken files become errors."""
    out = [
        pickle.dumps(_decode_shard(int(i), str(u), list(f), str(k), spec))
        for i, u, f, k in zip(batch["index"], batch["uri"], batch["files"], batch["kind"])
    ]
    return {"index": batch["index"], "payload": np.array(out, dtype=object)}


def _decode_shard(index: int, uri: str, files: list[str], kind: str, spec: JobSpec) -> dict[str, Any]:
    cfg, so = spec.config, spec.config.storage_options
    started = time.time()
    read_s = decode_s = 0.0
    keep: pa.Table | None = None
    if kind == "image_parquet":
        t0 = time.perf_counter()
        try:
            table, nbytes = sources.read_parquet(uri, [cfg.input.image_column, *cfg.input.keep], so)
        except RowError as exc:
            return {"index": index, "shard": uri, "started_at": started, "failed": exc}
        blobs = table.column(cfg.input.image_column).to_pylist()
        keep = table.drop_columns([cfg.input.image_column]) if cfg.input.keep else None
        read_s = time.perf_counter() - t0
    else:
        blobs, nbytes = [], 0
        for path in files:
            t0 = time.perf_counter()
            try:
                blobs.append(storage.read_bytes(path, so))
                nbytes += len(blobs[-1])
            except Exception as exc:  # one unreadable file is a rejected row, not a failed job
                blobs.append(exc)
            read_s += time.perf_counter() - t0
    arrays, ok_rows, errors = [], [], []
    assert spec.image_size is not None
    for row, blob in enumerate(blobs):
        t0 = time.perf_counter()
        try:
            if isinstance(blob, Exception):
                raise blob
            if blob is None:
                raise ValueError(f"column {cfg.input.image_column} is null")
            arrays.append(images.decode(blob, cfg.input.image, spec.image_size))
            ok_rows.append(row)
        except Exception as exc:  # PIL raises many types for bad bytes; the row is rejected
            stage = "read" if isinstance(blob, Exception) else "decode"
            where = files[row] if files else f"{uri} row {row}"
            errors.append(
                [
                    row,
                    row + 1,
                    stage,
                    type(exc).__name__,
                    f"{where}: cannot decode image: {exc}. The file is skipped; fix or remove it.",
                ]
            )
        decode_s += time.perf_counter() - t0
    h, w = spec.image_size
    c = 1 if cfg.input.image.mode == "L" else 3
    batch = np.stack(arrays) if arrays else np.zeros((0, h, w, c), np.uint8)
    return {
        "index": index,
        "shard": uri,
        "started_at": started,
        "rows": len(blobs),
        "bytes": nbytes,
        "images": batch,
        "ok_rows": np.asarray(ok_rows, np.int64),
        "errors": errors,
        "read_s": read_s,
        "preprocess_s": decode_s,
        "paths": files,
        "keep": keep,
    }


class ShardScorer:
    """Ray Data callable class: ``__init__`` builds and warms the session, ``__call__`` scores
    the shards of a batch (one row each) and returns one JSON record per shard.

    Ray runs up to ``compute.shards_in_flight`` calls of one actor at once, in threads. Fetching an
    object and uploading predictions run outside ``turn``; everything that uses the session
    (decoding chunks, tensors, inference, building parts) runs inside it, one shard at a time,
    so inference never competes with itself for the actor's CPUs or GPU.
    """

    SPEC: JobSpec | None = None

    def __init__(self) -> None:
        import ray

        from scoring.session import build_session

        spec = self.SPEC
        if spec is None:
            raise TypeError("ShardScorer needs a JobSpec: build the class with scorer_for(spec)")
        cfg = spec.config
        gpu_ids = [int(g) for g in ray.get_gpu_ids()] if cfg.compute.gpus_per_actor > 0 else []
        if not gpu_ids:
            # Since Ray 2.60, actors with num_gpus=0 can see every GPU of their node: hide them.
            os.environ["CUDA_VISIBLE_DEVICES"] = ""
        threads = cfg.model.intra_op_threads
        if threads == "auto":
            threads = max(1, int(cfg.compute.cpus_per_actor))
        path = local_model_path(spec.model.uri, spec.model.sha256, cfg.storage_options)
        self.spec = spec
        self.lock = threading.Lock()
        self.session = build_session(path, spec.model, cfg.model, threads=int(threads), gpu_ids=gpu_ids)
        self.columns = output_columns(spec.model, cfg.output.outputs)
        self.feeds: dict[pa.Schema, list[Feed]] = {}
        # Columns read from each table shard: the same for every shard of the job.
        self.needed = list(dict.fromkeys([*feed_columns(spec.model, cfg.input.columns), *cfg.input.keep]))
        ctx = ray.get_runtime_context()
        # IP and node id: several nodes can share a machine (and an IP).
        self.node = f"{ray.util.get_node_ip_address()}/{ctx.get_node_id()[:8]}"
        self.actor = ctx.get_actor_id() or "driver"
        self.gpus = {"gpu_ids": gpu_ids, "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if "payload" in batch:
            records = [self.score_images(pickle.loads(p)) for p in batch["payload"]]
        else:
            records = [self.score_table(int(i), str(u)) for i, u in zip(batch["index"], batch["uri"])]
        return {"record": np.array([json.dumps(r) for r in records], dtype=object)}

    def score_table(self, index: int, uri: str) -> dict[str, Any]:
        """Read, score and write one Parquet shard, ``CHUNK_ROWS`` rows at a time."""
        cfg = self.spec.config
        rec = self._record(index, uri, time.time())
        t0 = time.perf_counter()
        try:
            shard = sources.open_parquet(uri, self.needed, cfg.storage_options)
        except RowError as exc:
            rec["read_s"] = time.perf_counter() - t0
            return self._fail(rec, exc)
        rec["read_s"], rec["rows"], rec["bytes"] = time.perf_counter() - t0, shard.rows, shard.size
        rejected: dict[int, tuple[str, str]] = {}
        keep = None
        try:
            with sink.PredictionFile(cfg.output.uri, index, cfg.storage_options) as writer:
                with self.turn(rec):
                    try:
                        feeds = self._feeds(shard.schema, uri)
                    except InputError as exc:
                        raise RowError("read", str(exc), "InputError", 0, shard.rows) from exc
                    chunks, offset = shard.chunks(max(CHUNK_ROWS, cfg.compute.batch_size)), 0
                    for chunk in _timed(chunks, rec):
                        t0 = time.perf_counter()
                        groups, bad = prepare(chunk, feeds)
                        rec["preprocess_s"] += time.perf_counter() - t0
                        rejected.update({offset + r: ("preprocess", m) for r, m in bad.items()})
                        keep = chunk.select(cfg.input.keep) if cfg.input.keep else None
                        self._predict(rec, groups, keep, offset, rejected, writer)
                        offset += chunk.num_rows
                    if writer.writer is None:  # no row scored: the file still gets its columns
                        empty_keep = keep.slice(0, 0) if keep is not None else None
                        self._predict(rec, [], empty_keep, 0, rejected, writer, empty_ok=True)
                self._finish(rec, writer, rejected)
        except RowError as exc:  # unusable columns, or corrupt data past the footer: nothing written
            return self._fail(rec, exc)
        return rec

    @contextlib.contextmanager
    def turn(self, rec: dict[str, Any]) -> Iterator[None]:
        """This shard's turn at the session; the time spent waiting for it goes to ``wait_s``."""
        t0 = time.perf_counter()
        with self.lock:
            rec["wait_s"] += time.perf_counter() - t0
            yield

    def score_images(self, shard: dict[str, Any]) -> dict[str, Any]:
        cfg = self.spec.config
        rec = self._record(shard["index"], shard["shard"], shard["started_at"])
        if "failed" in shard:
            return self._fail(rec, shard["failed"])
        for key in ("rows", "bytes", "read_s", "preprocess_s"):
            rec[key] = shard[key]
        rec["errors"].extend(shard["errors"])
        keep = shard["keep"]
        if keep is None:
            paths = pa.array(shard["paths"], pa.string()) if shard["paths"] else None
            keep = pa.table({"path": paths}) if paths is not None else None
        spec = self.spec.model.inputs[0]
        rejected: dict[int, tuple[str, str]] = {}
        with sink.PredictionFile(cfg.output.uri, rec["index"], cfg.storage_options) as writer:
            with self.turn(rec):
                t0 = time.perf_counter()
                layout = self.spec.image_layout or "NCHW"
                tensor = images.normalise(shard["images"], cfg.input.image, layout, spec.dtype)
                rec["preprocess_s"] += time.perf_counter() - t0
                groups = [Group(shard["ok_rows"], {spec.name: tensor})] if len(tensor) else []
                self._predict(rec, groups, keep, 0, rejected, writer, empty_ok=True)
            self._finish(rec, writer, rejected)
        return rec

    def _predict(
        self,
        rec: dict[str, Any],
        groups: list[Group],
        keep: pa.Table | None,
        offset: int,
        rejected: dict[int, tuple[str, str]],
        writer: sink.PredictionFile,
        empty_ok: bool = False,
    ) -> None:
        """Score ``groups`` (rows of a chunk starting at shard row ``offset``) and write them."""
        cfg = self.spec.config
        preds = run_groups(self.session, self.spec.model, groups, self.columns, cfg.compute.batch_size)
        rec["infer_s"] += preds.infer_s
        rejected.update({offset + r: ("infer", m) for r, m in preds.rejected.items()})
        if len(preds.rows) == 0 and not empty_ok:
            return  # nothing to add (a shard with no row scored gets one empty part in _finish)
        t0 = time.perf_counter()
        rows = pa.array(preds.rows, pa.int64())
        fields = [pa.field("shard", pa.string()), pa.field("row", pa.int64())]
        arrays: list[pa.Array] = [
            pa.repeat(pa.scalar(rec["shard"]), len(rows)),
            pa.array(preds.rows + offset),
        ]
        if keep is not None:
            for field, column in zip(keep.schema, keep.columns):
                fields.append(field)
                arrays.append(column.take(rows))
        fields += preds.fields
        arrays += preds.columns
        writer.write(pa.Table.from_arrays(arrays, schema=pa.schema(fields)))
        rec["write_s"] += time.perf_counter() - t0

    def _finish(
        self, rec: dict[str, Any], writer: sink.PredictionFile, rejected: dict[int, tuple[str, str]]
    ) -> None:
        """Make the shard's predictions visible as one complete object, then its progress marker."""
        for row, (stage, message) in sorted(rejected.items()):
            rec["errors"].append([row, row + 1, stage, "RowError", message])
        t0 = time.perf_counter()
        writer.commit()
        rec["write_s"] += time.perf_counter() - t0
        rec["status"] = "succeeded" if not rec["errors"] else "partial"
        self._close(rec)

    def _fail(self, rec: dict[str, Any], exc: RowError) -> dict[str, Any]:
        rec["errors"].append([exc.row_start, exc.row_stop, exc.stage, exc.error, exc.message])
        rec["rows"] = max(rec["rows"], exc.row_stop, 0)
        rec["status"] = "failed"
        self._close(rec)
        return rec

    def _close(self, rec: dict[str, Any]) -> None:
        # An error range of unknown rows (-1, -1: an unreadable file) counts as one row.
        rec["rows_failed"] = sum(max(stop - start, 1) for start, stop, *_ in rec["errors"])
        rec["finished_at"] = time.time()
        rec["wall_s"] = rec["finished_at"] - rec["started_at"]
        scored = max(rec["rows"] - rec["rows_failed"], 0)
        rec["rows_per_s"] = scored / rec["wall_s"] if rec["wall_s"] > 0 else 0.0
        sink.write_progress(self.spec.config.output.uri, rec, self.spec.config.storage_options)

    def _record(self, index: int, uri: str, started: float) -> dict[str, Any]:
        s = self.session
        return {
            "index": index,
            "shard": uri,
            "rows": 0,
            "rows_failed": 0,
            "bytes": 0,
            "status": "running",
            "started_at": started,
            "finished_at": None,
            "wall_s": 0.0,
            "read_s": 0.0,
            "preprocess_s": 0.0,
            "infer_s": 0.0,
            "write_s": 0.0,
            "wait_s": 0.0,
            "rows_per_s": 0.0,
            "device": s.device,
            "node": self.node,
            "actors": self.actor,
            "providers": s.providers,
            "fallback": s.fallback,
            "warmup_error": s.warmup_error,
            **self.gpus,
            "errors": [],
        }

    def _feeds(self, schema: pa.Schema, uri: str) -> list[Feed]:
        if schema not in self.feeds:
            cfg = self.spec.config.input
            self.feeds[schema] = plan_feeds(self.spec.model, cfg.columns, schema, uri, cfg.keep)
        return self.feeds[schema]


def _timed(chunks: Iterator[pa.Table], rec: dict[str, Any]) -> Iterator[pa.Table]:
    """``chunks``, with the time spent reading each one added to ``read_s``."""
    while True:
        t0 = time.perf_counter()
        chunk = next(chunks, None)
        rec["read_s"] += time.perf_counter() - t0
        if chunk is None:
            return
        yield chunk


def scorer_for(spec: JobSpec) -> type[ShardScorer]:
    """``ShardScorer`` with ``spec`` bound as a class attribute.

    Ray pickles the class with the spec inside, so no constructor argument sits in the object
    store (Ray cannot restart an actor whose arguments were lost, and warns about it).
    """
    return type("ShardScorer", (ShardScorer,), {"SPEC": spec})
