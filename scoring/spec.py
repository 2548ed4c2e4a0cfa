"""What a job is: the checked config, the model, the format, the preprocessing and postprocessing,
the columns it reads and the columns it writes.

``check`` makes a ``JobSpec`` on the driver, before Ray starts and before anything is written:
everything that can be wrong with a job without running it fails here (exit 2) — the model, the
keys of every section against it, the input listing and the first file's schema, two prediction
columns of one name. The spec is plain data: the workers get it whole.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pyarrow as pa

from scoring import constants, formats, outputs, postprocess, preprocess
from scoring.config import Config
from scoring.errors import ConfigError, InputError
from scoring.exported import read_model
from scoring.formats import Chunk, Format
from scoring.model import ModelInfo
from scoring.postprocess import Postprocessor
from scoring.preprocess import Preprocessor
from scoring.raw import output_columns
from scoring.scorer import Scored, Scorer, prediction_columns
from scoring.shard import FileInfo, Source

SHARD = ("shard", "scoring (the shard's id)")


@dataclasses.dataclass(frozen=True)
class JobSpec:
    """Everything a worker needs, checked on the driver; plain data, cheap to pickle.

    ``schema`` is the input columns read from every shard, in the job's types (the model's
    columns and ``input.keep``). ``run_id`` is the run's claim on the output folder (``fence``);
    ``driver`` is the driver process (``fence.me()``: host, pid, its start), so workers on its
    machine stop when it is gone.
    """

    config: Config
    model: ModelInfo
    format: Format
    preprocessor: Preprocessor
    schema: pa.Schema
    postprocessors: tuple[Postprocessor, ...] = ()
    run_id: str = ""
    driver: dict[str, Any] = dataclasses.field(default_factory=dict)

    def scorer(self, session: Any) -> Scorer:
        cfg = self.config
        return Scorer(
            self.model,
            session,
            cfg.output.outputs,
            self.postprocessors,
            cfg.compute.batch_size,
            constants.resolve(cfg.input.constants, self.model),
        )

    def predictions(self, shard: str, chunk: Chunk, scored: Scored) -> pa.Table:
        """The prediction rows of a scored chunk: ``shard``, where each row comes from (the
        format's provenance columns), the ``keep`` columns, then the output columns."""
        take = scored.rows
        where = self.format.where(chunk, take)
        fields = [pa.field("shard", pa.string()), *(f for f, _ in where)]
        arrays: list[Any] = [pa.array(np.full(len(take), shard, dtype=object), pa.string())]
        arrays += [a for _, a in where]
        kept = self.config.input.kept
        if kept:
            indices = pa.array(take, pa.int64())
            for name, column in kept:
                fields.append(self.schema.field(column).with_name(name))
                arrays.append(chunk.data.column(column).take(indices))
        return pa.Table.from_arrays(arrays + scored.columns, schema=pa.schema(fields + scored.fields))

    @property
    def source(self) -> Source | None:
        return self.format.source()


def check(cfg: Config, pinned: Source | None = None) -> tuple[JobSpec, list[FileInfo]]:
    """Everything that can be checked without Ray and without touching OUT: the spec and the input
    files (``pinned``: the table version a resumed plan read). Raises ``ScoringError`` (exit 2
    kinds)."""
    so, inp = cfg.storage_options, cfg.input
    info = read_model(cfg.model, so)
    output_columns(info, cfg.output.outputs)
    constants.resolve(inp.constants, info)
    outputs.get(cfg.output, so).check()
    fmt, files = formats.list_input(inp, so, pinned)
    needed = preprocess.needs(inp, info)
    if needed is None:  # every column the input gives (a user's input.function)
        needed = fmt.schema(files, []).names
    columns = list(dict.fromkeys([*needed, *inp.kept_columns]))
    schema = fmt.schema(files, columns)
    first = files[0].uri
    pre = preprocess.resolve(cfg, info, schema, first)
    pps = tuple(postprocess.resolve(cfg, info))
    if cfg.output.outputs == {} and not pps:
        keys = " nor ".join(f"output.{k}" for k in postprocess.keys())
        raise ConfigError(
            f"config key 'output.outputs' is {{}} (no raw output) and neither {keys} is set: the "
            "predictions would have no column. Set one of them, or leave output.outputs out"
        )
    added = [SHARD, *fmt.provenance, *prediction_columns(info, cfg.output.outputs, pps)]
    check_names(inp.kept, added)
    missing = [c for c in inp.kept_columns if c not in schema.names]
    if missing:
        raise InputError(f"{first}: no column {missing} listed in input.keep (columns found: {schema.names})")
    schema = pa.schema([schema.field(c) for c in columns])
    return JobSpec(cfg, info, fmt, pre, schema, pps), files


def check_names(kept: list[tuple[str, str]], added: list[tuple[str, str]]) -> None:
    """Raise ``ConfigError`` when two prediction columns would share a name: a kept column and
    one that ``added`` names (each with what adds it), or two of either: ``predictions/`` would
    be unreadable."""
    seen: dict[str, str] = {}
    for name, column in kept:
        origin = f"input.keep ({column!r})" if name == column else f"input.keep ({{{name}: {column}}})"
        if name in seen:
            raise ConfigError(
                f"{seen[name]} and {origin} both name the prediction column {name!r}; "
                "keep each column once, under one name"
            )
        seen[name] = origin
    for name, origin in added:
        if name not in seen:
            seen[name] = origin
            continue
        other = seen[name]
        if other.startswith("input.keep"):
            fix = (
                f"keep it under another name, e.g. input.keep: [{{input_{name}: {name}}}]"
                if other == f"input.keep ({name!r})"
                else "rename it in input.keep"
            )
            if origin.startswith("model output"):
                fix += f", or name the output otherwise: output.outputs: {{{name}_out: {origin[14:-1]}}}"
        else:
            fix = "name one of them otherwise in output.outputs"
        raise ConfigError(
            f"{other} and {origin} would both add the column {name!r} to every prediction row; "
            f"two fields of one name make predictions/ unreadable as a dataset. To resolve it, {fix}"
        )
