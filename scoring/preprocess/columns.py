"""Columns fed to the model as they are: each input takes its column(s) (``tensors``).

The feeds are planned once, on the driver, against the job's schema: every file's columns
arrive in the job's types (``formats``), so a batch never needs planning again.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses

import numpy as np
import pyarrow as pa

from scoring.config import Config, InputConfig
from scoring.model import ModelInfo
from scoring.preprocess import Prepared
from scoring.tensors import Feed, feed_columns, plan_feeds, prepare

# Rows of a shard in memory at once (at least compute.batch_size).
CHUNK_ROWS = 65536


@dataclasses.dataclass(frozen=True)
class Columns:
    feeds: tuple[Feed, ...]
    chunk_rows: int = CHUNK_ROWS

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(c for f in self.feeds for c in f.columns))

    def prepare(
        self, data: pa.Table, skip: np.ndarray | None, pool: concurrent.futures.Executor | None
    ) -> Prepared:
        groups, rejected = prepare(data, self.feeds, skip)
        return Prepared(groups, rejected)

    def notes(self, data: pa.Table) -> list[str]:
        return []


def needs(inp: InputConfig, model: ModelInfo) -> list[str]:
    return feed_columns(model, inp.columns)


def resolve(cfg: Config, model: ModelInfo, schema: pa.Schema, where: str) -> Columns:
    """Raises ``ConfigError``/``InputError`` naming the file, column and input that cannot work."""
    return Columns(tuple(plan_feeds(model, cfg.input.columns, schema, where)))
