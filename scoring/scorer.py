"""Scoring rows: one ORT session and the rules that feed it and read its outputs. No I/O.

``Scorer`` turns a table of rows (or a batch of decoded images) into prediction columns and the
rows it rejected: columns to tensors (``tensors``), batches through the session (``predict``),
outputs to Arrow. The shard loop (``worker``), ``scoring validate`` and the Python API all score
through it, so a row gets the same treatment everywhere.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np
import pyarrow as pa

from scoring import images
from scoring.config import Config
from scoring.inference import Health, align, output_columns, run_groups, to_arrow
from scoring.model import ModelInfo
from scoring.postprocess import Postprocess
from scoring.record import Rejections
from scoring.session import Session, warm_up
from scoring.tensors import Feed, Group, plan_feeds, prepare


@dataclasses.dataclass(frozen=True)
class JobSpec:
    """Everything a worker needs, checked on the driver; plain data, cheap to pickle.

    ``run_id`` is the run's claim on the output folder (``sink``); ``driver`` is the host and pid
    of the driver process, so workers on its machine stop when it is gone.
    """

    config: Config
    model: ModelInfo
    image_size: tuple[int, int] | None = None
    image_layout: str | None = None
    postprocess: Postprocess | None = None
    run_id: str = ""
    driver: tuple[str, int] = ("", 0)


@dataclasses.dataclass
class Scored:
    """What a chunk of rows gave: the prediction columns of the rows scored (``rows``, ascending
    indices into the chunk), the rows rejected, and where the time went."""

    rows: np.ndarray
    fields: list[pa.Field]
    columns: list[pa.Array]
    rejected: Rejections
    preprocess_s: float = 0.0
    infer_s: float = 0.0


class Scorer:
    """Scores chunks of rows with ``session``. Raises ``ModelFailure`` at construction when the
    warm-up batch already shows an output that cannot be aligned with rows."""

    def __init__(self, spec: JobSpec, session: Session) -> None:
        self.spec, self.session = spec, session
        cfg = spec.config
        self.outputs = output_columns(spec.model, cfg.output.outputs)
        pp = spec.postprocess
        self.names = list(
            dict.fromkeys([*(s.name for s in self.outputs.values()), *([pp.output] if pp else [])])
        )
        self.health = Health()
        self.feeds: dict[pa.Schema, list[Feed]] = {}
        rows, values = warm_up(session, spec.model, self.names)
        if values is not None:
            aligned = align(values, self.names, spec.model, rows, rows)  # ModelFailure names the output
            if pp is not None:  # the class count against the labels, before the first shard
                pp.columns(np.asarray(aligned[self.names.index(pp.output)]))

    def plan(self, schema: pa.Schema, where: str) -> list[Feed]:
        """The feeds for tables of ``schema`` (checked once per schema). Raises ``InputError``."""
        if schema not in self.feeds:
            cfg = self.spec.config.input
            self.feeds[schema] = plan_feeds(self.spec.model, cfg.columns, schema, where, cfg.keep)
        return self.feeds[schema]

    def score_table(self, table: pa.Table, feeds: list[Feed]) -> Scored:
        t0 = time.perf_counter()
        groups, rejected = prepare(table, feeds)
        scored = self._run(groups)
        scored.rejected.extend(rejected)
        scored.preprocess_s += time.perf_counter() - t0 - scored.infer_s
        return scored

    def score_images(self, batch: np.ndarray, ok_rows: np.ndarray) -> Scored:
        """``batch``: uint8 [N, H, W, C] decoded images of rows ``ok_rows`` of the chunk."""
        t0 = time.perf_counter()
        spec, cfg = self.spec.model.inputs[0], self.spec.config.input.image
        tensor = images.normalise(batch, cfg, self.spec.image_layout or "NCHW", spec.dtype)
        scored = self._run([Group(ok_rows, {spec.name: tensor})] if len(tensor) else [])
        scored.preprocess_s += time.perf_counter() - t0 - scored.infer_s
        return scored

    def _run(self, groups: list[Group]) -> Scored:
        cfg = self.spec.config
        rows, values, rejected, infer_s = run_groups(
            self.session, self.spec.model, groups, self.names, cfg.compute.batch_size, self.health
        )
        fields, columns = [], []
        for col, spec in self.outputs.items():
            field, array = to_arrow(col, spec, values.get(spec.name, []))
            fields.append(field)
            columns.append(array)
        pp = self.spec.postprocess
        if pp is not None:
            chunks = values.get(pp.output, [])
            scores = np.concatenate(chunks) if chunks else np.zeros((0, 1), np.float32)
            fields += pp.fields()
            columns += pp.columns(scores)
        return Scored(rows, fields, columns, rejected, infer_s=infer_s)

    def predictions(self, shard: str, offset: int, scored: Scored, keep: pa.Table | None) -> pa.Table:
        """The prediction rows of a scored chunk: ``shard``, ``row`` (``offset`` + the chunk's row),
        the ``keep`` columns (rows of the chunk), then one column per output."""
        n = len(scored.rows)
        take = pa.array(scored.rows, pa.int64())
        fields = [pa.field("shard", pa.string()), pa.field("row", pa.int64())]
        arrays: list[Any] = [pa.repeat(pa.scalar(shard), n), pa.array(scored.rows + offset, pa.int64())]
        if keep is not None:
            for field, column in zip(keep.schema, keep.columns):
                fields.append(field)
                arrays.append(column.take(take))
        return pa.Table.from_arrays(arrays + scored.columns, schema=pa.schema(fields + scored.fields))

    def empty(self, keep: pa.Schema | None) -> pa.Table:
        """A table with the prediction columns and no row: a shard that had nothing to score
        still gets a file, so every part of ``predictions/`` has the same columns."""
        none = self._run([])
        cols = {f.name: pa.array([], f.type) for f in keep} if keep is not None else {}
        return self.predictions("", 0, none, pa.table(cols, schema=keep) if keep is not None else None)
