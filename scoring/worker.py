"""Scoring whole shards: read a shard chunk by chunk, score each chunk, write its predictions,
commit the shard. A Ray actor (``runners``) or a thread of the local runner holds one ``Worker``.

Up to ``compute.shards_in_flight`` shards go through one worker at once, in threads: reading,
decoding and writing overlap, while ``turn`` gives the session to one shard at a time, so
inference never competes with itself for the worker's CPUs or GPU. Timing is measured here,
where the work happens (README "How timing is attributed").
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa

from scoring import images, sink, sources
from scoring.errors import InputError, RowError
from scoring.model import local_model_path
from scoring.plan import Shard
from scoring.record import Reason, Rejections, ShardRecord
from scoring.scorer import JobSpec, Scored, Scorer
from scoring.tensors import feed_columns

# How often a worker writing to object storage checks that its run still holds OUT (a GET);
# on local disk it checks every chunk (a small file read).
REMOTE_FENCE_CHECK_S = 10.0


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where a worker runs: its node and actor (as named in ``_shards.parquet``), the GPUs Ray
    gave it, and the intra-op threads of its session."""

    node: str
    actor: str
    threads: int = 1
    gpu_ids: tuple[int, ...] = ()
    device_id: int = 0  # the GPU as CUDA numbers it in this process


class Worker:
    def __init__(self, spec: JobSpec, placement: Placement) -> None:
        from scoring.session import build_session

        cfg = spec.config
        path = local_model_path(spec.model.uri, spec.model.sha256, cfg.storage_options)
        session = build_session(
            path,
            spec.model,
            cfg.model,
            threads=placement.threads,
            gpu_ids=list(placement.gpu_ids),
            device_id=placement.device_id,
        )
        self.spec, self.placement = spec, placement
        self.scorer = Scorer(spec, session)
        self.output = sink.Output(cfg.output.uri, cfg.storage_options, spec.run_id)
        self.lock = threading.Lock()
        # Images decode on the worker's own CPUs: Pillow releases the GIL while it decodes and
        # resizes, so threads use every CPU the worker holds (a GPU worker's share of its node).
        self.decoders = (
            concurrent.futures.ThreadPoolExecutor(placement.threads, "scoring-decode")
            if placement.threads > 1 and cfg.input.format == "images"
            else None
        )
        # Columns read from each table shard: the same for every shard of the job.
        self.needed = list(dict.fromkeys([*feed_columns(spec.model, cfg.input.columns), *cfg.input.keep]))
        self.checked_at = 0.0

    # -- one shard ---------------------------------------------------------------------------

    def score(self, shard: Shard) -> ShardRecord:
        """Score and commit ``shard``; its record. Raises ``ModelFailure`` (the model cannot be
        used: stop the job) or ``sink.Fenced`` (this run no longer holds OUT: nothing written)."""
        rec = self._record(shard)
        rejections = Rejections()
        with self.output.shard(shard.index, shard.id) as out:
            try:
                if shard.kind == "image_files":
                    self._image_files(shard, rec, rejections, out)
                elif shard.kind == "image_parquet":
                    self._image_parquet(shard, rec, rejections, out)
                else:
                    self._table(shard, rec, rejections, out)
            except RowError as exc:  # unreadable, or columns unusable: the whole shard is rejected
                failed = Rejections()
                failed.add(exc.row_start, exc.row_stop, Reason(exc.stage, exc.error, exc.message))
                out.commit(rec, failed, "failed")
                return rec
            out.commit(rec, rejections, "partial" if len(rejections) else "succeeded")
        return rec

    def _table(self, shard: Shard, rec: ShardRecord, rejections: Rejections, out: sink.ShardOutput) -> None:
        cfg = self.spec.config
        with rec.timed("read_s"):
            reader = sources.open_parquet(shard, self.needed, cfg.storage_options)
        rec.rows, rec.bytes = reader.rows, reader.size
        keep_schema = None
        with contextlib.closing(reader):
            for offset, chunk in _timed(reader.chunks(max(sources.CHUNK_ROWS, cfg.compute.batch_size)), rec):
                self.check_alive()
                with self.turn(rec):
                    try:
                        feeds = self.scorer.plan(reader.schema, shard.id)
                    except InputError as exc:
                        first = reader.first_row
                        raise RowError("read", str(exc), "InputError", first, first + reader.rows) from exc
                    scored = self.scorer.score_table(chunk, feeds)
                keep = chunk.select(cfg.input.keep) if cfg.input.keep else None
                keep_schema = keep.schema if keep is not None else None
                self._write(shard, offset, scored, keep, rec, rejections, out)
        if not out.started:  # no row scored: the file still gets its columns
            out.write(self.scorer.empty(keep_schema or _keep_schema(reader.schema, cfg.input.keep)))

    def _image_files(
        self, shard: Shard, rec: ShardRecord, rejections: Rejections, out: sink.ShardOutput
    ) -> None:
        so = self.spec.config.storage_options
        rec.rows = len(shard.files)
        for start, blobs in _timed(sources.image_files(shard, so), rec):
            where = list(shard.files[start : start + len(blobs)])
            keep = pa.table({"path": pa.array(where, pa.string())})
            self._images(shard, start, blobs, where, keep, rec, rejections, out)
        if not out.started:
            out.write(self.scorer.empty(pa.schema([("path", pa.string())])))

    def _image_parquet(
        self, shard: Shard, rec: ShardRecord, rejections: Rejections, out: sink.ShardOutput
    ) -> None:
        cfg = self.spec.config
        column = cfg.input.image_column
        with rec.timed("read_s"):
            reader = sources.open_parquet(shard, [column, *cfg.input.keep], cfg.storage_options)
        rec.rows, rec.bytes = reader.rows, reader.size
        missing = [c for c in (column, *cfg.input.keep) if c not in reader.schema.names]
        if missing:
            reader.close()
            raise RowError(
                "read",
                f"{shard.id}: no column {missing} (columns found: {reader.schema.names}); set "
                "input.image_column to the column of encoded image bytes",
                "InputError",
                reader.first_row,
                reader.first_row + reader.rows,
            )
        with contextlib.closing(reader):
            for offset, chunk in _timed(reader.chunks(sources.IMAGES_PER_CHUNK), rec):
                blobs = chunk.column(column).to_pylist()
                where = [f"{shard.id} row {offset + i}" for i in range(len(blobs))]
                keep = chunk.drop_columns([column]) if cfg.input.keep else None
                self._images(shard, offset, blobs, where, keep, rec, rejections, out)
        if not out.started:
            out.write(self.scorer.empty(_keep_schema(reader.schema, cfg.input.keep)))

    def _images(
        self,
        shard: Shard,
        offset: int,
        blobs: list[Any],
        where: list[str],
        keep: pa.Table | None,
        rec: ShardRecord,
        rejections: Rejections,
        out: sink.ShardOutput,
    ) -> None:
        """Decode a chunk of encoded images, score the ones that decode, write their rows."""
        self.check_alive()
        with rec.timed("preprocess_s"):
            batch, ok_rows, bad = decode_batch(self.spec, blobs, where, self.decoders)
        rejections.extend(bad, offset)
        with self.turn(rec):
            scored = self.scorer.score_images(batch, ok_rows)
        self._write(shard, offset, scored, keep, rec, rejections, out)

    def _write(
        self,
        shard: Shard,
        offset: int,
        scored: Scored,
        keep: pa.Table | None,
        rec: ShardRecord,
        rejections: Rejections,
        out: sink.ShardOutput,
    ) -> None:
        rec.preprocess_s += scored.preprocess_s
        rec.infer_s += scored.infer_s
        rejections.extend(scored.rejected, offset)
        if len(scored.rows):
            with rec.timed("write_s"):
                out.write(self.scorer.predictions(shard.id, offset, scored, keep))

    # -- sharing the session, staying in charge ----------------------------------------------

    @contextlib.contextmanager
    def turn(self, rec: ShardRecord) -> Iterator[None]:
        """This shard's turn at the session; the time spent waiting for it goes to ``wait_s``."""
        t0 = time.perf_counter()
        with self.lock:
            rec.wait_s += time.perf_counter() - t0
            yield

    def check_alive(self) -> None:
        """Raise ``sink.Fenced`` when this run has lost OUT or its driver is gone, so a worker left
        behind by a killed driver stops instead of scoring on."""
        host, pid = self.spec.driver
        if pid and pid != os.getpid() and host == socket.gethostname() and not _running(pid):
            raise sink.Fenced(f"the driver (pid {pid}) is gone")
        now = time.monotonic()
        if self.output.local or now - self.checked_at > REMOTE_FENCE_CHECK_S:
            self.checked_at = now
            if not self.output.holds():
                raise sink.Fenced(f"run {self.spec.run_id} no longer holds {self.output.uri}")

    def _record(self, shard: Shard) -> ShardRecord:
        s, p = self.scorer.session, self.placement
        return ShardRecord(
            index=shard.index,
            shard=shard.id,
            rows=shard.rows or 0,
            bytes=shard.bytes,
            started_at=time.time(),
            device=s.device,
            node=p.node,
            actors=p.actor,
            providers=list(s.providers),
            fallback=s.fallback,
            warmup_error=s.warmup_error,
            gpu_ids=list(p.gpu_ids),
            cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"),
        )


def decode_batch(
    spec: JobSpec, blobs: list[Any], where: list[str], pool: concurrent.futures.Executor | None = None
) -> tuple[np.ndarray, np.ndarray, Rejections]:
    """uint8 [N, H, W, C] of the encoded images that decode, their rows, and the rows that do
    not (stage "read" for a file that could not be read, "decode" for bytes that are no image);
    decoded in ``pool``'s threads when given."""
    assert spec.image_size is not None, "image jobs resolve the size on the driver"
    cfg = spec.config.input
    size = spec.image_size

    def one(blob: Any) -> np.ndarray | Exception:
        try:
            if isinstance(blob, Exception):
                raise blob
            if blob is None:
                raise ValueError(f"column {cfg.image_column} is null")
            return images.decode(blob, cfg.image, size)
        except Exception as exc:  # PIL raises many types for bad bytes; the row is rejected
            return exc

    decoded = list(pool.map(one, blobs)) if pool is not None else [one(b) for b in blobs]
    arrays, ok_rows, bad = [], [], Rejections()
    for row, (blob, result) in enumerate(zip(blobs, decoded)):
        if isinstance(result, Exception):
            stage = "read" if isinstance(blob, Exception) else "decode"
            message = f"{where[row]}: cannot {stage} image: {result}. The file is skipped; fix or remove it."
            bad.add(row, row + 1, Reason(stage, type(result).__name__, message))
        else:
            arrays.append(result)
            ok_rows.append(row)
    h, w = size
    c = 1 if cfg.image.mode == "L" else 3
    batch = np.stack(arrays) if arrays else np.zeros((0, h, w, c), np.uint8)
    return batch, np.asarray(ok_rows, np.int64), bad


def _keep_schema(schema: pa.Schema, keep: list[str]) -> pa.Schema | None:
    return pa.schema([schema.field(c) for c in keep if c in schema.names]) if keep else None


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _timed(chunks: Iterator[Any], rec: ShardRecord) -> Iterator[Any]:
    """``chunks``, with the time spent producing each one added to ``read_s``."""
    while True:
        with rec.timed("read_s"):
            chunk = next(chunks, None)
        if chunk is None:
            return
        yield chunk
