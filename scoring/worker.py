"""Scoring whole shards: read a shard chunk by chunk, prepare and score each chunk, write its
predictions, commit the shard. A Ray actor or a thread of the local runner (``runners``) holds
one ``Worker``. Nothing here knows a format, a kind of preprocessing or postprocessing, or an
output: the ``JobSpec`` carries them, resolved on the driver.

Up to ``compute.shards_in_flight`` shards go through one worker at once, in threads: reading,
preprocessing and writing overlap, while ``turn`` gives the session to one shard at a time, so
inference never competes with itself for the worker's CPUs or GPU. Timing is measured here,
where the work happens (docs/report.md, "Timing").
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

from scoring import fence, outputs
from scoring.errors import RowError, StorageError
from scoring.exported import local_model
from scoring.folder import JobFolder, ShardOutput
from scoring.formats import Chunk
from scoring.outputs import table_bytes
from scoring.record import Reason, Rejections, ShardRecord
from scoring.shard import Shard
from scoring.spec import JobSpec

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

        t0 = time.perf_counter()
        cfg = spec.config
        path = local_model(spec.model, cfg.storage_options)
        session = build_session(
            path,
            spec.model,
            cfg.model,
            threads=placement.threads,
            gpu_ids=list(placement.gpu_ids),
            device_id=placement.device_id,
        )
        self.spec, self.placement = spec, placement
        self.scorer = spec.scorer(session)
        self.folder = JobFolder(cfg.output.uri, cfg.storage_options, spec.run_id)
        self.output = outputs.get(cfg.output, cfg.storage_options)
        self.lock = threading.Lock()  # the session's: one shard at a time
        self.setup_lock = threading.Lock()
        # Reading many small files and decoding images run on the worker's own CPUs: pyarrow and
        # Pillow release the GIL, so threads use every CPU the worker holds (a GPU worker's share).
        self.pool = (
            concurrent.futures.ThreadPoolExecutor(placement.threads, "scoring-read")
            if placement.threads > 1
            else None
        )
        self.checked_at = 0.0
        self._rehearse()
        self.setup_s: float | None = time.perf_counter() - t0  # reported once, on the first shard

    def _rehearse(self) -> None:
        """Take a chunk of no rows through every stage — preprocessing, the session's results,
        predictions, Parquet — so their first use (imports, caches) costs the worker's setup, not
        the first shard's preprocess or write."""
        spec = self.spec
        empty = Chunk.of_file(spec.schema.empty_table(), "", 0)
        prepared = spec.preprocessor.prepare(empty.data, None, self.pool)
        table_bytes(spec.predictions("", empty, self.scorer.run(prepared.groups)))

    # -- one shard ---------------------------------------------------------------------------

    def score(self, shard: Shard) -> ShardRecord:
        """Score and commit ``shard``; its record. Raises ``ModelFailure`` (the model cannot be
        used: stop the job) or ``fence.Fenced`` (this run no longer holds OUT: nothing written)."""
        rec = self._record(shard)
        rejections = Rejections()
        writer = self.output.writer(self.folder.predictions(shard.index))
        try:
            with self.folder.shard(shard.index, shard.id, writer) as out:
                try:
                    self._chunks(shard, rec, rejections, out)
                except RowError as exc:  # unreadable: the whole shard is rejected
                    failed = Rejections()
                    why = Reason(exc.stage, exc.error, exc.message)
                    failed.add(exc.row_start, exc.row_stop, why, shard.uri)
                    rec.rows = shard.rows or 0
                    out.commit(rec, failed, "failed")
                    return rec
                if not out.started:  # no row scored: the file still gets its columns
                    empty = Chunk.of_file(self.spec.schema.empty_table(), shard.uri, 0)
                    out.write(self.spec.predictions(shard.id, empty, self.scorer.run([])))
                out.commit(rec, rejections, "partial" if len(rejections) else "succeeded")
        except StorageError as exc:  # OUT cannot be written (a store down, a full disk)
            return self._uncommitted(shard, rec, exc)
        return rec

    def _uncommitted(self, shard: Shard, rec: ShardRecord, exc: StorageError) -> ShardRecord:
        """A shard whose results could not be written: failed, so resume scores it again. Its
        record still reaches the driver, which takes the shard's marker instead if one landed
        after all (written, but the store's answer lost)."""
        reason = Reason("write", "StorageError", f"{shard.id}: could not be written: {exc}")
        rejected = self.spec.format.every_row(shard, reason)
        rec.rows = max(rec.rows, shard.rows or 0)
        rec.close("failed", rejected)
        rec.committed = False
        return rec

    def _chunks(self, shard: Shard, rec: ShardRecord, rejections: Rejections, out: ShardOutput) -> None:
        spec = self.spec
        pre = spec.preprocessor
        rows = max(pre.chunk_rows, spec.config.compute.batch_size)
        rec.rows = 0
        for chunk in _timed(spec.format.read(shard, spec.schema, rows, self.pool), rec):
            self.check_alive()
            rec.rows += len(chunk) + chunk.absent
            rejections.extend(chunk.rejected)
            with rec.timed("preprocess_s"):
                prepared = pre.prepare(chunk.data, chunk.skip, self.pool)
            rejections.extend(chunk.locate(prepared.rejected))
            with self.turn(rec):
                scored = self.scorer.run(prepared.groups)
            rec.infer_s += scored.infer_s
            rejections.extend(chunk.locate(scored.rejected))
            if len(scored.rows):
                with rec.timed("write_s"):
                    out.write(spec.predictions(shard.id, chunk, scored))

    # -- sharing the session, staying in charge ----------------------------------------------

    @contextlib.contextmanager
    def turn(self, rec: ShardRecord) -> Iterator[None]:
        """This shard's turn at the session; the time spent waiting for it goes to ``wait_s``."""
        t0 = time.perf_counter()
        with self.lock:
            rec.wait_s += time.perf_counter() - t0
            yield

    def check_alive(self) -> None:
        """Raise ``fence.Fenced`` when this run has lost OUT or its driver is gone, so a worker
        left behind by a killed driver stops instead of scoring on."""
        driver = self.spec.driver
        if driver and driver.get("pid") != os.getpid() and fence.alive(driver) is False:
            raise fence.Fenced(f"the driver (pid {driver.get('pid')}) is gone")
        now = time.monotonic()
        if self.folder.local or now - self.checked_at > REMOTE_FENCE_CHECK_S:
            self.checked_at = now
            try:
                held = self.folder.fence.holds()
            except StorageError:
                return  # an outage, not a takeover: the commit checks again, and fails if it lasts
            if not held:
                raise fence.Fenced(f"run {self.spec.run_id} no longer holds {self.folder.uri}")

    def _record(self, shard: Shard) -> ShardRecord:
        s, p = self.scorer.session, self.placement
        with self.setup_lock:  # not the session's lock: a shard at the session holds that one
            setup, self.setup_s = self.setup_s or 0.0, None
        return ShardRecord(
            setup_s=setup,
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
            run_id=self.spec.run_id,
        )


def _timed(chunks: Iterator[Any], rec: ShardRecord) -> Iterator[Any]:
    """``chunks``, with the time spent producing each one added to ``read_s``."""
    while True:
        with rec.timed("read_s"):
            chunk = next(chunks, None)
        if chunk is None:
            return
        yield chunk
